package are_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// The SDK under failures, against the real sidecar: handlers that fail in
// every way, the sidecar's retry hints, connections cut by a TCP proxy
// (faultyNetwork) between the client and the sidecar, a client closed under
// open calls, stops with handlers that ignore their context.

// unprintable is an error whose Error method panics.
type unprintable struct{}

func (unprintable) Error() string { panic("no message today") }

// nilPointerError is an error type whose Error reads its receiver: a nil
// *nilPointerError returned as an error panics when printed.
type nilPointerError struct{ text string }

func (e *nilPointerError) Error() string { return e.text }

// Every way a handler can fail ends its single attempt FAILED (none stays
// RUNNING), and frees the worker's only slot for the next task. An error
// whose Error method panics crashed the worker's process; a runtime.Goexit
// left its task RUNNING until its start-to-close timeout.
func TestEveryWayAHandlerFailsIsReportedAndFreesItsSlot(t *testing.T) {
	cases := []struct {
		id       string
		fail     func(ctx context.Context) ([]byte, error)
		typ      string
		contains string
	}{
		{"returns", func(context.Context) ([]byte, error) { return nil, errors.New("plain") }, "errors.errorString", "plain"},
		{"panics", func(context.Context) ([]byte, error) { panic("a string") }, "panic", "a string"},
		{"panics-error", func(context.Context) ([]byte, error) { panic(errors.New("an error")) }, "panic", "an error"},
		{"panics-nil", func(context.Context) ([]byte, error) { panic(nil) }, "panic", "nil"},
		{"unprintable", func(context.Context) ([]byte, error) { return nil, unprintable{} }, "are_test.unprintable", "could not be read"},
		{"typed-nil", func(context.Context) ([]byte, error) { return nil, (*nilPointerError)(nil) }, "are_test.nilPointerError", "could not be read"},
		{"panics-unprintable", func(context.Context) ([]byte, error) { panic(unprintable{}) }, "panic", "no message today"},
		{"self-cancelled", func(ctx context.Context) ([]byte, error) {
			own, cancel := context.WithCancel(ctx)
			cancel()
			<-own.Done()
			return nil, own.Err()
		}, "errors.errorString", "context canceled"},
		{"goexit", func(context.Context) ([]byte, error) { runtime.Goexit(); return nil, nil }, "goexit", "runtime.Goexit"},
	}
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 30*time.Second)
		capability := name("go-fails")
		opts.Concurrency = 1 // a slot not freed stops everything after it
		worker := client.NewWorker(name("go-failer"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			for _, c := range cases {
				if c.id == task.TaskID {
					return c.fail(ctx)
				}
			}
			return []byte(`"ok"`), nil
		})
		stop := run(t, worker)

		builder := are.NewWorkflow("go-fails")
		for _, c := range cases {
			builder.Task(c.id, capability, are.MaxAttempts(1, 0))
		}
		builder.Task("after", capability, are.DependsOn(cases[len(cases)-1].id),
			are.WithTriggerRule(arev1.TriggerRule_TRIGGER_RULE_ALL_DONE))
		handle := submitWorkflow(t, ctx, client, builder)
		if _, err := handle.Wait(ctx); err != nil {
			tasks, _ := handle.Tasks(context.Background(), false)
			var states []string
			for _, task := range tasks {
				states = append(states, fmt.Sprintf("%s %v", task.GetTaskId(), task.GetState()))
			}
			t.Fatalf("Wait: %v; tasks %v (a failure not reported leaves its task RUNNING)", err, states)
		}
		for _, c := range cases {
			task, err := handle.Task(ctx, c.id)
			if err != nil {
				t.Fatal(err)
			}
			f := task.GetFailure()
			if task.GetState() != arev1.TaskState_TASK_STATE_FAILED || f.GetType() != c.typ || !strings.Contains(f.GetMessage(), c.contains) {
				t.Errorf("task %s: %v, failure type %q message %q; want FAILED, type %q, a message with %q",
					c.id, task.GetState(), f.GetType(), f.GetMessage(), c.typ, c.contains)
			}
		}
		after, err := handle.TaskResult(ctx, "after")
		if err != nil || string(after) != `"ok"` {
			t.Fatalf("the task after the failures = %s, %v; want \"ok\" (the slot freed)", after, err)
		}
		stop()
		if stats := worker.Stats(); stats.Failed != int64(len(cases)) || stats.Completed != 1 {
			t.Errorf("worker stats %+v; want %d failed, 1 completed", stats, len(cases))
		}
	})
}

