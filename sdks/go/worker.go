package are

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/are-runtime/are/sdks/go/arev1"
)

// Handler runs one task attempt and returns its output (JSON unless the task
// says otherwise with SetOutputContentType; nil means no output). A returned
// error fails the attempt, which is retried by the task's retry policy; wrap
// it in a *TaskError (or use NonRetryable) to choose its type or forbid
// retries. An error carrying the sidecar's retry hint (an *Error with a
// RetryDelay, such as a Spawn refused with POOL_QUEUE_FULL) passes it on as
// the failure's least retry delay. The errors it wraps (errors.Unwrap) are
// the failure's causes, at most 8 (see the README). A panic fails the
// attempt with type "panic" and its stack, a runtime.Goexit with type
// "goexit"; an error whose Error method panics is reported all the same,
// saying that its message could not be read. ctx ends when the sidecar
// cancels the attempt (context.Cause is then ErrTaskCancelled), at the
// attempt's deadline, or when the worker's shutdown grace runs out
// (ErrWorkerStopped).
type Handler func(ctx context.Context, task *Task) ([]byte, error)

var (
	// ErrTaskCancelled is the cause of a handler's context when the sidecar
	// asked to stop the attempt (its workflow was cancelled or closed) or
	// the worker lost the attempt's lease.
	ErrTaskCancelled = errors.New("are: task attempt cancelled by the sidecar")
	// ErrWorkerStopped is the cause of a handler's context when the worker
	// stopped and the handler outlived the shutdown grace.
	ErrWorkerStopped = errors.New("are: worker stopped")
)

// TaskError is a handler's failure with the details the contract carries:
// a type (matched against RetryPolicy.non_retryable_failure_types), whether
// it may be retried, structured details and a least retry delay.
type TaskError struct {
	// Message says what went wrong; default Err's message.
	Message string
	// Type is the failure's type; default the Go type of Err.
	Type string
	// NonRetryable forbids retries, whatever the retry policy says.
	NonRetryable bool
	// Details are structured details (JSON), at most 1 MiB.
	Details []byte
	// RetryAfter is the least delay before a retry (a provider's
	// Retry-After); zero takes the sidecar's retry hint of an *Error in
	// Err's chain (see Handler), if any, else leaves the policy's backoff.
	RetryAfter time.Duration
	// Err is the underlying error, if any: the failure's cause, unless the
	// TaskError has neither a Message nor a Type (it then stands for Err).
	Err error
}

func (e *TaskError) Error() string {
	switch {
	case e.Message != "":
		return e.Message
	case e.Err != nil:
		return e.Err.Error()
	default:
		return "task failed"
	}
}

func (e *TaskError) Unwrap() error { return e.Err }

// NonRetryable wraps err so that the attempt fails for good: no retry.
func NonRetryable(err error) error {
	return &TaskError{Err: err, NonRetryable: true}
}

// Dependency is what a task received about one of its dependencies.
type Dependency struct {
	// TaskID is the dependency's task id.
	TaskID string
	// State is its terminal state (or its state at dispatch for rules that
	// fire early).
	State arev1.TaskState
	// Output is its output when COMPLETED (fetched when passed as a blob).
	Output []byte
	// ContentType is the output's content type ("" means JSON).
	ContentType string
	// Failure is its failure when FAILED, REJECTED or CANCELLED (its
	// Cause nesting what caused it).
	Failure *arev1.Failure
}

// Task is one attempt of one task, as handed to a Handler.
type Task struct {
	// WorkflowID is the task's workflow.
	WorkflowID string
	// TaskID is the task's id.
	TaskID string
	// Attempt is the attempt number, from 1.
	Attempt int32
	// Capability is the capability the task was assigned for.
	Capability string
	// IdempotencyKey is the same for every attempt of the task: use it to
	// make side effects idempotent.
	IdempotencyKey string
	// Input is the task's input (fetched when passed as a blob).
	Input []byte
	// InputContentType is the input's content type ("" means JSON).
	InputContentType string
	// Dependencies are the task's dependencies, in depends_on order.
	Dependencies []Dependency
	// Deadline is when the attempt's start-to-close timeout ends (zero if
	// the sidecar sent none); the handler's context ends then too.
	Deadline time.Time
	// Assignment is the assignment as received, with everything else
	// (trace context, labels, last failure, heartbeat details, ...).
	Assignment *arev1.TaskAssignment

	client            *Client
	mu                sync.Mutex
	usage             *arev1.Usage
	heartbeatDetails  *arev1.Payload
	outputContentType string
	statePatch        []byte
	kick              chan struct{}
}

// DecodeInput unmarshals the JSON input into v.
func (t *Task) DecodeInput(v any) error {
	if len(t.Input) == 0 {
		return errors.New("are: the task has no input")
	}
	return json.Unmarshal(t.Input, v)
}

// DependencyOutput returns the output of a dependency that COMPLETED.
func (t *Task) DependencyOutput(taskID string) ([]byte, bool) {
	for _, d := range t.Dependencies {
		if d.TaskID == taskID && d.State == arev1.TaskState_TASK_STATE_COMPLETED {
			return d.Output, true
		}
	}
	return nil, false
}

// IsLastAttempt reports whether a failure of this attempt will not be
// retried by policy.
func (t *Task) IsLastAttempt() bool {
	limit := t.Assignment.GetMaximumAttempts()
	return limit > 0 && t.Attempt >= limit
}

// AddUsage adds tokens, cost and calls to what the attempt reports with its
// result (counted against the workflow's budgets). Safe for concurrent use.
func (t *Task) AddUsage(u *arev1.Usage) {
	if u == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.usage == nil {
		t.usage = &arev1.Usage{}
	}
	t.usage.InputTokens += u.GetInputTokens()
	t.usage.OutputTokens += u.GetOutputTokens()
	t.usage.CostMicroUsd += u.GetCostMicroUsd()
	t.usage.LlmCalls += u.GetLlmCalls()
	t.usage.ToolCalls += u.GetToolCalls()
}

// maxHeartbeatDetails is the most bytes of heartbeat details the sidecar
// takes (worker_service.proto, TaskHeartbeat.details).
const maxHeartbeatDetails = 1 << 20

