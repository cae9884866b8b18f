package are_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/aretest"
)

// sidecar is the real sidecar every test of the package talks to.
var sidecar *aretest.Sidecar

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	var err error
	sidecar, err = aretest.Start(ctx, aretest.Options{Args: []string{"--durability", "relaxed"}})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := sidecar.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the sidecar:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// within is a context bounded by d, cancelled at the end of the test.
func within(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// connect returns a client of the test sidecar, closed at the end of the test.
func connect(t *testing.T, opts ...are.Option) *are.Client {
	t.Helper()
	client, err := are.Connect(within(t, 10*time.Second), sidecar.Target, opts...)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

var unique atomic.Int64

// name returns a name no other test uses (capabilities, ids, namespaces).
func name(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), unique.Add(1))
}

// fastWorker are worker options that keep tests short: a stop is noticed
// within about two seconds, cancellation within 100 ms.
var fastWorker = are.WorkerOptions{
	Concurrency:       4,
	PollTimeout:       2 * time.Second,
	HeartbeatInterval: 100 * time.Millisecond,
	ShutdownGrace:     5 * time.Second,
}

// run starts w.Run in the background; the returned function stops it and
// fails the test unless Run returns nil within 20 s.
func run(t *testing.T, w *are.Worker) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Worker.Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Worker.Run did not return within 20 s of its context's end")
		}
	}
	t.Cleanup(stop)
	return stop
}

// submitWorkflow builds workflow and submits it with client, failing the test
// on either error.
func submitWorkflow(t *testing.T, ctx context.Context, client *are.Client, workflow *are.WorkflowBuilder) *are.WorkflowHandle {
	t.Helper()
	spec, err := workflow.Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	return handle
}

// eachTransport runs f as one subtest per worker transport, with the
// fastWorker options and that transport.
func eachTransport(t *testing.T, f func(t *testing.T, opts are.WorkerOptions)) {
	t.Helper()
	for _, transport := range []are.Transport{are.TransportStream, are.TransportUnary} {
		t.Run(transport.String(), func(t *testing.T) {
			opts := fastWorker
			opts.Transport = transport
			f(t, opts)
		})
	}
}
