package are_test

import (
	"context"
	"errors"
	"testing"
	"time"

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
