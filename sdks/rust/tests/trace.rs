//! The flight recorder through the Rust API, against a real sidecar (one per
//! test): ListEvents paging and cursors, and a stream read too slowly, which
//! gets the events it missed in their place (or, when asked, the notices).
//! Events are recorded as a worker records them: ReportEvents for an attempt
//! held through PollTask. Every wait is bounded; nothing asserts on timing.

use are_sdk::testing::Sidecar;
use are_sdk::{pb, Client, Code, Options, TaskBuilder, WorkflowBuilder};
use pb::stream_events_response::Message;

#[macro_use]
mod common;
use common::{start, WAIT};

/// An attempt of a task of a new workflow, held through PollTask, to report
/// events for.
async fn held_attempt(client: &Client, name: &str) -> pb::TaskAssignment {
    let spec = WorkflowBuilder::new(name).task(TaskBuilder::new("x", name));
    client.submit(spec).await.unwrap();
    let mut worker = client.raw().worker;
    let polled = tokio::time::timeout(
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
    .unwrap()
    .into_inner();
    polled
        .assignments
        .into_iter()
        .next()
        .expect("the task is assigned")
}

/// Reports `count` WORKER_CUSTOM events of `attempt`, each with `pad_bytes`
/// of attributes, in batches of at most 1 MiB; their sequences.
async fn report(
    client: &Client,
    attempt: &pb::TaskAssignment,
    count: usize,
    pad_bytes: usize,
) -> Vec<u64> {
    // Attribute strings are at most 16 KiB each.
    let pads = pad_bytes.div_ceil(16 * 1024);
    let event = |n: usize| pb::ReportedEvent {
        workflow_id: attempt.workflow_id.clone(),
        task_id: attempt.task_id.clone(),
        attempt: attempt.attempt,
        event_type: pb::EventType::WorkerCustom as i32,
        name: format!("step-{n}"),
        attributes: (0..pads)
            .map(|i| {
                let value = pb::attribute_value::Value::StringValue(
                    "x".repeat((pad_bytes / pads.max(1)).min(16 * 1024)),
                );
                (format!("pad{i}"), pb::AttributeValue { value: Some(value) })
            })
            .collect(),
        ..Default::default()
    };
    let batch = (1024 * 1024 / pad_bytes.max(1)).clamp(1, 1000);
    let mut worker = client.raw().worker;
    let mut sequences = Vec::new();
    let mut n = 0;
    while n < count {
        let events: Vec<_> = (n..count.min(n + batch)).map(event).collect();
        n += events.len();
        let resp = worker
            .report_events(pb::ReportEventsRequest { events })
            .await
            .unwrap()
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

#[tokio::test]
async fn list_events_pages_in_order_from_a_cursor() {
    let (_sidecar, client) = start().await;
    let attempt = held_attempt(&client, "rust-listed").await;
    let sequences = report(&client, &attempt, 25, 0).await;
    assert_eq!(sequences.len(), 25);
    let filter = custom_events_of(&attempt.workflow_id);

    // Pages of 10, 10 and 5, each ascending, the token leading on.
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client.list_events(&filter, 0, 10, &token).await.unwrap();
        pages += 1;
        assert!(page.events.len() <= 10);
        for event in &page.events {
            assert_eq!(event.workflow_id, attempt.workflow_id);
            assert_eq!(event.event_type, pb::EventType::WorkerCustom as i32);
        }
        if let Some(last) = page.events.last() {
            assert!(page.last_sequence >= last.sequence, "{page:?}");
        }
        assert!(page.oldest_retained_sequence >= 1);
        listed.extend(page.events.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "no end of pages");
    }
    assert_eq!(listed, sequences);
    assert!(pages >= 3, "{pages} pages of 10 for 25 events");

    // A cursor: only what comes after it; the whole listing at once.
    let after = client
        .list_events(&filter, sequences[9], 0, "")
        .await
        .unwrap();
    let tail: Vec<u64> = after.events.iter().map(|e| e.sequence).collect();
    assert_eq!(tail, sequences[10..]);
    let all = client.events(&filter, 0, usize::MAX).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        sequences
    );
    let first = client.events(&filter, 0, 3).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        sequences[..3]
    );

    // Following on live from the listing's cursor: no replay, then new events.
    let end = client.list_events(&filter, 0, 1000, "").await.unwrap();
    let mut stream = client
        .stream_events(filter.clone(), Some(end.last_sequence))
        .await
        .unwrap();
    let caught_up = stream.next(WAIT).await.unwrap().expect("open");
    assert!(matches!(caught_up, Message::CaughtUp(_)), "{caught_up:?}");
    let more = report(&client, &attempt, 1, 0).await;
    match stream.next(WAIT).await.unwrap().expect("open") {
        Message::Event(e) => assert_eq!(e.sequence, more[0]),
        other => panic!("{other:?}"),
    }

    // Errors name the field or carry the reason.
    let e = client.list_events(&filter, 0, -1, "").await.unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert!(e.field("page_size").is_some(), "{e}");
    let e = client
        .list_events(&filter, 0, 10, "not-a-token")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::InvalidArgument, "INVALID_PAGE_TOKEN"),
        "{e}"
    );
    let e = client
        .list_events(&filter, u64::MAX / 2, 10, "")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_str()),
        (Code::OutOfRange, "SEQUENCE_BEYOND_LOG"),
        "{e}"
    );
}

