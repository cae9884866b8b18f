//! The worker's stream transport: one WorkerService.Connect stream per
//! worker, reconnected with full-jitter backoff when it breaks (the backoff
//! starts again only after a stream that lived, and a refusal's retry hint
//! is waited out).
//!
//! The worker's `run` loop reads the stream (assignments, acknowledgements,
//! cancellations, drain notices) and owns the running attempts; one writer
//! task sends what is pending (heartbeats, completions, failures, a drain, a
//! ping) in batches, everything that piled up while the previous write was in
//! flight going in the next, cut by count and by size (see [`batches`]); one
//! beat task queues the heartbeats that are due, sleeping until the earliest
//! held attempt's next one (see [`Session::beat`]).
//! Outgoing messages wait in a bounded channel; pending items are bounded by
//! the attempts held, which the sidecar bounds by the registered concurrency.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{
    completion_refused, failure_of, failure_report, fatal, heartbeat_details, reason_gone,
    retry_wait, AbortOnDrop, Attempt, CancelReason, Hold, Holds, Task, Worker, WorkerStats,
};
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::connect_request::Message as Out;
use crate::pb::connect_response::Message as In;
use crate::router::AgentCard;
use crate::time::capped;

/// This SDK in the registration.
const SDK: &str = concat!("are-sdk-rust/", env!("CARGO_PKG_VERSION"));
/// The most items of one kind in one message.
const MAX_BATCH: usize = 1000;
/// The most bytes of items in one message. The sidecar accepts messages of
/// up to 64 MiB (common.proto), and one item can be 4 MiB (an inline output)
/// or 1 MiB (a failure's details, a heartbeat's): cut by count alone, twenty
/// large completions queued together made one message over the bound (the
/// client's too, `Options::max_message_bytes`), which ended the stream and
/// lost every attempt in it. 16 MiB is a quarter of the bound, as the
/// sidecar's own assignment batches (worker_service.proto), and still holds
/// three of the largest items; a client whose `max_message_bytes` is lower
/// cuts below that (see [`batch_bytes`]).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// What a message holds beside its items: the batch's tag and length in the
/// `ConnectRequest` (6 bytes at most), with room to spare.
const ENVELOPE_BYTES: usize = 1024;
/// The heartbeat interval when the sidecar gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How long a draining worker waits for the sidecar to end the stream after
/// the worker half-closed it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Outgoing messages queued for the transport.
const OUTBOX: usize = 16;
/// The first pause before a reconnection; it doubles up to
/// `reconnect_max_delay`.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// How long a stream must have lived for the backoff to start again from
/// [`FIRST_RECONNECT_DELAY`]: a sidecar (or a network) that ends streams
/// just after registering them would otherwise see several reconnections a
/// second.
const STABLE_SESSION: Duration = Duration::from_secs(10);

type Key = (String, String, i32);

fn key_of(workflow_id: &str, task_id: &str, attempt: i32) -> Key {
    (workflow_id.to_string(), task_id.to_string(), attempt)
}

/// The byte budget of a batch's items for a client whose messages are
/// bounded by `max_message_bytes`.
fn batch_bytes(max_message_bytes: usize) -> usize {
    MAX_BATCH_BYTES.min(max_message_bytes.saturating_sub(ENVELOPE_BYTES))
}

