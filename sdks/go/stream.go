package are

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// The worker's stream transport: one WorkerService.Connect stream per
// worker, reconnected with jittered backoff when it breaks. A reader takes
// assignments, acknowledgements, cancellations and drain notices; a single
// writer sends what is pending (heartbeats, completions, failures, a drain,
// a ping) in batches, everything that accumulated while the previous write
// was in flight going in the next one, cut by count and by size (see
// batches). Pending items are bounded by the attempts held, which the
// sidecar bounds by the registered concurrency.

const (
	// sdkName identifies this SDK in the registration.
	sdkName = "are-sdk-go"
	// maxStreamBatch is the most items of one kind in one message.
	maxStreamBatch = 1000
	// maxStreamBatchBytes is the most bytes of items in one message. The
	// sidecar accepts messages of up to 64 MiB by default, and one item can
	// be 4 MiB (an inline output) or 1 MiB (a failure's details, a
	// heartbeat's): cut by count alone, twenty large completions queued
	// together made one message of about 80 MiB, over the bound (the
	// client's too, WithMaxMessageBytes), which broke the stream and lost
	// every attempt on it. 16 MiB is a quarter of the bound, as the
	// sidecar's own assignment batches (worker_service.proto), and still
	// holds three of the largest items; a client whose bound is lower cuts
	// below that (see batchBytes).
	maxStreamBatchBytes = 16 * 1024 * 1024
	// envelopeBytes is what a message holds beside its items: the batch's
	// tag and length in the ConnectRequest (6 bytes at most), with room to
	// spare.
	envelopeBytes = 1024
	// defaultStreamHeartbeat is the heartbeat interval when the sidecar
	// gives none.
	defaultStreamHeartbeat = 10 * time.Second
	// closeWait bounds how long a draining worker waits for the sidecar to
	// end the stream after the worker half-closed it.
	closeWait = 5 * time.Second
)

// batchBytes is the byte budget of a batch's items for a client whose
// messages are bounded by maxMessageBytes.
func batchBytes(maxMessageBytes int) int {
	return max(0, min(maxStreamBatchBytes, maxMessageBytes-envelopeBytes))
}

// batches cuts items into the batches of consecutive messages, in order:
// each of at most maxStreamBatch items and budget bytes of them encoded, a
// batch being cut when the next item would take it over. An item over the
// budget by itself goes alone: each is fitted to the sidecar's bounds when
// it is made (an output over MaxInlineBytes goes as a blob, a failure is
// cut to 1 MiB of details, heartbeat details over 1 MiB are dropped), so it
// still fits a message.
func batches[T proto.Message](items []T, budget int) [][]T {
	var out [][]T
	start, bytes := 0, 0
	for i, item := range items {
		// As an element of the batch's repeated field 1: its tag, its
		// length, the message.
		size := protowire.SizeTag(1) + protowire.SizeBytes(proto.Size(item))
		if i > start && (i-start == maxStreamBatch || bytes+size > budget) {
			out = append(out, items[start:i:i])
			start, bytes = i, 0
		}
		bytes += size
	}
	if start < len(items) {
		out = append(out, items[start:])
	}
	return out
}

type attemptKey struct {
	workflowID, taskID string
	attempt            int32
}

// streamAttempt is one attempt held on a stream.
type streamAttempt struct {
	key    attemptKey
	task   *Task
	cancel context.CancelCauseFunc
	// every is how often the attempt is heartbeated; next is when (under
	// the session's lock).
	every time.Duration
	next  time.Time
	// lost is set when the sidecar took the attempt back (a cancellation,
	// a refused heartbeat, the stream's end) or a stop handed it back: its
	// result is not reported.
	lost atomic.Bool
	// ack receives the acknowledgement of the attempt's result.
	ack chan *arev1.TaskAck
	// finish releases the attempt from the stop's wait (see runAttempts).
	finish func()
}