/// Events a stream missed because it was read too slowly are fetched and
/// returned in place of the notice, in order and once each; a stream that
/// keeps its notices (opened beside it and held unread alike) shows that the
/// reader did fall behind. The sidecar buffers 16 events per stream here,
/// and each event is 64 KiB: 320 of them (20 MiB) overflow both the buffer
/// and the client's 2 MiB window while the streams are not read. The
/// filling stream's client takes messages of at most 1 MiB, so the fill's
/// first pages are refused as too large and it fetches fewer at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_the_events_it_missed_in_order_once() {
    let sidecar = Sidecar::start(&["--event-stream-buffer", "16"])
        .await
        .expect("sidecar");
    let client = sidecar.client().await.unwrap();
    let attempt = held_attempt(&client, "rust-missed").await;
    let filter = custom_events_of(&attempt.workflow_id);
    // The filling stream's client takes messages of at most 1 MiB: a page
    // of the missed events is larger, and the fill fetches fewer at a time.
    let small = Client::connect(
        &sidecar.target,
        Options {
            max_message_bytes: 1024 * 1024,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut filled = small.stream_events(filter.clone(), None).await.unwrap();
    let mut noticed = client
        .stream_events(filter.clone(), None)
        .await
        .unwrap()
        .fill_missed(false);
    for stream in [&mut filled, &mut noticed] {
        let first = stream.next(WAIT).await.unwrap().expect("open");
        assert!(matches!(first, Message::CaughtUp(_)), "{first:?}");
    }
    let sequences = report(&client, &attempt, 320, 64 * 1024).await; // not reading meanwhile

    let mut delivered = 0;
    let mut notices = Vec::new();
    while delivered
        + notices
            .iter()
            .map(|m: &pb::EventsMissed| m.missed_count)
            .sum::<u64>()
        < sequences.len() as u64
    {
        match noticed.next(WAIT).await.unwrap().expect("open") {
            Message::Event(_) => delivered += 1,
            Message::Missed(m) => notices.push(m),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        !notices.is_empty(),
        "the reader never fell behind: raise the event count"
    );
    for notice in &notices {
        assert_eq!(notice.reason, pb::MissedReason::SlowSubscriber as i32);
    }

    let mut received = Vec::new();
    while received.len() < sequences.len() {
        match filled.next(WAIT).await.unwrap().expect("open") {
            Message::Event(e) => received.push(e.sequence),
            other => panic!("a notice or marker among the events: {other:?}"),
        }
    }
    assert_eq!(received, sequences, "every event, in order, once");
    // And the stream goes on live after them.
    let more = report(&client, &attempt, 1, 0).await;
    match filled.next(WAIT).await.unwrap().expect("open") {
        Message::Event(e) => assert_eq!(e.sequence, more[0]),
        other => panic!("{other:?}"),
    }
}