// A handler failing on a call the sidecar refused with a retry hint (a spawn
// into a full pool queue: RESOURCE_EXHAUSTED, POOL_QUEUE_FULL, RetryInfo 1 s)
// passes the hint on as its failure's retry_after: the retry waits at least
// 1 s, not the policy's 10 ms.
func TestAHandlersErrorPassesTheSidecarsRetryHintOn(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 30*time.Second)
		capability, pool := name("go-hint"), name("go-full-pool")
		if _, err := client.Raw.Scheduler.PutPool(ctx, &arev1.PutPoolRequest{Pool: &arev1.Pool{Name: pool, MaxQueueLength: 1}}); err != nil {
			t.Fatalf("PutPool: %v", err)
		}
		refusals := make(chan error, 4)
		worker := client.NewWorker(name("go-hinter"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			if task.Attempt > 1 {
				return []byte(`"ok"`), nil
			}
			var children []*arev1.TaskSpec
			for _, id := range []string{"c1", "c2"} { // two ready tasks for a queue of one
				child, err := are.NewTaskSpec(id, name("nobody-serves"), are.WithPool(pool))
				if err != nil {
					return nil, are.NonRetryable(err)
				}
				children = append(children, child)
			}
			_, err := task.Spawn(ctx, children, false, "")
			refusals <- err
			return nil, fmt.Errorf("cannot plan: %w", err)
		})
		run(t, worker)

		handle := submitWorkflow(t, ctx, client, are.NewWorkflow("go-hint").Task("plan", capability, are.MaxAttempts(2, 10*time.Millisecond)))
		if result, err := handle.Result(ctx); err != nil || string(result) != `"ok"` {
			t.Fatalf("Result = %s, %v; want attempt 2's \"ok\"", result, err)
		}
		var refusal *are.Error
		if err := <-refusals; !errors.As(err, &refusal) || refusal.Reason != "POOL_QUEUE_FULL" || refusal.RetryDelay != time.Second {
			t.Fatalf("the spawn failed with %v; want POOL_QUEUE_FULL with a 1 s retry hint", err)
		}
		page, err := client.Trace.List(ctx, are.TraceFilter{
			WorkflowIDs: []string{handle.ID}, EventTypes: []arev1.EventType{arev1.EventType_EVENT_TYPE_TASK_RETRY_SCHEDULED},
		}, 0, 10)
		if err != nil || len(page.GetEvents()) != 1 {
			t.Fatalf("TASK_RETRY_SCHEDULED events = %v, %v; want one", page.GetEvents(), err)
		}
		if backoff := page.GetEvents()[0].GetAttributes()["are.retry.backoff_ms"].GetDoubleValue(); backoff < 1000 {
			t.Fatalf("the retry was scheduled after %.1f ms; want at least the sidecar's 1 s hint", backoff)
		}
	})
}

