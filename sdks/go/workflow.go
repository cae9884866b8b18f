package are

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// Workflows submits workflows and opens handles on them: Client.Workflows.
type Workflows struct {
	client *Client
}

// SubmitOption configures Workflows.Submit.
type SubmitOption func(*arev1.SubmitWorkflowRequest)

// WithRequestID makes the submit idempotent: a retry with the same request
// id (and the same spec) within 24 hours returns the first workflow.
func WithRequestID(id string) SubmitOption {
	return func(r *arev1.SubmitWorkflowRequest) { r.RequestId = id }
}

// Submit starts a workflow and returns a handle at once, without waiting
// for any task (follow it with WorkflowHandle.Wait or Result). Build spec
// yourself or with NewWorkflow(...).Build().
func (w *Workflows) Submit(ctx context.Context, spec *arev1.WorkflowSpec, opts ...SubmitOption) (*WorkflowHandle, error) {
	if spec == nil {
		return nil, errors.New("are: Submit needs a spec")
	}
	req := &arev1.SubmitWorkflowRequest{Spec: spec}
	for _, opt := range opts {
		opt(req)
	}
	resp, err := w.client.Raw.Scheduler.SubmitWorkflow(ctx, req)
	if err != nil {
		return nil, err
	}
	return &WorkflowHandle{client: w.client, ID: resp.GetWorkflowId(), Deduplicated: resp.GetDeduplicated()}, nil
}

// Handle returns a handle on an existing workflow; it makes no call.
func (w *Workflows) Handle(workflowID string) *WorkflowHandle {
	return &WorkflowHandle{client: w.client, ID: workflowID}
}

// Get returns a workflow's status.
func (w *Workflows) Get(ctx context.Context, workflowID string) (*arev1.Workflow, error) {
	return w.Handle(workflowID).Get(ctx)
}

// WorkflowHandle is a submitted workflow: get it, wait for it, cancel it,
// read its result and its tasks' outputs.
type WorkflowHandle struct {
	client *Client
	// ID is the workflow's id.
	ID string
	// Deduplicated is true when Submit matched an earlier request id and
	// created nothing.
	Deduplicated bool
}

// Closed reports whether a workflow state is closed (COMPLETED, FAILED or
// CANCELLED); CANCELLING counts as open.
func Closed(state arev1.WorkflowState) bool {
	switch state {
	case arev1.WorkflowState_WORKFLOW_STATE_COMPLETED, arev1.WorkflowState_WORKFLOW_STATE_FAILED,
		arev1.WorkflowState_WORKFLOW_STATE_CANCELLED:
		return true
	}
	return false
}

// Get returns the workflow's current status.
func (h *WorkflowHandle) Get(ctx context.Context) (*arev1.Workflow, error) {
	resp, err := h.client.Raw.Scheduler.GetWorkflow(ctx, &arev1.GetWorkflowRequest{WorkflowId: h.ID})
	if err != nil {
		return nil, err
	}
	return resp.GetWorkflow(), nil
}