// RecordHeartbeat records progress details (JSON) to send with the next
// heartbeat, at once; the next attempt receives the latest ones if this one
// is lost. The worker heartbeats on its own while the handler runs. Details
// over 1 MiB, which the sidecar refuses, are dropped (logged), keeping those
// recorded before: every heartbeat after them would be refused otherwise.
func (t *Task) RecordHeartbeat(details []byte) {
	t.mu.Lock()
	if len(details) > maxHeartbeatDetails {
		slog.Default().Warn("heartbeat details over 1 MiB dropped; keep progress small (a cursor, not the data)",
			"workflow_id", t.WorkflowID, "task_id", t.TaskID, "attempt", t.Attempt, "bytes", len(details))
	} else {
		t.heartbeatDetails = Bytes(details, JSONContentType)
	}
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// SetOutputContentType sets the content type of the handler's output
// (default JSON).
func (t *Task) SetOutputContentType(contentType string) {
	t.mu.Lock()
	t.outputContentType = contentType
	t.mu.Unlock()
}

// SetStateMergePatch sets a JSON Merge Patch applied to the workflow's state
// document in the same commit as the completion.
func (t *Task) SetStateMergePatch(patch []byte) {
	t.mu.Lock()
	t.statePatch = patch
	t.mu.Unlock()
}

// NewTaskSpec makes the spec of one task, with the options of
// WorkflowBuilder.Task, for Task.Spawn.
func NewTaskSpec(taskID, capability string, opts ...TaskOption) (*arev1.TaskSpec, error) {
	task := &arev1.TaskSpec{TaskId: taskID, Target: &arev1.TaskSpec_Capability{Capability: capability}}
	var errs []error
	for _, opt := range opts {
		if err := opt(task); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("are: task %q: %w", taskID, errors.Join(errs...))
	}
	return task, nil
}

// Spawn adds tasks to the workflow as children of this attempt (dynamic
// expansion) and returns their ids. With dependentsWait, this task's pending
// dependents also wait for (and receive the outputs of) the new tasks. A
// requestID (for example task.TaskID+".plan") makes a retried attempt spawn
// once.
func (t *Task) Spawn(ctx context.Context, tasks []*arev1.TaskSpec, dependentsWait bool, requestID string) ([]string, error) {
	resp, err := t.client.Raw.Scheduler.SpawnTasks(ctx, &arev1.SpawnTasksRequest{
		WorkflowId:     t.WorkflowID,
		ParentTaskId:   t.TaskID,
		ParentAttempt:  t.Attempt,
		Tasks:          tasks,
		DependentsWait: dependentsWait,
		RequestId:      requestID,
	})
	if err != nil {
		return nil, err
	}
	return resp.GetTaskIds(), nil
}

// ReportLLMCall records one LLM call of this attempt in the flight recorder
// (an EVENT_TYPE_LLM_CALL event named after the model) and adds its usage to
// what the attempt reports with its result. WithProvider ("openai",
// "anthropic", ...) and WithResponseModel set the GenAI attributes
// "gen_ai.system" and "gen_ai.response.model"; WithAttributes adds others.
// The sidecar fills "gen_ai.request.model", "gen_ai.operation.name" and the
// token counts from the call itself. An attribute value the contract cannot
// carry (see WithAttributes) is an error before anything is counted or sent.
func (t *Task) ReportLLMCall(ctx context.Context, model string, usage *arev1.Usage, took time.Duration, opts ...CallOption) error {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.callID != "" {
		return errors.New("are: WithCallID is for ReportToolCall, not ReportLLMCall")
	}
	attributes, err := eventAttributes(map[string]string{
		"gen_ai.system":         o.provider,
		"gen_ai.response.model": o.responseModel,
	}, o.attributes)
	if err != nil {
		return err
	}
	counted := &arev1.Usage{LlmCalls: 1}
	if usage != nil {
		counted = proto.Clone(usage).(*arev1.Usage)
		if counted.LlmCalls == 0 {
			counted.LlmCalls = 1
		}
	}
	t.AddUsage(counted)
	return t.report(ctx, arev1.EventType_EVENT_TYPE_LLM_CALL, model, counted, took, attributes)
}

// ReportToolCall records one tool call of this attempt in the flight
// recorder and counts it in the attempt's usage. WithCallID (the model's id
// for the call) sets "gen_ai.tool.call.id"; WithAttributes adds others. The
// sidecar fills "gen_ai.tool.name" from tool.
func (t *Task) ReportToolCall(ctx context.Context, tool string, took time.Duration, opts ...CallOption) error {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.provider != "" || o.responseModel != "" {
		return errors.New("are: WithProvider and WithResponseModel are for ReportLLMCall, not ReportToolCall")
	}
	attributes, err := eventAttributes(map[string]string{"gen_ai.tool.call.id": o.callID}, o.attributes)
	if err != nil {
		return err
	}
	usage := &arev1.Usage{ToolCalls: 1}
	t.AddUsage(usage)
	return t.report(ctx, arev1.EventType_EVENT_TYPE_TOOL_CALL, tool, usage, took, attributes)
}

// ReportEvent records anything else worth seeing in the trace (a decision, a
// milestone) as an EVENT_TYPE_WORKER_CUSTOM event of this attempt: it shows
// among the attempt's events and on its span in OpenTelemetry. attrs take
// the values WithAttributes does.
func (t *Task) ReportEvent(ctx context.Context, name string, attrs map[string]any) error {
	attributes, err := eventAttributes(nil, attrs)
	if err != nil {
		return err
	}
	return t.report(ctx, arev1.EventType_EVENT_TYPE_WORKER_CUSTOM, name, nil, 0, attributes)
}

// CallOption adds to a call reported with Task.ReportLLMCall or
// Task.ReportToolCall.
type CallOption func(*callOptions)

type callOptions struct {
	provider      string
	responseModel string
	callID        string
	attributes    map[string]any
}

// WithProvider names the LLM call's provider ("openai", "anthropic", ...):
// the GenAI attribute "gen_ai.system". ReportLLMCall only (ReportToolCall
// refuses it).
func WithProvider(provider string) CallOption {
	return func(o *callOptions) { o.provider = provider }
}

// WithResponseModel names the model that answered, when the provider reports
// one more precise than the one asked for: the GenAI attribute
// "gen_ai.response.model". ReportLLMCall only (ReportToolCall refuses it).
func WithResponseModel(model string) CallOption {
	return func(o *callOptions) { o.responseModel = model }
}

// WithCallID gives the model's id for a tool call: the GenAI attribute
// "gen_ai.tool.call.id". ReportToolCall only (ReportLLMCall refuses it).
func WithCallID(id string) CallOption {
	return func(o *callOptions) { o.callID = id }
}

// WithAttributes adds attributes to the reported call's event (given more
// than once, they merge; a key given here wins over the one an option above
// sets). A value is a string (at most 16 KiB), a bool, an int, int8 to int64,
// uint, uint8 to uint64 (at most math.MaxInt64), a finite float32 or
// float64, or an *arev1.AttributeValue; anything else, NaN or an infinity is
// an error from the Report method, before anything is sent. The sidecar takes
// at most 64 attributes per event, keys 1 to 128 characters.
func WithAttributes(attrs map[string]any) CallOption {
	return func(o *callOptions) {
		if o.attributes == nil {
			o.attributes = make(map[string]any, len(attrs))
		}
		maps.Copy(o.attributes, attrs)
	}
}

// eventAttributes makes the attributes of a reported event: the non-empty
// GenAI ones, then attrs over them.
func eventAttributes(genAI map[string]string, attrs map[string]any) (map[string]*arev1.AttributeValue, error) {
	out := make(map[string]*arev1.AttributeValue, len(genAI)+len(attrs))
	for key, value := range genAI {
		if value != "" {
			out[key] = &arev1.AttributeValue{Value: &arev1.AttributeValue_StringValue{StringValue: value}}
		}
	}
	keys := make([]string, 0, len(attrs))
	for key := range attrs {
		keys = append(keys, key)
	}
	sort.Strings(keys) // the same key named each time when several are bad
	for _, key := range keys {
		value, err := attributeValue(key, attrs[key])
		if err != nil {
			return nil, err
		}
		out[key] = value
	}
	return out, nil
}

// attributeValue converts one attribute value to the contract's
// AttributeValue, refusing what it cannot carry.
func attributeValue(key string, value any) (*arev1.AttributeValue, error) {
	var (
		i     int64
		f     float64
		isInt bool
	)
	switch v := value.(type) {
	case string:
		return &arev1.AttributeValue{Value: &arev1.AttributeValue_StringValue{StringValue: v}}, nil
	case bool:
		return &arev1.AttributeValue{Value: &arev1.AttributeValue_BoolValue{BoolValue: v}}, nil
	case int:
		i, isInt = int64(v), true
	case int8:
		i, isInt = int64(v), true
	case int16:
		i, isInt = int64(v), true
	case int32:
		i, isInt = int64(v), true
	case int64:
		i, isInt = v, true
	case uint:
		if uint64(v) > math.MaxInt64 {
			return nil, fmt.Errorf("are: attribute %q is %d: event attributes are signed 64-bit integers", key, v)
		}
		i, isInt = int64(v), true
	case uint8:
		i, isInt = int64(v), true
	case uint16:
		i, isInt = int64(v), true
	case uint32:
		i, isInt = int64(v), true
	case uint64:
		if v > math.MaxInt64 {
			return nil, fmt.Errorf("are: attribute %q is %d: event attributes are signed 64-bit integers", key, v)
		}
		i, isInt = int64(v), true
	case float32:
		f = float64(v)
	case float64:
		f = v
	case *arev1.AttributeValue:
		if v.GetValue() == nil {
			return nil, fmt.Errorf("are: attribute %q is an AttributeValue with no value set", key)
		}
		if d, ok := v.GetValue().(*arev1.AttributeValue_DoubleValue); ok && (math.IsNaN(d.DoubleValue) || math.IsInf(d.DoubleValue, 0)) {
			return nil, fmt.Errorf("are: attribute %q is %v: event attributes must be finite numbers", key, d.DoubleValue)
		}
		return v, nil
	default:
		return nil, fmt.Errorf("are: attribute %q is a %T: give a string, bool, integer or float", key, value)
	}
	if isInt {
		return &arev1.AttributeValue{Value: &arev1.AttributeValue_IntValue{IntValue: i}}, nil
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("are: attribute %q is %v: event attributes must be finite numbers", key, f)
	}
	return &arev1.AttributeValue{Value: &arev1.AttributeValue_DoubleValue{DoubleValue: f}}, nil
}

func (t *Task) report(ctx context.Context, eventType arev1.EventType, name string, usage *arev1.Usage, took time.Duration, attributes map[string]*arev1.AttributeValue) error {
	event := &arev1.ReportedEvent{
		WorkflowId: t.WorkflowID,
		TaskId:     t.TaskID,
		Attempt:    t.Attempt,
		EventType:  eventType,
		EventTime:  timestamppb.Now(),
		Name:       name,
		Usage:      usage,
		Attributes: attributes,
	}
	if took > 0 {
		event.Duration = durationpb.New(took)
	}
	_, err := t.client.Raw.Worker.ReportEvents(ctx, &arev1.ReportEventsRequest{Events: []*arev1.ReportedEvent{event}})
	return err
}

// Transport is how a Worker talks to the sidecar's WorkerService.
type Transport int

const (
	// TransportStream is the default: one bidirectional Connect stream per
	// worker carrying assignments, batched heartbeats, results and their
	// acknowledgements, and the sidecar's cancellations.
	TransportStream Transport = iota
	// TransportUnary uses PollTask long polls, CompleteTask / FailTask and
	// RecordHeartbeat calls: simpler, and what a proxy without bidirectional
	// streams allows.
	TransportUnary
)

func (t Transport) String() string {
	switch t {
	case TransportStream:
		return "stream"
	case TransportUnary:
		return "unary"
	}
	return fmt.Sprintf("Transport(%d)", int(t))
}

// WorkerOptions configure a Worker; zero values take the defaults.
type WorkerOptions struct {
	// Transport chooses the stream (the default) or the unary path; the
	// handlers are the same either way.
	Transport Transport
	// Concurrency is the most handlers run at once (default 16, at most
	// 10,000).
	Concurrency int
	// Identity says who this process is, for humans (default "host:pid N").
	Identity string
	// Labels are free labels sent with the stream registration
	// (WorkerRegistration.labels): at most 32, keys 1 to 128 characters of
	// [A-Za-z0-9._:/-], values at most 256 UTF-8 bytes. A bad label makes
	// the sidecar refuse the worker (Run returns INVALID_ARGUMENT naming the
	// field, for example register.labels['bad key!']). The unary transport
	// has no field for them (PollTask carries none): they are not sent.
	Labels map[string]string
	// Card is how the router shows this worker's class, sent with the stream
	// registration (WorkerRegistration.agent_card): agent ID, description or
	// vector, cost per call, labels. Replicas sending the same AgentID share
	// one card whose load and availability follow them (a card registered
	// with Router.RegisterAgent under that id describes them instead), so a
	// task submitted with an intent goes to the cheapest class that fits.
	// Its Capabilities default to the worker's and must be among them; only
	// the input fields (those up to Labels) are sent. An invalid card makes
	// the sidecar refuse the worker: Run returns INVALID_ARGUMENT naming the
	// field under register.agent_card (for example register.agent_card.vector,
	// reason DIMENSION_MISMATCH, for a vector not of the router's dimension).
	// Without a card the worker still appears in the router's index, as a
	// card named after the worker, with its capabilities, that costs nothing.
	// The card needs the stream transport: the unary one has no registration
	// (PollTask carries no card), so there it is not sent.
	Card *AgentCard
	// PollTimeout (unary) is the deadline of each PollTask long poll (default 10 s;
	// the sidecar answers about 1 s before it). A stopping worker lets the
	// poll in flight finish rather than cancel it, since a poll cancelled
	// just as the sidecar assigns a task would strand that task until its
	// lease expires; so this also bounds how long Run takes to notice a
	// stop. At least 2 s.
	PollTimeout time.Duration
	// HeartbeatInterval (unary) is how often a running attempt is
	// heartbeated (default 1 s, and at most a quarter of the task's
	// heartbeat timeout). Heartbeats are how a unary worker learns that an
	// attempt was cancelled, so this also bounds how soon a handler hears of
	// it. The stream heartbeats at the interval the sidecar gives when the
	// worker registers (at most a quarter of a task's heartbeat timeout) and
	// hears of cancellations at once.
	HeartbeatInterval time.Duration
	// ShutdownGrace is how long running handlers may go on once the worker
	// has stopped taking work (drained the stream, or stopped polling)
	// after Run's context ended (default 10 s); their
	// context is then cancelled with ErrWorkerStopped and a failure is
	// reported as FAILURE_KIND_WORKER_LOST (retried by policy, as for a
	// worker whose stream drops). A handler still running a second later
	// (it ignores its context) has its attempt handed back, and Run returns
	// without waiting for it (see Run).
	ShutdownGrace time.Duration
	// ReportTimeout bounds each CompleteTask, FailTask and RecordHeartbeat
	// call, retries on UNAVAILABLE included, and on the stream how long a
	// result waits for its acknowledgement (default 30 s).
	ReportTimeout time.Duration
	// ReconnectMaxDelay is the longest wait between attempts to reconnect a
	// broken stream (default 5 s; waits are jittered and start at 50 ms).
	ReconnectMaxDelay time.Duration
	// Logger receives the worker's warnings (default slog.Default()).
	Logger *slog.Logger
}

// WorkerStats are a worker's counters since it was created.
type WorkerStats struct {
	// Completed counts attempts reported as completed.
	Completed int64
	// Failed counts attempts reported as failed.
	Failed int64
	// Cancelled counts attempts the sidecar cancelled or took back.
	Cancelled int64
	// Connects counts streams registered (stream transport only).
	Connects int64
}

// Worker serves tasks of one or more capabilities, over the Connect stream
// of WorkerService or its unary path (PollTask long polls, CompleteTask /
// FailTask, and RecordHeartbeat while a handler runs); see
// WorkerOptions.Transport. Create it with Client.NewWorker, add handlers
// with Handle, then call Run.
type Worker struct {
	client   *Client
	name     string
	opts     WorkerOptions
	log      *slog.Logger
	handlers map[string]Handler
	running  atomic.Bool
	workerID atomic.Value // string

	// handling holds the unary attempts of the current Run whose handler
	// has not returned, for a stop to hand back (handBack).
	handlingMu sync.Mutex
	handling   map[*unaryAttempt]struct{}

	completed, failed, cancelled, connects atomic.Int64
}

const maxPollTasks = 100

// NewWorker makes a worker named name (shared by its replicas, in the id
// alphabet).
func (c *Client) NewWorker(name string, opts WorkerOptions) *Worker {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	if opts.Identity == "" {
		host, _ := os.Hostname()
		opts.Identity = fmt.Sprintf("%s:pid %d", host, os.Getpid())
	}
	if opts.PollTimeout <= 0 {
		opts.PollTimeout = 10 * time.Second
	}
	opts.PollTimeout = max(opts.PollTimeout, 2*time.Second)
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = time.Second
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	if opts.ReportTimeout <= 0 {
		opts.ReportTimeout = 30 * time.Second
	}
	if opts.ReconnectMaxDelay <= 0 {
		opts.ReconnectMaxDelay = 5 * time.Second
	}
	if opts.Labels != nil {
		opts.Labels = maps.Clone(opts.Labels)
	}
	if opts.Card != nil {
		card := *opts.Card // the worker keeps its own copy
		card.Capabilities = slices.Clone(card.Capabilities)
		card.Vector = slices.Clone(card.Vector)
		card.Labels = maps.Clone(card.Labels)
		opts.Card = &card
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	return &Worker{
		client:   c,
		name:     name,
		opts:     opts,
		log:      logger.With("worker", name),
		handlers: map[string]Handler{},
		handling: map[*unaryAttempt]struct{}{},
	}
}

// Handle sets the handler of a capability; call it before Run.
func (w *Worker) Handle(capability string, handler Handler) {
	if w.running.Load() {
		panic("are: Worker.Handle called while the worker runs")
	}
	w.handlers[capability] = handler
}

// WorkerID is the id the sidecar uses for this worker in events and task
// statuses ("" before the first poll or registration; on the stream, the id
// of the current or last connection).
func (w *Worker) WorkerID() string {
	id, _ := w.workerID.Load().(string)
	return id
}

// Stats returns the worker's counters.
func (w *Worker) Stats() WorkerStats {
	return WorkerStats{Completed: w.completed.Load(), Failed: w.failed.Load(), Cancelled: w.cancelled.Load(), Connects: w.connects.Load()}
}

// Run serves tasks until ctx ends, then stops gracefully: it takes no more
// work (on the stream it sends a drain; on the unary path the poll in flight
// finishes, within PollTimeout), lets running handlers finish within
// ShutdownGrace (then cancels their context), reports their results, and
// returns nil. A handler that ignores its context is waited for one second
// more, then handed back: its attempt fails as
// FAILURE_KIND_WORKER_LOST (retried by policy), what it returns later is not
// reported, and Run returns without it, leaving its goroutine running.
// Attempts the sidecar already took back (cancelled, or lost with a broken
// stream) are not waited for. It returns an error at once when the sidecar
// refuses the worker for a reason that retrying cannot fix (a bad name or
// capability, authentication, UNIMPLEMENTED), and one wrapping
// ErrClientClosed when the client is closed under it; other failures (a
// broken stream, a failed poll) are retried with jittered backoff.
func (w *Worker) Run(ctx context.Context) error {
	if len(w.handlers) == 0 {
		return errors.New("are: the worker has no handler; call Handle first")
	}
	if w.opts.Transport != TransportStream && w.opts.Transport != TransportUnary {
		return fmt.Errorf("are: unknown worker transport %v", w.opts.Transport)
	}
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("are: the worker is already running")
	}
	defer w.running.Store(false)

	// Handlers run on after ctx ends, for the shutdown grace at most, which
	// starts once the last poll has returned: every assignment received gets
	// the whole grace, and none arrives after it.
	base, stopHandlers := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopHandlers(nil)
	slots := make(chan struct{}, w.opts.Concurrency)
	var attempts runAttempts
	var err error
	if w.opts.Transport == TransportUnary {
		err = w.poll(ctx, base, slots, &attempts)
	} else {
		err = w.serveStream(ctx, base, stopHandlers, slots, &attempts)
	}
	w.settle(&attempts, base, stopHandlers)
	return err
}

// handBackWait is how long a stopping worker waits for handlers to return
// once their context is cancelled, before handing their attempts back.
const handBackWait = time.Second

// runAttempts counts the attempts of one Run.
type runAttempts struct {
	// pending counts the attempts for which something is still to be
	// reported: done once the result is reported (and, on the stream,
	// acknowledged), or once the attempt was released: taken back by the
	// sidecar, lost with its stream, or handed back by a stop.
	pending sync.WaitGroup
	// goroutines counts the attempts' goroutines, done when they return.
	goroutines sync.WaitGroup
}

// start counts a new attempt; finish (idempotent) says that nothing more is
// to be reported for it.
func (r *runAttempts) start() (finish func()) {
	r.pending.Add(1)
	r.goroutines.Add(1)
	return sync.OnceFunc(r.pending.Done)
}

// settle ends a Run once its transport has stopped: it waits for the
// attempts still pending within ShutdownGrace (unless the handlers were
// stopped already), cancels their handlers with ErrWorkerStopped, hands
// back, after handBackWait, those whose handler has not returned, and waits
// for the rest to be reported. It then gives the handlers of released
// attempts handBackWait to return, and logs those still running.
func (w *Worker) settle(attempts *runAttempts, base context.Context, stopHandlers context.CancelCauseFunc) {
	settled := make(chan struct{})
	go func() {
		attempts.pending.Wait()
		close(settled)
	}()
	timer := time.NewTimer(w.opts.ShutdownGrace)
	defer timer.Stop()
	if context.Cause(base) == nil {
		select {
		case <-settled:
		case <-timer.C:
			stopHandlers(ErrWorkerStopped)
			timer.Reset(handBackWait)
		}
	} else {
		timer.Reset(handBackWait)
	}
	select {
	case <-settled:
	case <-timer.C:
		w.handBack()
		<-settled // what remains is being reported, within ReportTimeout
	}
	returned := make(chan struct{})
	go func() {
		attempts.goroutines.Wait()
		close(returned)
	}()
	timer.Reset(handBackWait)
	select {
	case <-returned:
	case <-timer.C:
		w.log.Warn("handlers still running after the worker stopped: they ignore their context; their results are not reported")
	}
}

func (w *Worker) capabilities() []string {
	out := make([]string, 0, len(w.handlers))
	for c := range w.handlers {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// poll long-polls for as many tasks as there are free slots and starts a
// goroutine per assignment (never more than Concurrency).
func (w *Worker) poll(ctx, base context.Context, slots chan struct{}, attempts *runAttempts) error {
	capabilities := w.capabilities()
	delay := firstRetryDelay
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		if ctx.Err() != nil {
			<-slots
			return nil
		}
		free := 1
	more:
		for free < maxPollTasks {
			select {
			case slots <- struct{}{}:
				free++
			default:
				break more
			}
		}
		// Not cancelled with ctx (see PollTimeout), but bounded.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.PollTimeout)
		resp, err := w.client.Raw.Worker.PollTask(pctx, &arev1.PollTaskRequest{
			WorkerName:   w.name,
			Capabilities: capabilities,
			MaxTasks:     int32(free),
			Identity:     w.opts.Identity,
		})
		cancel()
		assigned := len(resp.GetAssignments())
		for i := assigned; i < free; i++ {
			<-slots
		}
		if err != nil {
			if fatalPollError(err) {
				return fmt.Errorf("are: worker %s refused: %w", w.name, err)
			}
			if closed := closedError(w.client.conn, err); closed != nil {
				return fmt.Errorf("are: worker %s: %w", w.name, closed)
			}
			if ctx.Err() == nil {
				w.log.Warn("poll failed; retrying", "error", err)
			}
			if sleep(ctx, retryWait(delay, retryDelayOf(err))) != nil {
				return nil
			}
			delay = min(2*delay, 5*time.Second)
			continue
		}
		delay = firstRetryDelay
		if id := resp.GetWorkerId(); id != "" {
			w.workerID.Store(id)
		}
		for _, a := range resp.GetAssignments() {
			finish := attempts.start()
			go func(a *arev1.TaskAssignment) {
				defer attempts.goroutines.Done()
				defer finish()
				defer func() { <-slots }()
				w.runAttempt(ctx, base, a, finish)
			}(a)
		}
	}
}

func fatalPollError(err error) bool {
	return errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrUnauthenticated) ||
		errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrUnimplemented)
}

