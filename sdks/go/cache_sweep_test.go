package are_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/aretest"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// sweepTTL is the short unreferenced-blob TTL of the sidecar these tests
// start: the sweep takes an unowned upload within about a second.
const sweepTTL = "0.5"

// startSweeping starts a sidecar whose blob sweep is fast, stopped at the
// end of the test.
func startSweeping(t *testing.T) *aretest.Sidecar {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := aretest.Start(ctx, aretest.Options{Args: []string{"--durability", "relaxed", "--blob-unreferenced-ttl-s", sweepTTL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping the sidecar: %v", err)
		}
	})
	return s
}

// sweptBeforeStore is an interceptor that counts the StoreCache calls whose
// response is a blob and holds those that hold(count) picks until the sweep
// has deleted that blob: the race of a sweep landing between the upload and
// the store, made certain.
func sweptBeforeStore(t *testing.T, hold func(n int64) bool, stores *atomic.Int64) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		store, ok := req.(*arev1.StoreCacheRequest)
		if !ok || method != arev1.CacheService_StoreCache_FullMethodName {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		if blob := store.GetResponse().GetBlob(); blob != nil && hold(stores.Add(1)) {
			state := arev1.NewStateServiceClient(cc)
			deadline := time.Now().Add(30 * time.Second)
			for {
				resp, err := state.CheckBlobs(ctx, &arev1.CheckBlobsRequest{Sha256S: []string{blob.GetSha256()}})
				if err != nil {
					return err
				}
				if len(resp.GetFound()) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("the sweep did not delete blob %s within 30 s", blob.GetSha256())
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// largeValue is a JSON string over MaxInlineBytes, of fill: a different
// fill for each case, so that no case's blob is kept by another's entry.
func largeValue(fill string) []byte {
	return append(append([]byte(`"`), bytes.Repeat([]byte(fill), are.MaxInlineBytes+1024)...), '"')
}

// TestCacheStoreWhenTheSweepTakesTheBlob runs its cases on one sidecar with a
// fast sweep.
func TestCacheStoreWhenTheSweepTakesTheBlob(t *testing.T) {
	s := startSweeping(t)
	t.Run("uploads again", func(t *testing.T) { testStoreUploadsAgain(t, s) })
	t.Run("gives up after bounded attempts", func(t *testing.T) { testStoreGivesUp(t, s) })
}

// odd holds every other store: the first of each Store, not its retry.
func odd(n int64) bool { return n%2 == 1 }

func testStoreUploadsAgain(t *testing.T, s *aretest.Sidecar) {
	var stores atomic.Int64
	ctx := within(t, 90*time.Second)
	client, err := are.Connect(ctx, s.Target, are.WithDialOptions(grpc.WithChainUnaryInterceptor(sweptBeforeStore(t, odd, &stores))))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	namespace := name("go-swept")
	if _, _, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace}); err != nil {
		t.Fatal(err)
	}
	value := largeValue("x")

	stored, err := client.Cache.Store(ctx, namespace, "a long answer", value)
	if err != nil {
		t.Fatalf("Store after the sweep took its blob = %v; want the upload and the store made again", err)
	}
	if got := stores.Load(); got != 2 {
		t.Fatalf("StoreCache calls with a blob = %d; want 2 (the swept one, then the retry)", got)
	}
	hit, err := client.Cache.Lookup(ctx, namespace, "a long answer")
	if err != nil || hit == nil || hit.EntryID != stored.GetEntryId() || !bytes.Equal(hit.Value, value) {
		t.Fatalf("Lookup after the retried store = %v, %v; want the stored entry with the whole value", hit, err)
	}

	// GetOrCall stores through the same path: its first store is swept too,
	// and the value is cached all the same, not only returned.
	calls := 0
	other := largeValue("z") // not the first entry's blob, which that entry keeps
	got, _, err := client.Cache.GetOrCall(ctx, namespace, "another long answer", func(context.Context) ([]byte, *arev1.Usage, error) {
		calls++
		return other, nil, nil
	})
	if err != nil || calls != 1 || !bytes.Equal(got, other) {
		t.Fatalf("GetOrCall = %d bytes, %d calls, %v", len(got), calls, err)
	}
	if got := stores.Load(); got != 4 {
		t.Fatalf("StoreCache calls with a blob after GetOrCall = %d; want 4", got)
	}
	if hit, err := client.Cache.Lookup(ctx, namespace, "another long answer"); err != nil || hit == nil {
		t.Fatalf("Lookup after GetOrCall = %v, %v; want a hit", hit, err)
	}
}

func testStoreGivesUp(t *testing.T, s *aretest.Sidecar) {
	var stores atomic.Int64
	ctx := within(t, 90*time.Second)
	client, err := are.Connect(ctx, s.Target, are.WithDialOptions(grpc.WithChainUnaryInterceptor(sweptBeforeStore(t, func(int64) bool { return true }, &stores))))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	namespace := name("go-swept-always")
	if _, _, err := client.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace}); err != nil {
		t.Fatal(err)
	}

	_, err = client.Cache.Store(ctx, namespace, "a long answer", largeValue("y"))
	if !errors.Is(err, are.ErrNotFound) || are.ReasonOf(err) != "BLOB_NOT_FOUND" {
		t.Fatalf("Store whose blob is always swept = %v; want NOT_FOUND BLOB_NOT_FOUND", err)
	}
	if got := stores.Load(); got != 3 {
		t.Fatalf("StoreCache calls with a blob = %d; want 3 (bounded attempts)", got)
	}
}