// A Wait, a worker's Run: closing the client under them ends them with an
// error at once, instead of their retrying on a closed connection until
// their context ends; it wraps ErrClientClosed, as does a call made after.
func TestClosingTheClientEndsItsWaitsAndWorkers(t *testing.T) {
	ctx := within(t, 60*time.Second)
	client, err := are.Connect(ctx, sidecar.Target)
	if err != nil {
		t.Fatal(err)
	}
	handle := client.Workflows.Handle(openWorkflow(t, ctx, connect(t), nil).ID) // nobody serves it
	capability := name("go-closed")
	waited := make(chan error, 1)
	go func() {
		_, err := handle.Wait(ctx)
		waited <- err
	}()
	ran := map[are.Transport]chan error{}
	for _, transport := range []are.Transport{are.TransportStream, are.TransportUnary} {
		opts := fastWorker
		opts.Transport = transport
		worker := client.NewWorker(name("go-closed-"+transport.String()), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) { return nil, nil })
		errs := make(chan error, 1)
		ran[transport] = errs
		go func() { errs <- worker.Run(ctx) }()
	}
	time.Sleep(500 * time.Millisecond) // the wait watches, the workers connect and poll
	closed := time.Now()
	client.Close()
	check := func(what string, errs <-chan error) {
		t.Helper()
		select {
		case err := <-errs:
			if !errors.Is(err, are.ErrClientClosed) || errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s after Close = %v; want ErrClientClosed", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not return within 10 s of Close", what)
		}
	}
	check("Wait", waited)
	check("stream Worker.Run", ran[are.TransportStream])
	check("unary Worker.Run", ran[are.TransportUnary]) // its poll in flight ends with the connection
	if took := time.Since(closed); took > 5*time.Second {
		t.Errorf("they returned %v after Close; want at once", took)
	}
	_, err = client.Workflows.Get(ctx, handle.ID)
	if !errors.Is(err, are.ErrClientClosed) || !errors.Is(err, are.ErrCancelled) {
		t.Errorf("a call after Close = %v; want CANCELLED wrapping ErrClientClosed", err)
	}
}

// faultyNetwork is a TCP proxy to a sidecar whose connections the test cuts:
// the network failing between a real client and a real sidecar.
type faultyNetwork struct {
	listener net.Listener
	target   string
	lifetime time.Duration // > 0: each connection is cut this long after it opens

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// newFaultyNetwork starts a proxy to target, closed at the end of the test.
func newFaultyNetwork(t *testing.T, target string, lifetime time.Duration) *faultyNetwork {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &faultyNetwork{listener: l, target: target, lifetime: lifetime, conns: map[net.Conn]struct{}{}}
	go n.serve()
	t.Cleanup(func() {
		l.Close()
		n.cut()
	})
	return n
}

// Target is the proxy's address, to connect to instead of the sidecar's.
func (n *faultyNetwork) Target() string { return n.listener.Addr().String() }

func (n *faultyNetwork) serve() {
	for {
		client, err := n.listener.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", n.target)
		if err != nil {
			client.Close()
			continue
		}
		n.mu.Lock()
		n.conns[client], n.conns[server] = struct{}{}, struct{}{}
		n.mu.Unlock()
		pipe := func(to, from net.Conn) {
			io.Copy(to, from)
			to.Close()
			from.Close()
		}
		go pipe(client, server)
		go pipe(server, client)
		if n.lifetime > 0 {
			time.AfterFunc(n.lifetime, func() {
				client.Close()
				server.Close()
			})
		}
	}
}

// down closes the proxy for good: the sidecar is unreachable.
func (n *faultyNetwork) down() {
	n.listener.Close()
	n.cut()
}

// cut closes every connection open through the proxy; new ones are let through.
func (n *faultyNetwork) cut() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for conn := range n.conns {
		conn.Close()
		delete(n.conns, conn)
	}
}

