package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import io.grpc.Context;
import io.grpc.Status;
import java.lang.management.ManagementFactory;
import java.lang.reflect.Method;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import javax.management.ObjectName;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * What a long-running process using the SDK must not accumulate, against a real sidecar (one per
 * test): each test repeats a bounded operation and counts what is left behind (instances on the
 * heap after a GC, listeners on a context, permits) instead of waiting for days. Every wait is
 * bounded.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class LeaksTest extends WithSidecar {
  private static final String TIMER_TASK =
      "java.util.concurrent.ScheduledThreadPoolExecutor$ScheduledFutureTask";

  /**
   * Live instances of {@code className} after a full GC, from the JVM's class histogram (what
   * {@code jcmd GC.class_histogram} prints).
   */
  static long liveInstances(String className) throws Exception {
    String histogram =
        (String)
            ManagementFactory.getPlatformMBeanServer()
                .invoke(
                    new ObjectName("com.sun.management:type=DiagnosticCommand"),
                    "gcClassHistogram",
                    new Object[] {null},
                    new String[] {String[].class.getName()});
    for (String line : histogram.split("\n")) {
      String[] fields = line.trim().split("\\s+");
      if (fields.length >= 4 && fields[3].equals(className)) {
        return Long.parseLong(fields[1]);
      }
    }
    return 0;
  }

  /** The listeners registered on a cancellable context (grpc-java's package-private count). */
  static int listeners(Context.CancellableContext context) throws Exception {
    Method count = Context.CancellableContext.class.getDeclaredMethod("listenerCount");
    count.setAccessible(true);
    return (Integer) count.invoke(context);
  }

  private static WorkflowBuilder fanOut(String name, String capability, int n) {
    WorkflowBuilder spec = new WorkflowBuilder(name);
    for (int i = 0; i < n; i++) {
      spec.task(new TaskBuilder("t" + i, capability));
    }
    return spec;
  }

  /**
   * Each attempt schedules a timer at its deadline (start_to_close_timeout: 10 minutes here, up to
   * 7 days) and cancels it when its handler returns. The cancelled timers used to stay queued
   * until they were due: a worker held one per attempt it ran in that time (a million a day at a
   * dozen attempts a second, with 7-day timeouts).
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aFinishedAttemptLeavesNoTimerQueued(WorkerOptions.Transport transport) throws Exception {
    Worker worker =
        new Worker(client, "java-timers", fast(transport)).handle("java-quick", task -> 1).start();
    try {
      Workflow warm = client.submit(fanOut("java-warm", "java-quick", 1)).await(WAIT);
      assertEquals(WorkflowState.WORKFLOW_STATE_COMPLETED, warm.getState());
      long before = liveInstances(TIMER_TASK);
      int attempts = 0;
      for (int round = 0; round < 3; round++) {
        Workflow w = client.submit(fanOut("java-many", "java-quick", 40)).await(WAIT);
        assertEquals(WorkflowState.WORKFLOW_STATE_COMPLETED, w.getState(), w.toString());
        attempts += 40;
      }
      long left = liveInstances(TIMER_TASK) - before;
      assertTrue(left < attempts / 4, left + " timers left behind by " + attempts + " attempts");
    } finally {
      stopWorker(worker);
    }
  }

  /**
   * Waits on workflows made inside a long-lived cancellable context (a server call's, an
   * application's) leave no listener on it. Each one used to leave one for good (grpc-java removes
   * a cancelled child's listener from its ancestor under the wrong identity), making the context
   * bigger, and its listener list slower, with every wait.
   */
  @Test
  void aWaitLeavesNothingOnItsCallersContext() throws Exception {
    Context.CancellableContext outer = Context.current().withCancellation();
    try {
      Context previous = outer.attach();
      try {
        for (int i = 0; i < 10; i++) {
          // Nobody serves the capability: cancelled, the workflow closes.
          WorkflowHandle handle =
              client.submit(fanOut("java-waited", "java-nobody-" + i, 1));
          handle.cancel("closed for the test");
          assertEquals(WorkflowState.WORKFLOW_STATE_CANCELLED, handle.await(WAIT).getState());
          WorkflowHandle open = client.submit(fanOut("java-open", "java-nobody-" + i, 1));
          AreException e =
              assertThrows(AreException.class, () -> open.await(Duration.ofMillis(50)));
          assertEquals("TIMEOUT", e.reason());
          e =
              assertThrows(
                  AreException.class, () -> client.workflow("wf_missing").await(WAIT));
          assertEquals(Status.Code.NOT_FOUND, e.code());
        }
      } finally {
        outer.detach(previous);
      }
      assertEquals(0, listeners(outer), "listeners left on the caller's context");
    } finally {
      outer.cancel(null);
    }
  }

  /**
   * A wait follows its caller's context: cancelled (the server call it serves ended, say), the
   * wait ends at once with CANCELLED, reason CONTEXT_CANCELLED, instead of watching until its
   * timeout; so does a wait begun in a context already cancelled.
   */
  @Test
  void aWaitEndsWithItsCallersContext() throws Exception {
    WorkflowHandle handle = client.submit(fanOut("java-pending", "java-nobody", 1));
    Context.CancellableContext outer = Context.current().withCancellation();
    CompletableFuture<AreException> ended = new CompletableFuture<>();
    Thread waiter =
        new Thread(
            outer.wrap(
                () -> {
                  try {
                    handle.await(WAIT);
                    ended.complete(null);
                  } catch (AreException e) {
                    ended.complete(e);
                  }
                }),
            "java-waiter");
    waiter.start();
    Thread.sleep(300); // the watch is open
    outer.cancel(null);
    AreException e = ended.get(10, TimeUnit.SECONDS);
    assertEquals(Status.Code.CANCELLED, e.code(), String.valueOf(e));
    assertEquals("CONTEXT_CANCELLED", e.reason());
    waiter.join(10_000);
    AreException again =
        assertThrows(AreException.class, () -> outer.call(() -> handle.await(WAIT)));
    assertEquals("CONTEXT_CANCELLED", again.reason());
  }

  /**
   * A handler may record heartbeats for days: each call leaves at most one wake-up of the
   * heartbeat loop pending. The stream transport never takes them, so each call used to add one
   * for good, until the semaphore's 2^31 permits overflowed and recordHeartbeat threw an Error.
   */
  /**
   * Heartbeat details over 1 MiB: the sidecar refuses such a heartbeat, and the stream worker took
   * any refusal for a lost lease, dropping the attempt with nothing reported (the task stayed
   * RUNNING until a timeout). The details are now dropped before they are sent, and only a refusal
   * saying the lease is gone ends an attempt.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void heartbeatDetailsOverTheirBoundDoNotLoseTheAttempt(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(client, "java-big-beat", fast(transport))
            .handle(
                "java-big-beat",
                task -> {
                  task.recordHeartbeat("x".repeat(1 << 20));
                  Thread.sleep(500); // heartbeats go out meanwhile
                  return "done";
                })
            .start();
    try {
      String result =
          client.submit(fanOut("java-big-beat", "java-big-beat", 1)).result(WAIT, String.class);
      assertEquals("done", result);
    } finally {
      stopWorker(worker);
    }
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void heartbeatsRecordedLeaveAtMostOneWakeUp(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(client, "java-chatty", fast(transport))
            .handle(
                "java-chatty",
                task -> {
                  for (int i = 0; i < 20_000; i++) {
                    task.recordHeartbeat(i);
                  }
                  return task.kick.availablePermits();
                })
            .start();
    try {
      int pending =
          client.submit(fanOut("java-chatty", "java-chatty", 1)).result(WAIT, Integer.class);
      assertTrue(pending <= 1, pending + " wake-ups pending after 20,000 heartbeats");
    } finally {
      stopWorker(worker);
    }
  }
}
