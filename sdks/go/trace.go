package are

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// Trace reads the flight recorder (TraceService): Client.Trace.
type Trace struct {
	client *Client
}

// TraceFilter selects events; every set field must match, and a list
// matches any of its values. The zero filter matches every event.
type TraceFilter struct {
	WorkflowIDs []string
	TaskIDs     []string
	EventTypes  []arev1.EventType
	WorkerID    string
	// Start and End bound the event time (List only; zero means unbounded).
	Start, End time.Time
}

func (f TraceFilter) proto() *arev1.EventFilter {
	out := &arev1.EventFilter{
		WorkflowIds: f.WorkflowIDs,
		TaskIds:     f.TaskIDs,
		EventTypes:  f.EventTypes,
		WorkerId:    f.WorkerID,
	}
	if !f.Start.IsZero() {
		out.StartTime = timestamppb.New(f.Start)
	}
	if !f.End.IsZero() {
		out.EndTime = timestamppb.New(f.End)
	}
	return out
}

// List returns one page of retained events after the cursor afterSequence
// (0: from the oldest), in sequence order. The response's LastSequence is
// the cursor to follow on from with Stream.
func (t *Trace) List(ctx context.Context, filter TraceFilter, afterSequence uint64, pageSize int32) (*arev1.ListEventsResponse, error) {
	return t.client.Raw.Trace.ListEvents(ctx, &arev1.ListEventsRequest{
		Filter: filter.proto(), AfterSequence: afterSequence, PageSize: pageSize,
	})
}

// StreamOption configures Trace.Stream.
type StreamOption func(*streamOptions)

type streamOptions struct {
	after      *uint64
	keepMissed bool
}

// AfterSequence replays the retained events after the cursor (0: from the
// oldest) before following live; without it the stream is live only.
func AfterSequence(sequence uint64) StreamOption {
	return func(o *streamOptions) { o.after = &sequence }
}

// KeepMissed yields slow-subscriber notices as they come instead of
// fetching the missed events with ListEvents in their place.
func KeepMissed() StreamOption {
	return func(o *streamOptions) { o.keepMissed = true }
}

// TraceItem is one item of an event stream: exactly one field is set.
type TraceItem struct {
	// Event is a recorded event matching the filter.
	Event *arev1.Event
	// CaughtUp marks the end of the replay (sent once).
	CaughtUp *arev1.CaughtUp
	// Missed says matching events were not delivered: always for events
	// gone by retention; for a slow subscriber only with KeepMissed.
	Missed *arev1.EventsMissed
}

// EventStream follows the flight recorder live; read it with Next until it
// returns an error, and Close it when done. Every error Next returns ends the
// stream and releases it at once (Close is then not needed): resume with a
// new Stream after the last sequence received.
type EventStream struct {
	trace  *Trace
	ctx    context.Context
	cancel context.CancelFunc
	stream arev1.TraceService_StreamEventsClient
	filter *arev1.EventFilter
	opts   streamOptions
	seen   recent
	// err is the error that ended the stream, returned by every later Next.
	err error

	// Events still to deliver, one per Next: the rest of a batch the
	// sidecar sent in one message, or events fetched with ListEvents in
	// place of a slow-subscriber notice.
	pending []*arev1.Event
	fill    *arev1.ListEventsRequest
	fillTo  uint64
}

// streamBatch is the StreamEventsRequest.max_batch of every Stream: the
// sidecar sends the events it already has ready (a replay, a burst) up to
// this many in one message, which costs it far less than one message each
// (it runs the scheduler on the same event loop), and Next hands them out
// one by one. The Python SDK asks for the same.
const streamBatch = 256

// Stream opens a live event stream (StreamEvents): the retained events after
// AfterSequence if given, one CaughtUp, then new events as they are recorded,
// until ctx ends or Close. Each event is delivered once; events a slow reader
// missed are fetched with ListEvents and delivered in their place (unless
// KeepMissed). The sidecar buffers a bounded number of events per stream.
// Events it has ready together come in one message (max_batch) and are
// delivered one by one, as if each had come alone.
func (t *Trace) Stream(ctx context.Context, filter TraceFilter, opts ...StreamOption) (*EventStream, error) {
	var o streamOptions
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithCancel(ctx)
	f := filter.proto()
	stream, err := t.client.Raw.Trace.StreamEvents(ctx, &arev1.StreamEventsRequest{Filter: f, AfterSequence: o.after, MaxBatch: streamBatch})
	if err != nil {
		cancel()
		return nil, err
	}
	return &EventStream{trace: t, ctx: ctx, cancel: cancel, stream: stream, filter: f, opts: o, seen: newRecent(recentSize)}, nil
}

