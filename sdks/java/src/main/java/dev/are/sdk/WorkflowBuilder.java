package dev.are.sdk;

import dev.are.sdk.v1.RetryPolicy;
import dev.are.sdk.v1.WorkflowSpec;
import java.util.function.Consumer;

/** Builds a {@link WorkflowSpec}; the sidecar validates it and names the field of any error. */
public final class WorkflowBuilder {
  private final WorkflowSpec.Builder spec;

  /** A workflow named {@code name} (free form, for humans). */
  public WorkflowBuilder(String name) {
    this.spec = WorkflowSpec.newBuilder().setName(name);
  }

  /** Sets the workflow id (otherwise the sidecar generates one). */
  public WorkflowBuilder id(String workflowId) {
    spec.setWorkflowId(workflowId);
    return this;
  }

  /** Adds a label. */
  public WorkflowBuilder label(String key, String value) {
    spec.putLabels(key, value);
    return this;
  }

  /** Retry policy of the tasks that declare none. */
  public WorkflowBuilder defaultRetryPolicy(RetryPolicy policy) {
    spec.setDefaultRetryPolicy(policy);
    return this;
  }

  /** Names the task whose output is the workflow's result. */
  public WorkflowBuilder resultTask(String taskId) {
    spec.setResultTaskId(taskId);
    return this;
  }

  /** Adds a task. */
  public WorkflowBuilder task(TaskBuilder task) {
    spec.addTasks(task.build());
    return this;
  }

  /** Changes the spec directly, for fields the builder does not cover. */
  public WorkflowBuilder configure(Consumer<WorkflowSpec.Builder> f) {
    f.accept(spec);
    return this;
  }

  /** The spec. */
  public WorkflowSpec build() {
    return spec.build();
  }
}
