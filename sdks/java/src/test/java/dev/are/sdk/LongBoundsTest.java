package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.are.sdk.Cache.CacheOptions;
import dev.are.sdk.Router.AgentCard;
import dev.are.sdk.Router.Outcome;
import dev.are.sdk.v1.CacheNamespace;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.StoreCacheRequest;
import dev.are.sdk.v1.StoreCacheResponse;
import dev.are.sdk.v1.EventFilter;
import dev.are.sdk.v1.StreamEventsResponse;
import dev.are.sdk.v1.Workflow;
import dev.are.sdk.v1.WorkflowState;
import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import java.time.Duration;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Bounds longer than a {@code long} of nanoseconds holds (292 years; {@code
 * ChronoUnit.FOREVER.getDuration()} is far longer) wait, against a real sidecar, instead of
 * throwing ArithmeticException: a bound over 100 years is no bound. Every wait of the test itself
 * is bounded.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class LongBoundsTest extends WithSidecar {
  private static final Duration FOREVER = ChronoUnit.FOREVER.getDuration();

  /** Bounds past what toNanos() holds, one over 100 years under it, and one just under 100. */
  private static final List<Duration> LONG =
      List.of(
          FOREVER,
          Duration.ofSeconds(Long.MAX_VALUE),
          Duration.ofDays(365L * 300),
          Duration.ofDays(365L * 150),
          Duration.ofDays(365L * 99));

  @Test
  void waitsOfCenturiesWait() throws Exception {
    WorkflowHandle closed =
        client.submit(
            new WorkflowBuilder("java-forever").task(new TaskBuilder("t", "java-nobody-serves")));
    closed.cancel("closed before the wait");
    for (Duration d : LONG) {
      assertEquals(WorkflowState.WORKFLOW_STATE_CANCELLED, closed.await(d).getState(), "" + d);
    }
    AreException e = assertThrows(AreException.class, () -> closed.result(FOREVER));
    assertEquals("WORKFLOW_CANCELLED", e.reason());

    EventFilter filter = EventFilter.newBuilder().addWorkflowIds(closed.id()).build();
    try (EventStream events = client.streamEvents(filter, 0L)) {
      // The replayed events, then CaughtUp (the stream then waits for live events).
      StreamEventsResponse msg;
      int read = 0;
      do {
        msg = events.next(LONG.get(read++ % LONG.size())).orElseThrow();
      } while (msg.getMessageCase() != StreamEventsResponse.MessageCase.CAUGHT_UP && read < 100);
      assertTrue(read >= 2, "events replayed: " + read);
    }

    // A wait with no deadline follows the workflow until it closes.
    WorkflowHandle open =
        client.submit(
            new WorkflowBuilder("java-forever").task(new TaskBuilder("t", "java-nobody-serves")));
    ExecutorService waiter = Executors.newSingleThreadExecutor();
    try {
      Future<Workflow> waited = waiter.submit(() -> open.await(FOREVER));
      Thread.sleep(300); // the wait opens its watch (it works without this too)
      open.cancel("ends the wait");
      assertEquals(
          WorkflowState.WORKFLOW_STATE_CANCELLED,
          waited.get(WAIT.toSeconds(), TimeUnit.SECONDS).getState());
    } finally {
      waiter.shutdownNow();
    }
  }

  @Test
  void aClientWithCenturiesOfTimeouts() {
    for (Duration d : LONG) {
      Options options = Options.builder().connectTimeout(d).callTimeout(d).keepalive(d, d).build();
      try (Client own = Client.connect(sidecar.target(), options)) {
        assertEquals(ServingStatus.SERVING, own.health(), "" + d);
        WorkflowHandle handle =
            own.submit(
                new WorkflowBuilder("java-forever")
                    .task(new TaskBuilder("t", "java-nobody-serves")));
        assertEquals(WorkflowState.WORKFLOW_STATE_RUNNING, handle.get().getState(), "" + d);
        handle.cancel("done");
      }
    }
    // A response over 4 MiB goes through PutBlob and GetBlob, bounded by the call timeout too.
    Options forever = Options.builder().callTimeout(FOREVER).build();
    try (Client own = Client.connect(sidecar.target(), forever)) {
      Cache cache = own.cache();
      cache.putNamespace(CacheNamespace.newBuilder().setName("java-forever").build());
      byte[] large = new byte[Client.MAX_INLINE_BYTES + 1024];
      for (int i = 0; i < large.length; i++) {
        large[i] = (byte) i;
      }
      cache.store("java-forever", "large", Cache.RawPayload.of(large), CacheOptions.defaults());
      Cache.CacheHit hit =
          cache.lookup("java-forever", "large", CacheOptions.defaults()).orElseThrow();
      assertArrayEquals(large, hit.data());
    }
  }

  @ParameterizedTest
  @EnumSource(WorkerOptions.Transport.class)
  void aWorkerWithCenturiesOfBounds(WorkerOptions.Transport transport) throws Exception {
    BlockingQueue<Boolean> cancelled = new ArrayBlockingQueue<>(1);
    CountDownLatch waiting = new CountDownLatch(1);
    WorkerOptions options =
        WorkerOptions.builder()
            .transport(transport)
            .pollTimeout(Duration.ofSeconds(2))
            .heartbeatInterval(Duration.ofMillis(100))
            .shutdownGrace(FOREVER)
            .reportTimeout(FOREVER)
            // The cancellation ends the wait below, rather than interrupting it at times.
            .interruptOnCancel(false)
            .build();
    Worker worker =
        new Worker(client, "java-forever", options)
            .handle("java-echo", task -> Map.of("echo", task.input().path("say").asText()))
            .handle(
                "java-wait",
                task -> {
                  waiting.countDown();
                  cancelled.add(task.awaitCancellation(FOREVER));
                  return null;
                })
            .start();
    try {
      WorkflowHandle echo =
          client.submit(
              new WorkflowBuilder("java-forever")
                  .task(new TaskBuilder("t", "java-echo").input(Map.of("say", "hi"))));
      assertEquals("hi", echo.result(FOREVER).path("echo").asText());

      WorkflowHandle wait =
          client.submit(
              new WorkflowBuilder("java-forever").task(new TaskBuilder("t", "java-wait")));
      assertTrue(waiting.await(WAIT.toSeconds(), TimeUnit.SECONDS), "the handler started");
      wait.cancel("ends the handler's wait");
      assertEquals(Boolean.TRUE, cancelled.poll(WAIT.toSeconds(), TimeUnit.SECONDS));
    } finally {
      worker.close(); // its bound sums the options' bounds
    }
    assertTrue(worker.awaitTermination(FOREVER));
  }

  /**
   * A FOREVER in a request field means what that field can hold: a cache TTL the longest the
   * sidecar keeps an entry, a lookup's max age and a task's heartbeat timeout no bound (unset);
   * fields with no "for ever" (a latency, an attempt's timeout) refuse it before sending, naming
   * the field. Finite values past the sidecar's bounds are sent as they are and refused there.
   */
  @Test
  void foreverInRequestFieldsMeansWhatEachFieldCan() throws Exception {
    Cache cache = client.cache();
    cache.putNamespace(CacheNamespace.newBuilder().setName("java-forever-ttl").build());
    cache.store(
        "java-forever-ttl", "kept", Map.of("v", 1), CacheOptions.defaults().withTtl(FOREVER));
    Cache.CacheHit hit =
        cache
            .lookup("java-forever-ttl", "kept", CacheOptions.defaults().withMaxAge(FOREVER))
            .orElseThrow();
    assertEquals(1, hit.value().path("v").asInt());
    // MAX_TTL, what FOREVER stores, is the sidecar's bound: accepted, and a second more is not.
    StoreCacheRequest.Builder raw =
        StoreCacheRequest.newBuilder()
            .setNamespace("java-forever-ttl")
            .setPrompt("raw")
            .setResponse(Payload.newBuilder().setData(ByteString.copyFromUtf8("1")));
    StoreCacheResponse stored =
        client
            .raw()
            .cache()
            .withDeadlineAfter(WAIT.toSeconds(), TimeUnit.SECONDS)
            .storeCache(raw.setTtl(Durations.unchecked(Cache.MAX_TTL)).build());
    long expires = Durations.fromProto(stored.getExpireTime()).getEpochSecond();
    long expected = Instant.now().plus(Cache.MAX_TTL).getEpochSecond();
    assertTrue(Math.abs(expires - expected) < 86_400, "expires in 366 days: " + stored);
    AreException over =
        assertThrows(
            AreException.class,
            () ->
                client.call(
                    "StoreCache",
                    () ->
                        client
                            .raw()
                            .cache()
                            .withDeadlineAfter(WAIT.toSeconds(), TimeUnit.SECONDS)
                            .storeCache(
                                raw.setTtl(
                                        Durations.unchecked(Cache.MAX_TTL.plusSeconds(1)))
                                    .build())));
    assertEquals(Status.Code.INVALID_ARGUMENT, over.code());
    assertTrue(over.field("ttl").isPresent(), over.getMessage());
    // A finite TTL past the bound is not shortened: the sidecar refuses it, naming the field.
    AreException finite =
        assertThrows(
            AreException.class,
            () ->
                cache.store(
                    "java-forever-ttl",
                    "two years",
                    1,
                    CacheOptions.defaults().withTtl(Duration.ofDays(730))));
    assertEquals(Status.Code.INVALID_ARGUMENT, finite.code());
    assertTrue(finite.field("ttl").isPresent(), finite.getMessage());
    assertNotEquals(AreException.SDK_DOMAIN, finite.domain());

    // A task: no heartbeat required (FOREVER), and it runs; an attempt has no "for ever".
    Worker worker =
        new Worker(client, "java-forever", fast(WorkerOptions.Transport.STREAM))
            .handle("java-echo", task -> Map.of("echo", "hi"))
            .start();
    try {
      WorkflowHandle handle =
          client.submit(
              new WorkflowBuilder("java-forever")
                  .task(new TaskBuilder("t", "java-echo").heartbeatTimeout(FOREVER)));
      assertEquals("hi", handle.result(WAIT).path("echo").asText());
      assertFalse(handle.task("t").getSpec().hasHeartbeatTimeout());
    } finally {
      stopWorker(worker);
    }
    AreException attempt =
        assertThrows(
            AreException.class,
            () -> new TaskBuilder("t", "java-echo").startToCloseTimeout(FOREVER));
    assertTrue(attempt.field("start_to_close_timeout").isPresent(), attempt.getMessage());
    AreException week =
        assertThrows(
            AreException.class,
            () ->
                client.submit(
                    new WorkflowBuilder("java-forever")
                        .task(
                            new TaskBuilder("t", "java-echo")
                                .startToCloseTimeout(Duration.ofDays(8)))));
    assertEquals(Status.Code.INVALID_ARGUMENT, week.code());
    assertTrue(
        week.fieldViolations().stream()
            .anyMatch(v -> v.field().endsWith("start_to_close_timeout")),
        week.getMessage());

    // A latency is a measure: FOREVER is refused before anything is sent; 99 years is sent.
    Router router = client.router();
    AreException latency =
        assertThrows(
            AreException.class,
            () ->
                router.registerAgent(
                    AgentCard.of("java-forever-slow")
                        .withDescription("answers very slowly")
                        .withTypicalLatency(FOREVER)));
    assertEquals(Status.Code.INVALID_ARGUMENT, latency.code());
    assertTrue(latency.field("typical_latency").isPresent(), latency.getMessage());
    assertTrue(
        router.agents(Router.AgentFilter.defaults(), 1000).stream()
            .noneMatch(a -> a.agentId().equals("java-forever-slow")));
    router.registerAgent(
        AgentCard.of("java-forever-slow")
            .withDescription("answers very slowly")
            .withTypicalLatency(Duration.ofDays(365L * 99)));
    // Refused before the call: an unknown route would otherwise be NOT_FOUND.
    AreException outcome =
        assertThrows(
            AreException.class,
            () -> router.reportOutcome("r-none", Outcome.success(false).withLatency(FOREVER)));
    assertTrue(outcome.field("latency").isPresent(), outcome.getMessage());
  }
}
