package dev.are.sdk;

import io.grpc.stub.AbstractStub;
import java.time.Duration;
import java.time.Instant;
import java.util.concurrent.TimeUnit;

/**
 * Conversions between java.time and the protobuf well-known types, and of the caller's bounds to
 * nanoseconds and deadlines. A {@link Duration} goes far beyond what a {@code long} of nanoseconds
 * holds (292 years; {@code ChronoUnit.FOREVER.getDuration()} is 2<sup>63</sup> seconds), so every
 * bound is saturated at {@link #UNBOUNDED} (100 years, as grpc-java's {@code Deadline} is): a
 * longer one waits for ever, and a call bounded by it has no deadline.
 */
final class Durations {
  /** Bounds longer than this (100 years) are no bound at all. */
  static final Duration UNBOUNDED = Duration.ofDays(36_500);

  private static final long UNBOUNDED_NANOS = UNBOUNDED.toNanos();

  private Durations() {}

  /**
   * {@code d} as a protobuf Duration for the request field {@code field}, exactly. One longer than
   * {@link #UNBOUNDED} ({@code ChronoUnit.FOREVER.getDuration()}, say) means "no bound", which
   * this field has not: it is INVALID_ARGUMENT, reason {@code INVALID_ARGUMENT}, domain {@code
   * are-sdk}, naming the field and its {@code bound}, as the sidecar refuses a duration past its
   * bound, and nothing is sent. (Sent as it is, it would be past the range of a protobuf Duration,
   * 10,000 years.) Fields where "no bound" has a meaning map it before calling this: left unset,
   * or the longest the sidecar accepts. A finite duration past the sidecar's bound is sent as it
   * is, and the sidecar's refusal names the field.
   */
  static com.google.protobuf.Duration toProto(Duration d, String field, String bound) {
    if (isUnbounded(d)) {
      throw AreException.invalidField(
          field, "must be at most " + bound + ", got " + d + " (over 100 years: no bound)");
    }
    return unchecked(d);
  }

  /**
   * {@code d} as a protobuf Duration with no check, for a caller that fits it to its field's bound
   * itself.
   */
  static com.google.protobuf.Duration unchecked(Duration d) {
    return com.google.protobuf.Duration.newBuilder()
        .setSeconds(d.getSeconds())
        .setNanos(d.getNano())
        .build();
  }

  static Duration fromProto(com.google.protobuf.Duration d) {
    return Duration.ofSeconds(d.getSeconds(), d.getNanos());
  }

  static Instant fromProto(com.google.protobuf.Timestamp t) {
    return Instant.ofEpochSecond(t.getSeconds(), t.getNanos());
  }

  /** Whether {@code d} is longer than {@link #UNBOUNDED}: no bound at all. */
  static boolean isUnbounded(Duration d) {
    return d.compareTo(UNBOUNDED) > 0;
  }

  /**
   * {@code d} in nanoseconds, saturated at plus or minus {@link #UNBOUNDED} ({@link
   * Duration#toNanos()} throws past 292 years). A wait of the result is one for ever.
   */
  static long nanos(Duration d) {
    if (d.compareTo(UNBOUNDED) > 0) {
      return UNBOUNDED_NANOS;
    }
    if (d.compareTo(UNBOUNDED.negated()) < 0) {
      return -UNBOUNDED_NANOS;
    }
    return d.toNanos();
  }

  /**
   * The {@link System#nanoTime()} at which {@code d} from now has passed, {@code d} saturated as
   * {@link #nanos}. Compare it as {@code deadline - System.nanoTime()}: that never overflows, even
   * where the sum itself wraps around.
   */
  static long deadline(Duration d) {
    return System.nanoTime() + nanos(d);
  }

  /** {@code d} clamped to plus or minus {@link #UNBOUNDED}, so that sums of bounds never throw. */
  static Duration saturated(Duration d) {
    return Duration.ofNanos(nanos(d));
  }

  /** {@code stub} with a deadline {@code d} from now, or none when {@code d} is unbounded. */
  static <S extends AbstractStub<S>> S withTimeout(S stub, Duration d) {
    return isUnbounded(d) ? stub : stub.withDeadlineAfter(nanos(d), TimeUnit.NANOSECONDS);
  }
}