/// Cuts `items` into the batches of consecutive messages, in order: each of
/// at most [`MAX_BATCH`] items and `budget` bytes of them encoded, a batch
/// being cut when the next item would take it over. An item over the budget
/// by itself goes alone: each is fitted to the sidecar's bounds when it is
/// made (an output over 4 MiB goes as a blob, a failure is cut to 1 MiB of
/// details, heartbeat details over 1 MiB are left out), so it still fits a
/// message.
fn batches<T: prost::Message>(items: Vec<T>, budget: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for item in items {
        // As an element of the batch's repeated field 1: a one-byte tag,
        // the length, the message.
        let len = item.encoded_len();
        let size = 1 + prost::length_delimiter_len(len) + len;
        if !batch.is_empty() && (batch.len() == MAX_BATCH || bytes + size > budget) {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// A duration the sidecar sent (an interval, a grace), as a wait: at most
/// 30 years, so that an `Instant` takes it (see `crate::time`).
fn duration(d: Option<&prost_types::Duration>) -> Duration {
    let d = d.map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32));
    capped(d.unwrap_or_default())
}

/// An attempt held on this stream, from its assignment until its result is
/// sent or the sidecar takes it back.
struct Held {
    task: Task,
    every: Duration,
    next: Instant,
    /// Counts it among the worker's held attempts; the result's sender
    /// takes it over until the result is acknowledged.
    hold: Hold,
}

/// What the session's tasks share, under one lock.
struct Pending {
    held: HashMap<Key, Held>,
    /// Results sent and not yet acknowledged.
    waiting: HashMap<Key, oneshot::Sender<pb::TaskAck>>,
    beats: HashMap<Key, pb::TaskHeartbeat>,
    completions: Vec<pb::TaskCompletion>,
    failures: Vec<pb::TaskFailure>,
    drain: Option<String>,
    closing: bool,
    last_write: Instant,
}

/// One registered stream.
struct Session {
    interval: Duration,
    /// The byte budget of a batch's items ([`batch_bytes`]).
    batch_bytes: usize,
    pending: Mutex<Pending>,
    /// Wakes the writer.
    wake: Notify,
    /// Wakes the beat task: an attempt is newly held, and its first beat may
    /// be due before the task's current sleep ends.
    rearm: Notify,
    /// Fires when the session ends; the writer and beat tasks stop.
    done: CancellationToken,
    /// The worker's counters: attempts taken back count as cancelled.
    stats: Arc<WorkerStats>,
}

impl Session {
    /// Takes an attempt back: its token fires, its result is not reported,
    /// and it is no longer held (a drain does not wait for its handler).
    fn lose(&self, key: &Key, reason: CancelReason) {
        let held = {
            let mut p = self.pending.lock().unwrap();
            p.beats.remove(key);
            p.held.remove(key)
        };
        if let Some(h) = held {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            h.task.cancel_with(reason);
        }
    }

    /// Queues a heartbeat of a held attempt with its latest details.
    fn queue_beat(p: &mut Pending, key: &Key, now: Instant) -> bool {
        let Some(h) = p.held.get_mut(key) else {
            return false;
        };
        h.next = now + h.every;
        let details = h.task.heartbeat.lock().unwrap().take();
        let beat = p
            .beats
            .entry(key.clone())
            .or_insert_with(|| pb::TaskHeartbeat {
                workflow_id: key.0.clone(),
                task_id: key.1.clone(),
                attempt: key.2,
                details: None,
            });
        if let Some(d) = details.as_ref().and_then(heartbeat_details) {
            beat.details = Some(d);
        }
        true
    }

    /// Cancels every attempt still held and forgets the awaited acks: the
    /// stream's end released their leases.
    fn abandon(&self) {
        self.done.cancel();
        let held: Vec<Held> = {
            let mut p = self.pending.lock().unwrap();
            p.waiting.clear();
            p.held.drain().map(|(_, h)| h).collect()
        };
        for h in held {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            h.task.cancel_with(CancelReason::LeaseLost);
        }
    }

    /// Sends what is pending whenever woken, until the session ends or the
    /// worker half-closes the stream (by dropping `tx`).
    async fn write(self: Arc<Self>, tx: mpsc::Sender<pb::ConnectRequest>) {
        loop {
            tokio::select! {
                _ = self.done.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            let (beats, completions, failures, drain, closing) = {
                let mut p = self.pending.lock().unwrap();
                let beats: Vec<pb::TaskHeartbeat> = p.beats.drain().map(|(_, b)| b).collect();
                (
                    beats,
                    std::mem::take(&mut p.completions),
                    std::mem::take(&mut p.failures),
                    p.drain.take(),
                    p.closing,
                )
            };
            let mut msgs = Vec::new();
            // Heartbeats first: they concern attempts whose results may
            // follow, and are refused once a result is recorded.
            for heartbeats in batches(beats, self.batch_bytes) {
                msgs.push(Out::Heartbeat(pb::HeartbeatBatch { heartbeats }));
            }
            for completions in batches(completions, self.batch_bytes) {
                msgs.push(Out::Complete(pb::CompletionBatch { completions }));
            }
            for failures in batches(failures, self.batch_bytes) {
                msgs.push(Out::Fail(pb::FailureBatch { failures }));
            }
            if let Some(reason) = drain {
                msgs.push(Out::Drain(pb::WorkerDrain { reason }));
            }
            if msgs.is_empty() && !closing {
                // An empty heartbeat batch is a liveness ping.
                msgs.push(Out::Heartbeat(pb::HeartbeatBatch::default()));
            }
            for m in msgs {
                let sent = tokio::select! {
                    _ = self.done.cancelled() => return,
                    s = tx.send(pb::ConnectRequest { message: Some(m) }) => s,
                };
                if sent.is_err() {
                    // The transport dropped the request stream; the reader
                    // learns why.
                    return;
                }
            }
            self.pending.lock().unwrap().last_write = Instant::now();
            if closing {
                return; // dropping tx half-closes the stream
            }
        }
    }

    /// Queues the heartbeats that are due, in one batch, and pings when the
    /// stream has been idle for half the sidecar's interval.
    ///
    /// It sleeps until the earliest held attempt's next beat, and at most a
    /// tick (a quarter of the sidecar's interval, within 50 ms and 1 s), and
    /// is woken when an attempt is held. It used to wake once a tick whatever
    /// the attempts' own intervals (a quarter of their heartbeat timeouts):
    /// an attempt whose timeout was under about 1 s missed it between two
    /// ticks while its handler ran. A beat due within a quarter of its own
    /// interval goes with those due now, so that attempts whose beats fall
    /// close together share a wake-up and a batch (at most four wake-ups per
    /// shortest interval however many are held) and none goes late.
    async fn beat(self: Arc<Self>) {
        let tick = (self.interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let now = Instant::now();
            let (wake, until) = {
                let mut p = self.pending.lock().unwrap();
                let due: Vec<Key> = p
                    .held
                    .iter()
                    .filter(|(_, h)| h.next <= now + h.every / 4)
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut wake = now.duration_since(p.last_write) >= self.interval / 2;
                for k in due {
                    wake |= Session::queue_beat(&mut p, &k, now);
                }
                let until = p
                    .held
                    .values()
                    .map(|h| h.next)
                    .fold(now + tick, Instant::min);
                (wake, until)
            };
            if wake {
                self.wake.notify_one();
            }
            tokio::select! {
                _ = self.done.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
                _ = self.rearm.notified() => {}
            }
        }
    }
}

/// How a session ended.
enum Ended {
    /// The worker stopped and drained the stream.
    Drained,
    /// The stream broke; reconnect unless the error is final.
    Broken(Error),
}

impl Worker {
    /// Serves over the stream until `shutdown` fires (then drains) or the
    /// sidecar refuses the worker for good.
    pub(super) async fn serve_stream(
        &self,
        shutdown: &CancellationToken,
        stopped: &CancellationToken,
        running: &mut JoinSet<()>,
        holds: &Holds,
    ) -> Result<()> {
        let slots = Arc::new(Semaphore::new(self.options.concurrency));
        let mut delay = FIRST_RECONNECT_DELAY;
        while !shutdown.is_cancelled() {
            let opened = tokio::select! {
                o = self.open() => o,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let err = match opened {
                Ok((session, tx, inbound)) => {
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    let began = Instant::now();
                    let ended = self
                        .session(
                            &session, tx, inbound, shutdown, stopped, running, &slots, holds,
                        )
                        .await;
                    session.abandon();
                    if began.elapsed() >= STABLE_SESSION {
                        delay = FIRST_RECONNECT_DELAY;
                    }
                    match ended {
                        Ended::Drained => return Ok(()),
                        Ended::Broken(e) => e,
                    }
                }
                Err(e) => e,
            };
            if fatal(err.code) {
                return Err(err);
            }
            tokio::select! {
                _ = tokio::time::sleep(retry_wait(delay, err.retry_delay)) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            delay = (delay * 2).min(self.options.reconnect_max_delay);
        }
        Ok(())
    }

    /// Connects and registers, within `report_timeout`.
    async fn open(
        &self,
    ) -> Result<(
        Arc<Session>,
        mpsc::Sender<pb::ConnectRequest>,
        tonic::Streaming<pb::ConnectResponse>,
    )> {
        let mut capabilities: Vec<String> = self.handlers.keys().cloned().collect();
        capabilities.sort();
        let (tx, rx) = mpsc::channel(OUTBOX);
        let register = pb::WorkerRegistration {
            worker_name: self.name.clone(),
            capabilities,
            max_concurrency: self.options.concurrency as i32,
            identity: self.options.identity.clone(),
            sdk: SDK.into(),
            labels: self.options.labels.clone(),
            agent_card: self.options.card.as_ref().map(AgentCard::to_pb),
        };
        tx.send(pb::ConnectRequest {
            message: Some(Out::Register(register)),
        })
        .await
        .expect("the receiver is alive");
        let mut stub = self.client.raw().worker;
        let opening = async {
            let mut inbound = stub.connect(ReceiverStream::new(rx)).await?.into_inner();
            match inbound.message().await? {
                Some(pb::ConnectResponse {
                    message: Some(In::Registered(r)),
                }) => Ok((r, inbound)),
                Some(_) => Err(tonic::Status::internal(
                    "the sidecar's first message on the worker stream was not `registered`",
                )),
                None => Err(tonic::Status::unavailable(
                    "the sidecar closed the worker stream before registering it",
                )),
            }
        };
        let (registered, inbound) =
            match tokio::time::timeout(self.options.report_timeout, opening).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::local(
                        Code::Unavailable,
                        "UNAVAILABLE",
                        "the worker stream was not registered in time",
                    ))
                }
            };
        *self.worker_id.lock().unwrap() = registered.worker_id.clone();
        let mut interval = duration(registered.heartbeat_interval.as_ref());
        if interval.is_zero() {
            interval = DEFAULT_INTERVAL;
        }
        let session = Arc::new(Session {
            interval,
            batch_bytes: batch_bytes(self.client.max_message_bytes),
            pending: Mutex::new(Pending {
                held: HashMap::new(),
                waiting: HashMap::new(),
                beats: HashMap::new(),
                completions: Vec::new(),
                failures: Vec::new(),
                drain: None,
                closing: false,
                last_write: Instant::now(),
            }),
            wake: Notify::new(),
            rearm: Notify::new(),
            done: CancellationToken::new(),
            stats: self.stats.clone(),
        });
        Ok((session, tx, inbound))
    }

    /// Runs one registered stream until it breaks or the worker drained it.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        session: &Arc<Session>,
        tx: mpsc::Sender<pb::ConnectRequest>,
        mut inbound: tonic::Streaming<pb::ConnectResponse>,
        shutdown: &CancellationToken,
        stopped: &CancellationToken,
        running: &mut JoinSet<()>,
        slots: &Arc<Semaphore>,
        holds: &Holds,
    ) -> Ended {
        let _writer = AbortOnDrop(tokio::spawn(session.clone().write(tx)));
        let _beats = AbortOnDrop(tokio::spawn(session.clone().beat()));
        // The worker's own drain: the handlers of held attempts get the grace,
        // then their tokens fire and their reports get `report_timeout`; then
        // the stream is half-closed and the sidecar ends it, taking back what
        // is still held. Attempts already taken back are not waited for.
        #[derive(PartialEq)]
        enum Phase {
            Serving,
            Draining,
            Stopping,
            Closing,
        }
        let mut phase = Phase::Serving;
        let mut phase_end: Option<Instant> = None;
        // The sidecar's drain: results are recorded within its grace; then
        // the attempts still held are lost (retried after its restart).
        let mut sidecar_end: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            if phase == Phase::Serving && shutdown.is_cancelled() {
                session.pending.lock().unwrap().drain = Some("the worker is stopping".into());
                session.wake.notify_one();
                phase = Phase::Draining;
                phase_end = Some(Instant::now() + self.options.shutdown_grace);
            }
            if matches!(phase, Phase::Draining | Phase::Stopping) && holds.count() == 0 {
                session.pending.lock().unwrap().closing = true;
                session.wake.notify_one();
                phase = Phase::Closing;
                phase_end = Some(Instant::now() + CLOSE_WAIT);
            }
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(pb::ConnectResponse { message: Some(m) })) => match m {
                        In::Assignments(batch) => {
                            for a in batch.assignments {
                                self.start(session, a, running, slots, stopped, holds);
                            }
                        }
                        In::Acks(batch) => {
                            for ack in batch.acks {
                                acknowledged(session, ack);
                            }
                        }
                        In::Cancellations(batch) => {
                            for c in batch.cancellations {
                                let key = key_of(&c.workflow_id, &c.task_id, c.attempt);
                                session.lose(&key, CancelReason::CancelRequested);
                            }
                        }
                        In::Drain(notice) => {
                            sidecar_end = Some(Instant::now() + duration(notice.grace_period.as_ref()));
                        }
                        In::Registered(_) => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) if phase == Phase::Closing => return Ended::Drained,
                    Ok(None) => {
                        return Ended::Broken(Error::local(
                            Code::Unavailable,
                            "UNAVAILABLE",
                            "the sidecar ended the worker stream",
                        ))
                    }
                    Err(_) if phase == Phase::Closing => return Ended::Drained,
                    Err(status) => return Ended::Broken(status.into()),
                },
                _ = shutdown.cancelled(), if phase == Phase::Serving => {}
                _ = holds.released(), if matches!(phase, Phase::Draining | Phase::Stopping) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = tokio::time::sleep_until(phase_end.unwrap_or(far)), if phase_end.is_some() => {
                    match phase {
                        Phase::Draining => {
                            stopped.cancel();
                            phase = Phase::Stopping;
                            phase_end = Some(Instant::now() + self.options.report_timeout);
                        }
                        Phase::Stopping => {
                            // Handlers that outlived even this are dropped;
                            // closing the stream hands their attempts back.
                            running.abort_all();
                            session.pending.lock().unwrap().closing = true;
                            session.wake.notify_one();
                            phase = Phase::Closing;
                            phase_end = Some(Instant::now() + CLOSE_WAIT);
                        }
                        Phase::Closing => return Ended::Drained,
                        Phase::Serving => phase_end = None,
                    }
                }
                _ = tokio::time::sleep_until(sidecar_end.unwrap_or(far)), if sidecar_end.is_some() => {
                    sidecar_end = None;
                    let keys: Vec<Key> = session.pending.lock().unwrap().held.keys().cloned().collect();
                    for k in keys {
                        session.lose(&k, CancelReason::LeaseLost);
                    }
                }
            }
        }
    }

    /// Runs an assignment in its own task once a handler slot is free.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        session: &Arc<Session>,
        a: pb::TaskAssignment,
        running: &mut JoinSet<()>,
        slots: &Arc<Semaphore>,
        stopped: &CancellationToken,
        holds: &Holds,
    ) {
        let key = key_of(&a.workflow_id, &a.task_id, a.attempt);
        let mut every = session.interval;
        let ht = duration(a.heartbeat_timeout.as_ref());
        if !ht.is_zero() {
            every = every.min(ht / 4);
        }
        let every = every.max(Duration::from_millis(50));
        let task = Task::of(a, self.client.clone());
        session.pending.lock().unwrap().held.insert(
            key.clone(),
            Held {
                task: task.clone(),
                every,
                next: Instant::now() + every,
                hold: holds.hold(),
            },
        );
        session.rearm.notify_one();
        let attempt = Attempt {
            client: self.client.clone(),
            options: self.options.clone(),
            handler: self.handlers.get(&task.capability).cloned(),
            stats: self.stats.clone(),
            stopped: stopped.clone(),
        };
        let session = session.clone();
        let slots = slots.clone();
        running.spawn(async move {
            let permit = tokio::select! {
                p = slots.acquire_owned() => p.expect("semaphore never closed"),
                // Taken back before a slot was free: the sidecar retries it.
                _ = task.cancel.cancelled() => return,
            };
            run_attempt(session, &attempt, task, key).await;
            drop(permit);
        });
    }
}

