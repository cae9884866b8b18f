package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.v1.Failure;
import dev.are.sdk.v1.FailureKind;
import dev.are.sdk.v1.Task;
import dev.are.sdk.v1.TaskState;
import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The causes of what a handler throws ({@link Throwable#getCause()}) reach the task's failure as
 * its nested causes, against a real sidecar: the chain as thrown, a cycle that ends, a chain cut
 * to the sidecar's bounds (8 causes; 1 MiB with them) saying what was dropped. They used to be
 * dropped: the failure had no cause at all.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class FailureCausesTest extends WithSidecar {

  /** An exception whose message cannot be read. */
  static final class UnreadableException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    @Override
    public String getMessage() {
      throw new IllegalStateException("no message for you");
    }
  }

  /** An exception that names itself as its cause (Throwable's own getCause() never does). */
  static final class SelfCausedException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    SelfCausedException(String message) {
      super(message);
    }

    @Override
    public synchronized Throwable getCause() {
      return this;
    }
  }

  /** An exception whose cause cannot be read. */
  static final class CauselessException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    CauselessException(String message) {
      super(message);
    }

    @Override
    public synchronized Throwable getCause() {
      throw new IllegalStateException("no cause for you");
    }
  }

  /** An exception whose cause is a new one on every call: a chain without end or cycle. */
  static final class EndlessException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    EndlessException() {
      super("endless", null, false, false); // no stack trace: 10,000 of them are made
    }

    @Override
    public synchronized Throwable getCause() {
      return new EndlessException();
    }
  }

  /** The failure and its causes, outermost first, as "type: message". */
  private static List<String> chain(Failure failure) {
    List<String> levels = new ArrayList<>();
    for (Failure f = failure; f != null; f = f.hasCause() ? f.getCause() : null) {
      levels.add(f.getType() + ": " + f.getMessage());
    }
    return levels;
  }

  /** Runs one workflow of a task per entry of {@code ids} on {@code handler}; all must fail. */
  private WorkflowHandle runFailing(
      WorkerOptions.Transport transport, List<String> ids, TaskHandler handler)
      throws Exception {
    Worker worker =
        new Worker(client, "java-causes", fast(transport)).handle("java-causes", handler).start();
    try {
      WorkflowBuilder spec = new WorkflowBuilder("java-causes");
      for (String id : ids) {
        spec.task(new TaskBuilder(id, "java-causes").maxAttempts(1, Duration.ofMillis(10)));
      }
      WorkflowHandle handle = client.submit(spec);
      Workflow closed = handle.await(WAIT);
      assertEquals(WorkflowState.WORKFLOW_STATE_FAILED, closed.getState(), closed.toString());
      for (String id : ids) {
        assertEquals(TaskState.TASK_STATE_FAILED, handle.task(id).getState(), id);
      }
      return handle;
    } finally {
      stopWorker(worker);
    }
  }

  /**
   * A 2- and a 3-level chain arrive as thrown, outermost first: each cause with its message and
   * type (a TaskError's own type, else the class's simple name), a cause whose message cannot be
   * read named after its class as the failure itself would be.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aHandlersChainedErrorsAreItsFailuresCauses(WorkerOptions.Transport transport)
      throws Exception {
    WorkflowHandle handle =
        runFailing(
            transport,
            List.of("three", "typed"),
            task -> {
              if (task.taskId().equals("three")) {
                throw new IllegalStateException(
                    "the call failed",
                    new TaskError("RateLimited", "slow down", new IOException("disk full")));
              }
              throw new TaskError("LookupFailed", "no such model", new UnreadableException())
                  .nonRetryable();
            });
    Failure three = handle.task("three").getFailure();
    assertEquals(
        List.of(
            "IllegalStateException: the call failed",
            "RateLimited: slow down",
            "IOException: disk full"),
        chain(three));
    assertEquals(FailureKind.FAILURE_KIND_APPLICATION, three.getCause().getKind());
    assertEquals(FailureKind.FAILURE_KIND_APPLICATION, three.getCause().getCause().getKind());
    assertTrue(three.getStackTrace().contains("Caused by: java.io.IOException: disk full"));
    assertTrue(three.getCause().getStackTrace().isEmpty(), "the causes' frames are the failure's");

    List<String> typed = chain(handle.task("typed").getFailure());
    assertEquals(2, typed.size(), typed.toString());
    assertEquals("LookupFailed: no such model", typed.get(0));
    assertTrue(
        typed.get(1).startsWith("UnreadableException: ")
            && typed.get(1).contains("could not be read"),
        typed.get(1));
  }

  /**
   * A cause chain that cycles (a → b → a through initCause, or a getCause() returning the
   * exception itself) ends at the first cause met again; a getCause() that throws ends it there;
   * one that makes a new exception on every call is cut to 8 causes, the deepest saying that
   * 10,000 or more were dropped. Each attempt is reported: the workflow fails in time.
   */
  @Test
  void aCyclicCauseChainEnds() throws Exception {
    WorkflowHandle handle =
        runFailing(
            WorkerOptions.Transport.STREAM,
            List.of("cycle", "self", "causeless", "endless"),
            task -> {
              switch (task.taskId()) {
                case "cycle" -> {
                  IllegalStateException a = new IllegalStateException("outer");
                  IOException b = new IOException("inner");
                  a.initCause(b);
                  b.initCause(a);
                  throw a;
                }
                case "self" -> throw new RuntimeException("wrapper", new SelfCausedException("me"));
                case "causeless" -> throw new CauselessException("alone");
                default -> throw new EndlessException();
              }
            });
    assertEquals(
        List.of("IllegalStateException: outer", "IOException: inner"),
        chain(handle.task("cycle").getFailure()));
    assertEquals(
        List.of("RuntimeException: wrapper", "SelfCausedException: me"),
        chain(handle.task("self").getFailure()));
    assertEquals(
        List.of("CauselessException: alone"), chain(handle.task("causeless").getFailure()));
    List<String> endless = chain(handle.task("endless").getFailure());
    assertEquals(9, endless.size(), endless.toString());
    assertEquals(
        "EndlessException: endless [10000 or more deeper causes dropped: causes nest at most 8"
            + " deep]",
        endless.get(8));
  }

  /**
   * A chain deeper than the sidecar keeps (50 causes) is cut to its 8 outermost causes, the
   * deepest saying how many were dropped and why; a chain that with the failure's details is over
   * 1 MiB loses its deepest causes until it fits, the deepest kept one saying so.
   */
  @Test
  void aVeryDeepOrLargeChainIsCutToTheBoundsSayingSo() throws Exception {
    String big = "x".repeat(1_000_000);
    String long1 = "a".repeat(30_000);
    WorkflowHandle handle =
        runFailing(
            WorkerOptions.Transport.STREAM,
            List.of("deep", "large"),
            task -> {
              if (task.taskId().equals("deep")) {
                RuntimeException e = new IllegalArgumentException("level 50");
                for (int i = 49; i >= 0; i--) {
                  e = new RuntimeException("level " + i, e);
                }
                throw e;
              }
              throw new TaskError(
                      "Big",
                      "big details",
                      new IOException(
                          long1 + "1", new IOException(long1 + "2", new IOException(long1 + "3"))))
                  .details(Map.of("blob", big));
            });
    List<String> deep = chain(handle.task("deep").getFailure());
    assertEquals(9, deep.size(), deep.toString());
    for (int i = 0; i < 8; i++) {
      assertEquals("RuntimeException: level " + i, deep.get(i));
    }
    assertEquals(
        "RuntimeException: level 8 [42 deeper causes dropped: causes nest at most 8 deep]",
        deep.get(8));

    Task large = handle.task("large");
    Failure top = large.getFailure();
    assertTrue(top.hasDetails(), "the details are kept: the causes are dropped first");
    assertTrue(top.hasCause());
    assertFalse(top.getCause().hasCause(), chain(top).size() + " levels");
    assertEquals(
        "IOException: "
            + long1
            + "1 [2 deeper causes dropped: a failure with its causes is at most 1 MiB]",
        chain(top).get(1));
    assertTrue(top.getSerializedSize() <= 1024 * 1024, top.getSerializedSize() + " bytes");
  }
}
