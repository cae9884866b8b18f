package dev.are.sdk;

import java.util.concurrent.ThreadLocalRandom;

/** Full-jitter delays between retries. */
final class Backoff {
  private Backoff() {}

  /** A full-jitter delay in [0, ms]. */
  static long jitter(long ms) {
    return ThreadLocalRandom.current().nextLong(Math.max(ms, 1) + 1);
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
