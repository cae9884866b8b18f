package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.v1.ApprovalDecision;
import dev.are.sdk.v1.Task;
import dev.are.sdk.v1.TaskState;
import dev.are.sdk.v1.WorkflowState;
import io.grpc.Status;
import java.time.Duration;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Human approvals through the Java API (ListApprovals, ResolveApproval) against a real sidecar:
 * gates listed with their inputs and paged, a workflow that goes on once approved, a rejection, and
 * the sidecar's refusals as {@link AreException}s.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class ApprovalsTest extends WithSidecar {

  /**
   * Polls {@code gates} until it lists {@code n} tasks (a gate opens once its dependencies end).
   */
  private static List<Task> awaitGates(Supplier<List<Task>> gates, int n)
      throws InterruptedException {
    long deadline = System.nanoTime() + WAIT.toNanos();
    List<Task> listed = gates.get();
    while (listed.size() < n) {
      assertTrue(System.nanoTime() - deadline < 0, "gates opened in time: " + listed);
      Thread.sleep(50);
      listed = gates.get();
    }
    return listed;
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void anApprovedTaskRunsAndTheWorkflowCompletes(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(client, "java-approvals", fast(transport))
            .handle("java-draft", task -> Map.of("draft", "text about " + task.input().asText()))
            .handle(
                "java-publish",
                task ->
                    Map.of(
                        "published", task.dependency("draft").orElseThrow().path("draft").asText()))
            .start();
    try {
      WorkflowHandle handle =
          client.submit(
              new WorkflowBuilder("java-approval")
                  .task(new TaskBuilder("draft", "java-draft").input("caches"))
                  .task(
                      new TaskBuilder("publish", "java-publish")
                          .input(Map.of("channel", "blog"))
                          .dependsOn("draft")
                          .requiresApproval()));
      List<Task> gates = awaitGates(handle::approvals, 1);
      Task gate = gates.get(0);
      assertEquals("publish", gate.getTaskId());
      assertEquals(handle.id(), gate.getWorkflowId());
      assertEquals(TaskState.TASK_STATE_AWAITING_APPROVAL, gate.getState());
      assertTrue(gate.getApproval().hasRequestTime());
      // The input comes with the gate, so that a human can judge it.
      assertEquals(
          "blog",
          Json.decode(client.payloadBytes(gate.getSpec().getInput())).path("channel").asText());
      // Waiting at its gate, the workflow does not close.
      assertEquals(WorkflowState.WORKFLOW_STATE_RUNNING, handle.get().getState());

      Task approved = handle.approve("publish", "alice", "looks right");
      // Past its gate: scheduled, or already running when an idle worker took it at once.
      assertTrue(
          approved.getState() == TaskState.TASK_STATE_SCHEDULED
              || approved.getState() == TaskState.TASK_STATE_RUNNING,
          "" + approved.getState());
      assertEquals(
          ApprovalDecision.APPROVAL_DECISION_APPROVE, approved.getApproval().getDecision());
      assertEquals("alice", approved.getApproval().getApprover());
      assertEquals("looks right", approved.getApproval().getComment());

      assertEquals("text about caches", handle.result(WAIT).path("published").asText());
      assertEquals(TaskState.TASK_STATE_COMPLETED, handle.task("publish").getState());
      assertTrue(handle.approvals().isEmpty());
    } finally {
      stopWorker(worker);
    }
  }

  @Test
  void gatesArePagedFilteredAndRejected() throws Exception {
    String label = "java-gates-" + System.nanoTime();
    WorkflowBuilder spec = new WorkflowBuilder("java-gates");
    for (String id : List.of("a", "b", "c")) {
      spec.task(
          new TaskBuilder(id, "java-nobody-serves")
              .input(Map.of("id", id))
              .requiresApproval()
              .configure(t -> t.putLabels("batch", label)));
    }
    WorkflowHandle handle = client.submit(spec);
    WorkflowHandle other =
        client.submit(
            new WorkflowBuilder("java-gates")
                .task(new TaskBuilder("x", "java-nobody-serves").requiresApproval()));
    awaitGates(handle::approvals, 3);
    awaitGates(other::approvals, 1);

    // One page at a time, oldest request first, until the last page's empty token.
    List<String> paged = new ArrayList<>();
    String token = null;
    for (int pages = 0; pages < 10; pages++) {
      ApprovalPage page = client.listApprovals(handle.id(), null, 1, token);
      assertTrue(page.tasks().size() <= 1, "" + page);
      page.tasks().forEach(t -> paged.add(t.getTaskId()));
      token = page.nextPageToken();
      if (token.isEmpty()) {
        break;
      }
    }
    assertEquals(List.of("a", "b", "c"), paged.stream().sorted().toList());
    assertEquals(3, paged.size());
    // By labels: only this workflow's gates carry them; a limit cuts the listing.
    List<Task> labelled = client.approvals(null, Map.of("batch", label), 100);
    assertEquals(3, labelled.size());
    assertTrue(labelled.stream().allMatch(t -> t.getWorkflowId().equals(handle.id())));
    assertEquals(2, client.approvals(null, Map.of("batch", label), 2).size());
    assertTrue(
        client.approvals(null, null, 1000).stream()
            .anyMatch(t -> t.getWorkflowId().equals(other.id())));

    Task rejected = handle.reject("b", "bob", "not this one");
    assertEquals(TaskState.TASK_STATE_REJECTED, rejected.getState());
    assertEquals(ApprovalDecision.APPROVAL_DECISION_REJECT, rejected.getApproval().getDecision());
    assertEquals("bob", rejected.getApproval().getApprover());
    assertEquals(
        List.of("a", "c"), handle.approvals().stream().map(Task::getTaskId).sorted().toList());
    assertFalse(handle.approvals().stream().anyMatch(t -> t.getTaskId().equals("b")));
    handle.cancel("done");
    other.cancel("done");
  }

  @Test
  void refusalsAreAreExceptions() throws Exception {
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-gates")
                .task(new TaskBuilder("gated", "java-nobody-serves").requiresApproval())
                .task(new TaskBuilder("plain", "java-nobody-serves")));
    awaitGates(handle::approvals, 1);
    handle.approve("gated");

    // Resolved already, and never gated: not awaiting approval.
    for (String task : List.of("gated", "plain")) {
      AreException e = assertThrows(AreException.class, () -> handle.reject(task));
      assertEquals(Status.Code.FAILED_PRECONDITION, e.code(), task);
      assertEquals("TASK_NOT_AWAITING_APPROVAL", e.reason(), task);
    }
    AreException noTask = assertThrows(AreException.class, () -> handle.approve("nope"));
    assertEquals(Status.Code.NOT_FOUND, noTask.code());
    assertEquals("TASK_NOT_FOUND", noTask.reason());
    AreException noWorkflow =
        assertThrows(AreException.class, () -> client.workflow("wf-nobody").approve("t"));
    assertEquals(Status.Code.NOT_FOUND, noWorkflow.code());
    assertEquals("WORKFLOW_NOT_FOUND", noWorkflow.reason());
    AreException badToken =
        assertThrows(AreException.class, () -> client.listApprovals(null, null, 10, "not-a-token"));
    assertEquals(Status.Code.INVALID_ARGUMENT, badToken.code());
    assertEquals("INVALID_PAGE_TOKEN", badToken.reason());
    handle.cancel("done");
  }

  @Test
  void aGateWithNoTimeoutOfItsOwn() throws Exception {
    // FOREVER as an approval timeout leaves the field unset: the gate waits as long as the
    // workflow may run, and the sidecar accepts the spec.
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-gates")
                .task(
                    new TaskBuilder("gated", "java-nobody-serves")
                        .requiresApproval(ChronoUnit.FOREVER.getDuration())));
    Task gate = awaitGates(handle::approvals, 1).get(0);
    assertTrue(gate.getSpec().getRequiresApproval());
    assertFalse(gate.getSpec().hasApprovalTimeout());
    assertFalse(gate.getApproval().hasExpireTime());
    WorkflowHandle bounded =
        client.submit(
            new WorkflowBuilder("java-gates")
                .task(
                    new TaskBuilder("gated", "java-nobody-serves")
                        .requiresApproval(Duration.ofHours(1))));
    assertTrue(awaitGates(bounded::approvals, 1).get(0).getApproval().hasExpireTime());
    handle.cancel("done");
    bounded.cancel("done");
  }
}