// attemptEnd says how the sidecar ended an attempt while its handler ran.
type attemptEnd int32

const (
	attemptHeld          attemptEnd = iota
	attemptCancelRequest            // RecordHeartbeat said cancel_requested: report CANCELLED
	attemptLost                     // the lease is gone (TASK_NOT_HELD, ...): report nothing
)

// unaryAttempt is an attempt run on the unary path.
type unaryAttempt struct {
	task   *Task
	end    atomic.Int32 // an attemptEnd
	finish func()       // releases it from the stop's wait (see runAttempts)
}

// runAttempt runs an attempt on the unary path and reports its result;
// finish releases it from the stop's wait (see runAttempts).
func (w *Worker) runAttempt(ctx, base context.Context, a *arev1.TaskAssignment, finish func()) {
	var hctx context.Context
	var cancel context.CancelCauseFunc
	hctx, cancel = context.WithCancelCause(base)
	defer cancel(nil)
	ua := &unaryAttempt{task: w.newTask(a), finish: finish}
	task := ua.task
	if !task.Deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		hctx, cancelDeadline = context.WithDeadline(hctx, task.Deadline)
		defer cancelDeadline()
	}

	beatCtx, stopBeats := context.WithCancel(hctx)
	beating := make(chan struct{})
	go func() {
		defer close(beating)
		w.heartbeat(beatCtx, task, func(e attemptEnd, why error) {
			if !ua.end.CompareAndSwap(int32(attemptHeld), int32(e)) {
				return
			}
			// The sidecar took the attempt back: the handler is cancelled, what
			// it returns is not reported, and a stop does not wait for it.
			cancel(fmt.Errorf("%w: %v", ErrTaskCancelled, why))
			w.cancelled.Add(1)
			if e == attemptCancelRequest {
				rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.ReportTimeout)
				w.fail(rctx, task, cancelledFailure(), 0)
				rcancel()
			}
			finish()
		})
	}()

	w.handlingMu.Lock()
	w.handling[ua] = struct{}{}
	w.handlingMu.Unlock()
	output, err := w.call(hctx, task)
	w.handlingMu.Lock()
	_, mine := w.handling[ua]
	delete(w.handling, ua)
	w.handlingMu.Unlock()
	stopBeats()
	<-beating
	if !mine {
		return // handed back by a stop while the handler ran (handBack)
	}

	if attemptEnd(ua.end.Load()) != attemptHeld {
		return // taken back by the sidecar, and reported if need be, meanwhile
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), w.opts.ReportTimeout)
	defer rcancel()
	if err != nil {
		failure, retryAfter := handlerFailure(hctx, err)
		w.fail(rctx, task, failure, retryAfter)
		return
	}
	w.complete(rctx, task, output)
}

