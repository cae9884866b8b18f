//! Event streams that receive batches (`max_batch`), against real sidecars:
//! the events of a batch come out one by one, in order, once each, with the
//! markers and cursors of a stream of single events. They live in the crate
//! to count the batches a stream received, which the API does not show.
//! Every wait is bounded; nothing asserts on timing.

use std::time::Duration;

use tokio::time::timeout;

use crate::pb::stream_events_response::Message;
use crate::testing::Sidecar;
use crate::{pb, Client, EventStream, Options, TaskBuilder, WorkflowBuilder};

/// The bound of every wait of a test (a hang guard, not a measure).
const WAIT: Duration = Duration::from_secs(60);

/// An attempt of a task of a new workflow, held through PollTask, to report
/// events for.
async fn held_attempt(client: &Client, name: &str) -> pb::TaskAssignment {
    let spec = WorkflowBuilder::new(name).task(TaskBuilder::new("x", name));
    client.submit(spec).await.expect("submit");
    let mut worker = client.raw().worker;
    let polled = timeout(
        WAIT,
        worker.poll_task(pb::PollTaskRequest {
            worker_name: name.into(),
            capabilities: vec![name.into()],
            max_tasks: 1,
            identity: String::new(),
        }),
    )
    .await
    .expect("an assignment in time")
    .expect("PollTask")
    .into_inner();
    polled
        .assignments
        .into_iter()
        .next()
        .expect("the task is assigned")
}

/// Reports `count` WORKER_CUSTOM events of `attempt` with `pad_bytes` of
/// attributes each (at most 16 KiB), in ReportEvents calls of up to 1,000;
/// their sequences.
async fn report(
    client: &Client,
    attempt: &pb::TaskAssignment,
    count: usize,
    pad_bytes: usize,
) -> Vec<u64> {
    let event = |n: usize| pb::ReportedEvent {
        workflow_id: attempt.workflow_id.clone(),
        task_id: attempt.task_id.clone(),
        attempt: attempt.attempt,
        event_type: pb::EventType::WorkerCustom as i32,
        name: format!("step-{n}"),
        attributes: [(
            "pad".to_string(),
            pb::AttributeValue {
                value: Some(pb::attribute_value::Value::StringValue(
                    "x".repeat(pad_bytes),
                )),
            },
        )]
        .into(),
        ..Default::default()
    };
    let mut worker = client.raw().worker;
    let mut sequences = Vec::new();
    let per_call = (1024 * 1024 / pad_bytes.max(1)).clamp(1, 1000);
    while sequences.len() < count {
        let n = sequences.len();
        let events = (n..count.min(n + per_call)).map(event).collect();
        let resp = worker
            .report_events(pb::ReportEventsRequest { events })
            .await
            .expect("ReportEvents")
            .into_inner();
        sequences.extend(resp.sequences);
    }
    sequences
}

fn custom_events_of(workflow_id: &str) -> pb::EventFilter {
    pb::EventFilter {
        workflow_ids: vec![workflow_id.to_string()],
        event_types: vec![pb::EventType::WorkerCustom as i32],
        ..Default::default()
    }
}

/// The sequences of the events `stream` returns up to its `CaughtUp` (whose
/// sequence it returns too); a notice among them fails the test.
async fn replay(stream: &mut EventStream) -> (Vec<u64>, u64) {
    let mut sequences = Vec::new();
    loop {
        match stream.next(WAIT).await.expect("next").expect("open") {
            Message::Event(e) => sequences.push(e.sequence),
            Message::CaughtUp(c) => return (sequences, c.sequence),
            other => panic!("{other:?} in a replay"),
        }
    }
}