// streamSession is one registered stream.
type streamSession struct {
	w        *Worker
	stream   arev1.WorkerService_ConnectClient
	cancel   context.CancelFunc
	interval time.Duration
	// batchBytes is the byte budget of a batch's items (batchBytes).
	batchBytes int

	done    chan struct{} // closed when the session ends
	endOnce sync.Once
	err     error // why it ended, set before done is closed

	wake    chan struct{} // wakes the writer (capacity 1)
	rearm   chan struct{} // wakes the heartbeat loop to look again at what is held (capacity 1)
	changed chan struct{} // signals that held or waiting shrank (capacity 1)

	mu          sync.Mutex
	held        map[attemptKey]*streamAttempt // assigned, handler not returned
	waiting     map[attemptKey]*streamAttempt // results sent, not yet acknowledged
	beats       map[attemptKey]*arev1.TaskHeartbeat
	completions []*arev1.TaskCompletion
	failures    []*arev1.TaskFailure
	drain       string
	closing     bool
	lastWrite   time.Time
}

// stableSession is how long a stream must have lived for its end to reset
// the reconnect backoff: a stream that the sidecar (or the network) ends
// just after registering it would otherwise be reconnected about twenty
// times a second.
const stableSession = 10 * time.Second

// serveStream serves over the stream until ctx ends (then drains and
// returns nil), the sidecar refuses the worker for good, or the client is
// closed. A broken stream is reconnected after a jittered wait that doubles
// from 50 ms to ReconnectMaxDelay, and is at least the sidecar's retry hint
// when its refusal carries one; the wait starts over from 50 ms only after a
// stream that lived stableSession.
func (w *Worker) serveStream(ctx, base context.Context, stopHandlers context.CancelCauseFunc, slots chan struct{}, attempts *runAttempts) error {
	delay := firstRetryDelay
	for ctx.Err() == nil {
		s, err := w.openStream(ctx)
		if err == nil {
			w.connects.Add(1)
			opened := time.Now()
			var drained bool
			drained, err = s.serve(ctx, base, stopHandlers, slots, attempts)
			if drained {
				return nil
			}
			if time.Since(opened) >= stableSession {
				delay = firstRetryDelay
			}
		}
		if fatalPollError(err) {
			return fmt.Errorf("are: worker %s refused: %w", w.name, err)
		}
		if closed := closedError(w.client.conn, err); closed != nil {
			return fmt.Errorf("are: worker %s: %w", w.name, closed)
		}
		if ctx.Err() == nil {
			w.log.Warn("worker stream ended; reconnecting", "error", err)
		}
		if sleep(ctx, retryWait(delay, retryDelayOf(err))) != nil {
			return nil
		}
		delay = min(2*delay, w.opts.ReconnectMaxDelay)
	}
	return nil
}

// openStream connects and registers, within ReportTimeout or until ctx ends.
func (w *Worker) openStream(ctx context.Context) (*streamSession, error) {
	// The stream outlives ctx: a stopping worker drains it.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stopOnCtx := context.AfterFunc(ctx, cancel)
	defer stopOnCtx()
	timer := time.AfterFunc(w.opts.ReportTimeout, cancel)
	defer timer.Stop()

	stream, err := w.client.Raw.Worker.Connect(sctx)
	if err != nil {
		cancel()
		return nil, err
	}
	registration := &arev1.WorkerRegistration{
		WorkerName:     w.name,
		Capabilities:   w.capabilities(),
		MaxConcurrency: int32(w.opts.Concurrency),
		Identity:       w.opts.Identity,
		Sdk:            sdkName,
		Labels:         w.opts.Labels,
	}
	if w.opts.Card != nil {
		registration.AgentCard = w.opts.Card.Proto()
	}
	err = stream.Send(&arev1.ConnectRequest{Message: &arev1.ConnectRequest_Register{Register: registration}})
	var first *arev1.ConnectResponse
	if err == nil || errors.Is(err, io.EOF) {
		// On a failed send the stream's status comes from Recv.
		first, err = stream.Recv()
	}
	if err != nil {
		cancel()
		if errors.Is(err, io.EOF) {
			err = errors.New("the sidecar closed the worker stream before registering it")
		}
		return nil, err
	}
	registered := first.GetRegistered()
	if registered == nil {
		cancel()
		return nil, errors.New("the sidecar's first message on the worker stream was not `registered`")
	}
	if !stopOnCtx() || !timer.Stop() {
		cancel()
		return nil, ctx.Err()
	}
	w.workerID.Store(registered.GetWorkerId())
	interval := defaultStreamHeartbeat
	if d := registered.GetHeartbeatInterval(); d != nil && d.AsDuration() > 0 {
		interval = d.AsDuration()
	}
	return &streamSession{
		w:          w,
		stream:     stream,
		cancel:     cancel,
		interval:   interval,
		batchBytes: batchBytes(w.client.maxMessageBytes),
		done:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		rearm:      make(chan struct{}, 1),
		changed:    make(chan struct{}, 1),
		held:       map[attemptKey]*streamAttempt{},
		waiting:    map[attemptKey]*streamAttempt{},
		beats:      map[attemptKey]*arev1.TaskHeartbeat{},
		lastWrite:  time.Now(),
	}, nil
}

