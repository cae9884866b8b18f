//! Workflows: a spec builder, submit, and handles to wait on, read and cancel.

use std::time::Duration;

use serde::de::DeserializeOwned;
use tonic::Code;

use crate::error::{bounded, Error, Result};
use crate::pb;
use crate::time::{capped, to_proto};
use crate::Client;

/// Content type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A JSON payload.
pub fn json_payload(value: &serde_json::Value) -> pb::Payload {
    pb::Payload {
        content: Some(pb::payload::Content::Data(crate::json::to_vec(value))),
        content_type: JSON_CONTENT_TYPE.to_string(),
    }
}

/// The first pause before a broken watch is resumed; it doubles up to
/// [`RESUME_MAX_DELAY`], and starts again once a message arrives.
const RESUME_FIRST_DELAY: Duration = Duration::from_millis(50);
const RESUME_MAX_DELAY: Duration = Duration::from_secs(2);

/// The longest the first status of a wait may outlast its timeout: a wait
/// of `Duration::ZERO` answers a workflow already closed.
const FIRST_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one probe of a silent sidecar waits (see
/// `WorkflowHandle::until_answering`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a watch was refused because its cursor is beyond the end of the
/// sidecar's event log (OUT_OF_RANGE, `SEQUENCE_BEYOND_LOG`): the cursor
/// comes from another log.
fn sequence_beyond_log(e: &Error) -> bool {
    e.code == Code::OutOfRange && e.reason == "SEQUENCE_BEYOND_LOG"
}

/// Whether a watch was refused for want of event subscribers
/// (RESOURCE_EXHAUSTED, `RESOURCE_LIMIT`), which a later attempt may find
/// free; a RESOURCE_EXHAUSTED without that reason (a request over the
/// sidecar's message bound) would only fail again.
fn subscribers_taken(e: &Error) -> bool {
    e.code == Code::ResourceExhausted && e.reason == "RESOURCE_LIMIT"
}

/// Builds one task of a workflow (or of a spawn).
#[derive(Clone, Debug)]
pub struct TaskBuilder {
    spec: pb::TaskSpec,
}

impl TaskBuilder {
    /// A task `task_id` served by workers of `capability`.
    pub fn new(task_id: &str, capability: &str) -> Self {
        TaskBuilder {
            spec: pb::TaskSpec {
                task_id: task_id.to_string(),
                target: Some(pb::task_spec::Target::Capability(capability.to_string())),
                ..Default::default()
            },
        }
    }

    /// Sets the input to a JSON value.
    pub fn input(mut self, value: serde_json::Value) -> Self {
        self.spec.input = Some(json_payload(&value));
        self
    }

    /// Makes the task wait for others (by default for all of them to succeed).
    pub fn depends_on<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.spec.depends_on.extend(ids.into_iter().map(Into::into));
        self
    }

    /// At most `n` attempts (1: no retry), the first retry after up to `initial`.
    pub fn max_attempts(mut self, n: i32, initial: Duration) -> Self {
        let policy = self.spec.retry_policy.get_or_insert_with(Default::default);
        policy.maximum_attempts = n;
        policy.initial_interval = Some(to_proto(initial));
        self
    }

    /// Sets the whole retry policy.
    pub fn retry_policy(mut self, policy: pb::RetryPolicy) -> Self {
        self.spec.retry_policy = Some(policy);
        self
    }

    /// Bounds one attempt once assigned.
    pub fn start_to_close_timeout(mut self, d: Duration) -> Self {
        self.spec.start_to_close_timeout = Some(to_proto(d));
        self
    }

    /// Ends an attempt's lease when its worker does not heartbeat for `d`.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.spec.heartbeat_timeout = Some(to_proto(d));
        self
    }

    /// Puts the task in a resource pool.
    pub fn pool(mut self, pool: &str) -> Self {
        self.spec.pool = pool.to_string();
        self
    }

    /// Priority in its pool, 1 (most urgent) to 5.
    pub fn priority(mut self, priority: i32) -> Self {
        self.spec.priority = priority;
        self
    }

    /// Stops the task at an approval gate once its dependencies are met.
    pub fn requires_approval(mut self) -> Self {
        self.spec.requires_approval = true;
        self
    }

    /// Changes the spec directly, for fields the builder does not cover.
    pub fn configure(mut self, f: impl FnOnce(&mut pb::TaskSpec)) -> Self {
        f(&mut self.spec);
        self
    }

    /// The spec.
    pub fn build(self) -> pb::TaskSpec {
        self.spec
    }
}