/// A refusal's reason, an `ErrorReason` name without its prefix (its number
/// when this SDK does not know it).
fn refusal_reason(ack: &pb::TaskAck) -> String {
    pb::ErrorReason::try_from(ack.reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("ERROR_REASON_")
                .to_string()
        })
        .unwrap_or_else(|_| ack.reason.to_string())
}

/// Hands an acknowledgement to the attempt awaiting it. A heartbeat refused
/// because the attempt is no longer this worker's (TASK_NOT_HELD and the
/// like) means its lease is gone; one refused for what it carried changed
/// nothing, and the attempt is still held: giving it up then left it held
/// by the sidecar, unreported, until its lease ran out.
fn acknowledged(session: &Session, ack: pb::TaskAck) {
    let key = key_of(&ack.workflow_id, &ack.task_id, ack.attempt);
    match pb::AckSubject::try_from(ack.subject) {
        Ok(pb::AckSubject::Completion | pb::AckSubject::Failure) => {
            let waiter = session.pending.lock().unwrap().waiting.remove(&key);
            if let Some(w) = waiter {
                let _ = w.send(ack);
            }
        }
        Ok(pb::AckSubject::Heartbeat) if !ack.accepted && reason_gone(&refusal_reason(&ack)) => {
            session.lose(&key, CancelReason::LeaseLost);
        }
        _ => {}
    }
}

