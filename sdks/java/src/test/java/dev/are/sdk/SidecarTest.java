package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import dev.are.sdk.Cache.CacheOptions;
import dev.are.sdk.Router.AgentCard;
import dev.are.sdk.Router.AgentFilter;
import dev.are.sdk.testing.Sidecar;
import dev.are.sdk.testing.Sidecar.SidecarOptions;
import dev.are.sdk.v1.AgentSource;
import dev.are.sdk.v1.CacheNamespace;
import dev.are.sdk.v1.CacheTier;
import dev.are.sdk.v1.Event;
import dev.are.sdk.v1.EventFilter;
import dev.are.sdk.v1.EventType;
import dev.are.sdk.v1.ListEventsRequest;
import dev.are.sdk.v1.ListEventsResponse;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.PutNamespaceResponse;
import dev.are.sdk.v1.StreamEventsResponse;
import dev.are.sdk.v1.Task;
import dev.are.sdk.v1.TaskState;
import dev.are.sdk.v1.Usage;
import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import io.grpc.Status;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Tests against a real sidecar (one per test), started from the repository's .venv. Every wait is
 * bounded; nothing asserts on timing.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class SidecarTest extends WithSidecar {

  @Test
  void connectAndHealth() {
    assertEquals(ServingStatus.SERVING, client.health());
    AreException bad =
        assertThrows(
            AreException.class,
            () ->
                Client.connect(
                    "127.0.0.1:1",
                    Options.builder().connectTimeout(Duration.ofSeconds(2)).build()));
    assertEquals(Status.Code.UNAVAILABLE, bad.code());
    assertEquals(AreException.SDK_DOMAIN, bad.domain());
  }

  /**
   * Each wait holds a WatchWorkflow stream, and the sidecar serves 1,024 streams at once on a
   * connection: on the client's one connection, 1,030 pending waits starved its other calls. Waits
   * have a connection of their own.
   */
  @Test
  void aThousandPendingWaitsHoldUpNoOtherCallOfTheClient() throws Exception {
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-nobody").task(new TaskBuilder("a", "java-nobody-serves")));
    java.util.concurrent.ExecutorService pool =
        java.util.concurrent.Executors.newFixedThreadPool(1030);
    try {
      for (int i = 0; i < 1030; i++) {
        pool.submit(
            () -> {
              try {
                handle.await(Duration.ofSeconds(60));
              } catch (RuntimeException ignored) {
                // ended by the client's close at the end of the test
              }
            });
      }
      Thread.sleep(1000); // the waits open their streams
      java.util.concurrent.ExecutorService asker =
          java.util.concurrent.Executors.newSingleThreadExecutor();
      try {
        java.util.concurrent.Future<ServingStatus> health = asker.submit(() -> client.health());
        assertEquals(ServingStatus.SERVING, health.get(10, TimeUnit.SECONDS));
      } finally {
        asker.shutdownNow();
      }
      handle.cancel("done");
    } finally {
      pool.shutdownNow();
    }
  }

  @Test
  void errorsCarryReasonAndField() {
    AreException e =
        assertThrows(AreException.class, () -> client.workflow("wf-does-not-exist").get());
    assertEquals(Status.Code.NOT_FOUND, e.code());
    assertEquals("WORKFLOW_NOT_FOUND", e.reason());
    assertEquals("are.v1", e.domain());

    CacheNamespace bad = CacheNamespace.newBuilder().setName("not a valid name!").build();
    e = assertThrows(AreException.class, () -> client.cache().putNamespace(bad));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), e.getMessage());
    assertEquals("INVALID_ARGUMENT", e.reason());
    assertTrue(e.field("namespace.name").isPresent(), "violations " + e.fieldViolations());

    WorkflowBuilder spec =
        new WorkflowBuilder("bad")
            .task(new TaskBuilder("a", "x"))
            .task(new TaskBuilder("b", "x").dependsOn("missing"));
    e = assertThrows(AreException.class, () -> client.submit(spec));
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
    assertTrue(
        e.field("spec.tasks[1].depends_on[0]").isPresent(), "violations " + e.fieldViolations());
  }

  /** What the research task returns. */
  record Notes(String notes) {}

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void twoTaskWorkflowRunByAJavaWorker(WorkerOptions.Transport transport) throws Exception {
    Map<String, Integer> seen = new ConcurrentHashMap<>();
    Worker worker =
        new Worker(client, "java-worker", fast(transport))
            .handle(
                "java-e2e",
                task -> {
                  seen.put(task.taskId(), task.attempt());
                  switch (task.taskId()) {
                    case "research" -> {
                      JsonNode input = task.input();
                      task.addUsage(
                          Usage.newBuilder()
                              .setInputTokens(10)
                              .setOutputTokens(5)
                              .setLlmCalls(1)
                              .build());
                      return new Notes("about " + input.path("topic").asText("?"));
                    }
                    case "write" -> {
                      Notes notes =
                          task.dependency("research", Notes.class)
                              .orElseThrow(
                                  () -> new TaskError("MissingInput", "no research output"));
                      return Map.of("draft", notes.notes());
                    }
                    default -> throw new TaskError("Unexpected", task.taskId()).nonRetryable();
                  }
                })
            .start();

    WorkflowBuilder spec =
        new WorkflowBuilder("java-two-tasks")
            .task(new TaskBuilder("research", "java-e2e").input(Map.of("topic", "caches")))
            .task(new TaskBuilder("write", "java-e2e").dependsOn("research"));
    WorkflowHandle handle = client.submit(spec);
    Workflow workflow = handle.await(WAIT);
    assertEquals(
        WorkflowState.WORKFLOW_STATE_COMPLETED,
        workflow.getState(),
        workflow.getFailure().toString());
    assertEquals(2, workflow.getTaskCounts().getCompleted());
    assertEquals(10, workflow.getUsage().getUsage().getInputTokens());

    assertEquals(new Notes("about caches"), handle.taskOutput("research", Notes.class));
    JsonNode result = handle.result(WAIT);
    assertEquals(Json.mapper().valueToTree(Map.of("draft", "about caches")), result);
    assertEquals(Map.of("research", 1, "write", 1), seen);
    stopWorker(worker);
    assertEquals(2, worker.stats().completed());
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aFanOutWorkflowOfSeveralTasks(WorkerOptions.Transport transport) throws Exception {
    int n = 8; // twice the worker's concurrency
    AtomicInteger inFlight = new AtomicInteger();
    AtomicInteger most = new AtomicInteger();
    Worker worker =
        new Worker(client, "java-fan", fast(transport))
            .handle(
                "java-part",
                task -> {
                  most.accumulateAndGet(inFlight.incrementAndGet(), Math::max);
                  try {
                    Thread.sleep(20); // long enough for the slots to fill
                    return task.input().path("i").asInt() * 10;
                  } finally {
                    inFlight.decrementAndGet();
                  }
                })
            .handle(
                "java-sum",
                task -> {
                  int sum = 0;
                  for (TaskContext.Dependency d : task.dependencies()) {
                    sum += d.outputJson().asInt();
                  }
                  return sum;
                })
            .start();
    WorkflowBuilder spec = new WorkflowBuilder("java-fan-out");
    TaskBuilder sum = new TaskBuilder("sum", "java-sum");
    for (int i = 0; i < n; i++) {
      spec.task(new TaskBuilder("part-" + i, "java-part").input(Map.of("i", i)));
      sum.dependsOn("part-" + i);
    }
    spec.task(sum);
    WorkflowHandle handle = client.submit(spec);
    assertEquals(10 * n * (n - 1) / 2, handle.result(WAIT, Integer.class));
    stopWorker(worker);
    assertEquals(n + 1, worker.stats().completed());
    assertFalse(worker.workerId().isEmpty());
    assertTrue(most.get() <= 4, most.get() + " handlers ran at once; the concurrency is 4");
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void heartbeatsKeepAnAttemptPastItsHeartbeatTimeout(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(client, "java-beater", fast(transport))
            .handle(
                "java-beat",
                task -> {
                  // Two heartbeat timeouts in all: without heartbeats the lease would be
                  // lost; with one every 500 ms a stall of up to 1.5 s is tolerated.
                  for (int i = 0; i < 8; i++) {
                    task.recordHeartbeat(Map.of("step", i));
                    if (task.awaitCancellation(Duration.ofMillis(500))) {
                      throw new TaskError("Cancelled", "lost: " + task.cancelReason());
                    }
                  }
                  return "done";
                })
            .start();
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-beat")
                .task(
                    new TaskBuilder("long", "java-beat")
                        .heartbeatTimeout(Duration.ofSeconds(2))
                        .maxAttempts(1, Duration.ofMillis(10))));
    assertEquals("done", handle.result(WAIT, String.class));
    stopWorker(worker);
  }

  /**
   * A handler that runs several times its task's heartbeat timeout without heartbeating keeps its
   * attempt: the worker heartbeats it every quarter of the timeout. On the stream, due heartbeats
   * were looked for once a second whatever the attempts' timeouts, so an attempt whose timeout was
   * under about 1 s always "missed its heartbeat_timeout" (and with a single attempt its workflow
   * failed). At 800 ms, a heartbeat every 200 ms leaves room for a stall of several hundred
   * milliseconds.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aHandlerOutlastingItsHeartbeatTimeoutIsHeartbeatedFor(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(client, "java-quiet", fast(transport))
            .handle(
                "java-quiet",
                task -> {
                  // A long call that records no heartbeat of its own.
                  if (task.awaitCancellation(Duration.ofSeconds(3))) {
                    throw new TaskError("Cancelled", "lost: " + task.cancelReason());
                  }
                  return "done";
                })
            .start();
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-quiet")
                .task(
                    new TaskBuilder("x", "java-quiet")
                        .heartbeatTimeout(Duration.ofMillis(800))
                        .maxAttempts(1, Duration.ofMillis(10))));
    assertEquals("done", handle.result(WAIT, String.class));
    stopWorker(worker);
    assertEquals(1, worker.stats().completed());
    assertEquals(0, worker.stats().cancelled());
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void failingHandlerFailsByTheRetryPolicy(WorkerOptions.Transport transport) throws Exception {
    Map<String, AtomicInteger> calls = new ConcurrentHashMap<>();
    Worker worker =
        new Worker(client, "java-failer", fast(transport))
            .handle(
                "java-fail",
                task -> {
                  int n =
                      calls
                          .computeIfAbsent(task.taskId(), k -> new AtomicInteger())
                          .incrementAndGet();
                  switch (task.taskId()) {
                    case "flaky":
                      if (n == 1) {
                        throw new TaskError("Transient", "try again");
                      }
                      return "ok";
                    case "broken":
                      throw new TaskError("Boom", "boom");
                    case "fatal":
                      throw new TaskError("Fatal", "no point retrying").nonRetryable();
                    default:
                      throw new IllegalStateException("handler bug");
                  }
                })
            .start();
    WorkflowBuilder spec =
        new WorkflowBuilder("java-failing")
            .task(new TaskBuilder("flaky", "java-fail").maxAttempts(3, Duration.ofMillis(10)))
            .task(new TaskBuilder("broken", "java-fail").maxAttempts(3, Duration.ofMillis(10)))
            .task(new TaskBuilder("fatal", "java-fail").maxAttempts(3, Duration.ofMillis(10)))
            .task(new TaskBuilder("throws", "java-fail").maxAttempts(1, Duration.ofMillis(10)));
    WorkflowHandle handle = client.submit(spec);
    AreException e = assertThrows(AreException.class, () -> handle.result(WAIT));
    assertEquals("WORKFLOW_FAILED", e.reason(), e.getMessage());
    assertEquals(AreException.SDK_DOMAIN, e.domain());
    assertEquals(WorkflowState.WORKFLOW_STATE_FAILED, e.workflow().orElseThrow().getState());

    record Want(String id, TaskState state, int attempts, String type) {}
    for (Want w :
        List.of(
            new Want("flaky", TaskState.TASK_STATE_COMPLETED, 2, "Transient"),
            new Want("broken", TaskState.TASK_STATE_FAILED, 3, "Boom"),
            new Want("fatal", TaskState.TASK_STATE_FAILED, 1, "Fatal"),
            new Want("throws", TaskState.TASK_STATE_FAILED, 1, "IllegalStateException"))) {
      Task task = handle.task(w.id());
      assertEquals(w.state(), task.getState(), "task " + w.id());
      assertEquals(w.attempts(), task.getAttempt(), "task " + w.id());
      assertEquals(w.attempts(), calls.get(w.id()).get(), "handler calls of " + w.id());
      assertEquals(w.type(), task.getFailure().getType(), "task " + w.id());
    }
    assertTrue(handle.task("fatal").getFailure().getNonRetryable());
    assertTrue(handle.task("throws").getFailure().getStackTrace().contains("handler bug"));
    e = assertThrows(AreException.class, () -> handle.taskOutput("broken"));
    assertEquals("TASK_NOT_COMPLETED", e.reason());
    stopWorker(worker);
  }

  /**
   * A completion the sidecar refuses as invalid (here a negative usage counter) leaves the attempt
   * held: the worker reports a CompletionRefused failure naming the field, with the completion's
   * valid usage, instead of leaving the task RUNNING.
   */
  /**
   * Submits a workflow named {@code name} of one task "x" for the capability of the same name,
   * with a single attempt, and returns the task once the workflow has failed (within 15 s: a task
   * left RUNNING fails the test).
   */
  private Task failedTask(String name) throws Exception {
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder(name)
                .task(new TaskBuilder("x", name).maxAttempts(1, Duration.ofMillis(10))));
    AreException e =
        assertThrows(AreException.class, () -> handle.result(Duration.ofSeconds(15)));
    assertEquals("WORKFLOW_FAILED", e.reason(), e.getMessage() + " (the task stayed RUNNING?)");
    Task task = handle.task("x");
    assertEquals(TaskState.TASK_STATE_FAILED, task.getState());
    return task;
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aRefusedCompletionIsReportedAsAFailure(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(client, "java-refused", fast(transport))
            .handle(
                "java-refused",
                task -> {
                  task.addUsage(
                      Usage.newBuilder()
                          .setInputTokens(7)
                          .setOutputTokens(3)
                          .setCostMicroUsd(-5)
                          .setLlmCalls(1)
                          .build());
                  return "out";
                })
            .start();
    Task task = failedTask("java-refused");
    assertEquals(Worker.COMPLETION_REFUSED, task.getFailure().getType());
    assertFalse(task.getFailure().getNonRetryable());
    String field =
        transport == WorkerOptions.Transport.STREAM
            ? "complete.completions[0].usage.cost_micro_usd"
            : "completion.usage.cost_micro_usd";
    String message = task.getFailure().getMessage();
    assertTrue(message.contains("INVALID_ARGUMENT") && message.contains(field), message);
    Usage usage = task.getUsage().getUsage();
    assertEquals(
        List.of(7L, 3L, 0L, 1L),
        List.of(
            usage.getInputTokens(),
            usage.getOutputTokens(),
            usage.getCostMicroUsd(),
            usage.getLlmCalls()));
    stopWorker(worker);
    assertEquals(0, worker.stats().completed());
    assertEquals(1, worker.stats().failed());
  }

  /**
   * A failure whose type is over 256 characters and details over 1 MiB, with a negative retry
   * delay and usage counter, was refused by the sidecar, leaving the task RUNNING: the worker cuts
   * the type, drops the details saying so and clamps the rest, so the task ends FAILED.
   */
  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aFailurePastTheSidecarsBoundsIsFittedToThem(WorkerOptions.Transport transport)
      throws Exception {
    Worker worker =
        new Worker(client, "java-oversized", fast(transport))
            .handle(
                "java-oversized",
                task -> {
                  task.addUsage(Usage.newBuilder().setInputTokens(5).setOutputTokens(-1).build());
                  throw new TaskError("T".repeat(299) + "\u00e9", "too big")
                      .details("x".repeat(1024 * 1024))
                      .retryAfter(Duration.ofSeconds(-5));
                })
            .start();
    Task task = failedTask("java-oversized");
    assertEquals("T".repeat(256), task.getFailure().getType());
    assertEquals(
        "too big (details of 1048578 bytes dropped: over 1 MiB)", task.getFailure().getMessage());
    assertFalse(task.getFailure().hasDetails());
    Usage usage = task.getUsage().getUsage();
    assertEquals(List.of(5L, 0L), List.of(usage.getInputTokens(), usage.getOutputTokens()));
    stopWorker(worker);
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void cancellationReachesARunningHandler(WorkerOptions.Transport transport) throws Exception {
    CountDownLatch started = new CountDownLatch(1);
    BlockingQueue<Optional<CancelReason>> reasons = new ArrayBlockingQueue<>(1);
    BlockingQueue<Boolean> interrupted = new ArrayBlockingQueue<>(1);
    Worker worker =
        new Worker(client, "java-canceller", fast(transport))
            .handle(
                "java-cancel",
                task -> {
                  started.countDown();
                  // A long LLM call, say: a blocking wait the cancellation interrupts
                  // (bounded all the same).
                  try {
                    Thread.sleep(WAIT.toMillis());
                    interrupted.add(false);
                  } catch (InterruptedException e) {
                    interrupted.add(true);
                  }
                  reasons.add(task.cancelReason());
                  throw new TaskError("Cancelled", "stopped");
                })
            .start();
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-cancel").task(new TaskBuilder("long", "java-cancel")));
    assertTrue(started.await(WAIT.toSeconds(), TimeUnit.SECONDS), "the handler started");
    Workflow workflow = handle.cancel("the user changed their mind");
    assertEquals(WorkflowState.WORKFLOW_STATE_CANCELLED, workflow.getState());
    Optional<CancelReason> reason = reasons.poll(WAIT.toSeconds(), TimeUnit.SECONDS);
    assertTrue(reason != null, "the cancellation reached the handler");
    if (transport == WorkerOptions.Transport.STREAM) {
      // The sidecar pushes the cancellation on the stream.
      assertEquals(Optional.of(CancelReason.CANCEL_REQUESTED), reason);
    } else {
      assertTrue(
          reason.equals(Optional.of(CancelReason.CANCEL_REQUESTED))
              || reason.equals(Optional.of(CancelReason.LEASE_LOST)),
          "reason " + reason);
    }
    assertEquals(Boolean.TRUE, interrupted.poll(1, TimeUnit.SECONDS));
    AreException e = assertThrows(AreException.class, () -> handle.result(WAIT));
    assertEquals("WORKFLOW_CANCELLED", e.reason());
    stopWorker(worker);
    assertEquals(1, worker.stats().cancelled());
  }

  @Test
  void cacheExactTierAndGetOrCall() {
    Cache cache = client.cache();
    String ns = "java-exact";
    PutNamespaceResponse put =
        cache.putNamespace(CacheNamespace.newBuilder().setName(ns).build());
    assertTrue(put.getCreated());
    CacheOptions none = CacheOptions.defaults();
    assertTrue(cache.lookup(ns, "What is the capital of France?", none).isEmpty());
    String stored =
        cache.store(
            ns,
            "What is the capital of France?",
            "Paris",
            none.withUsage(
                    Usage.newBuilder()
                        .setInputTokens(12)
                        .setOutputTokens(3)
                        .setCostMicroUsd(40)
                        .build())
                .withMetadata(Map.of("model", "gpt-x")));
    Cache.CacheHit hit =
        cache
            .lookup(ns, "  What is the   capital of France?", none.withExactOnly(true))
            .orElseThrow();
    assertEquals(CacheTier.CACHE_TIER_EXACT, hit.tier());
    assertEquals("Paris", hit.value().asText());
    assertEquals(stored, hit.entryId());
    assertEquals(3, hit.usage().getOutputTokens());
    assertEquals("gpt-x", hit.metadata().get("model"));
    AreException e =
        assertThrows(AreException.class, () -> cache.lookup("no-such-namespace", "x", none));
    assertEquals(Status.Code.NOT_FOUND, e.code());
    assertEquals("NAMESPACE_NOT_FOUND", e.reason());

    AtomicInteger calls = new AtomicInteger();
    for (int i = 0; i < 3; i++) {
      Cache.Result r =
          cache.getOrCall(
              ns,
              "the answer to everything",
              none,
              () -> {
                calls.incrementAndGet();
                return Cache.Computed.of(
                    "42", Usage.newBuilder().setInputTokens(7).setOutputTokens(1).build());
              });
      assertEquals("42", r.value().asText());
      assertEquals(i > 0, r.isHit(), "call #" + i);
    }
    assertEquals(1, calls.get());
    IOException failed =
        assertThrows(
            IOException.class,
            () ->
                cache.getOrCall(
                    ns,
                    "another prompt",
                    none,
                    () -> {
                      throw new IOException("provider down");
                    }));
    assertEquals("provider down", failed.getMessage());
    assertTrue(cache.lookup(ns, "another prompt", none).isEmpty());
  }

  @Test
  void unixSocketAndToken() {
    try (Sidecar uds =
            Sidecar.start(SidecarOptions.defaults().withUds(true).withToken("s3cret-token"));
        Client authed = uds.client();
        Client anonymous = Client.connect(uds.target())) {
      assertTrue(uds.target().startsWith("unix:"), uds.target());
      assertEquals(ServingStatus.SERVING, authed.health());
      AreException e =
          assertThrows(AreException.class, () -> authed.workflow("wf-missing").get());
      assertEquals(Status.Code.NOT_FOUND, e.code(), e.getMessage());

      e = assertThrows(AreException.class, () -> anonymous.workflow("wf-missing").get());
      assertEquals(Status.Code.UNAUTHENTICATED, e.code(), e.getMessage());
    }
  }

  @Test
  void customKeepaliveOrNoneStillWorks() {
    Options custom =
        Options.builder().keepalive(Duration.ofSeconds(10), Duration.ofSeconds(5)).build();
    Options off = Options.builder().keepalive(null, null).build();
    try (Sidecar uds = Sidecar.start(SidecarOptions.defaults().withUds(true))) {
      for (String target : List.of(sidecar.target(), uds.target())) {
        for (Options options : List.of(custom, off)) {
          try (Client other = Client.connect(target, options)) {
            assertEquals(ServingStatus.SERVING, other.health(), target);
            AreException e =
                assertThrows(AreException.class, () -> other.workflow("wf-missing").get());
            assertEquals(Status.Code.NOT_FOUND, e.code(), e.getMessage());
          }
        }
      }
    }
  }

  @Test
  void tokenOverTcp() {
    try (Sidecar tcp = Sidecar.start(SidecarOptions.defaults().withToken("tcp-token"));
        Client authed = tcp.client();
        Client wrong =
            Client.connect(tcp.target(), Options.builder().token("not-the-token").build())) {
      AreException e =
          assertThrows(AreException.class, () -> authed.workflow("wf-missing").get());
      assertEquals(Status.Code.NOT_FOUND, e.code(), e.getMessage());
      e = assertThrows(AreException.class, () -> wrong.workflow("wf-missing").get());
      assertEquals(Status.Code.UNAUTHENTICATED, e.code(), e.getMessage());
    }
  }

  /**
   * A self-signed certificate for 127.0.0.1 and the DNS {@code names}, and its key, made by openssl
   * in {@code dir}: {cert, key}; the test is skipped without openssl.
   */
  private static Path[] certificate(Path dir, String... names) throws Exception {
    Path cert = dir.resolve("cert.pem");
    Path key = dir.resolve("key.pem");
    StringBuilder san = new StringBuilder("subjectAltName=IP:127.0.0.1");
    for (String name : names) {
      san.append(",DNS:").append(name);
    }
    Process openssl;
    try {
      openssl =
          new ProcessBuilder(
                  "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                  "-addext", san.toString(),
                  "-keyout", key.toString(), "-out", cert.toString())
              .redirectErrorStream(true)
              .redirectOutput(dir.resolve("openssl.log").toFile())
              .start();
    } catch (IOException e) {
      Assumptions.abort("no openssl to make a test certificate: " + e);
      return null;
    }
    assertTrue(openssl.waitFor(30, TimeUnit.SECONDS), "openssl finished");
    assertEquals(0, openssl.exitValue(), Files.readString(dir.resolve("openssl.log")));
    return new Path[] {cert, key};
  }

  @Test
  void tlsWithATrustedCertificate(@TempDir Path dir) throws Exception {
    Path[] certificate = certificate(dir, "localhost");
    try (Sidecar tls =
            Sidecar.start(SidecarOptions.defaults().withTls(certificate[0], certificate[1]));
        Client trusted = tls.client()) {
      assertEquals(ServingStatus.SERVING, trusted.health());
      AreException e =
          assertThrows(
              AreException.class,
              () ->
                  Client.connect(
                      tls.target(),
                      Options.builder().connectTimeout(Duration.ofSeconds(5)).build()));
      assertEquals(Status.Code.UNAVAILABLE, e.code(), e.getMessage());
    }
  }

  /**
   * The sidecar serves TLS on its Unix socket as on TCP. A {@code unix:} target has no host name,
   * so the client checks the certificate for {@code localhost} (as gRPC's C-based clients do), or
   * for {@code Options.serverName}. (The socket's path was the authority checked: no certificate
   * names it, and TLS on a Unix socket could not connect.)
   */
  @Test
  void tlsOnAUnixSocketChecksLocalhostOrTheServerName(@TempDir Path dir) throws Exception {
    Path[] certificate = certificate(dir, "localhost", "sidecar.test");
    // Its readiness check is a health call through tls.client(), checked for localhost.
    try (Sidecar tls =
            Sidecar.start(
                SidecarOptions.defaults().withUds(true).withTls(certificate[0], certificate[1]));
        Client trusted = tls.client()) {
      assertTrue(tls.target().startsWith("unix:"), tls.target());
      AreException e =
          assertThrows(AreException.class, () -> trusted.workflow("wf-missing").get());
      assertEquals(Status.Code.NOT_FOUND, e.code(), e.getMessage());
      Options.Builder options =
          Options.builder()
              .tlsTrustedCertificates(certificate[0])
              .connectTimeout(Duration.ofSeconds(10));
      try (Client named =
          Client.connect(tls.target(), options.serverName("sidecar.test").build())) {
        assertEquals(ServingStatus.SERVING, named.health());
      }
      e =
          assertThrows(
              AreException.class,
              () -> Client.connect(tls.target(), options.serverName("elsewhere.test").build()));
      assertEquals(Status.Code.UNAVAILABLE, e.code(), e.getMessage());
    }
  }

  /**
   * A wait answers a workflow already closed even with a zero timeout (the first status may
   * outlast a short timeout, as in the Python SDK); one still running is TIMEOUT. (A zero timeout
   * was TIMEOUT before any status came.)
   */
  @Test
  void aZeroTimeoutWaitAnswersAClosedWorkflow() {
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-zero-wait").task(new TaskBuilder("a", "java-nobody-serves")));
    AreException e = assertThrows(AreException.class, () -> handle.await(Duration.ZERO));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code(), e.getMessage());
    assertEquals("TIMEOUT", e.reason());
    handle.cancel("done");
    for (Duration wait : List.of(Duration.ZERO, Duration.ofNanos(1))) {
      assertEquals(WorkflowState.WORKFLOW_STATE_CANCELLED, handle.await(wait).getState());
    }
    e = assertThrows(AreException.class, () -> handle.result(Duration.ZERO));
    assertEquals("WORKFLOW_CANCELLED", e.reason(), e.getMessage());
  }

  /**
   * Closing the client cancels its open event streams at once, as it does waits: a reader then
   * gets CANCELLED, reason {@code CLIENT_CLOSED}. (Left open, a stream held close() for its 5 s
   * grace, and the reader got the channel's shutdown as UNAVAILABLE.)
   */
  @Test
  void closeCancelsTheClientsEventStreams() {
    Client other = sidecar.client();
    EventStream stream = other.streamEvents(null, 0L);
    assertTrue(stream.next(WAIT).isPresent(), "the stream is open");
    other.close();
    AreException e =
        assertThrows(
            AreException.class,
            () -> {
              while (stream.next(WAIT).isPresent()) {
                // what came before the close
              }
            });
    assertEquals(Status.Code.CANCELLED, e.code(), e.getMessage());
    assertEquals("CLIENT_CLOSED", e.reason(), e.getMessage());
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void largeOutputAsABlobAndTheEventStream(WorkerOptions.Transport transport) throws Exception {
    String big = "x".repeat(Client.MAX_INLINE_BYTES + 1024);
    Worker worker =
        new Worker(client, "java-blobber", fast(transport))
            .handle("java-blob", task -> big)
            .start();
    WorkflowHandle handle =
        client.submit(new WorkflowBuilder("java-blob").task(new TaskBuilder("big", "java-blob")));
    String result = handle.result(WAIT, String.class);
    assertEquals(big.length(), result.length());
    assertEquals(big, result);
    Task task = handle.task("big");
    assertEquals(Payload.ContentCase.BLOB, task.getOutput().getContentCase());
    stopWorker(worker);

    EventFilter filter = EventFilter.newBuilder().addWorkflowIds(handle.id()).build();
    List<EventType> types = new ArrayList<>();
    try (EventStream events = client.streamEvents(filter, 0L)) {
      loop:
      while (true) {
        StreamEventsResponse msg = events.next(WAIT).orElseThrow();
        switch (msg.getMessageCase()) {
          case EVENT -> types.add(msg.getEvent().getEventType());
          case CAUGHT_UP -> {
            break loop;
          }
          case MISSED -> throw new AssertionError("missed " + msg.getMissed());
          default -> throw new AssertionError("unexpected " + msg);
        }
      }
      assertTrue(types.contains(EventType.EVENT_TYPE_WORKFLOW_SUBMITTED), types.toString());
      assertTrue(types.contains(EventType.EVENT_TYPE_WORKFLOW_COMPLETED), types.toString());
      // Nothing more comes for a closed workflow: a bounded wait says so.
      AreException e =
          assertThrows(AreException.class, () -> events.next(Duration.ofMillis(200)));
      assertEquals("TIMEOUT", e.reason());
    }
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void gracefulShutdownLetsARunningHandlerFinish(WorkerOptions.Transport transport)
      throws Exception {
    CountDownLatch started = new CountDownLatch(1);
    CountDownLatch go = new CountDownLatch(1);
    BlockingQueue<Optional<CancelReason>> reasons = new ArrayBlockingQueue<>(1);
    Worker worker =
        new Worker(client, "java-stopper", fast(transport))
            .handle(
                "java-stop",
                task -> {
                  started.countDown();
                  go.await(WAIT.toSeconds(), TimeUnit.SECONDS);
                  reasons.add(task.cancelReason());
                  return "finished";
                })
            .start();
    WorkflowHandle handle =
        client.submit(new WorkflowBuilder("java-stop").task(new TaskBuilder("slow", "java-stop")));
    assertTrue(started.await(WAIT.toSeconds(), TimeUnit.SECONDS), "the handler started");
    worker.shutdown(); // shutdown begins while the handler runs
    go.countDown();
    assertTrue(worker.awaitTermination(WAIT), "the worker stopped in time");
    assertEquals(Optional.empty(), reasons.poll(1, TimeUnit.SECONDS));
    assertEquals(1, worker.stats().completed());
    assertEquals("finished", handle.result(WAIT, String.class));
  }

  @Test
  void aStreamWorkerReconnectsAfterTheSidecarRestarts() throws Exception {
    int port;
    try (ServerSocket probe = new ServerSocket(0, 1, InetAddress.getByName("127.0.0.1"))) {
      port = probe.getLocalPort(); // free a moment ago
    }
    String listen = "127.0.0.1:" + port;
    Sidecar first = Sidecar.start("--listen", listen);
    Sidecar second = null;
    try (Client own = Client.connect(listen)) {
      Worker worker =
          new Worker(own, "java-restarter", fast(WorkerOptions.Transport.STREAM))
              .handle("java-restart", task -> "ok")
              .start();
      WorkflowBuilder spec =
          new WorkflowBuilder("java-restart").task(new TaskBuilder("a", "java-restart"));
      assertEquals("ok", own.submit(spec).result(WAIT, String.class));
      first.close(); // a drain notice, then the stream ends with UNAVAILABLE
      second = Sidecar.start("--listen", listen);
      long deadline = System.nanoTime() + WAIT.toNanos();
      while (true) { // the client's connection backs off while the sidecar is down
        String why;
        try {
          ServingStatus status = own.health();
          if (status == ServingStatus.SERVING) {
            break;
          }
          why = status.toString();
        } catch (AreException e) {
          why = e.toString();
        }
        assertTrue(System.nanoTime() < deadline, "the client did not reconnect: " + why);
        Thread.sleep(50);
      }
      assertEquals("ok", own.submit(spec).result(WAIT, String.class));
      stopWorker(worker);
      assertEquals(2, worker.stats().completed());
    } finally {
      first.close();
      if (second != null) {
        second.close();
      }
    }
  }

  @Test
  void aStreamWorkerOutlivesTheSidecarsShutdown() throws Exception {
    CountDownLatch started = new CountDownLatch(1);
    CountDownLatch release = new CountDownLatch(1);
    Sidecar own = Sidecar.start();
    try (Client ownClient = own.client()) {
      Worker worker =
          new Worker(ownClient, "java-survivor", fast(WorkerOptions.Transport.STREAM))
              .handle(
                  "java-survive",
                  task -> {
                    started.countDown();
                    release.await(WAIT.toSeconds(), TimeUnit.SECONDS);
                    return "done";
                  })
              .start();
      ownClient.submit(
          new WorkflowBuilder("java-survive").task(new TaskBuilder("t", "java-survive")));
      assertTrue(started.await(WAIT.toSeconds(), TimeUnit.SECONDS), "the handler started");
      // The sidecar drains the stream (its notice carries its grace), then exits; the handler
      // finishes meanwhile and its result is recorded or not, by the race.
      Thread closer = new Thread(own::close);
      closer.start();
      release.countDown();
      closer.join(WAIT.toMillis());
      assertFalse(closer.isAlive(), "the sidecar stopped");
      // The stream broke with UNAVAILABLE: the worker reconnects (in vain) rather than fail.
      assertFalse(worker.awaitTermination(Duration.ofMillis(500)), "the worker still runs");
      stopWorker(worker);
    } finally {
      own.close();
    }
  }

  @Test
  void labelsGoInTheStreamsRegistration() throws Exception {
    String run = "r" + System.nanoTime();
    WorkerOptions labelled =
        WorkerOptions.builder()
            .transport(WorkerOptions.Transport.STREAM)
            .pollTimeout(Duration.ofSeconds(2))
            .shutdownGrace(Duration.ofSeconds(5))
            .labels(Map.of("team", "java", "run", run))
            .build();
    assertEquals(Map.of("team", "java", "run", run), labelled.labels());
    assertEquals(Map.of(), WorkerOptions.defaults().labels());
    // The sidecar shows a worker's labels nowhere (no RPC lists workers with them); what is
    // observable is that it accepts them, and refuses a bad key naming the field.
    Worker worker =
        new Worker(client, "java-labelled-" + run, labelled)
            .handle("java-labelled-" + run, task -> "ok")
            .start();
    WorkflowBuilder spec =
        new WorkflowBuilder("java-labels")
            .task(new TaskBuilder("a", "java-labelled-" + run).maxAttempts(1, Duration.ofMillis(10)));
    assertEquals("ok", client.submit(spec).result(WAIT, String.class));
    stopWorker(worker);

    Worker bad =
        new Worker(
                client,
                "java-badly-labelled",
                WorkerOptions.builder()
                    .transport(WorkerOptions.Transport.STREAM)
                    .labels(Map.of("bad key!", "x"))
                    .build())
            .handle("java-x", task -> null);
    AreException e = assertThrows(AreException.class, bad::run);
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), e.getMessage());
    assertTrue(
        e.field("register.labels['bad key!']").isPresent(), "violations " + e.fieldViolations());
  }

  /** The cards ListAgents shows for a capability. */
  private List<AgentCard> cardsOf(String capability) {
    return client.router().agents(AgentFilter.defaults().withCapability(capability), 100);
  }

  /** Waits (bounded) until {@code done} holds. */
  private static void waitFor(String what, BooleanSupplier done)
      throws InterruptedException {
    long by = System.nanoTime() + WAIT.toNanos();
    while (!done.getAsBoolean()) {
      assertTrue(System.nanoTime() < by, what);
      Thread.sleep(20);
    }
  }

  @Test
  void workersDeclareTheirCardsAndIntentsGoToTheCheapestClass() throws Exception {
    assertEquals(null, WorkerOptions.defaults().card());
    String run = "j" + System.nanoTime();
    String words = "summarise quarterly filings of mining firms zq" + run + "x";
    Map<String, String> capabilities = new LinkedHashMap<>();
    List<Worker> workers = new ArrayList<>();
    for (Map.Entry<String, Long> e : Map.of("cheap", 3L, "dear", 900L).entrySet()) {
      String cls = e.getKey();
      String capability = "java-sum-" + cls + "-" + run;
      capabilities.put(cls, capability);
      AgentCard card =
          AgentCard.of("class-" + cls + "-" + run)
              .withDescription(words)
              .withCapabilities(capability)
              .withCostPerCallMicroUsd(e.getValue());
      WorkerOptions options =
          WorkerOptions.builder()
              .transport(WorkerOptions.Transport.STREAM)
              .pollTimeout(Duration.ofSeconds(2))
              .shutdownGrace(Duration.ofSeconds(5))
              .card(card)
              .build();
      assertEquals(card, options.card());
      workers.add(
          new Worker(client, cls + "-" + run, options).handle(capability, task -> cls).start());
    }
    try {
      // A started worker registers in the background: wait for both classes to be up.
      for (String capability : capabilities.values()) {
        waitFor(
            "the worker of " + capability + " registered",
            () -> cardsOf(capability).stream().anyMatch(AgentCard::available));
      }
      String cheap = "class-cheap-" + run;
      List<AgentCard> cards = cardsOf(capabilities.get("cheap"));
      assertEquals(1, cards.size(), cards.toString());
      AgentCard card = cards.get(0);
      assertEquals(cheap, card.agentId());
      assertEquals(AgentSource.AGENT_SOURCE_WORKER, card.source());
      assertEquals(3, card.costPerCallMicroUsd());
      assertTrue(card.available(), card.toString());
      assertEquals(words, card.description());

      WorkflowHandle handle =
          client.submit(
              new WorkflowBuilder("java-intent")
                  .task(
                      new TaskBuilder("a", "")
                          .configure(t -> t.setIntent(words))
                          .maxAttempts(1, Duration.ofMillis(10))));
      // Cost-biased: both classes clear the threshold, the cheap one wins.
      assertEquals("cheap", handle.result(WAIT, String.class));
      ListEventsRequest req =
          ListEventsRequest.newBuilder()
              .setFilter(
                  EventFilter.newBuilder()
                      .addWorkflowIds(handle.id())
                      .addEventTypes(EventType.EVENT_TYPE_TASK_ROUTED))
              .setPageSize(100)
              .build();
      AtomicReference<List<Event>> routed = new AtomicReference<>(List.of());
      waitFor(
          "the task was routed",
          () -> {
            routed.set(
                client
                    .raw()
                    .trace()
                    .withDeadlineAfter(WAIT.toMillis(), TimeUnit.MILLISECONDS)
                    .listEvents(req)
                    .getEventsList());
            return !routed.get().isEmpty();
          });
      Event event = routed.get().get(0);
      assertEquals(
          cheap,
          event.getAttributesOrThrow("are.route.agent_id").getStringValue(),
          event.toString());
    } finally {
      for (Worker worker : workers) {
        stopWorker(worker);
      }
    }
    // The workers left: their class is gone (or shown unavailable).
    waitFor(
        "the class left with its workers",
        () -> cardsOf(capabilities.get("cheap")).stream().noneMatch(AgentCard::available));
    List<Boolean> left =
        cardsOf(capabilities.get("cheap")).stream().map(AgentCard::available).toList();
    assertTrue(left.isEmpty() || left.equals(List.of(false)), left.toString());
  }

  @Test
  void aDeclaredCardIsCheckedAndNamesTheField() {
    String capability = "java-bad-card-" + System.nanoTime();
    Map<String, AgentCard> badCards =
        Map.of(
            "register.agent_card.vector",
            // The router's dimension is 256.
            AgentCard.of("bad-vector").withCapabilities(capability).withVector(List.of(1.0f, 0.0f)),
            "register.agent_card.capabilities[0]",
            AgentCard.of("bad-cap").withCapabilities("not-served"),
            "register.agent_card.agent_id",
            AgentCard.of("bad id!").withCapabilities(capability));
    for (Map.Entry<String, AgentCard> bad : badCards.entrySet()) {
      Worker worker =
          new Worker(
                  client,
                  "java-bad-card-" + System.nanoTime(),
                  WorkerOptions.builder()
                      .transport(WorkerOptions.Transport.STREAM)
                      .card(bad.getValue())
                      .build())
              .handle(capability, task -> null);
      AreException e = assertThrows(AreException.class, worker::run);
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), e.getMessage());
      assertEquals(
          List.of(bad.getKey()),
          e.fieldViolations().stream().map(AreException.FieldViolation::field).toList(),
          e.getMessage());
      assertEquals("", worker.workerId(), "no stream was registered");
    }
    assertEquals(List.of(), cardsOf(capability)); // nothing was declared
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void handlersReportLlmAndToolCalls(WorkerOptions.Transport transport) throws Exception {
    String model = "java-model-" + transport.name().toLowerCase() + "-" + System.nanoTime();
    AtomicReference<TaskContext> held = new AtomicReference<>();
    Worker worker =
        new Worker(client, "java-reporter", fast(transport))
            .handle(
                "java-report",
                task -> {
                  held.set(task);
                  task.reportLlmCall(
                      model,
                      Usage.newBuilder()
                          .setInputTokens(20)
                          .setOutputTokens(4)
                          .setCostMicroUsd(30)
                          .build(),
                      Duration.ofMillis(15));
                  task.reportLlmCall(model, null, null); // counts one call, no tokens
                  task.reportToolCall("search", Duration.ofMillis(1));
                  return "done";
                })
            .start();
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-report")
                .task(new TaskBuilder("t", "java-report").maxAttempts(1, Duration.ofMillis(10))));
    assertEquals("done", handle.result(WAIT, String.class));
    stopWorker(worker);

    // The attempt's usage, reported with its result: both LLM calls and the tool call.
    Usage usage = handle.task("t").getUsage().getUsage();
    assertEquals(20, usage.getInputTokens(), usage.toString());
    assertEquals(4, usage.getOutputTokens(), usage.toString());
    assertEquals(30, usage.getCostMicroUsd(), usage.toString());
    assertEquals(2, usage.getLlmCalls(), usage.toString());
    assertEquals(1, usage.getToolCalls(), usage.toString());

    ListEventsResponse page =
        client
            .raw()
            .trace()
            .withDeadlineAfter(WAIT.toMillis(), TimeUnit.MILLISECONDS)
            .listEvents(
                ListEventsRequest.newBuilder()
                    .setFilter(
                        EventFilter.newBuilder()
                            .addWorkflowIds(handle.id())
                            .addEventTypes(EventType.EVENT_TYPE_LLM_CALL)
                            .addEventTypes(EventType.EVENT_TYPE_TOOL_CALL))
                    .setPageSize(100)
                    .build());
    List<Event> llm = new ArrayList<>();
    List<Event> tools = new ArrayList<>();
    for (Event event : page.getEventsList()) {
      assertEquals("t", event.getTaskId());
      assertEquals(1, event.getAttempt());
      (event.getEventType() == EventType.EVENT_TYPE_LLM_CALL ? llm : tools).add(event);
    }
    assertEquals(2, llm.size(), page.toString());
    Event first = llm.get(0);
    assertEquals(model, first.getName());
    assertEquals(20, first.getUsage().getInputTokens());
    assertEquals(4, first.getUsage().getOutputTokens());
    assertEquals(30, first.getUsage().getCostMicroUsd());
    assertEquals(1, first.getUsage().getLlmCalls());
    assertEquals(Duration.ofMillis(15), Durations.fromProto(first.getDuration()));
    assertEquals(model, llm.get(1).getName());
    assertEquals(1, llm.get(1).getUsage().getLlmCalls());
    assertFalse(llm.get(1).hasDuration());
    assertEquals(1, tools.size(), page.toString());
    assertEquals("search", tools.get(0).getName());
    assertEquals(1, tools.get(0).getUsage().getToolCalls());

    // Once the attempt is over, its events are still taken for five minutes
    // (event.proto): a report sent just after the result is not lost.
    assertDoesNotThrow(() -> held.get().reportToolCall("late", null));
  }

  /**
   * reportLlmCall could not name the provider, nor a handler record a custom event; the sidecar
   * fills the GenAI attributes the call itself gives.
   */
  @Test
  void reportedCallsCarryTheGenAiAttributesAndCustomEventsReachTheTrace() throws Exception {
    String capability = "java-genai-" + System.nanoTime();
    Worker worker =
        new Worker(client, "java-genai", fast(WorkerOptions.Transport.STREAM))
            .handle(
                capability,
                task -> {
                  task.reportLlmCall(
                      "gpt-x",
                      Usage.newBuilder().setInputTokens(12).setOutputTokens(3).build(),
                      null,
                      TaskContext.LlmCallOptions.none()
                          .withProvider("openai")
                          .withResponseModel("gpt-x-2025")
                          .withAttributes(Map.of("temp", 0.5)));
                  task.reportLlmCall("bare-model", null, null);
                  task.reportToolCall(
                      "search",
                      null,
                      TaskContext.ToolCallOptions.none()
                          .withCallId("call_7")
                          .withAttributes(Map.of("hits", 3, "cached", true)));
                  task.reportEvent("chose plan B", Map.of("reason", "budget"));
                  // Refused before sending: the handler gets the errors back as its output.
                  List<String> refused = new ArrayList<>();
                  for (Object bad : List.of(Double.NaN, List.of(1))) {
                    AreException e =
                        assertThrows(
                            AreException.class, () -> task.reportEvent("bad", Map.of("x", bad)));
                    assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
                    AreException.FieldViolation v = e.fieldViolations().get(0);
                    refused.add(e.reason() + " " + v.field() + " " + v.description());
                  }
                  return refused;
                })
            .start();
    WorkflowHandle handle =
        client.submit(
            new WorkflowBuilder("java-genai")
                .task(new TaskBuilder("t", capability).maxAttempts(1, Duration.ofMillis(10))));
    JsonNode refused = handle.result(WAIT, JsonNode.class);
    stopWorker(worker);
    assertEquals(2, refused.size(), refused.toString());
    assertEquals(
        "INVALID_ARGUMENT attributes['x'] is NaN: event attributes must be finite numbers",
        refused.get(0).asText());
    assertTrue(
        refused.get(1).asText().startsWith("INVALID_ARGUMENT attributes['x'] is a java.util."),
        refused.toString());

    ListEventsResponse page =
        client
            .raw()
            .trace()
            .withDeadlineAfter(WAIT.toMillis(), TimeUnit.MILLISECONDS)
            .listEvents(
                ListEventsRequest.newBuilder()
                    .setFilter(
                        EventFilter.newBuilder()
                            .addWorkflowIds(handle.id())
                            .addEventTypes(EventType.EVENT_TYPE_LLM_CALL)
                            .addEventTypes(EventType.EVENT_TYPE_TOOL_CALL)
                            .addEventTypes(EventType.EVENT_TYPE_WORKER_CUSTOM))
                    .setPageSize(100)
                    .build());
    List<Event> events = page.getEventsList();
    assertEquals(4, events.size(), page.toString());
    Event llm = events.get(0);
    assertEquals("gpt-x", llm.getName());
    assertEquals(
        Map.of(
            "gen_ai.system", "openai",
            "gen_ai.response.model", "gpt-x-2025",
            "gen_ai.request.model", "gpt-x",
            "gen_ai.operation.name", "chat",
            "gen_ai.usage.input_tokens", 12L,
            "gen_ai.usage.output_tokens", 3L,
            "temp", 0.5),
        attributes(llm));
    assertEquals("bare-model", attributes(events.get(1)).get("gen_ai.request.model"));
    Event tool = events.get(2);
    assertEquals(EventType.EVENT_TYPE_TOOL_CALL, tool.getEventType());
    assertEquals(
        Map.of(
            "gen_ai.tool.name", "search",
            "gen_ai.tool.call.id", "call_7",
            "hits", 3L,
            "cached", true),
        attributes(tool));
    Event custom = events.get(3);
    assertEquals(EventType.EVENT_TYPE_WORKER_CUSTOM, custom.getEventType());
    assertEquals("chose plan B", custom.getName());
    assertEquals(Map.of("reason", "budget"), attributes(custom));
  }

  /** An event's attributes as Java values (String, Long, Double, Boolean). */
  private static Map<String, Object> attributes(Event event) {
    Map<String, Object> out = new LinkedHashMap<>();
    event
        .getAttributesMap()
        .forEach(
            (key, value) ->
                out.put(
                    key,
                    switch (value.getValueCase()) {
                      case STRING_VALUE -> value.getStringValue();
                      case INT_VALUE -> value.getIntValue();
                      case DOUBLE_VALUE -> value.getDoubleValue();
                      case BOOL_VALUE -> value.getBoolValue();
                      case VALUE_NOT_SET -> "(unset)";
                    }));
    return out;
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aBadWorkerNameEndsRunWithTheSidecarsRefusal(WorkerOptions.Transport transport) {
    Worker worker =
        new Worker(client, "not a valid name!", fast(transport)).handle("java-x", task -> null);
    AreException e = assertThrows(AreException.class, worker::run);
    assertEquals(Status.Code.INVALID_ARGUMENT, e.code(), e.getMessage());
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aWorkerWithoutHandlersIsRefused(WorkerOptions.Transport transport) {
    AreException e =
        assertThrows(AreException.class, () -> new Worker(client, "idle", fast(transport)).run());
    assertEquals("NO_HANDLER", e.reason());
    assertInstanceOf(RuntimeException.class, e);
    assertFalse(e.isRetryable());
  }
}