/// Builds a [`pb::WorkflowSpec`]; the sidecar validates it and names the
/// field of any error.
#[derive(Clone, Debug)]
pub struct WorkflowBuilder {
    spec: pb::WorkflowSpec,
}

impl WorkflowBuilder {
    /// A workflow named `name` (free form, for humans).
    pub fn new(name: &str) -> Self {
        WorkflowBuilder {
            spec: pb::WorkflowSpec {
                name: name.to_string(),
                ..Default::default()
            },
        }
    }

    /// Sets the workflow id (otherwise the sidecar generates one).
    pub fn id(mut self, workflow_id: &str) -> Self {
        self.spec.workflow_id = workflow_id.to_string();
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.spec.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Retry policy of the tasks that declare none.
    pub fn default_retry_policy(mut self, policy: pb::RetryPolicy) -> Self {
        self.spec.default_retry_policy = Some(policy);
        self
    }

    /// Names the task whose output is the workflow's result.
    pub fn result_task(mut self, task_id: &str) -> Self {
        self.spec.result_task_id = task_id.to_string();
        self
    }

    /// Adds a task.
    pub fn task(mut self, task: TaskBuilder) -> Self {
        self.spec.tasks.push(task.build());
        self
    }

    /// Changes the spec directly, for fields the builder does not cover.
    pub fn configure(mut self, f: impl FnOnce(&mut pb::WorkflowSpec)) -> Self {
        f(&mut self.spec);
        self
    }

    /// The spec.
    pub fn build(self) -> pb::WorkflowSpec {
        self.spec
    }
}

impl From<WorkflowBuilder> for pb::WorkflowSpec {
    fn from(b: WorkflowBuilder) -> Self {
        b.build()
    }
}

/// Whether a workflow state is closed (COMPLETED, FAILED or CANCELLED).
pub fn is_closed(state: i32) -> bool {
    matches!(
        pb::WorkflowState::try_from(state),
        Ok(pb::WorkflowState::Completed | pb::WorkflowState::Failed | pb::WorkflowState::Cancelled)
    )
}

impl Client {
    /// Submits a workflow and returns a handle at once, without waiting.
    pub async fn submit(&self, spec: impl Into<pb::WorkflowSpec>) -> Result<WorkflowHandle> {
        self.submit_request(pb::SubmitWorkflowRequest {
            spec: Some(spec.into()),
            ..Default::default()
        })
        .await
    }

    /// Submits with every field of the request (a `request_id` for idempotency).
    pub async fn submit_request(&self, req: pb::SubmitWorkflowRequest) -> Result<WorkflowHandle> {
        let mut s = self.raw().scheduler;
        let resp = self.unary("SubmitWorkflow", s.submit_workflow(req)).await?;
        Ok(WorkflowHandle {
            client: self.clone(),
            id: resp.workflow_id,
            deduplicated: resp.deduplicated,
        })
    }