/// Runs one attempt's handler, sends its result and awaits the ack.
async fn run_attempt(session: Arc<Session>, attempt: &Attempt, task: Task, key: Key) {
    let stats = &attempt.stats;
    // Task::record_heartbeat sends a heartbeat at once.
    let kicker = {
        let task = task.clone();
        let key = key.clone();
        let session = session.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                task.kick.notified().await;
                let queued =
                    Session::queue_beat(&mut session.pending.lock().unwrap(), &key, Instant::now());
                if queued {
                    session.wake.notify_one();
                }
            }
        }))
    };
    let outcome = attempt.call(task.clone()).await;
    drop(kicker);
    // Taken back meanwhile (counted then): nothing to report.
    if !session.pending.lock().unwrap().held.contains_key(&key) {
        return;
    }
    let (completion, failure) = match outcome {
        Ok(value) => match attempt.completion_of(&task, value).await {
            Ok(c) => (Some(c), None),
            Err(f) => (None, Some(failure_report(&task, f, None))),
        },
        Err(e) => (
            None,
            Some(failure_report(&task, failure_of(&task, &e), e.retry_after)),
        ),
    };
    // The usage of a completion, for the failure that replaces it if refused.
    let mut completing = completion.as_ref().map(|c| c.usage);
    let (ack_tx, mut ack_rx) = oneshot::channel();
    // Held until its result is acknowledged (or the stream ends).
    let _hold = {
        let mut p = session.pending.lock().unwrap();
        let Some(held) = p.held.remove(&key) else {
            return; // taken back while the result was prepared
        };
        p.beats.remove(&key);
        p.waiting.insert(key.clone(), ack_tx);
        p.completions.extend(completion);
        p.failures.extend(failure);
        held.hold
    };
    session.wake.notify_one();
    let deadline = Instant::now() + attempt.options.report_timeout;
    loop {
        match tokio::time::timeout_at(deadline, ack_rx).await {
            Ok(Ok(ack)) if ack.accepted && completing.is_some() => {
                stats.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(ack)) if ack.accepted => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(ack)) => {
                let reason = refusal_reason(&ack);
                if let Some(usage) = completing.take().filter(|_| !reason_gone(&reason)) {
                    // An invalid completion changed nothing: the attempt is
                    // still held, so report it failed instead, once (a
                    // refused failure is not replaced).
                    let report = completion_refused(&task, usage, &reason, &ack.message);
                    let (tx, rx) = oneshot::channel();
                    {
                        let mut p = session.pending.lock().unwrap();
                        p.waiting.insert(key.clone(), tx);
                        p.failures.push(report);
                    }
                    session.wake.notify_one();
                    ack_rx = rx;
                    continue;
                }
                // A per-task refusal (TASK_NOT_HELD, TASK_ALREADY_COMPLETED):
                // the sidecar kept another result or took the attempt back.
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            // The stream ended or no ack came in time: the sidecar retries
            // the attempt if the result was not recorded.
            _ => {
                session.pending.lock().unwrap().waiting.remove(&key);
            }
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{DEFAULT_MAX_MESSAGE_BYTES, MAX_INLINE_BYTES};
    use prost::Message;

    fn completion(i: usize, output_bytes: usize) -> pb::TaskCompletion {
        pb::TaskCompletion {
            workflow_id: "wf".into(),
            task_id: format!("t-{i}"),
            attempt: 1,
            output: Some(pb::Payload {
                content: Some(pb::payload::Content::Data(vec![b'x'; output_bytes])),
                content_type: "application/json".into(),
            }),
            ..Default::default()
        }
    }

    fn ids(batch: &[pb::TaskCompletion]) -> Vec<String> {
        batch.iter().map(|c| c.task_id.clone()).collect()
    }

    /// Each batch's message as sent, within the client's bound.
    fn message_len(batch: Vec<pb::TaskCompletion>) -> usize {
        pb::ConnectRequest {
            message: Some(Out::Complete(pb::CompletionBatch { completions: batch })),
        }
        .encoded_len()
    }

    #[test]
    fn the_budget_is_16_mib_or_under_the_clients_bound() {
        assert_eq!(batch_bytes(DEFAULT_MAX_MESSAGE_BYTES), 16 * 1024 * 1024);
        assert_eq!(
            batch_bytes(8 * 1024 * 1024),
            8 * 1024 * 1024 - ENVELOPE_BYTES
        );
        assert_eq!(batch_bytes(100), 0);
    }

    #[test]
    fn small_items_are_cut_by_count() {
        let items: Vec<_> = (0..2500).map(|i| completion(i, 10)).collect();
        let sizes: Vec<usize> = batches(items, batch_bytes(DEFAULT_MAX_MESSAGE_BYTES))
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [1000, 1000, 500]);
    }

    /// Twenty completions of the largest inline output: by count alone one
    /// message of about 80 MiB, over the 64 MiB bound.
    #[test]
    fn large_items_are_cut_by_size_in_order() {
        let items: Vec<_> = (0..20).map(|i| completion(i, MAX_INLINE_BYTES)).collect();
        let all = items.clone();
        let budget = batch_bytes(DEFAULT_MAX_MESSAGE_BYTES);
        let cut = batches(items, budget);
        assert_eq!(
            cut.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 3, 3, 3, 2]
        );
        let flat: Vec<String> = cut.iter().flat_map(|b| ids(b)).collect();
        assert_eq!(flat, ids(&all));
        for batch in cut {
            assert!(message_len(batch) <= budget + 6);
        }
    }

    /// An item over the budget by itself still goes (alone), and does not
    /// hold up the items after it.
    #[test]
    fn an_item_over_the_budget_goes_alone() {
        let items = vec![
            completion(0, 10),
            completion(1, 2000),
            completion(2, 10),
            completion(3, 10),
        ];
        let cut = batches(items, 1000);
        let got: Vec<Vec<String>> = cut.iter().map(|b| ids(b)).collect();
        assert_eq!(got, [vec!["t-0"], vec!["t-1"], vec!["t-2", "t-3"]]);
        assert!(batches(Vec::<pb::TaskCompletion>::new(), 1000).is_empty());
        // A client bound of under a kilobyte: one item a message.
        let items: Vec<_> = (0..3).map(|i| completion(i, 10)).collect();
        assert_eq!(batches(items, batch_bytes(512)).len(), 3);
    }

    /// Failures and heartbeats (1 MiB of details each at most) are cut the
    /// same way.
    #[test]
    fn failures_and_heartbeats_are_cut_by_size() {
        let details = || {
            Some(pb::Payload {
                content: Some(pb::payload::Content::Data(vec![b'x'; 1024 * 1024])),
                content_type: "application/json".into(),
            })
        };
        let failures: Vec<_> = (0..40)
            .map(|i| pb::TaskFailure {
                task_id: format!("t-{i}"),
                failure: Some(pb::Failure {
                    details: details(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let budget = batch_bytes(DEFAULT_MAX_MESSAGE_BYTES);
        let cut = batches(failures, budget);
        assert_eq!(cut.iter().map(Vec::len).sum::<usize>(), 40);
        for batch in cut {
            let len = pb::ConnectRequest {
                message: Some(Out::Fail(pb::FailureBatch { failures: batch })),
            }
            .encoded_len();
            assert!(len <= budget + 6, "{len}");
        }
        let beats: Vec<_> = (0..40)
            .map(|i| pb::TaskHeartbeat {
                task_id: format!("t-{i}"),
                details: details(),
                ..Default::default()
            })
            .collect();
        let cut = batches(beats, budget);
        assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), [15, 15, 10]);
    }
}