// Wait follows the workflow (WatchWorkflow) until it is closed, whatever the
// outcome, and returns its closing status. A dropped watch (the sidecar
// restarting, UNAVAILABLE or CANCELLED) is resumed from the last sequence
// received, after a jittered backoff, for as long as the sidecar answers
// again within the client's reconnect window (WithReconnectWindow, 60 s by
// default): once that long has passed since the drop without an answer, the
// last UNAVAILABLE error is returned. A watch refused with
// RESOURCE_EXHAUSTED, reason RESOURCE_LIMIT (the sidecar's event subscribers
// all taken: a resumed watch is one) is resumed no sooner than the sidecar's
// retry hint; any other RESOURCE_EXHAUSTED (a status over the client's
// WithMaxMessageBytes, made on this side) is returned, since no retry would
// fix it. A resumed watch refused with OUT_OF_RANGE, reason
// SEQUENCE_BEYOND_LOG (the sidecar came back on an older event log: a
// relaxed-durability power loss, a restored backup) is watched again without
// its cursor, from the current status, as the contract says. Other errors
// (NOT_FOUND, ...) are returned. The wait is bounded by ctx: when ctx ends
// first, the error wraps ctx.Err(); when the client is closed, it wraps
// ErrClientClosed.
func (h *WorkflowHandle) Wait(ctx context.Context) (*arev1.Workflow, error) {
	var cursor *uint64 // always one the watch received: Wait takes no cursor of the caller's
	delay := firstRetryDelay
	for {
		workflow, last, err := h.watchOnce(ctx, cursor)
		if workflow != nil {
			return workflow, nil
		}
		dropped := time.Now()
		if last != nil {
			cursor = last
			delay = firstRetryDelay // the watch had resumed
		}
		if errors.Is(err, ErrDeadlineExceeded) {
			// The deadline gRPC sent with the stream can end it a moment before
			// ctx's own timer fires: the caller's deadline it is all the same.
			if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < time.Second {
				<-ctx.Done()
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("are: workflow %s did not close: %w", h.ID, ctx.Err())
		}
		if closed := closedError(h.client.watchConn, err); closed != nil {
			return nil, fmt.Errorf("are: workflow %s: %w", h.ID, closed)
		}
		if cursor != nil && sequenceBeyondLog(err) {
			cursor = nil // at once, without the cursor: the status read first is the current one
			continue
		}
		dropping := errors.Is(err, ErrUnavailable) || errors.Is(err, ErrCancelled)
		if err != nil && !dropping && !subscribersTaken(err) {
			return nil, err
		}
		if err := sleep(ctx, retryWait(delay, retryDelayOf(err))); err != nil {
			return nil, fmt.Errorf("are: workflow %s did not close: %w", h.ID, err)
		}
		delay = min(2*delay, 2*time.Second)
		if dropping {
			if err := h.untilAnswering(ctx, err, dropped); err != nil {
				return nil, err
			}
		}
	}
}

// sequenceBeyondLog reports whether a watch was refused because its cursor
// is beyond the end of the sidecar's event log (OUT_OF_RANGE,
// SEQUENCE_BEYOND_LOG): the cursor comes from another log.
func sequenceBeyondLog(err error) bool {
	return errors.Is(err, ErrInvalidArgument) && ReasonOf(err) == "SEQUENCE_BEYOND_LOG"
}

// subscribersTaken reports whether a watch was refused for want of event
// subscribers (RESOURCE_EXHAUSTED, RESOURCE_LIMIT), which a later attempt
// may find free; a RESOURCE_EXHAUSTED without that reason (a message over
// the client's own bound) would only fail again.
func subscribersTaken(err error) bool {
	return errors.Is(err, ErrResourceExhausted) && ReasonOf(err) == "RESOURCE_LIMIT"
}

// probeTimeout bounds one probe of a silent sidecar (see untilAnswering).
const probeTimeout = 5 * time.Second

// untilAnswering returns nil once the sidecar answers a call again, after a
// watch dropped (with dropErr, UNAVAILABLE or CANCELLED) at since; once the
// client's reconnect window has passed since then without an answer, it
// returns the last UNAVAILABLE error (as the Python SDK's wait). A resumed
// watch can be silent for hours (a cursor with nothing after it), so its
// opening proves nothing: a unary GetWorkflow on the watches' connection
// does. Against a sidecar gone for good, a wait resumed for as long as ctx
// allowed, forever with context.Background().
func (h *WorkflowHandle) untilAnswering(ctx context.Context, dropErr error, since time.Time) error {
	window := h.client.reconnectWindow
	deadline := since.Add(window)
	last := dropErr
	delay := firstRetryDelay
	req := &arev1.GetWorkflowRequest{WorkflowId: h.ID}
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			break
		}
		pctx, cancel := context.WithTimeout(ctx, min(remaining, probeTimeout))
		_, err := h.client.watches.GetWorkflow(pctx, req)
		cancel()
		if ctx.Err() != nil {
			return fmt.Errorf("are: workflow %s did not close: %w", h.ID, ctx.Err())
		}
		if closed := closedError(h.client.watchConn, err); closed != nil {
			return fmt.Errorf("are: workflow %s: %w", h.ID, closed)
		}
		if err == nil || !(errors.Is(err, ErrUnavailable) || errors.Is(err, ErrCancelled) || errors.Is(err, ErrDeadlineExceeded)) {
			return nil // it answered; the watch meets any error itself
		}
		if errors.Is(err, ErrUnavailable) {
			last = err
		}
		if err := sleep(ctx, min(jitter(delay), max(0, time.Until(deadline)))); err != nil {
			return fmt.Errorf("are: workflow %s did not close: %w", h.ID, err)
		}
		delay = min(2*delay, 2*time.Second)
	}
	why := fmt.Sprintf("the sidecar has not answered for %v (the reconnect window) since the watch dropped", window)
	if errors.Is(last, ErrUnavailable) {
		return fmt.Errorf("are: workflow %s: %s: %w", h.ID, why, last)
	}
	return &Error{Code: codes.Unavailable, Message: fmt.Sprintf("workflow %s: %s (%v)", h.ID, why, last)}
}