    /// A handle on an existing workflow; makes no call.
    pub fn workflow(&self, workflow_id: &str) -> WorkflowHandle {
        WorkflowHandle {
            client: self.clone(),
            id: workflow_id.to_string(),
            deduplicated: false,
        }
    }
}

/// A submitted workflow.
#[derive(Clone, Debug)]
pub struct WorkflowHandle {
    pub(crate) client: Client,
    /// The workflow's id.
    pub id: String,
    /// True when the submit matched an earlier request id and created nothing.
    pub deduplicated: bool,
}

impl WorkflowHandle {
    /// The workflow's current status.
    pub async fn get(&self) -> Result<pb::Workflow> {
        let mut s = self.client.raw().scheduler;
        let req = pb::GetWorkflowRequest {
            workflow_id: self.id.clone(),
        };
        let resp = self
            .client
            .unary("GetWorkflow", s.get_workflow(req))
            .await?;
        resp.workflow.ok_or_else(|| {
            Error::local(
                Code::Internal,
                "EMPTY_RESPONSE",
                "GetWorkflow returned no workflow",
            )
        })
    }

    /// Cancels the workflow (idempotent) and returns its status; workers
    /// running its tasks are told to stop.
    pub async fn cancel(&self, reason: &str) -> Result<pb::Workflow> {
        let mut s = self.client.raw().scheduler;
        let req = pb::CancelWorkflowRequest {
            workflow_id: self.id.clone(),
            reason: reason.to_string(),
            ..Default::default()
        };
        let resp = self
            .client
            .unary("CancelWorkflow", s.cancel_workflow(req))
            .await?;
        resp.workflow.ok_or_else(|| {
            Error::local(
                Code::Internal,
                "EMPTY_RESPONSE",
                "CancelWorkflow returned no workflow",
            )
        })
    }

    /// One task's status, with its input and output.
    pub async fn task(&self, task_id: &str) -> Result<pb::Task> {
        let mut s = self.client.raw().scheduler;
        let req = pb::GetTaskRequest {
            workflow_id: self.id.clone(),
            task_id: task_id.to_string(),
        };
        let resp = self.client.unary("GetTask", s.get_task(req)).await?;
        resp.task.ok_or_else(|| {
            Error::local(Code::Internal, "EMPTY_RESPONSE", "GetTask returned no task")
        })
    }

    /// Follows the workflow (WatchWorkflow) until it closes, whatever the
    /// outcome, for at most `timeout`. A watch that breaks (UNAVAILABLE: the
    /// sidecar restarted, the connection dropped; CANCELLED) is resumed from
    /// the last sequence received, after a jittered backoff, as long as the
    /// sidecar answers again within the client's
    /// [`Options::reconnect_window`](crate::Options::reconnect_window) (60 s
    /// by default): once that long has passed since the drop without an
    /// answer, the last UNAVAILABLE error is returned, whatever `timeout`
    /// is left. A watch refused with RESOURCE_EXHAUSTED, reason
    /// `RESOURCE_LIMIT` (the sidecar's subscribers all taken: a resumed
    /// watch needs one) is resumed no sooner than the sidecar's retry hint;
    /// any other RESOURCE_EXHAUSTED (a request over the sidecar's
    /// `--max-message-bytes`, see
    /// [`Options::max_message_bytes`](crate::Options::max_message_bytes)) is
    /// returned, since no retry would fix it. A resumed watch refused with
    /// OUT_OF_RANGE, reason `SEQUENCE_BEYOND_LOG` (the sidecar came back on
    /// an older event log: a power loss under `--durability relaxed`, a
    /// restored backup) is watched again at once without its cursor, from
    /// the current status, as the contract says. Other errors (NOT_FOUND,
    /// ...) are returned.
    ///
    /// The first status may outlast a short `timeout` (by up to 5 s), so
    /// that a workflow already closed is answered even with
    /// `Duration::ZERO`, as in the Python SDK; once a status came, the wait
    /// ends at `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<pb::Workflow> {
        let ran_out = || Error::timeout(format!("waiting for workflow {}", self.id), timeout);
        let start = tokio::time::Instant::now();
        let deadline = start + capped(timeout);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let watch = self.watch(first_tx);
        tokio::pin!(watch);
        tokio::select! {
            biased;
            ended = &mut watch => return ended,
            _ = first_rx => {}
            _ = tokio::time::sleep_until(deadline.max(start + FIRST_STATUS_TIMEOUT)) => {
                return Err(ran_out());
            }
        }
        tokio::select! {
            biased;
            ended = &mut watch => ended,
            _ = tokio::time::sleep_until(deadline) => Err(ran_out()),
        }
    }

