package dev.are.sdk;

import com.fasterxml.jackson.databind.JsonNode;
import dev.are.sdk.v1.CompleteTaskRequest;
import dev.are.sdk.v1.DependencyResult;
import dev.are.sdk.v1.FailTaskRequest;
import dev.are.sdk.v1.Failure;
import dev.are.sdk.v1.FailureKind;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.PollTaskRequest;
import dev.are.sdk.v1.PollTaskResponse;
import dev.are.sdk.v1.RecordHeartbeatRequest;
import dev.are.sdk.v1.RecordHeartbeatResponse;
import dev.are.sdk.v1.TaskAssignment;
import dev.are.sdk.v1.TaskCompletion;
import dev.are.sdk.v1.TaskFailure;
import dev.are.sdk.v1.TaskHeartbeat;
import dev.are.sdk.v1.Usage;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.Semaphore;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Serves tasks of one or more capabilities. By default over one WorkerService.Connect stream
 * ({@link WorkerOptions.Transport#STREAM}: assignments pushed up to the free slots, batched
 * heartbeats and results acknowledged on the stream, cancellations pushed, reconnected with
 * jittered backoff); or on the unary path ({@link WorkerOptions.Transport#UNARY}: PollTask long
 * polls, RecordHeartbeat while a handler runs, CompleteTask / FailTask). The handlers are the same
 * either way. Add handlers with {@link #handle}, then {@link #run()} on a thread of yours, or
 * {@link #start()} in the background; stop it with {@link #shutdown()} or {@link #close()}.
 *
 * <pre>{@code
 * try (Worker worker = new Worker(client, "writer", WorkerOptions.defaults())
 *     .handle("write", task -> Map.of("draft", "About " + task.input().get("topic").asText()))
 *     .start()) {
 *   ... // submit workflows; close() stops gracefully
 * }
 * }</pre>
 */
public final class Worker implements AutoCloseable {
  private static final int MAX_POLL_TASKS = 100;
  private static final int MAX_FAILURE_MESSAGE = 32 * 1024;
  // The sidecar refuses a Failure beyond these bounds (common.proto); a refused failure report
  // would leave its attempt RUNNING, so every report the worker builds is fitted to them first.
  private static final int MAX_FAILURE_TYPE = 256; // characters (code points)
  private static final int MAX_FAILURE_DETAILS = 1024 * 1024; // also a failure with its causes
  private static final int MAX_DETAILS_CONTENT_TYPE = 128; // characters (code points)
  private static final int MAX_FAILURE_CAUSES = 8;
  // The sidecar keeps a message's first 32 KiB of UTF-8: a note of dropped causes goes within them.
  private static final int MAX_MESSAGE_BYTES = 32 * 1024;
  // Causes of a handler's error counted beyond the 8 kept, at most (a getCause() may make a new
  // exception on each call: the walk must end even then).
  private static final int MAX_COUNTED_CAUSES = 10_000;
  private static final long MAX_DURATION_SECONDS = 315_576_000_000L; // the largest Duration
  /** The most bytes of heartbeat details the sidecar takes (worker_service.proto). */
  static final int MAX_HEARTBEAT_DETAILS = 1024 * 1024;

  private static final System.Logger LOG = System.getLogger(Worker.class.getName());

  static final Set<String> LOST_REASONS =
      Set.of("TASK_NOT_HELD", "TASK_ALREADY_COMPLETED", "TASK_NOT_FOUND", "WORKFLOW_NOT_FOUND");
  private static final AtomicInteger THREADS = new AtomicInteger();

  private enum End {
    HELD,
    CANCEL_REQUESTED,
    LOST
  }

  private final Client client;
  private final String name;
  private final WorkerOptions options;
  private final Map<String, TaskHandler> handlers = new HashMap<>();
  private final WorkerStats stats = new WorkerStats();
  private final AtomicReference<String> workerId = new AtomicReference<>("");
  private final CountDownLatch stopping = new CountDownLatch(1);
  private final CountDownLatch stopped = new CountDownLatch(1);
  private final Set<TaskContext> active = ConcurrentHashMap.newKeySet();
  private final Object heldLock = new Object();
  private int unsettled; // unary attempts received and not yet settled (under heldLock)
  private final AtomicReference<RuntimeException> failure = new AtomicReference<>();
  private final Reporter unary = new UnaryReporter();
  private volatile boolean started;
  private volatile boolean background; // started with start(): run()'s error is kept

  /** A worker named {@code name} (shared by its replicas). */
  public Worker(Client client, String name, WorkerOptions options) {
    this.client = client;
    this.name = name;
    this.options = options;
  }

  /**
   * Sets the handler of a capability. Its return value, written as JSON, is the task's output
   * (null: no output); an exception fails the attempt (retried by policy).
   */
  public Worker handle(String capability, TaskHandler handler) {
    if (started) {
      throw new IllegalStateException("handlers are set before the worker runs");
    }
    handlers.put(capability, handler);
    return this;
  }

  /** The worker's counters. */
  public WorkerStats stats() {
    return stats;
  }

  /** The id the sidecar gave this worker (its stream's; "" before the first poll or stream). */
  public String workerId() {
    return workerId.get();
  }

  /** Runs the worker on a background thread; returns it at once. */
  public Worker start() {
    started = true;
    background = true;
    Thread t =
        new Thread(
            () -> {
              try {
                run();
              } catch (RuntimeException e) {
                // Kept by run() for awaitTermination, before it said the worker had stopped.
              }
            },
            "are-worker-" + name);
    t.setDaemon(true);
    t.start();
    return this;
  }

  /**
   * Asks the worker to stop, at once: no new work (on the stream a drain tells the sidecar to
   * assign no more; on the unary path the poll in flight finishes, within the poll timeout),
   * running handlers get the shutdown grace, then they are cancelled with {@link
   * CancelReason#WORKER_STOPPED} and their failures reported as WORKER_LOST; on the stream the
   * worker then waits for the acks of its results (within the report timeout) and closes it.
   */
  public void shutdown() {
    stopping.countDown();
  }

  /**
   * Waits at most {@code timeout} for {@link #run()} to end; true when it did. Rethrows the error
   * that ended a worker started with {@link #start()}.
   */
  public boolean awaitTermination(Duration timeout) throws InterruptedException {
    boolean done = stopped.await(Durations.nanos(timeout), TimeUnit.NANOSECONDS);
    RuntimeException e = failure.get();
    if (e != null) {
      throw e;
    }
    return done;
  }

  /**
   * Stops gracefully ({@link #shutdown()}) and waits until the worker has stopped, for at most the
   * poll timeout plus the shutdown grace plus the report timeout.
   */
  @Override
  public void close() {
    shutdown();
    if (!started) {
      return;
    }
    Duration bound =
        Durations.saturated(options.pollTimeout())
            .plus(Durations.saturated(options.shutdownGrace()))
            .plus(Durations.saturated(options.reportTimeout()))
            .plusSeconds(2);
    try {
      awaitTermination(bound);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  /**
   * Serves tasks on this thread until {@link #shutdown()}, then stops gracefully (see there).
   * Throws at once when the sidecar refuses the worker for a reason retrying cannot fix (a bad name
   * or capability, authentication, UNIMPLEMENTED), or when its client is closed (CANCELLED, reason
   * {@code CLIENT_CLOSED}).
   */
  public void run() {
    if (handlers.isEmpty()) {
      AreException e =
          AreException.local(
              Status.Code.INVALID_ARGUMENT, "NO_HANDLER", "the worker has no handler");
      keep(e);
      stopped.countDown();
      throw e;
    }
    started = true;
    int n = THREADS.incrementAndGet();
    ExecutorService pool = Executors.newCachedThreadPool(daemons(name, n, "attempt"));
    ScheduledExecutorService timers = timers(daemons(name, n, "timer"));
    Semaphore slots = new Semaphore(options.concurrency());
    try {
      if (options.transport() == WorkerOptions.Transport.STREAM) {
        // Drains what its session holds; handlers still running after it are those of attempts
        // the sidecar took back (cancelled, or released with a broken stream): not awaited.
        new WorkerStream(this, pool, timers, slots, stopping).serve();
      } else {
        try {
          poll(pool, timers, slots);
        } finally {
          drain();
        }
      }
    } catch (RuntimeException e) {
      keep(e);
      throw e;
    } finally {
      pool.shutdownNow();
      timers.shutdownNow();
      stopped.countDown();
    }
  }

  /**
   * Keeps the error that ends the run of a worker started with {@link #start()}, for {@link
   * #awaitTermination}; before the worker is said to have stopped, or a waiter woken by that could
   * miss it.
   */
  private void keep(RuntimeException e) {
    if (background) {
      failure.compareAndSet(null, e);
    }
  }

  /**
   * The worker's one timer thread (attempts' deadlines). A cancelled timer leaves its queue at
   * once: each attempt schedules one at its deadline (start_to_close_timeout, 10 minutes by default
   * and up to 7 days) and cancels it when its handler returns, so a worker that kept them until
   * they were due would hold one per attempt run in that time.
   */
  private static ScheduledExecutorService timers(ThreadFactory threads) {
    ScheduledThreadPoolExecutor timers = new ScheduledThreadPoolExecutor(1, threads);
    timers.setRemoveOnCancelPolicy(true);
    return timers;
  }

  /** Daemon threads named after the worker, so that a thread dump says whose they are. */
  private static ThreadFactory daemons(String name, int n, String role) {
    return r -> {
      Thread t = new Thread(r, "are-worker-" + name + "-" + n + "-" + role);
      t.setDaemon(true);
      return t;
    };
  }

  /**
   * The unary transport's graceful stop: waits (the shutdown grace) for the attempts still held to
   * be reported, then cancels their handlers with {@link CancelReason#WORKER_STOPPED} and waits
   * (the report timeout) for those to report. Attempts the sidecar took back (TASK_NOT_HELD) are
   * not awaited: their handlers, told to stop, may take as long as they like.
   */
  private void drain() {
    try {
      if (!awaitSettled(Durations.deadline(options.shutdownGrace()))) {
        for (TaskContext task : active) {
          if (!task.settled.get()) {
            task.cancel(CancelReason.WORKER_STOPPED);
          }
        }
        awaitSettled(Durations.deadline(options.reportTimeout()));
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  /** Counts an attempt received on the unary path, until {@link #settle}d. */
  private void hold() {
    synchronized (heldLock) {
      unsettled++;
    }
  }

  /**
   * Marks an attempt as needing nothing more of this worker (reported, or taken back by the
   * sidecar); once per attempt.
   */
  private void settle(TaskContext task) {
    if (task.settled.compareAndSet(false, true)) {
      synchronized (heldLock) {
        unsettled--;
        heldLock.notifyAll();
      }
    }
  }

  /** Waits until every attempt received is settled; false at {@code by}. */
  private boolean awaitSettled(long by) throws InterruptedException {
    synchronized (heldLock) {
      while (unsettled > 0) {
        long left = by - System.nanoTime();
        if (left <= 0) {
          return false;
        }
        TimeUnit.NANOSECONDS.timedWait(heldLock, left);
      }
      return true;
    }
  }

  Client client() {
    return client;
  }

  String name() {
    return name;
  }

  WorkerOptions options() {
    return options;
  }

  void setWorkerId(String id) {
    workerId.set(id);
  }

  List<String> capabilities() {
    return new ArrayList<>(new TreeSet<>(handlers.keySet()));
  }

  /** Whether the sidecar's refusal is one that retrying cannot fix. */
  static boolean fatal(Status.Code code) {
    return switch (code) {
      case INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED -> true;
      default -> false;
    };
  }

  private boolean isStopping() {
    return stopping.getCount() == 0;
  }

  private void poll(ExecutorService pool, ScheduledExecutorService timers, Semaphore slots) {
    List<String> capabilities = capabilities();
    long delayMs = 50;
    while (!isStopping()) {
      int permits;
      try {
        if (!slots.tryAcquire(100, TimeUnit.MILLISECONDS)) {
          continue;
        }
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      }
      permits = 1;
      while (permits < MAX_POLL_TASKS && slots.tryAcquire()) {
        permits++;
      }
      PollTaskRequest req =
          PollTaskRequest.newBuilder()
              .setWorkerName(name)
              .addAllCapabilities(capabilities)
              .setMaxTasks(permits)
              .setIdentity(options.identity())
              .build();
      PollTaskResponse resp;
      try {
        // Not cancelled by shutdown (see WorkerOptions.pollTimeout), but bounded.
        resp = Durations.withTimeout(client.raw().worker(), options.pollTimeout()).pollTask(req);
      } catch (RuntimeException t) {
        slots.release(permits);
        AreException e = AreException.from(t);
        if (fatal(e.code())) {
          throw e;
        }
        if (client.isClosed()) {
          throw Client.closedError("worker " + name, e);
        }
        if (e.code() == Status.Code.DEADLINE_EXCEEDED) {
          continue;
        }
        try {
          if (stopping.await(Backoff.jitter(delayMs), TimeUnit.MILLISECONDS)) {
            return;
          }
        } catch (InterruptedException ie) {
          Thread.currentThread().interrupt();
          return;
        }
        delayMs = Math.min(delayMs * 2, 5000);
        continue;
      }
      delayMs = 50;
      if (!resp.getWorkerId().isEmpty()) {
        workerId.set(resp.getWorkerId());
      }
      int used = 0;
      for (TaskAssignment a : resp.getAssignmentsList()) {
        if (used == permits) {
          break;
        }
        used++;
        hold();
        pool.execute(
            () -> {
              try {
                attempt(a, pool, timers);
              } finally {
                slots.release();
              }
            });
      }
      slots.release(permits - used);
    }
  }

  private void attempt(TaskAssignment a, ExecutorService pool, ScheduledExecutorService timers) {
    TaskContext task = new TaskContext(client, a, options.interruptOnCancel());
    active.add(task);
    try {
      Future<End> beats = pool.submit(() -> heartbeat(task));
      Outcome outcome;
      try {
        outcome = call(task, pool, timers);
      } finally {
        task.finish(); // whatever call() throws, the heartbeats of this attempt stop
      }
      End end;
      try {
        end =
            beats.get(Durations.nanos(heartbeatBound(task)) + 1_000_000_000L, TimeUnit.NANOSECONDS);
      } catch (ExecutionException | TimeoutException e) {
        beats.cancel(true);
        end = End.HELD;
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      }
      long reportBy = Durations.deadline(options.reportTimeout());
      switch (end) {
        case LOST -> stats.cancelled.incrementAndGet();
        case CANCEL_REQUESTED -> {
          stats.cancelled.incrementAndGet();
          fail(
              task,
              Failure.newBuilder()
                  .setMessage("cancelled: the sidecar asked the worker to stop")
                  .setType("Cancelled")
                  .setKind(FailureKind.FAILURE_KIND_CANCELLED)
                  .build(),
              null,
              reportBy,
              unary);
        }
        case HELD -> report(task, outcome, reportBy, unary);
      }
    } finally {
      active.remove(task);
      settle(task);
    }
  }

  /** What a handler returned or threw. */
  record Outcome(Object value, Throwable error) {}

  /**
   * The failure type an attempt is reported failed with when the sidecar refuses its completion as
   * invalid (for example a negative usage counter): such a refusal changes nothing and the attempt
   * stays held, so the worker reports this failure instead, quoting the refusal (which names the
   * field), retried by the task's retry policy.
   */
  public static final String COMPLETION_REFUSED = "CompletionRefused";

  /**
   * How the sidecar answered a completion: recorded; refused as invalid, which left the attempt
   * held ({@code refusedReason} and {@code refusedMessage} say why); or otherwise not recorded
   * (both null: the attempt is gone, or no answer came).
   */
  record Answer(boolean recorded, String refusedReason, String refusedMessage) {
    static final Answer RECORDED = new Answer(true, null, null);
    static final Answer NOT_RECORDED = new Answer(false, null, null);

    /**
     * The answer to a refusal with {@code reason} (an ErrorReason name without its prefix) and,
     * for a unary call, its status {@code code} (null on the stream, where any refusal is of the
     * item).
     */
    static Answer refused(Status.Code code, String reason, String message) {
      boolean invalid =
          !reason.isEmpty()
              && !LOST_REASONS.contains(reason)
              && (code == null
                  || code == Status.Code.INVALID_ARGUMENT
                  || code == Status.Code.FAILED_PRECONDITION
                  || code == Status.Code.NOT_FOUND);
      return invalid ? new Answer(false, reason, message) : NOT_RECORDED;
    }

    boolean refusedAsInvalid() {
      return refusedReason != null;
    }
  }

  /** Sends one attempt's result over a transport. */
  interface Reporter {
    /** Sends a completion; says whether the sidecar recorded it, or why not. */
    Answer complete(TaskCompletion completion, long reportBy);

    /** Sends a failure; true when the sidecar recorded it. */
    boolean fail(TaskFailure failure, long reportBy);
  }

  /** CompleteTask / FailTask, retried on UNAVAILABLE until {@code reportBy}. */
  private final class UnaryReporter implements Reporter {
    @Override
    public Answer complete(TaskCompletion completion, long reportBy) {
      CompleteTaskRequest req = CompleteTaskRequest.newBuilder().setCompletion(completion).build();
      return sendUntil(
          reportBy,
          left ->
              client
                  .raw()
                  .worker()
                  .withDeadlineAfter(left, TimeUnit.NANOSECONDS)
                  .completeTask(req));
    }

    @Override
    public boolean fail(TaskFailure failure, long reportBy) {
      FailTaskRequest req = FailTaskRequest.newBuilder().setFailure(failure).build();
      return retryUnavailable(
          reportBy,
          left ->
              client.raw().worker().withDeadlineAfter(left, TimeUnit.NANOSECONDS).failTask(req));
    }
  }

  /** Reports a handler's outcome: its output, or its error as a failure. */
  void report(TaskContext task, Outcome outcome, long reportBy, Reporter reporter) {
    if (outcome.error == null) {
      complete(task, outcome.value, reportBy, reporter);
    } else {
      reportError(task, outcome.error, reportBy, reporter);
    }
  }

  /**
   * Fetches blob inputs, runs the handler on a thread of its own, and cancels it at the deadline.
   */
  Outcome call(TaskContext task, ExecutorService pool, ScheduledExecutorService timers) {
    TaskAssignment a = task.assignment();
    TaskHandler handler = handlers.get(a.getCapability());
    if (handler == null) {
      return new Outcome(
          null,
          new TaskError("NoHandler", "no handler for \"" + a.getCapability() + "\"")
              .nonRetryable());
    }
    try {
      byte[] input = client.payloadBytes(a.hasInput() ? a.getInput() : null);
      List<TaskContext.Dependency> deps = new ArrayList<>();
      for (DependencyResult d : a.getDependenciesList()) {
        deps.add(
            new TaskContext.Dependency(
                d.getTaskId(),
                d.getState(),
                client.payloadBytes(d.hasOutput() ? d.getOutput() : null),
                d.hasFailure() ? d.getFailure() : null));
      }
      task.setInputs(input, deps);
    } catch (AreException e) {
      return new Outcome(
          null, new TaskError("BlobReadError", "cannot read the task's blobs: " + e, e));
    }
    ScheduledFuture<?> atDeadline = null;
    if (a.hasDeadlineTime()) {
      Duration left = Duration.between(Instant.now(), Durations.fromProto(a.getDeadlineTime()));
      if (!Durations.isUnbounded(left)) {
        atDeadline =
            timers.schedule(
                () -> task.cancel(CancelReason.DEADLINE_EXCEEDED),
                Math.max(0, Durations.nanos(left)),
                TimeUnit.NANOSECONDS);
      }
    }
    Future<Outcome> running = pool.submit(() -> runHandler(task, handler));
    try {
      return running.get();
    } catch (ExecutionException e) {
      return new Outcome(null, e.getCause()); // not expected: runHandler keeps what it throws
    } catch (InterruptedException e) {
      // The worker's pool is being torn down after the report timeout.
      task.cancel(CancelReason.WORKER_STOPPED);
      Thread.currentThread().interrupt();
      return new Outcome(null, e);
    } finally {
      if (atDeadline != null) {
        atDeadline.cancel(false);
      }
    }
  }

  /**
   * Runs the handler on this thread and keeps whatever it throws, whatever that is. (Through a
   * Future it would come as an ExecutionException, whose constructor calls the error's {@code
   * toString()}: an error whose text cannot be read would escape, and its attempt go unreported.)
   */
  private static Outcome runHandler(TaskContext task, TaskHandler handler) {
    try {
      return new Outcome(task.run(handler), null);
    } catch (Throwable t) {
      return new Outcome(null, t);
    }
  }

  private void reportError(TaskContext task, Throwable error, long reportBy, Reporter reporter) {
    Failure.Builder f = failureOf(error);
    if (task.cancelReason().orElse(null) == CancelReason.WORKER_STOPPED) {
      f.setKind(FailureKind.FAILURE_KIND_WORKER_LOST).setType("WorkerStopped");
    }
    if (fail(task, withCauses(f.build(), error), retryAfterOf(error), reportBy, reporter)) {
      stats.failed.incrementAndGet();
    }
  }

  /**
   * The least delay before a retry that a handler's error asks for: a {@link TaskError}'s own, or
   * the sidecar's retry hint ({@code RetryInfo}) on a refused call the handler let through, as an
   * {@link AreException} (a submit or spawn refused by a full pool queue, say); else null. Never
   * throws: a TaskError subclass whose {@code retryAfterValue()} throws asks for no delay (its
   * failure would otherwise go unreported, the attempt left RUNNING until its timeout).
   */
  private static Duration retryAfterOf(Throwable error) {
    try {
      if (error instanceof TaskError te) {
        return te.retryAfterValue();
      }
      if (error instanceof AreException ae) {
        return ae.retryDelay().orElse(null);
      }
    } catch (RuntimeException | Error e) {
      // The failure goes without a delay.
    }
    return null;
  }

  /**
   * The Failure of what a handler threw; never throws itself, since the attempt must always be
   * reported: an exception whose {@code getMessage()} or {@code toString()} throws, or a {@link
   * TaskError} without a type, still gives a failure named after its class.
   */
  private static Failure.Builder failureOf(Throwable error) {
    Failure.Builder f = Failure.newBuilder().setKind(FailureKind.FAILURE_KIND_APPLICATION);
    String name = error.getClass().getSimpleName();
    f.setType(name).setMessage(truncate(textOf(error)));
    try {
      if (error instanceof TaskError te) {
        String type = te.type();
        f.setType(type == null || type.isEmpty() ? name : type);
        f.setNonRetryable(te.isNonRetryable());
        if (te.detailsValue() != null) {
          try {
            f.setDetails(Json.payload(te.detailsValue()));
          } catch (AreException ignored) {
            // Details that cannot be written as JSON are dropped; the failure still goes.
          }
        }
      } else {
        f.setStackTrace(truncate(stackTraceOf(error)));
      }
    } catch (RuntimeException | Error e) {
      // A TaskError subclass or its details that threw: the failure goes as it is so far.
    }
    return f;
  }

  /**
   * {@code failure} (what a handler threw) with the error's causes ({@link Throwable#getCause()},
   * outermost first) as its nested causes, fitted as {@link #fitFailure} does: at most 8 causes,
   * the deepest kept one saying how many more there were (counted up to 10,000). A cause that was
   * met before ends the chain (a cycle), and so does a {@code getCause()} that throws. Each cause
   * has a message and a type as the failure has (a {@link TaskError}'s type, else its class's
   * simple name); not a stack trace, since the failure's own shows its causes' frames. Never
   * throws.
   */
  private static Failure withCauses(Failure failure, Throwable error) {
    List<Failure> levels = new ArrayList<>();
    levels.add(failure);
    Set<Throwable> seen = Collections.newSetFromMap(new IdentityHashMap<>());
    seen.add(error);
    int tooDeep = 0;
    for (Throwable c = causeOf(error); c != null && seen.add(c); c = causeOf(c)) {
      if (levels.size() <= MAX_FAILURE_CAUSES) {
        levels.add(causeFailure(c));
      } else if (++tooDeep == MAX_COUNTED_CAUSES) {
        break;
      }
    }
    return fitChain(levels, tooDeep, tooDeep == MAX_COUNTED_CAUSES);
  }

  /** An error's cause, or null when it has none or {@code getCause()} throws. */
  private static Throwable causeOf(Throwable error) {
    try {
      return error.getCause();
    } catch (RuntimeException | Error e) {
      return null;
    }
  }

  /** One cause of a handler's error as a Failure: its message and type, never throwing. */
  private static Failure causeFailure(Throwable cause) {
    String type = cause.getClass().getSimpleName();
    if (cause instanceof TaskError te) {
      try {
        String own = te.type();
        if (own != null && !own.isEmpty()) {
          type = own;
        }
      } catch (RuntimeException | Error e) {
        // A TaskError subclass whose type() throws: named after its class.
      }
    }
    return Failure.newBuilder()
        .setKind(FailureKind.FAILURE_KIND_APPLICATION)
        .setType(type)
        .setMessage(truncate(textOf(cause)))
        .build();
  }

  /**
   * An error's message, else its {@code toString()}, else (when those throw, or give null) its
   * class name, saying that its message could not be read.
   */
  private static String textOf(Throwable error) {
    try {
      String message = error.getMessage();
      if (message != null) {
        return message;
      }
    } catch (RuntimeException | Error e) {
      // Its toString() usually calls getMessage() too; try it all the same.
    }
    try {
      String text = error.toString();
      if (text != null) {
        return text;
      }
    } catch (RuntimeException | Error e) {
      // Its class name says what is left to say.
    }
    return error.getClass().getSimpleName() + " (its message could not be read)";
  }

  /**
   * The error's stack trace as {@code printStackTrace} writes it (with its causes); when that
   * throws (it calls {@code toString()} on the error and each cause), the error's own frames
   * under its class name.
   */
  private static String stackTraceOf(Throwable error) {
    try {
      StringWriter trace = new StringWriter();
      error.printStackTrace(new PrintWriter(trace));
      return trace.toString();
    } catch (RuntimeException | Error e) {
      StringBuilder trace =
          new StringBuilder(error.getClass().getName()).append(" (its message could not be read)");
      for (StackTraceElement frame : error.getStackTrace()) {
        trace.append(System.lineSeparator()).append("\tat ").append(frame);
      }
      return trace.toString();
    }
  }

  private static String truncate(String s) {
    return s.length() <= MAX_FAILURE_MESSAGE ? s : s.substring(0, MAX_FAILURE_MESSAGE);
  }

  private void complete(TaskContext task, Object value, long reportBy, Reporter reporter) {
    TaskCompletion.Builder completion =
        TaskCompletion.newBuilder()
            .setWorkflowId(task.workflowId())
            .setTaskId(task.taskId())
            .setAttempt(task.attempt())
            .setUsage(task.usage());
    boolean none = value == null || (value instanceof JsonNode n && n.isNull());
    if (!none) {
      byte[] data;
      try {
        data = Json.encode(value);
      } catch (AreException e) {
        failOutput(task, e, reportBy, reporter);
        return;
      } catch (RuntimeException | Error e) {
        // Writing the output ran the handler's own code (a getter, a serialiser), which threw
        // what Jackson lets through (an Error): a failure of the handler like any other.
        reportError(task, e, reportBy, reporter);
        return;
      }
      Payload output;
      try {
        output = client.inlineOrBlob(data, Json.CONTENT_TYPE, task.workflowId());
      } catch (AreException e) {
        failOutput(task, e, reportBy, reporter);
        return;
      }
      completion.setOutput(output);
    }
    TaskCompletion sent = completion.build();
    Answer answer = reporter.complete(sent, reportBy);
    if (answer.recorded()) {
      stats.completed.incrementAndGet();
    } else if (answer.refusedAsInvalid()) {
      // The refusal changed nothing: the attempt is still held, so report it failed instead, once
      // (a refused failure is not replaced).
      if (reporter.fail(completionRefused(sent, answer), reportBy)) {
        stats.failed.incrementAndGet();
      }
    }
  }

  /** Reports an output that could not be written (InvalidOutput) or stored (BlobWriteError). */
  private void failOutput(TaskContext task, AreException e, long reportBy, Reporter reporter) {
    String type = "INVALID_JSON".equals(e.reason()) ? "InvalidOutput" : "BlobWriteError";
    Failure failure =
        Failure.newBuilder()
            .setMessage(truncate("cannot store the output: " + e.getMessage()))
            .setType(type)
            .setNonRetryable(type.equals("InvalidOutput"))
            .setKind(FailureKind.FAILURE_KIND_APPLICATION)
            .build();
    if (fail(task, failure, null, reportBy, reporter)) {
      stats.failed.incrementAndGet();
    }
  }

  /**
   * The failure reported in place of a refused completion. It carries the completion's usage, so
   * budgets still count it, with any negative counter (itself a reason for the refusal) as 0, so
   * that it is not refused too.
   */
  static TaskFailure completionRefused(TaskCompletion completion, Answer answer) {
    String message = answer.refusedMessage().isEmpty() ? "no message" : answer.refusedMessage();
    Usage u = completion.getUsage();
    TaskFailure report =
        TaskFailure.newBuilder()
            .setWorkflowId(completion.getWorkflowId())
            .setTaskId(completion.getTaskId())
            .setAttempt(completion.getAttempt())
            .setFailure(
                Failure.newBuilder()
                    .setMessage(
                        truncate(
                            "the sidecar refused the completion ("
                                + answer.refusedReason()
                                + "): "
                                + message))
                    .setType(COMPLETION_REFUSED)
                    .setKind(FailureKind.FAILURE_KIND_APPLICATION))
            .setUsage(
                Usage.newBuilder()
                    .setInputTokens(Math.max(0, u.getInputTokens()))
                    .setOutputTokens(Math.max(0, u.getOutputTokens()))
                    .setCostMicroUsd(Math.max(0, u.getCostMicroUsd()))
                    .setLlmCalls(Math.max(0, u.getLlmCalls()))
                    .setToolCalls(Math.max(0, u.getToolCalls())))
            .build();
    return fitReport(report);
  }

  /** Reports a failure; true when the sidecar accepted it. */
  private boolean fail(
      TaskContext task, Failure failure, Duration retryAfter, long reportBy, Reporter reporter) {
    TaskFailure.Builder report =
        TaskFailure.newBuilder()
            .setWorkflowId(task.workflowId())
            .setTaskId(task.taskId())
            .setAttempt(task.attempt())
            .setFailure(failure)
            .setUsage(task.usage());
    if (retryAfter != null && !retryAfter.isNegative() && !retryAfter.isZero()) {
      report.setRetryAfter(
          Durations.unchecked(
              retryAfter.getSeconds() >= MAX_DURATION_SECONDS
                  ? Duration.ofSeconds(MAX_DURATION_SECONDS)
                  : retryAfter));
    }
    return reporter.fail(fitReport(report.build()), reportBy);
  }

  /**
   * A failure report fitted to the bounds the sidecar refuses beyond, so that it is never refused
   * for its shape (it would leave the attempt RUNNING): its failure as {@link #fitFailure}, any
   * negative usage counter as 0, a negative or malformed retry delay as none.
   */
  static TaskFailure fitReport(TaskFailure report) {
    TaskFailure.Builder fitted = report.toBuilder();
    if (report.hasFailure()) {
      fitted.setFailure(fitFailure(report.getFailure()));
    }
    if (report.hasUsage()) {
      Usage u = report.getUsage();
      fitted.setUsage(
          Usage.newBuilder()
              .setInputTokens(Math.max(0, u.getInputTokens()))
              .setOutputTokens(Math.max(0, u.getOutputTokens()))
              .setCostMicroUsd(Math.max(0, u.getCostMicroUsd()))
              .setLlmCalls(Math.max(0, u.getLlmCalls()))
              .setToolCalls(Math.max(0, u.getToolCalls())));
    }
    if (report.hasRetryAfter()) {
      com.google.protobuf.Duration d = report.getRetryAfter();
      if (d.getSeconds() < 0
          || d.getSeconds() > MAX_DURATION_SECONDS
          || d.getNanos() < 0
          || d.getNanos() >= 1_000_000_000) {
        fitted.clearRetryAfter();
      }
    }
    return fitted.build();
  }

  /**
   * A Failure fitted to the sidecar's bounds (see {@link #fitOne}), with at most 8 causes, dropped
   * from the deepest while the whole is over 1 MiB; the deepest cause kept says how many were
   * dropped and why, as the sidecar would.
   */
  static Failure fitFailure(Failure failure) {
    List<Failure> levels = new ArrayList<>();
    int tooDeep = 0;
    for (Failure f = failure; f != null; f = f.hasCause() ? f.getCause() : null) {
      if (levels.size() <= MAX_FAILURE_CAUSES) {
        levels.add(f);
      } else {
        tooDeep++;
      }
    }
    return fitChain(levels, tooDeep, false);
  }

  /**
   * The levels of a failure (outermost first, their own causes ignored) linked into one, each
   * fitted (see {@link #fitOne}), its deepest causes dropped while the whole is over 1 MiB. When
   * causes were dropped ({@code tooDeep} of them below the levels given, more if {@code atLeast},
   * and any dropped here for size), the deepest level kept says so at the end of its message.
   */
  private static Failure fitChain(List<Failure> levels, int tooDeep, boolean atLeast) {
    List<Failure> fitted = new ArrayList<>();
    for (Failure one : levels) {
      fitted.add(fitOne(one).clearCause().build());
    }
    int tooBig = 0;
    while (true) {
      Failure whole = null;
      for (int i = fitted.size() - 1; i >= 0; i--) {
        Failure.Builder one = fitted.get(i).toBuilder();
        if (whole != null) {
          one.setCause(whole);
        } else if (tooDeep + tooBig > 0) {
          one.setMessage(noted(one.getMessage(), causesNote(tooDeep, tooBig, atLeast)));
        }
        whole = one.build();
      }
      if (fitted.size() == 1 || whole.getSerializedSize() <= MAX_FAILURE_DETAILS) {
        return whole;
      }
      fitted.remove(fitted.size() - 1);
      tooBig++;
    }
  }

  /** How many causes below the deepest kept one were dropped, and why, as the sidecar says it. */
  private static String causesNote(int tooDeep, int tooBig, boolean atLeast) {
    List<String> why = new ArrayList<>();
    if (tooDeep > 0) {
      why.add("causes nest at most " + MAX_FAILURE_CAUSES + " deep");
    }
    if (tooBig > 0) {
      why.add("a failure with its causes is at most 1 MiB");
    }
    int count = tooDeep + tooBig;
    return String.format(
        Locale.ROOT,
        "[%d%s deeper cause%s dropped: %s]",
        count,
        atLeast ? " or more" : "",
        count > 1 || atLeast ? "s" : "",
        String.join("; ", why));
  }

  /**
   * {@code message} with {@code note} appended, the message cut (whole characters) so that both
   * fit in the 32 KiB of UTF-8 the sidecar keeps: the note is never the part cut off.
   */
  private static String noted(String message, String note) {
    if (message.isEmpty()) {
      return note;
    }
    int room = MAX_MESSAGE_BYTES - note.getBytes(StandardCharsets.UTF_8).length - 1;
    int bytes = 0;
    int end = 0;
    while (end < message.length()) {
      int cp = message.codePointAt(end);
      int size = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
      if (bytes + size > room) {
        break;
      }
      bytes += size;
      end += Character.charCount(cp);
    }
    return message.substring(0, end) + " " + note;
  }

  /**
   * One Failure fitted to the sidecar's bounds: the type cut to 256 characters; details by
   * reference, over 1 MiB or with a content type over 128 characters dropped, saying so in the
   * message (the sidecar cuts a long message or stack trace, never refusing it).
   */
  private static Failure.Builder fitOne(Failure failure) {
    Failure.Builder f = failure.toBuilder().setType(cutCodePoints(failure.getType(), MAX_FAILURE_TYPE));
    if (!failure.hasDetails()) {
      return f;
    }
    Payload details = failure.getDetails();
    String why = null;
    int contentTypeChars =
        details.getContentType().codePointCount(0, details.getContentType().length());
    if (details.hasBlob()) {
      why =
          "details by reference ("
              + details.getBlob().getSizeBytes()
              + " bytes) dropped: inline only";
    } else if (details.getData().size() > MAX_FAILURE_DETAILS) {
      why = "details of " + details.getData().size() + " bytes dropped: over 1 MiB";
    } else if (contentTypeChars > MAX_DETAILS_CONTENT_TYPE) {
      why = "details dropped: content type of " + contentTypeChars + " characters, over 128";
    }
    if (why != null) {
      f.clearDetails().setMessage(failure.getMessage() + " (" + why + ")");
    }
    return f;
  }

  /** {@code s} cut to at most {@code n} characters (code points), never inside a surrogate pair. */
  private static String cutCodePoints(String s, int n) {
    if (s.length() <= n) {
      return s;
    }
    int chars = s.codePointCount(0, s.length());
    return chars <= n ? s : s.substring(0, s.offsetByCodePoints(0, n));
  }

  @FunctionalInterface
  private interface Report {
    Object send(long nanosLeft);
  }

  /** Sends until accepted, refused otherwise than UNAVAILABLE, or past {@code by}. */
  private static boolean retryUnavailable(long by, Report report) {
    return sendUntil(by, report).recorded();
  }

  /** {@link #retryUnavailable}, saying why a result was not recorded. */
  private static Answer sendUntil(long by, Report report) {
    long delayMs = 50;
    while (true) {
      long left = by - System.nanoTime();
      if (left <= 0) {
        return Answer.NOT_RECORDED;
      }
      try {
        report.send(left);
        return Answer.RECORDED;
      } catch (StatusRuntimeException e) {
        Status status = e.getStatus();
        if (status.getCode() != Status.Code.UNAVAILABLE) {
          String description = status.getDescription() == null ? "" : status.getDescription();
          return Answer.refused(status.getCode(), AreException.from(e).reason(), description);
        }
      }
      try {
        long leftMs = Math.max(1, (by - System.nanoTime()) / 1_000_000);
        Thread.sleep(Math.min(Backoff.jitter(delayMs), leftMs));
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return Answer.NOT_RECORDED;
      }
      delayMs = Math.min(delayMs * 2, 2000);
    }
  }

  private Duration interval(TaskContext task) {
    Duration interval = options.heartbeatInterval();
    if (task.assignment().hasHeartbeatTimeout()) {
      Duration ht = Durations.fromProto(task.assignment().getHeartbeatTimeout());
      if (!ht.isZero() && ht.dividedBy(4).compareTo(interval) < 0) {
        interval = ht.dividedBy(4);
      }
    }
    return interval.compareTo(Duration.ofMillis(50)) < 0 ? Duration.ofMillis(50) : interval;
  }

  private Duration heartbeatBound(TaskContext task) {
    Duration interval = interval(task);
    return interval.compareTo(Duration.ofSeconds(5)) > 0 ? interval : Duration.ofSeconds(5);
  }

  /**
   * Heartbeats until the attempt is done; cancels the task and says how the sidecar ended the
   * attempt when it does.
   */
  private End heartbeat(TaskContext task) throws InterruptedException {
    long interval = Durations.nanos(interval(task));
    long bound = Durations.nanos(heartbeatBound(task));
    while (true) {
      task.kick.tryAcquire(interval, TimeUnit.NANOSECONDS);
      task.kick.drainPermits();
      if (task.done) {
        return End.HELD;
      }
      TaskHeartbeat.Builder beat =
          TaskHeartbeat.newBuilder()
              .setWorkflowId(task.workflowId())
              .setTaskId(task.taskId())
              .setAttempt(task.attempt());
      Payload details = heartbeatDetails(task.takeHeartbeat());
      if (details != null) {
        beat.setDetails(details);
      }
      RecordHeartbeatRequest req = RecordHeartbeatRequest.newBuilder().setHeartbeat(beat).build();
      try {
        RecordHeartbeatResponse resp =
            client
                .raw()
                .worker()
                .withDeadlineAfter(bound, TimeUnit.NANOSECONDS)
                .recordHeartbeat(req);
        if (resp.getCancelRequested()) {
          task.cancel(CancelReason.CANCEL_REQUESTED);
          return End.CANCEL_REQUESTED;
        }
      } catch (RuntimeException t) {
        AreException e = AreException.from(t);
        if (LOST_REASONS.contains(e.reason())) {
          settle(task); // taken back: a shutdown has nothing of it to wait for
          task.cancel(CancelReason.LEASE_LOST);
          return End.LOST;
        }
      }
    }
  }

  /**
   * A heartbeat's details as sent, or null when there are none to send: details that cannot be
   * written as JSON, or are over 1 MiB (the sidecar refuses such a heartbeat, and so every one
   * after it), are dropped and logged; the heartbeat still goes, so the lease is extended.
   */
  static Payload heartbeatDetails(Object details) {
    if (details == null) {
      return null;
    }
    Payload payload;
    try {
      payload = Json.payload(details);
    } catch (AreException e) {
      return null;
    }
    if (payload.getData().size() > MAX_HEARTBEAT_DETAILS) {
      LOG.log(
          System.Logger.Level.WARNING,
          "heartbeat details of " + payload.getData().size() + " bytes dropped (at most "
              + MAX_HEARTBEAT_DETAILS + "): keep progress small");
      return null;
    }
    return payload;
  }
}