/// A replay of 600 events, all ready at once, comes in batches of up to 256
/// (it came one event per message: the stream did not ask for batches), and
/// the stream returns them one by one: every event, in order, once, then
/// `CaughtUp`. A stream resumed from an event inside a batch starts right
/// after it, and a burst of live events comes out in order too.
#[tokio::test]
async fn a_replay_comes_in_batches_returned_one_by_one_in_order() {
    let sidecar = Sidecar::start(&[]).await.expect("sidecar");
    let client = sidecar.client().await.expect("connect");
    let attempt = held_attempt(&client, "rust-batched").await;
    let filter = custom_events_of(&attempt.workflow_id);
    let sequences = report(&client, &attempt, 600, 0).await;

    let mut stream = client.stream_events(filter.clone(), Some(0)).await.unwrap();
    let (replayed, caught_up) = replay(&mut stream).await;
    assert_eq!(replayed, sequences, "every event, in order, once");
    assert!(caught_up >= sequences[599], "{caught_up}");
    assert!(
        stream.received.batches > 0,
        "600 events ready at once and no batch: the stream did not ask for them"
    );
    assert!(
        stream.received.batches <= 600 / 2,
        "{} batches of 600 events",
        stream.received.batches
    );

    // Live: a burst, in order, once.
    let burst = report(&client, &attempt, 300, 0).await;
    let mut live = Vec::new();
    while live.len() < burst.len() {
        match stream.next(WAIT).await.unwrap().expect("open") {
            Message::Event(e) => live.push(e.sequence),
            other => panic!("{other:?} among live events"),
        }
    }
    assert_eq!(live, burst);

    // Resuming from an event that came inside a batch (the 101st): the next.
    let mut resumed = client
        .stream_events(filter, Some(sequences[100]))
        .await
        .unwrap();
    let (again, _) = replay(&mut resumed).await;
    let rest: Vec<u64> = sequences[101..].iter().chain(&burst).copied().collect();
    assert_eq!(again, rest);
}

/// A client that takes messages under 4 MiB (a batch's bound) does not ask
/// for batches, which it could not receive: its events come one per
/// message, all of them, in order.
#[tokio::test]
async fn a_client_taking_small_messages_gets_single_events() {
    let sidecar = Sidecar::start(&[]).await.expect("sidecar");
    let client = sidecar.client().await.expect("connect");
    let small = Client::connect(
        &sidecar.target,
        Options {
            max_message_bytes: 1024 * 1024,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let attempt = held_attempt(&client, "rust-unbatched").await;
    let filter = custom_events_of(&attempt.workflow_id);
    let sequences = report(&client, &attempt, 300, 0).await;
    let mut stream = small.stream_events(filter, Some(0)).await.unwrap();
    let (replayed, _) = replay(&mut stream).await;
    assert_eq!(replayed, sequences);
    assert_eq!(stream.received.batches, 0);
}

/// A batched stream read too slowly (the sidecar buffers 16 events per
/// stream here; 1,000 events of 16 KiB overflow it and the client's window
/// while the stream is not read) still returns every event, in order, once:
/// batches and the events fetched in place of the notices alike.
#[tokio::test]
async fn a_batched_stream_read_too_slowly_gets_every_event_in_order_once() {
    let sidecar = Sidecar::start(&["--event-stream-buffer", "16"])
        .await
        .expect("sidecar");
    let client = sidecar.client().await.expect("connect");
    let attempt = held_attempt(&client, "rust-batched-slow").await;
    let filter = custom_events_of(&attempt.workflow_id);
    let mut stream = client.stream_events(filter, None).await.unwrap();
    let (none, _) = replay(&mut stream).await;
    assert!(none.is_empty());
    let sequences = report(&client, &attempt, 1000, 16 * 1024).await; // not reading meanwhile
    let mut received = Vec::new();
    while received.len() < sequences.len() {
        match stream.next(WAIT).await.unwrap().expect("open") {
            Message::Event(e) => received.push(e.sequence),
            other => panic!("a notice or marker among the events: {other:?}"),
        }
    }
    assert_eq!(received, sequences, "every event, in order, once");
    assert!(
        stream.received.fills > 0,
        "the reader never fell behind: raise the event count"
    );
    let more = report(&client, &attempt, 1, 0).await;
    match stream.next(WAIT).await.unwrap().expect("open") {
        Message::Event(e) => assert_eq!(e.sequence, more[0]),
        other => panic!("{other:?}"),
    }
}