    /// Follows the workflow until it closes; `first` is told when the first
    /// status comes.
    async fn watch(&self, first: tokio::sync::oneshot::Sender<()>) -> Result<pb::Workflow> {
        let mut first = Some(first);
        // Always a sequence this watch received: a wait takes no cursor of
        // the caller's.
        let mut after = None;
        let mut delay = RESUME_FIRST_DELAY;
        loop {
            let mut s = self.client.watches();
            let req = pb::WatchWorkflowRequest {
                workflow_id: self.id.clone(),
                after_sequence: after,
                include_tasks: false,
            };
            let ended: Result<Option<pb::Workflow>> = async {
                let mut stream = s.watch_workflow(req).await?.into_inner();
                while let Some(msg) = stream.message().await? {
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    delay = RESUME_FIRST_DELAY;
                    if msg.sequence != 0 {
                        after = Some(msg.sequence);
                    }
                    if let Some(w) = msg.workflow.filter(|w| is_closed(w.state)) {
                        return Ok(Some(w));
                    }
                }
                Ok(None) // ended without a closed status: resume
            }
            .await;
            let dropped_at = tokio::time::Instant::now();
            let mut dropped = None;
            let hint = match ended {
                Ok(Some(w)) => return Ok(w),
                Ok(None) => None,
                Err(e) if after.is_some() && sequence_beyond_log(&e) => {
                    // Back on an older event log: at once, without the
                    // cursor; the status read first is the current one.
                    after = None;
                    continue;
                }
                Err(e) if matches!(e.code, Code::Unavailable | Code::Cancelled) => {
                    dropped = Some(e);
                    None
                }
                Err(e) if subscribers_taken(&e) => e.retry_delay,
                Err(e) => return Err(e),
            };
            tokio::time::sleep(crate::worker::retry_wait(delay, hint)).await;
            delay = (delay * 2).min(RESUME_MAX_DELAY);
            if let Some(e) = dropped {
                self.until_answering(e, dropped_at).await?;
            }
        }
    }

    /// Returns once the sidecar answers a call again, after a watch dropped
    /// (with `error`, UNAVAILABLE or CANCELLED) at `since`; once the client's
    /// reconnect window has passed since then without an answer, the last
    /// UNAVAILABLE error, as the Python SDK's wait. A resumed watch can be
    /// silent for hours (a cursor with nothing after it), so its opening
    /// proves nothing: a unary GetWorkflow on the watches' connection does,
    /// each bounded by [`PROBE_TIMEOUT`]. Without this bound, a wait on a
    /// sidecar gone for good resumed for as long as its timeout allowed (up
    /// to 30 years).
    async fn until_answering(&self, error: Error, since: tokio::time::Instant) -> Result<()> {
        let window = self.client.reconnect_window;
        let deadline = since + capped(window);
        let mut last = error;
        let mut delay = RESUME_FIRST_DELAY;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            let mut s = self.client.watches();
            let req = pb::GetWorkflowRequest {
                workflow_id: self.id.clone(),
            };
            let probe = bounded("GetWorkflow", remaining.min(PROBE_TIMEOUT), async {
                Ok(s.get_workflow(req).await?.into_inner())
            })
            .await;
            match probe {
                Err(e) if e.code == Code::Unavailable => last = e,
                Err(e) if matches!(e.code, Code::Cancelled | Code::DeadlineExceeded) => {}
                // It answered; the watch meets any error itself.
                _ => return Ok(()),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(crate::worker::jitter(delay).min(left)).await;
            delay = (delay * 2).min(RESUME_MAX_DELAY);
        }
        let why = format!(
            "workflow {}: the sidecar has not answered for {window:?} \
             (the reconnect window) since the watch dropped",
            self.id
        );
        if last.code == Code::Unavailable {
            last.message = format!("{why}: {}", last.message);
            return Err(last);
        }
        let message = format!("{why} ({:?}: {})", last.code, last.message);
        Err(Error::local(Code::Unavailable, "UNAVAILABLE", message).with_source(last))
    }