// watchOnce runs one WatchWorkflow stream; it returns the closed workflow,
// or the last sequence seen and why the stream ended.
func (h *WorkflowHandle) watchOnce(ctx context.Context, after *uint64) (*arev1.Workflow, *uint64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := h.client.watches.WatchWorkflow(ctx, &arev1.WatchWorkflowRequest{WorkflowId: h.ID, AfterSequence: after})
	if err != nil {
		return nil, nil, err
	}
	var last *uint64
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil // ended without a closed status: resume
			}
			return nil, last, err
		}
		if seq := msg.GetSequence(); seq != 0 {
			last = &seq
		}
		if Closed(msg.GetWorkflow().GetState()) {
			return msg.GetWorkflow(), last, nil
		}
	}
}

// WorkflowFailedError is returned by Result for a workflow that closed
// without success (FAILED or CANCELLED).
type WorkflowFailedError struct {
	// Workflow is the closing status; Workflow.Failure says why.
	Workflow *arev1.Workflow
}

func (e *WorkflowFailedError) Error() string {
	msg := fmt.Sprintf("are: workflow %s closed %s", e.Workflow.GetWorkflowId(), e.Workflow.GetState())
	if f := e.Workflow.GetFailure(); f != nil {
		msg += ": " + f.GetMessage()
	}
	return msg
}

// Result waits for the workflow to close and returns its result: the output
// of its result task (fetched from the blob store when passed by reference),
// or nil when it has none. A workflow that closed FAILED or CANCELLED is a
// *WorkflowFailedError.
func (h *WorkflowHandle) Result(ctx context.Context) ([]byte, error) {
	workflow, err := h.Wait(ctx)
	if err != nil {
		return nil, err
	}
	if workflow.GetState() != arev1.WorkflowState_WORKFLOW_STATE_COMPLETED {
		return nil, &WorkflowFailedError{Workflow: workflow}
	}
	return h.client.PayloadBytes(ctx, workflow.GetResult())
}

// Cancel cancels the workflow (idempotent) and returns its status: CANCELLED,
// or the state it had already closed in. Workers holding its running tasks
// are told to stop.
func (h *WorkflowHandle) Cancel(ctx context.Context, reason string) (*arev1.Workflow, error) {
	resp, err := h.client.Raw.Scheduler.CancelWorkflow(ctx, &arev1.CancelWorkflowRequest{WorkflowId: h.ID, Reason: reason})
	if err != nil {
		return nil, err
	}
	return resp.GetWorkflow(), nil
}

// Task returns one task's status, with its input and output.
func (h *WorkflowHandle) Task(ctx context.Context, taskID string) (*arev1.Task, error) {
	resp, err := h.client.Raw.Scheduler.GetTask(ctx, &arev1.GetTaskRequest{WorkflowId: h.ID, TaskId: taskID})
	if err != nil {
		return nil, err
	}
	return resp.GetTask(), nil
}

// TaskNotCompletedError is returned by TaskResult for a task that is not
// COMPLETED (still running, or failed, skipped, rejected, cancelled).
type TaskNotCompletedError struct {
	// Task is the task's status; Task.Failure says why it failed, if it
	// did, its Cause (nested) what caused that.
	Task *arev1.Task
}

func (e *TaskNotCompletedError) Error() string {
	msg := fmt.Sprintf("are: task %s/%s is %s", e.Task.GetWorkflowId(), e.Task.GetTaskId(), e.Task.GetState())
	if f := e.Task.GetFailure(); f != nil && e.Task.GetState() != arev1.TaskState_TASK_STATE_COMPLETED {
		msg += ": " + f.GetMessage()
	}
	return msg
}