// Next blocks until the next item. It returns the context's error once ctx
// ends or the stream is closed, io.EOF if the sidecar ended the stream, and
// an *Error if it failed (UNAVAILABLE while it shuts down: resume with
// AfterSequence set to the last sequence received). An error ends the
// stream: its context is released at once, and later calls return the same
// error.
func (s *EventStream) Next() (TraceItem, error) {
	if s.err != nil {
		return TraceItem{}, s.err
	}
	for {
		if len(s.pending) > 0 {
			event := s.pending[0]
			s.pending = s.pending[1:]
			if len(s.pending) == 0 {
				s.pending = nil // not holding on to a delivered batch while the stream waits
			}
			if s.seen.add(event.GetSequence()) {
				return TraceItem{Event: event}, nil
			}
			continue
		}
		if s.fill != nil {
			if err := s.fetchMissed(); err != nil {
				return TraceItem{}, s.end(err)
			}
			continue
		}
		msg, err := s.stream.Recv()
		if err != nil {
			return TraceItem{}, s.end(err)
		}
		switch m := msg.GetMessage().(type) {
		case *arev1.StreamEventsResponse_Event:
			if s.seen.add(m.Event.GetSequence()) {
				return TraceItem{Event: m.Event}, nil
			}
		case *arev1.StreamEventsResponse_Batch:
			// Consecutive events, in order, with no notice among them:
			// delivered from pending before the next message is read.
			s.pending = m.Batch.GetEvents()
		case *arev1.StreamEventsResponse_CaughtUp:
			return TraceItem{CaughtUp: m.CaughtUp}, nil
		case *arev1.StreamEventsResponse_Missed:
			missed := m.Missed
			if s.opts.keepMissed || missed.GetReason() != arev1.MissedReason_MISSED_REASON_SLOW_SUBSCRIBER {
				return TraceItem{Missed: missed}, nil
			}
			s.fill = &arev1.ListEventsRequest{Filter: s.filter, AfterSequence: missed.GetResumeAfterSequence(), PageSize: 1000}
			s.fillTo = missed.GetLastMissedSequence()
		}
	}
}

// end ends the stream for err and returns the error Next reports: the
// context's own once ctx ended or Close was called, io.EOF when the sidecar
// ended the stream, else err. It cancels the stream's context: that context
// is registered with the caller's ctx, which would otherwise hold it (and,
// for a ctx that is not one of the context package's own, a goroutine) until
// Close or the end of ctx, so a caller resuming ended streams from one
// long-lived ctx, with a defer Close() in its loop say, piled them up.
func (s *EventStream) end(err error) error {
	switch {
	case s.ctx.Err() != nil:
		err = s.ctx.Err()
	case errors.Is(err, io.EOF):
		err = io.EOF
	}
	s.err = err
	s.cancel()
	return err
}

// fetchMissed reads the next page of missed events into pending.
func (s *EventStream) fetchMissed() error {
	page, err := s.trace.client.Raw.Trace.ListEvents(s.ctx, s.fill)
	if err != nil {
		return err
	}
	for _, event := range page.GetEvents() {
		if event.GetSequence() > s.fillTo {
			s.fill = nil
			return nil
		}
		s.pending = append(s.pending, event)
	}
	if page.GetNextPageToken() == "" || page.GetLastSequence() >= s.fillTo {
		s.fill = nil
		return nil
	}
	s.fill.PageToken = page.GetNextPageToken()
	return nil
}

// Close ends the stream; Next then returns context.Canceled (or the error
// that had ended it already). It may be called from another goroutine, to
// end a Next that is waiting.
func (s *EventStream) Close() { s.cancel() }

const recentSize = 16384

// recent remembers the last sequences delivered (bounded), so an event that
// arrives twice (live and through a missed-events fetch) is delivered once.
type recent struct {
	set   map[uint64]struct{}
	order []uint64
	limit int
	next  int
}

func newRecent(limit int) recent {
	return recent{set: map[uint64]struct{}{}, limit: limit}
}

func (r *recent) add(sequence uint64) bool {
	if _, ok := r.set[sequence]; ok {
		return false
	}
	if len(r.order) < r.limit {
		r.order = append(r.order, sequence)
	} else {
		delete(r.set, r.order[r.next])
		r.order[r.next] = sequence
		r.next = (r.next + 1) % len(r.order)
	}
	r.set[sequence] = struct{}{}
	return true
}
