package are_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	are "github.com/are-runtime/are/sdks/go"
	"github.com/are-runtime/are/sdks/go/arev1"
)

// eventWire is what the client's StreamEvents calls carried, as seen by a
// stream interceptor: each request's max_batch, and how many events each
// message received held (1 for an event alone), in order.
type eventWire struct {
	mu         sync.Mutex
	maxBatches []uint32
	messages   []int
	batched    bool // whether any message was a batch
}

// dialOption records every StreamEvents call of a client on w.
func (w *eventWire) dialOption() grpc.DialOption {
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption,
	) (grpc.ClientStream, error) {
		stream, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != arev1.TraceService_StreamEvents_FullMethodName {
			return stream, err
		}
		return &eventWireStream{ClientStream: stream, wire: w}, nil
	})
}

// take returns what was recorded since the last take, and forgets it.
func (w *eventWire) take() (maxBatches []uint32, messages []int, batched bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	maxBatches, messages, batched = w.maxBatches, w.messages, w.batched
	w.maxBatches, w.messages, w.batched = nil, nil, false
	return maxBatches, messages, batched
}

// carried is how many events the messages held; it fails the test if one
// held more than max_batch (256).
func carried(t *testing.T, messages []int) int {
	t.Helper()
	total := 0
	for _, size := range messages {
		if size > 256 {
			t.Fatalf("events per message %v; a batch holds at most max_batch (256)", messages)
		}
		total += size
	}
	return total
}

type eventWireStream struct {
	grpc.ClientStream
	wire *eventWire
}

func (s *eventWireStream) SendMsg(m any) error {
	if request, ok := m.(*arev1.StreamEventsRequest); ok {
		s.wire.mu.Lock()
		s.wire.maxBatches = append(s.wire.maxBatches, request.GetMaxBatch())
		s.wire.mu.Unlock()
	}
	return s.ClientStream.SendMsg(m)
}

func (s *eventWireStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if response, ok := m.(*arev1.StreamEventsResponse); ok && err == nil {
		s.wire.mu.Lock()
		if response.GetEvent() != nil {
			s.wire.messages = append(s.wire.messages, 1)
		}
		if batch := response.GetBatch(); batch != nil {
			s.wire.messages = append(s.wire.messages, len(batch.GetEvents()))
			s.wire.batched = true
		}
		s.wire.mu.Unlock()
	}
	return err
}

// reportedEvents is how many custom events the batched workflow's task
// reports: enough that a replay has several hundred events ready at once.
const reportedEvents = 600

// batchedWorkflow runs the one-task workflow workflowID, whose task reports
// reportedEvents custom events (named "e0", "e1", ...) in one ReportEvents
// call, and returns once it has completed.
func batchedWorkflow(t *testing.T, ctx context.Context, client *are.Client, workflowID string) {
	t.Helper()
	capability := name("go-batched")
	worker := client.NewWorker(name("go-batcher"), fastWorker)
	worker.Handle(capability, func(ctx context.Context, task *are.Task) ([]byte, error) {
		events := make([]*arev1.ReportedEvent, reportedEvents)
		for i := range events {
			events[i] = &arev1.ReportedEvent{
				WorkflowId: task.WorkflowID, TaskId: task.TaskID, Attempt: task.Attempt,
				EventType: arev1.EventType_EVENT_TYPE_WORKER_CUSTOM, Name: fmt.Sprintf("e%d", i),
			}
		}
		if _, err := client.Raw.Worker.ReportEvents(ctx, &arev1.ReportEventsRequest{Events: events}); err != nil {
			return nil, err
		}
		return []byte(`1`), nil
	})
	stop := run(t, worker)
	defer stop()
	spec, err := are.NewWorkflow("go-batched").ID(workflowID).Task("only", capability).Build()
	if err != nil {
		t.Fatal(err)
	}
	handle, err := client.Workflows.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if wf, err := handle.Wait(ctx); err != nil || wf.GetState() != arev1.WorkflowState_WORKFLOW_STATE_COMPLETED {
		t.Fatalf("Wait = %v, %v; want COMPLETED", wf.GetState(), err)
	}
}