// cancelledFailure is the failure a unary attempt whose cancellation the
// sidecar asked for is reported with, at once (its handler is not awaited).
func cancelledFailure() *arev1.Failure {
	return &arev1.Failure{
		Message: "cancelled: the sidecar asked the worker to stop",
		Type:    "Cancelled",
		Kind:    arev1.FailureKind_FAILURE_KIND_CANCELLED,
	}
}

// handBack hands back the unary attempts whose handler has not returned,
// when a stop gave up waiting for them: each one still held is reported
// failed as WORKER_LOST (retried by policy), and what its handler returns
// later is not reported. The stream hands its attempts back itself (see
// streamSession.handBack).
func (w *Worker) handBack() {
	w.handlingMu.Lock()
	stuck := make([]*unaryAttempt, 0, len(w.handling))
	for ua := range w.handling {
		stuck = append(stuck, ua)
	}
	clear(w.handling)
	w.handlingMu.Unlock()
	if len(stuck) == 0 {
		return
	}
	w.log.Warn("handlers did not return within the shutdown grace, though their context was cancelled: their attempts are handed back", "attempts", len(stuck))
	var reports sync.WaitGroup
	for _, ua := range stuck {
		reports.Add(1)
		go func() {
			defer reports.Done()
			if !ua.end.CompareAndSwap(int32(attemptHeld), int32(attemptLost)) {
				return // taken back by the sidecar already (and released then)
			}
			defer ua.finish()
			rctx, cancel := context.WithTimeout(context.Background(), w.opts.ReportTimeout)
			defer cancel()
			w.fail(rctx, ua.task, &arev1.Failure{
				Message: "the worker stopped and the handler did not return within the shutdown grace, though its context was cancelled",
				Type:    "WorkerStopped",
				Kind:    arev1.FailureKind_FAILURE_KIND_WORKER_LOST,
			}, 0)
		}()
	}
	reports.Wait()
}

