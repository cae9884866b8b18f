package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import io.grpc.ForwardingChannelBuilder2;
import io.grpc.ManagedChannelBuilder;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/** The keepalive options reach the channel builder, without a server. */
class KeepaliveTest {
  /** Records the keepalive settings a builder receives. */
  private static final class Recorder extends ForwardingChannelBuilder2<Recorder> {
    private final ManagedChannelBuilder<?> delegate = ManagedChannelBuilder.forTarget("x");
    Long timeNanos;
    Long timeoutNanos;
    Boolean withoutCalls;

    @Override
    protected ManagedChannelBuilder<?> delegate() {
      return delegate;
    }

    @Override
    public Recorder keepAliveTime(long time, TimeUnit unit) {
      timeNanos = unit.toNanos(time);
      return this;
    }

    @Override
    public Recorder keepAliveTimeout(long timeout, TimeUnit unit) {
      timeoutNanos = unit.toNanos(timeout);
      return this;
    }

    @Override
    public Recorder keepAliveWithoutCalls(boolean enable) {
      withoutCalls = enable;
      return this;
    }
  }

  private static Recorder configured(Options options) {
    Recorder recorder = new Recorder();
    Client.keepalive(recorder, options);
    return recorder;
  }

  @Test
  void defaultsArePingsEvery30sWithA10sTimeoutOnlyDuringCalls() {
    Recorder r = configured(Options.defaults());
    assertEquals(Duration.ofSeconds(30).toNanos(), r.timeNanos);
    assertEquals(Duration.ofSeconds(10).toNanos(), r.timeoutNanos);
    assertEquals(Boolean.FALSE, r.withoutCalls);
  }

  @Test
  void customValuesReachTheBuilder() {
    Recorder r =
        configured(
            Options.builder().keepalive(Duration.ofSeconds(15), Duration.ofSeconds(5)).build());
    assertEquals(Duration.ofSeconds(15).toNanos(), r.timeNanos);
    assertEquals(Duration.ofSeconds(5).toNanos(), r.timeoutNanos);
    assertEquals(Boolean.FALSE, r.withoutCalls);

    Options defaultTimeout = Options.builder().keepalive(Duration.ofSeconds(20), null).build();
    assertEquals(Options.DEFAULT_KEEPALIVE_TIMEOUT, defaultTimeout.keepaliveTimeout());
    assertEquals(Duration.ofSeconds(20), defaultTimeout.toBuilder().build().keepaliveTime());
  }

  @Test
  void nullOrZeroTurnsKeepaliveOff() {
    for (Duration off : new Duration[] {null, Duration.ZERO}) {
      Options options = Options.builder().keepalive(off, Duration.ofSeconds(5)).build();
      assertNull(options.keepaliveTime());
      Recorder r = configured(options);
      assertNull(r.timeNanos);
      assertNull(r.timeoutNanos);
      assertNull(r.withoutCalls);
    }
  }
}
