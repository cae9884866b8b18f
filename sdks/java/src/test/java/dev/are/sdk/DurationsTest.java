package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.time.temporal.ChronoUnit;
import io.grpc.Status;
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

  @Test
  void aDurationOverACenturyIsNotSentAsItIs() {
    for (Duration d : List.of(FOREVER, Duration.ofDays(365L * 101))) {
      AreException e =
          assertThrows(AreException.class, () -> Durations.toProto(d, "ttl", "366 days"));
      assertEquals(Status.Code.INVALID_ARGUMENT, e.code());
      assertEquals("INVALID_ARGUMENT", e.reason());
      assertEquals(AreException.SDK_DOMAIN, e.domain());
      assertTrue(e.field("ttl").orElseThrow().contains("366 days"), e.getMessage());
    }
    com.google.protobuf.Duration p =
        Durations.toProto(Duration.ofSeconds(90, 5), "ttl", "366 days");
    assertEquals(90, p.getSeconds());
    assertEquals(5, p.getNanos());
    Duration century = Duration.ofDays(36_500);
    assertEquals(century.getSeconds(), Durations.toProto(century, "x", "y").getSeconds());
  }

  @Test
  void taskFieldsMapForeverAsTheyMeanIt() {
    // No heartbeat required, no approval timeout of its own: the fields are left unset.
    var spec =
        new TaskBuilder("t", "c")
            .heartbeatTimeout(Duration.ofSeconds(5))
            .heartbeatTimeout(FOREVER)
            .requiresApproval(FOREVER)
            .build();
    assertFalse(spec.hasHeartbeatTimeout());
    assertFalse(spec.hasApprovalTimeout());
    assertTrue(spec.getRequiresApproval());
    // A bound the sidecar has no "for ever" of: refused here, naming the field.
    AreException e =
        assertThrows(
            AreException.class, () -> new TaskBuilder("t", "c").startToCloseTimeout(FOREVER));
    assertTrue(e.field("start_to_close_timeout").isPresent(), e.getMessage());
    e = assertThrows(AreException.class, () -> new TaskBuilder("t", "c").maxAttempts(3, FOREVER));
    assertTrue(e.field("retry_policy.initial_interval").isPresent(), e.getMessage());
  }
}