// A Wait whose watch breaks resumes it from its cursor, which makes it an
// event subscriber; when the sidecar's subscribers are all taken, the
// resumed watch is refused (RESOURCE_EXHAUSTED, RESOURCE_LIMIT, RetryInfo
// 1 s). The Wait waits out the hint and resumes, instead of returning the
// refusal.
func TestAWaitRefusedForWantOfSubscribersResumesAfterTheHint(t *testing.T) {
	ctx := within(t, 90*time.Second)
	direct := connect(t)
	workflow := openWorkflow(t, ctx, direct, nil) // nobody serves it
	network := newFaultyNetwork(t, sidecar.Target, 0)
	proxied, err := are.Connect(ctx, network.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer proxied.Close()
	waited := make(chan error, 1)
	var closed *arev1.Workflow
	go func() {
		var err error
		closed, err = proxied.Workflows.Handle(workflow.ID).Wait(ctx)
		waited <- err
	}()
	time.Sleep(time.Second) // the first watch is open and has its cursor

	// Take every subscriber the sidecar has (1,024 at most), with resumed
	// watches spread over connections of their own.
	fillers := []*are.Client{connect(t), connect(t), connect(t)}
	fillCtx, release := context.WithCancel(ctx)
	defer release()
	subscribe := func(i int) error {
		seq := uint64(0)
		stream, err := fillers[i%len(fillers)].Raw.Scheduler.WatchWorkflow(fillCtx,
			&arev1.WatchWorkflowRequest{WorkflowId: workflow.ID, IncludeTasks: true, AfterSequence: &seq})
		if err == nil {
			_, err = stream.Recv() // its first status, or the refusal
		}
		return err
	}
	var refusal *are.Error
	for i := 0; ; i++ {
		err := subscribe(i)
		if err == nil {
			if i > 3000 {
				t.Fatal("3,000 subscribers and none refused")
			}
			continue
		}
		if !errors.As(err, &refusal) || refusal.Code != codes.ResourceExhausted || refusal.RetryDelay != time.Second {
			t.Fatalf("subscriber %d refused with %v; want RESOURCE_EXHAUSTED with a 1 s retry hint", i, err)
		}
		break
	}

	network.cut() // the Wait's watch breaks; its resumed watch is refused
	select {
	case err := <-waited:
		t.Fatalf("Wait returned %v while the subscribers were all taken; want it to wait for the hint and resume", err)
	case <-time.After(2500 * time.Millisecond):
	}
	if err := subscribe(0); !errors.Is(err, are.ErrResourceExhausted) {
		t.Fatalf("a subscriber while full = %v; want RESOURCE_EXHAUSTED (the Wait was refused)", err)
	}
	release()
	if _, err := workflow.Cancel(ctx, "test over"); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil || closed.GetState() != arev1.WorkflowState_WORKFLOW_STATE_CANCELLED {
		t.Fatalf("Wait = %v, %v; want the CANCELLED workflow", closed.GetState(), err)
	}
}

// A stream that breaks just after registering (here the network cuts each
// connection 150 ms after it opens) does not reset the reconnect backoff:
// only a stream that lived 10 s does. Without that rule the worker
// reconnected about every 180 ms, some 17 times in 3 s; with it, 6 or 7.
func TestShortLivedStreamsBackOff(t *testing.T) {
	network := newFaultyNetwork(t, sidecar.Target, 150*time.Millisecond)
	client, err := are.Connect(within(t, 10*time.Second), network.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	opts := fastWorker
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	worker := client.NewWorker(name("go-short-lived"), opts)
	worker.Handle(name("go-short-lived"), func(ctx context.Context, task *are.Task) ([]byte, error) { return nil, nil })
	stop := run(t, worker)
	time.Sleep(3 * time.Second)
	stop()
	if got := worker.Stats().Connects; got < 2 || got > 10 {
		t.Fatalf("the worker registered %d times in 3 s with every stream cut after 150 ms; want a few (2 to 10) as its backoff grows", got)
	}
}

// GetOrCall when the cache cannot be reached: the lookup failing with
// UNAVAILABLE, the call is made all the same and its answer returned (not
// stored); and an answer whose store fails (the sidecar gone during the
// call) is returned, not lost behind the store's error. Lookup itself still
// returns UNAVAILABLE.
func TestGetOrCallAnswersWhenTheCacheIsDown(t *testing.T) {
	ctx := within(t, 30*time.Second)
	direct := connect(t)
	namespace := name("go-cache-down")
	if _, _, err := direct.Cache.PutNamespace(ctx, &arev1.CacheNamespace{Name: namespace}); err != nil {
		t.Fatal(err)
	}
	network := newFaultyNetwork(t, sidecar.Target, 0)
	client, err := are.Connect(ctx, network.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	// The sidecar goes away during the call: the answer's store fails.
	value, hit, err := client.Cache.GetOrCall(ctx, namespace, "first question", func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		network.down()
		return []byte(`"first answer"`), nil, nil
	})
	if err != nil || hit != nil || string(value) != `"first answer"` {
		t.Fatalf("GetOrCall whose store fails = %s, %+v, %v; want the call's answer as a miss, no error", value, hit, err)
	}
	// The sidecar is unreachable: the lookup fails, the call answers.
	if _, err := client.Cache.Lookup(ctx, namespace, "second question"); !errors.Is(err, are.ErrUnavailable) {
		t.Fatalf("Lookup with the sidecar unreachable = %v; want UNAVAILABLE", err)
	}
	calls := 0
	value, hit, err = client.Cache.GetOrCall(ctx, namespace, "second question", func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		calls++
		return []byte(`"second answer"`), nil, nil
	})
	if err != nil || hit != nil || string(value) != `"second answer"` || calls != 1 {
		t.Fatalf("GetOrCall with the sidecar unreachable = %s, %+v, %v after %d calls; want the call's answer, once", value, hit, err, calls)
	}
	for _, prompt := range []string{"first question", "second question"} {
		if hit, err := direct.Cache.Lookup(ctx, namespace, prompt); err != nil || hit != nil {
			t.Fatalf("Lookup(%q) = %+v, %v; want a miss: the answer could not be stored", prompt, hit, err)
		}
	}
	// A caller's own deadline is not a cache outage: nothing is called.
	expired, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	<-expired.Done()
	if _, _, err := direct.Cache.GetOrCall(expired, namespace, "third question", func(ctx context.Context) ([]byte, *arev1.Usage, error) {
		t.Error("the call was made past the caller's deadline")
		return nil, nil, nil
	}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GetOrCall past its deadline = %v; want context.DeadlineExceeded", err)
	}
}

// runUntil starts w.Run and returns a function that ends its context and
// returns how long Run then took, failing the test if it took over limit.
func runUntil(t *testing.T, w *are.Worker, limit time.Duration) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(cancel)
	return func() time.Duration {
		t.Helper()
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Worker.Run: %v", err)
			}
		case <-time.After(limit):
			t.Fatalf("Worker.Run did not return within %v of its context's end", limit)
		}
		return time.Since(start)
	}
}