// TaskResult returns the output of a COMPLETED task (fetched from the blob
// store when passed by reference); any other state is a
// *TaskNotCompletedError. It does not wait: call Wait first.
func (h *WorkflowHandle) TaskResult(ctx context.Context, taskID string) ([]byte, error) {
	task, err := h.Task(ctx, taskID)
	if err != nil {
		return nil, err
	}
	if task.GetState() != arev1.TaskState_TASK_STATE_COMPLETED {
		return nil, &TaskNotCompletedError{Task: task}
	}
	return h.client.PayloadBytes(ctx, task.GetOutput())
}

// Tasks lists every task of the workflow, in submission order, with payloads
// when includePayloads is set.
func (h *WorkflowHandle) Tasks(ctx context.Context, includePayloads bool) ([]*arev1.Task, error) {
	var out []*arev1.Task
	req := &arev1.ListTasksRequest{WorkflowId: h.ID, PageSize: 1000, IncludePayloads: includePayloads}
	if includePayloads {
		req.PageSize = 100
	}
	for {
		resp, err := h.client.Raw.Scheduler.ListTasks(ctx, req)
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetTasks()...)
		if resp.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// WorkflowBuilder builds an arev1.WorkflowSpec step by step:
//
//	spec, err := are.NewWorkflow("pipeline").
//		Task("research", "research", are.InputJSON(map[string]string{"topic": "caches"})).
//		Task("write", "write", are.DependsOn("research")).
//		Build()
//
// Anything it does not cover is set with Configure (or on the spec that Build
// returns). The sidecar validates the spec and names the field of any error.
type WorkflowBuilder struct {
	spec *arev1.WorkflowSpec
	errs []error
}

// NewWorkflow starts a spec with a name (free form, for humans).
func NewWorkflow(name string) *WorkflowBuilder {
	return &WorkflowBuilder{spec: &arev1.WorkflowSpec{Name: name}}
}

// ID sets the workflow's id (otherwise the sidecar generates one).
func (b *WorkflowBuilder) ID(workflowID string) *WorkflowBuilder {
	b.spec.WorkflowId = workflowID
	return b
}

// Labels adds labels to the workflow.
func (b *WorkflowBuilder) Labels(labels map[string]string) *WorkflowBuilder {
	if b.spec.Labels == nil {
		b.spec.Labels = map[string]string{}
	}
	for k, v := range labels {
		b.spec.Labels[k] = v
	}
	return b
}

// DefaultRetryPolicy sets the retry policy of tasks that declare none.
func (b *WorkflowBuilder) DefaultRetryPolicy(policy *arev1.RetryPolicy) *WorkflowBuilder {
	b.spec.DefaultRetryPolicy = policy
	return b
}

// Budget sets the workflow's budgets.
func (b *WorkflowBuilder) Budget(budget *arev1.WorkflowBudget) *WorkflowBuilder {
	b.spec.Budget = budget
	return b
}

// ResultTask names the task whose output is the workflow's result.
func (b *WorkflowBuilder) ResultTask(taskID string) *WorkflowBuilder {
	b.spec.ResultTaskId = taskID
	return b
}

// Configure changes the spec directly, for fields the builder does not cover.
func (b *WorkflowBuilder) Configure(f func(*arev1.WorkflowSpec)) *WorkflowBuilder {
	f(b.spec)
	return b
}

// Task adds a task served by workers of capability.
func (b *WorkflowBuilder) Task(taskID, capability string, opts ...TaskOption) *WorkflowBuilder {
	task, err := NewTaskSpec(taskID, capability, opts...)
	if err != nil {
		b.errs = append(b.errs, err)
		return b
	}
	b.spec.Tasks = append(b.spec.Tasks, task)
	return b
}

// Build returns the spec, or the first error of an option (an input that
// is not JSON-serialisable, for example).
func (b *WorkflowBuilder) Build() (*arev1.WorkflowSpec, error) {
	if len(b.errs) > 0 {
		return nil, errors.Join(b.errs...)
	}
	return b.spec, nil
}

// TaskOption configures one task of a WorkflowBuilder.
type TaskOption func(*arev1.TaskSpec) error

// DependsOn makes the task wait for others (by default for all of them to
// succeed; see WithTriggerRule).
func DependsOn(taskIDs ...string) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.DependsOn = append(t.DependsOn, taskIDs...)
		return nil
	}
}

