//! Human approvals: the tasks waiting at approval gates
//! (SchedulerService.ListApprovals) and the decisions on them
//! (ResolveApproval).
//!
//! ```no_run
//! use are_sdk::{ApprovalFilter, Client};
//! # async fn demo(client: Client) -> are_sdk::Result<()> {
//! for gate in client.approvals(&ApprovalFilter::default(), 100).await? {
//!     let input: serde_json::Value = gate.input().await?;
//!     if input["amount"].as_u64().unwrap_or(u64::MAX) < 1_000 {
//!         gate.approve("alice", "under the limit").await?; // the task is scheduled
//!     } else {
//!         gate.reject("alice", "too much").await?; // the task is REJECTED
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use tonic::Code;

use crate::error::{Error, Result};
use crate::pb;
use crate::workflow::WorkflowHandle;
use crate::Client;

/// The largest page ListApprovals returns.
const MAX_PAGE_SIZE: usize = 100;

fn time(stamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    stamp.and_then(|t| SystemTime::try_from(t).ok())
}

/// A task at its approval gate, or one just resolved: its ids, its state and
/// the gate's record (`are.v1.Approval`), with the whole task in
/// [`task`](Approval::task). Its methods decide it.
#[derive(Clone, Debug)]
pub struct Approval {
    client: Client,
    /// The task's workflow.
    pub workflow_id: String,
    /// The task's id.
    pub task_id: String,
    /// The task's state: `AwaitingApproval` while the gate is open;
    /// `Scheduled` (or later) once approved, `Rejected` once rejected or
    /// timed out.
    pub state: pb::TaskState,
    /// The decision; `Unspecified` while the gate is open.
    pub decision: pb::ApprovalDecision,
    /// Who decided, as given to the decision (`are:timeout` when the gate
    /// timed out).
    pub approver: String,
    /// The approver's comment.
    pub comment: String,
    /// When the task reached its gate.
    pub request_time: Option<SystemTime>,
    /// When the gate times out, if the task has an `approval_timeout`.
    pub expire_time: Option<SystemTime>,
    /// When the decision was recorded.
    pub resolve_time: Option<SystemTime>,
    /// The task as the sidecar returned it: with its input when listed (for
    /// a human to judge, see [`Approval::input`]), labels, spec and so on.
    pub task: pb::Task,
}

impl Approval {
    fn of(client: &Client, task: pb::Task) -> Approval {
        let gate = task.approval.clone().unwrap_or_default();
        Approval {
            client: client.clone(),
            workflow_id: task.workflow_id.clone(),
            task_id: task.task_id.clone(),
            state: pb::TaskState::try_from(task.state).unwrap_or_default(),
            decision: pb::ApprovalDecision::try_from(gate.decision).unwrap_or_default(),
            approver: gate.approver,
            comment: gate.comment,
            request_time: time(gate.request_time),
            expire_time: time(gate.expire_time),
            resolve_time: time(gate.resolve_time),
            task,
        }
    }

    /// The task's input decoded as JSON (`null` when it has none), read from
    /// the blob store when it is a blob.
    pub async fn input<T: DeserializeOwned>(&self) -> Result<T> {
        let input = self.task.spec.as_ref().and_then(|s| s.input.as_ref());
        let bytes = self.client.payload_bytes(input).await?;
        Ok(crate::json::from_slice(if bytes.is_empty() {
            b"null"
        } else {
            &bytes
        })?)
    }

    /// Approves the task (see [`Client::resolve_approval`]); it is then
    /// scheduled. Returns the task after the decision.
    pub async fn approve(&self, approver: &str, comment: &str) -> Result<Approval> {
        self.client
            .resolve_approval(
                &self.workflow_id,
                &self.task_id,
                pb::ApprovalDecision::Approve,
                approver,
                comment,
            )
            .await
    }

    /// Rejects the task (see [`Client::resolve_approval`]); it becomes
    /// REJECTED and its dependents follow their trigger rules. Returns the
    /// task after the decision.
    pub async fn reject(&self, approver: &str, comment: &str) -> Result<Approval> {
        self.client
            .resolve_approval(
                &self.workflow_id,
                &self.task_id,
                pb::ApprovalDecision::Reject,
                approver,
                comment,
            )
            .await
    }
}

/// Which gates [`Client::list_approvals`] and [`Client::approvals`] return;
/// the default is every open gate.
#[derive(Clone, Debug, Default)]
pub struct ApprovalFilter {
    /// Only gates of this workflow ("" means every workflow).
    pub workflow_id: String,
    /// Only gates of tasks having every one of these labels (at most 8).
    pub labels: HashMap<String, String>,
}

