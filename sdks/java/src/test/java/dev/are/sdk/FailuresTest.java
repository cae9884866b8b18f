package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.JsonSerializable;
import com.fasterxml.jackson.databind.SerializerProvider;
import com.fasterxml.jackson.databind.jsontype.TypeSerializer;
import dev.are.sdk.Cache.CacheOptions;
import dev.are.sdk.testing.Sidecar;
import dev.are.sdk.v1.CacheNamespace;
import dev.are.sdk.v1.ConnectRequest;
import dev.are.sdk.v1.ConnectResponse;
import dev.are.sdk.v1.Event;
import dev.are.sdk.v1.EventFilter;
import dev.are.sdk.v1.EventType;
import dev.are.sdk.v1.HeartbeatBatch;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.ListEventsRequest;
import dev.are.sdk.v1.Pool;
import dev.are.sdk.v1.PutPoolRequest;
import dev.are.sdk.v1.StreamEventsResponse;
import dev.are.sdk.v1.Task;
import dev.are.sdk.v1.TaskState;
import dev.are.sdk.v1.WorkerRegistration;
import dev.are.sdk.v1.WorkerServiceGrpc;
import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.condition.EnabledIfEnvironmentVariable;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The SDK under failures, against a real sidecar (one per test): handlers failing in every way,
 * the sidecar's retry hints, broken and refused streams (a TCP proxy breaks connections; nothing
 * of the sidecar is imitated), a cache that is down, and shutdowns. Every wait is bounded.
 */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class FailuresTest extends WithSidecar {

  /** An exception whose message cannot be read. */
  static final class UnreadableException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    @Override
    public String getMessage() {
      throw new IllegalStateException("no message for you");
    }
  }

  /** An exception without a message whose text cannot be read either. */
  static final class UnprintableException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    @Override
    public String getMessage() {
      return null;
    }

    @Override
    public String toString() {
      throw new IllegalStateException("no text for you");
    }
  }

  /** An output that cannot be written as JSON: its getter throws an Error. */
  public static final class Unwritable {
    /** Throws. */
    public String getValue() {
      throw new AssertionError("cannot be written");
    }
  }

  /**
   * A TaskError whose retry delay cannot be read: its failure goes without one. It used to escape
   * the report: the attempt stayed RUNNING until its start_to_close_timeout.
   */
  static final class UndelayableError extends TaskError {
    private static final long serialVersionUID = 1L;

    UndelayableError() {
      super("Undelayable", "no delay to read");
    }

    @Override
    public Duration retryAfterValue() {
      throw new IllegalStateException("no delay for you");
    }
  }

  private static int deep(int n) {
    return deep(n + 1) + 1;
  }

  /**
   * Whatever a handler throws (checked, unchecked, an Error, an exception whose message or text
   * cannot be read, a TaskError without a type or whose retry delay cannot be read,
   * InterruptedException after interrupting itself) or returns that cannot be written, its
   * attempt is reported failed: the workflow closes, no task stays RUNNING, and the slots are free
   * for the next work. An unreadable exception, a TaskError of type null or of an unreadable
   * delay, and an output whose writing threw an Error used to escape the report: the attempt
   * stayed RUNNING.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aHandlerFailingInAnyWayHasItsFailureReported(WorkerOptions.Transport transport)
      throws Exception {
    Map<String, String> types =
        Map.of(
            "checked", "IOException",
            "unchecked", "IllegalStateException",
            "overflow", "StackOverflowError",
            "assertion", "AssertionError",
            "unreadable", "UnreadableException",
            "unprintable", "UnprintableException",
            "untyped", "TaskError",
            "interrupted", "InterruptedException",
            "unwritable", "AssertionError",
            "undelayable", "Undelayable");
    Worker worker =
        new Worker(client, "java-failing-" + transport, fast(transport))
            .handle(
                "java-fails",
                task -> {
                  switch (task.taskId()) {
                    case "checked" -> throw new IOException("disk full");
                    case "unchecked" -> throw new IllegalStateException("handler bug");
                    case "overflow" -> {
                      return deep(0);
                    }
                    case "assertion" -> throw new AssertionError("invariant broken");
                    case "unreadable" -> throw new UnreadableException();
                    case "unprintable" -> throw new UnprintableException();
                    case "untyped" -> throw new TaskError(null, "no type");
                    case "undelayable" -> throw new UndelayableError();
                    case "interrupted" -> {
                      Thread.currentThread().interrupt(); // not a cancellation: its own doing
                      Thread.sleep(WAIT.toMillis());
                      return "not interrupted";
                    }
                    case "unwritable" -> {
                      return new Unwritable();
                    }
                    default -> {
                      return "ok";
                    }
                  }
                })
            .start();
    try {
      WorkflowBuilder spec = new WorkflowBuilder("java-fails");
      for (String id : types.keySet()) {
        spec.task(new TaskBuilder(id, "java-fails").maxAttempts(1, Duration.ofMillis(10)));
      }
      WorkflowHandle handle = client.submit(spec);
      AreException e =
          assertThrows(AreException.class, () -> handle.result(Duration.ofSeconds(30)));
      assertEquals(
          "WORKFLOW_FAILED",
          e.reason(),
          () -> {
            StringBuilder states = new StringBuilder(e.getMessage());
            for (String id : types.keySet()) {
              states.append("; ").append(id).append(": ").append(handle.task(id).getState());
            }
            return states.toString();
          });
      for (Map.Entry<String, String> want : types.entrySet()) {
        Task task = handle.task(want.getKey());
        assertEquals(TaskState.TASK_STATE_FAILED, task.getState(), want.getKey());
        assertEquals(want.getValue(), task.getFailure().getType(), want.getKey());
        assertFalse(task.getFailure().getMessage().isEmpty(), want.getKey());
      }
      assertTrue(
          handle.task("unreadable").getFailure().getMessage().contains("could not be read"),
          handle.task("unreadable").getFailure().getMessage());
      assertTrue(
          handle.task("unreadable").getFailure().getStackTrace().contains("FailuresTest"),
          "the stack trace is kept");
      // Every slot is free again: a workflow of as many tasks as slots completes.
      WorkflowBuilder after = new WorkflowBuilder("java-after");
      for (int i = 0; i < 4; i++) {
        after.task(new TaskBuilder("ok-" + i, "java-fails"));
      }
      Workflow done = client.submit(after).await(WAIT);
      assertEquals(WorkflowState.WORKFLOW_STATE_COMPLETED, done.getState(), done.toString());
    } finally {
      stopWorker(worker);
    }
    assertEquals(types.size(), worker.stats().failed());
  }

  /**
   * A handler that lets through the sidecar's refusal of a call it made (here a submit into a
   * full pool queue: RESOURCE_EXHAUSTED with a 1 s RetryInfo) fails its attempt with that hint as
   * its retry_after, so the retry waits for it instead of the policy's 10 ms.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void theSidecarsRetryHintInAHandlersErrorDelaysTheRetry(WorkerOptions.Transport transport)
      throws Exception {
    client
        .raw()
        .scheduler()
        .withDeadlineAfter(WAIT.toMillis(), TimeUnit.MILLISECONDS)
        .putPool(
            PutPoolRequest.newBuilder()
                .setPool(Pool.newBuilder().setName("java-narrow").setMaxQueueLength(1))
                .build());
    AtomicReference<AreException> refused = new AtomicReference<>();
    Worker worker =
        new Worker(client, "java-hinted", fast(transport))
            .handle(
                "java-hinted",
                task -> {
                  if (task.attempt() == 1) {
                    try {
                      client.submit(
                          new WorkflowBuilder("java-overflow")
                              .task(new TaskBuilder("a", "java-nobody").pool("java-narrow"))
                              .task(new TaskBuilder("b", "java-nobody").pool("java-narrow")));
                    } catch (AreException e) {
                      refused.set(e);
                      throw e;
                    }
                  }
                  return "ok";
                })
            .start();
    try {
      WorkflowHandle handle =
          client.submit(
              new WorkflowBuilder("java-hinted")
                  .task(new TaskBuilder("t", "java-hinted").maxAttempts(2, Duration.ofMillis(10))));
      assertEquals("ok", handle.result(WAIT, String.class));
      AreException e = refused.get();
      assertTrue(e != null, "the submit was refused");
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code(), e.getMessage());
      assertEquals(Optional.of(Duration.ofSeconds(1)), e.retryDelay());
      List<Event> retries =
          client
              .raw()
              .trace()
              .withDeadlineAfter(WAIT.toMillis(), TimeUnit.MILLISECONDS)
              .listEvents(
                  ListEventsRequest.newBuilder()
                      .setFilter(
                          EventFilter.newBuilder()
                              .addWorkflowIds(handle.id())
                              .addEventTypes(EventType.EVENT_TYPE_TASK_RETRY_SCHEDULED))
                      .setPageSize(10)
                      .build())
              .getEventsList();
      assertEquals(1, retries.size(), retries.toString());
      Duration backoff = Durations.fromProto(retries.get(0).getDuration());
      assertTrue(
          backoff.compareTo(Duration.ofSeconds(1)) >= 0,
          "the retry waited " + backoff + ", not the sidecar's hint of 1 s");
    } finally {
      stopWorker(worker);
    }
  }

  /**
   * A handler that ignores its cancellation keeps running after the sidecar took its attempt
   * back (the workflow was cancelled); a shutdown then has nothing of the sidecar's to wait for.
   * It used to wait for that handler the whole shutdown grace and then the report timeout (on the
   * stream twice over): 35 s to 70 s here.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aShutdownDoesNotWaitForAHandlerWhoseAttemptWasTakenBack(WorkerOptions.Transport transport)
      throws Exception {
    CountDownLatch started = new CountDownLatch(1);
    CountDownLatch sawCancel = new CountDownLatch(1);
    CountDownLatch release = new CountDownLatch(1);
    Worker worker =
        new Worker(client, "java-stubborn", fast(transport))
            .handle(
                "java-stubborn",
                task -> {
                  started.countDown();
                  long by = System.nanoTime() + WAIT.toNanos();
                  while (System.nanoTime() < by) { // deaf to interrupts until released
                    if (task.isCancelled()) {
                      sawCancel.countDown();
                    }
                    try {
                      if (release.await(20, TimeUnit.MILLISECONDS)) {
                        break;
                      }
                    } catch (InterruptedException ignored) {
                      // Ignored on purpose.
                    }
                  }
                  return "late";
                })
            .start();
    try {
      WorkflowHandle handle =
          client.submit(
              new WorkflowBuilder("java-stubborn").task(new TaskBuilder("t", "java-stubborn")));
      assertTrue(started.await(WAIT.toSeconds(), TimeUnit.SECONDS), "the handler started");
      handle.cancel("no longer needed");
      assertTrue(sawCancel.await(WAIT.toSeconds(), TimeUnit.SECONDS), "the cancellation came");
      worker.shutdown();
      // Less than the shutdown grace (5 s): nothing held is left to wait for.
      assertTrue(
          worker.awaitTermination(Duration.ofSeconds(4)),
          "the shutdown waited for a handler whose attempt was taken back");
    } finally {
      release.countDown();
      stopWorker(worker);
    }
  }

  /**
   * A stream that breaks soon after each registration (here a proxy cutting every connection 250
   * ms after it opened) is reopened with a backoff that grows: only a session that lived 10 s sets
   * it back. It used to be set back at every registration: about three reconnects a second here,
   * twenty a second when the sidecar ends streams at once.
   */
  @Test
  void aStreamBrokenRightAfterEachRegistrationIsNotReopenedInAHotLoop() throws Exception {
    try (TcpProxy proxy = new TcpProxy(sidecar.target());
        Client proxied = Client.connect(proxy.target())) {
      proxy.cutEachAfter(Duration.ofMillis(250));
      proxy.cutAll();
      int before = proxy.accepted();
      Worker worker =
          new Worker(proxied, "java-cut", fast(WorkerOptions.Transport.STREAM))
              .handle("java-cut", task -> "ok")
              .start();
      try {
        Thread.sleep(6000);
        int connects = proxy.accepted() - before;
        // Set back each time: 6 s / (0.25 s + up to 50 ms) is about 20. Growing: about 8.
        assertTrue(connects >= 2, connects + " connections: the worker did not reconnect");
        assertTrue(connects < 14, connects + " connections in 6 s: reconnected in a hot loop");
      } finally {
        proxy.cutEachAfter(null);
        stopWorker(worker);
      }
    }
  }

  /** Collects the WorkerStream's warnings ("... reconnecting ...") with when they came. */
  private static final class Warnings extends Handler {
    final List<Long> reconnects = new ArrayList<>();
    final List<String> messages = new ArrayList<>();

    @Override
    public synchronized void publish(LogRecord record) {
      if (record.getMessage() != null && record.getMessage().contains("reconnecting")) {
        reconnects.add(System.nanoTime());
        messages.add(record.getMessage());
      }
    }

    synchronized List<Long> reconnects() {
      return List.copyOf(reconnects);
    }

    synchronized List<String> messages() {
      return List.copyOf(messages);
    }

    @Override
    public void flush() {}

    @Override
    public void close() {}
  }

  /**
   * Results that pile up while the stream is busy go out in the next write: 20 outputs of nearly 4
   * MiB (each within the inline bound) queued together went as one message of about 80 MiB, over
   * the 64 MiB that the sidecar accepts. The stream broke and every attempt on it was lost (here,
   * with one attempt each, the workflow failed). A message is now cut by its size as well as its
   * count. The pile-up is made certain: a proxy holds what the worker sends, the first 4 outputs
   * (16 MiB, more than the sockets take) stop the writer until it lets go, and the other 20 are
   * queued meanwhile. Without the proxy it came about by itself, in 2 runs of 3.
   */
  @Test
  void manyLargeCompletionsQueuedTogetherStayUnderTheMessageBound() throws Exception {
    int first = 4;
    int tasks = first + 20;
    // A JSON string of MAX_INLINE_BYTES - 62 bytes: inline, not a blob.
    String big = "x".repeat(Client.MAX_INLINE_BYTES - 64);
    CountDownLatch started = new CountDownLatch(tasks);
    CountDownLatch goFirst = new CountDownLatch(1);
    CountDownLatch goRest = new CountDownLatch(1);
    CountDownLatch firstWritten = new CountDownLatch(first);
    CountDownLatch restWritten = new CountDownLatch(tasks - first);
    // An output that counts itself written as JSON.
    final class Bulky extends JsonSerializable.Base {
      final CountDownLatch written;

      Bulky(CountDownLatch written) {
        this.written = written;
      }

      @Override
      public void serialize(JsonGenerator gen, SerializerProvider provider) throws IOException {
        gen.writeString(big);
        written.countDown();
      }

      @Override
      public void serializeWithType(
          JsonGenerator gen, SerializerProvider provider, TypeSerializer type) throws IOException {
        serialize(gen, provider);
      }
    }
    Logger log = Logger.getLogger(WorkerStream.class.getName());
    Warnings warnings = new Warnings();
    log.addHandler(warnings);
    try (TcpProxy proxy = new TcpProxy(sidecar.target());
        Client proxied = Client.connect(proxy.target())) {
      WorkerOptions options =
          WorkerOptions.builder()
              .transport(WorkerOptions.Transport.STREAM)
              .concurrency(tasks)
              .heartbeatInterval(Duration.ofMillis(100))
              .shutdownGrace(Duration.ofSeconds(5))
              .build();
      Worker worker =
          new Worker(proxied, "java-bulky", options)
              .handle(
                  "java-bulky",
                  task -> {
                    started.countDown();
                    boolean isFirst = Integer.parseInt(task.taskId().substring(2)) < first;
                    CountDownLatch go = isFirst ? goFirst : goRest;
                    if (!go.await(WAIT.toSeconds(), TimeUnit.SECONDS)) {
                      throw new TaskError("Stuck", "never told to return");
                    }
                    return new Bulky(isFirst ? firstWritten : restWritten);
                  })
              .start();
      try {
        WorkflowBuilder spec = new WorkflowBuilder("java-bulky");
        for (int i = 0; i < tasks; i++) {
          spec.task(new TaskBuilder("t-" + i, "java-bulky").maxAttempts(1, Duration.ofMillis(10)));
        }
        WorkflowHandle handle = client.submit(spec);
        assertTrue(started.await(WAIT.toSeconds(), TimeUnit.SECONDS), "every handler started");
        proxy.holdUpstream();
        goFirst.countDown();
        assertTrue(firstWritten.await(WAIT.toSeconds(), TimeUnit.SECONDS), "outputs written");
        Thread.sleep(500); // their completions are handed to gRPC; it cannot send them all
        goRest.countDown();
        assertTrue(restWritten.await(WAIT.toSeconds(), TimeUnit.SECONDS), "outputs written");
        Thread.sleep(500); // each is copied into its completion, which is queued
        proxy.releaseUpstream();
        Workflow workflow = handle.await(WAIT);
        Task task = handle.task("t-" + (tasks - 1));
        assertEquals(
            WorkflowState.WORKFLOW_STATE_COMPLETED,
            workflow.getState(),
            "a task's failure: " + task.getFailure().getMessage() + "; " + warnings.messages());
        assertEquals(Payload.ContentCase.DATA, task.getOutput().getContentCase());
        assertEquals(big.length() + 2, task.getOutput().getData().size());
      } finally {
        proxy.releaseUpstream();
        stopWorker(worker);
      }
      assertEquals(tasks, worker.stats().completed());
      assertEquals(List.of(), warnings.messages(), "the stream broke");
    } finally {
      log.removeHandler(warnings);
    }
  }

  /**
   * At the sidecar's bound of 10,000 connected workers, a worker's stream is refused with
   * RESOURCE_EXHAUSTED and a 5 s RetryInfo: the worker waits that long before it tries again. It
   * used to try again after its own backoff (0 to 50 ms, then 100 ms, ...).
   */
  @Test
  @EnabledIfEnvironmentVariable(
      named = "ARE_SLOW_TESTS",
      matches = "1",
      disabledReason = "registers 10,000 worker streams (30-40 s of both cores): ARE_SLOW_TESTS=1")
  void aWorkerRefusedAtTheWorkerBoundWaitsTheSidecarsHint() throws Exception {
    int channels = 10;
    int perChannel = 1000;
    List<ManagedChannel> fillers = new ArrayList<>();
    List<ClientCallStreamObserver<ConnectRequest>> streams = new ArrayList<>();
    CountDownLatch registered = new CountDownLatch(channels * perChannel);
    AtomicReference<Throwable> fillerError = new AtomicReference<>();
    Logger log = Logger.getLogger(WorkerStream.class.getName());
    Warnings warnings = new Warnings();
    log.addHandler(warnings);
    ScheduledExecutorService pinger = Executors.newSingleThreadScheduledExecutor();
    // The fillers ping (an empty heartbeat batch) so that the sidecar does not drop them as silent.
    ConnectRequest ping =
        ConnectRequest.newBuilder().setHeartbeat(HeartbeatBatch.getDefaultInstance()).build();
    pinger.scheduleAtFixedRate(
        () -> {
          synchronized (streams) {
            for (ClientCallStreamObserver<ConnectRequest> s : streams) {
              try {
                s.onNext(ping);
              } catch (RuntimeException e) {
                // Ended.
              }
            }
          }
        },
        5,
        5,
        TimeUnit.SECONDS);
    try {
      ConnectRequest register =
          ConnectRequest.newBuilder()
              .setRegister(
                  WorkerRegistration.newBuilder()
                      .setWorkerName("java-filler")
                      .addCapabilities("java-filler")
                      .setMaxConcurrency(1))
              .build();
      for (int c = 0; c < channels; c++) {
        ManagedChannel channel =
            Grpc.newChannelBuilder(sidecar.target(), InsecureChannelCredentials.create()).build();
        fillers.add(channel);
        for (int i = 0; i < perChannel; i++) {
          if (i % 250 == 0) {
            // A few hundred at a time: the sidecar's gRPC cancels calls that wait too long for it
            // to take them up.
            long opened = (long) c * perChannel + i;
            long by = System.nanoTime() + WAIT.toNanos();
            while (registered.getCount() > (long) channels * perChannel - opened) {
              assertTrue(System.nanoTime() < by, "the fillers registered");
              Thread.sleep(5);
            }
          }
          synchronized (streams) {
            WorkerServiceGrpc.newStub(channel)
                .connect(
                    new ClientResponseObserver<ConnectRequest, ConnectResponse>() {
                      @Override
                      public void beforeStart(ClientCallStreamObserver<ConnectRequest> s) {
                        synchronized (streams) {
                          streams.add(s);
                        }
                      }

                      @Override
                      public void onNext(ConnectResponse value) {
                        if (value.hasRegistered()) {
                          registered.countDown();
                        }
                      }

                      @Override
                      public void onError(Throwable t) {
                        fillerError.compareAndSet(null, t);
                        registered.countDown();
                      }

                      @Override
                      public void onCompleted() {}
                    })
                .onNext(register);
          }
        }
      }
      assertTrue(registered.await(120, TimeUnit.SECONDS), "the fillers registered");
      assertEquals(null, fillerError.get(), "a filler was refused");

      Worker worker =
          new Worker(client, "java-late", fast(WorkerOptions.Transport.STREAM))
              .handle("java-late", task -> "ok")
              .start();
      try {
        long by = System.nanoTime() + WAIT.toNanos();
        while (warnings.reconnects().isEmpty()) {
          assertTrue(System.nanoTime() < by, "the worker was not refused");
          Thread.sleep(5);
        }
        long refusedAt = warnings.reconnects().get(0);
        synchronized (streams) {
          streams.remove(0).cancel("room for one more", null);
        }
        while (worker.workerId().isEmpty()) {
          assertTrue(System.nanoTime() < by, "the worker never registered");
          Thread.sleep(5);
        }
        Duration waited = Duration.ofNanos(System.nanoTime() - refusedAt);
        assertTrue(
            waited.compareTo(Duration.ofSeconds(5)) >= 0,
            "the worker tried again after " + waited + ", before the sidecar's hint of 5 s ("
                + warnings.reconnects().size() + " refusals)");
      } finally {
        stopWorker(worker);
      }
    } finally {
      pinger.shutdownNow();
      log.removeHandler(warnings);
      synchronized (streams) {
        for (ClientCallStreamObserver<ConnectRequest> s : streams) {
          s.cancel("done", null);
        }
      }
      for (ManagedChannel channel : fillers) {
        channel.shutdownNow();
      }
    }
  }

  /**
   * A wait whose watch is resumed (here: its connection broken) while the sidecar's 1,024
   * subscribers are all taken is refused with RESOURCE_EXHAUSTED and a 1 s RetryInfo; it resumes
   * after the hint until room comes back, rather than throwing.
   */
  @Test
  void aWaitRefusedForWantOfSubscribersResumesAfterTheHint() throws Exception {
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-watched").task(new TaskBuilder("t", "java-nobody-serves")));
    List<Client> listeners = new ArrayList<>();
    List<EventStream> streams = new ArrayList<>();
    try (TcpProxy proxy = new TcpProxy(sidecar.target());
        Client proxied = Client.connect(proxy.target())) {
      CompletableFuture<Workflow> waited =
          CompletableFuture.supplyAsync(() -> proxied.workflow(handle.id()).await(WAIT));
      long by = System.nanoTime() + WAIT.toNanos();
      while (proxy.accepted() < 2) { // the client's connection, then the one for waits
        assertTrue(System.nanoTime() < by, "the wait did not connect");
        Thread.sleep(10);
      }
      Thread.sleep(500); // its watch gets the workflow's status (a cursor to resume from)
      EventFilter nothing = EventFilter.newBuilder().addWorkflowIds("wf-nobody-has-this").build();
      for (int c = 0; c < 2; c++) {
        Client listener = sidecar.client();
        listeners.add(listener);
        for (int i = 0; i < 512; i++) {
          streams.add(listener.streamEvents(nothing, 0L));
        }
      }
      for (EventStream s : streams) {
        StreamEventsResponse first = s.next(WAIT).orElseThrow();
        assertTrue(first.hasCaughtUp(), first.toString());
      }
      proxy.cutAll(); // the watch breaks; its resumption is refused: no subscriber is free
      Thread.sleep(2500);
      assertFalse(
          waited.isDone(),
          () -> "the wait ended while the subscribers were taken: " + waited.handle((w, t) -> t)
              .join());
      for (EventStream s : streams) {
        s.close();
      }
      streams.clear();
      handle.cancel("done");
      Workflow w = waited.get(WAIT.toSeconds(), TimeUnit.SECONDS);
      assertEquals(WorkflowState.WORKFLOW_STATE_CANCELLED, w.getState());
    } finally {
      for (EventStream s : streams) {
        s.close();
      }
      for (Client listener : listeners) {
        listener.close();
      }
    }
  }

  /**
   * Closing a client ends the waits and the workers that use it, at once, with CANCELLED / {@code
   * CLIENT_CLOSED}: its channels never come back. They took the UNAVAILABLE of its closed channel
   * for a sidecar gone for a while: a wait retried until its timeout (an hour, say), a worker
   * reconnected until shut down.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void closingTheClientEndsItsWaitsAndWorkers(WorkerOptions.Transport transport)
      throws Exception {
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-orphan").task(new TaskBuilder("t", "java-nobody-serves")));
    Client own = sidecar.client();
    Worker worker =
        new Worker(own, "java-orphan", fast(transport)).handle("java-orphan", task -> "ok").start();
    try {
      CompletableFuture<Workflow> waited =
          CompletableFuture.supplyAsync(() -> own.workflow(handle.id()).await(WAIT));
      long by = System.nanoTime() + WAIT.toNanos();
      while (worker.workerId().isEmpty()) {
        assertTrue(System.nanoTime() < by, "the worker did not connect");
        Thread.sleep(10);
      }
      own.close();
      ExecutionException e =
          assertThrows(ExecutionException.class, () -> waited.get(10, TimeUnit.SECONDS));
      AreException closed = (AreException) e.getCause();
      assertEquals("CLIENT_CLOSED", closed.reason(), closed.getMessage());
      assertEquals(Status.Code.CANCELLED, closed.code());
      AreException stopped =
          assertThrows(
              AreException.class, () -> worker.awaitTermination(Duration.ofSeconds(15)));
      assertEquals("CLIENT_CLOSED", stopped.reason(), stopped.getMessage());
    } finally {
      own.close();
      worker.shutdown();
    }
  }

  /**
   * The error that ended a worker started in the background is what awaitTermination (and so
   * close()) throws, every time. It was kept after the worker was said to have stopped, so a
   * waiter woken by that could find nothing and return normally (one time in six here).
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void awaitTerminationAlwaysThrowsTheErrorThatEndedTheWorker(WorkerOptions.Transport transport)
      throws Exception {
    for (int i = 0; i < 100; i++) {
      Worker worker =
          new Worker(client, "not a valid name!", fast(transport))
              .handle("java-x", task -> null)
              .start();
      int attempt = i;
      AreException e =
          assertThrows(
              AreException.class,
              () -> worker.awaitTermination(WAIT),
              () -> "the refusal was lost at attempt " + attempt);
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), e.getMessage());
    }
  }

  /**
   * A cache that cannot be reached does not stop the call it stands in front of: getOrCall makes
   * the call and returns its answer (not stored); lookup itself still says UNAVAILABLE.
   */
  @Test
  void getOrCallMakesTheCallWhenTheCacheIsDown() {
    Sidecar own = Sidecar.start();
    try (Client ownClient = own.client()) {
      Cache cache = ownClient.cache();
      cache.putNamespace(CacheNamespace.newBuilder().setName("java-down").build());
      own.close();
      AtomicInteger calls = new AtomicInteger();
      Cache.Result r =
          cache.getOrCall(
              "java-down",
              "a prompt while the cache is down",
              CacheOptions.defaults(),
              () -> {
                calls.incrementAndGet();
                return Cache.Computed.of(Map.of("answer", "fresh"));
              });
      assertEquals(1, calls.get());
      assertFalse(r.isHit());
      assertEquals("fresh", r.value().path("answer").asText());
      AreException e =
          assertThrows(
              AreException.class,
              () -> cache.lookup("java-down", "a prompt", CacheOptions.defaults()));
      assertEquals(Status.Code.UNAVAILABLE, e.code(), e.getMessage());
    } finally {
      own.close();
    }
  }

  /**
   * A store that fails after the call (the answer is over the namespace's max_bytes) does not
   * lose the answer paid for: getOrCall returns it, and nothing is stored.
   */
  @Test
  void getOrCallReturnsTheAnswerWhenTheStoreFails() {
    Cache cache = client.cache();
    cache.putNamespace(CacheNamespace.newBuilder().setName("java-tiny").setMaxBytes(200).build());
    String answer = "a long answer ".repeat(40);
    AtomicBoolean called = new AtomicBoolean();
    AreException refused =
        assertThrows(
            AreException.class,
            () -> cache.store("java-tiny", "explain", answer, CacheOptions.defaults()));
    Cache.Result r =
        cache.getOrCall(
            "java-tiny",
            "explain everything",
            CacheOptions.defaults(),
            () -> {
              called.set(true);
              return Cache.Computed.of(answer);
            });
    assertTrue(called.get());
    assertFalse(r.isHit());
    assertEquals(answer, r.value().asText(), "the store was refused: " + refused.getMessage());
    assertTrue(
        cache.lookup("java-tiny", "explain everything", CacheOptions.defaults()).isEmpty());
  }
}
