package dev.are.sdk;

import com.fasterxml.jackson.databind.JsonNode;
import dev.are.sdk.v1.ApprovalDecision;
import dev.are.sdk.v1.CancelWorkflowRequest;
import dev.are.sdk.v1.GetTaskRequest;
import dev.are.sdk.v1.GetWorkflowRequest;
import dev.are.sdk.v1.ResolveApprovalRequest;
import dev.are.sdk.v1.Task;
import dev.are.sdk.v1.TaskState;
import dev.are.sdk.v1.WatchWorkflowRequest;
import dev.are.sdk.v1.WatchWorkflowResponse;
import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import io.grpc.Context;
import io.grpc.Status;
import java.time.Duration;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** A submitted workflow: wait on it, read it, cancel it. Cheap; makes no call until used. */
public final class WorkflowHandle {
  /** The longest the first status of a wait may outlast its timeout (5 s, as in the Python SDK). */
  private static final long FIRST_STATUS_TIMEOUT_NANOS = TimeUnit.SECONDS.toNanos(5);

  private final Client client;
  private final String id;
  private final boolean deduplicated;

  WorkflowHandle(Client client, String id, boolean deduplicated) {
    this.client = client;
    this.id = id;
    this.deduplicated = deduplicated;
  }

  /** The workflow's id. */
  public String id() {
    return id;
  }

  /** True when the submit matched an earlier request id and created nothing. */
  public boolean deduplicated() {
    return deduplicated;
  }

  /** Whether a workflow state is closed (COMPLETED, FAILED or CANCELLED). */
  public static boolean isClosed(WorkflowState state) {
    return state == WorkflowState.WORKFLOW_STATE_COMPLETED
        || state == WorkflowState.WORKFLOW_STATE_FAILED
        || state == WorkflowState.WORKFLOW_STATE_CANCELLED;
  }

  /** The workflow's current status. */
  public Workflow get() {
    GetWorkflowRequest req = GetWorkflowRequest.newBuilder().setWorkflowId(id).build();
    return client
        .call("GetWorkflow", () -> client.deadline(client.raw().scheduler()).getWorkflow(req))
        .getWorkflow();
  }

  /**
   * Cancels the workflow (idempotent) and returns its status; workers running its tasks are told
   * to stop.
   */
  public Workflow cancel(String reason) {
    CancelWorkflowRequest req =
        CancelWorkflowRequest.newBuilder().setWorkflowId(id).setReason(reason).build();
    return client
        .call(
            "CancelWorkflow", () -> client.deadline(client.raw().scheduler()).cancelWorkflow(req))
        .getWorkflow();
  }

  /** One task's status, with its input and output. */
  public Task task(String taskId) {
    GetTaskRequest req = GetTaskRequest.newBuilder().setWorkflowId(id).setTaskId(taskId).build();
    return client
        .call("GetTask", () -> client.deadline(client.raw().scheduler()).getTask(req))
        .getTask();
  }

  /**
   * Approves task {@code taskId}, waiting at its approval gate ({@link
   * TaskBuilder#requiresApproval()}): it is scheduled and runs as any other task. Returns the task
   * after the decision (SCHEDULED, or RUNNING when an idle worker took it at once; its {@code
   * approval} records the decision). A task not waiting at its gate
   * (already resolved, not yet there, or without one) is FAILED_PRECONDITION, reason {@code
   * TASK_NOT_AWAITING_APPROVAL}; an unknown workflow or task NOT_FOUND, reason {@code
   * WORKFLOW_NOT_FOUND} / {@code TASK_NOT_FOUND}.
   */
  public Task approve(String taskId) {
    return approve(taskId, "", "");
  }

  /**
   * Approves as {@link #approve(String)}, recording who decided ({@code approver}, at most 256
   * characters; null: none) and why ({@code comment}, at most 8 KiB; null: none) in the task's
   * {@code approval} and the TASK_APPROVED event.
   */
  public Task approve(String taskId, String approver, String comment) {
    return resolve(taskId, ApprovalDecision.APPROVAL_DECISION_APPROVE, approver, comment);
  }

