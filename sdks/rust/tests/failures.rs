//! The SDK under failures, against a real sidecar (one per test): handlers
//! that panic or ignore their token, streams that break, a sidecar that is
//! full or gone. Connections are broken by a TCP proxy between the client and
//! the sidecar, as a network would break them. Every wait is bounded; where
//! a test counts reconnections or measures a delay, it checks a bound the SDK
//! guarantees (a least delay, a most rate), with a wide margin.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use are_sdk::testing::Sidecar;
use are_sdk::{
    pb, CacheOptions, Client, Code, GetOrCallError, Options, ServingStatus, TaskBuilder, TaskError,
    Worker, WorkerOptions, WorkerTransport, WorkflowBuilder,
};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout};

#[macro_use]
mod common;
use common::{cache_with_namespace, failed_task, fast, start, Running, WAIT};

on_both_transports!(
    a_panicking_handler_is_reported_and_the_worker_goes_on,
    usage_past_the_largest_counter_is_not_a_panic,
    a_handler_that_ignores_the_stop_is_not_left_running,
    an_attempt_already_released_does_not_hold_up_the_drain,
    heartbeat_details_over_the_bound_do_not_give_the_attempt_up,
);

/// A TCP proxy in front of a sidecar, to break connections as a network
/// would: [`Proxy::cut`] closes every open connection, and with `cut_after`
/// each connection is closed that long after it opened. A proxy made by
/// [`Proxy::watching`] notes instead when the client sends given bytes.
struct Proxy {
    target: String,
    accepted: Arc<AtomicUsize>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
    /// When the client sent the watched bytes.
    sightings: Arc<Mutex<Vec<Instant>>>,
}

impl Proxy {
    async fn start(upstream: &str, cut_after: Option<Duration>) -> Proxy {
        Proxy::open(upstream, cut_after, None).await
    }

    /// A proxy that notes each time the client sends `marker` (a worker's
    /// name, which each of its registrations carries).
    async fn watching(upstream: &str, marker: &[u8]) -> Proxy {
        Proxy::open(upstream, None, Some(marker.to_vec())).await
    }

