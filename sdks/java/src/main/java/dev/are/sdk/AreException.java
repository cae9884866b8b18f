package dev.are.sdk;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import dev.are.sdk.v1.Workflow;
import io.grpc.Status;
import io.grpc.StatusException;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * The one exception of the SDK: a failed call, decoded from the rich gRPC status the sidecar
 * answered ({@code google.rpc.ErrorInfo}, {@code BadRequest}, {@code RetryInfo}), or an error the
 * SDK raised itself (then {@link #domain()} is {@link #SDK_DOMAIN}).
 */
public final class AreException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /**
   * Domain of the errors this SDK raises itself (a bounded wait that ran out, a workflow that
   * closed without success, a payload that is not JSON).
   */
  public static final String SDK_DOMAIN = "are-sdk";

  /** One invalid field of a request: its path ({@code spec.tasks[1].depends_on[0]}) and why. */
  public record FieldViolation(String field, String description) {}

  private final Status.Code code;
  private final String reason;
  private final String domain;
  private final Map<String, String> metadata;
  private final List<FieldViolation> fieldViolations;
  private final Duration retryDelay;
  private final transient Workflow workflow;

  private AreException(
      Status.Code code,
      String message,
      String reason,
      String domain,
      Map<String, String> metadata,
      List<FieldViolation> fieldViolations,
      Duration retryDelay,
      Workflow workflow,
      Throwable cause) {
    super(message, cause);
    this.code = code;
    this.reason = reason;
    this.domain = domain;
    this.metadata = Map.copyOf(metadata);
    this.fieldViolations = List.copyOf(fieldViolations);
    this.retryDelay = retryDelay;
    this.workflow = workflow;
  }

  /** An error raised by the SDK itself, in domain {@link #SDK_DOMAIN}. */
  public static AreException local(Status.Code code, String reason, String message) {
    return local(code, reason, message, null);
  }

  /** An error raised by the SDK itself, with its cause. */
  public static AreException local(
      Status.Code code, String reason, String message, Throwable cause) {
    return new AreException(
        code, message, reason, SDK_DOMAIN, Map.of(), List.of(), null, null, cause);
  }

  /**
   * A request the SDK refuses before sending it, as the sidecar refuses one: INVALID_ARGUMENT,
   * reason {@code INVALID_ARGUMENT}, with a field violation naming {@code field}.
   */
  static AreException invalidField(String field, String description) {
    return new AreException(
        Status.Code.INVALID_ARGUMENT,
        "`" + field + "` " + description,
        "INVALID_ARGUMENT",
        SDK_DOMAIN,
        Map.of(),
        List.of(new FieldViolation(field, description)),
        null,
        null,
        null);
  }

  static AreException workflowClosed(String reason, String message, Workflow workflow) {
    return new AreException(
        Status.Code.FAILED_PRECONDITION,
        message,
        reason,
        SDK_DOMAIN,
        Map.of(),
        List.of(),
        null,
        workflow,
        null);
  }

  /**
   * Decodes any throwable of a gRPC call: a status exception with its details, an AreException
   * as it is, anything else as an UNKNOWN error of the SDK.
   */
  public static AreException from(Throwable t) {
    if (t instanceof AreException e) {
      return e;
    }
    if (t instanceof StatusRuntimeException || t instanceof StatusException) {
      Status status = Status.fromThrowable(t);
      io.grpc.Metadata trailers = Status.trailersFromThrowable(t);
      return fromStatus(status, trailers, t);
    }
    return local(Status.Code.UNKNOWN, "UNKNOWN", String.valueOf(t), t);
  }

  private static AreException fromStatus(
      Status status, io.grpc.Metadata trailers, Throwable cause) {
    String reason = "";
    String domain = "";
    Map<String, String> metadata = Map.of();
    List<FieldViolation> violations = List.of();
    Duration retryDelay = null;
    com.google.rpc.Status rich = StatusProto.fromStatusAndTrailers(status, trailers);
    for (Any detail : rich.getDetailsList()) {
      try {
        if (detail.is(ErrorInfo.class)) {
          ErrorInfo info = detail.unpack(ErrorInfo.class);
          reason = info.getReason();
          domain = info.getDomain();
          metadata = info.getMetadataMap();
        } else if (detail.is(BadRequest.class)) {
          violations =
              detail.unpack(BadRequest.class).getFieldViolationsList().stream()
                  .map(v -> new FieldViolation(v.getField(), v.getDescription()))
                  .toList();
        } else if (detail.is(RetryInfo.class)) {
          com.google.protobuf.Duration d = detail.unpack(RetryInfo.class).getRetryDelay();
          retryDelay = Duration.ofSeconds(d.getSeconds(), d.getNanos());
        }
      } catch (InvalidProtocolBufferException ignored) {
        // A malformed detail is skipped; the status code and message still hold.
      }
    }
    String message = status.getDescription() == null ? "" : status.getDescription();
    return new AreException(
        status.getCode(), message, reason, domain, metadata, violations, retryDelay, null, cause);
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return code;
  }

  /**
   * The machine-readable ErrorInfo reason, such as {@code WORKFLOW_NOT_FOUND} ("" when the status
   * carried none).
   */
  public String reason() {
    return reason;
  }

  /** The ErrorInfo domain ({@code are.v1} for the sidecar, {@code are-sdk} for the SDK). */
  public String domain() {
    return domain;
  }

  /** The ErrorInfo metadata: identifiers to act on ({@code workflow_id}, {@code field}, ...). */
  public Map<String, String> metadata() {
    return metadata;
  }

  /** The invalid fields named by a {@code BadRequest} detail. */
  public List<FieldViolation> fieldViolations() {
    return fieldViolations;
  }

  /** The description of a violation of {@code field}, if the error names it. */
  public Optional<String> field(String field) {
    return fieldViolations.stream()
        .filter(v -> v.field().equals(field))
        .map(FieldViolation::description)
        .findFirst();
  }

  /** The {@code RetryInfo} delay after which a retry is likely to succeed. */
  public Optional<Duration> retryDelay() {
    return Optional.ofNullable(retryDelay);
  }

  /**
   * The closing status of a workflow that did not complete (reason {@code WORKFLOW_FAILED} or
   * {@code WORKFLOW_CANCELLED}), from {@link WorkflowHandle#result}.
   */
  public Optional<Workflow> workflow() {
    return Optional.ofNullable(workflow);
  }

  /** Whether a retry may succeed (UNAVAILABLE, or backpressure with a delay). */
  public boolean isRetryable() {
    return code == Status.Code.UNAVAILABLE
        || (code == Status.Code.RESOURCE_EXHAUSTED && retryDelay != null);
  }

  @Override
  public String getMessage() {
    StringBuilder b = new StringBuilder().append(code).append(": ").append(super.getMessage());
    if (!reason.isEmpty()) {
      b.append(" [").append(reason).append(']');
    }
    for (FieldViolation v : fieldViolations) {
      b.append("; ").append(v.field()).append(": ").append(v.description());
    }
    return b.toString();
  }

  static AreException timeout(String what, Duration after) {
    return local(
        Status.Code.DEADLINE_EXCEEDED, "TIMEOUT", what + " did not finish within " + after);
  }
}
