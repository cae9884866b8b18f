package dev.are.sdk;

import java.time.Duration;
import java.util.Map;
import java.util.Objects;

/** Options of a {@link Worker}: immutable; {@code WorkerOptions.builder()...build()}. */
public final class WorkerOptions {
  private final int concurrency;
  private final String identity;
  private final Duration pollTimeout;
  private final Duration heartbeatInterval;
  private final Duration shutdownGrace;
  private final Duration reportTimeout;
  private final boolean interruptOnCancel;
  private final Transport transport;
  private final Map<String, String> labels;
  private final Router.AgentCard card;

  /** How a {@link Worker} talks to the sidecar; the handlers are the same either way. */
  public enum Transport {
    /**
     * One WorkerService.Connect stream per worker: assignments pushed up to the free slots,
     * heartbeats, completions and failures sent in batches and acknowledged on the stream,
     * cancellations pushed; reconnected with jittered backoff when it breaks.
     */
    STREAM,
    /** Unary calls: PollTask long polls, RecordHeartbeat, CompleteTask / FailTask. */
    UNARY,
  }

  private WorkerOptions(Builder b) {
    this.concurrency = Math.max(1, Math.min(b.concurrency, 10_000));
    this.identity = b.identity;
    this.pollTimeout = max(b.pollTimeout, Duration.ofSeconds(2));
    this.heartbeatInterval = max(b.heartbeatInterval, Duration.ofMillis(50));
    this.shutdownGrace = b.shutdownGrace;
    this.reportTimeout = b.reportTimeout;
    this.interruptOnCancel = b.interruptOnCancel;
    this.transport = b.transport;
    this.labels = b.labels;
    this.card = b.card;
  }

  private static Duration max(Duration a, Duration b) {
    return a.compareTo(b) >= 0 ? a : b;
  }

  /** The defaults. */
  public static WorkerOptions defaults() {
    return builder().build();
  }

  /** A builder starting from the defaults. */
  public static Builder builder() {
    return new Builder();
  }

  /** Most handlers at once (default 16). */
  public int concurrency() {
    return concurrency;
  }

  /** Who this process is, for humans (default "pid N"). */
  public String identity() {
    return identity;
  }

  /**
   * Deadline of each PollTask long poll on the unary transport (default 10 s, at least 2 s). A
   * stopping worker lets the poll in flight finish (a poll cancelled as a task is assigned would
   * strand it until its lease ends), so this also bounds how long a shutdown takes to be noticed.
   */
  public Duration pollTimeout() {
    return pollTimeout;
  }

  /**
   * How often a running attempt heartbeats on the unary transport (default 1 s, at most a quarter
   * of the task's heartbeat timeout); bounds how soon a cancellation is heard there. The stream
   * heartbeats at the interval the sidecar's registration answer gives (at most a quarter of the
   * task's heartbeat timeout) and hears cancellations at once.
   */
  public Duration heartbeatInterval() {
    return heartbeatInterval;
  }

  /**
   * How long running handlers may go on after shutdown (default 10 s); then they are cancelled
   * with {@link CancelReason#WORKER_STOPPED}.
   */
  public Duration shutdownGrace() {
    return shutdownGrace;
  }

  /**
   * Bound of reporting one attempt (default 30 s): on the unary transport retries on UNAVAILABLE
   * included; on the stream, until the result's ack (and of the stream's registration).
   */
  public Duration reportTimeout() {
    return reportTimeout;
  }

  /** Whether a cancellation also interrupts the handler's thread (default true). */
  public boolean interruptOnCancel() {
    return interruptOnCancel;
  }

  /** The transport (default {@link Transport#STREAM}). */
  public Transport transport() {
    return transport;
  }

  /**
   * Free labels sent with the stream's registration (default none). The sidecar checks them (at
   * most 32; keys 1 to 128 characters of {@code [A-Za-z0-9._:/-]}, values at most 256 bytes) and
   * refuses the registration with INVALID_ARGUMENT naming {@code register.labels[...]}, which ends
   * {@link Worker#run()}. The unary transport does not send them: PollTaskRequest has no labels.
   */
  public Map<String, String> labels() {
    return labels;
  }

  /**
   * How the router shows this worker, its class (default null: none), sent as the stream
   * registration's {@code agent_card}: agent_id, description or vector, cost per call, labels.
   * Workers sending the same agent_id share one card whose load and availability follow them, so a
   * task submitted with an intent instead of a capability goes to the cheapest class whose card
   * matches. Its capabilities must be among the worker's (they default to them); an invalid card
   * refuses the registration with INVALID_ARGUMENT naming the field under {@code
   * register.agent_card}, which ends {@link Worker#run()}. Without one the worker still appears,
   * as a card named after it that costs nothing. Needs the stream transport: the unary transport
   * has no registration (PollTaskRequest carries no card), so a unary worker sends none.
   */
  public Router.AgentCard card() {
    return card;
  }

  /** Builds {@link WorkerOptions}. */
  public static final class Builder {
    private int concurrency = 16;
    private String identity = "pid " + ProcessHandle.current().pid();
    private Duration pollTimeout = Duration.ofSeconds(10);
    private Duration heartbeatInterval = Duration.ofSeconds(1);
    private Duration shutdownGrace = Duration.ofSeconds(10);
    private Duration reportTimeout = Duration.ofSeconds(30);
    private boolean interruptOnCancel = true;
    private Transport transport = Transport.STREAM;
    private Map<String, String> labels = Map.of();
    private Router.AgentCard card;

    private Builder() {}

    /** Most handlers at once (1 to 10,000). */
    public Builder concurrency(int n) {
      this.concurrency = n;
      return this;
    }

    /** Who this process is, for humans. */
    public Builder identity(String identity) {
      this.identity = Objects.requireNonNull(identity);
      return this;
    }

    /** Deadline of each PollTask long poll (at least 2 s). */
    public Builder pollTimeout(Duration d) {
      this.pollTimeout = Objects.requireNonNull(d);
      return this;
    }

    /** How often a running attempt heartbeats (at least 50 ms). */
    public Builder heartbeatInterval(Duration d) {
      this.heartbeatInterval = Objects.requireNonNull(d);
      return this;
    }

    /** How long running handlers may go on after shutdown. */
    public Builder shutdownGrace(Duration d) {
      this.shutdownGrace = Objects.requireNonNull(d);
      return this;
    }

    /** Bound of reporting one attempt. */
    public Builder reportTimeout(Duration d) {
      this.reportTimeout = Objects.requireNonNull(d);
      return this;
    }

    /** Whether a cancellation also interrupts the handler's thread. */
    public Builder interruptOnCancel(boolean b) {
      this.interruptOnCancel = b;
      return this;
    }

    /** The transport: the Connect stream or the unary calls. */
    public Builder transport(Transport t) {
      this.transport = Objects.requireNonNull(t);
      return this;
    }

    /** Free labels sent with the registration (copied; no null keys or values). */
    public Builder labels(Map<String, String> labels) {
      this.labels = Map.copyOf(labels);
      return this;
    }

    /**
     * The agent card sent with the stream's registration (null: none); only its registered fields
     * are sent.
     */
    public Builder card(Router.AgentCard card) {
      this.card = card;
      return this;
    }

    /** The options. */
    public WorkerOptions build() {
      return new WorkerOptions(this);
    }
  }
}
