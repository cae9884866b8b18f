package are_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

func TestTraceStreamSeesTheWorkflowsEvents(t *testing.T) {
	client := connect(t)
	ctx := within(t, 60*time.Second)
	capability := name("go-traced")
	workflowID := name("wf-go-traced")

	stream, err := client.Trace.Stream(ctx, are.TraceFilter{WorkflowIDs: []string{workflowID}})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	first, err := stream.Next()
	if err != nil || first.CaughtUp == nil {
		t.Fatalf("first item = %+v, %v; want CaughtUp (nothing to replay)", first, err)
	}

	worker := client.NewWorker(name("go-tracer"), fastWorker)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) { return []byte(`1`), nil })
	run(t, worker)
	spec, err := are.NewWorkflow("go-traced").ID(workflowID).Task("only", capability).Build()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Workflows.Submit(ctx, spec); err != nil {
		t.Fatal(err)
	}

	var types []arev1.EventType
	var last uint64
	for {
		item, err := stream.Next()
		if err != nil {
			t.Fatalf("Next after %v: %v", types, err)
		}
		if item.Event == nil {
			continue
		}
		if item.Event.GetWorkflowId() != workflowID || item.Event.GetSequence() <= last {
			t.Fatalf("event %v is not of the workflow or out of order", item.Event)
		}
		last = item.Event.GetSequence()
		types = append(types, item.Event.GetEventType())
		if item.Event.GetEventType() == arev1.EventType_EVENT_TYPE_WORKFLOW_COMPLETED {
			break
		}
	}
	for _, want := range []arev1.EventType{
		arev1.EventType_EVENT_TYPE_WORKFLOW_SUBMITTED,
		arev1.EventType_EVENT_TYPE_TASK_DISPATCHED,
		arev1.EventType_EVENT_TYPE_TASK_COMPLETED,
	} {
		if !contains(types, want) {
			t.Fatalf("events %v lack %v", types, want)
		}
	}

	// A replay from the start of the log sees the same events, then CaughtUp.
	replay, err := client.Trace.Stream(ctx, are.TraceFilter{WorkflowIDs: []string{workflowID}}, are.AfterSequence(0))
	if err != nil {
		t.Fatal(err)
	}
	var replayed []arev1.EventType
	for {
		item, err := replay.Next()
		if err != nil {
			t.Fatal(err)
		}
		if item.CaughtUp != nil {
			break
		}
		if item.Event != nil {
			replayed = append(replayed, item.Event.GetEventType())
		}
	}
	if len(replayed) < len(types) {
		t.Fatalf("replay saw %v; want at least %v", replayed, types)
	}
	replay.Close()
	if _, err := replay.Next(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after Close = %v; want context.Canceled", err)
	}

	page, err := client.Trace.List(ctx, are.TraceFilter{WorkflowIDs: []string{workflowID}}, 0, 1000)
	if err != nil || len(page.GetEvents()) < len(types) {
		t.Fatalf("List = %d events, %v; want at least %d", len(page.GetEvents()), err, len(types))
	}
}

func contains(types []arev1.EventType, want arev1.EventType) bool {
	for _, got := range types {
		if got == want {
			return true
		}
	}
	return false
}

// countingContext is a caller's context that counts the contexts registered
// to end with it and not yet released. Hiding the context package's own
// parent from them (Value), it has them register through its AfterFunc, as
// the context package does with any parent that has one, and release it by
// calling the stop function that AfterFunc returned.
type countingContext struct {
	context.Context
	live atomic.Int64
}

func (c *countingContext) Value(any) any { return nil }

func (c *countingContext) AfterFunc(f func()) (stop func() bool) {
	c.live.Add(1)
	stopped := context.AfterFunc(c.Context, f)
	var once sync.Once
	return func() bool {
		once.Do(func() { c.live.Add(-1) })
		return stopped()
	}
}

// A trace stream that ended releases its context at once: a caller who
// resumes a broken stream with a new one from the same long-lived ctx (with
// a defer stream.Close() in the loop, say) kept every ended stream
// registered with that ctx, about 550 bytes each (a goroutine each for a
// ctx that is not the context package's own), until Close or ctx's end.
func TestAnEndedTraceStreamReleasesItsContext(t *testing.T) {
	client := connect(t)
	ctx := &countingContext{Context: within(t, 20*time.Second)}
	const streams = 5
	var ended *are.EventStream
	var end error
	for i := 0; i < streams; i++ {
		// After a sequence beyond the end of the log: OUT_OF_RANGE.
		stream, err := client.Trace.Stream(ctx, are.TraceFilter{}, are.AfterSequence(1<<62))
		if err != nil {
			t.Fatal(err)
		}
		if _, err = stream.Next(); are.CodeOf(err) != codes.OutOfRange {
			t.Fatalf("Next after a sequence beyond the log = %v; want OUT_OF_RANGE", err)
		}
		ended, end = stream, err
	}
	if live := ctx.live.Load(); live != 0 {
		t.Fatalf("%d of %d ended trace streams (never closed) still hold a context registered with the caller's; want none", live, streams)
	}
	if _, again := ended.Next(); again != end {
		t.Fatalf("Next after the stream's end = %v; want its end again (%v)", again, end)
	}

	// A stream closed while live releases it too, and ends with context.Canceled.
	stream, err := client.Trace.Stream(ctx, are.TraceFilter{WorkflowIDs: []string{name("wf-none")}})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := stream.Next(); err != nil || first.CaughtUp == nil {
		t.Fatalf("first item = %+v, %v; want CaughtUp", first, err)
	}
	stream.Close()
	if _, err := stream.Next(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after Close = %v; want context.Canceled", err)
	}
	if live := ctx.live.Load(); live != 0 {
		t.Fatalf("a closed trace stream still holds its context (%d live)", live)
	}
}