// end ends the session (once) for err; nil means a graceful close.
func (s *streamSession) end(err error) {
	s.endOnce.Do(func() {
		s.err = err
		close(s.done)
		s.cancel()
	})
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// serve runs the registered stream until it breaks (drained false, with
// why) or ctx ends and the worker drained (drained true).
func (s *streamSession) serve(ctx, base context.Context, stopHandlers context.CancelCauseFunc, slots chan struct{}, attempts *runAttempts) (drained bool, err error) {
	var loops sync.WaitGroup
	loops.Add(3)
	go func() { defer loops.Done(); s.read(ctx, base, slots, attempts) }()
	go func() { defer loops.Done(); s.write() }()
	go func() { defer loops.Done(); s.beat() }()
	defer func() {
		s.end(err)
		loops.Wait()
		s.abandon()
	}()
	select {
	case <-s.done:
		return false, s.err
	case <-ctx.Done():
	}
	s.drainAndClose(stopHandlers)
	return true, nil
}

// drainAndClose tells the sidecar to assign no more, lets running handlers
// finish within ShutdownGrace (then cancels them with ErrWorkerStopped, and
// hands back, handBackWait later, the attempts of those that ignore it),
// waits for their results' acknowledgements, and half-closes the stream.
// Attempts the sidecar took back meanwhile are not waited for.
func (s *streamSession) drainAndClose(stopHandlers context.CancelCauseFunc) {
	s.mu.Lock()
	s.drain = "the worker is stopping"
	s.mu.Unlock()
	notify(s.wake)
	grace := time.NewTimer(s.w.opts.ShutdownGrace)
	defer grace.Stop()
	var late <-chan time.Time
	for s.busy() {
		select {
		case <-s.changed:
		case <-grace.C:
			stopHandlers(ErrWorkerStopped)
			late = time.After(handBackWait)
		case <-late:
			late = nil
			s.handBack()
		case <-s.done:
			return
		}
	}
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	notify(s.wake)
	wait := time.NewTimer(closeWait)
	defer wait.Stop()
	select {
	case <-s.done: // the sidecar ended the stream after the half-close
	case <-wait.C:
	}
}

// busy reports whether an attempt is held or a result unacknowledged.
func (s *streamSession) busy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held) > 0 || len(s.waiting) > 0
}

// handBack hands back the attempts whose handler has not returned though
// their context was cancelled: they are marked lost (what their handler
// returns is not reported) and the sidecar retries them once the stream
// ends.
func (s *streamSession) handBack() {
	s.mu.Lock()
	keys := make([]attemptKey, 0, len(s.held))
	for key := range s.held {
		keys = append(keys, key)
	}
	s.mu.Unlock()
	if len(keys) == 0 {
		return
	}
	s.w.log.Warn("handlers did not return within the shutdown grace, though their context was cancelled: their attempts are handed back", "attempts", len(keys))
	for _, key := range keys {
		s.lose(key, fmt.Errorf("%w: the handler outlived the shutdown grace", ErrWorkerStopped))
	}
}

// abandon cancels every attempt still held: its lease ended with the stream.
func (s *streamSession) abandon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.held {
		if a.lost.CompareAndSwap(false, true) {
			a.cancel(fmt.Errorf("%w: the worker's stream ended", ErrTaskCancelled))
			a.finish()
		}
	}
}

