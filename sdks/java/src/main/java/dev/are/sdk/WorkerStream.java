package dev.are.sdk;

import com.google.protobuf.CodedOutputStream;
import com.google.protobuf.MessageLite;
import dev.are.sdk.v1.AckSubject;
import dev.are.sdk.v1.CompletionBatch;
import dev.are.sdk.v1.ConnectRequest;
import dev.are.sdk.v1.ConnectResponse;
import dev.are.sdk.v1.ErrorReason;
import dev.are.sdk.v1.FailureBatch;
import dev.are.sdk.v1.HeartbeatBatch;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.TaskAck;
import dev.are.sdk.v1.TaskAssignment;
import dev.are.sdk.v1.TaskCancellation;
import dev.are.sdk.v1.TaskCompletion;
import dev.are.sdk.v1.TaskFailure;
import dev.are.sdk.v1.TaskHeartbeat;
import dev.are.sdk.v1.WorkerDrain;
import dev.are.sdk.v1.WorkerRegistered;
import dev.are.sdk.v1.WorkerRegistration;
import dev.are.sdk.v1.WorkerServiceGrpc;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * The worker's stream transport: one WorkerService.Connect stream per worker, reconnected with
 * full-jitter backoff when it breaks. The sidecar's messages are taken on gRPC's callback thread
 * (assignments start attempts on the worker's pool; acks, cancellations and drain notices are
 * handled at once); a single writer thread sends what is pending (heartbeats, completions,
 * failures, a drain, a ping) in batches, everything that accumulated while it was busy going in
 * the next write, cut by count and by size (see {@link #batches}), and only while the transport
 * is ready, so nothing piles up in gRPC's buffers.
 * Pending items are bounded by the attempts held, which the sidecar bounds by the registered
 * concurrency.
 */
final class WorkerStream {
  private static final String SDK = "are-sdk-java/0.1";
  /** The most items of one kind in one message. */
  static final int MAX_BATCH = 1000;
  /**
   * The most bytes of items in one message. The sidecar accepts messages of up to 64 MiB
   * (common.proto), and one item can be 4 MiB (an inline output) or 1 MiB (a failure's details, a
   * heartbeat's): cut by count alone, twenty large completions queued together made one message
   * over the bound, which ended the stream and lost every attempt on it. 16 MiB is a quarter of the
   * bound, as the sidecar's own assignment batches (worker_service.proto), and still holds three of
   * the largest items; a client whose {@link Options#maxMessageBytes} is lower cuts below that
   * (see {@link #batchBytes}).
   */
  static final int MAX_BATCH_BYTES = 16 * 1024 * 1024;
  /**
   * What a message holds beside its items: the batch's tag and length in the ConnectRequest (6
   * bytes at most), with room to spare.
   */
  static final int ENVELOPE_BYTES = 1024;
  private static final long DEFAULT_HEARTBEAT_NANOS = Duration.ofSeconds(10).toNanos();
  private static final long MIN_BEAT_NANOS = Duration.ofMillis(50).toNanos();
  private static final long CLOSE_WAIT_MS = 5000;
  private static final long FIRST_DELAY_MS = 50;
  private static final long MAX_DELAY_MS = 5000;
  /** How long a session must have lived for the reconnection backoff to start over. */
  static final Duration STABLE_SESSION = Duration.ofSeconds(10);
  private static final System.Logger LOG = System.getLogger(WorkerStream.class.getName());

  private record Key(String workflowId, String taskId, int attempt) {}

  /**
   * The byte budget of a batch's items for a client whose messages are bounded by {@code
   * maxMessageBytes}. That bound is of what the client receives; one set below the default most
   * likely faces a sidecar set so too, which refuses larger messages from the worker.
   */
  static int batchBytes(int maxMessageBytes) {
    return Math.max(0, Math.min(MAX_BATCH_BYTES, maxMessageBytes - ENVELOPE_BYTES));
  }

  /**
   * Cuts {@code items}, the elements of the repeated field {@code fieldNumber} of a batch, into
   * the batches of consecutive messages, in order: each of at most {@link #MAX_BATCH} items and
   * {@code budget} bytes of them encoded, a batch being cut when the next item would take it over.
   * An item over the budget by itself goes alone: each is fitted to the sidecar's bounds when it is
   * made (an output over 4 MiB goes as a blob, a failure is cut to 1 MiB of details, heartbeat
   * details over 1 MiB are left out), so it still fits a message.
   */
  static <T extends MessageLite> List<List<T>> batches(List<T> items, int fieldNumber, int budget) {
    List<List<T>> out = new ArrayList<>();
    List<T> batch = new ArrayList<>();
    long bytes = 0;
    for (T item : items) {
      // As an element of the repeated field: its tag, its length, the message (whose size
      // protobuf keeps, so it is not computed again when the batch is written).
      long size = CodedOutputStream.computeMessageSize(fieldNumber, item);
      if (!batch.isEmpty() && (batch.size() == MAX_BATCH || bytes + size > budget)) {
        out.add(batch);
        batch = new ArrayList<>();
        bytes = 0;
      }
      bytes += size;
      batch.add(item);
    }
    if (!batch.isEmpty()) {
      out.add(batch);
    }
    return out;
  }

  /** One attempt received on a stream, from assignment to the ack of its result. */
  private static final class Held {
    final Key key;
    final TaskContext task;
    final long every;
    /** The ack of the result sent last (replaced, under the session's lock, by each send). */
    CompletableFuture<TaskAck> ack = new CompletableFuture<>();
    /** When the next heartbeat is due (System.nanoTime, under the session's lock). */
    long next;
    /**
     * Set (under the session's lock) when its completion was refused as invalid: the attempt is
     * still held, and one failure may be sent in its place.
     */
    boolean completionRefused;
    /** Set when the sidecar took the attempt back: its result is not reported. */
    volatile boolean lost;

    Held(Key key, TaskContext task, long every) {
      this.key = key;
      this.task = task;
      this.every = every;
    }
  }

  private final Worker worker;
  private final ExecutorService pool;
  private final ScheduledExecutorService timers;
  private final Semaphore slots;
  private final CountDownLatch stopping;

  WorkerStream(
      Worker worker,
      ExecutorService pool,
      ScheduledExecutorService timers,
      Semaphore slots,
      CountDownLatch stopping) {
    this.worker = worker;
    this.pool = pool;
    this.timers = timers;
    this.slots = slots;
    this.stopping = stopping;
  }

  /**
   * Serves over the stream until the worker stops (then drains and returns), reconnecting when it
   * breaks; throws when the sidecar refuses the worker for a reason retrying cannot fix, or once
   * the client is closed (CANCELLED, reason {@code CLIENT_CLOSED}). Between connections it waits a
   * full-jitter backoff (50 ms doubling to 5 s), and at least the sidecar's retry hint when its
   * refusal carries one (RESOURCE_EXHAUSTED at its worker bound). Only a session that lived {@link
   * #STABLE_SESSION} sets the backoff back: one the sidecar (or the network) ends just after
   * registering would otherwise be reopened twenty times a second.
   */
  void serve() {
    long delayMs = FIRST_DELAY_MS;
    while (stopping.getCount() > 0) {
      Throwable why;
      Session session = null;
      try {
        session = open();
        why = null;
      } catch (RuntimeException e) {
        why = e;
      }
      if (session != null) {
        long opened = System.nanoTime();
        why = session.serve();
        if (why == null) {
          return; // drained
        }
        if (System.nanoTime() - opened >= STABLE_SESSION.toNanos()) {
          delayMs = FIRST_DELAY_MS;
        }
      }
      AreException e = AreException.from(why);
      if (Worker.fatal(e.code())) {
        throw e;
      }
      if (worker.client().isClosed()) {
        throw Client.closedError("worker " + worker.name(), e);
      }
      long waitMs = Backoff.retryWait(delayMs, e.retryDelay().orElse(null));
      if (stopping.getCount() > 0) {
        LOG.log(
            System.Logger.Level.WARNING,
            "worker " + worker.name() + ": the worker stream ended; reconnecting in " + waitMs
                + " ms: " + e);
      }
      try {
        if (stopping.await(waitMs, TimeUnit.MILLISECONDS)) {
          return;
        }
      } catch (InterruptedException ie) {
        Thread.currentThread().interrupt();
        return;
      }
      delayMs = Math.min(delayMs * 2, MAX_DELAY_MS);
    }
  }

  /** Connects and registers, within the report timeout. */
  private Session open() {
    Session s = new Session();
    Client client = worker.client();
    WorkerServiceGrpc.newStub(client.raw().channel())
        .withMaxInboundMessageSize(client.maxMessageBytes())
        .connect(s);
    WorkerOptions options = worker.options();
    WorkerRegistration.Builder registration =
        WorkerRegistration.newBuilder()
            .setWorkerName(worker.name())
            .addAllCapabilities(worker.capabilities())
            .setMaxConcurrency(options.concurrency())
            .setIdentity(options.identity())
            .setSdk(SDK)
            .putAllLabels(options.labels());
    if (options.card() != null) {
      registration.setAgentCard(options.card().toProto());
    }
    s.call.onNext(ConnectRequest.newBuilder().setRegister(registration).build());
    WorkerRegistered registered;
    try {
      registered = s.registered.get(Durations.nanos(options.reportTimeout()), TimeUnit.NANOSECONDS);
    } catch (ExecutionException e) {
      s.call.cancel("registration failed", null);
      throw AreException.from(e.getCause());
    } catch (TimeoutException e) {
      s.call.cancel("no registration in time", null);
      throw AreException.timeout("registering the worker stream", options.reportTimeout());
    } catch (InterruptedException e) {
      s.call.cancel("interrupted", null);
      Thread.currentThread().interrupt();
      throw AreException.local(Status.Code.CANCELLED, "INTERRUPTED", "interrupted", e);
    }
    worker.setWorkerId(registered.getWorkerId());
    if (registered.hasHeartbeatInterval()) {
      long n = Durations.nanos(Durations.fromProto(registered.getHeartbeatInterval()));
      if (n > 0) {
        s.interval = n;
      }
    }
    return s;
  }

  /** One registered stream. */
  private final class Session implements ClientResponseObserver<ConnectRequest, ConnectResponse> {
    final CompletableFuture<WorkerRegistered> registered = new CompletableFuture<>();
    /** Completes with why the stream ended (never null). */
    final CompletableFuture<Throwable> done = new CompletableFuture<>();

    volatile ClientCallStreamObserver<ConnectRequest> call;
    volatile long interval = DEFAULT_HEARTBEAT_NANOS;
    /** When the sidecar's drain grace ends (System.nanoTime), once it sent a drain notice. */
    volatile Long drainBy;

    private final Semaphore wake = new Semaphore(0);
    private final Semaphore ready = new Semaphore(0);

    // Under lock.
    private final Object lock = new Object();
    private final Map<Key, Held> held = new HashMap<>(); // running handlers
    private final Map<Key, Held> waiting = new HashMap<>(); // results sent, not yet acknowledged
    private final Map<Key, TaskHeartbeat> beats = new LinkedHashMap<>();
    private List<TaskCompletion> completions = new ArrayList<>();
    private List<TaskFailure> failures = new ArrayList<>();
    private int live; // attempts not yet finished (their result acknowledged or dropped)
    private int takenBack; // of those, attempts the sidecar took back whose handlers still run
    private String drain;
    private boolean closing;
    private long lastWrite = System.nanoTime();

    @Override
    public void beforeStart(ClientCallStreamObserver<ConnectRequest> stream) {
      call = stream;
      stream.setOnReadyHandler(ready::release);
    }

    @Override
    public void onNext(ConnectResponse msg) {
      switch (msg.getMessageCase()) {
        case REGISTERED -> registered.complete(msg.getRegistered());
        case ASSIGNMENTS -> {
          for (TaskAssignment a : msg.getAssignments().getAssignmentsList()) {
            start(a);
          }
        }
        case ACKS -> {
          for (TaskAck ack : msg.getAcks().getAcksList()) {
            acknowledged(ack);
          }
        }
        case CANCELLATIONS -> {
          for (TaskCancellation c : msg.getCancellations().getCancellationsList()) {
            lose(
                new Key(c.getWorkflowId(), c.getTaskId(), c.getAttempt()),
                CancelReason.CANCEL_REQUESTED);
          }
        }
        case DRAIN -> {
          // No more assignments come; results are recorded within the grace, then the sidecar
          // ends the stream and the worker reconnects.
          Duration grace = Durations.fromProto(msg.getDrain().getGracePeriod());
          drainBy = Durations.deadline(grace);
          LOG.log(
              System.Logger.Level.INFO,
              "worker " + worker.name() + ": the sidecar is draining (" + msg.getDrain().getReason()
                  + "); results are accepted for " + grace);
        }
        default -> {}
      }
    }

    @Override
    public void onError(Throwable t) {
      end(t);
    }

    @Override
    public void onCompleted() {
      end(
          AreException.local(
              Status.Code.UNAVAILABLE, "STREAM_ENDED", "the sidecar ended the worker stream"));
    }

    /** Ends the session (once): every attempt still held loses its lease with the stream. */
    private void end(Throwable why) {
      registered.completeExceptionally(why);
      if (!done.complete(why)) {
        return;
      }
      List<Held> abandoned;
      synchronized (lock) {
        abandoned = new ArrayList<>(held.values());
        for (Held h : abandoned) {
          h.lost = true;
          takenBack++;
        }
        for (Held h : waiting.values()) {
          h.ack.complete(null);
        }
        held.clear();
        waiting.clear();
        beats.clear();
        lock.notifyAll();
      }
      for (Held h : abandoned) {
        h.task.cancel(CancelReason.LEASE_LOST);
      }
      wake.release();
      ready.release();
    }

    /**
     * Runs the stream until it breaks (returns why) or the worker stops and it drained (returns
     * null).
     */
    Throwable serve() {
      Thread writer = new Thread(this::write, "are-worker-" + worker.name() + "-stream-writer");
      writer.setDaemon(true);
      writer.start();
      try {
        while (true) {
          try {
            return done.get(100, TimeUnit.MILLISECONDS);
          } catch (TimeoutException e) {
            if (stopping.getCount() == 0) {
              break;
            }
          } catch (ExecutionException e) {
            return e.getCause();
          }
        }
        drainAndClose();
        return null;
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return null;
      } finally {
        boolean open = !done.isDone();
        end(AreException.local(Status.Code.CANCELLED, "WORKER_STOPPED", "the worker stopped"));
        try {
          writer.join(CLOSE_WAIT_MS); // the writer alone calls onNext; cancel after it is gone
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
        if (open) {
          call.cancel("the worker stopped", null);
        }
      }
    }

    /**
     * Tells the sidecar to assign no more, lets running handlers finish within the shutdown grace
     * (then cancels them with WORKER_STOPPED), waits for their results' acks, and half-closes.
     */
    private void drainAndClose() throws InterruptedException {
      WorkerOptions options = worker.options();
      synchronized (lock) {
        drain = "the worker is stopping";
      }
      wake.release();
      if (!awaitIdle(Durations.deadline(options.shutdownGrace()))) {
        List<Held> late;
        synchronized (lock) {
          late = new ArrayList<>(held.values());
        }
        for (Held h : late) {
          h.task.cancel(CancelReason.WORKER_STOPPED);
        }
        awaitIdle(Durations.deadline(options.reportTimeout()));
      }
      synchronized (lock) {
        closing = true;
      }
      wake.release();
      try {
        done.get(CLOSE_WAIT_MS, TimeUnit.MILLISECONDS); // the sidecar ends the stream
      } catch (ExecutionException | TimeoutException e) {
        // Cancelled by serve's cleanup.
      }
    }

    /**
     * Waits until no attempt is live or the stream ended; false at {@code by}. Attempts the
     * sidecar took back (cancelled, their lease lost) do not count: nothing of theirs is awaited,
     * and their handlers, told to stop, may take as long as they like.
     */
    private boolean awaitIdle(long by) throws InterruptedException {
      synchronized (lock) {
        while (live - takenBack > 0 && !done.isDone()) {
          long left = by - System.nanoTime();
          if (left <= 0) {
            return false;
          }
          TimeUnit.NANOSECONDS.timedWait(lock, Math.min(left, 100_000_000L));
        }
        return true;
      }
    }

    /** Starts an assignment on the worker's pool; it runs once a handler slot is free. */
    private void start(TaskAssignment a) {
      TaskContext task = new TaskContext(worker.client(), a, worker.options().interruptOnCancel());
      long every = interval;
      if (a.hasHeartbeatTimeout()) {
        long ht = Durations.nanos(Durations.fromProto(a.getHeartbeatTimeout()));
        if (ht > 0) {
          every = Math.min(every, ht / 4);
        }
      }
      Held h =
          new Held(
              new Key(a.getWorkflowId(), a.getTaskId(), a.getAttempt()),
              task,
              Math.max(every, MIN_BEAT_NANOS));
      synchronized (lock) {
        if (done.isDone()) {
          return; // the lease ended with the stream
        }
        h.next = System.nanoTime() + h.every;
        held.put(h.key, h);
        live++;
      }
      wake.release(); // the writer's sleep may end after this attempt's first beat is due
      task.onHeartbeat = () -> queueBeat(h);
      try {
        pool.execute(() -> run(h));
      } catch (RejectedExecutionException e) {
        finished(h);
      }
    }

    /** Runs one attempt's handler and reports its result. */
    private void run(Held h) {
      boolean slot = false;
      try {
        while (!slots.tryAcquire(100, TimeUnit.MILLISECONDS)) {
          if (h.lost || h.task.isCancelled()) {
            // Taken back before a slot was free: the sidecar retries it.
            worker.stats().cancelled.incrementAndGet();
            return;
          }
        }
        slot = true;
        Worker.Outcome outcome = worker.call(h.task, pool, timers);
        h.task.finish();
        if (h.lost) {
          worker.stats().cancelled.incrementAndGet();
          return;
        }
        long reportBy = Durations.deadline(worker.options().reportTimeout());
        worker.report(
            h.task,
            outcome,
            reportBy,
            new Worker.Reporter() {
              @Override
              public Worker.Answer complete(TaskCompletion completion, long by) {
                return send(h, completion, null, by);
              }

              @Override
              public boolean fail(TaskFailure failure, long by) {
                return send(h, null, failure, by).recorded();
              }
            });
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      } finally {
        if (slot) {
          slots.release();
        }
        finished(h);
      }
    }

    private void finished(Held h) {
      synchronized (lock) {
        live--;
        if (h.lost) {
          takenBack--;
        }
        held.remove(h.key, h);
        waiting.remove(h.key, h);
        beats.remove(h.key);
        lock.notifyAll();
      }
    }

    /**
     * Queues a result and waits for its ack, at most until {@code by} (or the end of the sidecar's
     * drain grace); says whether the sidecar recorded it, or why not. A refusal (TASK_NOT_HELD,
     * TASK_ALREADY_COMPLETED, ...) is this attempt's outcome; the stream goes on. After a
     * completion refused as invalid, the attempt is still held: one failure may follow it.
     */
    private Worker.Answer send(Held h, TaskCompletion completion, TaskFailure failure, long by) {
      CompletableFuture<TaskAck> acked;
      synchronized (lock) {
        boolean replacing = h.completionRefused && failure != null;
        h.completionRefused = false;
        if (h.lost || done.isDone() || (!replacing && held.get(h.key) != h)) {
          worker.stats().cancelled.incrementAndGet();
          return Worker.Answer.NOT_RECORDED;
        }
        held.remove(h.key);
        beats.remove(h.key);
        acked = new CompletableFuture<>();
        h.ack = acked;
        waiting.put(h.key, h);
        if (completion != null) {
          completions.add(completion);
        } else {
          failures.add(failure);
        }
      }
      wake.release();
      Long drainEnd = drainBy;
      long until = drainEnd == null ? by : Math.min(by, drainEnd);
      TaskAck ack;
      try {
        ack = acked.get(Math.max(0, until - System.nanoTime()), TimeUnit.NANOSECONDS);
      } catch (TimeoutException e) {
        LOG.log(System.Logger.Level.WARNING, describe(h) + ": no ack of the result in time");
        return Worker.Answer.NOT_RECORDED;
      } catch (ExecutionException e) {
        return Worker.Answer.NOT_RECORDED;
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return Worker.Answer.NOT_RECORDED;
      }
      if (ack == null) {
        LOG.log(
            System.Logger.Level.WARNING,
            describe(h)
                + ": the stream ended before the result was acknowledged; the sidecar retries"
                + " the attempt if it was not recorded");
        return Worker.Answer.NOT_RECORDED;
      }
      if (!ack.getAccepted()) {
        LOG.log(
            System.Logger.Level.WARNING,
            describe(h) + ": result refused: " + ack.getReason() + " " + ack.getMessage());
        if (completion == null) {
          return Worker.Answer.NOT_RECORDED;
        }
        String reason =
            ack.getReason() == ErrorReason.UNRECOGNIZED
                ? String.valueOf(ack.getReasonValue())
                : ack.getReason().name().replaceFirst("^ERROR_REASON_", "");
        Worker.Answer answer = Worker.Answer.refused(null, reason, ack.getMessage());
        if (answer.refusedAsInvalid()) {
          synchronized (lock) {
            h.completionRefused = !done.isDone();
          }
        }
        return answer;
      }
      return Worker.Answer.RECORDED;
    }

    private String describe(Held h) {
      return "worker " + worker.name() + ": " + h.key.workflowId() + "/" + h.key.taskId()
          + " attempt " + h.key.attempt();
    }

    private void acknowledged(TaskAck ack) {
      Key key = new Key(ack.getWorkflowId(), ack.getTaskId(), ack.getAttempt());
      if (ack.getSubject() == AckSubject.ACK_SUBJECT_COMPLETION
          || ack.getSubject() == AckSubject.ACK_SUBJECT_FAILURE) {
        CompletableFuture<TaskAck> acked = null;
        synchronized (lock) {
          Held h = waiting.remove(key);
          if (h != null) {
            acked = h.ack;
          }
        }
        if (acked != null) {
          acked.complete(ack);
        }
      } else if (ack.getSubject() == AckSubject.ACK_SUBJECT_HEARTBEAT) {
        // Only refusals are acknowledged. One saying the lease is gone ends the attempt; any other
        // (its details invalid) refused the heartbeat alone, and the lease holds: losing the
        // attempt then reported nothing, and the task stayed RUNNING until a timeout.
        String reason = ack.getReason().name().replaceFirst("^ERROR_REASON_", "");
        if (Worker.LOST_REASONS.contains(reason)) {
          lose(key, CancelReason.LEASE_LOST);
        } else {
          LOG.log(
              System.Logger.Level.WARNING,
              "worker " + worker.name() + ": the sidecar refused a heartbeat: " + ack.getReason() + " "
                  + ack.getMessage());
        }
      } else {
        LOG.log(
            System.Logger.Level.WARNING,
            "worker " + worker.name() + ": the sidecar refused an item: " + ack.getSubject() + " "
                + ack.getReason() + " " + ack.getMessage());
      }
    }

    /** Takes an attempt back: its handler is cancelled and its result not reported. */
    private void lose(Key key, CancelReason why) {
      Held h;
      synchronized (lock) {
        h = held.remove(key);
        beats.remove(key);
        if (h != null) {
          h.lost = true;
          takenBack++;
          lock.notifyAll();
        }
      }
      if (h != null) {
        h.task.cancel(why);
      }
    }

    private void queueBeat(Held h) {
      boolean queued;
      synchronized (lock) {
        queued = queueBeatLocked(h, System.nanoTime());
      }
      if (queued) {
        wake.release();
      }
    }

    /** Queues a heartbeat of a held attempt with the handler's latest details. */
    private boolean queueBeatLocked(Held h, long now) {
      if (held.get(h.key) != h) {
        return false;
      }
      TaskHeartbeat previous = beats.get(h.key);
      TaskHeartbeat.Builder beat =
          previous != null
              ? previous.toBuilder()
              : TaskHeartbeat.newBuilder()
                  .setWorkflowId(h.key.workflowId())
                  .setTaskId(h.key.taskId())
                  .setAttempt(h.key.attempt());
      Payload details = Worker.heartbeatDetails(h.task.takeHeartbeat());
      if (details != null) {
        beat.setDetails(details);
      }
      beats.put(h.key, beat.build());
      h.next = now + h.every;
      return true;
    }

    /**
     * How long the writer may sleep from {@code now}: until the earliest held attempt's next beat,
     * and at most {@code tick}.
     */
    private long sleepLocked(long tick, long now) {
      long sleep = tick;
      for (Held h : held.values()) {
        sleep = Math.min(sleep, Math.max(0, h.next - now));
      }
      return sleep;
    }

    /**
     * Sends what is pending whenever woken, heartbeats when due and a ping when idle for half the
     * sidecar's interval, until the session ends or the worker half-closes the stream.
     *
     * <p>It sleeps until the earliest held attempt's next beat, and at most a tick (a quarter of the
     * sidecar's interval, within 50 ms and 1 s), and is woken when an attempt is held. It used to
     * sleep a tick whatever the attempts' own intervals (a quarter of their heartbeat timeouts): an
     * attempt whose timeout was under about 1 s missed it between two ticks while its handler ran.
     * A beat due within a quarter of its own interval goes with those due now, so that attempts
     * whose beats fall close together share a wake-up and a batch (at most four wake-ups per
     * shortest interval however many are held) and none goes late.
     */
    private void write() {
      long tick = Math.max(MIN_BEAT_NANOS, Math.min(1_000_000_000L, interval / 4));
      int budget = batchBytes(worker.client().maxMessageBytes());
      try {
        while (!done.isDone()) {
          long sleep;
          synchronized (lock) {
            sleep = sleepLocked(tick, System.nanoTime());
          }
          wake.tryAcquire(sleep, TimeUnit.NANOSECONDS);
          wake.drainPermits();
          if (done.isDone()) {
            return;
          }
          List<TaskHeartbeat> dueBeats;
          List<TaskCompletion> toComplete;
          List<TaskFailure> toFail;
          String drainReason;
          boolean close;
          boolean idle;
          synchronized (lock) {
            long now = System.nanoTime();
            for (Held h : held.values()) {
              if (now + h.every / 4 - h.next >= 0) {
                queueBeatLocked(h, now);
              }
            }
            dueBeats = new ArrayList<>(beats.values());
            beats.clear();
            toComplete = completions;
            toFail = failures;
            completions = new ArrayList<>();
            failures = new ArrayList<>();
            drainReason = drain;
            drain = null;
            close = closing;
            idle = now - lastWrite >= interval / 2;
          }
          List<ConnectRequest> msgs = new ArrayList<>();
          // Heartbeats first: they concern attempts whose results may follow, and are refused
          // once a result is recorded.
          for (List<TaskHeartbeat> part :
              batches(dueBeats, HeartbeatBatch.HEARTBEATS_FIELD_NUMBER, budget)) {
            msgs.add(
                ConnectRequest.newBuilder()
                    .setHeartbeat(HeartbeatBatch.newBuilder().addAllHeartbeats(part))
                    .build());
          }
          for (List<TaskCompletion> part :
              batches(toComplete, CompletionBatch.COMPLETIONS_FIELD_NUMBER, budget)) {
            msgs.add(
                ConnectRequest.newBuilder()
                    .setComplete(CompletionBatch.newBuilder().addAllCompletions(part))
                    .build());
          }
          for (List<TaskFailure> part :
              batches(toFail, FailureBatch.FAILURES_FIELD_NUMBER, budget)) {
            msgs.add(
                ConnectRequest.newBuilder()
                    .setFail(FailureBatch.newBuilder().addAllFailures(part))
                    .build());
          }
          if (drainReason != null) {
            msgs.add(
                ConnectRequest.newBuilder()
                    .setDrain(WorkerDrain.newBuilder().setReason(drainReason))
                    .build());
          }
          if (msgs.isEmpty() && idle && !close) {
            // An empty heartbeat batch is a liveness ping.
            msgs.add(
                ConnectRequest.newBuilder()
                    .setHeartbeat(HeartbeatBatch.getDefaultInstance())
                    .build());
          }
          for (ConnectRequest msg : msgs) {
            while (!call.isReady()) {
              if (done.isDone()) {
                return;
              }
              ready.tryAcquire(100, TimeUnit.MILLISECONDS);
            }
            call.onNext(msg);
          }
          if (!msgs.isEmpty()) {
            synchronized (lock) {
              lastWrite = System.nanoTime();
            }
          }
          if (close) {
            call.onCompleted();
            return;
          }
        }
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      } catch (RuntimeException e) {
        // The stream is broken; onError says why, or this does.
        end(e);
      }
    }
  }
}
