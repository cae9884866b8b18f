//! Human approvals through the Rust API, against a real sidecar (one per
//! test): gates listed with their inputs, filtered and paged; approved ones
//! run and their workflows complete; rejected ones close REJECTED; the
//! sidecar's refusals come back as errors with their reasons and fields.
//! Every wait is bounded; nothing asserts on timing.

use std::collections::HashMap;
use std::time::Duration;

use are_sdk::{
    pb, Approval, ApprovalDecision, ApprovalFilter, Client, Code, TaskBuilder, Worker,
    WorkerTransport, WorkflowBuilder, WorkflowHandle,
};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

#[macro_use]
mod common;
use common::{fast, start, Running, WAIT};

/// A workflow whose task "gate" (capability `rust-gated`, labelled
/// `team: rust`) waits for approval before it echoes its input.
async fn gated(client: &Client, input: Value) -> WorkflowHandle {
    let gate = TaskBuilder::new("gate", "rust-gated")
        .input(input)
        .requires_approval()
        .configure(|t| {
            t.labels.insert("team".into(), "rust".into());
        });
    client
        .submit(WorkflowBuilder::new("rust-gated").task(gate))
        .await
        .unwrap()
}

/// The open gates matching `filter` once there are `n` of them (within
/// [`WAIT`]: the gate opens once the task's dependencies are met).
async fn gates(client: &Client, filter: &ApprovalFilter, n: usize) -> Vec<Approval> {
    let started = Instant::now();
    loop {
        let open = client.approvals(filter, 1000).await.unwrap();
        if open.len() >= n || started.elapsed() > WAIT {
            assert_eq!(open.len(), n, "{open:?}");
            return open;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn approved_gates_run_and_their_workflows_complete() {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-approver", fast(WorkerTransport::Stream)).handle(
        "rust-gated",
        |task| async move { task.input_json::<Value>() },
    );
    let (running, _) = Running::spawn(worker);
    let first = gated(&client, json!({"amount": 10})).await;
    let second = gated(&client, json!({"amount": 20})).await;

    // Both gates, oldest request first, with their inputs; nothing has run.
    let every = ApprovalFilter::default();
    let open = gates(&client, &every, 2).await;
    let ids: Vec<&str> = open.iter().map(|a| a.workflow_id.as_str()).collect();
    assert_eq!(ids, [first.id.as_str(), second.id.as_str()]);
    let gate = &open[0];
    assert_eq!(gate.task_id, "gate");
    assert_eq!(gate.state, pb::TaskState::AwaitingApproval);
    assert_eq!(gate.decision, ApprovalDecision::Unspecified);
    assert!(gate.request_time.is_some() && gate.resolve_time.is_none());
    assert_eq!((gate.approver.as_str(), gate.comment.as_str()), ("", ""));
    assert_eq!(gate.input::<Value>().await.unwrap(), json!({"amount": 10}));
    assert_eq!(gate.task.spec.as_ref().unwrap().labels["team"], "rust");

    // Paging: one gate a page, the token leading to the next.
    let page = client.list_approvals(&every, 1, "").await.unwrap();
    assert_eq!(page.approvals.len(), 1);
    assert_eq!(page.approvals[0].workflow_id, first.id);
    assert!(!page.next_page_token.is_empty());
    let next = client
        .list_approvals(&every, 1, &page.next_page_token)
        .await
        .unwrap();
    assert_eq!(next.approvals.len(), 1);
    assert_eq!(next.approvals[0].workflow_id, second.id);
    // Filters: by workflow (and the handle's own listing), by label.
    let of_second = ApprovalFilter {
        workflow_id: second.id.clone(),
        ..Default::default()
    };
    let only = client.approvals(&of_second, 10).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].workflow_id, second.id);
    assert_eq!(second.approvals().await.unwrap().len(), 1);
    let labelled = |team: &str| ApprovalFilter {
        labels: HashMap::from([("team".to_string(), team.to_string())]),
        ..Default::default()
    };
    assert_eq!(
        client.approvals(&labelled("rust"), 10).await.unwrap().len(),
        2
    );
    assert!(client
        .approvals(&labelled("go"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(client.approvals(&every, 1).await.unwrap().len(), 1, "limit");

    // Approved through the listed gate, and through the handle.
    let decided = gate.approve("alice", "under the limit").await.unwrap();
    assert_eq!(
        (decided.workflow_id.as_str(), decided.task_id.as_str()),
        (first.id.as_str(), "gate")
    );
    assert_ne!(decided.state, pb::TaskState::AwaitingApproval);
    assert_eq!(decided.decision, ApprovalDecision::Approve);
    assert_eq!(decided.approver, "alice");
    assert_eq!(decided.comment, "under the limit");
    assert!(decided.resolve_time.is_some());
    let decided = second.approve("gate", "bob", "").await.unwrap();
    assert_eq!(decided.decision, ApprovalDecision::Approve);
    assert_eq!(decided.approver, "bob");

    // The workflows proceed: the worker runs the gates and they complete.
    let out: Value = first.result(WAIT).await.unwrap();
    assert_eq!(out, json!({"amount": 10}));
    let out: Value = second.result(WAIT).await.unwrap();
    assert_eq!(out, json!({"amount": 20}));
    assert!(client.approvals(&every, 10).await.unwrap().is_empty());
    // The task keeps the gate's record.
    let task = first.task("gate").await.unwrap();
    let record = task.approval.unwrap();
    assert_eq!(record.decision, ApprovalDecision::Approve as i32);
    assert_eq!(record.approver, "alice");
    running.stop().await;
}

#[tokio::test]
async fn a_rejected_gate_is_rejected_and_never_runs() {
    let (_sidecar, client) = start().await;
    // No worker: a task that ran would stay RUNNING, never REJECTED.
    let handle = gated(&client, json!({"amount": 1_000_000})).await;
    let filter = ApprovalFilter {
        workflow_id: handle.id.clone(),
        ..Default::default()
    };
    let open = gates(&client, &filter, 1).await;
    let decided = open[0].reject("carol", "too much").await.unwrap();
    assert_eq!(decided.state, pb::TaskState::Rejected);
    assert_eq!(decided.decision, ApprovalDecision::Reject);
    assert_eq!(
        (decided.approver.as_str(), decided.comment.as_str()),
        ("carol", "too much")
    );
    let closed = handle.wait(WAIT).await.unwrap();
    assert!(are_sdk::is_closed(closed.state), "{closed:?}");
    assert_ne!(closed.state, pb::WorkflowState::Completed as i32);
    let task = handle.task("gate").await.unwrap();
    assert_eq!(task.state, pb::TaskState::Rejected as i32);
    assert!(handle.approvals().await.unwrap().is_empty());
}

#[tokio::test]
async fn refused_decisions_are_errors_with_the_sidecars_reason() {
    let (_sidecar, client) = start().await;
    let handle = gated(&client, json!(null)).await;
    let filter = ApprovalFilter {
        workflow_id: handle.id.clone(),
        ..Default::default()
    };
    gates(&client, &filter, 1).await;

    let e = client
        .resolve_approval(&handle.id, "gate", ApprovalDecision::Unspecified, "", "")
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert!(e.field("decision").is_some(), "{e}");
    let e = handle
        .approve("gate", &"a".repeat(257), "")
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert!(e.field("approver").is_some(), "{e}");
    let e = handle.approve("nope", "", "").await.unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::NotFound, "TASK_NOT_FOUND"),
        "{e}"
    );
    let e = client
        .workflow("wf-missing")
        .approve("gate", "", "")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::NotFound, "WORKFLOW_NOT_FOUND"),
        "{e}"
    );
    let e = client
        .list_approvals(&ApprovalFilter::default(), 0, "not-a-token")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::InvalidArgument, "INVALID_PAGE_TOKEN"),
        "{e}"
    );

    // Decided once; a second decision is refused and changes nothing.
    handle.reject("gate", "dave", "").await.unwrap();
    let e = handle.approve("gate", "erin", "").await.unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::FailedPrecondition, "TASK_NOT_AWAITING_APPROVAL"),
        "{e}"
    );
    let task = handle.task("gate").await.unwrap();
    assert_eq!(task.approval.unwrap().approver, "dave");
}