// read takes the sidecar's messages until the stream ends.
func (s *streamSession) read(ctx, base context.Context, slots chan struct{}, attempts *runAttempts) {
	for {
		msg, err := s.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the sidecar ended the worker stream")
			}
			s.end(err)
			return
		}
		switch m := msg.GetMessage().(type) {
		case *arev1.ConnectResponse_Assignments:
			for _, a := range m.Assignments.GetAssignments() {
				s.start(ctx, base, a, slots, attempts)
			}
		case *arev1.ConnectResponse_Acks:
			for _, ack := range m.Acks.GetAcks() {
				s.acknowledged(ack)
			}
		case *arev1.ConnectResponse_Cancellations:
			for _, c := range m.Cancellations.GetCancellations() {
				key := attemptKey{c.GetWorkflowId(), c.GetTaskId(), c.GetAttempt()}
				s.lose(key, fmt.Errorf("%w: %s (%s)", ErrTaskCancelled, c.GetReason(), c.GetMessage()))
			}
		case *arev1.ConnectResponse_Drain:
			// No more assignments come; results are recorded within the
			// grace, then the sidecar ends the stream and the worker
			// reconnects.
			s.w.log.Info("the sidecar is draining the worker stream", "reason", m.Drain.GetReason(),
				"grace", m.Drain.GetGracePeriod().AsDuration())
		}
	}
}

// lose takes an attempt back: its handler's context is cancelled, its
// result not reported, and a stop does not wait for it.
func (s *streamSession) lose(key attemptKey, why error) {
	s.mu.Lock()
	a := s.held[key]
	if a != nil {
		delete(s.held, key)
		delete(s.beats, key)
	}
	s.mu.Unlock()
	if a != nil && a.lost.CompareAndSwap(false, true) {
		a.cancel(why)
		a.finish()
		notify(s.changed)
	}
}

func (s *streamSession) acknowledged(ack *arev1.TaskAck) {
	key := attemptKey{ack.GetWorkflowId(), ack.GetTaskId(), ack.GetAttempt()}
	switch ack.GetSubject() {
	case arev1.AckSubject_ACK_SUBJECT_COMPLETION, arev1.AckSubject_ACK_SUBJECT_FAILURE:
		s.mu.Lock()
		a := s.waiting[key]
		delete(s.waiting, key)
		s.mu.Unlock()
		if a != nil {
			a.ack <- ack // capacity 1, one result per attempt
			notify(s.changed)
		}
	case arev1.AckSubject_ACK_SUBJECT_HEARTBEAT:
		// Only refusals are acknowledged. One saying the lease is gone ends the
		// attempt; any other (its details invalid: over 1 MiB) refused the
		// heartbeat alone, and the lease holds. Losing the attempt then reported
		// nothing, and the task stayed RUNNING until a timeout.
		if reasonGone(strings.TrimPrefix(ack.GetReason().String(), "ERROR_REASON_")) {
			s.lose(key, fmt.Errorf("%w: heartbeat refused: %s", ErrTaskCancelled, ack.GetMessage()))
		} else {
			s.w.log.Warn("heartbeat refused", "workflow_id", key.workflowID, "task_id", key.taskID,
				"attempt", key.attempt, "reason", ack.GetReason(), "message", ack.GetMessage())
		}
	default:
		s.w.log.Warn("the sidecar refused an item", "subject", ack.GetSubject(), "reason", ack.GetReason(), "message", ack.GetMessage())
	}
}

