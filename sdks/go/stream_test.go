package are_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/aretest"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// The worker tests of worker_test.go run over both transports; these are
// about the stream's own behaviour.

func TestStreamRunsAWorkflowOfManyTasksWithinItsConcurrency(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-stream-many")

	var inFlight, most atomic.Int32
	opts := fastWorker
	opts.Transport = are.TransportStream
	opts.Concurrency = 3
	worker := client.NewWorker(name("go-streamer"), opts)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		if task.TaskID == "sum" {
			total := 0
			for _, d := range task.Dependencies {
				var v int
				if err := json.Unmarshal(d.Output, &v); err != nil {
					return nil, are.NonRetryable(err)
				}
				total += v
			}
			return json.Marshal(total)
		}
		var v int
		if err := task.DecodeInput(&v); err != nil {
			return nil, are.NonRetryable(err)
		}
		time.Sleep(20 * time.Millisecond) // long enough for the slots to fill
		return json.Marshal(v * v)
	})
	stop := run(t, worker)

	builder := are.NewWorkflow("go-stream-many")
	var parts []string
	want := 0
	for i := 1; i <= 12; i++ {
		id := fmt.Sprintf("square-%d", i)
		parts = append(parts, id)
		builder.Task(id, capability, are.InputJSON(i))
		want += i * i
	}
	builder.Task("sum", capability, are.DependsOn(parts...))
	handle := submitWorkflow(t, ctx, client, builder)
	result, err := handle.Result(ctx)
	if err != nil || string(result) != fmt.Sprint(want) {
		t.Fatalf("Result = %s, %v; want %d", result, err, want)
	}
	if got := most.Load(); got > 3 {
		t.Fatalf("%d handlers ran at once; want at most the concurrency, 3", got)
	}
	stop() // the last acknowledgement may arrive after the result is visible
	stats := worker.Stats()
	if stats.Completed != 13 || stats.Failed != 0 || stats.Connects != 1 {
		t.Fatalf("worker stats = %+v; want 13 completed over one stream", stats)
	}
	if worker.WorkerID() == "" {
		t.Fatal("the worker has no id after registering")
	}
}

func TestStreamHeartbeatsKeepAnAttemptPastItsHeartbeatTimeout(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-stream-beat")

	opts := fastWorker
	opts.Transport = are.TransportStream
	worker := client.NewWorker(name("go-beater"), opts)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		// Two heartbeat timeouts in all: without heartbeats the lease would be
		// lost; with one every 500 ms a stall of up to 1.5 s is tolerated.
		for i := 0; i < 8; i++ {
			task.RecordHeartbeat([]byte(fmt.Sprintf(`{"step":%d}`, i)))
			select {
			case <-time.After(500 * time.Millisecond):
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		return []byte(`"done"`), nil
	})
	run(t, worker)

	spec, err := are.NewWorkflow("go-stream-beat").
		Task("long", capability, are.HeartbeatTimeout(2*time.Second), are.MaxAttempts(1, 0)).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	result, err := handle.Result(ctx)
	if err != nil || string(result) != `"done"` {
		t.Fatalf("Result = %s, %v; want the attempt to outlive its heartbeat timeout", result, err)
	}
}

// TestStreamHeartbeatsByItselfWithinAHeartbeatTimeoutUnderASecond runs a
// handler that never heartbeats by hand for several times its task's 800 ms
// heartbeat timeout: the stream heartbeats the attempt every 200 ms (a quarter
// of the timeout), however seldom it pings when idle (once a second at most).
func TestStreamHeartbeatsByItselfWithinAHeartbeatTimeoutUnderASecond(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-stream-self-beat")

	opts := fastWorker
	opts.Transport = are.TransportStream
	worker := client.NewWorker(name("go-self-beater"), opts)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		select {
		case <-time.After(3 * time.Second):
			return []byte(`"done"`), nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	})
	run(t, worker)

	spec, err := are.NewWorkflow("go-stream-self-beat").
		Task("long", capability, are.HeartbeatTimeout(800*time.Millisecond), are.MaxAttempts(1, 0)).
		Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	result, err := handle.Result(ctx)
	if err != nil || string(result) != `"done"` {
		t.Fatalf("Result = %s, %v; want the stream's own heartbeats to keep the attempt", result, err)
	}
}

