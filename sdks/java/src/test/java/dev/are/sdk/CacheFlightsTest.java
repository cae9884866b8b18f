package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.are.sdk.Cache.CacheOptions;
import dev.are.sdk.v1.CacheNamespace;
import io.grpc.Status;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Concurrent getOrCalls of one question, against a real sidecar: they share one lookup and one
 * call, as the Python, Go and TypeScript SDKs' do, and no call is left behind once they are done.
 * Every wait is bounded; nothing asserts on timing.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class CacheFlightsTest extends WithSidecar {
  private static final CacheOptions NONE = CacheOptions.defaults();

  private ExecutorService callers;

  @BeforeEach
  void callers() {
    callers = Executors.newCachedThreadPool();
  }

  @AfterEach
  void stopCallers() throws InterruptedException {
    callers.shutdownNow();
    assertTrue(callers.awaitTermination(WAIT.toSeconds(), TimeUnit.SECONDS));
  }

  private Cache cacheWith(String namespace) {
    Cache cache = client.cache();
    cache.putNamespace(CacheNamespace.newBuilder().setName(namespace).build());
    return cache;
  }

  /**
   * Returns once {@code n} callers wait for the shared call of the question; fails the test as soon
   * as the call was made more than once (each caller paying for its own).
   */
  private void untilWaiters(
      String namespace, String prompt, CacheOptions options, int n, AtomicInteger calls)
      throws InterruptedException {
    long deadline = System.nanoTime() + WAIT.toNanos();
    while (client.cacheFlights.waiters(namespace, prompt, options) != n) {
      if (calls.get() > 1) {
        fail("the call was made " + calls.get() + " times; want one shared by the callers");
      }
      if (System.nanoTime() > deadline) {
        fail(n + " callers never waited for one shared call");
      }
      Thread.sleep(10);
    }
  }

  /** Waits (at most {@link #WAIT}) for a latch a test needs to see counted down. */
  private static void await(CountDownLatch latch, String what) throws InterruptedException {
    assertTrue(latch.await(WAIT.toSeconds(), TimeUnit.SECONDS), what);
  }

  private static <T> T result(Future<T> caller) throws Exception {
    return caller.get(WAIT.toSeconds(), TimeUnit.SECONDS);
  }

  /**
   * Five concurrent getOrCalls of one question (the same prompt once normalised as the sidecar
   * does) made five lookups and five paid calls; they now share one lookup and one call, and each
   * gets its answer. Another threshold is another question.
   */
  @Test
  void concurrentCallersOfOneQuestionShareOneCall() throws Exception {
    String ns = "java-flight";
    Cache cache = cacheWith(ns);
    List<String> prompts =
        List.of(
            "Où est le café ?",
            "  Où est  le café ? ",
            "Où est le cafe\u0301 ?", // NFD: NFC makes it the first
            "Où\u3000est le café\u00a0?\n",
            "Où est le café\u001f?");
    AtomicInteger calls = new AtomicInteger();
    CountDownLatch release = new CountDownLatch(1);
    Cache.Call<InterruptedException> call =
        () -> {
          calls.incrementAndGet();
          release.await();
          return Cache.Computed.of("near the station");
        };
    List<Future<Cache.Result>> results = new ArrayList<>();
    for (String prompt : prompts) {
      results.add(callers.submit(() -> cache.getOrCall(ns, prompt, NONE, call)));
    }
    untilWaiters(ns, prompts.get(0), NONE, prompts.size(), calls);
    release.countDown();
    Cache.Result first = result(results.get(0));
    for (Future<Cache.Result> r : results) {
      Cache.Result got = result(r);
      assertEquals("near the station", got.value().asText());
      assertFalse(got.isHit());
      assertSame(first, got, "every caller gets the shared call's result");
    }
    assertEquals(1, calls.get(), "one call for five callers");
    assertEquals(0, client.cacheFlights.size(), "the landed call is forgotten");
    Cache.Result again = cache.getOrCall(ns, prompts.get(1), NONE, call);
    assertTrue(again.isHit(), "a later caller is answered by the cache");
    assertEquals(1, calls.get());

    // Another threshold is another question: its own call.
    CountDownLatch bothCalled = new CountDownLatch(2);
    CountDownLatch hold = new CountDownLatch(1);
    List<Future<Cache.Result>> thresholds = new ArrayList<>();
    for (double threshold : new double[] {0.9, 0.8}) {
      thresholds.add(
          callers.submit(
              () ->
                  cache.getOrCall(
                      ns,
                      "a question asked at two thresholds",
                      NONE.withThreshold(threshold),
                      () -> {
                        bothCalled.countDown();
                        hold.await();
                        return Cache.Computed.of("x");
                      })));
    }
    await(bothCalled, "getOrCall of two thresholds makes two calls");
    hold.countDown();
    for (Future<Cache.Result> r : thresholds) {
      assertEquals("x", result(r).value().asText());
    }
    assertEquals(0, client.cacheFlights.size());
  }

  /**
   * A caller interrupted while it waits stops waiting (CANCELLED, INTERRUPTED), while the shared
   * call goes on, not interrupted, for the callers still waiting.
   */
  @Test
  void aCallerGivingUpLeavesTheCallToTheOthers() throws Exception {
    String ns = "java-flight-give-up";
    Cache cache = cacheWith(ns);
    String prompt = "who gives up";
    AtomicInteger calls = new AtomicInteger();
    CountDownLatch release = new CountDownLatch(1);
    Cache.Call<InterruptedException> call =
        () -> {
          calls.incrementAndGet();
          release.await(); // throws if the call's thread is interrupted
          return Cache.Computed.of("kept");
        };
    Future<Cache.Result> first = callers.submit(() -> cache.getOrCall(ns, prompt, NONE, call));
    untilWaiters(ns, prompt, NONE, 1, calls);
    Future<Cache.Result> second = callers.submit(() -> cache.getOrCall(ns, prompt, NONE, call));
    untilWaiters(ns, prompt, NONE, 2, calls);
    first.cancel(true); // interrupts the first caller's thread
    untilWaiters(ns, prompt, NONE, 1, calls);
    release.countDown();
    Cache.Result got = result(second);
    assertEquals("kept", got.value().asText());
    assertFalse(got.isHit());
    assertEquals(1, calls.get());
    assertEquals(0, client.cacheFlights.size());
    assertTrue(cache.lookup(ns, prompt, NONE).isPresent(), "the answer was stored");

    // What the caller that gives up gets.
    CountDownLatch entered = new CountDownLatch(1);
    CountDownLatch never = new CountDownLatch(1);
    AtomicInteger gaveUp = new AtomicInteger();
    Thread caller =
        new Thread(
            () -> {
              try {
                cache.getOrCall(
                    ns,
                    "interrupted",
                    NONE,
                    () -> {
                      entered.countDown();
                      never.await();
                      return Cache.Computed.of("never");
                    });
              } catch (AreException e) {
                if (e.code() == Status.Code.CANCELLED
                    && e.reason().equals("INTERRUPTED")
                    && Thread.currentThread().isInterrupted()) {
                  gaveUp.incrementAndGet();
                }
              } catch (InterruptedException e) {
                // Not what the caller should get: gaveUp stays 0.
              }
            });
    caller.start();
    await(entered, "the call was made");
    caller.interrupt();
    caller.join(WAIT.toMillis());
    assertEquals(1, gaveUp.get(), "CANCELLED, INTERRUPTED, the interrupt flag kept");
  }

  /**
   * Once no caller waits, the shared call's thread is interrupted, nothing is stored, and the next
   * caller makes a call of its own.
   */
  @Test
  void aCallEveryCallerGaveUpOnIsInterrupted() throws Exception {
    String ns = "java-flight-abandoned";
    Cache cache = cacheWith(ns);
    String prompt = "nobody waits";
    CountDownLatch entered = new CountDownLatch(1);
    CountDownLatch interrupted = new CountDownLatch(1);
    Future<Cache.Result> caller =
        callers.submit(
            () ->
                cache.getOrCall(
                    ns,
                    prompt,
                    NONE,
                    () -> {
                      entered.countDown();
                      try {
                        new CountDownLatch(1).await();
                      } catch (InterruptedException e) {
                        interrupted.countDown();
                        throw e;
                      }
                      return Cache.Computed.of("late");
                    }));
    await(entered, "the call was made");
    caller.cancel(true);
    await(interrupted, "the call every caller gave up on was interrupted");
    assertEquals(0, client.cacheFlights.size(), "forgotten once its last caller gave up");
    AtomicInteger calls = new AtomicInteger();
    Cache.Result fresh =
        cache.getOrCall(
            ns,
            prompt,
            NONE,
            () -> {
              calls.incrementAndGet();
              return Cache.Computed.of("fresh");
            });
    assertEquals("fresh", fresh.value().asText());
    assertFalse(fresh.isHit(), "nothing stored before");
    assertEquals(1, calls.get(), "a call of its own");
  }

  /**
   * The shared call's exception (checked, here) goes to every caller waiting for it, as it is, and
   * nothing is stored.
   */
  @Test
  void aCallsErrorIsEveryCallersAndNothingIsStored() throws Exception {
    String ns = "java-flight-error";
    Cache cache = cacheWith(ns);
    String prompt = "a failing call";
    AtomicInteger calls = new AtomicInteger();
    CountDownLatch release = new CountDownLatch(1);
    IOException down = new IOException("the model is down");
    Cache.Call<IOException> call =
        () -> {
          calls.incrementAndGet();
          try {
            release.await();
          } catch (InterruptedException e) {
            throw new IOException("interrupted", e);
          }
          throw down;
        };
    List<Future<Cache.Result>> results = new ArrayList<>();
    for (int i = 0; i < 3; i++) {
      results.add(callers.submit(() -> cache.getOrCall(ns, prompt, NONE, call)));
    }
    untilWaiters(ns, prompt, NONE, 3, calls);
    release.countDown();
    for (Future<Cache.Result> r : results) {
      ExecutionException e = assertThrows(ExecutionException.class, () -> result(r));
      assertSame(down, e.getCause(), "the call's own exception");
    }
    assertEquals(1, calls.get());
    assertEquals(0, client.cacheFlights.size());
    assertTrue(cache.lookup(ns, prompt, NONE).isEmpty(), "nothing stored");
  }
}
