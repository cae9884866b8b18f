package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import dev.are.sdk.State.Checkpoint;
import dev.are.sdk.State.CheckpointPage;
import dev.are.sdk.State.Fork;
import dev.are.sdk.State.HydrateOptions;
import dev.are.sdk.State.Hydration;
import dev.are.sdk.State.Note;
import dev.are.sdk.State.Patch;
import dev.are.sdk.State.PatchOptions;
import dev.are.sdk.State.Snapshot;
import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import io.grpc.Status;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The state facade against a real sidecar (one per test), started from the repository's .venv.
 * Every wait is bounded; nothing asserts on timing.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class StateTest extends WithSidecar {

  private static JsonNode json(Object value) {
    return Json.mapper().valueToTree(value);
  }

  /** A running workflow whose one task no worker serves, so it stays open; state version 1. */
  private String openWorkflow(Object initialState) {
    WorkflowBuilder spec =
        new WorkflowBuilder("java-state")
            .task(new TaskBuilder("idle", "java-nobody-serves-this"))
            .configure(s -> s.setInitialState(Json.payload(initialState)));
    return client.submit(spec).id();
  }

  @Test
  void getAndMergePatchRoundTripWithPathsAndVersions() {
    String id = openWorkflow(Map.of("plan", Map.of("steps", List.of("search")), "budget", 10));
    State state = client.state();

    Snapshot first = state.get(id);
    assertEquals(1, first.version());
    assertEquals(
        json(Map.of("plan", Map.of("steps", List.of("search")), "budget", 10)), first.get(""));

    long v2 =
        state.patch(
            id,
            Patch.merge(Map.of("plan", Map.of("steps", List.of("search", "book")), "draft", "x")),
            PatchOptions.defaults().withWriter("java-test"));
    assertEquals(2, v2);

    Snapshot latest = state.get(id, "/plan/steps/1", "/budget", "/nope");
    assertEquals(v2, latest.version());
    assertEquals(List.of("/plan/steps/1", "/budget"), List.copyOf(latest.values().keySet()));
    assertEquals("book", latest.get("/plan/steps/1").asText());
    assertEquals(10, latest.get("/budget", Integer.class));
    assertEquals(List.of("/nope"), latest.missingPaths());
    assertTrue(latest.find("/nope").isEmpty());
    AreException missing = assertThrows(AreException.class, () -> latest.get("/nope"));
    assertEquals("PATH_NOT_FOUND", missing.reason());

    // A merge patch removes members given as null.
    Map<String, Object> removeDraft = new HashMap<>();
    removeDraft.put("draft", null);
    long v3 = state.patch(id, Patch.merge(removeDraft));
    assertEquals(3, v3);
    assertEquals(List.of("/draft"), state.get(id, "/draft").missingPaths());

    // Reading at a version sees that version.
    Snapshot old = state.get(id, List.of("/plan/steps", "/draft"), 1L);
    assertEquals(1, old.version());
    assertEquals(json(List.of("search")), old.get("/plan/steps"));
    assertEquals(List.of("/draft"), old.missingPaths());
    assertEquals("x", state.get(id, List.of("/draft"), v2).get("/draft").asText());

    AreException noVersion =
        assertThrows(AreException.class, () -> state.get(id, List.of(), 99L));
    assertEquals(Status.Code.NOT_FOUND, noVersion.code());
    assertEquals("STATE_VERSION_NOT_FOUND", noVersion.reason());

    AreException badPointer = assertThrows(AreException.class, () -> state.get(id, "no-slash"));
    assertEquals(Status.Code.INVALID_ARGUMENT, badPointer.code());
    assertEquals("INVALID_JSON_POINTER", badPointer.reason());
  }

  @Test
  void aStaleExpectedVersionIsAbortedWithTheSidecarsReason() {
    String id = openWorkflow(Map.of("n", 0));
    State.Bound state = client.state().forWorkflow(id);

    long v2 = state.patch(Patch.merge(Map.of("n", 1)), PatchOptions.expecting(1));
    assertEquals(2, v2);

    AreException stale =
        assertThrows(
            AreException.class,
            () -> state.patch(Patch.merge(Map.of("n", 99)), PatchOptions.expecting(1)));
    assertEquals(Status.Code.ABORTED, stale.code());
    assertEquals("STATE_VERSION_MISMATCH", stale.reason());
    assertEquals("are.v1", stale.domain());

    // Nothing changed.
    Snapshot now = state.get("/n");
    assertEquals(v2, now.version());
    assertEquals(1, now.get("/n").asInt());

    // A patch attributed to an attempt this client's worker does not hold is refused.
    AreException notHeld =
        assertThrows(
            AreException.class,
            () ->
                state.patch(
                    Patch.merge(Map.of("n", 2)), PatchOptions.defaults().withTask("idle", 1)));
    assertEquals(Status.Code.FAILED_PRECONDITION, notHeld.code());
    assertEquals("TASK_NOT_HELD", notHeld.reason());

    AreException unknown =
        assertThrows(
            AreException.class,
            () -> client.state().patch("wf-does-not-exist", Patch.merge(Map.of("a", 1))));
    assertEquals(Status.Code.NOT_FOUND, unknown.code());
    assertEquals("WORKFLOW_NOT_FOUND", unknown.reason());
  }

  @Test
  void pointerOperations() {
    String id = openWorkflow(Map.of("steps", List.of("a"), "tmp", true));
    State.Bound state = client.state().forWorkflow(id);

    long v =
        state.patch(
            Patch.ops()
                .set("/steps/-", "b")
                .set("/steps/0", "A")
                .set("/meta", Map.of("k", "v"))
                .remove("/tmp")
                .remove("/absent"));
    assertEquals(2, v);
    Snapshot all = state.get();
    assertEquals(json(Map.of("steps", List.of("A", "b"), "meta", Map.of("k", "v"))), all.get(""));

    // All or nothing: a set under a missing parent fails the whole patch.
    AreException bad =
        assertThrows(
            AreException.class,
            () -> state.patch(Patch.ops().set("/steps/-", "c").set("/no/parent", 1)));
    assertEquals(Status.Code.FAILED_PRECONDITION, bad.code());
    assertEquals("PATCH_NOT_APPLICABLE", bad.reason());
    assertEquals(v, state.get().version());

    AreException both =
        assertThrows(AreException.class, () -> Patch.merge(Map.of()).set("/a", 1));
    assertEquals(Status.Code.INVALID_ARGUMENT, both.code());
    assertEquals(AreException.SDK_DOMAIN, both.domain());
  }

  @Test
  void checkpointsAreListedAndPagedAndAWorkflowForks() {
    String id = openWorkflow(Map.of("n", 0));
    State state = client.state();
    for (int n = 1; n <= 4; n++) {
      state.patch(id, Patch.merge(Map.of("n", n)), PatchOptions.defaults().withWriter("java"));
    }

    List<Checkpoint> all = state.checkpoints(id, 100);
    assertEquals(List.of(5L, 4L, 3L, 2L, 1L), all.stream().map(Checkpoint::version).toList());
    assertEquals("java", all.get(0).writer());
    assertEquals("submit", all.get(4).writer());
    assertTrue(all.get(0).sizeBytes() > 0);

    CheckpointPage page = state.listCheckpoints(id, 2, "");
    assertEquals(List.of(5L, 4L), page.checkpoints().stream().map(Checkpoint::version).toList());
    assertFalse(page.nextPageToken().isEmpty());
    assertEquals(5, page.latestVersion());
    CheckpointPage next = state.listCheckpoints(id, 2, page.nextPageToken());
    assertEquals(List.of(3L, 2L), next.checkpoints().stream().map(Checkpoint::version).toList());
    assertEquals(
        List.of(5L, 4L, 3L), state.checkpoints(id, 3).stream().map(Checkpoint::version).toList());

    Fork fork = state.fork(id, 3);
    assertNotEquals(id, fork.workflowId());
    assertEquals(3, fork.sourceVersion());
    Snapshot forked = state.get(fork.workflowId(), "/n");
    assertEquals(2, forked.get("/n").asInt());
    // The fork is a workflow of its own: patching it leaves the source alone.
    state.patch(fork.workflowId(), Patch.merge(Map.of("n", 100)));
    assertEquals(4, state.get(id, "/n").get("/n").asInt());
    assertEquals(100, state.get(fork.workflowId(), "/n").get("/n").asInt());

    Fork latest = state.forWorkflow(id).fork(0);
    assertEquals(5, latest.sourceVersion());
  }

  @Test
  void memoryAddAndHydrate() {
    String id = openWorkflow(Map.of());
    State.BoundMemory memory = client.state().forWorkflow(id).memory();

    List<String> ids =
        memory.add(
            Note.text("the user prefers aisle seats on long flights")
                .withMetadata(Map.of("kind", "preference")),
            Note.text("the budget for the trip is 2000 euros")
                .withMetadata(Map.of("kind", "constraint")),
            Note.text("the user is allergic to peanuts").withMetadata(Map.of("kind", "health")));
    assertEquals(3, ids.size());
    assertEquals(3, ids.stream().distinct().count());

    Hydration hydration =
        memory.hydrate("which seats does the user prefer", HydrateOptions.defaults().withTopK(1));
    assertEquals(1, hydration.hits().size());
    assertEquals(List.of("the user prefers aisle seats on long flights"), hydration.texts());
    assertEquals(ids.get(0), hydration.hits().get(0).memoryId());
    assertEquals(Map.of("kind", "preference"), hydration.hits().get(0).metadata());
    assertTrue(hydration.totalBytes() > 0);

    Hydration filtered =
        memory.hydrate(
            "the user", HydrateOptions.defaults().withMetadata(Map.of("kind", "constraint")));
    assertEquals(List.of("the budget for the trip is 2000 euros"), filtered.texts());

    // A byte budget smaller than any note returns none and says so.
    Hydration tight = memory.hydrate("the user", HydrateOptions.defaults().withMaxBytes(5));
    assertTrue(tight.hits().isEmpty());
    assertTrue(tight.truncated());

    // Vectors given by the caller: a memory of its own dimension.
    String other = openWorkflow(Map.of());
    State.BoundMemory vectors = client.state().forWorkflow(other).memory();
    vectors.add(
        new Note("east", List.of(1f, 0f, 0f), Map.of(), null),
        new Note("north", List.of(0f, 1f, 0f), Map.of(), null));
    Hydration nearest =
        vectors.hydrate(
            List.of(0.1f, 0.9f, 0f),
            HydrateOptions.defaults().withTopK(1).withIncludeVectors(true));
    assertEquals(List.of("north"), nearest.texts());
    assertEquals(List.of(0f, 1f, 0f), nearest.hits().get(0).vector());
    AreException dim =
        assertThrows(
            AreException.class,
            () -> vectors.hydrate(List.of(1f, 0f), HydrateOptions.defaults()));
    assertEquals(Status.Code.INVALID_ARGUMENT, dim.code());
    assertEquals("DIMENSION_MISMATCH", dim.reason());
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aHandlerPatchesItsWorkflowThroughTheBoundView(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(
                client,
                "java-state-worker",
                WorkerOptions.builder()
                    .transport(transport)
                    .concurrency(2)
                    .pollTimeout(Duration.ofSeconds(2))
                    .shutdownGrace(Duration.ofSeconds(5))
                    .build())
            .handle(
                "java-state",
                task -> {
                  State.Bound state = client.state().forTask(task);
                  int seen = state.get("/count").get("/count").asInt();
                  long v =
                      state.patch(
                          Patch.ops().set("/count", seen + 1).set("/by/-", task.taskId()));
                  state.memory().addTexts("note from " + task.taskId());
                  return Map.of("version", v);
                })
            .start();
    try {
      WorkflowBuilder spec =
          new WorkflowBuilder("java-state-handler")
              .configure(
                  s -> s.setInitialState(Json.payload(Map.of("count", 0, "by", List.of()))))
              .task(new TaskBuilder("first", "java-state"))
              .task(new TaskBuilder("second", "java-state").dependsOn("first"))
              .resultTask("second");
      WorkflowHandle handle = client.submit(spec);
      Workflow done = handle.await(WAIT);
      assertEquals(
          WorkflowState.WORKFLOW_STATE_COMPLETED, done.getState(), done.getFailure().toString());
      assertEquals(3, handle.result(WAIT).path("version").asInt());

      Snapshot end = client.state().get(handle.id());
      assertEquals(json(Map.of("count", 2, "by", List.of("first", "second"))), end.get(""));
      List<Checkpoint> checkpoints = client.state().checkpoints(handle.id(), 10);
      assertEquals("second", checkpoints.get(0).taskId());
      assertEquals(1, checkpoints.get(0).attempt());
      assertEquals("first", checkpoints.get(1).taskId());
      assertEquals(
          List.of("note from first"),
          client
              .state()
              .forWorkflow(handle.id())
              .memory()
              .hydrate("from first", HydrateOptions.defaults().withTopK(1))
              .texts());

      // Once the workflow closed, nothing patches it.
      AreException closed =
          assertThrows(
              AreException.class,
              () ->
                  client
                      .state()
                      .patch(
                          handle.id(),
                          Patch.merge(Map.of("late", true)),
                          PatchOptions.defaults().withTask("first", 1)));
      assertEquals(Status.Code.FAILED_PRECONDITION, closed.code(), closed.getMessage());
      assertEquals("WORKFLOW_CLOSED", closed.reason());
    } finally {
      worker.shutdown();
      assertTrue(worker.awaitTermination(WAIT), "the worker stopped in time");
    }
  }
}
