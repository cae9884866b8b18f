//! The state facade against a real sidecar (one per test), started from the
//! repository's `.venv`. Every wait is bounded; nothing asserts on timing.

use std::collections::HashMap;
use std::time::Duration;

use are_sdk::testing::Sidecar;
use are_sdk::{
    pb, CancellationToken, Client, Code, ForkOptions, HydrateOptions, MemoryNote, Patch, PatchOp,
    PatchOptions, TaskBuilder, Worker, WorkerOptions, WorkflowBuilder,
};
use serde_json::{json, Value};
use tokio::time::timeout;

mod common;
use common::nested;

const WAIT: Duration = Duration::from_secs(60);

async fn start() -> (Sidecar, Client) {
    let sidecar = Sidecar::start(&[]).await.expect("sidecar");
    let client = sidecar.client().await.expect("connect");
    (sidecar, client)
}

/// A running workflow (a task nobody serves keeps it open); its state starts
/// at version 1, `{}`.
async fn running_workflow(client: &Client, name: &str) -> String {
    let spec = WorkflowBuilder::new(name).task(TaskBuilder::new("hold", &format!("nobody-{name}")));
    client.submit(spec).await.expect("submit").id
}

fn writer(name: &str) -> PatchOptions {
    PatchOptions {
        writer: name.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn get_and_patch_round_trip_with_paths_versions_and_conflicts() {
    let (_sidecar, client) = start().await;
    let wid = running_workflow(&client, "st-round-trip").await;
    let state = client.state();

    let initial = state.get(&wid, &[], None).await.unwrap();
    assert_eq!(initial.version, 1);
    assert_eq!(initial.get(""), Some(&json!({})));
    assert!(initial.update_time.is_some());

    let v2 = state
        .patch(
            &wid,
            json!({"plan": {"steps": ["search"]}, "budget": 10}),
            &writer("rust-test"),
        )
        .await
        .unwrap();
    assert_eq!(v2, 2);

    let snap = state
        .get(&wid, &["/plan/steps", "/nope", "/budget"], None)
        .await
        .unwrap();
    assert_eq!(snap.version, 2);
    assert_eq!(
        snap.values,
        vec![
            ("/plan/steps".to_string(), json!(["search"])),
            ("/budget".to_string(), json!(10)),
        ]
    );
    assert_eq!(snap.missing_paths, vec!["/nope".to_string()]);
    assert_eq!(snap.decode::<i64>("/budget").unwrap(), Some(10));
    assert_eq!(snap.decode::<i64>("/nope").unwrap(), None);

    // Reading an older version.
    let old = state.get(&wid, &[""], Some(1)).await.unwrap();
    assert_eq!((old.version, old.get("")), (1, Some(&json!({}))));

    // Optimistic concurrency: a stale expected version is refused, nothing changes.
    let e = state
        .patch(
            &wid,
            json!({"budget": 0}),
            &PatchOptions {
                expected_version: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Aborted, "{e}");
    assert_eq!(e.reason, "STATE_VERSION_MISMATCH");
    assert_eq!(e.domain, "are.v1");
    assert_eq!(
        state.get(&wid, &["/budget"], None).await.unwrap().version,
        2
    );

    // Pointer operations, at the right expected version.
    let v3 = state
        .patch(
            &wid,
            Patch::ops([
                PatchOp::set("/plan/steps/-", json!("book")),
                PatchOp::set("/owner", json!({"name": "ada"})),
                PatchOp::remove("/budget"),
            ]),
            &PatchOptions {
                expected_version: Some(v2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(v3, 3);
    let doc = state.get(&wid, &[], None).await.unwrap();
    assert_eq!(
        doc.get(""),
        Some(&json!({"plan": {"steps": ["search", "book"]}, "owner": {"name": "ada"}}))
    );

    // A merge patch's null removes a member.
    let bound = state.for_workflow(&wid);
    bound
        .patch(json!({"owner": null}), &PatchOptions::default())
        .await
        .unwrap();
    assert_eq!(bound.value::<Value>("/owner").await.unwrap(), None);
    assert_eq!(
        bound.value::<Vec<String>>("/plan/steps").await.unwrap(),
        Some(vec!["search".to_string(), "book".to_string()])
    );

    // Bad input and unknown workflows carry the sidecar's reason.
    let e = state
        .patch(
            &wid,
            Patch::ops([PatchOp::remove("no-leading-slash")]),
            &PatchOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(e.reason, "INVALID_JSON_POINTER");
    let e = state.get("wf-does-not-exist", &[], None).await.unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::NotFound, "WORKFLOW_NOT_FOUND")
    );
    let e = state
        .patch(
            &wid,
            json!({"x": 1}),
            &PatchOptions {
                task_id: "hold".into(),
                attempt: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition, "{e}");
    assert_eq!(e.reason, "TASK_NOT_HELD");
}

fn member(name: &str, value: Value) -> Value {
    Value::Object(serde_json::Map::from_iter([(name.to_string(), value)]))
}

#[tokio::test]
async fn values_nested_as_deep_as_the_sidecar_stores_round_trip() {
    let (_sidecar, client) = start().await;
    let wid = running_workflow(&client, "st-deep").await;
    let state = client.state().for_workflow(&wid);

    // 512 deep in all, the sidecar's bound: the member adds a level.
    state
        .patch(member("merged", nested(511)), &writer("rust-deep"))
        .await
        .unwrap();
    state
        .patch(
            Patch::ops([PatchOp::set("/set", nested(511))]),
            &writer("rust-deep"),
        )
        .await
        .unwrap();
    let snap = state.get(&["", "/merged", "/set"], None).await.unwrap();
    assert_eq!(snap.get("/merged"), Some(&nested(511)));
    assert_eq!(snap.get("/set"), Some(&nested(511)));
    let whole: Value = snap.decode("").unwrap().expect("the document");
    assert_eq!(whole["merged"], nested(511));
    assert_eq!(
        state.value::<Value>("/set").await.unwrap(),
        Some(nested(511))
    );

    // One level more is the sidecar's to refuse.
    let e = state
        .patch(member("deeper", nested(512)), &writer("rust-deep"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::InvalidArgument, "INVALID_JSON"),
        "{e}"
    );
    assert!(
        e.field("patch.merge_patch_json").is_some(),
        "violations {:?}",
        e.field_violations
    );
}

#[tokio::test]
async fn checkpoints_are_listed_and_a_version_is_forked() {
    let (_sidecar, client) = start().await;
    let wid = running_workflow(&client, "st-fork").await;
    let state = client.state().for_workflow(&wid);
    state
        .patch(json!({"step": 1}), &writer("rust-a"))
        .await
        .unwrap();
    state
        .patch(json!({"step": 2}), &writer("rust-b"))
        .await
        .unwrap();

    let all = state.checkpoints(100).await.unwrap();
    let versions: Vec<i64> = all.iter().map(|c| c.version).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(all[0].writer, "rust-b");
    assert_eq!(all[1].writer, "rust-a");
    assert_eq!(all[2].writer, "submit");
    assert!(all
        .iter()
        .all(|c| c.create_time.is_some() && c.size_bytes > 0));

    // Paged: one at a time, and the bounded helper stops at its limit.
    let page = client.state().list_checkpoints(&wid, 1, "").await.unwrap();
    assert_eq!(page.checkpoints.len(), 1);
    assert!(!page.next_page_token.is_empty());
    assert_eq!((page.oldest_version, page.latest_version), (1, 3));
    let next = client
        .state()
        .list_checkpoints(&wid, 1, &page.next_page_token)
        .await
        .unwrap();
    assert_eq!(next.checkpoints[0].version, 2);
    assert_eq!(state.checkpoints(2).await.unwrap().len(), 2);

    let fork = state
        .fork(
            2,
            &ForkOptions {
                new_workflow_id: format!("{wid}-fork"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(fork.workflow_id, format!("{wid}-fork"));
    assert_eq!(fork.source_version, 2);
    let forked = client
        .state()
        .get(&fork.workflow_id, &[], None)
        .await
        .unwrap();
    assert_eq!(forked.get(""), Some(&json!({"step": 1})));
    // The source is untouched.
    assert_eq!(state.value::<i64>("/step").await.unwrap(), Some(2));

    // 0 forks the latest version; the id is generated.
    let latest = client
        .state()
        .fork(&wid, 0, &ForkOptions::default())
        .await
        .unwrap();
    assert_eq!(latest.source_version, 3);
    assert_ne!(latest.workflow_id, wid);

    let e = client
        .state()
        .fork(&wid, 99, &ForkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert_eq!(e.reason, "STATE_VERSION_NOT_FOUND");
}

#[tokio::test]
async fn memory_notes_are_added_and_hydrated() {
    let (_sidecar, client) = start().await;
    let wid = running_workflow(&client, "st-memory-vec").await;
    let memory = client.state().for_workflow(&wid);
    let note = |text: &str, vector: [f32; 3], kind: &str| MemoryNote {
        text: text.to_string(),
        vector: Some(vector.to_vec()),
        metadata: HashMap::from([("kind".to_string(), kind.to_string())]),
        ..Default::default()
    };
    let ids = memory
        .add_memory(vec![
            note("closest", [1.0, 0.0, 0.0], "plan"),
            note("close", [0.8, 0.6, 0.0], "fact"),
            note("far", [0.0, 0.0, 1.0], "plan"),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);

    let top = memory
        .hydrate_memory(
            vec![1.0, 0.0, 0.0],
            &HydrateOptions {
                top_k: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(top.texts(), vec!["closest", "close"]);
    assert_eq!(top.hits[0].memory_id, ids[0]);
    assert!(top.hits[0].similarity > top.hits[1].similarity);
    assert_eq!(top.hits[0].metadata["kind"], "plan");
    assert!(top.hits[0].vector.is_none());

    let plans = memory
        .hydrate_memory(
            vec![1.0, 0.0, 0.0],
            &HydrateOptions {
                metadata: HashMap::from([("kind".to_string(), "plan".to_string())]),
                min_similarity: Some(0.5),
                include_vectors: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(plans.texts(), vec!["closest"]);
    assert_eq!(plans.hits[0].vector, Some(vec![1.0, 0.0, 0.0]));

    let small = memory
        .hydrate_memory(
            vec![1.0, 0.0, 0.0],
            &HydrateOptions {
                max_bytes: 8,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(small.truncated);
    assert!(small.total_bytes <= 8);

    let e = memory
        .hydrate_memory(vec![1.0, 0.0], &HydrateOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(e.reason, "DIMENSION_MISMATCH");

    // Text notes and a text query, embedded by the sidecar's memory embedder.
    let wid = running_workflow(&client, "st-memory-text").await;
    let memory = client.state().for_workflow(&wid);
    memory
        .add_memory(vec![
            "the user is vegetarian".into(),
            MemoryNote::from("the flight leaves at noon"),
        ])
        .await
        .unwrap();
    let found = memory
        .hydrate_memory(
            "vegetarian user",
            &HydrateOptions {
                top_k: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(found.texts(), vec!["the user is vegetarian"]);
    assert!(found.hits[0].create_time.is_some());
}

#[tokio::test]
async fn a_worker_handler_patches_its_workflow_through_the_task_view() {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(
        &client,
        "rust-state-worker",
        WorkerOptions {
            poll_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .handle("rust-state", {
        let client = client.clone();
        move |task| {
            let client = client.clone();
            async move {
                let state = client.state().for_task(&task);
                let snap = state.get(&["/steps"], None).await?;
                let mut steps: Vec<String> = snap.decode("/steps")?.unwrap_or_default();
                let seen = steps.clone();
                steps.push(task.task_id.clone());
                let version = state
                    .patch(
                        Patch::ops([PatchOp::set("/steps", json!(steps))]),
                        &PatchOptions {
                            expected_version: Some(snap.version),
                            ..Default::default()
                        },
                    )
                    .await?;
                Ok(json!({"seen": seen, "version": version}))
            }
        }
    });
    let stop = CancellationToken::new();
    let join = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });

    let spec = WorkflowBuilder::new("rust-state-flow")
        .task(TaskBuilder::new("first", "rust-state"))
        .task(TaskBuilder::new("second", "rust-state").depends_on(["first"]))
        .result_task("second");
    let handle = client.submit(spec).await.unwrap();
    let workflow = handle.wait(WAIT).await.unwrap();
    assert_eq!(
        workflow.state,
        pb::WorkflowState::Completed as i32,
        "{:?}",
        workflow.failure
    );
    stop.cancel();
    timeout(WAIT, join)
        .await
        .expect("the worker stopped in time")
        .expect("no panic")
        .expect("run ended without error");

    let state = client.state().for_workflow(&handle.id);
    let steps: Vec<String> = state.value("/steps").await.unwrap().unwrap();
    assert_eq!(steps, vec!["first", "second"]);
    let result: Value = handle.result(WAIT).await.unwrap();
    assert_eq!(result["seen"], json!(["first"]));

    // The two task writes are recorded as the tasks' attempts, newest first.
    let by_tasks: Vec<(String, i32)> = state
        .checkpoints(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| !c.task_id.is_empty())
        .map(|c| (c.task_id, c.attempt))
        .collect();
    assert_eq!(
        by_tasks,
        vec![("second".to_string(), 1), ("first".to_string(), 1)]
    );
}
