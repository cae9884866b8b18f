package dev.are.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.Optional;
import org.junit.jupiter.api.Test;

/** Decoding the rich status, without a server. */
class AreExceptionTest {
  @Test
  void decodesEveryDetail() {
    com.google.rpc.Status rich =
        com.google.rpc.Status.newBuilder()
            .setCode(Code.RESOURCE_EXHAUSTED_VALUE)
            .setMessage("pool default is full")
            .addDetails(
                Any.pack(
                    ErrorInfo.newBuilder()
                        .setReason("POOL_QUEUE_FULL")
                        .setDomain("are.v1")
                        .putMetadata("pool", "default")
                        .build()))
            .addDetails(
                Any.pack(
                    BadRequest.newBuilder()
                        .addFieldViolations(
                            BadRequest.FieldViolation.newBuilder()
                                .setField("spec.tasks[0]")
                                .setDescription("queue full"))
                        .build()))
            .addDetails(
                Any.pack(
                    RetryInfo.newBuilder()
                        .setRetryDelay(Durations.unchecked(Duration.ofMillis(1500)))
                        .build()))
            .build();
    AreException e = AreException.from(StatusProto.toStatusRuntimeException(rich));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.code());
    assertEquals("POOL_QUEUE_FULL", e.reason());
    assertEquals("are.v1", e.domain());
    assertEquals("default", e.metadata().get("pool"));
    assertEquals(Optional.of(Duration.ofMillis(1500)), e.retryDelay());
    assertEquals(Optional.of("queue full"), e.field("spec.tasks[0]"));
    assertTrue(e.isRetryable());
    assertEquals(
        "RESOURCE_EXHAUSTED: pool default is full [POOL_QUEUE_FULL]; spec.tasks[0]: queue full",
        e.getMessage());
  }

  @Test
  void localErrorsHaveTheSdkDomain() {
    AreException e = AreException.local(Status.Code.DEADLINE_EXCEEDED, "TIMEOUT", "too slow");
    assertEquals(AreException.SDK_DOMAIN, e.domain());
    assertEquals("are-sdk", e.domain());
    assertTrue(e.field("x").isEmpty());
  }
}