// listed returns the sequences of every retained event of the filter, with
// ListEvents: what a stream replaying it must deliver.
func listed(t *testing.T, ctx context.Context, client *are.Client, filter are.TraceFilter) []uint64 {
	t.Helper()
	var sequences []uint64
	var after uint64
	for {
		page, err := client.Trace.List(ctx, filter, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, event := range page.GetEvents() {
			sequences = append(sequences, event.GetSequence())
		}
		if page.GetNextPageToken() == "" {
			return sequences
		}
		after = page.GetLastSequence()
	}
}

// replayed reads a stream to its CaughtUp and returns the events before it.
func replayed(t *testing.T, stream *are.EventStream) []*arev1.Event {
	t.Helper()
	var events []*arev1.Event
	for {
		item, err := stream.Next()
		if err != nil {
			t.Fatalf("Next after %d events: %v", len(events), err)
		}
		switch {
		case item.CaughtUp != nil:
			return events
		case item.Missed != nil:
			t.Fatalf("Missed %v after %d events; want none", item.Missed, len(events))
		default:
			events = append(events, item.Event)
		}
	}
}

func sequencesOf(events []*arev1.Event) []uint64 {
	out := make([]uint64, len(events))
	for i, event := range events {
		out[i] = event.GetSequence()
	}
	return out
}

// Trace.Stream asks for batches (max_batch), which cost the sidecar far less
// than one message per event, and hands their events out one by one: events
// followed live, and a replay of hundreds of events ready at once (which
// comes in batches on the wire), are delivered whole, in order, each event
// once, as ListEvents lists them; and a cursor taken from the middle of a
// batch resumes right after it.
func TestTraceStreamUnpacksBatchesInOrder(t *testing.T) {
	ctx := within(t, 90*time.Second)
	var wire eventWire
	client := connect(t, are.WithDialOptions(wire.dialOption()))
	workflowID := name("wf-go-batched")
	filter := are.TraceFilter{WorkflowIDs: []string{workflowID}}

	// Live: the stream is open before the workflow exists; its 600 events
	// are recorded at once.
	live, err := client.Trace.Stream(ctx, filter)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if first, err := live.Next(); err != nil || first.CaughtUp == nil {
		t.Fatalf("first item = %+v, %v; want CaughtUp (nothing to replay)", first, err)
	}
	batchedWorkflow(t, ctx, client, workflowID)
	want := listed(t, ctx, client, filter)
	if len(want) < reportedEvents {
		t.Fatalf("ListEvents has %d events of the workflow; want at least the %d reported", len(want), reportedEvents)
	}
	var followed []uint64
	for len(followed) < len(want) {
		item, err := live.Next()
		if err != nil {
			t.Fatalf("Next after %d live events: %v", len(followed), err)
		}
		if item.Event == nil {
			t.Fatalf("live item %+v after %d events; want only events", item, len(followed))
		}
		followed = append(followed, item.Event.GetSequence())
	}
	live.Close()
	if !slices.Equal(followed, want) {
		t.Fatalf("the live stream delivered %v...; want the %d events ListEvents lists, in order: %v...", head(followed), len(want), head(want))
	}
	maxBatches, messages, _ := wire.take()
	if !slices.Equal(maxBatches, []uint32{256}) {
		t.Fatalf("the live StreamEvents request asked for max_batch %v; want [256]", maxBatches)
	}
	if got := carried(t, messages); got != len(want) {
		t.Fatalf("the live stream carried %d events (per message: %v); want %d, each delivered", got, messages, len(want))
	}

	// Replay: every event is ready at once.
	stream, err := client.Trace.Stream(ctx, filter, are.AfterSequence(0))
	if err != nil {
		t.Fatal(err)
	}
	events := replayed(t, stream)
	stream.Close()
	if got := sequencesOf(events); !slices.Equal(got, want) {
		t.Fatalf("the replay delivered %d events %v...; want the %d ListEvents lists, in order: %v...", len(got), head(got), len(want), head(want))
	}
	var names []string
	for _, event := range events {
		if event.GetEventType() == arev1.EventType_EVENT_TYPE_WORKER_CUSTOM {
			names = append(names, event.GetName())
		}
	}
	for i, got := range names {
		if got != fmt.Sprintf("e%d", i) {
			t.Fatalf("custom event %d is %q; want e%d (the order reported)", i, got, i)
		}
	}
	if len(names) != reportedEvents {
		t.Fatalf("the replay delivered %d custom events; want %d", len(names), reportedEvents)
	}

	maxBatches, messages, batched := wire.take()
	if !slices.Equal(maxBatches, []uint32{256}) {
		t.Fatalf("the replay's StreamEvents request asked for max_batch %v; want [256]", maxBatches)
	}
	if !batched {
		t.Fatalf("a replay of %d ready events came in %d messages, none a batch", len(want), len(messages))
	}
	if got := carried(t, messages); got != len(want) {
		t.Fatalf("the replay carried %d events (per message: %v); want %d, each delivered", got, messages, len(want))
	}
	middle, before := -1, 0
	for _, size := range messages {
		if size > 1 {
			middle = before + size/2 // an event inside the first batch, not its last
			break
		}
		before += size
	}

	// A resume from an event inside a batch (its cursor is that event's
	// sequence) replays exactly the events after it.
	resumed, err := client.Trace.Stream(ctx, filter, are.AfterSequence(events[middle].GetSequence()))
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	if got := sequencesOf(replayed(t, resumed)); !slices.Equal(got, want[middle+1:]) {
		t.Fatalf("a resume after %d delivered %v...; want the %d events after it: %v...", events[middle].GetSequence(), head(got), len(want)-middle-1, head(want[middle+1:]))
	}
}

// head is the first few of a list of sequences, for a failure message.
func head(sequences []uint64) []uint64 {
	return sequences[:min(len(sequences), 8)]
}
