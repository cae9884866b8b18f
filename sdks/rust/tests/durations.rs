//! Durations past what a `google.protobuf.Duration`, a gRPC deadline or an
//! `Instant` holds, against a real sidecar (one per test), started from the
//! repository's `.venv`. Every wait is bounded; nothing asserts on timing.

use std::time::Duration;

use are_sdk::{
    AgentCard, CacheOptions, Client, Code, TaskBuilder, Worker, WorkerOptions, WorkerTransport,
    WorkflowBuilder,
};
use serde_json::{json, Value};

#[macro_use]
mod common;
use common::{cache_with_namespace, fast, start, Running};

on_both_transports!(a_worker_with_its_durations_at_the_maximum_serves_and_stops);

/// `Duration::MAX` went out as {seconds: -1, nanos: 999999999} (its seconds
/// cast to i64), which the sidecar refused as "got -1e-09s", and a lookup's
/// `max_age` of `Duration::MAX` failed. A duration past the range of
/// `google.protobuf.Duration` (about 10,000 years) is now sent as its
/// largest: a bound that takes it (a lookup's `max_age`) means "any", and
/// one that does not is refused by the sidecar naming the field and its
/// range.
#[tokio::test]
async fn durations_past_a_protobuf_durations_range_are_sent_as_its_largest() {
    let (_sidecar, client) = start().await;
    let spec = WorkflowBuilder::new("rust-forever")
        .task(TaskBuilder::new("t", "nobody").start_to_close_timeout(Duration::MAX));
    let e = client.submit(spec).await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    let why = e
        .field("spec.tasks[0].start_to_close_timeout")
        .unwrap_or_else(|| panic!("{e:?}"));
    assert!(why.contains("got 3.15576e+11s"), "{why}");

    let ns = "rust-forever";
    let cache = cache_with_namespace(&client, ns).await;
    let e = cache
        .store(
            ns,
            "how long",
            &json!("forever"),
            &CacheOptions {
                ttl: Some(Duration::MAX),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    let why = e.field("ttl").unwrap_or_else(|| panic!("{e:?}"));
    assert!(why.contains("at most 366 days"), "{why}");
    let stored = cache
        .store(ns, "how long", &json!("a while"), &CacheOptions::default())
        .await
        .unwrap();
    let any_age = CacheOptions {
        max_age: Some(Duration::MAX),
        ..Default::default()
    };
    let hit = cache.lookup(ns, "how long", &any_age).await.unwrap();
    assert_eq!(hit.map(|h| h.entry_id), Some(stored));

    let e = client
        .router()
        .register_agent(AgentCard {
            description: "waits".into(),
            typical_latency: Some(Duration::MAX),
            ..AgentCard::new("rust-forever")
        })
        .await
        .unwrap_err();
    let why = e
        .field("agent.typical_latency")
        .unwrap_or_else(|| panic!("{e:?}"));
    assert!(why.contains("292 years"), "{why}");
}

/// A worker, and its client, with every duration at `Duration::MAX`: an
/// `Instant` plus its `report_timeout` or `shutdown_grace`, or a gRPC
/// deadline of its heartbeat interval, overflowed (a panic). Each now waits
/// at most 30 years (the longest any of them is scheduled).
async fn a_worker_with_its_durations_at_the_maximum_serves_and_stops(transport: WorkerTransport) {
    let (sidecar, _) = start().await;
    let client = Client::connect(
        &sidecar.target,
        are_sdk::Options {
            connect_timeout: Duration::MAX,
            call_timeout: Duration::MAX,
            keepalive_interval: Some(Duration::MAX),
            keepalive_timeout: Duration::MAX,
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    let options = WorkerOptions {
        heartbeat_interval: Duration::MAX,
        shutdown_grace: Duration::MAX,
        report_timeout: Duration::MAX,
        reconnect_max_delay: Duration::MAX,
        ..fast(transport)
    };
    let worker = Worker::new(&client, "rust-forever", options).handle("rust-forever", |task| {
        async move {
            // Sends a heartbeat now (on the unary path, bounded by the interval).
            task.record_heartbeat(json!({"step": 1}));
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(json!("done"))
        }
    });
    let (running, _) = Running::spawn(worker);
    let spec = WorkflowBuilder::new("rust-forever")
        .task(TaskBuilder::new("t", "rust-forever").max_attempts(1, Duration::from_millis(10)));
    let handle = client.submit(spec).await.unwrap();
    let result: Value = handle.result(Duration::from_secs(20)).await.unwrap();
    assert_eq!(result, json!("done"));
    tokio::time::timeout(Duration::from_secs(30), running.stop())
        .await
        .expect("the worker stopped");
}
