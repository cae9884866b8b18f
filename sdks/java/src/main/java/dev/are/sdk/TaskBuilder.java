package dev.are.sdk;

import dev.are.sdk.v1.RetryPolicy;
import dev.are.sdk.v1.TaskSpec;
import java.time.Duration;
import java.util.Arrays;
import java.util.function.Consumer;

/** Builds one task of a workflow: its id, capability, JSON input, dependencies and policies. */
public final class TaskBuilder {
  private final TaskSpec.Builder spec;

  /** A task {@code taskId} served by workers of {@code capability}. */
  public TaskBuilder(String taskId, String capability) {
    this.spec = TaskSpec.newBuilder().setTaskId(taskId).setCapability(capability);
  }

  /** Sets the input to a value written as JSON (a JsonNode, a record, a map...). */
  public TaskBuilder input(Object value) {
    spec.setInput(Json.payload(value));
    return this;
  }

  /** Makes the task wait for others (by default for all of them to succeed). */
  public TaskBuilder dependsOn(String... taskIds) {
    spec.addAllDependsOn(Arrays.asList(taskIds));
    return this;
  }

  /**
   * At most {@code n} attempts (1: no retry), the first retry after up to {@code initial} (10 ms
   * to 24 hours; one over 100 years, {@code ChronoUnit.FOREVER.getDuration()} say, is
   * INVALID_ARGUMENT naming {@code retry_policy.initial_interval}: a retry that never comes is
   * {@code n} = 1).
   */
  public TaskBuilder maxAttempts(int n, Duration initial) {
    com.google.protobuf.Duration interval =
        Durations.toProto(initial, "retry_policy.initial_interval", "24 hours");
    RetryPolicy.Builder policy = spec.getRetryPolicyBuilder();
    policy.setMaximumAttempts(n).setInitialInterval(interval);
    return this;
  }

  /** Sets the whole retry policy. */
  public TaskBuilder retryPolicy(RetryPolicy policy) {
    spec.setRetryPolicy(policy);
    return this;
  }

  /**
   * Bounds one attempt once assigned: 1 second to 7 days (unset: 10 minutes). The sidecar has no
   * unbounded attempt, so one over 100 years ({@code ChronoUnit.FOREVER.getDuration()}) is
   * INVALID_ARGUMENT naming {@code start_to_close_timeout}, raised here; a finite one over 7 days
   * is refused by the sidecar at submit, naming the task's field.
   */
  public TaskBuilder startToCloseTimeout(Duration d) {
    spec.setStartToCloseTimeout(Durations.toProto(d, "start_to_close_timeout", "7 days"));
    return this;
  }

  /**
   * Ends an attempt's lease when its worker does not heartbeat for {@code d} (at most the
   * start-to-close timeout). One over 100 years ({@code ChronoUnit.FOREVER.getDuration()}) means
   * no heartbeat is required: the field is left unset, which is what the sidecar reads so.
   */
  public TaskBuilder heartbeatTimeout(Duration d) {
    if (Durations.isUnbounded(d)) {
      spec.clearHeartbeatTimeout();
    } else {
      spec.setHeartbeatTimeout(Durations.unchecked(d));
    }
    return this;
  }

  /** Puts the task in a resource pool. */
  public TaskBuilder pool(String pool) {
    spec.setPool(pool);
    return this;
  }

  /** Priority in its pool, 1 (most urgent) to 5. */
  public TaskBuilder priority(int priority) {
    spec.setPriority(priority);
    return this;
  }

  /**
   * Stops the task at an approval gate once its dependencies are met, until a human approves or
   * rejects it ({@link WorkflowHandle#approve}, {@link WorkflowHandle#reject}).
   */
  public TaskBuilder requiresApproval() {
    spec.setRequiresApproval(true);
    return this;
  }

  /**
   * Stops the task at an approval gate that rejects it (TIMEOUT_TYPE_APPROVAL) when nobody decides
   * within {@code d} (at most 366 days). One over 100 years ({@code
   * ChronoUnit.FOREVER.getDuration()}) means no timeout of its own: the field is left unset, and
   * the gate waits as long as the workflow may run (its budget's {@code max_duration}).
   */
  public TaskBuilder requiresApproval(Duration d) {
    spec.setRequiresApproval(true);
    if (Durations.isUnbounded(d)) {
      spec.clearApprovalTimeout();
    } else {
      spec.setApprovalTimeout(Durations.unchecked(d));
    }
    return this;
  }

  /** Changes the spec directly, for fields the builder does not cover. */
  public TaskBuilder configure(Consumer<TaskSpec.Builder> f) {
    f.accept(spec);
    return this;
  }

  /** The spec. */
  public TaskSpec build() {
    return spec.build();
  }
}
