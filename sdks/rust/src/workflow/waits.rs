//! Waits across a sidecar's restarts and its end, against real sidecars:
//! a restart on an older event log, a RESOURCE_EXHAUSTED no retry fixes, a
//! sidecar gone for good. They live in the crate to follow the wait's own
//! watch (`WorkflowHandle::watch`, which tells when its first status came),
//! as the other SDKs' tests follow what their wait's stream receives.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::timeout;

use crate::testing::Sidecar;
use crate::{
    pb, Client, Code, Options, PatchOptions, TaskBuilder, WorkflowBuilder, WorkflowHandle,
};

/// The bound of every wait of a test (a hang guard, not a measure).
const WAIT: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1, to restart sidecars at one target.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A sidecar on `port` with its data in `data` (a restart of an earlier one).
async fn sidecar_at(port: u16, data: &Path) -> Sidecar {
    let listen = format!("127.0.0.1:{port}");
    let data = data.to_str().expect("a UTF-8 path");
    // After the helper's own --listen and --data-dir: the last one given wins.
    Sidecar::start(&["--listen", &listen, "--data-dir", data])
        .await
        .expect("sidecar")
}

/// Follows `handle` as its wait does, in a task of its own; returns once the
/// first status came (so that the watch holds a cursor), with the task.
async fn watching(handle: &WorkflowHandle) -> tokio::task::JoinHandle<crate::Result<pb::Workflow>> {
    let (first_tx, first_rx) = oneshot::channel();
    let handle = handle.clone();
    let watch = tokio::spawn(async move { handle.watch(first_tx).await });
    timeout(WAIT, first_rx)
        .await
        .expect("the wait received the workflow's status in time")
        .expect("the wait received the workflow's status");
    watch
}

/// The sidecar is restarted under a wait on an older copy of its data folder
/// (what a power loss under `--durability relaxed`, or a restored backup,
/// leaves): the wait's cursor is beyond that log's end, and the sidecar
/// refuses it with OUT_OF_RANGE, `SEQUENCE_BEYOND_LOG`. The wait returned
/// that error; as the contract says (and the Python SDK does), it now
/// watches again without the cursor, and returns once the workflow closes.
#[tokio::test]
async fn a_wait_resumed_on_an_older_event_log_goes_on_without_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let snapshot = dir.path().join("snapshot");
    let port = free_port();
    let first = sidecar_at(port, &data).await;
    let client = first.client().await.unwrap();
    let spec = WorkflowBuilder::new("rust-older-log")
        .task(TaskBuilder::new("gate", "rust-nobody").requires_approval())
        .task(TaskBuilder::new("after", "rust-nobody").depends_on(["gate"]));
    let handle = client.submit(spec).await.unwrap();

    // The older log: the data folder as it was before the events below.
    drop(first); // SIGTERM: a graceful stop
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&snapshot)
        .status()
        .unwrap();
    assert!(copied.success(), "copying the data folder: {copied}");
    let mut second = sidecar_at(port, &data).await;
    let other = second.client().await.unwrap();
    let state = other.state().for_workflow(&handle.id);
    for i in 0..20 {
        state
            .patch(json!({ "i": i }), &PatchOptions::default())
            .await
            .unwrap();
    }
    other
        .workflow(&handle.id)
        .approve("gate", "", "")
        .await
        .unwrap();

    let waiting = watching(&handle).await;

    // Back on the older log, which ends before the wait's cursor (the
    // cancel below adds fewer events than the 21 it lacks).
    second.kill();
    drop(second);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&snapshot, &data).unwrap();
    let third = sidecar_at(port, &data).await;
    let last = third.client().await.unwrap();
    last.workflow(&handle.id)
        .cancel("the test is over")
        .await
        .unwrap();
    let closed = timeout(WAIT, waiting)
        .await
        .expect("the wait returned in time")
        .expect("no panic")
        .expect("the wait went on on the older log");
    assert_eq!(closed.state, pb::WorkflowState::Cancelled as i32);
}

/// A wait refused with RESOURCE_EXHAUSTED and no reason (here the sidecar's
/// own message bound, under the request the client sends: a client bound
/// over the sidecar's `--max-message-bytes`) meets it again at every retry:
/// the wait retried it until its timeout. It now returns it, and resumes
/// only a RESOURCE_EXHAUSTED with reason `RESOURCE_LIMIT` (subscribers all
/// taken). A status over the client's own bound is refused on this side
/// (tonic: OUT_OF_RANGE, no reason), and returned too.
#[tokio::test]
async fn a_wait_returns_a_resource_exhausted_no_retry_fixes() {
    let sidecar = Sidecar::start(&["--max-message-bytes", &(32 << 20).to_string()])
        .await
        .expect("sidecar");
    let client = sidecar.client().await.unwrap(); // 64 MiB, over the sidecar's 32
    let long_id = "w".repeat(33 << 20);
    let e = client.workflow(&long_id).wait(WAIT).await.unwrap_err();
    // At most the message's start: it may quote the 33 MiB id.
    let shown = format!("{:.300}", e.to_string());
    assert_eq!(e.code, Code::ResourceExhausted, "{shown}");
    assert_eq!(e.reason, "", "{shown}");

    let handle = client
        .submit(WorkflowBuilder::new(&"n".repeat(256)).task(TaskBuilder::new("a", "rust-nobody")))
        .await
        .unwrap();
    let small = Client::connect(
        &sidecar.target,
        Options {
            max_message_bytes: 200,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = small.workflow(&handle.id).wait(WAIT).await.unwrap_err();
    assert_eq!(e.code, Code::OutOfRange, "{e}");
}

/// The sidecar is killed under a wait and never restarted: the wait retried
/// every two seconds for as long as its timeout allowed (30 years at most).
/// It now returns UNAVAILABLE once the client's reconnect window has passed
/// without an answer, as the Python SDK's wait does.
#[tokio::test]
async fn a_wait_ends_once_the_sidecar_is_silent_for_the_reconnect_window() {
    let mut sidecar = Sidecar::start(&[]).await.expect("sidecar");
    let options = Options {
        reconnect_window: Duration::from_secs(2),
        ..Default::default()
    };
    let client = Client::connect(&sidecar.target, options).await.unwrap();
    let spec = WorkflowBuilder::new("rust-gone").task(TaskBuilder::new("a", "rust-nobody"));
    let handle = client.submit(spec).await.unwrap();
    let waiting = watching(&handle).await;
    sidecar.kill();
    let e = timeout(WAIT, waiting)
        .await
        .expect("the wait returned once the reconnect window passed")
        .expect("no panic")
        .unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
    assert!(e.message.contains("reconnect window"), "{e}");

    // A wait that starts once the sidecar is gone ends the same way, long
    // before its timeout.
    let e = handle.wait(WAIT).await.unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
}
