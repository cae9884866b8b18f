package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.time.temporal.ChronoUnit;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Bounds turned into nanoseconds and deadlines, without a server: saturated, never thrown. */
class DurationsTest {
  private static final Duration FOREVER = ChronoUnit.FOREVER.getDuration();
  private static final long CENTURY_NANOS = Duration.ofDays(36_500).toNanos();

  @Test
  void boundsPastALongOfNanosSaturateAtACentury() {
    for (Duration d :
        List.of(FOREVER, Duration.ofSeconds(Long.MAX_VALUE), Duration.ofDays(365L * 300))) {
      assertTrue(Durations.isUnbounded(d), "" + d);
      assertEquals(CENTURY_NANOS, Durations.nanos(d), "" + d);
      assertEquals(-CENTURY_NANOS, Durations.nanos(d.negated()), "" + d);
      assertEquals(Duration.ofNanos(CENTURY_NANOS), Durations.saturated(d), "" + d);
      long left = Durations.deadline(d) - System.nanoTime();
      assertTrue(left > CENTURY_NANOS - 60_000_000_000L && left <= CENTURY_NANOS, "" + left);
    }
    Duration shorter = Duration.ofDays(365L * 99);
    assertFalse(Durations.isUnbounded(shorter));
    assertEquals(shorter.toNanos(), Durations.nanos(shorter));
    assertEquals(1_500_000_000L, Durations.nanos(Duration.ofMillis(1500)));
    assertTrue(Durations.deadline(Duration.ofSeconds(-1)) - System.nanoTime() < 0);
    // Sums of saturated bounds (a worker's close waits for three) never throw.
    assertTrue(
        Durations.isUnbounded(Durations.saturated(FOREVER).plus(Durations.saturated(FOREVER))));
  }
}