// newTask makes the Task a handler receives for an assignment.
func (w *Worker) newTask(a *arev1.TaskAssignment) *Task {
	task := &Task{
		WorkflowID:       a.GetWorkflowId(),
		TaskID:           a.GetTaskId(),
		Attempt:          a.GetAttempt(),
		Capability:       a.GetCapability(),
		IdempotencyKey:   a.GetIdempotencyKey(),
		InputContentType: a.GetInput().GetContentType(),
		Assignment:       a,
		client:           w.client,
		kick:             make(chan struct{}, 1),
	}
	if dl := a.GetDeadlineTime(); dl != nil {
		task.Deadline = dl.AsTime()
	}
	return task
}

// handlerFailure is the Failure a handler's error is reported as; a handler
// that outlived the shutdown grace is reported as WORKER_LOST.
func handlerFailure(hctx context.Context, err error) (*arev1.Failure, time.Duration) {
	failure, retryAfter := failureOf(err)
	if errors.Is(context.Cause(hctx), ErrWorkerStopped) {
		return &arev1.Failure{
			Message: truncate("the worker stopped before the task finished: "+failure.GetMessage(), maxFailureMessage),
			Type:    "WorkerStopped",
			Kind:    arev1.FailureKind_FAILURE_KIND_WORKER_LOST,
			Cause:   failure.GetCause(), // the causes of the handler's error
		}, 0
	}
	return failure, retryAfter
}

// call runs the handler, fetching blob inputs first. The handler runs on a
// goroutine of its own, so that every way it can end becomes a result to
// report: a panic (whatever its value) becomes a *panicError, and a
// runtime.Goexit (t.FailNow in a test, say), which ends its goroutine
// without returning, a *goexitError; the attempt is never left unreported.
func (w *Worker) call(ctx context.Context, task *Task) (output []byte, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		returned := false
		defer func() {
			if r := recover(); r != nil {
				output, err = nil, &panicError{value: r, stack: string(debug.Stack())}
			} else if !returned {
				output, err = nil, &goexitError{stack: string(debug.Stack())}
			}
		}()
		output, err = w.callHandler(ctx, task)
		returned = true
	}()
	<-done
	return output, err
}

// callHandler resolves the task's blobs and calls its capability's handler.
func (w *Worker) callHandler(ctx context.Context, task *Task) ([]byte, error) {
	if err := w.resolve(ctx, task); err != nil {
		return nil, &TaskError{Message: "cannot read the task's blobs: " + err.Error(), Type: "BlobReadError", Err: err}
	}
	handler := w.handlers[task.Capability]
	if handler == nil {
		return nil, &TaskError{Message: fmt.Sprintf("worker %s has no handler for %q", w.name, task.Capability), Type: "NoHandler", NonRetryable: true}
	}
	return handler(ctx, task)
}

func (w *Worker) resolve(ctx context.Context, task *Task) error {
	a := task.Assignment
	input, err := w.client.PayloadBytes(ctx, a.GetInput())
	if err != nil {
		return err
	}
	task.Input = input
	if task.InputContentType == "" && a.GetInput().GetBlob() != nil {
		task.InputContentType = a.GetInput().GetBlob().GetContentType()
	}
	for _, d := range a.GetDependencies() {
		out, err := w.client.PayloadBytes(ctx, d.GetOutput())
		if err != nil {
			return err
		}
		task.Dependencies = append(task.Dependencies, Dependency{
			TaskID:      d.GetTaskId(),
			State:       d.GetState(),
			Output:      out,
			ContentType: d.GetOutput().GetContentType(),
			Failure:     d.GetFailure(),
		})
	}
	return nil
}

type panicError struct {
	value any
	stack string
}

func (e *panicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.value) }

// goexitError is a handler that called runtime.Goexit instead of returning.
type goexitError struct {
	stack string
}