/// One page of open approval gates, oldest request first.
#[derive(Clone, Debug)]
pub struct ApprovalPage {
    /// The gates of this page, with their tasks' inputs.
    pub approvals: Vec<Approval>,
    /// The token of the next page; empty on the last page.
    pub next_page_token: String,
}

impl Client {
    /// Approves or rejects a task waiting at its approval gate
    /// (ResolveApproval), recording who decided (at most 256 characters) and
    /// why (at most 8 KiB); returns the task after the decision. An approved
    /// task is scheduled; a rejected one becomes REJECTED and its dependents
    /// follow their trigger rules.
    ///
    /// Errors: NOT_FOUND, reason `WORKFLOW_NOT_FOUND` or `TASK_NOT_FOUND`;
    /// FAILED_PRECONDITION, reason `TASK_NOT_AWAITING_APPROVAL` (not at a
    /// gate, or already decided); INVALID_ARGUMENT naming the field for a
    /// `decision` that is `Unspecified` or an `approver` or `comment` too long.
    pub async fn resolve_approval(
        &self,
        workflow_id: &str,
        task_id: &str,
        decision: pb::ApprovalDecision,
        approver: &str,
        comment: &str,
    ) -> Result<Approval> {
        let mut s = self.raw().scheduler;
        let req = pb::ResolveApprovalRequest {
            workflow_id: workflow_id.to_string(),
            task_id: task_id.to_string(),
            decision: decision as i32,
            approver: approver.to_string(),
            comment: comment.to_string(),
        };
        let resp = self
            .unary("ResolveApproval", s.resolve_approval(req))
            .await?;
        let task = resp.task.ok_or_else(|| {
            Error::local(
                Code::Internal,
                "EMPTY_RESPONSE",
                "ResolveApproval returned no task",
            )
        })?;
        Ok(Approval::of(self, task))
    }

    /// One page of open approval gates matching `filter`, oldest request
    /// first, with their tasks' inputs (`page_size` 0: 100, at most 100;
    /// `page_token` "" for the first page, else the previous page's token).
    pub async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<ApprovalPage> {
        let mut s = self.raw().scheduler;
        let req = pb::ListApprovalsRequest {
            page_size,
            page_token: page_token.to_string(),
            workflow_id: filter.workflow_id.clone(),
            labels: filter.labels.clone(),
        };
        let resp = self.unary("ListApprovals", s.list_approvals(req)).await?;
        Ok(ApprovalPage {
            approvals: resp
                .tasks
                .into_iter()
                .map(|t| Approval::of(self, t))
                .collect(),
            next_page_token: resp.next_page_token,
        })
    }

    /// At most `limit` open approval gates matching `filter`, oldest request
    /// first, fetched page by page (each call bounded by the call timeout).
    pub async fn approvals(&self, filter: &ApprovalFilter, limit: usize) -> Result<Vec<Approval>> {
        let mut out = Vec::new();
        let mut token = String::new();
        while out.len() < limit {
            let size = (limit - out.len()).min(MAX_PAGE_SIZE) as i32;
            let page = self.list_approvals(filter, size, &token).await?;
            out.extend(page.approvals);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        out.truncate(limit);
        Ok(out)
    }
}

impl WorkflowHandle {
    /// Approves the workflow's task `task_id` at its approval gate; see
    /// [`Client::resolve_approval`].
    pub async fn approve(&self, task_id: &str, approver: &str, comment: &str) -> Result<Approval> {
        self.client
            .resolve_approval(
                &self.id,
                task_id,
                pb::ApprovalDecision::Approve,
                approver,
                comment,
            )
            .await
    }

    /// Rejects the workflow's task `task_id` at its approval gate; see
    /// [`Client::resolve_approval`].
    pub async fn reject(&self, task_id: &str, approver: &str, comment: &str) -> Result<Approval> {
        self.client
            .resolve_approval(
                &self.id,
                task_id,
                pb::ApprovalDecision::Reject,
                approver,
                comment,
            )
            .await
    }

    /// The workflow's open approval gates, oldest request first, with their
    /// tasks' inputs (every page).
    pub async fn approvals(&self) -> Result<Vec<Approval>> {
        let filter = ApprovalFilter {
            workflow_id: self.id.clone(),
            ..Default::default()
        };
        self.client.approvals(&filter, usize::MAX).await
    }
}
