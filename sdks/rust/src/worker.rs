//! A worker of WorkerService, on one of two transports (see
//! [`WorkerTransport`]): the unary path (PollTask long polls, CompleteTask /
//! FailTask, and RecordHeartbeat while a handler runs) or the Connect stream
//! (in `worker/stream.rs`). Handlers are the same on both.

mod attributes;
mod causes;
mod stream;

pub use attributes::{AttributeValue, Attributes, LlmCallOptions, ToolCallOptions};

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::error::{Error, Result};
use crate::pb;
use crate::router::AgentCard;
use crate::time::{capped, MAX_PROTO_SECONDS};
use crate::workflow::JSON_CONTENT_TYPE;
use crate::Client;
use causes::MAX_MESSAGE_BYTES;

/// A full-jitter delay in `[0, d]`.
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0) as u128;
    let max = d.as_nanos().max(1);
    Duration::from_nanos((nanos.wrapping_mul(2654435761) % (max + 1)) as u64)
}

/// The longest retry hint taken from the sidecar (as the Java SDK's): a
/// longer one (a RetryInfo of years) is waited a day, then tried again.
pub(crate) const MAX_RETRY_HINT: Duration = Duration::from_secs(86_400);

/// How long to wait before trying again: a full-jitter draw below `delay`,
/// or, when the sidecar sent a retry hint (RetryInfo: its worker bound
/// reached, its subscribers all taken, a store busy), at least that hint
/// (at most [`MAX_RETRY_HINT`]), with up to a fifth more so that the
/// callers it refused together do not all come back at once.
pub(crate) fn retry_wait(delay: Duration, hint: Option<Duration>) -> Duration {
    let wait = jitter(delay);
    match hint.filter(|h| !h.is_zero()) {
        Some(hint) => {
            let hint = hint.min(MAX_RETRY_HINT);
            wait.max(hint + jitter(hint / 5))
        }
        None => wait,
    }
}

/// A handler's failure: a message, a type (matched against the retry policy's
/// `non_retryable_failure_types`), whether it may be retried, JSON details,
/// a least retry delay, and the errors that caused it, sent as the failure's
/// nested `Failure.cause`s.
///
/// Any `std::error::Error` converts into one with `?`: its type name is the
/// type, its `Display` the message (its first 32 KiB, what the sidecar
/// keeps; a `Display` that panics gives a message saying so, and the
/// failure is reported all the same), and its `source()` chain the causes
/// (see [`TaskError::causes`]). A `Box<dyn Error>` or an `anyhow::Error`,
/// which are not `std::error::Error`s themselves, converts with
/// [`TaskError::from_dyn`]; [`TaskError::caused_by`] gives a failure of your
/// own type the causes of an error. An [`Error`] of this SDK (itself, or as a
/// cause of another error) passes the sidecar's retry hint on as
/// `retry_after`, so that a handler whose call was refused for backpressure
/// (RESOURCE_EXHAUSTED with a RetryInfo) is not retried sooner than the
/// sidecar asked.
///
/// The sidecar keeps a message's first 32 KiB of UTF-8 and 8 causes, and a
/// failure with its causes is at most 1 MiB: the worker cuts the report to
/// those bounds before sending it, the deepest cause kept saying at the end
/// of its message how many causes were dropped and why, as the sidecar would
/// (`[42 deeper causes dropped: causes nest at most 8 deep]`).
#[derive(Clone, Debug, Default)]
pub struct TaskError {
    /// What went wrong.
    pub message: String,
    /// The failure's type (from `?`, the Rust type name of the error).
    pub error_type: String,
    /// Forbids retries, whatever the retry policy says.
    pub non_retryable: bool,
    /// Structured details.
    pub details: Option<serde_json::Value>,
    /// Least delay before a retry (a provider's Retry-After).
    pub retry_after: Option<Duration>,
    /// The errors that caused this one, outermost first: each is sent as the
    /// `cause` of the one above it. From an error, its `source()` chain: each
    /// cause's message is its `Display` (its first 32 KiB; one whose
    /// `Display` panics says so instead), and its type is, for an error of
    /// this SDK or a common one of std, serde_json, tonic or tokio, its Rust
    /// type name (`std::io::error::Error`), else the leading identifier of
    /// its `Debug` output (for a derived `Debug`, the type's name, or an
    /// enum's variant's), since a `dyn Error` has no type name; "" when that
    /// output starts otherwise. At most 8 are kept from a chain, the rest
    /// counted in `causes_dropped`; a `source()` that panics ends the chain.
    /// (A boxed slice, `vec![..].into()`, so that a `Result<_, TaskError>`
    /// stays small.)
    pub causes: Box<[TaskCause]>,
    /// How many causes were below those in `causes` and not kept (counted up
    /// to 10,000, where the walk of a chain stops: a `source()` chain may
    /// not end); the report says so on its deepest cause.
    pub causes_dropped: u32,
}

/// One cause of a [`TaskError`]: a type and a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskCause {
    /// The cause's type (see [`TaskError::causes`]).
    pub error_type: String,
    /// What it says.
    pub message: String,
}

impl TaskCause {
    /// A cause with a type and a message.
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        TaskCause {
            error_type: error_type.to_string(),
            message: message.into(),
        }
    }
}