func (e *goexitError) Error() string {
	return "the handler called runtime.Goexit (t.FailNow or t.Fatal, say) instead of returning"
}

// The sidecar refuses a Failure beyond these bounds (common.proto); a
// refused failure report would leave its attempt RUNNING, so every report
// the worker builds is fitted to them first (fitReport).
const (
	maxFailureMessage     = 32 * 1024
	maxStackTrace         = 64 * 1024
	maxFailureType        = 256         // characters
	maxFailureDetails     = 1024 * 1024 // bytes, inline only; also a failure with its causes
	maxDetailsContentType = 128         // characters
	maxFailureCauses      = 8
	// maxCountedCauses bounds the walk of an error's chain below the causes
	// kept: an endless chain (an Unwrap that makes a new error on every
	// call) is counted no further, its note saying "or more".
	maxCountedCauses = 10_000
)

// fitReport fits a failure report to the bounds the sidecar refuses beyond,
// so that it is never refused for its shape: see fitFailure; a negative
// usage counter becomes 0, and a negative or malformed retry_after is
// dropped (no least delay).
func fitReport(report *arev1.TaskFailure) *arev1.TaskFailure {
	fitFailure(report.GetFailure())
	if u := report.GetUsage(); u != nil {
		report.Usage = &arev1.Usage{
			InputTokens:  max(0, u.GetInputTokens()),
			OutputTokens: max(0, u.GetOutputTokens()),
			CostMicroUsd: max(0, u.GetCostMicroUsd()),
			LlmCalls:     max(0, u.GetLlmCalls()),
			ToolCalls:    max(0, u.GetToolCalls()),
		}
	}
	if d := report.GetRetryAfter(); d != nil && (d.CheckValid() != nil || d.GetSeconds() < 0 || d.GetNanos() < 0) {
		report.RetryAfter = nil
	}
	return report
}

// fitFailure fits a Failure and its causes to the sidecar's bounds, in
// place: strings valid UTF-8, the message and stack trace cut to 32 and 64
// KiB, the type to 256 characters; details by reference, over 1 MiB or with
// a content type over 128 characters dropped, saying so in the message; at
// most 8 causes, dropped from the deepest while the whole is over 1 MiB. The
// deepest cause kept says how many were dropped and why, in the sidecar's
// words (causesNote).
func fitFailure(failure *arev1.Failure) {
	fitChain(failure, 0, false)
}

// fitChain is fitFailure for a failure whose chain went tooDeep causes
// deeper than the causes it holds (counted, not built, by withCauses), or
// at least that many when atLeast: the note of dropped causes counts them.
func fitChain(failure *arev1.Failure, tooDeep int, atLeast bool) {
	if failure == nil {
		return
	}
	chain := []*arev1.Failure{failure}
	for f := failure.GetCause(); f != nil; f = f.GetCause() {
		if len(chain) <= maxFailureCauses {
			chain = append(chain, f)
		} else if tooDeep++; tooDeep >= maxCountedCauses {
			atLeast = true
			break
		}
	}
	chain[len(chain)-1].Cause = nil // a ninth cause and below
	messages := make([]string, len(chain))
	for i, f := range chain {
		fitOne(f)
		messages[i] = f.GetMessage()
	}
	for tooBig := 0; ; tooBig++ {
		deepest := len(chain) - 1
		if tooDeep+tooBig > 0 {
			chain[deepest].Message = noted(messages[deepest], causesNote(tooDeep, tooBig, atLeast))
		}
		if deepest == 0 || proto.Size(failure) <= maxFailureDetails {
			return
		}
		chain = chain[:deepest]
		chain[deepest-1].Cause = nil
	}
}

// causesNote says how many causes below the deepest kept one were dropped,
// and why, as the sidecar says it ("[12 deeper causes dropped: causes nest
// at most 8 deep]"); "or more" when the walk of an endless chain gave up
// counting (see withCauses).
func causesNote(tooDeep, tooBig int, atLeast bool) string {
	var why []string
	if tooDeep > 0 {
		why = append(why, fmt.Sprintf("causes nest at most %d deep", maxFailureCauses))
	}
	if tooBig > 0 {
		why = append(why, "a failure with its causes is at most 1 MiB")
	}
	count, more, plural := tooDeep+tooBig, "", ""
	if atLeast {
		more = " or more"
	}
	if count > 1 || atLeast {
		plural = "s"
	}
	return fmt.Sprintf("[%d%s deeper cause%s dropped: %s]", count, more, plural, strings.Join(why, "; "))
}

// noted is message with note appended, the message cut (whole characters)
// so that both fit in the 32 KiB of UTF-8 the sidecar keeps: the note is
// never the part it cuts off.
func noted(message, note string) string {
	if message == "" {
		return note
	}
	return truncate(message, maxFailureMessage-len(note)-1) + " " + note
}

// fitOne fits one Failure, not its causes (see fitFailure).
func fitOne(f *arev1.Failure) {
	f.Message = truncate(f.GetMessage(), maxFailureMessage)
	f.StackTrace = truncate(f.GetStackTrace(), maxStackTrace)
	f.Type = truncateRunes(f.GetType(), maxFailureType)
	d := f.GetDetails()
	if d == nil {
		return
	}
	why := ""
	switch contentType := strings.ToValidUTF8(d.GetContentType(), "\uFFFD"); {
	case d.GetBlob() != nil:
		why = fmt.Sprintf("details by reference (%d bytes) dropped: inline only", d.GetBlob().GetSizeBytes())
	case len(d.GetData()) > maxFailureDetails:
		why = fmt.Sprintf("details of %d bytes dropped: over 1 MiB", len(d.GetData()))
	case utf8.RuneCountInString(contentType) > maxDetailsContentType:
		why = fmt.Sprintf("details dropped: content type of %d characters, over 128", utf8.RuneCountInString(contentType))
	default:
		d.ContentType = contentType
	}
	if why != "" {
		f.Details = nil
		f.Message = truncate(f.Message+" ("+why+")", maxFailureMessage)
	}
}