// start runs an assignment on its own goroutine, once a handler slot is free.
func (s *streamSession) start(ctx, base context.Context, assignment *arev1.TaskAssignment, slots chan struct{}, attempts *runAttempts) {
	w := s.w
	task := w.newTask(assignment)
	hctx, cancel := context.WithCancelCause(base)
	every := s.interval
	if ht := assignment.GetHeartbeatTimeout(); ht != nil && ht.AsDuration() > 0 {
		every = min(every, ht.AsDuration()/4)
	}
	a := &streamAttempt{
		key:    attemptKey{task.WorkflowID, task.TaskID, task.Attempt},
		task:   task,
		cancel: cancel,
		every:  max(every, 50*time.Millisecond),
		ack:    make(chan *arev1.TaskAck, 1),
		finish: attempts.start(),
	}
	a.next = time.Now().Add(a.every)
	s.mu.Lock()
	s.held[a.key] = a
	s.mu.Unlock()
	notify(s.rearm) // its first heartbeat may be due before the loop would next look
	go func() {
		defer attempts.goroutines.Done()
		defer a.finish()
		defer func() {
			s.mu.Lock()
			if s.held[a.key] == a {
				delete(s.held, a.key)
				delete(s.beats, a.key)
			}
			if s.waiting[a.key] == a {
				delete(s.waiting, a.key)
			}
			s.mu.Unlock()
			notify(s.changed)
		}()
		defer cancel(nil)
		select {
		case slots <- struct{}{}:
		case <-hctx.Done():
			// Taken back (or stopped) before a slot was free: the sidecar
			// retries it.
			w.cancelled.Add(1)
			return
		}
		defer func() { <-slots }()
		s.run(ctx, hctx, a)
	}()
}

// run runs one attempt's handler and reports its result.
func (s *streamSession) run(ctx, hctx context.Context, a *streamAttempt) {
	w, task := s.w, a.task
	if !task.Deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		hctx, cancelDeadline = context.WithDeadline(hctx, task.Deadline)
		defer cancelDeadline()
	}
	kicks, stopKicks := context.WithCancel(hctx)
	kicking := make(chan struct{})
	go func() {
		defer close(kicking)
		for {
			select {
			case <-kicks.Done():
				return
			case <-task.kick:
				s.queueBeat(a)
			}
		}
	}()
	output, err := w.call(hctx, task)
	stopKicks()
	<-kicking
	if a.lost.Load() {
		w.cancelled.Add(1)
		return
	}

	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.ReportTimeout)
	defer rcancel()
	var completion *arev1.TaskCompletion
	var report *arev1.TaskFailure
	if err != nil {
		failure, retryAfter := handlerFailure(hctx, err)
		report = failureReportOf(task, failure, retryAfter)
	} else if c, failure := w.completionOf(rctx, task, output); failure != nil {
		report = failureReportOf(task, failure, 0)
	} else {
		completion = c
	}

	s.mu.Lock()
	if a.lost.Load() || s.held[a.key] != a {
		s.mu.Unlock()
		w.cancelled.Add(1)
		return
	}
	delete(s.held, a.key)
	delete(s.beats, a.key)
	s.waiting[a.key] = a
	if completion != nil {
		s.completions = append(s.completions, completion)
	} else {
		s.failures = append(s.failures, report)
	}
	s.mu.Unlock()
	notify(s.wake)

	log := w.log.With("workflow_id", task.WorkflowID, "task_id", task.TaskID, "attempt", task.Attempt)
	for {
		select {
		case ack := <-a.ack:
			switch {
			case !ack.GetAccepted():
				// A per-task outcome (TASK_NOT_HELD, TASK_ALREADY_COMPLETED,
				// an invalid item, ...); the stream goes on.
				log.Warn("result refused", "reason", ack.GetReason(), "message", ack.GetMessage())
				if completion == nil || reasonGone(strings.TrimPrefix(ack.GetReason().String(), "ERROR_REASON_")) {
					// The sidecar kept another result or took the attempt back.
					return
				}
				// An invalid completion changed nothing: the attempt is
				// still held, so report it failed instead, once (a refused
				// failure is only logged).
				report = completionRefusedReport(completion, ack.GetReason().String(), ack.GetMessage())
				completion = nil
				s.mu.Lock()
				s.waiting[a.key] = a
				s.failures = append(s.failures, report)
				s.mu.Unlock()
				notify(s.wake)
				continue
			case completion != nil:
				w.completed.Add(1)
			default:
				w.failed.Add(1)
			}
		case <-rctx.Done():
			log.Warn("no acknowledgement of the result within ReportTimeout")
		case <-s.done:
			log.Warn("the worker stream ended before the result was acknowledged; the sidecar retries the attempt if it was not recorded")
		}
		return
	}
}

// queueBeat queues a heartbeat of a held attempt, with the handler's latest
// details, and wakes the writer.
func (s *streamSession) queueBeat(a *streamAttempt) {
	s.mu.Lock()
	queued := s.queueBeatLocked(a, time.Now())
	s.mu.Unlock()
	if queued {
		notify(s.wake)
	}
}

