package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.testing.Sidecar;
import dev.are.sdk.testing.Sidecar.SidecarOptions;
import dev.are.sdk.v1.WatchWorkflowResponse;
import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import io.grpc.Status;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Waits across a sidecar's restarts and its end, against real sidecars: a restart on an older event
 * log, a RESOURCE_EXHAUSTED no retry fixes, a sidecar gone for good. Each test runs sidecars of its
 * own, restarted at one target and data folder where it needs to.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class WaitsTest {
  /** The bound of every wait of a test (a hang guard, not a measure). */
  private static final Duration WAIT = Duration.ofSeconds(60);

  /** A free TCP port on 127.0.0.1, to restart sidecars at one target. */
  private static int freePort() throws IOException {
    try (ServerSocket socket = new ServerSocket()) {
      socket.bind(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), 0));
      return socket.getLocalPort();
    }
  }

  /** A sidecar on {@code port} with its data in {@code data} (a restart of an earlier one). */
  private static Sidecar sidecarAt(int port, Path data) {
    // After the helper's own --listen and --data-dir: the last one given wins.
    return Sidecar.start(
        SidecarOptions.defaults()
            .withArgs("--listen", "127.0.0.1:" + port, "--data-dir", data.toString()));
  }

  /** Copies the folder {@code from} to {@code to}, as it is. */
  private static void copy(Path from, Path to) throws IOException {
    try (Stream<Path> files = Files.walk(from)) {
      for (Path p : (Iterable<Path>) files::iterator) {
        Files.copy(p, to.resolve(from.relativize(p).toString()));
      }
    }
  }

  private static void delete(Path dir) throws IOException {
    try (Stream<Path> files = Files.walk(dir)) {
      for (Path p : files.sorted(Comparator.reverseOrder()).toList()) {
        Files.delete(p);
      }
    }
  }

  /** A wait on {@code handle} in a thread of its own, telling {@code received} of each status. */
  private static CompletableFuture<Workflow> waiting(
      WorkflowHandle handle, Duration timeout, BlockingQueue<WatchWorkflowResponse> received) {
    return CompletableFuture.supplyAsync(() -> handle.await(timeout, received::add));
  }

  /** The next status the wait received, or a failure once {@link #WAIT} passed. */
  private static WatchWorkflowResponse next(BlockingQueue<WatchWorkflowResponse> received)
      throws InterruptedException {
    WatchWorkflowResponse response = received.poll(WAIT.toSeconds(), TimeUnit.SECONDS);
    assertTrue(response != null, "the wait received the workflow's status in time");
    return response;
  }

  /** What {@code wait} threw (an {@link AreException}), once it did, within {@link #WAIT}. */
  private static AreException thrown(CompletableFuture<Workflow> wait) throws Exception {
    try {
      Workflow w = wait.get(WAIT.toSeconds(), TimeUnit.SECONDS);
      throw new AssertionError("the wait returned " + w.getState() + "; want it to throw");
    } catch (ExecutionException e) {
      assertTrue(e.getCause() instanceof AreException, String.valueOf(e.getCause()));
      return (AreException) e.getCause();
    }
  }

  /**
   * The sidecar is restarted under a wait on an older copy of its data folder (what a power loss
   * under {@code --durability relaxed}, or a restored backup, leaves): the wait's cursor is beyond
   * that log's end, and the sidecar refuses it with OUT_OF_RANGE, {@code SEQUENCE_BEYOND_LOG}. The
   * wait threw that error; as the contract says (and the Python SDK does), it now watches again
   * without the cursor, and returns once the workflow closes.
   */
  @Test
  void aWaitResumedOnAnOlderEventLogGoesOnWithoutItsCursor(@TempDir Path dir) throws Exception {
    Path data = dir.resolve("data");
    Path snapshot = dir.resolve("snapshot");
    int port = freePort();
    List<AutoCloseable> opened = new ArrayList<>();
    try {
      Sidecar first = sidecarAt(port, data);
      opened.add(first);
      Client client = first.client();
      opened.add(client);
      WorkflowHandle handle =
          client.submit(
              new WorkflowBuilder("java-older-log")
                  .task(new TaskBuilder("gate", "java-nobody").requiresApproval())
                  .task(new TaskBuilder("after", "java-nobody").dependsOn("gate")));

      // The older log: the data folder as it was before the events below.
      first.close(); // SIGTERM: a graceful stop
      copy(data, snapshot);
      Sidecar second = sidecarAt(port, data);
      opened.add(second);
      try (Client other = second.client()) {
        for (int i = 0; i < 20; i++) {
          other.state().patch(handle.id(), State.Patch.merge(Map.of("i", i)));
        }
        other.workflow(handle.id()).approve("gate");
      }

      BlockingQueue<WatchWorkflowResponse> received = new LinkedBlockingQueue<>();
      CompletableFuture<Workflow> wait = waiting(handle, WAIT, received);
      long cursor = next(received).getSequence();

      // Back on the older log, which ends before the wait's cursor (the cancel below adds fewer
      // events than the 21 it lacks).
      second.kill();
      second.close();
      delete(data);
      Files.move(snapshot, data);
      Sidecar third = sidecarAt(port, data);
      opened.add(third);
      try (Client last = third.client()) {
        last.workflow(handle.id()).cancel("the test is over");
      }
      Workflow closed = wait.get(WAIT.toSeconds(), TimeUnit.SECONDS);
      assertEquals(WorkflowState.WORKFLOW_STATE_CANCELLED, closed.getState());
      WatchWorkflowResponse older = next(received);
      assertTrue(
          older.getSequence() < cursor,
          "the status from the older log: sequence " + older.getSequence() + ", after " + cursor);
    } finally {
      for (int i = opened.size() - 1; i >= 0; i--) {
        opened.get(i).close();
      }
    }
  }

  /**
   * A client whose receive bound is under the workflow's status: grpc-java refuses the status on
   * this side with RESOURCE_EXHAUSTED and no reason, which every retry meets again. The wait
   * retried it until its timeout (for ever with {@code ChronoUnit.FOREVER}); it now throws it,
   * and resumes only a RESOURCE_EXHAUSTED with reason {@code RESOURCE_LIMIT} (subscribers all
   * taken).
   */
  @Test
  void aWaitThrowsAResourceExhaustedNoRetryFixes() throws Exception {
    try (Sidecar sidecar = Sidecar.start();
        Client client = sidecar.client();
        Client small =
            Client.connect(sidecar.target(), Options.builder().maxMessageBytes(200).build())) {
      WorkflowHandle handle =
          client.submit(
              new WorkflowBuilder("n".repeat(256)).task(new TaskBuilder("a", "java-nobody")));
      CompletableFuture<Workflow> wait =
          CompletableFuture.supplyAsync(() -> small.workflow(handle.id()).await(WAIT));
      AreException e = thrown(wait);
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code(), e.getMessage());
      assertEquals("", e.reason(), e.getMessage());
    }
  }

  /**
   * The sidecar is killed under a wait and never restarted: the wait retried every two seconds for
   * as long as its timeout allowed, for ever with {@code ChronoUnit.FOREVER}. It now throws
   * UNAVAILABLE once the client's reconnect window has passed without an answer, as the Python
   * SDK's wait does.
   */
  @Test
  void aWaitEndsOnceTheSidecarIsSilentForTheReconnectWindow() throws Exception {
    try (Sidecar sidecar = Sidecar.start();
        Client client =
            Client.connect(
                sidecar.target(),
                Options.builder().reconnectWindow(Duration.ofSeconds(2)).build())) {
      WorkflowHandle handle =
          client.submit(new WorkflowBuilder("java-gone").task(new TaskBuilder("a", "java-nobody")));
      BlockingQueue<WatchWorkflowResponse> received = new LinkedBlockingQueue<>();
      // Bounded by the test's own hang guard only.
      CompletableFuture<Workflow> wait =
          waiting(handle, ChronoUnit.FOREVER.getDuration(), received);
      next(received);
      sidecar.kill();
      AreException e = thrown(wait);
      assertEquals(Status.Code.UNAVAILABLE, e.code(), e.getMessage());
      assertTrue(e.getMessage().contains("reconnect window"), e.getMessage());

      // A wait that starts once the sidecar is gone ends the same way, long before its timeout.
      AreException again = thrown(CompletableFuture.supplyAsync(() -> handle.await(WAIT)));
      assertEquals(Status.Code.UNAVAILABLE, again.code(), again.getMessage());
    }
  }

  /** As the Python SDK's connect: refused before any channel is opened (nothing listens here). */
  @Test
  void connectRefusesAReconnectWindowThatIsNotPositive() {
    for (Duration d : List.of(Duration.ZERO, Duration.ofSeconds(-1))) {
      Options options = Options.builder().reconnectWindow(d).build();
      AreException e =
          assertThrows(AreException.class, () -> Client.connect("127.0.0.1:1", options));
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), e.getMessage());
      assertTrue(e.field("reconnectWindow").isPresent(), e.getMessage());
    }
    assertEquals(Options.DEFAULT_RECONNECT_WINDOW, Options.defaults().reconnectWindow());
  }
}