// TestStreamReconnectsAfterTheSidecarRestarts restarts a sidecar of its own
// on the same port and data: the worker's stream gets the drain notice, ends,
// and the worker reconnects and serves the next workflow.
func TestStreamReconnectsAfterTheSidecarRestarts(t *testing.T) {
	ctx := within(t, 120*time.Second)
	port := freePort(t)
	dataDir := t.TempDir()
	start := func() *aretest.Sidecar {
		t.Helper()
		s, err := aretest.Start(ctx, aretest.Options{DataDir: dataDir, Args: []string{"--durability", "relaxed", "--listen", "127.0.0.1:" + port}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := start()
	client, err := are.Connect(ctx, "127.0.0.1:"+port)
	if err != nil {
		first.Stop()
		t.Fatal(err)
	}
	defer client.Close()
	capability := name("go-stream-restart")
	opts := fastWorker
	opts.Transport = are.TransportStream
	opts.ReconnectMaxDelay = 200 * time.Millisecond
	worker := client.NewWorker(name("go-restarter"), opts)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		return []byte(`"ok"`), nil
	})
	stop := run(t, worker)

	submit := func() {
		t.Helper()
		handle := submitWorkflow(t, ctx, client, are.NewWorkflow("go-stream-restart").Task("a", capability))
		if result, err := handle.Result(ctx); err != nil || string(result) != `"ok"` {
			t.Fatalf("Result = %s, %v", result, err)
		}
	}
	submit()
	if err := first.Stop(); err != nil {
		t.Logf("stopping the first sidecar: %v", err)
	}
	second := start()
	for { // the client's connection backs off while the sidecar is down
		if _, err := client.Health(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the client never reconnected to the restarted sidecar")
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer func() {
		stop() // before the sidecar goes
		if err := second.Stop(); err != nil {
			t.Logf("stopping the second sidecar: %v", err)
		}
	}()
	submit()
	if got := worker.Stats().Connects; got < 2 {
		t.Fatalf("the worker registered %d times; want a reconnection after the restart", got)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// TestAHeartbeatOverItsBoundDoesNotLoseTheAttempt records heartbeat details
// over 1 MiB: the sidecar refuses such a heartbeat, and the stream worker took
// any refusal for a lost lease, cancelling the handler and reporting nothing
// (the task stayed RUNNING until a timeout). The details are now dropped
// before they are sent, and only a refusal saying the lease is gone ends an
// attempt.
func TestAHeartbeatOverItsBoundDoesNotLoseTheAttempt(t *testing.T) {
	client := connect(t)
	ctx := within(t, 30*time.Second)
	capability := name("go-big-beat")

	opts := fastWorker
	opts.Transport = are.TransportStream
	worker := client.NewWorker(name("go-big-beater"), opts)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		task.RecordHeartbeat([]byte(`"` + strings.Repeat("x", 1<<20) + `"`))
		select {
		case <-time.After(time.Second): // heartbeats go out meanwhile
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		return []byte(`"done"`), nil
	})
	run(t, worker)

	handle := submitWorkflow(t, ctx, client, are.NewWorkflow("go-big-beat").Task("t", capability, are.MaxAttempts(1, 0)))
	result, err := handle.Result(ctx)
	if err != nil || string(result) != `"done"` {
		t.Fatalf("Result = %s, %v; want the attempt to complete", result, err)
	}
}

// TestManyLargeCompletionsAtOnceStayUnderTheMessageBound has handlers
// return outputs of nearly 4 MiB (each within MaxInlineBytes, so inline)
// together. The stream writer batched the results that piled up while it
// wrote by count alone (up to 1,000 a message): twenty went in one message of
// about 80 MiB, over the 64 MiB that the client and the sidecar accept, and
// six in one of 20 MiB or more, over a client's bound of 10 MiB
// (WithMaxMessageBytes). The send failed, the stream broke, every attempt on
// it was taken back, and with one attempt each the workflow failed. A batch
// is now also cut at 16 MiB, or under the client's bound if lower.
func TestManyLargeCompletionsAtOnceStayUnderTheMessageBound(t *testing.T) {
	big := []byte(`"` + strings.Repeat("x", are.MaxInlineBytes-64) + `"`) // inline, not a blob
	returnBig := func(context.Context, *are.Task) ([]byte, error) { return big, nil }
	check := func(t *testing.T, task *arev1.Task) {
		if task.GetState() != arev1.TaskState_TASK_STATE_COMPLETED || len(task.GetOutput().GetData()) != len(big) {
			t.Errorf("%s is %v with %d bytes of inline output (failure %v); want COMPLETED with %d",
				task.GetTaskId(), task.GetState(), len(task.GetOutput().GetData()), task.GetFailure(), len(big))
		}
	}
	t.Run("default bound", func(t *testing.T) {
		worker := allAtOnce(t, connect(t), 20, returnBig, check)
		if stats := worker.Stats(); stats.Completed != 20 || stats.Connects != 1 {
			t.Fatalf("worker stats = %+v; want 20 completed over one stream", stats)
		}
	})
	t.Run("client bound 10 MiB", func(t *testing.T) {
		worker := allAtOnce(t, connect(t, are.WithMaxMessageBytes(10<<20)), 6, returnBig, check)
		if stats := worker.Stats(); stats.Completed != 6 || stats.Connects != 1 {
			t.Fatalf("worker stats = %+v; want 6 completed over one stream", stats)
		}
	})
}

// TestManyLargeHeartbeatsAndFailuresAtOnceStayUnderTheClientsBound is the
// same for heartbeats and failures with details of nearly 1 MiB (their
// bound): twenty at once, batched by count alone, made a message of about
// 20 MiB, over a client's bound of 10 MiB.
func TestManyLargeHeartbeatsAndFailuresAtOnceStayUnderTheClientsBound(t *testing.T) {
	const n = 20
	details := []byte(`"` + strings.Repeat("x", 1<<20-4096) + `"`)
	t.Run("heartbeats", func(t *testing.T) {
		worker := allAtOnce(t, connect(t, are.WithMaxMessageBytes(10<<20)), n,
			func(ctx context.Context, task *are.Task) ([]byte, error) {
				task.RecordHeartbeat(details) // sent at once
				select {
				case <-time.After(500 * time.Millisecond):
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				}
				return []byte(`"ok"`), nil
			},
			func(t *testing.T, task *arev1.Task) {
				if task.GetState() != arev1.TaskState_TASK_STATE_COMPLETED {
					t.Errorf("%s is %v (failure %v); want COMPLETED", task.GetTaskId(), task.GetState(), task.GetFailure())
				}
			})
		if stats := worker.Stats(); stats.Completed != n || stats.Connects != 1 {
			t.Fatalf("worker stats = %+v; want %d completed over one stream", stats, n)
		}
	})
	t.Run("failures", func(t *testing.T) {
		worker := allAtOnce(t, connect(t, are.WithMaxMessageBytes(10<<20)), n,
			func(context.Context, *are.Task) ([]byte, error) {
				return nil, &are.TaskError{Type: "Bulky", Message: "bulky", Details: details, NonRetryable: true}
			},
			func(t *testing.T, task *arev1.Task) {
				f := task.GetFailure()
				if task.GetState() != arev1.TaskState_TASK_STATE_FAILED || f.GetType() != "Bulky" || len(f.GetDetails().GetData()) != len(details) {
					t.Errorf("%s is %v with failure %q of type %q and %d bytes of details; want FAILED of type Bulky with %d",
						task.GetTaskId(), task.GetState(), f.GetMessage(), f.GetType(), len(f.GetDetails().GetData()), len(details))
				}
			})
		if stats := worker.Stats(); stats.Failed != n || stats.Connects != 1 {
			t.Fatalf("worker stats = %+v; want %d failed over one stream", stats, n)
		}
	})
}

// allAtOnce runs a workflow of n independent tasks, one attempt each, on a
// stream worker of concurrency n whose handlers all wait until every one has
// started (a barrier) and then call finish at the same moment. It checks
// each task with check once the workflow has closed, and returns the
// worker, stopped.
func allAtOnce(t *testing.T, client *are.Client, n int, finish are.Handler, check func(*testing.T, *arev1.Task)) *are.Worker {
	t.Helper()
	ctx := within(t, 90*time.Second)
	capability := name("go-all-at-once")
	var arrived atomic.Int32
	together := make(chan struct{}) // closed when every handler has started
	opts := fastWorker
	opts.Transport = are.TransportStream
	opts.Concurrency = n
	worker := client.NewWorker(name("go-all-at-once"), opts)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		if arrived.Add(1) == int32(n) {
			close(together)
		}
		select {
		case <-together:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(30 * time.Second):
			return nil, are.NonRetryable(fmt.Errorf("only %d of %d handlers started", arrived.Load(), n))
		}
		return finish(ctx, task)
	})
	stop := run(t, worker)

	builder := are.NewWorkflow("go-all-at-once")
	for i := 0; i < n; i++ {
		builder.Task(fmt.Sprintf("t-%d", i), capability, are.MaxAttempts(1, 10*time.Millisecond))
	}
	handle := submitWorkflow(t, ctx, client, builder)
	if _, err := handle.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	for i := 0; i < n; i++ { // one at a time: all of them may pass the client's bound
		task, err := handle.Task(ctx, fmt.Sprintf("t-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		check(t, task)
	}
	stop()
	return worker
}