func (s *streamSession) queueBeatLocked(a *streamAttempt, now time.Time) bool {
	if s.held[a.key] != a {
		return false
	}
	a.task.mu.Lock()
	details := a.task.heartbeatDetails
	a.task.heartbeatDetails = nil
	a.task.mu.Unlock()
	beat := s.beats[a.key]
	if beat == nil {
		beat = &arev1.TaskHeartbeat{WorkflowId: a.key.workflowID, TaskId: a.key.taskID, Attempt: a.key.attempt}
		s.beats[a.key] = beat
	}
	if details != nil {
		beat.Details = details
	}
	a.next = now.Add(a.every)
	return true
}

// beat heartbeats held attempts when due, in one batch, and pings when the
// stream has been idle for half the sidecar's interval. It sleeps until the
// earliest held attempt's next heartbeat, and at most idleTick (for the
// ping); start wakes it to look again. It looked once per idleTick whatever
// each attempt's own interval (a quarter of its heartbeat timeout), so an
// attempt whose timeout was under about a second was always taken back.
func (s *streamSession) beat() {
	idleTick := max(50*time.Millisecond, min(time.Second, s.interval/4))
	timer := time.NewTimer(idleTick)
	defer timer.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-timer.C:
		case <-s.rearm:
		}
		now := time.Now()
		wait := idleTick
		s.mu.Lock()
		due := false
		for _, a := range s.held {
			if !now.Before(a.next) {
				due = s.queueBeatLocked(a, now) || due
			}
			wait = min(wait, a.next.Sub(now))
		}
		idle := now.Sub(s.lastWrite) >= s.interval/2
		s.mu.Unlock()
		if due || idle {
			notify(s.wake)
		}
		resetTimer(timer, max(wait, time.Millisecond))
	}
}

// resetTimer arms t for d, first draining a value it delivered and nobody
// received (the module's go directive, 1.22, keeps the timer channel
// buffered).
func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}

// write sends what is pending whenever woken, until the session ends or the
// worker half-closes the stream.
func (s *streamSession) write() {
	for {
		select {
		case <-s.done:
			return
		case <-s.wake:
		}
		s.mu.Lock()
		beats := make([]*arev1.TaskHeartbeat, 0, len(s.beats))
		for _, b := range s.beats {
			beats = append(beats, b)
		}
		clear(s.beats)
		completions, failures := s.completions, s.failures
		s.completions, s.failures = nil, nil
		drain := s.drain
		s.drain = ""
		closing := s.closing
		s.mu.Unlock()

		var msgs []*arev1.ConnectRequest
		// Heartbeats first: they concern attempts whose results may follow,
		// and are refused once a result is recorded.
		for _, batch := range batches(beats, s.batchBytes) {
			msgs = append(msgs, &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Heartbeat{Heartbeat: &arev1.HeartbeatBatch{Heartbeats: batch}}})
		}
		for _, batch := range batches(completions, s.batchBytes) {
			msgs = append(msgs, &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Complete{Complete: &arev1.CompletionBatch{Completions: batch}}})
		}
		for _, batch := range batches(failures, s.batchBytes) {
			msgs = append(msgs, &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Fail{Fail: &arev1.FailureBatch{Failures: batch}}})
		}
		if drain != "" {
			msgs = append(msgs, &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Drain{Drain: &arev1.WorkerDrain{Reason: drain}}})
		}
		if len(msgs) == 0 && !closing {
			// An empty heartbeat batch is a liveness ping.
			msgs = append(msgs, &arev1.ConnectRequest{Message: &arev1.ConnectRequest_Heartbeat{Heartbeat: &arev1.HeartbeatBatch{}}})
		}
		for _, msg := range msgs {
			if err := s.stream.Send(msg); err != nil {
				// The stream is broken; the reader learns why from Recv.
				if !errors.Is(err, io.EOF) {
					s.end(err)
				}
				return
			}
		}
		s.mu.Lock()
		s.lastWrite = time.Now()
		s.mu.Unlock()
		if closing {
			if err := s.stream.CloseSend(); err != nil {
				s.end(err)
			}
			return
		}
	}
}
