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
import java.util.function.Consumer;

/** A submitted workflow: wait on it, read it, cancel it. Cheap; makes no call until used. */
public final class WorkflowHandle {
  /** The longest the first status of a wait may outlast its timeout (5 s, as in the Python SDK). */
  private static final long FIRST_STATUS_TIMEOUT_NANOS = TimeUnit.SECONDS.toNanos(5);

  /** The longest one probe of a silent sidecar waits (5 s; see {@code untilAnswering}). */
  private static final long PROBE_TIMEOUT_NANOS = TimeUnit.SECONDS.toNanos(5);

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
   * A watch that drops (UNAVAILABLE, CANCELLED: a sidecar restart, a broken connection) is resumed
   * after a jittered backoff, as long as the sidecar answers again within the client's {@link
   * Options.Builder#reconnectWindow reconnect window} (60 s by default): once that long has passed
   * since the drop without an answer, the wait throws UNAVAILABLE, whatever its timeout. A watch
   * refused with RESOURCE_EXHAUSTED, reason {@code RESOURCE_LIMIT} (the sidecar's subscribers all
   * taken: a resumed watch is one) is resumed no sooner than the sidecar's retry hint; any other
   * RESOURCE_EXHAUSTED (a status over the client's {@link Options.Builder#maxMessageBytes}, refused
   * on this side) is thrown, since no retry fixes it. A resumed watch refused with OUT_OF_RANGE,
   * reason {@code SEQUENCE_BEYOND_LOG} (the sidecar came back on an older event log: a power loss
   * under {@code --durability relaxed}, a restored backup) is watched again at once without its
   * cursor, from the current status, as the contract says. Other errors are thrown, and so is
   * CANCELLED with reason {@code CLIENT_CLOSED} once the client is closed, or with reason {@code
   * CONTEXT_CANCELLED} once the caller's gRPC {@link Context} is cancelled (a wait inside a server
   * call that ended, say; past the context's deadline it is DEADLINE_EXCEEDED, reason TIMEOUT). A
   * wait leaves nothing registered on the caller's context. The first status may outlast a short
   * {@code timeout} (by up to 5 s), so that a workflow already closed is answered even with {@link
   * Duration#ZERO}; once a status came, the wait ends at {@code timeout}.
   */
  public Workflow await(Duration timeout) {
    return await(timeout, response -> {});
  }

  /**
   * {@link #await(Duration)}, telling {@code received} of every status its watch receives, as it
   * comes (tests follow a wait's cursor with it).
   */
  Workflow await(Duration timeout, Consumer<WatchWorkflowResponse> received) {
    long deadline = Durations.deadline(timeout);
    // The first status may outlast a short timeout: a workflow already closed is answered even
    // with Duration.ZERO (whose watch was cut off before any status came), as in the Python SDK.
    long firstDeadline = Math.max(deadline, System.nanoTime() + FIRST_STATUS_TIMEOUT_NANOS);
    boolean firstSeen = false;
    boolean bounded = !Durations.isUnbounded(timeout);
    // Always a sequence the watch received: a wait takes no cursor of the caller's.
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
      AreException dropped = null;
      long droppedAt = 0;
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
            received.accept(msg);
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
        if (after != null && sequenceBeyondLog(e)) {
          // Back on an older event log: at once, without the cursor; the status read first is
          // the current one.
          after = null;
          resumeNow = true;
        } else if (subscribersTaken(e)) {
          hint = e.retryDelay().orElse(null);
        } else if (e.code() == Status.Code.UNAVAILABLE || e.code() == Status.Code.CANCELLED) {
          dropped = e;
          droppedAt = System.nanoTime();
        } else {
          throw e;
        }
        if (client.isClosed()) {
          throw Client.closedError(what, e);
        }
        if (caller.isCancelled()) {
          throw contextCancelled(what, e);
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
      if (dropped != null) {
        untilAnswering(dropped, droppedAt, end, what, timeout);
      }
    }
  }

  /**
   * Whether a watch was refused because its cursor is beyond the end of the sidecar's event log
   * (OUT_OF_RANGE, {@code SEQUENCE_BEYOND_LOG}): the cursor comes from another log.
   */
  private static boolean sequenceBeyondLog(AreException e) {
    return e.code() == Status.Code.OUT_OF_RANGE && e.reason().equals("SEQUENCE_BEYOND_LOG");
  }

  /**
   * Whether a watch was refused for want of event subscribers (RESOURCE_EXHAUSTED, {@code
   * RESOURCE_LIMIT}), which a later attempt may find free; a RESOURCE_EXHAUSTED without that reason
   * (a status over the client's message bound) would only fail again.
   */
  private static boolean subscribersTaken(AreException e) {
    return e.code() == Status.Code.RESOURCE_EXHAUSTED && e.reason().equals("RESOURCE_LIMIT");
  }

  private static AreException contextCancelled(String what, Throwable cause) {
    return AreException.local(
        Status.Code.CANCELLED,
        "CONTEXT_CANCELLED",
        what + ": the caller's gRPC context was cancelled",
        cause);
  }

  /**
   * Returns once the sidecar answers a call again, after a watch dropped with {@code error}
   * (UNAVAILABLE or CANCELLED) at {@code since} ({@link System#nanoTime()}); once the client's
   * reconnect window has passed since then without an answer, throws UNAVAILABLE (as the Python
   * SDK's wait). A resumed watch can be silent for hours (a cursor with nothing after it), so its
   * opening proves nothing: a unary GetWorkflow on the watches' connection does, each bounded by
   * {@link #PROBE_TIMEOUT_NANOS}. Without this bound, a wait on a sidecar gone for good resumed for
   * as long as its timeout allowed, for ever with {@code ChronoUnit.FOREVER}. The wait's own bounds
   * hold meanwhile: its timeout ({@code end}), a closed client, the caller's cancelled context.
   */
  private void untilAnswering(
      AreException error, long since, long end, String what, Duration timeout) {
    Duration window = client.reconnectWindow();
    long deadline = since + Durations.nanos(window);
    AreException last = error;
    long delayMs = 50;
    GetWorkflowRequest req = GetWorkflowRequest.newBuilder().setWorkflowId(id).build();
    while (true) {
      long now = System.nanoTime();
      long remaining = deadline - now;
      if (remaining <= 0) {
        break;
      }
      long left = end - now;
      if (left <= 0) {
        throw AreException.timeout(what, timeout);
      }
      long bound = Math.min(Math.min(remaining, PROBE_TIMEOUT_NANOS), left);
      try {
        client.watches().withDeadlineAfter(bound, TimeUnit.NANOSECONDS).getWorkflow(req);
        return;
      } catch (RuntimeException t) {
        AreException probe = AreException.from(t);
        if (client.isClosed()) {
          throw Client.closedError(what, probe);
        }
        if (Context.current().isCancelled()) {
          if (probe.code() == Status.Code.DEADLINE_EXCEEDED) {
            throw AreException.timeout(what, timeout);
          }
          throw contextCancelled(what, probe);
        }
        if (probe.code() == Status.Code.UNAVAILABLE) {
          last = probe;
        } else if (probe.code() != Status.Code.CANCELLED
            && probe.code() != Status.Code.DEADLINE_EXCEEDED) {
          return; // it answered; the watch meets any error itself
        }
      }
      long until = Math.min(deadline - System.nanoTime(), end - System.nanoTime());
      Backoff.sleep(Math.min(Backoff.jitter(delayMs), Math.max(0, until / 1_000_000)));
      delayMs = Math.min(delayMs * 2, 2000);
    }
    throw AreException.local(
        Status.Code.UNAVAILABLE,
        "UNAVAILABLE",
        what
            + ": the sidecar has not answered for "
            + window
            + " (the reconnect window) since the watch dropped ("
            + last.getMessage()
            + ")",
        last);
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