// truncateRunes returns s as valid UTF-8 cut to at most n characters.
func truncateRunes(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

// failureOf makes the Failure a handler's error is reported as, with the
// least retry delay: a *TaskError's RetryAfter, else the sidecar's retry
// hint (RetryInfo) of an *Error in its chain, such as a spawn refused with
// POOL_QUEUE_FULL. The errors it wraps are the failure's causes
// (withCauses). It never panics, since an attempt must always be reported:
// when the error's methods panic (an Error method that fails, a nil pointer
// returned as an error), the failure says that its message could not be
// read, with the stack of that panic.
func failureOf(err error) (*arev1.Failure, time.Duration) {
	failure, retryAfter := ownFailureOf(err)
	withCauses(failure, err)
	return failure, retryAfter
}

// ownFailureOf is failureOf without the causes. It looks into err's chain
// with findIn, since errors.As never ends on a cyclic chain.
func ownFailureOf(err error) (failure *arev1.Failure, retryAfter time.Duration) {
	defer func() {
		if r := recover(); r != nil {
			typ := goType(err)
			failure = &arev1.Failure{
				Message:    truncate(fmt.Sprintf("%s (its message could not be read: %v)", typ, r), maxFailureMessage),
				Type:       typ,
				Kind:       arev1.FailureKind_FAILURE_KIND_APPLICATION,
				StackTrace: truncate(string(debug.Stack()), maxStackTrace),
			}
			retryAfter = 0
		}
	}()
	failure = &arev1.Failure{
		Message: truncate(err.Error(), maxFailureMessage),
		Type:    goType(err),
		Kind:    arev1.FailureKind_FAILURE_KIND_APPLICATION,
	}
	var te *TaskError
	var pe *panicError
	var ge *goexitError
	switch {
	case findIn(err, &te):
		if te.Type != "" {
			failure.Type = te.Type
		} else if te.Err != nil {
			failure.Type = goType(te.Err)
		}
		failure.NonRetryable = te.NonRetryable
		if len(te.Details) > 0 {
			failure.Details = Bytes(te.Details, JSONContentType)
		}
		retryAfter = te.RetryAfter
	case findIn(err, &pe):
		failure.Type = "panic"
		failure.StackTrace = truncate(pe.stack, maxStackTrace)
	case findIn(err, &ge):
		failure.Type = "goexit"
		failure.StackTrace = truncate(ge.stack, maxStackTrace)
	}
	var ae *Error
	if retryAfter == 0 && findIn(err, &ae) && ae.RetryDelay > 0 {
		retryAfter = ae.RetryDelay
	}
	return failure, retryAfter
}

// withCauses sets the causes of failure, the Failure of a handler's error
// err (ownFailureOf), from the errors err wraps, outermost first (see
// unwrapOne): with fmt.Errorf("loading: %w", err) the failure says
// "loading: <err's text>" and its cause is err, with err's text and type,
// then err's own cause, and so on. Each cause has its Error() text and a
// type as the failure has: a *TaskError's Type (else its Err's Go type),
// else its Go type; an Error method that panics is named so, as for the
// failure. A *TaskError with neither a Message nor a Type (NonRetryable(err),
// say) is not a cause of its own, since it would repeat its Err, which
// stands for it. The chain is fitted as fitFailure does, the causes dropped
// counted up to 10,000 past the 8 kept; an error met before (a cycle) or an
// Unwrap that panics ends it. Never panics.
func withCauses(failure *arev1.Failure, err error) {
	seen := make(map[error]struct{})
	var causes []*arev1.Failure
	levels, tooDeep, atLeast := 0, 0, false // levels: the failure's, then its causes'
	const most = 1 + maxFailureCauses + maxCountedCauses
	for e, steps := err, 0; e != nil; e, steps = unwrapOne(e), steps+1 {
		if steps == most {
			atLeast = tooDeep > 0
			break
		}
		if !firstMeeting(seen, e) {
			break // a cycle
		}
		if standsForItsErr(e) {
			continue
		}
		switch {
		case levels == 0: // err itself: the failure
		case levels <= maxFailureCauses:
			causes = append(causes, causeFailure(e))
		default:
			tooDeep++
		}
		levels++
	}
	below := failure
	for _, c := range causes {
		below.Cause = c
		below = c
	}
	fitChain(failure, tooDeep, atLeast)
}

// findIn is errors.As for a handler's error, bounded: it looks for a T in
// err's tree as errors.As does (depth first, asking As methods too), but
// never into an error met before, and into at most as many errors as
// withCauses walks, so that it ends on a cycle or an endless chain, where
// errors.As would go round for ever (and the attempt never be reported).
// An Unwrap or As method that panics ends its branch.
func findIn[T error](err error, target *T) bool {
	seen := make(map[error]struct{})
	budget := 1 + maxFailureCauses + maxCountedCauses
	pending := []error{err}
	for len(pending) > 0 && budget > 0 {
		e := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		if e == nil || !firstMeeting(seen, e) {
			continue
		}
		budget--
		if t, ok := e.(T); ok {
			*target = t
			return true
		}
		if asks(e, target) {
			return true
		}
		wrapped := unwrapAll(e)
		for i := len(wrapped) - 1; i >= 0; i-- {
			pending = append(pending, wrapped[i])
		}
	}
	return false
}

// asks reports whether e's As method (if any) sets target, as errors.As
// asks it; false when it panics.
func asks(e error, target any) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	x, has := e.(interface{ As(any) bool })
	return has && x.As(target)
}

// unwrapAll is what e wraps, as errors.As sees it: Unwrap() error's or
// Unwrap() []error's; nil when its Unwrap panics.
func unwrapAll(e error) (wrapped []error) {
	defer func() {
		if recover() != nil {
			wrapped = nil
		}
	}()
	switch u := e.(type) {
	case interface{ Unwrap() error }:
		return []error{u.Unwrap()}
	case interface{ Unwrap() []error }:
		return u.Unwrap()
	}
	return nil
}

// unwrapOne is the error e wraps: Unwrap() error's; the first non-nil of
// Unwrap() []error's (errors.Join, fmt.Errorf with several %w), whose text
// e's own already holds; for a handler's panic, the error it panicked with.
// It is nil when there is none, or when the Unwrap method panics.
func unwrapOne(e error) (wrapped error) {
	defer func() {
		if recover() != nil {
			wrapped = nil
		}
	}()
	switch u := e.(type) {
	case *panicError:
		wrapped, _ = u.value.(error)
		return wrapped
	case interface{ Unwrap() error }:
		return u.Unwrap()
	case interface{ Unwrap() []error }:
		for _, w := range u.Unwrap() {
			if w != nil {
				return w
			}
		}
	}
	return nil
}

// firstMeeting adds e to seen and reports whether it was not there yet. An
// error whose dynamic type cannot be a map key (a struct holding a slice)
// panics when hashed: it counts as first met, and withCauses's bound ends a
// cycle through it.
func firstMeeting(seen map[error]struct{}, e error) (first bool) {
	defer func() {
		if recover() != nil {
			first = true
		}
	}()
	if _, met := seen[e]; met {
		return false
	}
	seen[e] = struct{}{}
	return true
}

// standsForItsErr reports whether e is a *TaskError with neither a Message
// nor a Type, whose text and type are therefore its Err's.
func standsForItsErr(e error) bool {
	te, ok := e.(*TaskError)
	return ok && te != nil && te.Message == "" && te.Type == "" && te.Err != nil
}

// causeFailure is one cause of a handler's error as a Failure: its text and
// type (see withCauses), never panicking. No stack trace: a Go error has
// none of its own.
func causeFailure(e error) *arev1.Failure {
	typ := goType(e)
	if te, ok := e.(*TaskError); ok && te != nil {
		switch {
		case te.Type != "":
			typ = te.Type
		case te.Err != nil:
			typ = goType(te.Err)
		}
	}
	return &arev1.Failure{Message: textOf(e, typ), Type: typ, Kind: arev1.FailureKind_FAILURE_KIND_APPLICATION}
}

// textOf is e.Error(), cut to the 32 KiB kept; when it panics, a text saying
// that the message of an error of type typ could not be read.
func textOf(e error, typ string) (text string) {
	defer func() {
		if r := recover(); r != nil {
			text = truncate(fmt.Sprintf("%s (its message could not be read: %v)", typ, r), maxFailureMessage)
		}
	}()
	return truncate(e.Error(), maxFailureMessage)
}

// goType is the Go type of v without a pointer's star ("errors.errorString").
func goType(v any) string {
	return strings.TrimPrefix(fmt.Sprintf("%T", v), "*")
}

// truncate returns s as valid UTF-8 (an error's text may hold any bytes, and
// a proto string field refuses invalid UTF-8, so the report could not be
// sent), cut to at most n bytes on a character boundary.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// heartbeat records a heartbeat every interval (and at once when the
// handler records details) until ctx ends, and calls end when the sidecar
// says the attempt is over.
func (w *Worker) heartbeat(ctx context.Context, task *Task, end func(attemptEnd, error)) {
	interval := w.opts.HeartbeatInterval
	if ht := task.Assignment.GetHeartbeatTimeout(); ht != nil && ht.AsDuration() > 0 {
		interval = min(interval, ht.AsDuration()/4)
	}
	interval = max(interval, 50*time.Millisecond)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-task.kick:
		}
		task.mu.Lock()
		details := task.heartbeatDetails
		task.heartbeatDetails = nil
		task.mu.Unlock()
		beat := &arev1.TaskHeartbeat{WorkflowId: task.WorkflowID, TaskId: task.TaskID, Attempt: task.Attempt, Details: details}
		bctx, cancel := context.WithTimeout(ctx, min(w.opts.ReportTimeout, max(interval, 5*time.Second)))
		resp, err := w.client.Raw.Worker.RecordHeartbeat(bctx, &arev1.RecordHeartbeatRequest{Heartbeat: beat})
		cancel()
		switch {
		case err == nil && resp.GetCancelRequested():
			end(attemptCancelRequest, errors.New("cancel requested"))
			return
		case err != nil && leaseGone(err):
			end(attemptLost, err)
			return
		case err != nil && ctx.Err() == nil:
			w.log.Debug("heartbeat failed", "workflow_id", task.WorkflowID, "task_id", task.TaskID, "error", err)
		}
	}
}

