package dev.are.sdk;

import com.fasterxml.jackson.databind.JsonNode;
import com.google.protobuf.Timestamp;
import dev.are.sdk.v1.AttributeValue;
import dev.are.sdk.v1.EventType;
import dev.are.sdk.v1.Failure;
import dev.are.sdk.v1.ReportEventsRequest;
import dev.are.sdk.v1.ReportedEvent;
import dev.are.sdk.v1.TaskAssignment;
import dev.are.sdk.v1.TaskState;
import dev.are.sdk.v1.Usage;
import java.time.Duration;
import java.time.Instant;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
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

  private final Client client;
  private final TaskAssignment assignment;
  private final boolean interruptOnCancel;
  private byte[] input = new byte[0];
  private List<Dependency> dependencies = List.of();
  private final AtomicReference<CancelReason> reason = new AtomicReference<>();
  private final CountDownLatch cancelled = new CountDownLatch(1);
  private final Object usageLock = new Object();
  private Usage usage = Usage.getDefaultInstance();
  private final AtomicReference<Object> heartbeat = new AtomicReference<>();
  /**
   * Wakes the unary transport's heartbeat loop (a heartbeat to send at once, or the attempt done).
   * At most one permit is left waiting: the loop drains them all, and the stream transport never
   * takes any, so a handler recording heartbeats for days must not add one each time (past 2^31
   * the semaphore throws an Error).
   */
  final Semaphore kick = new Semaphore(0);
  /** Set by the stream transport: queues a heartbeat at once (the unary one waits on kick). */
  volatile Runnable onHeartbeat;
  volatile boolean done;
  /** Set once the attempt needs nothing more of the unary worker: reported, or taken back. */
  final AtomicBoolean settled = new AtomicBoolean();
  private final Object threadLock = new Object();
  private Thread handlerThread;

  TaskContext(Client client, TaskAssignment assignment, boolean interruptOnCancel) {
    this.client = client;
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
    return cancelled.await(Durations.nanos(timeout), TimeUnit.NANOSECONDS);
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

  /**
   * What {@link TaskContext#reportLlmCall(String, Usage, Duration, LlmCallOptions)} records
   * beyond the model, usage and duration: {@code provider} ("openai", "anthropic", ...) as
   * attribute {@code gen_ai.system}, {@code responseModel} (the model that answered) as {@code
   * gen_ai.response.model} (empty or null: none), and further {@code attributes} (null: none; as
   * for {@link TaskContext#reportEvent}), whose keys win over those two.
   */
  public record LlmCallOptions(String provider, String responseModel, Map<String, ?> attributes) {
    /** Nothing beyond the call. */
    public static LlmCallOptions none() {
      return new LlmCallOptions("", "", Map.of());
    }

    /** With {@code gen_ai.system}. */
    public LlmCallOptions withProvider(String p) {
      return new LlmCallOptions(p, responseModel, attributes);
    }

    /** With {@code gen_ai.response.model}. */
    public LlmCallOptions withResponseModel(String m) {
      return new LlmCallOptions(provider, m, attributes);
    }

    /** With these attributes (replacing any given before). */
    public LlmCallOptions withAttributes(Map<String, ?> a) {
      return new LlmCallOptions(provider, responseModel, a);
    }
  }

  /**
   * What {@link TaskContext#reportToolCall(String, Duration, ToolCallOptions)} records beyond the
   * tool and duration: {@code callId} (the model's id for the call) as attribute {@code
   * gen_ai.tool.call.id} (empty or null: none), and further {@code attributes} (null: none; as for
   * {@link TaskContext#reportEvent}), whose keys win over it.
   */
  public record ToolCallOptions(String callId, Map<String, ?> attributes) {
    /** Nothing beyond the call. */
    public static ToolCallOptions none() {
      return new ToolCallOptions("", Map.of());
    }

    /** With {@code gen_ai.tool.call.id}. */
    public ToolCallOptions withCallId(String id) {
      return new ToolCallOptions(id, attributes);
    }

    /** With these attributes (replacing any given before). */
    public ToolCallOptions withAttributes(Map<String, ?> a) {
      return new ToolCallOptions(callId, a);
    }
  }

  /**
   * Records one LLM call of this attempt: an EVENT_TYPE_LLM_CALL event named after {@code model}
   * in the flight recorder (sent at once with the unary ReportEvents, on either transport), and
   * its usage added to what the attempt reports with its result ({@link #addUsage}), which the
   * workflow's budgets count. {@code usage} may be null; its {@code llm_calls} counts 1 when left
   * 0. {@code took} (null: unknown) is the call's duration, a measure: one over 100 years
   * ({@code ChronoUnit.FOREVER.getDuration()}) is INVALID_ARGUMENT naming {@code duration}. The
   * usage is counted even when the event cannot be sent. Bounded by the client's call timeout; a
   * refusal is an {@link AreException} (FAILED_PRECONDITION, reason TASK_NOT_HELD, once the attempt
   * is no longer held). The sidecar sets the event's attributes {@code gen_ai.request.model},
   * {@code gen_ai.operation.name} and the token counts.
   */
  public void reportLlmCall(String model, Usage usage, Duration took) {
    reportLlmCall(model, usage, took, LlmCallOptions.none());
  }

  /**
   * As {@link #reportLlmCall(String, Usage, Duration)}, with the provider, response model and
   * attributes of {@code options} (null: none):
   *
   * <pre>{@code
   * task.reportLlmCall("gpt-x", usage, took, LlmCallOptions.none()
   *     .withProvider("openai").withResponseModel("gpt-x-2025")
   *     .withAttributes(Map.of("temperature", 0.5)));
   * }</pre>
   *
   * @throws AreException INVALID_ARGUMENT naming {@code attributes['key']} for an attribute value
   *     of an unsupported type or a non-finite number, before anything is sent or counted
   */
  public void reportLlmCall(String model, Usage usage, Duration took, LlmCallOptions options) {
    Objects.requireNonNull(model, "model");
    LlmCallOptions o = options == null ? LlmCallOptions.none() : options;
    Map<String, String> named = new LinkedHashMap<>();
    named.put("gen_ai.system", o.provider());
    named.put("gen_ai.response.model", o.responseModel());
    var attributes = EventAttributes.toProto(named, o.attributes());
    Usage counted = usage == null ? Usage.getDefaultInstance() : usage;
    if (counted.getLlmCalls() == 0) {
      counted = counted.toBuilder().setLlmCalls(1).build();
    }
    addUsage(counted);
    sendEvent(EventType.EVENT_TYPE_LLM_CALL, model, counted, took, attributes);
  }

  /**
   * Records one tool call of this attempt: an EVENT_TYPE_TOOL_CALL event named {@code tool} in
   * the flight recorder (the sidecar sets its attribute {@code gen_ai.tool.name}), and {@code
   * tool_calls} 1 added to the attempt's usage. Otherwise as {@link #reportLlmCall(String, Usage,
   * Duration)}.
   */
  public void reportToolCall(String tool, Duration took) {
    reportToolCall(tool, took, ToolCallOptions.none());
  }

  /**
   * As {@link #reportToolCall(String, Duration)}, with the call id and attributes of {@code
   * options} (null: none); an attribute value of an unsupported type or a non-finite number as for
   * {@link #reportLlmCall(String, Usage, Duration, LlmCallOptions)}.
   */
  public void reportToolCall(String tool, Duration took, ToolCallOptions options) {
    Objects.requireNonNull(tool, "tool");
    ToolCallOptions o = options == null ? ToolCallOptions.none() : options;
    Map<String, String> named = new LinkedHashMap<>();
    named.put("gen_ai.tool.call.id", o.callId());
    var attributes = EventAttributes.toProto(named, o.attributes());
    Usage counted = Usage.newBuilder().setToolCalls(1).build();
    addUsage(counted);
    sendEvent(EventType.EVENT_TYPE_TOOL_CALL, tool, counted, took, attributes);
  }

  /**
   * Records anything else worth seeing in the trace (a decision, a milestone): an
   * EVENT_TYPE_WORKER_CUSTOM event named {@code name}, among the attempt's events and on its span
   * in OpenTelemetry; sent as {@link #reportLlmCall(String, Usage, Duration)}'s.
   *
   * <p>{@code attributes} (null: none): at most 64, keys 1 to 128 characters, each value a String
   * (at most 16 KiB), a Long, Integer, Short or Byte, a finite Double or Float, or a Boolean (the
   * sidecar's bounds; it refuses the rest).
   *
   * @throws AreException INVALID_ARGUMENT naming {@code attributes['key']} for a value of another
   *     type, or NaN or an infinity, before anything is sent
   */
  public void reportEvent(String name, Map<String, ?> attributes) {
    Objects.requireNonNull(name, "name");
    var proto = EventAttributes.toProto(Map.of(), attributes);
    sendEvent(EventType.EVENT_TYPE_WORKER_CUSTOM, name, null, null, proto);
  }

  private void sendEvent(
      EventType type,
      String name,
      Usage usage,
      Duration took,
      Map<String, AttributeValue> attributes) {
    Instant now = Instant.now();
    ReportedEvent.Builder event =
        ReportedEvent.newBuilder()
            .setWorkflowId(workflowId())
            .setTaskId(taskId())
            .setAttempt(attempt())
            .setEventType(type)
            .setEventTime(
                Timestamp.newBuilder()
                    .setSeconds(now.getEpochSecond())
                    .setNanos(now.getNano())
                    .build())
            .setName(name)
            .putAllAttributes(attributes);
    if (usage != null) {
      event.setUsage(usage);
    }
    if (took != null && !took.isNegative() && !took.isZero()) {
      event.setDuration(Durations.toProto(took, "duration", "about 292 years"));
    }
    ReportEventsRequest req = ReportEventsRequest.newBuilder().addEvents(event).build();
    client.call("ReportEvents", () -> client.deadline(client.raw().worker()).reportEvents(req));
  }

  /** Records progress details (written as JSON), sent with a heartbeat at once. */
  public void recordHeartbeat(Object details) {
    heartbeat.set(details);
    if (kick.availablePermits() == 0) {
      kick.release();
    }
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
