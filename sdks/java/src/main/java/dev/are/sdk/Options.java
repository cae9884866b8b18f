package dev.are.sdk;

import io.grpc.ChannelCredentials;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Objects;

/**
 * How to reach the sidecar: immutable; {@code Options.builder().token("...").build()}, or {@link
 * #defaults()}.
 */
public final class Options {
  /** Default bound of request and response messages, as the sidecar's (64 MiB). */
  public static final int DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

  /** Default interval of the client's keepalive pings (30 s); see {@link Builder#keepalive}. */
  public static final Duration DEFAULT_KEEPALIVE_TIME = Duration.ofSeconds(30);

  /** Default wait for a keepalive ping's ack (10 s); see {@link Builder#keepalive}. */
  public static final Duration DEFAULT_KEEPALIVE_TIMEOUT = Duration.ofSeconds(10);

  /**
   * Default of {@link Builder#reconnectWindow} (60 s, as the Python SDK's {@code
   * reconnect_window}).
   */
  public static final Duration DEFAULT_RECONNECT_WINDOW = Duration.ofSeconds(60);

  private final String token;
  private final boolean tls;
  private final Path tlsTrustedCertificates;
  private final ChannelCredentials credentials;
  private final String serverName;
  private final Duration connectTimeout;
  private final Duration callTimeout;
  private final int maxMessageBytes;
  private final Duration keepaliveTime;
  private final Duration keepaliveTimeout;
  private final Duration reconnectWindow;

  private Options(Builder b) {
    this.token = b.token;
    this.tls = b.tls;
    this.tlsTrustedCertificates = b.tlsTrustedCertificates;
    this.credentials = b.credentials;
    this.serverName = b.serverName;
    this.connectTimeout = b.connectTimeout;
    this.callTimeout = b.callTimeout;
    this.maxMessageBytes = b.maxMessageBytes;
    this.keepaliveTime = b.keepaliveTime;
    this.keepaliveTimeout = b.keepaliveTimeout;
    this.reconnectWindow = b.reconnectWindow;
  }

  /**
   * Plaintext, no token, 10 s to connect, 30 s per call, 64 MiB messages, keepalive pings every
   * 30 s (10 s for the ack) while a call is open, a 60 s reconnect window for waits.
   */
  public static Options defaults() {
    return builder().build();
  }

  /** A builder starting from the defaults. */
  public static Builder builder() {
    return new Builder();
  }

  /** A builder starting from these options. */
  public Builder toBuilder() {
    Builder b = new Builder();
    b.token = token;
    b.tls = tls;
    b.tlsTrustedCertificates = tlsTrustedCertificates;
    b.credentials = credentials;
    b.serverName = serverName;
    b.connectTimeout = connectTimeout;
    b.callTimeout = callTimeout;
    b.maxMessageBytes = maxMessageBytes;
    b.keepaliveTime = keepaliveTime;
    b.keepaliveTimeout = keepaliveTimeout;
    b.reconnectWindow = reconnectWindow;
    return b;
  }

  /** The bearer token sent as {@code authorization: Bearer <token>}, or null. */
  public String token() {
    return token;
  }

  /** Whether the connection uses TLS. */
  public boolean tls() {
    return tls || tlsTrustedCertificates != null;
  }

  /** PEM certificates trusted for TLS instead of the system's, or null. */
  public Path tlsTrustedCertificates() {
    return tlsTrustedCertificates;
  }

  /** Channel credentials that replace the TLS settings, or null. */
  public ChannelCredentials credentials() {
    return credentials;
  }

  /**
   * The name the sidecar's TLS certificate is checked for (and the {@code :authority} of calls), or
   * null: the target's host, and {@code "localhost"} for a {@code unix:} target.
   */
  public String serverName() {
    return serverName;
  }

  /** Bound of {@link Client#connect}. */
  public Duration connectTimeout() {
    return connectTimeout;
  }

  /** Bound of each unary call of the facade. */
  public Duration callTimeout() {
    return callTimeout;
  }

  /** Largest message received; see {@link Builder#maxMessageBytes}. */
  public int maxMessageBytes() {
    return maxMessageBytes;
  }

  /** Interval of the keepalive pings, or null when keepalive is off. */
  public Duration keepaliveTime() {
    return keepaliveTime;
  }

  /** Wait for a keepalive ping's ack before the connection is closed. */
  public Duration keepaliveTimeout() {
    return keepaliveTimeout;
  }

  /**
   * How long a wait keeps resuming its dropped stream while the sidecar does not answer; see
   * {@link Builder#reconnectWindow}.
   */
  public Duration reconnectWindow() {
    return reconnectWindow;
  }

