package dev.are.sdk;

import com.fasterxml.jackson.databind.JsonNode;
import dev.are.sdk.v1.Failure;
import dev.are.sdk.v1.TaskAssignment;
import dev.are.sdk.v1.TaskState;
import dev.are.sdk.v1.Usage;
import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * One attempt of one task, as handed to a {@link TaskHandler}: its identity, input, dependencies,
 * and the means to report usage and progress and to hear a cancellation.
 */
public final class TaskContext {
  /**
   * What the task received about one of its dependencies: its id, state, output bytes when
   * COMPLETED (fetched when passed as a blob) and failure when it failed (else null).
   */
  public record Dependency(String taskId, TaskState state, byte[] output, Failure failure) {
    /** The output decoded from JSON (a null node when there is none). */
    public JsonNode outputJson() {
      return Json.decode(output);
    }
  }

  private final TaskAssignment assignment;
  private final boolean interruptOnCancel;
  private byte[] input = new byte[0];
  private List<Dependency> dependencies = List.of();
  private final AtomicReference<CancelReason> reason = new AtomicReference<>();
  private final CountDownLatch cancelled = new CountDownLatch(1);
  private final Object usageLock = new Object();
  private Usage usage = Usage.getDefaultInstance();
  private final AtomicReference<Object> heartbeat = new AtomicReference<>();
  final Semaphore kick = new Semaphore(0);
  /** Set by the stream transport: queues a heartbeat at once (the unary one waits on kick). */
  volatile Runnable onHeartbeat;
  volatile boolean done;
  private final Object threadLock = new Object();
  private Thread handlerThread;

  TaskContext(TaskAssignment assignment, boolean interruptOnCancel) {
    this.assignment = assignment;
    this.interruptOnCancel = interruptOnCancel;
  }

  void setInputs(byte[] input, List<Dependency> dependencies) {
    this.input = input;
    this.dependencies = List.copyOf(dependencies);
  }

  /** The task's workflow. */
  public String workflowId() {
    return assignment.getWorkflowId();
  }

  /** The task's id. */
  public String taskId() {
    return assignment.getTaskId();
  }

  /** The attempt number, from 1. */
  public int attempt() {
    return assignment.getAttempt();
  }

  /** The capability it was assigned for. */
  public String capability() {
    return assignment.getCapability();
  }

  /** The same for every attempt: makes side effects idempotent. */
  public String idempotencyKey() {
    return assignment.getIdempotencyKey();
  }

  /** The assignment as received, with everything else. */
  public TaskAssignment assignment() {
    return assignment;
  }

  /** The input's bytes (JSON unless its content type says otherwise). */
  public byte[] inputBytes() {
    return input.clone();
  }

  /** The input decoded from JSON; invalid JSON is a non-retryable {@link TaskError}. */
  public JsonNode input() {
    try {
      return Json.decode(input);
    } catch (AreException e) {
      throw new TaskError("InvalidInput", e.getMessage(), e).nonRetryable();
    }
  }

  /** The input decoded from JSON to {@code type}; a mismatch is a non-retryable TaskError. */
  public <T> T input(Class<T> type) {
    try {
      return Json.decode(input, type);
    } catch (AreException e) {
      throw new TaskError("InvalidInput", e.getMessage(), e).nonRetryable();
    }
  }

  /** The dependencies, in {@code depends_on} order. */
  public List<Dependency> dependencies() {
    return dependencies;
  }

  /** The output of a dependency that COMPLETED, decoded from JSON. */
  public Optional<JsonNode> dependency(String taskId) {
    return dependencies.stream()
        .filter(d -> d.taskId().equals(taskId) && d.state() == TaskState.TASK_STATE_COMPLETED)
        .findFirst()
        .map(Dependency::outputJson);
  }

  /** The output of a dependency that COMPLETED, decoded from JSON to {@code type}. */
  public <T> Optional<T> dependency(String taskId, Class<T> type) {
    return dependency(taskId).map(n -> Json.convert(n, type));
  }

  /**
   * True once the attempt must stop: its workflow was cancelled, the lease was lost, the deadline
   * passed or the worker stopped ({@link #cancelReason()} says which).
   */
  public boolean isCancelled() {
    return reason.get() != null;
  }

  /** Why the attempt was cancelled, once it has been. */
  public Optional<CancelReason> cancelReason() {
    return Optional.ofNullable(reason.get());
  }

  /** Waits at most {@code timeout} for a cancellation; true when it came. */
  public boolean awaitCancellation(Duration timeout) throws InterruptedException {
    return cancelled.await(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** Adds tokens, cost and calls to what the attempt reports. */
  public void addUsage(Usage u) {
    synchronized (usageLock) {
      usage =
          usage.toBuilder()
              .setInputTokens(usage.getInputTokens() + u.getInputTokens())
              .setOutputTokens(usage.getOutputTokens() + u.getOutputTokens())
              .setCostMicroUsd(usage.getCostMicroUsd() + u.getCostMicroUsd())
              .setLlmCalls(usage.getLlmCalls() + u.getLlmCalls())
              .setToolCalls(usage.getToolCalls() + u.getToolCalls())
              .build();
    }
  }

  Usage usage() {
    synchronized (usageLock) {
      return usage;
    }
  }

  /** Records progress details (written as JSON), sent with a heartbeat at once. */
  public void recordHeartbeat(Object details) {
    heartbeat.set(details);
    kick.release();
    Runnable queue = onHeartbeat;
    if (queue != null) {
      queue.run();
    }
  }

  Object takeHeartbeat() {
    return heartbeat.getAndSet(null);
  }

  void cancel(CancelReason why) {
    if (reason.compareAndSet(null, why)) {
      cancelled.countDown();
      if (interruptOnCancel) {
        synchronized (threadLock) {
          if (handlerThread != null) {
            handlerThread.interrupt();
          }
        }
      }
    }
  }

  /** Runs the handler on this thread, interruptible by a cancellation while it runs. */
  Object run(TaskHandler handler) throws Exception {
    synchronized (threadLock) {
      handlerThread = Thread.currentThread();
    }
    try {
      if (isCancelled() && interruptOnCancel) {
        Thread.currentThread().interrupt();
      }
      return handler.handle(this);
    } finally {
      synchronized (threadLock) {
        handlerThread = null;
        Thread.interrupted(); // the pooled thread must not carry this attempt's interrupt
      }
    }
  }

  void finish() {
    done = true;
    kick.release();
  }
}