// A stop gives running handlers ShutdownGrace, then cancels their context;
// a handler that ignores it is handed back (its attempt fails WORKER_LOST
// and is retried; what it returns later is not reported) and Run returns,
// instead of waiting for it forever.
func TestAStopHandsBackAHandlerThatIgnoresItsContext(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-stubborn")
		started, release := make(chan struct{}, 1), make(chan struct{})
		opts.ShutdownGrace = 300 * time.Millisecond
		worker := client.NewWorker(name("go-stubborn"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			started <- struct{}{}
			<-release // deaf to ctx
			return []byte(`"late"`), nil
		})
		stop := runUntil(t, worker, 10*time.Second)
		defer close(release)

		spec, err := are.NewWorkflow("go-stubborn").Task("deaf", capability, are.MaxAttempts(3, time.Hour)).Build()
		if err != nil {
			t.Fatal(err)
		}
		handle, err := client.Workflows.Submit(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		<-started
		if took := stop(); took > 5*time.Second {
			t.Errorf("Run took %v to stop; want about the grace (300 ms) and a second", took)
		}
		var task *arev1.Task
		eventually(t, 10*time.Second, "the handed-back attempt to be retried", func() bool {
			task, err = handle.Task(ctx, "deaf")
			s := task.GetState()
			return err == nil && (s == arev1.TaskState_TASK_STATE_BACKING_OFF || s == arev1.TaskState_TASK_STATE_SCHEDULED)
		})
		if f := task.GetFailure(); task.GetAttempt() != 1 || f.GetKind() != arev1.FailureKind_FAILURE_KIND_WORKER_LOST {
			t.Fatalf("attempt %d failed with %v; want attempt 1, WORKER_LOST", task.GetAttempt(), f)
		}
		release <- struct{}{} // the handler returns at last: nothing is reported
		time.Sleep(200 * time.Millisecond)
		if stats := worker.Stats(); stats.Completed != 0 {
			t.Fatalf("worker stats %+v; want nothing completed", stats)
		}
		if _, err := handle.Cancel(ctx, "test over"); err != nil {
			t.Fatal(err)
		}
	})
}