impl TaskError {
    /// A failure with a message and a type.
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            error_type: error_type.to_string(),
            ..Default::default()
        }
    }

    /// This failure, never retried.
    pub fn non_retryable(mut self) -> Self {
        self.non_retryable = true;
        self
    }

    /// A failure of an error known only as a `dyn Error`, as `?` converts
    /// any other: for a `Box<dyn Error + Send + Sync>` `b`,
    /// `TaskError::from_dyn(&*b)`; for an `anyhow::Error` `e`,
    /// `TaskError::from_dyn(e.as_ref())`. Its type is named as its causes'
    /// are (see [`TaskError::causes`]): a `dyn Error` has no type name.
    pub fn from_dyn(e: &(dyn std::error::Error + 'static)) -> Self {
        TaskError::of(causes::type_of(e), e)
    }

    /// This failure with `source` and its own `source()` chain as its causes
    /// (in place of any it had), read as [`TaskError::causes`] says; a
    /// retry hint in them is taken when this failure has no `retry_after`.
    /// For a failure of your own type that keeps what caused it:
    /// `TaskError::new("RateLimited", "slow down").caused_by(&e)`.
    pub fn caused_by(mut self, source: &(dyn std::error::Error + 'static)) -> Self {
        let chain = causes::walk(Some(source), MAX_FAILURE_CAUSES);
        self.causes = chain.causes.into();
        self.causes_dropped = chain.dropped;
        if self.retry_after.is_none() {
            self.retry_after = chain.retry_after;
        }
        self
    }

    /// The failure of `e`, whose type is `error_type`.
    fn of(error_type: String, e: &(dyn std::error::Error + 'static)) -> Self {
        let message = causes::text_of(e, &error_type);
        let chain = causes::walk(causes::source_of(e), MAX_FAILURE_CAUSES);
        let retry_after = match e.downcast_ref::<Error>() {
            Some(sdk) => sdk.retry_delay,
            None => chain.retry_after,
        };
        TaskError {
            message,
            error_type,
            retry_after,
            causes: chain.causes.into(),
            causes_dropped: chain.dropped,
            ..Default::default()
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError::of(std::any::type_name::<E>().to_string(), &e)
    }
}

/// Why a running attempt's cancellation token fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The sidecar asked to stop (the workflow was cancelled or closed).
    CancelRequested,
    /// The worker no longer holds the attempt (TASK_NOT_HELD and the like).
    LeaseLost,
    /// The attempt's start-to-close deadline passed.
    DeadlineExceeded,
    /// The worker stopped and the handler outlived the shutdown grace.
    WorkerStopped,
}

/// What a task received about one of its dependencies.
#[derive(Clone, Debug)]
pub struct Dependency {
    /// The dependency's task id.
    pub task_id: String,
    /// Its state (a `pb::TaskState`).
    pub state: i32,
    /// Its output when COMPLETED (fetched when passed as a blob).
    pub output: Vec<u8>,
    /// Its failure when it failed.
    pub failure: Option<pb::Failure>,
}

/// One attempt of one task, as handed to a handler.
#[derive(Clone, Debug)]
pub struct Task {
    /// The task's workflow.
    pub workflow_id: String,
    /// The task's id.
    pub task_id: String,
    /// The attempt number, from 1.
    pub attempt: i32,
    /// The capability it was assigned for.
    pub capability: String,
    /// The same for every attempt: makes side effects idempotent.
    pub idempotency_key: String,
    /// The input's bytes (JSON unless its content type says otherwise).
    pub input: Vec<u8>,
    /// The dependencies, in `depends_on` order.
    pub dependencies: Vec<Dependency>,
    /// The assignment as received, with everything else.
    pub assignment: pb::TaskAssignment,
    cancel: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
    usage: Arc<Mutex<pb::Usage>>,
    heartbeat: Arc<Mutex<Option<serde_json::Value>>>,
    kick: Arc<Notify>,
    client: Client,
}

impl Task {
    /// The input decoded from JSON.
    pub fn input_json<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        crate::json::from_slice(&self.input).map_err(|e| TaskError::from(e).non_retryable())
    }

    /// The output of a dependency that COMPLETED, decoded from JSON.
    pub fn dependency_json<T: DeserializeOwned>(&self, task_id: &str) -> Option<T> {
        self.dependencies
            .iter()
            .find(|d| d.task_id == task_id && d.state == pb::TaskState::Completed as i32)
            .and_then(|d| crate::json::from_slice(&d.output).ok())
    }

    /// Fires when the attempt must stop: see [`Task::cancel_reason`].
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Why the cancellation token fired, once it has.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }

    /// Adds tokens, cost and calls to what the attempt reports; a sum past
    /// the largest counter stays at the largest (the attempt is reported all
    /// the same).
    pub fn add_usage(&self, u: pb::Usage) {
        let mut usage = self.usage.lock().unwrap();
        usage.input_tokens = usage.input_tokens.saturating_add(u.input_tokens);
        usage.output_tokens = usage.output_tokens.saturating_add(u.output_tokens);
        usage.cost_micro_usd = usage.cost_micro_usd.saturating_add(u.cost_micro_usd);
        usage.llm_calls = usage.llm_calls.saturating_add(u.llm_calls);
        usage.tool_calls = usage.tool_calls.saturating_add(u.tool_calls);
    }

    /// Records one LLM call of this attempt: an `EVENT_TYPE_LLM_CALL` event
    /// named after `model` in the flight recorder, and `usage` added to what
    /// the attempt reports with its result ([`Task::add_usage`]), which the
    /// workflow's budgets count. `usage.llm_calls` counts 1 when left 0;
    /// `took` (`None`: unknown) is the call's duration. The sidecar sets the
    /// event's attributes `gen_ai.request.model`, `gen_ai.operation.name`
    /// and the token counts; [`Task::report_llm_call_with`] adds the
    /// provider, the response model and attributes of your own.
    ///
    /// The event is sent at once with the unary ReportEvents, on either
    /// transport, bounded by the client's call timeout; the usage is counted
    /// even when it cannot be sent. Once the attempt is no longer held the
    /// sidecar refuses it: FAILED_PRECONDITION, reason `TASK_NOT_HELD`.
    pub async fn report_llm_call(
        &self,
        model: &str,
        usage: pb::Usage,
        took: Option<Duration>,
    ) -> Result<()> {
        self.report_llm_call_with(model, usage, took, LlmCallOptions::default())
            .await
    }

    /// As [`Task::report_llm_call`], with `options.provider` as attribute
    /// `gen_ai.system`, `options.response_model` as `gen_ai.response.model`
    /// and `options.attributes` (see [`Attributes`]).
    ///
    /// ```no_run
    /// # async fn demo(task: are_sdk::Task, usage: are_sdk::pb::Usage) -> are_sdk::Result<()> {
    /// use are_sdk::{Attributes, LlmCallOptions};
    /// let options = LlmCallOptions {
    ///     provider: "openai".into(),
    ///     response_model: "gpt-x-2025".into(),
    ///     attributes: Attributes::from([("temperature".into(), 0.5.into())]),
    /// };
    /// task.report_llm_call_with("gpt-x", usage, None, options).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A NaN or infinite attribute is INVALID_ARGUMENT (reason
    /// `INVALID_ARGUMENT`, field `attributes['key']`), raised before anything
    /// is sent or counted.
    pub async fn report_llm_call_with(
        &self,
        model: &str,
        mut usage: pb::Usage,
        took: Option<Duration>,
        options: LlmCallOptions,
    ) -> Result<()> {
        let attributes = attributes::to_proto(
            &[
                ("gen_ai.system", &options.provider),
                ("gen_ai.response.model", &options.response_model),
            ],
            options.attributes,
        )
        .map_err(|e| *e)?;
        if usage.llm_calls == 0 {
            usage.llm_calls = 1;
        }
        self.add_usage(usage);
        self.send_event(pb::EventType::LlmCall, model, Some(usage), took, attributes)
            .await
    }

    /// Records one tool call of this attempt: an `EVENT_TYPE_TOOL_CALL` event
    /// named `tool` in the flight recorder (the sidecar sets its attribute
    /// `gen_ai.tool.name`), and `tool_calls` 1 added to the attempt's usage.
    /// Otherwise as [`Task::report_llm_call`].
    pub async fn report_tool_call(&self, tool: &str, took: Option<Duration>) -> Result<()> {
        self.report_tool_call_with(tool, took, ToolCallOptions::default())
            .await
    }

    /// As [`Task::report_tool_call`], with `options.call_id` as attribute
    /// `gen_ai.tool.call.id` and `options.attributes`; a NaN or infinite
    /// attribute as for [`Task::report_llm_call_with`].
    pub async fn report_tool_call_with(
        &self,
        tool: &str,
        took: Option<Duration>,
        options: ToolCallOptions,
    ) -> Result<()> {
        let attributes = attributes::to_proto(
            &[("gen_ai.tool.call.id", &options.call_id)],
            options.attributes,
        )
        .map_err(|e| *e)?;
        let usage = pb::Usage {
            tool_calls: 1,
            ..Default::default()
        };
        self.add_usage(usage);
        self.send_event(pb::EventType::ToolCall, tool, Some(usage), took, attributes)
            .await
    }

    /// Records anything else worth seeing in the trace (a decision, a
    /// milestone): an `EVENT_TYPE_WORKER_CUSTOM` event named `name` with
    /// `attributes`, among the attempt's events and on its span in
    /// OpenTelemetry. Sent as [`Task::report_llm_call`]'s; a NaN or infinite
    /// attribute as for [`Task::report_llm_call_with`].
    ///
    /// ```no_run
    /// # async fn demo(task: are_sdk::Task) -> are_sdk::Result<()> {
    /// task.report_event("chose plan B", [("reason", "budget")]).await?;
    /// task.report_event("checkpoint", are_sdk::Attributes::new()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn report_event<K, V>(
        &self,
        name: &str,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()>
    where
        K: Into<String>,
        V: Into<AttributeValue>,
    {
        let attributes = attributes::to_proto(
            &[],
            attributes.into_iter().map(|(k, v)| (k.into(), v.into())),
        )
        .map_err(|e| *e)?;
        self.send_event(pb::EventType::WorkerCustom, name, None, None, attributes)
            .await
    }

    /// Sends one event of this attempt (ReportEvents).
    async fn send_event(
        &self,
        event_type: pb::EventType,
        name: &str,
        usage: Option<pb::Usage>,
        took: Option<Duration>,
        attributes: HashMap<String, pb::AttributeValue>,
    ) -> Result<()> {
        let event = pb::ReportedEvent {
            workflow_id: self.workflow_id.clone(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            event_type: event_type as i32,
            event_time: Some(prost_types::Timestamp::from(SystemTime::now())),
            name: name.to_string(),
            duration: took.filter(|d| !d.is_zero()).map(crate::time::to_proto),
            usage,
            attributes,
            ..Default::default()
        };
        let mut stub = self.client.raw().worker;
        let req = pb::ReportEventsRequest {
            events: vec![event],
        };
        self.client
            .unary("ReportEvents", stub.report_events(req))
            .await
            .map(|_| ())
    }

    /// Records progress details, sent with a heartbeat at once. Details
    /// over 1 MiB as JSON (the sidecar's bound, past which it refuses the
    /// heartbeat whole) are not sent: the heartbeat goes without them.
    pub fn record_heartbeat(&self, details: serde_json::Value) {
        *self.heartbeat.lock().unwrap() = Some(details);
        self.kick.notify_one();
    }

    /// A task of an assignment, before its blobs are read.
    fn of(a: pb::TaskAssignment, client: Client) -> Task {
        Task {
            workflow_id: a.workflow_id.clone(),
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            capability: a.capability.clone(),
            idempotency_key: a.idempotency_key.clone(),
            input: Vec::new(),
            dependencies: Vec::new(),
            assignment: a,
            cancel: CancellationToken::new(),
            reason: Arc::default(),
            usage: Arc::default(),
            heartbeat: Arc::default(),
            kick: Arc::default(),
            client,
        }
    }

    fn cancel_with(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, TaskError>> + Send>>;
type Handler = Arc<dyn Fn(Task) -> HandlerFuture + Send + Sync>;

/// How a [`Worker`] talks to the sidecar's WorkerService.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkerTransport {
    /// One bidirectional Connect stream per worker (the default): batched
    /// heartbeats and results, acknowledged per task, assignments pushed as
    /// slots free up, cancellations pushed at once; reconnected with jittered
    /// backoff when it breaks.
    #[default]
    Stream,
    /// PollTask long polls, CompleteTask / FailTask and one RecordHeartbeat
    /// loop per running attempt.
    Unary,
}

/// Options of a [`Worker`].
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The stream (default) or the unary path; handlers are the same.
    pub transport: WorkerTransport,
    /// Most handlers at once (default 16).
    pub concurrency: usize,
    /// Who this process is, for humans (default "pid N").
    pub identity: String,
    /// Free labels sent with the stream's registration (default none;
    /// at most 32, keys 1 to 128 characters of `[A-Za-z0-9._:/-]`, values at
    /// most 256 bytes: `run` returns the sidecar's INVALID_ARGUMENT, naming
    /// the field, for a bad one). The unary path has no field for them
    /// (PollTaskRequest carries none), so a unary worker sends none.
    pub labels: HashMap<String, String>,
    /// How the router shows this worker, its class (default none), sent as
    /// the stream registration's `agent_card`: agent_id, description or
    /// vector, cost per call, labels. Workers sending the same agent_id
    /// share one card whose load and availability follow them, so a task
    /// submitted with an intent goes to the cheapest class whose card
    /// matches. Its capabilities must be among the worker's (they default to
    /// them); an invalid card makes `run` return the sidecar's
    /// INVALID_ARGUMENT naming the field under `register.agent_card`. Without
    /// one the worker still appears, as a card named after it that costs
    /// nothing. Needs the stream transport: the unary path has no
    /// registration (PollTaskRequest carries no card), so a unary worker
    /// sends none.
    pub card: Option<AgentCard>,
    /// Deadline of each PollTask long poll on the unary path (default 10 s,
    /// at least 2 s). A
    /// stopping worker lets the poll in flight finish (a poll cancelled as a
    /// task is assigned would strand it until its lease ends), so this also
    /// bounds how long `run` takes to notice a shutdown.
    pub poll_timeout: Duration,
    /// How often a running attempt heartbeats on the unary path (default 1 s,
    /// at most a quarter of the task's heartbeat timeout); bounds how soon a
    /// cancellation is heard. The stream heartbeats at the interval the
    /// sidecar gives at registration and hears cancellations at once.
    pub heartbeat_interval: Duration,
    /// How long the handlers of held attempts may go on after shutdown
    /// (default 10 s); then their tokens fire with
    /// [`CancelReason::WorkerStopped`]. Handlers of attempts the sidecar
    /// already took back (cancelled, lost) are not waited for.
    pub shutdown_grace: Duration,
    /// Bound of each CompleteTask / FailTask / RecordHeartbeat, retries on
    /// UNAVAILABLE included, and on the stream of a registration and of the
    /// wait for a result's acknowledgement (default 30 s). Also how long
    /// handlers have to report once their tokens fired at the end of
    /// `shutdown_grace`: one still running after half of it is abandoned and
    /// its attempt reported failed as WORKER_LOST.
    pub report_timeout: Duration,
    /// Longest pause between reconnections of a broken stream (default 5 s);
    /// each pause is a full-jitter draw below a bound that doubles from
    /// 50 ms, and starts again from 50 ms only after a stream that lived
    /// 10 s. A refusal that carries the sidecar's retry hint (RetryInfo,
    /// such as RESOURCE_EXHAUSTED when it serves as many workers as it can)
    /// is waited out, whatever this bound.
    pub reconnect_max_delay: Duration,
}

impl WorkerOptions {
    /// The options within their bounds. Each duration bounds a wait (a
    /// deadline, a gRPC timeout), so it is at most 30 years, which an
    /// `Instant` and a grpc-timeout hold (`Duration::MAX` overflowed them).
    fn bounded(mut self) -> Self {
        self.concurrency = self.concurrency.clamp(1, 10_000);
        self.poll_timeout = capped(self.poll_timeout).max(Duration::from_secs(2));
        self.heartbeat_interval = capped(self.heartbeat_interval).max(Duration::from_millis(50));
        self.shutdown_grace = capped(self.shutdown_grace);
        self.report_timeout = capped(self.report_timeout);
        self.reconnect_max_delay = capped(self.reconnect_max_delay).max(Duration::from_millis(50));
        self
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 16,
            transport: WorkerTransport::default(),
            identity: format!("pid {}", std::process::id()),
            labels: HashMap::new(),
            card: None,
            poll_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            report_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(5),
        }
    }
}