// leaseGone reports whether a heartbeat's error means the attempt is no
// longer this worker's.
func leaseGone(err error) bool {
	return reasonGone(ReasonOf(err))
}

// reasonGone reports whether a refusal's reason (an arev1.ErrorReason name
// without its prefix) means the attempt is no longer this worker's.
func reasonGone(reason string) bool {
	switch reason {
	case "TASK_NOT_HELD", "TASK_ALREADY_COMPLETED", "TASK_NOT_FOUND", "WORKFLOW_NOT_FOUND":
		return true
	}
	return false
}

// CompletionRefusedType is the failure type an attempt is reported failed
// with when the sidecar refuses its completion as invalid (for example an
// output content type over 128 characters, or a negative usage counter):
// such a refusal changes nothing and the attempt stays held, so the worker
// reports a failure instead, quoting the refusal (which names the field),
// retried by the task's retry policy. A completion that cannot be sent at
// all (an output content type that is not valid UTF-8) is reported the same
// way.
const CompletionRefusedType = "CompletionRefused"

// completionRefusedReport is the failure reported in place of a refused
// completion. It carries the completion's usage, so budgets still count it,
// with any negative counter (itself a reason for the refusal) as 0, so that
// it is not refused too.
func completionRefusedReport(completion *arev1.TaskCompletion, reason, message string) *arev1.TaskFailure {
	if message == "" {
		message = "no message"
	}
	var usage *arev1.Usage
	if u := completion.GetUsage(); u != nil {
		usage = &arev1.Usage{
			InputTokens:  max(0, u.GetInputTokens()),
			OutputTokens: max(0, u.GetOutputTokens()),
			CostMicroUsd: max(0, u.GetCostMicroUsd()),
			LlmCalls:     max(0, u.GetLlmCalls()),
			ToolCalls:    max(0, u.GetToolCalls()),
		}
	}
	return fitReport(&arev1.TaskFailure{
		WorkflowId: completion.GetWorkflowId(),
		TaskId:     completion.GetTaskId(),
		Attempt:    completion.GetAttempt(),
		Usage:      usage,
		Failure: &arev1.Failure{
			Message: truncate(fmt.Sprintf("the sidecar refused the completion (%s): %s", strings.TrimPrefix(reason, "ERROR_REASON_"), message), maxFailureMessage),
			Type:    CompletionRefusedType,
			Kind:    arev1.FailureKind_FAILURE_KIND_APPLICATION,
		},
	})
}

// refusedAsInvalid reports whether a CompleteTask error refused the
// completion itself (a bad field, a patch that does not apply, a missing
// blob), which leaves the attempt held; not a lost lease or a failed call.
func refusedAsInvalid(err error) bool {
	var e *Error
	if !errors.As(err, &e) || e.Reason == "" || reasonGone(e.Reason) {
		return false
	}
	switch e.Code {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound:
		return true
	}
	return false
}

// completionOf makes the completion of an attempt whose handler returned
// output, uploading an output over MaxInlineBytes as a blob; when the upload
// fails it returns the failure to report instead.
func (w *Worker) completionOf(ctx context.Context, task *Task, output []byte) (*arev1.TaskCompletion, *arev1.Failure) {
	task.mu.Lock()
	contentType, patch, usage := task.outputContentType, task.statePatch, task.usage
	task.mu.Unlock()
	completion := &arev1.TaskCompletion{
		WorkflowId: task.WorkflowID, TaskId: task.TaskID, Attempt: task.Attempt, Usage: usage,
	}
	if output != nil {
		if contentType == "" {
			contentType = JSONContentType
		}
		if !utf8.ValidString(contentType) {
			// Protobuf cannot encode it: sent, it would break the worker's
			// stream (every attempt held on it lost) or fail CompleteTask
			// without a word to the sidecar, leaving the attempt RUNNING.
			return nil, &arev1.Failure{
				Message: truncate(fmt.Sprintf("the completion could not be sent: output.content_type %q is not valid UTF-8", contentType), maxFailureMessage),
				Type:    CompletionRefusedType,
				Kind:    arev1.FailureKind_FAILURE_KIND_APPLICATION,
			}
		}
		payload, err := w.client.inlineOrBlob(ctx, output, contentType, task.WorkflowID)
		if err != nil {
			w.log.Warn("cannot store the output as a blob", "workflow_id", task.WorkflowID, "task_id", task.TaskID, "error", err)
			return nil, &arev1.Failure{Message: "cannot store the output: " + err.Error(), Type: "BlobWriteError"}
		}
		completion.Output = payload
	}
	if patch != nil {
		completion.StatePatch = &arev1.StatePatch{Patch: &arev1.StatePatch_MergePatchJson{MergePatchJson: patch}}
	}
	return completion, nil
}

// failureReportOf makes the failure report of an attempt, fitted to the
// sidecar's bounds (fitReport).
func failureReportOf(task *Task, failure *arev1.Failure, retryAfter time.Duration) *arev1.TaskFailure {
	task.mu.Lock()
	usage := task.usage
	task.mu.Unlock()
	report := &arev1.TaskFailure{
		WorkflowId: task.WorkflowID, TaskId: task.TaskID, Attempt: task.Attempt, Failure: failure, Usage: usage,
	}
	if retryAfter > 0 {
		report.RetryAfter = durationpb.New(retryAfter)
	}
	return fitReport(report)
}

func (w *Worker) complete(ctx context.Context, task *Task, output []byte) {
	completion, failure := w.completionOf(ctx, task, output)
	if failure != nil {
		w.fail(ctx, task, failure, 0)
		return
	}
	err := retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := w.client.Raw.Worker.CompleteTask(ctx, &arev1.CompleteTaskRequest{Completion: completion})
		return err
	})
	if err != nil {
		w.log.Warn("completion refused", "workflow_id", task.WorkflowID, "task_id", task.TaskID, "attempt", task.Attempt, "error", err)
		if refusedAsInvalid(err) {
			// The attempt is still held: report it failed instead, once.
			var e *Error
			errors.As(err, &e)
			w.report(ctx, task, completionRefusedReport(completion, e.Reason, e.Message))
		}
		return
	}
	w.completed.Add(1)
}

func (w *Worker) fail(ctx context.Context, task *Task, failure *arev1.Failure, retryAfter time.Duration) {
	w.report(ctx, task, failureReportOf(task, failure, retryAfter))
}

// report sends an attempt's failure report with FailTask.
func (w *Worker) report(ctx context.Context, task *Task, report *arev1.TaskFailure) {
	failure := report.GetFailure()
	err := retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := w.client.Raw.Worker.FailTask(ctx, &arev1.FailTaskRequest{Failure: report})
		return err
	})
	if err != nil {
		if failure.GetKind() != arev1.FailureKind_FAILURE_KIND_CANCELLED || !leaseGone(err) {
			w.log.Warn("failure refused", "workflow_id", task.WorkflowID, "task_id", task.TaskID, "attempt", task.Attempt, "error", err)
		}
		return
	}
	if failure.GetKind() != arev1.FailureKind_FAILURE_KIND_CANCELLED {
		w.failed.Add(1)
	}
}

// retryUnavailable calls f until it succeeds, fails for another reason than
// UNAVAILABLE, or ctx ends.
func retryUnavailable(ctx context.Context, f func(context.Context) error) error {
	delay := 50 * time.Millisecond
	for {
		err := f(ctx)
		if err == nil || !errors.Is(err, ErrUnavailable) {
			return err
		}
		if sleep(ctx, jitter(delay)) != nil {
			return err
		}
		delay = min(2*delay, 2*time.Second)
	}
}