  /** Builds {@link Options}. */
  public static final class Builder {
    private String token;
    private boolean tls;
    private Path tlsTrustedCertificates;
    private ChannelCredentials credentials;
    private String serverName;
    private Duration connectTimeout = Duration.ofSeconds(10);
    private Duration callTimeout = Duration.ofSeconds(30);
    private int maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES;
    private Duration keepaliveTime = DEFAULT_KEEPALIVE_TIME;
    private Duration keepaliveTimeout = DEFAULT_KEEPALIVE_TIMEOUT;
    private Duration reconnectWindow = DEFAULT_RECONNECT_WINDOW;

    private Builder() {}

    /** Sends {@code authorization: Bearer <token>} on every call (null: none). */
    public Builder token(String token) {
      this.token = token;
      return this;
    }

    /** Connects with TLS, trusting the system's roots. */
    public Builder tls(boolean tls) {
      this.tls = tls;
      return this;
    }

    /** Connects with TLS, trusting the PEM certificates in this file. */
    public Builder tlsTrustedCertificates(Path pem) {
      this.tlsTrustedCertificates = pem;
      return this;
    }

    /** Uses these channel credentials (mutual TLS, say) instead of the TLS settings. */
    public Builder credentials(ChannelCredentials credentials) {
      this.credentials = credentials;
      return this;
    }

    /**
     * Checks the sidecar's TLS certificate for this name rather than the target's host, and sends
     * it as the calls' {@code :authority} (grpc-java's {@code overrideAuthority}); null: the
     * target's host, or {@code "localhost"} for a {@code unix:} target, which has no host name
     * (as gRPC's C-based clients and the Python SDK do). The sidecar serves TLS on its Unix
     * socket as on TCP.
     */
    public Builder serverName(String serverName) {
      this.serverName = serverName;
      return this;
    }

    /** Bounds {@link Client#connect} (default 10 s; over 100 years: no bound). */
    public Builder connectTimeout(Duration d) {
      this.connectTimeout = Objects.requireNonNull(d);
      return this;
    }

    /** Bounds each unary call of the facade (default 30 s; over 100 years: no deadline). */
    public Builder callTimeout(Duration d) {
      this.callTimeout = Objects.requireNonNull(d);
      return this;
    }

    /**
     * Largest message received (default 64 MiB). Set it to the sidecar's own bound ({@code
     * --max-message-bytes}: 64 MiB by default, 32 MiB at the least): the sidecar sizes some answers
     * to its own bound (a page of tasks with payloads, a poll's assignments: up to that bound less
     * 1 MiB), and an answer over the client's bound fails on this side with RESOURCE_EXHAUSTED
     * (without a reason), which no retry fixes: a wait throws it. A bound just over 4 MiB, the
     * largest inline payload, is not enough: a workflow's closing status with a 4 MiB inline result
     * is 4 MiB and a few hundred bytes, a task with its payloads 8 MiB and more, a state document
     * up to 16 MiB.
     */
    public Builder maxMessageBytes(int n) {
      this.maxMessageBytes = n;
      return this;
    }

    /**
     * Keepalive (default 30 s and 10 s): while a call is open (a worker's stream, a wait) and the
     * connection is quiet for {@code time}, the client sends an HTTP/2 ping and closes the
     * connection when no ack comes within {@code timeout}, so that a sidecar that hangs (a stopped
     * process, a frozen VM, a dead NAT entry) fails the open calls with UNAVAILABLE instead of
     * leaving them waiting forever, and a worker reconnects. No pings are sent while no call is
     * open. They are HTTP/2 pings, so they work on a Unix socket too. A null or zero {@code time}
     * turns keepalive off; a null or zero {@code timeout} is the default. grpc-java raises a
     * {@code time} under 10 s to 10 s.
     */
    public Builder keepalive(Duration time, Duration timeout) {
      this.keepaliveTime = time == null || time.isZero() || time.isNegative() ? null : time;
      this.keepaliveTimeout =
          timeout == null || timeout.isZero() || timeout.isNegative()
              ? DEFAULT_KEEPALIVE_TIMEOUT
              : timeout;
      return this;
    }

    /**
     * How long a wait ({@link WorkflowHandle#await}, {@code result}) keeps resuming its dropped
     * stream while the sidecar does not answer (default {@link Options#DEFAULT_RECONNECT_WINDOW},
     * 60 s, as the Python SDK's {@code reconnect_window}): a restart shorter than this goes
     * unnoticed; once this long has passed since the stream dropped without an answer, the wait
     * throws UNAVAILABLE, whatever its timeout. It bounds the silence, not the wait: a workflow
     * that runs for hours is waited for as long as the wait's timeout allows, so long as the
     * sidecar answers. It must be positive ({@link Client#connect(String, Options)} refuses it
     * otherwise with INVALID_ARGUMENT, {@code field("reconnectWindow")}); one over 100 years
     * ({@code ChronoUnit.FOREVER.getDuration()}) resumes for as long as the wait's timeout allows.
     */
    public Builder reconnectWindow(Duration d) {
      this.reconnectWindow = Objects.requireNonNull(d);
      return this;
    }

    /** The options. */
    public Options build() {
      return new Options(this);
    }
  }
}
