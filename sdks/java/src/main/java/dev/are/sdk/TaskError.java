package dev.are.sdk;

import java.time.Duration;

/**
 * A handler's failure with what the retry policy needs: a type (matched against the policy's
 * {@code non_retryable_failure_types}), whether it may be retried at all, JSON details and a least
 * delay before a retry. Any other exception fails the attempt too, with its class's simple name as
 * the type. The error's causes ({@link Throwable#getCause()}, up to 8) go with the failure as its
 * nested causes, each with its message and type (a TaskError's own type, else its class's simple
 * name).
 */
public class TaskError extends RuntimeException {
  private static final long serialVersionUID = 1L;

  private final String type;
  private boolean nonRetryable;
  private transient Object details;
  private Duration retryAfter;

  /**
   * A failure with a type and a message; a null or empty type is reported as the class's simple
   * name ({@code TaskError}).
   */
  public TaskError(String type, String message) {
    super(message);
    this.type = type;
  }

  /** A failure with a type, a message and a cause. */
  public TaskError(String type, String message, Throwable cause) {
    super(message, cause);
    this.type = type;
  }

  /** This failure, never retried whatever the retry policy says. */
  public TaskError nonRetryable() {
    this.nonRetryable = true;
    return this;
  }

  /** Adds structured details, written as JSON. */
  public TaskError details(Object details) {
    this.details = details;
    return this;
  }

  /** The least delay before a retry (a provider's Retry-After). */
  public TaskError retryAfter(Duration d) {
    this.retryAfter = d;
    return this;
  }

  /** The failure's type. */
  public String type() {
    return type;
  }

  /** Whether retries are forbidden. */
  public boolean isNonRetryable() {
    return nonRetryable;
  }

  /** The details, or null. */
  public Object detailsValue() {
    return details;
  }

  /** The least retry delay, or null. */
  public Duration retryAfterValue() {
    return retryAfter;
  }
}