    async fn open(upstream: &str, cut_after: Option<Duration>, marker: Option<Vec<u8>>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let sightings = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let accept = tokio::spawn({
            let (accepted, connections) = (accepted.clone(), connections.clone());
            let sightings = sightings.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (upstream, marker) = (upstream.clone(), marker.clone());
                    let sightings = sightings.clone();
                    let relay = tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await
                        else {
                            return;
                        };
                        let relay = async {
                            match &marker {
                                None => drop(
                                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                        .await,
                                ),
                                Some(marker) => {
                                    let (mut from_client, mut to_client) = inbound.split();
                                    let (mut from_server, mut to_server) = outbound.split();
                                    tokio::select! {
                                        _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
                                        _ = relay_watching(&mut from_client, &mut to_server, marker, &sightings) => {}
                                    }
                                }
                            }
                        };
                        match cut_after {
                            Some(after) => drop(timeout(after, relay).await),
                            None => relay.await,
                        }
                    });
                    connections.lock().unwrap().push(relay.abort_handle());
                }
            }
        });
        Proxy {
            target,
            accepted,
            connections,
            accept,
            sightings,
        }
    }

    /// Closes every connection open now.
    fn cut(&self) {
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to`, noting when `marker` goes through.
async fn relay_watching(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    marker: &[u8],
    sightings: &Mutex<Vec<Instant>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 64 * 1024];
    let mut seen = Vec::new(); // the end of what went through, for a marker cut in two
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        seen.extend_from_slice(&buf[..n]);
        let mut from_here = 0;
        while let Some(at) = seen[from_here..]
            .windows(marker.len())
            .position(|w| w == marker)
        {
            sightings.lock().unwrap().push(Instant::now());
            from_here += at + marker.len();
        }
        let keep_from = seen.len().saturating_sub(marker.len() - 1).max(from_here);
        seen.drain(..keep_from);
    }
}

/// A handler closure that panics before it returns its future, and one whose
/// future panics with a payload that is not a string, each fail their
/// attempt with a failure of type "panic" (the first one used to panic in
/// the SDK's own task: its attempt was never reported and, heartbeated on,
/// stayed RUNNING forever); the worker then serves the next task.
async fn a_panicking_handler_is_reported_and_the_worker_goes_on(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-panicker", fast(transport))
        .handle("rust-panic-early", |task| {
            assert!(task.task_id.is_empty(), "the handler's own bug");
            async move { Ok(json!("unreachable")) }
        })
        .handle("rust-panic-any", |_task| async move {
            std::panic::panic_any(42_u32);
        })
        .handle("rust-fine", |_task| async move { Ok(json!("fine")) });
    let (running, stats) = Running::spawn(worker);
    let early = failed_task(&client, "rust-panic-early")
        .await
        .failure
        .unwrap();
    assert_eq!(early.r#type, "panic");
    assert!(
        early.message.contains("the handler's own bug"),
        "{}",
        early.message
    );
    let any = failed_task(&client, "rust-panic-any")
        .await
        .failure
        .unwrap();
    assert_eq!(
        (any.r#type.as_str(), any.message.as_str()),
        (
            "panic",
            "handler panicked (with a payload that is not a string)"
        )
    );
    let fine = client
        .submit(WorkflowBuilder::new("rust-fine").task(TaskBuilder::new("x", "rust-fine")))
        .await
        .unwrap();
    assert_eq!(fine.result::<String>(WAIT).await.unwrap(), "fine");
    running.stop().await;
    assert_eq!(stats.failed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.completed.load(Ordering::Relaxed), 1);
}

/// Usage added past the largest counter stays at the largest: the sum used
/// to overflow, a panic in the handler while it held the usage's lock, and
/// the SDK's own read of the poisoned lock then panicked, so the attempt
/// was never reported.
async fn usage_past_the_largest_counter_is_not_a_panic(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-spender", fast(transport)).handle(
        "rust-spend",
        |task| async move {
            for _ in 0..2 {
                task.add_usage(pb::Usage {
                    input_tokens: i64::MAX,
                    llm_calls: 1,
                    ..Default::default()
                });
            }
            Ok(json!("spent"))
        },
    );
    let (running, stats) = Running::spawn(worker);
    let handle =
        client
            .submit(WorkflowBuilder::new("rust-spend").task(
                TaskBuilder::new("x", "rust-spend").max_attempts(1, Duration::from_millis(10)),
            ))
            .await
            .unwrap();
    let result = handle.result::<String>(Duration::from_secs(15)).await;
    assert_eq!(result.expect("the task completed"), "spent");
    let usage = handle
        .task("x")
        .await
        .unwrap()
        .usage
        .unwrap()
        .usage
        .unwrap();
    assert_eq!((usage.input_tokens, usage.llm_calls), (i64::MAX, 2));
    running.stop().await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), 1);
}

/// A handler that ignores its token past the worker's stop: once `run` has
/// returned, its task is not left RUNNING. On the unary path nothing used to
/// be reported for it, and its heartbeats went on after `run` returned, so
/// the task stayed RUNNING for good; now the worker reports it failed as
/// WORKER_LOST. On the stream, closing the stream hands it back.
async fn a_handler_that_ignores_the_stop_is_not_left_running(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(1);
    let options = WorkerOptions {
        shutdown_grace: Duration::from_millis(500),
        report_timeout: Duration::from_secs(4),
        ..fast(transport)
    };
    let worker =
        Worker::new(&client, "rust-stubborn", options).handle("rust-stubborn", move |_task| {
            let started = started_tx.clone();
            async move {
                started.send(()).await.ok();
                sleep(Duration::from_secs(3600)).await; // deaf to its token
                Ok(json!("too late"))
            }
        });
    let (running, _stats) = Running::spawn(worker);
    let handle = client
        .submit(WorkflowBuilder::new("rust-stubborn").task(
            TaskBuilder::new("x", "rust-stubborn").max_attempts(1, Duration::from_millis(10)),
        ))
        .await
        .unwrap();
    timeout(WAIT, started_rx.recv())
        .await
        .expect("the handler started");
    running.stop().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let task = handle.task("x").await.unwrap();
        if task.state != pb::TaskState::Running as i32 {
            if transport == WorkerTransport::Unary {
                let failure = task.failure.expect("a failure");
                assert_eq!(
                    failure.kind,
                    pb::FailureKind::WorkerLost as i32,
                    "{failure:?}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task stayed RUNNING after the worker stopped"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// A handler that goes on after its attempt was cancelled (deaf to its
/// token) does not hold up the worker's stop: the sidecar released the
/// attempt, so the drain has nothing to wait for. It used to wait the whole
/// shutdown grace.
async fn an_attempt_already_released_does_not_hold_up_the_drain(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let (fired_tx, mut fired_rx) = tokio::sync::mpsc::channel(1);
    let options = WorkerOptions {
        shutdown_grace: Duration::from_secs(300),
        report_timeout: Duration::from_secs(300),
        ..fast(transport)
    };
    let worker = Worker::new(&client, "rust-deaf", options).handle("rust-deaf", move |task| {
        let fired = fired_tx.clone();
        async move {
            let token = task.cancellation().clone();
            tokio::spawn(async move {
                token.cancelled().await;
                fired.send(()).await.ok();
            });
            sleep(Duration::from_secs(3600)).await; // deaf to its token
            Ok(json!("too late"))
        }
    });
    let (running, stats) = Running::spawn(worker);
    let handle = client
        .submit(WorkflowBuilder::new("rust-deaf").task(TaskBuilder::new("x", "rust-deaf")))
        .await
        .unwrap();
    sleep_until_running(&handle).await;
    handle.cancel("no longer needed").await.unwrap();
    timeout(WAIT, fired_rx.recv())
        .await
        .expect("the handler's token fired");
    let Running { stop, join } = running;
    stop.cancel();
    timeout(Duration::from_secs(30), join)
        .await
        .expect("the stop did not wait for a released attempt")
        .unwrap()
        .unwrap();
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 1);
}

/// Heartbeat details over the sidecar's 1 MiB bound are not sent (the
/// heartbeat goes without them) and the attempt stays the handler's. On the
/// stream the sidecar's refusal of such a heartbeat used to be taken for a
/// lost lease: the handler's token fired and its result was never reported,
/// while the sidecar held the attempt RUNNING until its start-to-close
/// timeout (10 minutes by default, 5 s here).
async fn heartbeat_details_over_the_bound_do_not_give_the_attempt_up(transport: WorkerTransport) {
    let (_sidecar, client) = start().await;
    let worker = Worker::new(&client, "rust-chatty", fast(transport)).handle(
        "rust-chatty",
        |task| async move {
            task.record_heartbeat(json!({ "notes": "x".repeat(2 * 1024 * 1024) }));
            sleep(Duration::from_millis(500)).await; // the heartbeat and any refusal went by
            task.record_heartbeat(json!({ "step": 2 }));
            sleep(Duration::from_millis(300)).await;
            Ok(json!({ "cancelled": format!("{:?}", task.cancel_reason()) }))
        },
    );
    let (running, stats) = Running::spawn(worker);
    let handle = client
        .submit(
            WorkflowBuilder::new("rust-chatty").task(
                TaskBuilder::new("x", "rust-chatty")
                    .max_attempts(1, Duration::from_millis(10))
                    .start_to_close_timeout(Duration::from_secs(5)),
            ),
        )
        .await
        .unwrap();
    let result: Value = handle
        .result(Duration::from_secs(15))
        .await
        .expect("the attempt's result was reported");
    assert_eq!(result, json!({ "cancelled": "None" }));
    running.stop().await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 0);
}

/// Waits until the workflow's task "x" runs.
async fn sleep_until_running(handle: &are_sdk::WorkflowHandle) {
    let deadline = Instant::now() + WAIT;
    while handle.task("x").await.unwrap().state != pb::TaskState::Running as i32 {
        assert!(Instant::now() < deadline, "the task never ran");
        sleep(Duration::from_millis(50)).await;
    }
}

/// An `are_sdk::Error` a handler returns with `?` passes the sidecar's retry
/// hint on as the failure's `retry_after`: here a submit over the sidecar's
/// open-task bound, RESOURCE_EXHAUSTED with a 5 s RetryInfo, and the retry
/// comes no sooner (its policy alone would retry within 10 ms).
#[tokio::test]
async fn a_handlers_error_passes_the_sidecars_retry_hint_on() {
    let sidecar = Sidecar::start(&["--max-open-tasks", "1"]).await.unwrap();
    let client = sidecar.client().await.unwrap();
    let calls = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let (hint_tx, mut hint_rx) = tokio::sync::mpsc::channel(1);
    let worker =
        Worker::new(&client, "rust-hinted", fast(WorkerTransport::Stream)).handle("rust-hinted", {
            let (client, calls) = (client.clone(), calls.clone());
            move |task| {
                let (client, calls, hint) = (client.clone(), calls.clone(), hint_tx.clone());
                async move {
                    let began = Instant::now();
                    let extra = WorkflowBuilder::new("rust-extra")
                        .task(TaskBuilder::new("y", "rust-nobody-serves-this"));
                    let submitted = if task.attempt == 1 {
                        let submitted = client.submit(extra).await;
                        if let Err(e) = &submitted {
                            hint.send((e.code, e.retry_delay)).await.ok();
                        }
                        submitted.map(|_| ())
                    } else {
                        Ok(())
                    };
                    calls.lock().unwrap().push((began, Instant::now()));
                    submitted?;
                    Ok(json!("done"))
                }
            }
        });
    let (running, _) = Running::spawn(worker);
    let handle =
        client
            .submit(WorkflowBuilder::new("rust-hinted").task(
                TaskBuilder::new("x", "rust-hinted").max_attempts(2, Duration::from_millis(10)),
            ))
            .await
            .unwrap();
    assert_eq!(handle.result::<String>(WAIT).await.unwrap(), "done");
    let (code, hint) = hint_rx.recv().await.unwrap();
    assert_eq!(code, Code::ResourceExhausted);
    let hint = hint.expect("the refusal carried a retry hint");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let waited = calls[1].0.duration_since(calls[0].1);
    assert!(
        waited >= hint,
        "retried {waited:?} after the failure, before the sidecar's hint of {hint:?}"
    );
    running.stop().await;
}

/// A stream that breaks soon after each registration is reopened with a
/// backoff that keeps growing: it used to go back to 50 ms at every
/// registration, so such a sidecar saw several reconnections a second. Over
/// 8 s, a doubling backoff (from 50 ms, each pause a full-jitter draw)
/// allows about 8 streams, and more than 13 only by a very unlikely draw; a
/// backoff reset at each registration made about 20.
#[tokio::test]
async fn a_stream_broken_after_each_registration_is_reopened_with_a_growing_backoff() {
    let (sidecar, _) = start().await;
    let proxy = Proxy::start(&sidecar.target, Some(Duration::from_millis(300))).await;
    let client = Client::connect(&proxy.target, Options::default())
        .await
        .unwrap();
    let worker = Worker::new(&client, "rust-flapping", fast(WorkerTransport::Stream))
        .handle("rust-flap", |_task| async move { Ok(Value::Null) });
    let (running, stats) = Running::spawn(worker);
    sleep(Duration::from_secs(8)).await;
    let connects = stats.connects.load(Ordering::Relaxed);
    running.stop().await;
    assert!(connects >= 2, "{connects} streams: it did not reconnect");
    assert!(
        connects <= 13,
        "{connects} streams in 8 s: the backoff went back to its start at each registration"
    );
}

/// A wait whose connection breaks resumes: tonic reports the broken
/// connection as UNKNOWN, which the wait used to return as its error.
#[tokio::test]
async fn a_wait_resumes_after_its_connection_breaks() {
    let (sidecar, direct) = start().await;
    let (proxy, _client, handle, waiting) = waiting_through_a_proxy(&sidecar, "rust-cut").await;
    sleep(Duration::from_millis(500)).await;
    proxy.cut();
    sleep(Duration::from_millis(200)).await;
    assert_the_wait_sees_a_cancel(
        &direct,
        &handle,
        waiting,
        "the wait resumed after its connection broke",
    )
    .await;
}

/// A watch resumed while every subscriber of the sidecar's flight recorder
/// is taken is refused with RESOURCE_EXHAUSTED and a 1 s hint: the wait
/// resumes after the hint instead of returning that error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_refused_for_want_of_subscribers_resumes_after_the_hint() {
    let (sidecar, direct) = start().await;
    let (proxy, _client, handle, waiting) = waiting_through_a_proxy(&sidecar, "rust-watched").await;
    // Give the watch time to receive its first status (the sequence it resumes from).
    sleep(Duration::from_secs(1)).await;
    // Take every subscriber (a resumed watch needs one), 500 streams per
    // connection (the sidecar serves 1,024 at once on one).
    let mut subscribers = Vec::new();
    let mut clients = vec![direct.clone()];
    let refusal = loop {
        if subscribers.len() >= 500 * clients.len() {
            clients.push(sidecar.client().await.unwrap());
        }
        let opened = clients
            .last()
            .unwrap()
            .stream_events(pb::EventFilter::default(), None)
            .await;
        match opened {
            Ok(stream) => subscribers.push(stream),
            Err(e) => break e,
        }
        assert!(subscribers.len() <= 5000, "no bound on subscribers?");
    };
    assert_eq!(refusal.code, Code::ResourceExhausted, "{refusal}");
    assert!(refusal.retry_delay.is_some(), "{refusal}");
    // The wait's stream breaks; its resumption is refused.
    proxy.cut();
    sleep(Duration::from_millis(500)).await;
    drop(subscribers);
    assert_the_wait_sees_a_cancel(&direct, &handle, waiting, "the wait resumed after the hint")
        .await;
}

/// Trace streams left unread (or read slowly) hold up no other call of the
/// client: their events wait in the client, each stream's bounded by its
/// HTTP/2 window (2 MiB). The connection's own window was 5 MiB, so three
/// such streams took all of it and every other call on the connection (a
/// worker's stream and heartbeats, unary calls) waited until they were read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_streams_left_unread_hold_up_no_other_call_of_the_client() {
    let (sidecar, busy) = start().await;
    let client = sidecar.client().await.unwrap();
    let mut unread = Vec::new();
    for _ in 0..4 {
        let stream = client.stream_events(pb::EventFilter::default(), None);
        unread.push(stream.await.unwrap());
    }
    // Each workflow's events quote its task's failure, 30,000 bytes, at
    // least once: 80 of them send every stream more than 2 MiB.
    let options = WorkerOptions {
        concurrency: 16,
        ..fast(WorkerTransport::Stream)
    };
    let worker =
        Worker::new(&busy, "rust-verbose", options).handle("rust-verbose", |_task| async move {
            Err::<Value, _>(TaskError::new("Verbose", "m".repeat(30_000)).non_retryable())
        });
    let (running, _stats) = Running::spawn(worker);
    let mut handles = Vec::new();
    for _ in 0..80 {
        let spec = WorkflowBuilder::new("rust-verbose")
            .task(TaskBuilder::new("x", "rust-verbose").max_attempts(1, Duration::from_millis(10)));
        handles.push(busy.submit(spec).await.unwrap());
    }
    for handle in &handles {
        let workflow = handle.wait(WAIT).await.unwrap();
        assert_eq!(workflow.state, pb::WorkflowState::Failed as i32);
    }
    let health = timeout(Duration::from_secs(5), client.health()).await;
    assert_eq!(
        health
            .expect("the health check answered beside the unread streams")
            .unwrap(),
        ServingStatus::Serving
    );
    for stream in &mut unread {
        let message = stream.next(Duration::from_secs(5)).await.unwrap();
        assert!(message.is_some(), "the stream goes on where it was");
    }
    running.stop().await;
}

/// A cache that cannot be reached does not stop the call it stands in front
/// of: `get_or_call` makes the call and returns its answer (not stored).
/// Other lookup errors (an unknown namespace) are returned, without a call.
#[tokio::test]
async fn get_or_call_makes_the_call_when_the_cache_is_down() {
    let (sidecar, client) = start().await;
    let cache = client.cache();
    let options = CacheOptions::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let call = {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>((json!(42), None))
        }
    };
    let e = cache
        .get_or_call("rust-no-such-namespace", "6 x 7?", &options, call.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GetOrCallError::Cache(e) if e.code == Code::NotFound),
        "{e}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    tokio::task::spawn_blocking(move || drop(sidecar))
        .await
        .unwrap();
    let got = cache
        .get_or_call("rust-down", "6 x 7?", &options, call)
        .await
        .expect("the call answers while the cache is down");
    assert_eq!((got.value, got.hit.is_none()), (json!(42), true));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Not stored, and the lookup's error says why.
    let e = got.stored.expect("the call was made").unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
}

/// An answer paid for is returned even when it cannot be stored (here the
/// sidecar goes away while the call runs), with the store's error.
#[tokio::test]
async fn get_or_call_returns_the_answer_when_the_store_fails() {
    let (sidecar, client) = start().await;
    let ns = "rust-store-fails";
    let cache = cache_with_namespace(&client, ns).await;
    let got = cache
        .get_or_call(ns, "6 x 7?", &CacheOptions::default(), move || async move {
            tokio::task::spawn_blocking(move || drop(sidecar))
                .await
                .unwrap();
            Ok::<_, Infallible>((json!(42), None))
        })
        .await
        .expect("the answer is returned although it was not stored");
    assert_eq!((&got.value, got.hit.is_none()), (&json!(42), true));
    let e = got.store_error().expect("the store's failure is reported");
    assert_eq!(e.code, Code::Unavailable, "{e}");
}

/// A store the sidecar refuses (here for a metadata key outside the id
/// alphabet, which the lookup does not send) was dropped without a word: the
/// caller could not tell the answer was never cached. The answer is returned
/// with the sidecar's refusal, naming the field; the next call is a miss.
#[tokio::test]
async fn get_or_call_reports_a_refused_store() {
    let (_sidecar, client) = start().await;
    let ns = "rust-store-refused";
    let cache = cache_with_namespace(&client, ns).await;
    let options = CacheOptions {
        metadata: HashMap::from([("not a key".to_string(), "v".to_string())]),
        ..Default::default()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let call = {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>((json!(42), None))
        }
    };
    for i in 1..=2 {
        let got = cache
            .get_or_call(ns, "6 x 7?", &options, call.clone())
            .await
            .expect("the answer is returned although it was not stored");
        assert_eq!((&got.value, got.from_cache()), (&json!(42), false));
        let e = got
            .store_error()
            .unwrap_or_else(|| panic!("call #{i}: the refusal is reported: {:?}", got.stored));
        assert_eq!(
            (e.code, e.reason.as_str()),
            (Code::InvalidArgument, "INVALID_ARGUMENT"),
            "{e}"
        );
        assert!(e.field(r#"metadata["not a key"]"#).is_some(), "{e:?}");
        assert_eq!(calls.load(Ordering::SeqCst), i, "nothing was cached");
    }
}

/// A worker refused because the sidecar serves as many workers as it can
/// (RESOURCE_EXHAUSTED, 5 s RetryInfo) waits out that hint before it tries
/// again; it used to retry within its own backoff (here at most 200 ms). The
/// sidecar's bound is 10,000 workers, all registered here first (about 20 s
/// on two idle cores); a proxy notes when the worker's registrations go
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "registers 10,000 worker streams (40-70 s on both of CI's cores): run with `cargo test -- --ignored`"]
async fn a_worker_refused_at_the_worker_bound_waits_out_the_hint() {
    let (sidecar, _) = start().await;
    let mut clients = Vec::new();
    for _ in 0..11 {
        clients.push(sidecar.client().await.unwrap());
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(100));
    let mut registering = tokio::task::JoinSet::new();
    let mut fillers = Vec::new();
    // The sidecar ends a worker stream silent for 30 s: the fillers ping
    // (through weak senders, so that dropping a filler still ends its stream).
    let pinged = Arc::new(Mutex::new(Vec::<tokio::sync::mpsc::WeakSender<_>>::new()));
    let pinger = tokio::spawn({
        let pinged = pinged.clone();
        async move {
            loop {
                sleep(Duration::from_secs(5)).await;
                let ping = pb::ConnectRequest {
                    message: Some(pb::connect_request::Message::Heartbeat(
                        pb::HeartbeatBatch::default(),
                    )),
                };
                for tx in pinged.lock().unwrap().iter() {
                    if let Some(tx) = tx.upgrade() {
                        let _ = tx.try_send(ping.clone());
                    }
                }
            }
        }
    });
    while fillers.len() < 10_000 {
        for i in fillers.len()..10_000 {
            let (stub, slots) = (clients[i % 10].raw().worker, slots.clone());
            registering.spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                register_raw(stub, "rust-filler").await
            });
        }
        while let Some(registered) = registering.join_next().await {
            // A few are cancelled while the sidecar is this busy: again.
            if let Ok(filler) = registered.unwrap() {
                pinged.lock().unwrap().push(filler.0.downgrade());
                fillers.push(filler);
            }
        }
    }
    let refused = register_raw(clients[10].raw().worker, "rust-probe")
        .await
        .map(|_| ())
        .map_err(are_sdk::Error::from)
        .unwrap_err();
    assert_eq!(refused.code, Code::ResourceExhausted, "{refused}");
    let hint = refused.retry_delay.expect("a retry hint");
    // The worker's registrations, as they go to the sidecar: refused, then
    // tried again.
    let proxy = Proxy::watching(&sidecar.target, b"rust-latecomer").await;
    let client = Client::connect(&proxy.target, Options::default())
        .await
        .unwrap();
    let options = WorkerOptions {
        reconnect_max_delay: Duration::from_millis(200),
        ..fast(WorkerTransport::Stream)
    };
    let worker = Worker::new(&client, "rust-latecomer", options)
        .handle("rust-late", |_task| async move { Ok(Value::Null) });
    let (running, stats) = Running::spawn(worker);
    // A registration refused with the hint is followed by a pause at least
    // as long; one that fails otherwise (this busy, the sidecar cancels a
    // few) by the usual backoff, at most 200 ms here.
    let deadline = Instant::now() + WAIT;
    let gaps = loop {
        let gaps: Vec<Duration> = {
            let sightings = proxy.sightings.lock().unwrap();
            sightings.windows(2).map(|w| w[1] - w[0]).collect()
        };
        if gaps.iter().any(|g| *g >= hint) || gaps.len() >= 12 || Instant::now() >= deadline {
            break gaps;
        }
        sleep(Duration::from_millis(20)).await;
    };
    fillers.pop(); // a slot frees: the worker gets in
    let deadline = Instant::now() + WAIT;
    while stats.connects.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the worker never connected");
        sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
    pinger.abort();
    drop(fillers);
    assert!(
        gaps.iter().any(|g| *g >= hint),
        "never waited out the hint of {hint:?}: registered again after {gaps:?}"
    );
}

type RawStream = (
    tokio::sync::mpsc::Sender<pb::ConnectRequest>,
    tonic::Streaming<pb::ConnectResponse>,
);

/// Opens a worker stream with the generated stub and waits for its
/// registration; the stream lives as long as what is returned.
async fn register_raw(
    mut stub: pb::worker_service_client::WorkerServiceClient<are_sdk::Transport>,
    name: &str,
) -> Result<RawStream, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let register = pb::WorkerRegistration {
        worker_name: name.into(),
        capabilities: vec![name.into()],
        max_concurrency: 1,
        ..Default::default()
    };
    tx.send(pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Register(register)),
    })
    .await
    .unwrap();
    let mut inbound = stub
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    inbound.message().await?;
    Ok((tx, inbound))
}

/// A workflow nobody serves, submitted through a proxy to `sidecar`, and a
/// wait on it in flight once the wait's own connection (the proxy's second:
/// waits have a connection of their own) is open. The client must outlive
/// the wait.
async fn waiting_through_a_proxy(
    sidecar: &Sidecar,
    name: &str,
) -> (
    Proxy,
    Client,
    are_sdk::WorkflowHandle,
    tokio::task::JoinHandle<are_sdk::Result<pb::Workflow>>,
) {
    let proxy = Proxy::start(&sidecar.target, None).await;
    let client = Client::connect(&proxy.target, Options::default())
        .await
        .unwrap();
    let handle = client
        .submit(WorkflowBuilder::new(name).task(TaskBuilder::new("x", "rust-nobody-serves-this")))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let handle = handle.clone();
        async move { handle.wait(WAIT).await }
    });
    let deadline = Instant::now() + WAIT;
    while proxy.accepted.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the wait never connected");
        sleep(Duration::from_millis(20)).await;
    }
    (proxy, client, handle, waiting)
}

/// Cancels the workflow through `direct` and checks that the wait in flight,
/// having resumed (`resumed` says after what), ends with it.
async fn assert_the_wait_sees_a_cancel(
    direct: &Client,
    handle: &are_sdk::WorkflowHandle,
    waiting: tokio::task::JoinHandle<are_sdk::Result<pb::Workflow>>,
    resumed: &str,
) {
    direct
        .workflow(&handle.id)
        .cancel("done waiting")
        .await
        .unwrap();
    let workflow = timeout(WAIT, waiting)
        .await
        .expect("the wait ended")
        .unwrap()
        .expect(resumed);
    assert_eq!(workflow.state, pb::WorkflowState::Cancelled as i32);
}