    /// Waits (at most `timeout`) for the workflow to close and returns its
    /// result's bytes (empty when it has none). A workflow that closed FAILED
    /// or CANCELLED is an error with reason `WORKFLOW_FAILED` /
    /// `WORKFLOW_CANCELLED` and the closing status in `Error::workflow`.
    pub async fn result_bytes(&self, timeout: Duration) -> Result<Vec<u8>> {
        let w = self.wait(timeout).await?;
        if w.state != pb::WorkflowState::Completed as i32 {
            let state = pb::WorkflowState::try_from(w.state).unwrap_or_default();
            let reason = if state == pb::WorkflowState::Cancelled {
                "WORKFLOW_CANCELLED"
            } else {
                "WORKFLOW_FAILED"
            };
            let why = w
                .failure
                .as_ref()
                .map(|f| f.message.clone())
                .unwrap_or_default();
            return Err(Error::local(
                Code::FailedPrecondition,
                reason,
                format!("workflow {} closed {}: {why}", self.id, state.as_str_name()),
            )
            .with_workflow(w));
        }
        self.client.payload_bytes(w.result.as_ref()).await
    }

    /// Like [`WorkflowHandle::result_bytes`], decoding the result as JSON
    /// (`null` when there is none).
    pub async fn result<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T> {
        let bytes = self.result_bytes(timeout).await?;
        Ok(crate::json::from_slice(if bytes.is_empty() {
            b"null"
        } else {
            &bytes
        })?)
    }

    /// The output of a COMPLETED task as JSON; any other state is an error
    /// with reason `TASK_NOT_COMPLETED`. Does not wait.
    pub async fn task_output<T: DeserializeOwned>(&self, task_id: &str) -> Result<T> {
        let task = self.task(task_id).await?;
        if task.state != pb::TaskState::Completed as i32 {
            let state = pb::TaskState::try_from(task.state).unwrap_or_default();
            return Err(Error::local(
                Code::FailedPrecondition,
                "TASK_NOT_COMPLETED",
                format!("task {}/{task_id} is {}", self.id, state.as_str_name()),
            ));
        }
        let bytes = self.client.payload_bytes(task.output.as_ref()).await?;
        Ok(crate::json::from_slice(if bytes.is_empty() {
            b"null"
        } else {
            &bytes
        })?)
    }
}

impl Error {
    fn with_workflow(mut self, w: pb::Workflow) -> Self {
        self.workflow = Some(Box::new(w));
        self
    }
}

impl pb::Failure {
    /// The failures that caused this one, outermost first: its `cause`, that
    /// one's `cause`, and so on (a worker's report keeps at most 8, the
    /// deepest saying how many were dropped). For a task's failure,
    /// `handle.task(id).await?.failure`; a workflow's own failure
    /// (`TASK_FAILED`, in [`Error::workflow`]) names the task and quotes its
    /// message, without its causes.
    pub fn causes(&self) -> impl Iterator<Item = &pb::Failure> + '_ {
        std::iter::successors(self.cause.as_deref(), |f| f.cause.as_deref())
    }
}

#[cfg(test)]
mod waits;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failures_causes_are_read_outermost_first() {
        let level = |message: &str, cause: Option<pb::Failure>| pb::Failure {
            message: message.into(),
            cause: cause.map(Box::new),
            ..Default::default()
        };
        let failure = level("top", Some(level("middle", Some(level("root", None)))));
        let messages: Vec<&str> = failure.causes().map(|f| f.message.as_str()).collect();
        assert_eq!(messages, ["middle", "root"]);
        assert_eq!(level("alone", None).causes().count(), 0);
    }
}