  /**
   * Rejects task {@code taskId} at its approval gate: it closes REJECTED and its dependents follow
   * their trigger rules (by default they are skipped, and the workflow fails). Returns the task
   * after the decision; errors as {@link #approve(String)}.
   */
  public Task reject(String taskId) {
    return reject(taskId, "", "");
  }

  /** Rejects as {@link #reject(String)}, recording who decided and why. */
  public Task reject(String taskId, String approver, String comment) {
    return resolve(taskId, ApprovalDecision.APPROVAL_DECISION_REJECT, approver, comment);
  }

  private Task resolve(String taskId, ApprovalDecision decision, String approver, String comment) {
    ResolveApprovalRequest req =
        ResolveApprovalRequest.newBuilder()
            .setWorkflowId(id)
            .setTaskId(taskId)
            .setDecision(decision)
            .setApprover(approver == null ? "" : approver)
            .setComment(comment == null ? "" : comment)
            .build();
    return client
        .call(
            "ResolveApproval",
            () -> client.deadline(client.raw().scheduler()).resolveApproval(req))
        .getTask();
  }

  /**
   * This workflow's tasks waiting at approval gates now, oldest request first, with their inputs
   * (every page of {@link Client#listApprovals}).
   */
  public List<Task> approvals() {
    return client.approvals(id, null, Integer.MAX_VALUE);
  }

  /**
   * Follows the workflow (WatchWorkflow, resumed from the last sequence when the stream drops)
   * until it closes, whatever the outcome, for at most {@code timeout} (over 100 years, {@code
   * ChronoUnit.FOREVER.getDuration()} say: no bound); then DEADLINE_EXCEEDED with reason TIMEOUT.
   * A watch that drops (UNAVAILABLE, CANCELLED) is resumed after a jittered backoff; one refused
   * with RESOURCE_EXHAUSTED (the sidecar's subscribers all taken: a resumed watch is one) no
   * sooner than the sidecar's retry hint. Other errors are thrown, and so is CANCELLED with reason
   * {@code CLIENT_CLOSED} once the client is closed, or with reason {@code CONTEXT_CANCELLED} once
   * the caller's gRPC {@link Context} is cancelled (a wait inside a server call that ended, say;
   * past the context's deadline it is DEADLINE_EXCEEDED, reason TIMEOUT). A wait leaves nothing
   * registered on the caller's context. The first status may outlast a short {@code timeout} (by up
   * to 5 s), so that a workflow already closed is answered even with {@link Duration#ZERO}; once a
   * status came, the wait ends at {@code timeout}.
   */
  public Workflow await(Duration timeout) {
    long deadline = Durations.deadline(timeout);
    // The first status may outlast a short timeout: a workflow already closed is answered even
    // with Duration.ZERO (whose watch was cut off before any status came), as in the Python SDK.
    long firstDeadline = Math.max(deadline, System.nanoTime() + FIRST_STATUS_TIMEOUT_NANOS);
    boolean firstSeen = false;
    boolean bounded = !Durations.isUnbounded(timeout);
    Long after = null;
    long delayMs = 50;
    String what = "waiting for workflow " + id;
    while (true) {
      long end = firstSeen ? deadline : firstDeadline;
      long left = end - System.nanoTime();
      if (left <= 0) {
        throw AreException.timeout(what, timeout);
      }
      boolean resumeNow = false;
      WatchWorkflowRequest.Builder req = WatchWorkflowRequest.newBuilder().setWorkflowId(id);
      if (after != null) {
        req.setAfterSequence(after);
      }
      Duration hint = null;
      // The watch is cancelled when this returns with its stream still open. It is not made a
      // child of the caller's context: grpc-java leaves a listener on a cancellable ancestor each
      // time a child that had listeners is cancelled (it removes it under the ancestor's identity,
      // not the child's), so every wait in a long-lived cancellable context (a server call, an
      // application's) would add one there for good. The caller's cancellation is relayed instead,
      // by a listener removed below.
      Context caller = Context.current();
      Context.CancellableContext watch = caller.fork().withCancellation();
      Context.CancellationListener relay = c -> watch.cancel(c.cancellationCause());
      caller.addListener(relay, Runnable::run);
      try {
        Context previous = watch.attach();
        try {
          Iterator<WatchWorkflowResponse> it =
              (bounded
                      ? client.watches().withDeadlineAfter(left, TimeUnit.NANOSECONDS)
                      : client.watches())
                  .watchWorkflow(req.build());
          while (it.hasNext()) {
            WatchWorkflowResponse msg = it.next();
            delayMs = 50;
            if (msg.getSequence() != 0) {
              after = msg.getSequence();
            }
            if (msg.hasWorkflow() && isClosed(msg.getWorkflow().getState())) {
              return msg.getWorkflow();
            }
            if (!firstSeen) {
              firstSeen = true;
              if (end != deadline) {
                // This watch's deadline let the first status outlast the caller's: go on, from
                // here, within the caller's.
                resumeNow = true;
                break;
              }
            }
          }
          // Ended without a closed status: resume.
        } finally {
          watch.detach(previous);
        }
      } catch (RuntimeException t) {
        AreException e = AreException.from(t);
        if (e.code() == Status.Code.DEADLINE_EXCEEDED && e.reason().isEmpty()) {
          throw AreException.timeout(what, timeout);
        }
        if (e.code() == Status.Code.RESOURCE_EXHAUSTED) {
          hint = e.retryDelay().orElse(null);
        } else if (e.code() != Status.Code.UNAVAILABLE && e.code() != Status.Code.CANCELLED) {
          throw e;
        }
        if (client.isClosed()) {
          throw Client.closedError(what, e);
        }
        if (caller.isCancelled()) {
          throw AreException.local(
              Status.Code.CANCELLED,
              "CONTEXT_CANCELLED",
              what + ": the caller's gRPC context was cancelled",
              e);
        }
      } finally {
        caller.removeListener(relay);
        watch.cancel(null);
      }
      if (resumeNow) {
        continue;
      }
      Backoff.sleep(
          Math.min(Backoff.retryWait(delayMs, hint), (end - System.nanoTime()) / 1_000_000));
      delayMs = Math.min(delayMs * 2, 2000);
    }
  }

