// Package aretest starts a real ARE sidecar for tests: a temporary data
// folder and an ephemeral port (or a Unix socket), so that tests talk to the
// same process over real gRPC instead of a mock. It is what the SDK's own
// tests use:
//
//	sidecar, err := aretest.Start(ctx, aretest.Options{})
//	if err != nil { ... }
//	defer sidecar.Stop()
//	client, err := are.Connect(ctx, sidecar.Target)
//
// The sidecar runs as `PYTHON -m sidecar serve`, where PYTHON is
// Options.Python, else $ARE_PYTHON, else the .venv/bin/python of the nearest
// enclosing folder that has one; or as the command in $ARE_SIDECAR_COMMAND
// (split on spaces) followed by `serve`.
package aretest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Options configure Start; the zero value starts a sidecar on 127.0.0.1 with
// a temporary data folder.
type Options struct {
	// Python is the interpreter with the sidecar installed.
	Python string
	// DataDir is the data folder; a new temporary one when empty. Reuse a
	// folder to restart a sidecar on the same data.
	DataDir string
	// UDS listens on a Unix socket in the temporary folder instead of TCP.
	UDS bool
	// Args are more options for `serve`.
	Args []string
	// Env adds KEY=VALUE variables to the child's environment (ARE_*
	// variables of this process are not passed on).
	Env []string
	// Token makes the sidecar require this bearer token.
	Token string
	// StartTimeout bounds the wait for SERVING (default 30 s), within ctx.
	StartTimeout time.Duration
	// TLS checks the health of a sidecar serving TLS (started with
	// --tls-cert and --tls-key in Args) with this client configuration.
	TLS *tls.Config
}

// Sidecar is a running sidecar child process.
type Sidecar struct {
	// Target is the gRPC target to connect to (127.0.0.1:PORT or unix:PATH).
	Target string
	// DataDir is the data folder the sidecar owns.
	DataDir string
	// LogPath is the file receiving the sidecar's output.
	LogPath string

	cmd     *exec.Cmd
	workdir string
	exited  chan struct{}
	waitErr error
}

// Start starts a sidecar and waits until its health check says SERVING, the
// child exits, StartTimeout passes, or ctx ends.
func Start(ctx context.Context, opts Options) (*Sidecar, error) {
	command, err := sidecarCommand(opts.Python)
	if err != nil {
		return nil, err
	}
	workdir, err := os.MkdirTemp("", "are-go-test-")
	if err != nil {
		return nil, err
	}
	dataDir := opts.DataDir
	if dataDir == "" {
		dataDir = filepath.Join(workdir, "data")
	}
	readyFile := filepath.Join(workdir, "ready.json")
	logPath := filepath.Join(workdir, "sidecar.log")
	args := append(command[1:len(command):len(command)], "serve", "--data-dir", dataDir, "--ready-file", readyFile)
	if opts.UDS {
		args = append(args, "--listen", "off", "--uds", filepath.Join(workdir, "are.sock"))
	} else {
		args = append(args, "--listen", "127.0.0.1:0")
	}
	args = append(args, opts.Args...)
	logFile, err := os.Create(logPath)
	if err != nil {
		os.RemoveAll(workdir)
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(command[0], args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ARE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, opts.Env...)
	if opts.Token != "" {
		cmd.Env = append(cmd.Env, "ARE_TOKEN="+opts.Token)
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(workdir)
		return nil, fmt.Errorf("aretest: cannot start %s: %w", command[0], err)
	}
	s := &Sidecar{DataDir: dataDir, LogPath: logPath, cmd: cmd, workdir: workdir, exited: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.waitServing(wctx, readyFile, opts.TLS); err != nil {
		s.kill()
		log := s.Log()
		os.RemoveAll(workdir)
		return nil, fmt.Errorf("aretest: %w; sidecar log:\n%s", err, tail(log, 40))
	}
	return s, nil
}

func sidecarCommand(python string) ([]string, error) {
	if configured := os.Getenv("ARE_SIDECAR_COMMAND"); configured != "" && python == "" {
		return strings.Fields(configured), nil
	}
	if python == "" {
		python = os.Getenv("ARE_PYTHON")
	}
	if python == "" {
		dir, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		for {
			candidate := filepath.Join(dir, ".venv", "bin", "python")
			if _, err := os.Stat(candidate); err == nil {
				python = candidate
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				return nil, errors.New("aretest: no sidecar: set ARE_PYTHON (a Python with the `are` package) or ARE_SIDECAR_COMMAND")
			}
			dir = parent
		}
	}
	return []string{python, "-m", "sidecar"}, nil
}

func (s *Sidecar) waitServing(ctx context.Context, readyFile string, config *tls.Config) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.Target == "" {
		if data, err := os.ReadFile(readyFile); err == nil {
			var ready struct {
				Targets []string `json:"targets"`
			}
			if json.Unmarshal(data, &ready) == nil && len(ready.Targets) > 0 {
				s.Target = ready.Targets[0]
				break
			}
		}
		if err := s.pause(ctx, tick); err != nil {
			return fmt.Errorf("no ready file: %w", err)
		}
	}
	creds := insecure.NewCredentials()
	if config != nil {
		creds = credentials.NewTLS(config)
	}
	conn, err := grpc.NewClient(dialTarget(s.Target), grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := health.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if err := s.pause(ctx, tick); err != nil {
			return fmt.Errorf("never SERVING: %w", err)
		}
	}
}

func (s *Sidecar) pause(ctx context.Context, tick *time.Ticker) error {
	select {
	case <-s.exited:
		return fmt.Errorf("sidecar exited (%v)", s.waitErr)
	case <-ctx.Done():
		return ctx.Err()
	case <-tick.C:
		return nil
	}
}

func dialTarget(target string) string {
	if strings.HasPrefix(target, "unix:") {
		return target
	}
	return "passthrough:///" + target
}

// Pid is the child's process id.
func (s *Sidecar) Pid() int { return s.cmd.Process.Pid }

// Log returns everything the sidecar has written so far.
func (s *Sidecar) Log() string {
	data, _ := os.ReadFile(s.LogPath)
	return string(data)
}

// Stop asks the sidecar to shut down (SIGTERM), waits up to 15 s for it to
// exit (then kills it), and removes its temporary folder. It returns the
// child's exit error, if any.
func (s *Sidecar) Stop() error {
	defer os.RemoveAll(s.workdir)
	select {
	case <-s.exited:
		return s.waitErr
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(15 * time.Second)
	defer timer.Stop()
	select {
	case <-s.exited:
		return s.waitErr
	case <-timer.C:
		s.kill()
		return errors.New("aretest: the sidecar did not stop within 15 s; killed")
	}
}

// kill kills the sidecar at once (SIGKILL) and waits for it.
func (s *Sidecar) kill() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

func tail(text string, lines int) string {
	parts := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
