package dev.are.sdk;

import java.time.Duration;
import java.util.concurrent.ThreadLocalRandom;

/** Full-jitter delays between retries, and the sidecar's retry hints. */
final class Backoff {
  /** The longest hint taken as it is (a longer one is read as this). */
  private static final Duration MAX_HINT = Duration.ofDays(1);

  private Backoff() {}

  /** A full-jitter delay in [0, ms]. */
  static long jitter(long ms) {
    return ThreadLocalRandom.current().nextLong(Math.max(ms, 1) + 1);
  }

  /**
   * Milliseconds before a refused or broken call is tried again: full jitter over {@code delayMs},
   * or, when the sidecar sent a retry hint ({@code RetryInfo}: the worker bound reached, its
   * subscribers all taken, a store closing), at least that, with up to a fifth more so that the
   * callers it refused do not all come back at once. {@code hint} may be null.
   */
  static long retryWait(long delayMs, Duration hint) {
    long wait = jitter(delayMs);
    if (hint != null && !hint.isNegative() && !hint.isZero()) {
      Duration h = hint.compareTo(MAX_HINT) > 0 ? MAX_HINT : hint;
      double factor = ThreadLocalRandom.current().nextDouble(1.0, 1.2);
      wait = Math.max(wait, (long) Math.ceil(h.toNanos() * factor / 1_000_000.0));
    }
    return wait;
  }

  /** Sleeps, keeping the interrupt flag when interrupted (the caller checks it). */
  static void sleep(long ms) {
    if (ms <= 0) {
      return;
    }
    try {
      Thread.sleep(ms);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw AreException.local(io.grpc.Status.Code.CANCELLED, "INTERRUPTED", "interrupted", e);
    }
  }
}