// A stop does not wait for the handler of an attempt the sidecar already
// took back (its workflow cancelled), even one that ignores its context.
func TestAStopDoesNotWaitForAttemptsAlreadyTakenBack(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 60*time.Second)
		capability := name("go-taken-back")
		started, release := make(chan struct{}, 1), make(chan struct{})
		defer close(release)
		cancelled := make(chan struct{})
		opts.ShutdownGrace = 10 * time.Second
		worker := client.NewWorker(name("go-taken-back"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			started <- struct{}{}
			<-ctx.Done()
			close(cancelled)
			<-release // then goes on, deaf
			return nil, ctx.Err()
		})
		stop := runUntil(t, worker, 20*time.Second)
		handle := submitWorkflow(t, ctx, client, are.NewWorkflow("go-taken-back").Task("a", capability))
		<-started
		if _, err := handle.Cancel(ctx, "taken back"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-cancelled:
		case <-ctx.Done():
			t.Fatal("the cancellation never reached the handler")
		}
		if took := stop(); took > 4*time.Second {
			t.Errorf("Run took %v to stop; want no wait for the attempt taken back (ShutdownGrace is 10 s)", took)
		}
	})
}

// An output content type that is not valid UTF-8 cannot be encoded: sent, it
// broke the worker's stream (its other attempts lost with it) or, on the
// unary path, failed CompleteTask without a word to the sidecar, leaving the
// task RUNNING. The attempt fails as CompletionRefused instead, the stream
// unbroken.
func TestAnOutputContentTypeNotUTF8FailsTheAttempt(t *testing.T) {
	eachTransport(t, func(t *testing.T, opts are.WorkerOptions) {
		client := connect(t)
		ctx := within(t, 20*time.Second)
		capability := name("go-not-utf8")
		worker := client.NewWorker(name("go-not-utf8"), opts)
		worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
			task.AddUsage(&arev1.Usage{InputTokens: 3})
			task.SetOutputContentType("text/\xff")
			return []byte("x"), nil
		})
		stop := run(t, worker)
		task := failedTask(ctx, t, client, "go-not-utf8", capability)
		if f := task.GetFailure(); f.GetType() != are.CompletionRefusedType || !strings.Contains(f.GetMessage(), "not valid UTF-8") {
			t.Fatalf("failure %v; want %s saying the content type is not valid UTF-8", f, are.CompletionRefusedType)
		}
		if got := task.GetUsage().GetUsage().GetInputTokens(); got != 3 {
			t.Errorf("task usage %v; want the attempt's", task.GetUsage().GetUsage())
		}
		stop()
		if stats := worker.Stats(); stats.Failed != 1 || (opts.Transport == are.TransportStream && stats.Connects != 1) {
			t.Errorf("worker stats %+v; want 1 failed over one stream", stats)
		}
	})
}
