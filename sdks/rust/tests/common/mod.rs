//! Helpers shared by the integration tests (each test file is its own crate,
//! and uses some of them).
#![allow(dead_code, unused_macros)]

use std::sync::Arc;
use std::time::Duration;

use are_sdk::testing::Sidecar;
use are_sdk::{
    pb, Cache, CancellationToken, Client, TaskBuilder, Worker, WorkerOptions, WorkerStats,
    WorkerTransport, WorkflowBuilder,
};
use serde_json::{json, Value};
use tokio::time::timeout;

/// The bound of every wait of a test.
pub const WAIT: Duration = Duration::from_secs(60);

/// A value nesting arrays and objects in turn `depth` deep (`[]` is 1 deep),
/// built a level at a time (`json!` would copy it recursively).
pub fn nested(depth: usize) -> Value {
    let mut value = json!("leaf");
    for level in 0..depth {
        value = if level % 2 == 0 {
            Value::Array(vec![value])
        } else {
            Value::Object(serde_json::Map::from_iter([("a".to_string(), value)]))
        };
    }
    value
}

/// Worker options that keep tests short: a stop is noticed within about 2 s,
/// a cancellation within about 100 ms.
pub fn fast(transport: WorkerTransport) -> WorkerOptions {
    WorkerOptions {
        transport,
        concurrency: 4,
        poll_timeout: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Runs each worker test once per transport: `NAME::unary` and `NAME::stream`.
macro_rules! on_both_transports {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn unary() {
                    super::$name(WorkerTransport::Unary).await
                }

                #[tokio::test]
                async fn stream() {
                    super::$name(WorkerTransport::Stream).await
                }
            }
        )*
    };
}

/// A sidecar and a client of it.
pub async fn start() -> (Sidecar, Client) {
    let sidecar = Sidecar::start(&[]).await.expect("sidecar");
    let client = sidecar.client().await.expect("connect");
    (sidecar, client)
}

/// The cache of `client`, with the namespace `ns` put (the sidecar's defaults
/// for the rest).
pub async fn cache_with_namespace(client: &Client, ns: &str) -> Cache {
    let cache = client.cache();
    cache
        .put_namespace(pb::CacheNamespace {
            name: ns.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    cache
}

/// Runs a worker in the background; the returned guard stops it.
pub struct Running {
    pub stop: CancellationToken,
    pub join: tokio::task::JoinHandle<are_sdk::Result<()>>,
}

impl Running {
    pub fn spawn(worker: Worker) -> (Running, Arc<WorkerStats>) {
        let stop = CancellationToken::new();
        let stats = worker.stats();
        let token = stop.clone();
        let join = tokio::spawn(async move { worker.run(token).await });
        (Running { stop, join }, stats)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        timeout(WAIT, self.join)
            .await
            .expect("the worker stopped in time")
            .expect("no panic")
            .expect("run ended without error");
    }
}

/// Submits a workflow named `name` of one task "x" for the capability of the
/// same name, with a single attempt, and returns the task once the workflow
/// has failed (within 15 s: a task left RUNNING fails the test).
pub async fn failed_task(client: &Client, name: &str) -> pb::Task {
    let spec = WorkflowBuilder::new(name)
        .task(TaskBuilder::new("x", name).max_attempts(1, Duration::from_millis(10)));
    let handle = client.submit(spec).await.unwrap();
    let e = handle
        .result::<Value>(Duration::from_secs(15))
        .await
        .unwrap_err();
    assert_eq!(
        e.reason, "WORKFLOW_FAILED",
        "{e} (the task stayed RUNNING?)"
    );
    let task = handle.task("x").await.unwrap();
    assert_eq!(task.state, pb::TaskState::Failed as i32);
    task
}