/// A worker's counters.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Attempts reported completed.
    pub completed: AtomicI64,
    /// Attempts reported failed.
    pub failed: AtomicI64,
    /// Attempts the sidecar cancelled or took back.
    pub cancelled: AtomicI64,
    /// Worker streams registered (reconnections included).
    pub connects: AtomicI64,
}

/// Serves tasks of one or more capabilities: add handlers with
/// [`Worker::handle`], then [`Worker::run`] until a shutdown token fires.
pub struct Worker {
    client: Client,
    name: String,
    options: WorkerOptions,
    handlers: HashMap<String, Handler>,
    stats: Arc<WorkerStats>,
    worker_id: Arc<Mutex<String>>,
}

const MAX_POLL_TASKS: usize = 100;
/// How long past a poll's deadline its answer is still awaited (see `poll`).
const POLL_ANSWER_MARGIN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Held,
    CancelRequested,
    Lost,
}

impl Worker {
    /// A worker named `name` (shared by its replicas).
    pub fn new(client: &Client, name: &str, options: WorkerOptions) -> Self {
        Worker {
            client: client.clone(),
            name: name.to_string(),
            options: options.bounded(),
            handlers: HashMap::new(),
            stats: Arc::default(),
            worker_id: Arc::default(),
        }
    }

    /// Sets the handler of a capability. Its JSON result is the task's output
    /// (`null`: no output); an error fails the attempt (retried by policy).
    pub fn handle<F, Fut>(mut self, capability: &str, handler: F) -> Self
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<serde_json::Value, TaskError>> + Send + 'static,
    {
        let h: Handler = Arc::new(move |t| Box::pin(handler(t)));
        self.handlers.insert(capability.to_string(), h);
        self
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// The id the sidecar gave this worker ("" before the first poll or
    /// registration).
    pub fn worker_id(&self) -> String {
        self.worker_id.lock().unwrap().clone()
    }

    /// Serves tasks until `shutdown` fires, then stops gracefully: no new work
    /// (on the stream a drain is sent; on the unary path the poll in flight
    /// finishes, within `poll_timeout`), the handlers of held attempts get
    /// `shutdown_grace`, then their tokens fire and their failures are
    /// reported as WORKER_LOST (a handler still running half the
    /// `report_timeout` later is abandoned, its attempt reported so all the
    /// same); on the stream the results' acknowledgements are awaited
    /// before it is closed. Handlers of attempts the sidecar took back
    /// already (cancelled, lost) are not waited for: their tokens have
    /// fired, and they are dropped when `run` returns. Returns an error at
    /// once when the sidecar refuses the worker for a reason retrying cannot
    /// fix (a bad name or capability, authentication, UNIMPLEMENTED).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        if self.handlers.is_empty() {
            return Err(Error::local(
                Code::InvalidArgument,
                "NO_HANDLER",
                "the worker has no handler",
            ));
        }
        let stopped = CancellationToken::new();
        let holds = Holds::new();
        let mut running = JoinSet::new();
        let result = match self.options.transport {
            WorkerTransport::Unary => self.poll(&shutdown, &stopped, &mut running, &holds).await,
            WorkerTransport::Stream => {
                self.serve_stream(&shutdown, &stopped, &mut running, &holds)
                    .await
            }
        };
        // The stream drained its attempts before it closed (and a closed
        // stream holds none); on the unary path they drain here.
        let drained = tokio::time::timeout(self.options.shutdown_grace, holds.released()).await;
        if drained.is_err() {
            stopped.cancel();
            let _ = tokio::time::timeout(self.options.report_timeout, holds.released()).await;
        }
        stopped.cancel();
        // What still runs belongs to attempts already given up.
        running.shutdown().await;
        result
    }

    async fn poll(
        &self,
        shutdown: &CancellationToken,
        stopped: &CancellationToken,
        running: &mut JoinSet<()>,
        holds: &Holds,
    ) -> Result<()> {
        let slots = Arc::new(Semaphore::new(self.options.concurrency));
        let mut capabilities: Vec<String> = self.handlers.keys().cloned().collect();
        capabilities.sort();
        let mut delay = Duration::from_millis(50);
        loop {
            // Reap finished attempts so the set stays bounded.
            while running.try_join_next().is_some() {}
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < MAX_POLL_TASKS {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let mut stub = self.client.raw().worker;
            let mut req = tonic::Request::new(pb::PollTaskRequest {
                worker_name: self.name.clone(),
                capabilities: capabilities.clone(),
                max_tasks: permits.len() as i32,
                identity: self.options.identity.clone(),
            });
            req.set_timeout(self.options.poll_timeout);
            // Not cancelled by shutdown (see poll_timeout), but bounded. The
            // sidecar answers a quarter of the time (1 to 5 s) before the
            // deadline it was sent; the margin past that deadline is wide,
            // because an answer this side gives up on after the sidecar sent
            // it is lost to both (its tasks wait out their heartbeat or
            // start-to-close timeout) on a machine too loaded to keep time.
            let polled = tokio::time::timeout(
                self.options.poll_timeout + POLL_ANSWER_MARGIN,
                stub.poll_task(req),
            )
            .await;
            let resp = match polled {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    let e = Error::from(status);
                    if fatal(e.code) {
                        return Err(e);
                    }
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(delay)) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(_) => continue,
            };
            delay = Duration::from_millis(50);
            if !resp.worker_id.is_empty() {
                *self.worker_id.lock().unwrap() = resp.worker_id.clone();
            }
            for assignment in resp.assignments {
                let Some(permit) = permits.pop() else { break };
                let attempt = Attempt {
                    client: self.client.clone(),
                    options: self.options.clone(),
                    handler: self.handlers.get(&assignment.capability).cloned(),
                    stats: self.stats.clone(),
                    stopped: stopped.clone(),
                };
                let hold = holds.hold();
                running.spawn(async move {
                    attempt.run(assignment, hold).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Aborts a task when dropped: a handler's when its attempt is, the helper
/// tasks of an attempt or a stream when they end.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts the attempts a worker holds: assigned to it, and neither reported
/// nor taken back by the sidecar. A graceful stop waits for these alone, not
/// for a handler that goes on after its attempt was cancelled or lost.
struct Holds(Arc<watch::Sender<usize>>);

/// One held attempt; dropping it releases the attempt.
struct Hold(Arc<watch::Sender<usize>>);

impl Holds {
    fn new() -> Self {
        Holds(Arc::new(watch::Sender::new(0)))
    }

    /// Counts one more held attempt, until the returned guard is dropped.
    fn hold(&self) -> Hold {
        self.0.send_modify(|n| *n += 1);
        Hold(self.0.clone())
    }

    /// How many attempts are held.
    fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Returns once no attempt is held.
    async fn released(&self) {
        let mut held = self.0.subscribe();
        let _ = held.wait_for(|n| *n == 0).await;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

struct Attempt {
    client: Client,
    options: WorkerOptions,
    handler: Option<Handler>,
    stats: Arc<WorkerStats>,
    stopped: CancellationToken,
}

impl Attempt {
    /// Runs one attempt on the unary path and reports how it ended, within
    /// `report_timeout`: its result, or a CANCELLED failure when the
    /// sidecar asks, or nothing when the sidecar took it back. `hold` is
    /// released once that is done, even if the handler goes on (its slot
    /// stays taken until it returns).
    async fn run(self, a: pb::TaskAssignment, hold: Hold) {
        let task = Task::of(a, self.client.clone());
        let done = CancellationToken::new();
        // The heartbeats end with the attempt, however it ends.
        let mut beats = AbortOnDrop(tokio::spawn(self.heartbeat(task.clone(), done.clone())));
        let call = self.call(task.clone());
        tokio::pin!(call);
        let (outcome, end) = tokio::select! {
            outcome = &mut call => {
                done.cancel();
                (Some(outcome), (&mut beats.0).await.unwrap_or(End::Held))
            }
            // The sidecar ended the attempt while its handler runs.
            end = &mut beats.0 => (None, end.unwrap_or(End::Lost)),
        };
        let released = outcome.is_none();
        let reporting = async {
            match (end, outcome) {
                // (Held without an outcome cannot be: the heartbeats end
                // held only once the call has.)
                (End::Lost, _) | (End::Held, None) => {
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                (End::CancelRequested, _) => {
                    self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    let failure = pb::Failure {
                        message: "cancelled: the sidecar asked the worker to stop".into(),
                        r#type: "Cancelled".into(),
                        kind: pb::FailureKind::Cancelled as i32,
                        ..Default::default()
                    };
                    let _ = self.fail(&task, failure, None).await;
                }
                (End::Held, Some(Ok(value))) => self.complete(&task, value).await,
                (End::Held, Some(Err(e))) => {
                    if self.fail(&task, failure_of(&task, &e), e.retry_after).await {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(self.options.report_timeout, reporting).await;
        drop(hold);
        if released {
            // Taken back while the handler runs: its token has fired; it
            // keeps its slot until it returns (or `run` drops it).
            let _ = call.await;
        }
    }

    /// Fetches blob inputs, runs the handler in its own task (a panic, even
    /// one before the handler returns its future, is a failure of type
    /// "panic"), and fires the token at the deadline and when the worker
    /// stops; a handler still running half the `report_timeout` after the
    /// worker's stop is abandoned (aborted) and its attempt failed as
    /// WORKER_LOST.
    async fn call(&self, mut task: Task) -> Result<serde_json::Value, TaskError> {
        let Some(handler) = self.handler.clone() else {
            return Err(TaskError::new(
                "NoHandler",
                format!("no handler for {:?}", task.capability),
            )
            .non_retryable());
        };
        let a = &task.assignment;
        let blob = |e: Error| {
            TaskError::new(
                "BlobReadError",
                format!("cannot read the task's blobs: {e}"),
            )
        };
        task.input = self
            .client
            .payload_bytes(a.input.as_ref())
            .await
            .map_err(blob)?;
        let mut deps = Vec::new();
        for d in &a.dependencies {
            deps.push(Dependency {
                task_id: d.task_id.clone(),
                state: d.state,
                output: self
                    .client
                    .payload_bytes(d.output.as_ref())
                    .await
                    .map_err(blob)?,
                failure: d.failure.clone(),
            });
        }
        task.dependencies = deps;
        let deadline = a.deadline_time.as_ref().map(|t| {
            let at = SystemTime::UNIX_EPOCH
                + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            at.duration_since(SystemTime::now()).unwrap_or_default()
        });
        let watcher = task.clone();
        // The handler is called in its task, so that a panic before it
        // returns its future is caught like one after.
        let mut join = AbortOnDrop(tokio::spawn(async move { handler(task).await }));
        let at_deadline = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(86_400 * 365)));
        let result = tokio::select! {
            r = &mut join.0 => r,
            _ = at_deadline, if deadline.is_some() => {
                watcher.cancel_with(CancelReason::DeadlineExceeded);
                (&mut join.0).await
            }
            _ = self.stopped.cancelled() => {
                watcher.cancel_with(CancelReason::WorkerStopped);
                let patience = self.options.report_timeout / 2;
                match tokio::time::timeout(patience, &mut join.0).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(TaskError::new(
                            "WorkerStopped",
                            format!(
                                "the handler was abandoned: it did not return within {patience:?} \
                                 of the worker's stop"
                            ),
                        ))
                    }
                }
            }
        };
        match result {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let message = match p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                {
                    Some(msg) => format!("handler panicked: {msg}"),
                    None => "handler panicked (with a payload that is not a string)".into(),
                };
                Err(TaskError::new("panic", message))
            }
            Err(e) => Err(TaskError::new("Aborted", e.to_string())),
        }
    }

    /// The completion of a handler's value: its output inline up to 4 MiB,
    /// else stored as a blob; the failure to report when the blob cannot be
    /// stored.
    async fn completion_of(
        &self,
        task: &Task,
        value: serde_json::Value,
    ) -> Result<pb::TaskCompletion, pb::Failure> {
        let output = if value.is_null() {
            None
        } else {
            let bytes = crate::json::to_vec(&value);
            match self
                .client
                .inline_or_blob(bytes, JSON_CONTENT_TYPE, &task.workflow_id)
                .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    return Err(pb::Failure {
                        message: format!("cannot store the output: {e}"),
                        r#type: "BlobWriteError".into(),
                        kind: pb::FailureKind::Application as i32,
                        ..Default::default()
                    })
                }
            }
        };
        let usage = *task.usage.lock().unwrap();
        Ok(pb::TaskCompletion {
            workflow_id: task.workflow_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            output,
            usage: Some(usage),
            state_patch: None,
        })
    }

    async fn complete(&self, task: &Task, value: serde_json::Value) {
        let completion = match self.completion_of(task, value).await {
            Ok(c) => c,
            Err(failure) => {
                if self.fail(task, failure, None).await {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        let client = self.client.clone();
        let sent = retry_unavailable(|| {
            let mut stub = client.raw().worker;
            let req = pb::CompleteTaskRequest {
                completion: Some(completion.clone()),
            };
            async move { stub.complete_task(req).await.map(|_| ()) }
        })
        .await;
        match sent {
            Ok(()) => {
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
            }
            // The completion itself was refused, which changed nothing: the
            // attempt is still held, so report it failed instead, once.
            Err(e) if refused_as_invalid(&e) => {
                let report = completion_refused(task, completion.usage, &e.reason, &e.message);
                if self.send_failure(report).await {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {}
        }
    }

    /// Reports a failure; true when the sidecar accepted it.
    async fn fail(&self, task: &Task, failure: pb::Failure, retry_after: Option<Duration>) -> bool {
        self.send_failure(failure_report(task, failure, retry_after))
            .await
    }

    /// Sends a failure report with FailTask; true when the sidecar accepted it.
    async fn send_failure(&self, report: pb::TaskFailure) -> bool {
        let client = self.client.clone();
        retry_unavailable(|| {
            let mut stub = client.raw().worker;
            let req = pb::FailTaskRequest {
                failure: Some(report.clone()),
            };
            async move { stub.fail_task(req).await.map(|_| ()) }
        })
        .await
        .is_ok()
    }

    /// Heartbeats until `done`; fires the task's token and says how the
    /// sidecar ended the attempt when it does.
    fn heartbeat(
        &self,
        task: Task,
        done: CancellationToken,
    ) -> impl Future<Output = End> + Send + 'static {
        let client = self.client.clone();
        let mut interval = self.options.heartbeat_interval;
        if let Some(ht) = &task.assignment.heartbeat_timeout {
            let ht = Duration::new(ht.seconds.max(0) as u64, ht.nanos.max(0) as u32);
            if !ht.is_zero() {
                interval = interval.min(ht / 4);
            }
        }
        let interval = interval.max(Duration::from_millis(50));
        async move {
            loop {
                tokio::select! {
                    _ = done.cancelled() => return End::Held,
                    _ = tokio::time::sleep(interval) => {}
                    _ = task.kick.notified() => {}
                }
                let details = task.heartbeat.lock().unwrap().take();
                let mut stub = client.raw().worker;
                let mut req = tonic::Request::new(pb::RecordHeartbeatRequest {
                    heartbeat: Some(pb::TaskHeartbeat {
                        workflow_id: task.workflow_id.clone(),
                        task_id: task.task_id.clone(),
                        attempt: task.attempt,
                        details: details.as_ref().and_then(heartbeat_details),
                    }),
                });
                let bound = interval.max(Duration::from_secs(5));
                req.set_timeout(bound);
                let answer = tokio::select! {
                    _ = done.cancelled() => return End::Held,
                    a = tokio::time::timeout(bound, stub.record_heartbeat(req)) => a,
                };
                match answer {
                    Ok(Ok(r)) if r.get_ref().cancel_requested => {
                        task.cancel_with(CancelReason::CancelRequested);
                        return End::CancelRequested;
                    }
                    Ok(Err(status)) => {
                        let e = Error::from(status);
                        if reason_gone(&e.reason) {
                            task.cancel_with(CancelReason::LeaseLost);
                            return End::Lost;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The sidecar's bound on a heartbeat's details (worker_service.proto).
const MAX_HEARTBEAT_DETAILS: usize = 1024 * 1024;

/// The details a heartbeat carries: `details` as JSON, or none when that is
/// over the sidecar's 1 MiB bound. The sidecar refuses such a heartbeat
/// whole, so it would not extend the lease; on the stream the refusal was
/// also taken for a lost lease, and the attempt given up (its token fired,
/// its result never reported) while the sidecar still held it.
fn heartbeat_details(details: &serde_json::Value) -> Option<pb::Payload> {
    let data = crate::json::to_vec(details);
    (data.len() <= MAX_HEARTBEAT_DETAILS).then(|| pb::Payload {
        content: Some(pb::payload::Content::Data(data)),
        content_type: JSON_CONTENT_TYPE.to_string(),
    })
}

/// The failure a handler's error reports, its causes nested below it
/// ([`with_causes`]): WORKER_LOST when the worker's stop cut the handler
/// short, else an application failure.
fn failure_of(task: &Task, e: &TaskError) -> pb::Failure {
    let mut failure = pb::Failure {
        message: head(&e.message, MAX_MESSAGE_BYTES).to_string(),
        r#type: e.error_type.clone(),
        non_retryable: e.non_retryable,
        details: e.details.as_ref().map(crate::workflow::json_payload),
        kind: pb::FailureKind::Application as i32,
        ..Default::default()
    };
    if task.cancel_reason() == Some(CancelReason::WorkerStopped) {
        failure.kind = pb::FailureKind::WorkerLost as i32;
        failure.r#type = "WorkerStopped".into();
    }
    with_causes(failure, e)
}

/// `failure` (of `e`) with `e`'s causes nested below it, fitted to the
/// sidecar's bounds ([`fit_chain`]): the causes past the eighth are counted
/// as dropped, with the error's own `causes_dropped`.
fn with_causes(failure: pb::Failure, e: &TaskError) -> pb::Failure {
    let mut levels = vec![failure];
    levels.extend(
        e.causes
            .iter()
            .take(MAX_FAILURE_CAUSES)
            .map(|c| pb::Failure {
                message: head(&c.message, MAX_MESSAGE_BYTES).to_string(),
                r#type: c.error_type.clone(),
                kind: pb::FailureKind::Application as i32,
                ..Default::default()
            }),
    );
    let too_deep = e
        .causes
        .len()
        .saturating_sub(MAX_FAILURE_CAUSES)
        .saturating_add(e.causes_dropped as usize);
    fit_chain(levels, too_deep)
}

/// The sidecar's bounds on a Failure (common.proto), beyond which it refuses
/// the report and the attempt stays RUNNING: the type's characters, the
/// inline details' bytes (also those of a failure with all its causes), the
/// details' content type's characters, and the causes' depth.
const MAX_FAILURE_TYPE: usize = 256;
const MAX_FAILURE_DETAILS: usize = 1024 * 1024;
const MAX_DETAILS_CONTENT_TYPE: usize = 128;
const MAX_FAILURE_CAUSES: usize = 8;

/// Fits one Failure, not its causes, to the sidecar's bounds: the type cut
/// to 256 characters; details by reference, over 1 MiB or with a content
/// type over 128 characters dropped. Returns the note of what was dropped,
/// for the message (the sidecar cuts a long message or stack trace, never
/// refusing it).
fn fit_one(failure: &mut pb::Failure) -> Option<String> {
    if failure.r#type.chars().count() > MAX_FAILURE_TYPE {
        failure.r#type = failure.r#type.chars().take(MAX_FAILURE_TYPE).collect();
    }
    let details = failure.details.as_ref()?;
    let why = match &details.content {
        Some(pb::payload::Content::Blob(blob)) => Some(format!(
            "details by reference ({} bytes) dropped: inline only",
            blob.size_bytes
        )),
        Some(pb::payload::Content::Data(data)) if data.len() > MAX_FAILURE_DETAILS => Some(
            format!("details of {} bytes dropped: over 1 MiB", data.len()),
        ),
        _ => {
            let chars = details.content_type.chars().count();
            (chars > MAX_DETAILS_CONTENT_TYPE)
                .then(|| format!("details dropped: content type of {chars} characters, over 128"))
        }
    };
    if why.is_some() {
        failure.details = None;
    }
    why.map(|why| format!("({why})"))
}

/// Fits a Failure and its causes to the sidecar's bounds (see [`fit_chain`]).
fn fit_failure(failure: pb::Failure) -> pb::Failure {
    let mut levels = Vec::new();
    let mut too_deep = 0;
    let mut next = Some(failure);
    while let Some(mut f) = next {
        next = f.cause.take().map(|c| *c);
        if levels.len() <= MAX_FAILURE_CAUSES {
            levels.push(f);
        } else {
            too_deep += 1; // a ninth cause and below
        }
    }
    fit_chain(levels, too_deep)
}

/// The levels of a failure (outermost first, their own causes ignored),
/// `too_deep` causes below them already dropped, linked into one Failure
/// fitted to the sidecar's bounds: each level as [`fit_one`], its message
/// cut to the 32 KiB the sidecar keeps, and the deepest causes dropped while
/// the whole is over 1 MiB. What was dropped is noted at the end of the
/// level's message (dropped causes: the deepest kept one's), in the
/// sidecar's words, the message cut so that the notes are kept.
fn fit_chain(mut levels: Vec<pb::Failure>, too_deep: usize) -> pb::Failure {
    let mut messages = Vec::with_capacity(levels.len());
    let mut notes = Vec::with_capacity(levels.len());
    for level in &mut levels {
        level.cause = None;
        notes.push(fit_one(level).into_iter().collect::<Vec<_>>());
        messages.push(std::mem::take(&mut level.message));
    }
    let mut too_big = 0;
    loop {
        let deepest = levels.len() - 1;
        for (depth, level) in levels.iter_mut().enumerate() {
            let mut note = notes[depth].clone();
            if depth == deepest && too_deep + too_big > 0 {
                note.push(causes_note(too_deep, too_big));
            }
            level.message = noted(&messages[depth], &note);
        }
        if levels.len() == 1 || chain_len(&levels) <= MAX_FAILURE_DETAILS {
            break;
        }
        levels.pop();
        too_big += 1;
    }
    let mut levels = levels.into_iter().rev();
    let mut whole = levels.next().expect("a failure has one level at least");
    for mut above in levels {
        above.cause = Some(Box::new(whole));
        whole = above;
    }
    whole
}

/// How many causes below the deepest kept one were dropped, and why, as the
/// sidecar says it (`_causes_note`); "or more" when the walk of the chain
/// stopped counting.
fn causes_note(too_deep: usize, too_big: usize) -> String {
    let mut why = Vec::new();
    if too_deep > 0 {
        why.push(format!("causes nest at most {MAX_FAILURE_CAUSES} deep"));
    }
    if too_big > 0 {
        why.push("a failure with its causes is at most 1 MiB".to_string());
    }
    let count = too_deep + too_big;
    let more = too_deep >= causes::MAX_COUNTED_CAUSES as usize;
    format!(
        "[{count}{} deeper cause{} dropped: {}]",
        if more { " or more" } else { "" },
        if count > 1 || more { "s" } else { "" },
        why.join("; ")
    )
}

/// `message` with `notes` appended, the message cut (whole characters) so
/// that both fit in the 32 KiB of UTF-8 the sidecar keeps: the notes are
/// never the part cut off.
fn noted(message: &str, notes: &[String]) -> String {
    let suffix = notes.join(" ");
    if suffix.is_empty() {
        return head(message, MAX_MESSAGE_BYTES).to_string();
    }
    if message.is_empty() {
        return suffix;
    }
    let room = MAX_MESSAGE_BYTES.saturating_sub(suffix.len() + 1);
    format!("{} {suffix}", head(message, room))
}

/// The first `bytes` of `s` at most, in whole characters.
fn head(s: &str, bytes: usize) -> &str {
    if s.len() <= bytes {
        return s;
    }
    let mut end = bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The encoded size of `levels` (none with a cause) nested each in the one
/// above as its cause.
fn chain_len(levels: &[pb::Failure]) -> usize {
    use prost::Message as _;
    levels
        .iter()
        .rev()
        .fold(None, |below: Option<usize>, level| {
            // field 5's tag, the length, the cause
            let cause = below.map_or(0, |b| 1 + prost::encoding::encoded_len_varint(b as u64) + b);
            Some(level.encoded_len() + cause)
        })
        .unwrap_or(0)
}

/// A failure report fitted to the sidecar's bounds, so that it is never
/// refused for its shape: its failure as [`fit_failure`], any negative usage
/// counter as 0, a retry delay past the largest Duration as the largest.
fn fit_report(mut report: pb::TaskFailure) -> pb::TaskFailure {
    report.failure = report.failure.take().map(fit_failure);
    if let Some(u) = report.usage.as_mut() {
        u.input_tokens = u.input_tokens.max(0);
        u.output_tokens = u.output_tokens.max(0);
        u.cost_micro_usd = u.cost_micro_usd.max(0);
        u.llm_calls = u.llm_calls.max(0);
        u.tool_calls = u.tool_calls.max(0);
    }
    if let Some(d) = report.retry_after.as_mut() {
        if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
            *d = prost_types::Duration::default();
        } else if d.seconds > MAX_PROTO_SECONDS {
            *d = prost_types::Duration {
                seconds: MAX_PROTO_SECONDS,
                nanos: 0,
            };
        }
    }
    report
}

/// The report of an attempt's failure, with the usage it spent, fitted to
/// the sidecar's bounds ([`fit_report`]).
fn failure_report(
    task: &Task,
    failure: pb::Failure,
    retry_after: Option<Duration>,
) -> pb::TaskFailure {
    let usage = *task.usage.lock().unwrap();
    fit_report(pb::TaskFailure {
        workflow_id: task.workflow_id.clone(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        failure: Some(failure),
        usage: Some(usage),
        retry_after: retry_after.map(crate::time::to_proto),
    })
}

/// The failure type an attempt is reported failed with when the sidecar
/// refuses its completion as invalid (for example a negative usage counter):
/// such a refusal changes nothing and the attempt stays held, so the worker
/// reports this failure instead, quoting the refusal (which names the
/// field), retried by the task's retry policy.
pub const COMPLETION_REFUSED: &str = "CompletionRefused";

/// Whether a refusal's reason (an `ErrorReason` name without its prefix)
/// means the attempt is no longer this worker's.
fn reason_gone(reason: &str) -> bool {
    matches!(
        reason,
        "TASK_NOT_HELD" | "TASK_ALREADY_COMPLETED" | "TASK_NOT_FOUND" | "WORKFLOW_NOT_FOUND"
    )
}

/// Whether a CompleteTask error refused the completion itself (a bad field,
/// a patch that does not apply, a missing blob), which leaves the attempt
/// held; not a lost lease or a failed call.
fn refused_as_invalid(e: &Error) -> bool {
    !e.reason.is_empty()
        && !reason_gone(&e.reason)
        && matches!(
            e.code,
            Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound
        )
}

/// The failure reported in place of a refused completion. It carries the
/// completion's usage, so budgets still count it, with any negative counter
/// (itself a reason for the refusal) as 0, so that it is not refused too.
fn completion_refused(
    task: &Task,
    usage: Option<pb::Usage>,
    reason: &str,
    message: &str,
) -> pb::TaskFailure {
    let reason = reason.strip_prefix("ERROR_REASON_").unwrap_or(reason);
    let message = if message.is_empty() {
        "no message"
    } else {
        message
    };
    fit_report(pb::TaskFailure {
        workflow_id: task.workflow_id.clone(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        failure: Some(pb::Failure {
            message: format!("the sidecar refused the completion ({reason}): {message}")
                .chars()
                .take(32 * 1024)
                .collect(),
            r#type: COMPLETION_REFUSED.into(),
            kind: pb::FailureKind::Application as i32,
            ..Default::default()
        }),
        usage: usage.map(|u| pb::Usage {
            input_tokens: u.input_tokens.max(0),
            output_tokens: u.output_tokens.max(0),
            cost_micro_usd: u.cost_micro_usd.max(0),
            llm_calls: u.llm_calls.max(0),
            tool_calls: u.tool_calls.max(0),
        }),
        retry_after: None,
    })
}

/// Whether a refusal is final: retrying cannot fix it.
fn fatal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented
    )
}

/// Calls `f` until it succeeds or fails otherwise than UNAVAILABLE (a
/// connection that broke during the call included, see
/// [`Error::from_status`]); the caller bounds the whole.
async fn retry_unavailable<F, Fut>(mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        match f().await.map_err(Error::from) {
            Ok(()) => return Ok(()),
            Err(e) if e.code == Code::Unavailable => {
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use std::error::Error as StdError;

    /// An error with a message and, maybe, a source.
    #[derive(Debug)]
    struct Layer {
        message: String,
        source: Option<Box<dyn StdError + Send + Sync>>,
    }

    impl Layer {
        fn new(message: &str, source: impl Into<Option<Box<dyn StdError + Send + Sync>>>) -> Self {
            Layer {
                message: message.into(),
                source: source.into(),
            }
        }
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.source.as_deref().map(|e| e as _)
        }
    }

    /// A chain of `depth` errors, "level {depth}" outermost.
    fn deep(depth: usize) -> Layer {
        let mut e = Layer::new("level 1", None);
        for level in 2..=depth {
            e = Layer::new(&format!("level {level}"), Some(Box::new(e) as _));
        }
        e
    }

    /// An error whose Display, Debug or source() panics, or that is its own
    /// source (safe Rust allows it: a chain that never ends).
    #[derive(Clone, Copy, PartialEq)]
    enum Odd {
        Unreadable,
        Sourceless,
        SelfCaused,
    }

    impl fmt::Debug for Odd {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Odd::Unreadable => panic!("no Debug for you"),
                _ => f.write_str("Odd"),
            }
        }
    }

    impl fmt::Display for Odd {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Odd::Unreadable => panic!("no Display for you"),
                Odd::Sourceless => f.write_str("sourceless"),
                Odd::SelfCaused => f.write_str("me again"),
            }
        }
    }

    impl StdError for Odd {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            match self {
                Odd::Unreadable => Some(&std::fmt::Error),
                Odd::Sourceless => panic!("no source for you"),
                Odd::SelfCaused => Some(&Odd::SelfCaused),
            }
        }
    }

    fn chain(f: &pb::Failure) -> Vec<String> {
        std::iter::once(f)
            .chain(f.causes())
            .map(|f| format!("{}: {}", f.r#type, f.message))
            .collect()
    }

    fn reported(e: &TaskError) -> pb::Failure {
        let top = pb::Failure {
            message: e.message.clone(),
            r#type: e.error_type.clone(),
            details: e.details.as_ref().map(crate::workflow::json_payload),
            ..Default::default()
        };
        fit_failure(with_causes(top, e))
    }

    #[test]
    fn an_errors_sources_are_its_causes() {
        let mut sdk = Error::local(Code::ResourceExhausted, "POOL_QUEUE_FULL", "pool full")
            .with_source(std::io::Error::other("disk full"));
        sdk.retry_delay = Some(Duration::from_secs(3));
        let e = TaskError::from(Layer::new("the call failed", Some(Box::new(sdk) as _)));
        assert_eq!(e.error_type, std::any::type_name::<Layer>());
        assert_eq!(e.message, "the call failed");
        assert_eq!(
            &*e.causes,
            [
                TaskCause::new(
                    "are_sdk::error::Error",
                    "ResourceExhausted: pool full [POOL_QUEUE_FULL]"
                ),
                TaskCause::new("std::io::error::Error", "disk full"),
            ]
        );
        assert_eq!(e.causes_dropped, 0);
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
        let f = reported(&e);
        assert_eq!(f.causes().count(), 2);
        assert!(f
            .causes()
            .all(|c| c.kind == pb::FailureKind::Application as i32));
    }

    #[test]
    fn an_unreadable_or_endless_chain_still_ends() {
        let e = TaskError::from(Layer::new("outer", Some(Box::new(Odd::Unreadable) as _)));
        assert_eq!(
            &*e.causes,
            [
                TaskCause::new("", "(its message could not be read: its Display panicked)"),
                TaskCause::new(
                    "core::fmt::Error",
                    "an error occurred when formatting an argument"
                ),
            ]
        );
        let e = TaskError::from(Odd::Unreadable);
        assert!(
            e.message
                .ends_with("Odd (its message could not be read: its Display panicked)"),
            "{}",
            e.message
        );
        let e = TaskError::from(Layer::new("outer", Some(Box::new(Odd::Sourceless) as _)));
        assert_eq!(&*e.causes, [TaskCause::new("Odd", "sourceless")]);
        let e = TaskError::from(Odd::SelfCaused);
        assert_eq!(e.causes.len(), 8);
        assert_eq!(e.causes_dropped, 10_000);
        let f = reported(&e);
        let levels = chain(&f);
        assert_eq!(levels.len(), 9, "{levels:?}");
        assert_eq!(
            levels[8],
            "Odd: me again [10000 or more deeper causes dropped: causes nest at most 8 deep]"
        );
    }

    #[test]
    fn a_long_display_is_read_no_further_than_the_sidecar_keeps() {
        let long = format!("{}é", "x".repeat(MAX_MESSAGE_BYTES - 1));
        let e = TaskError::from(Layer::new(
            "outer",
            Some(Box::new(Layer::new(&long, None)) as _),
        ));
        assert_eq!(e.causes[0].message, "x".repeat(MAX_MESSAGE_BYTES - 1));
    }

    #[test]
    fn from_dyn_and_caused_by_read_the_chain_too() {
        let boxed: Box<dyn StdError + Send + Sync> =
            Box::new(Layer::new("boxed", Some(Box::new(std::fmt::Error) as _)));
        let e = TaskError::from_dyn(&*boxed);
        assert_eq!(
            (e.error_type.as_str(), e.message.as_str()),
            ("Layer", "boxed")
        );
        assert_eq!(e.causes.len(), 1);
        let e = TaskError::new("RateLimited", "slow down")
            .non_retryable()
            .caused_by(&deep(2));
        assert_eq!(
            chain(&reported(&e)),
            ["RateLimited: slow down", "Layer: level 2", "Layer: level 1"]
        );
        assert!(e.non_retryable);
    }

    #[test]
    fn a_deep_chain_is_cut_to_8_causes_saying_so() {
        let e = TaskError::from(deep(50));
        assert_eq!((e.causes.len(), e.causes_dropped), (8, 41));
        let levels = chain(&reported(&e));
        assert_eq!(levels.len(), 9);
        assert_eq!(levels[1], "Layer: level 49");
        assert_eq!(
            levels[8],
            "Layer: level 42 [41 deeper causes dropped: causes nest at most 8 deep]"
        );
        // Causes set by hand past the eighth count as dropped too.
        let e = TaskError {
            causes: (0..10)
                .map(|i| TaskCause::new("C", format!("{i}")))
                .collect(),
            causes_dropped: 1,
            ..TaskError::new("T", "top")
        };
        let levels = chain(&reported(&e));
        assert_eq!(
            levels[8],
            "C: 7 [3 deeper causes dropped: causes nest at most 8 deep]"
        );
    }

    #[test]
    fn a_chain_over_1_mib_loses_its_deepest_causes_saying_so() {
        let causes = (0..10).map(|i| TaskCause::new("C", format!("{i}{}", "a".repeat(30_000))));
        let e = TaskError {
            details: Some(serde_json::json!("x".repeat(1_000_000))),
            causes: causes.collect(),
            ..TaskError::new("Big", "big")
        };
        let f = reported(&e);
        assert!(f.encoded_len() <= MAX_FAILURE_DETAILS);
        let levels = chain(&f);
        assert_eq!(
            levels.len(),
            2,
            "one 30 KB cause fits beside 1 MB of details"
        );
        assert!(levels[1].ends_with(
            " [9 deeper causes dropped: causes nest at most 8 deep; \
             a failure with its causes is at most 1 MiB]"
        ));
        assert!(levels[1].starts_with("C: 0aaa"));
        // A failure alone over 1 MiB has no bound as a whole: its causes go.
        let e = TaskError {
            details: Some(serde_json::json!("x".repeat(1_040_000))),
            causes: vec![TaskCause::new("C", "c".repeat(10_000))].into(),
            ..TaskError::new("Big", "big")
        };
        assert_eq!(
            chain(&reported(&e)),
            ["Big: big [1 deeper cause dropped: a failure with its causes is at most 1 MiB]"]
        );
    }

    #[test]
    fn notes_are_kept_within_the_32_kib_the_sidecar_keeps() {
        let e = TaskError {
            causes: vec![TaskCause::new("C", "é".repeat(MAX_MESSAGE_BYTES))].into(),
            causes_dropped: 3,
            details: Some(serde_json::json!("x".repeat(MAX_FAILURE_DETAILS))),
            ..TaskError::new("T", "ü".repeat(MAX_MESSAGE_BYTES))
        };
        let f = reported(&e);
        assert!(f.message.len() <= MAX_MESSAGE_BYTES);
        assert!(f
            .message
            .ends_with("ü (details of 1048578 bytes dropped: over 1 MiB)"));
        let cause = f.cause.as_deref().unwrap();
        assert!(cause.message.len() <= MAX_MESSAGE_BYTES);
        assert!(cause
            .message
            .ends_with("é [3 deeper causes dropped: causes nest at most 8 deep]"));
    }

    #[test]
    fn fitting_twice_changes_nothing_and_sizes_are_reckoned_exactly() {
        let e = TaskError {
            details: Some(serde_json::json!("x".repeat(1_000_000))),
            ..TaskError::from(deep(20))
        };
        let once = reported(&e);
        assert_eq!(fit_failure(once.clone()), once);
        let mut levels = Vec::new();
        let mut next = Some(once.clone());
        while let Some(mut f) = next {
            next = f.cause.take().map(|c| *c);
            levels.push(f);
        }
        assert_eq!(chain_len(&levels), once.encoded_len());
        assert_eq!(chain_len(&[pb::Failure::default()]), 0);
        let two = [pb::Failure::default(), pb::Failure::default()];
        assert_eq!(chain_len(&two), 2);
    }

    #[test]
    fn a_retry_hint_is_waited_at_most_a_day_and_a_fifth() {
        // hint + a fifth of it overflowed (a panic) for a hint near Duration::MAX.
        for hint in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(86_401),
        ] {
            let wait = retry_wait(Duration::from_millis(50), Some(hint));
            assert!(wait >= MAX_RETRY_HINT, "{hint:?}: {wait:?}");
            assert!(
                wait <= MAX_RETRY_HINT + MAX_RETRY_HINT / 5,
                "{hint:?}: {wait:?}"
            );
        }
        let wait = retry_wait(Duration::from_millis(50), Some(Duration::from_secs(2)));
        assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_millis(2400));
        assert!(retry_wait(Duration::from_millis(50), None) <= Duration::from_millis(50));
    }

    #[test]
    fn a_workers_durations_are_capped_where_they_bound_a_wait() {
        let o = WorkerOptions {
            poll_timeout: Duration::MAX,
            heartbeat_interval: Duration::MAX,
            shutdown_grace: Duration::MAX,
            report_timeout: Duration::MAX,
            reconnect_max_delay: Duration::MAX,
            ..Default::default()
        }
        .bounded();
        for d in [
            o.poll_timeout,
            o.heartbeat_interval,
            o.shutdown_grace,
            o.report_timeout,
            o.reconnect_max_delay,
        ] {
            assert_eq!(d, crate::time::LONGEST_WAIT);
        }
        // What the unary poll adds to one, and a gRPC timeout of one, hold
        // (tonic panics past 99,999,999 hours).
        let _ = std::time::Instant::now() + o.poll_timeout + POLL_ANSWER_MARGIN;
        tonic::Request::new(()).set_timeout(o.heartbeat_interval);
        let defaults = WorkerOptions::default();
        let kept = defaults.clone().bounded();
        assert_eq!(
            (kept.poll_timeout, kept.shutdown_grace, kept.report_timeout),
            (
                defaults.poll_timeout,
                defaults.shutdown_grace,
                defaults.report_timeout
            )
        );
    }
}