// InputJSON sets the task's input to v encoded as JSON.
func InputJSON(v any) TaskOption {
	return func(t *arev1.TaskSpec) error {
		p, err := JSON(v)
		t.Input = p
		return err
	}
}

// Input sets the task's input to data with a content type ("" means JSON).
func Input(data []byte, contentType string) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.Input = Bytes(data, contentType)
		return nil
	}
}

// WithRetryPolicy sets the task's retry policy.
func WithRetryPolicy(policy *arev1.RetryPolicy) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.RetryPolicy = policy
		return nil
	}
}

// MaxAttempts sets how many attempts the task gets (1: no retry), with
// initialInterval as the first retry delay bound (0: the default, 1 s).
func MaxAttempts(n int32, initialInterval time.Duration) TaskOption {
	return func(t *arev1.TaskSpec) error {
		if t.RetryPolicy == nil {
			t.RetryPolicy = &arev1.RetryPolicy{}
		}
		t.RetryPolicy.MaximumAttempts = n
		if initialInterval > 0 {
			t.RetryPolicy.InitialInterval = durationpb.New(initialInterval)
		}
		return nil
	}
}

// WithTriggerRule sets which outcomes of the dependencies let the task run.
func WithTriggerRule(rule arev1.TriggerRule) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.TriggerRule = rule
		return nil
	}
}

// StartToCloseTimeout bounds one attempt once assigned (default 10 min).
func StartToCloseTimeout(d time.Duration) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.StartToCloseTimeout = durationpb.New(d)
		return nil
	}
}

// HeartbeatTimeout makes the lease of an attempt end when its worker does
// not heartbeat for d (the Worker heartbeats on its own while a handler runs).
func HeartbeatTimeout(d time.Duration) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.HeartbeatTimeout = durationpb.New(d)
		return nil
	}
}

// WithPool puts the task in a resource pool.
func WithPool(pool string) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.Pool = pool
		return nil
	}
}

// WithPriority sets the task's priority in its pool, 1 (most urgent) to 5.
func WithPriority(priority int32) TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.Priority = priority
		return nil
	}
}

// RequiresApproval stops the task at an approval gate once its dependencies
// are met, until ResolveApproval.
func RequiresApproval() TaskOption {
	return func(t *arev1.TaskSpec) error {
		t.RequiresApproval = true
		return nil
	}
}

// TaskLabels adds labels to the task.
func TaskLabels(labels map[string]string) TaskOption {
	return func(t *arev1.TaskSpec) error {
		if t.Labels == nil {
			t.Labels = map[string]string{}
		}
		for k, v := range labels {
			t.Labels[k] = v
		}
		return nil
	}
}

// ConfigureTask changes the task spec directly, for fields the options do
// not cover (conditions, cache key, intent, ...).
func ConfigureTask(f func(*arev1.TaskSpec)) TaskOption {
	return func(t *arev1.TaskSpec) error {
		f(t)
		return nil
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// jitter is a uniformly random duration in [0, d] (full jitter).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

// firstRetryDelay is the first backoff of the SDK's retries (reconnects,
// resumed watches, polls), doubled after each failure up to a bound.
const firstRetryDelay = 50 * time.Millisecond

// retryWait is how long to wait before trying a failed call again: full
// jitter over the backoff delay or, when the sidecar sent a retry hint
// (RetryInfo: its worker bound reached, its event subscribers all taken, a
// store closing), at least the hint, with up to a fifth more so that the
// callers it refused together do not all come back at once (as the Python
// SDK's retry_wait).
func retryWait(delay, hint time.Duration) time.Duration {
	wait := jitter(delay)
	if hint > 0 {
		wait = max(wait, hint+jitter(hint/5))
	}
	return wait
}

// retryDelayOf is the sidecar's retry hint carried by err (zero if none).
func retryDelayOf(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryDelay
	}
	return 0
}
