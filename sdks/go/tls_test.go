package are_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/aretest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and
// returns their paths and a pool trusting the certificate.
func selfSigned(t *testing.T, dir string) (certPath, keyPath string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "are-test"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certPath, keyPath, roots
}

func TestTLS(t *testing.T) {
	ctx := within(t, 60*time.Second)
	certPath, keyPath, roots := selfSigned(t, t.TempDir())
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	secure, err := aretest.Start(ctx, aretest.Options{
		Args: []string{"--durability", "relaxed", "--tls-cert", certPath, "--tls-key", keyPath},
		TLS:  config,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer secure.Stop()

	client, err := are.Connect(ctx, secure.Target, are.WithTLS(config))
	if err != nil {
		t.Fatalf("Connect with TLS: %v", err)
	}
	defer client.Close()
	if got, err := client.Health(ctx); err != nil || got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Health over TLS = %v, %v", got, err)
	}
	if _, err := client.Workflows.Get(ctx, "wf-none"); !errors.Is(err, are.ErrNotFound) {
		t.Fatalf("a call over TLS = %v; want NOT_FOUND", err)
	}
}