  /**
   * Waits (at most {@code timeout}) for the workflow to close and returns its result's bytes
   * (empty when it has none). A workflow that closed FAILED or CANCELLED is an error with reason
   * {@code WORKFLOW_FAILED} / {@code WORKFLOW_CANCELLED} and the closing status in {@link
   * AreException#workflow()}.
   */
  public byte[] resultBytes(Duration timeout) {
    Workflow w = await(timeout);
    if (w.getState() != WorkflowState.WORKFLOW_STATE_COMPLETED) {
      String reason =
          w.getState() == WorkflowState.WORKFLOW_STATE_CANCELLED
              ? "WORKFLOW_CANCELLED"
              : "WORKFLOW_FAILED";
      throw AreException.workflowClosed(
          reason,
          "workflow " + id + " closed " + w.getState() + ": " + w.getFailure().getMessage(),
          w);
    }
    return client.payloadBytes(w.hasResult() ? w.getResult() : null);
  }

  /** Like {@link #resultBytes}, decoding the result as JSON (null node when there is none). */
  public JsonNode result(Duration timeout) {
    return Json.decode(resultBytes(timeout));
  }

  /** Like {@link #resultBytes}, decoding the result as JSON to {@code type}. */
  public <T> T result(Duration timeout, Class<T> type) {
    return Json.decode(resultBytes(timeout), type);
  }

  /**
   * The output of a COMPLETED task as JSON; any other state is an error with reason {@code
   * TASK_NOT_COMPLETED}. Does not wait.
   */
  public JsonNode taskOutput(String taskId) {
    Task task = task(taskId);
    if (task.getState() != TaskState.TASK_STATE_COMPLETED) {
      throw AreException.local(
          Status.Code.FAILED_PRECONDITION,
          "TASK_NOT_COMPLETED",
          "task " + id + "/" + taskId + " is " + task.getState());
    }
    return Json.decode(client.payloadBytes(task.hasOutput() ? task.getOutput() : null));
  }

  /** Like {@link #taskOutput(String)}, decoded to {@code type}. */
  public <T> T taskOutput(String taskId, Class<T> type) {
    return Json.convert(taskOutput(taskId), type);
  }
}
