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

  /** At most {@code n} attempts (1: no retry), the first retry after up to {@code initial}. */
  public TaskBuilder maxAttempts(int n, Duration initial) {
    RetryPolicy.Builder policy = spec.getRetryPolicyBuilder();
    policy.setMaximumAttempts(n).setInitialInterval(Durations.toProto(initial));
    return this;
  }

  /** Sets the whole retry policy. */
  public TaskBuilder retryPolicy(RetryPolicy policy) {
    spec.setRetryPolicy(policy);
    return this;
  }

  /** Bounds one attempt once assigned. */
  public TaskBuilder startToCloseTimeout(Duration d) {
    spec.setStartToCloseTimeout(Durations.toProto(d));
    return this;
  }

  /** Ends an attempt's lease when its worker does not heartbeat for {@code d}. */
  public TaskBuilder heartbeatTimeout(Duration d) {
    spec.setHeartbeatTimeout(Durations.toProto(d));
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

  /** Stops the task at an approval gate once its dependencies are met. */
  public TaskBuilder requiresApproval() {
    spec.setRequiresApproval(true);
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
