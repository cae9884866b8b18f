package dev.are.sdk;

import com.google.protobuf.ByteString;
import dev.are.sdk.v1.BlobHeader;
import dev.are.sdk.v1.BlobRef;
import dev.are.sdk.v1.CacheServiceGrpc;
import dev.are.sdk.v1.Event;
import dev.are.sdk.v1.EventFilter;
import dev.are.sdk.v1.GetBlobRequest;
import dev.are.sdk.v1.GetBlobResponse;
import dev.are.sdk.v1.ListApprovalsRequest;
import dev.are.sdk.v1.ListApprovalsResponse;
import dev.are.sdk.v1.ListEventsRequest;
import dev.are.sdk.v1.ListEventsResponse;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.PutBlobRequest;
import dev.are.sdk.v1.PutBlobResponse;
import dev.are.sdk.v1.RouterServiceGrpc;
import dev.are.sdk.v1.SchedulerServiceGrpc;
import dev.are.sdk.v1.StateServiceGrpc;
import dev.are.sdk.v1.SubmitWorkflowRequest;
import dev.are.sdk.v1.SubmitWorkflowResponse;
import dev.are.sdk.v1.Task;
import dev.are.sdk.v1.TraceServiceGrpc;
import dev.are.sdk.v1.WorkerServiceGrpc;
import dev.are.sdk.v1.WorkflowSpec;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptors;
import io.grpc.ConnectivityState;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import io.grpc.netty.shaded.io.netty.channel.ChannelOption;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Supplier;

/**
 * A connection to one ARE sidecar, safe to share between threads; close it when done.
 *
 * <pre>{@code
 * try (Client client = Client.connect("127.0.0.1:50051", Options.defaults())) {
 *   WorkflowHandle handle = client.submit(new WorkflowBuilder("pipeline")
 *       .task(new TaskBuilder("write", "write").input(Map.of("topic", "caches"))));
 *   JsonNode result = handle.result(Duration.ofSeconds(60));
 * }
 * }</pre>
 */
public final class Client implements AutoCloseable {
  /** Largest payload sent inline; larger ones travel as blobs (4 MiB). */
  public static final int MAX_INLINE_BYTES = 4 * 1024 * 1024;

  private static final int BLOB_CHUNK_BYTES = 1024 * 1024;
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  /** The generated blocking stubs of every service, sharing the client's connection. */
  public record Raw(
      Channel channel,
      SchedulerServiceGrpc.SchedulerServiceBlockingStub scheduler,
      WorkerServiceGrpc.WorkerServiceBlockingStub worker,
      StateServiceGrpc.StateServiceBlockingStub state,
      CacheServiceGrpc.CacheServiceBlockingStub cache,
      RouterServiceGrpc.RouterServiceBlockingStub router,
      TraceServiceGrpc.TraceServiceBlockingStub trace,
      HealthGrpc.HealthBlockingStub health) {}

  private final String target;
  private final ManagedChannel managed;
  /**
   * Carries the WatchWorkflow streams behind waits on workflows ({@link WorkflowHandle#await}):
   * each holds a stream open for as long as its workflow runs, and the sidecar serves 1,024
   * streams at once on a connection, so on one connection a thousand pending waits would hold up
   * every other call of the client, a worker's stream included. Past 1,024 waits, the next ones
   * queue until streams free. Connected at the first wait.
   */
  private final ManagedChannel watchManaged;

  private final SchedulerServiceGrpc.SchedulerServiceBlockingStub watches;
  private final Raw raw;
  private final Duration callTimeout;
  private final int maxMessageBytes;
  private final Duration reconnectWindow;
  private volatile boolean closed;

  /** The event streams open on this client: {@link #close()} cancels them. */
  private final Set<EventStream> eventStreams = ConcurrentHashMap.newKeySet();

  /**
   * The {@link Cache#getOrCall} calls under way on this client: concurrent callers of one question
   * share one.
   */
  final Cache.Flights cacheFlights = new Cache.Flights();

  private Client(
      String target,
      ManagedChannel managed,
      Channel channel,
      ManagedChannel watchManaged,
      Channel watchChannel,
      Options options) {
    this.target = target;
    this.managed = managed;
    this.watchManaged = watchManaged;
    this.watches =
        SchedulerServiceGrpc.newBlockingStub(watchChannel)
            .withMaxInboundMessageSize(options.maxMessageBytes());
    this.callTimeout = options.callTimeout();
    this.maxMessageBytes = options.maxMessageBytes();
    this.reconnectWindow = options.reconnectWindow();
    int n = maxMessageBytes;
    this.raw =
        new Raw(
            channel,
            SchedulerServiceGrpc.newBlockingStub(channel).withMaxInboundMessageSize(n),
            WorkerServiceGrpc.newBlockingStub(channel).withMaxInboundMessageSize(n),
            StateServiceGrpc.newBlockingStub(channel).withMaxInboundMessageSize(n),
            CacheServiceGrpc.newBlockingStub(channel).withMaxInboundMessageSize(n),
            RouterServiceGrpc.newBlockingStub(channel).withMaxInboundMessageSize(n),
            TraceServiceGrpc.newBlockingStub(channel).withMaxInboundMessageSize(n),
            HealthGrpc.newBlockingStub(channel).withMaxInboundMessageSize(n));
  }

  /** Connects to {@code target} with the default options. */
  public static Client connect(String target) {
    return connect(target, Options.defaults());
  }

  /**
   * Connects to {@code target}, {@code host:port} or {@code unix:/path}, within the options'
   * connect timeout; an unreachable sidecar is UNAVAILABLE. A reconnect window that is not positive
   * is INVALID_ARGUMENT ({@code field("reconnectWindow")}), before anything is opened.
   */
  public static Client connect(String target, Options options) {
    Duration window = options.reconnectWindow();
    if (window.isZero() || window.isNegative()) {
      // Before any channel is opened, as the Python SDK's connect.
      throw AreException.invalidField("reconnectWindow", "must be positive, got " + window);
    }
    Metadata headers = new Metadata();
    if (options.token() != null) {
      if (!options.token().chars().allMatch(c -> c >= 0x20 && c < 0x7f)) {
        throw AreException.local(
            Status.Code.INVALID_ARGUMENT, "BAD_TOKEN", "the token is not printable ASCII");
      }
      headers.put(AUTHORIZATION, "Bearer " + options.token());
    }
    ManagedChannel managed = build(target, options);
    try {
      awaitReady(managed, target, options.connectTimeout());
    } catch (RuntimeException e) {
      managed.shutdownNow();
      throw e;
    }
    ManagedChannel watchManaged = build(target, options);
    Channel channel =
        ClientInterceptors.intercept(managed, MetadataUtils.newAttachHeadersInterceptor(headers));
    Channel watchChannel =
        ClientInterceptors.intercept(
            watchManaged, MetadataUtils.newAttachHeadersInterceptor(headers));
    return new Client(target, managed, channel, watchManaged, watchChannel, options);
  }

  /** A channel to {@code target} with the options' settings (it connects at its first call). */
  private static ManagedChannel build(String target, Options options) {
    try {
      ManagedChannelBuilder<?> builder =
          Grpc.newChannelBuilder(target, credentials(options))
              .maxInboundMessageSize(options.maxMessageBytes());
      boolean unix = target.startsWith("unix:");
      if (unix && builder instanceof NettyChannelBuilder netty) {
        // TCP keepalive means nothing on a Unix socket; netty would warn of it on each connect.
        netty.withOption(ChannelOption.SO_KEEPALIVE, null);
      }
      if (options.serverName() != null) {
        builder.overrideAuthority(options.serverName());
      } else if (unix) {
        // The authority would be the socket's path, which no certificate names: TLS to the
        // sidecar's Unix socket failed its host name check. gRPC's C-based clients use localhost.
        builder.overrideAuthority("localhost");
      }
      keepalive(builder, options);
      return builder.build();
    } catch (IllegalArgumentException | IOException e) {
      throw AreException.local(
          Status.Code.INVALID_ARGUMENT, "BAD_TARGET", "bad target \"" + target + "\": " + e, e);
    }
  }

  /** The scheduler's stub on the connection for waits (see {@link #watchManaged}). */
  SchedulerServiceGrpc.SchedulerServiceBlockingStub watches() {
    return watches;
  }

  /** {@link Options#reconnectWindow()}: how long a wait resumes while the sidecar is silent. */
  Duration reconnectWindow() {
    return reconnectWindow;
  }

  /**
   * Sets the channel's keepalive (HTTP/2 pings, only while a call is open) from the options, or
   * leaves it off (grpc-java's default) when they turn it off.
   */
  static void keepalive(ManagedChannelBuilder<?> builder, Options options) {
    Duration time = options.keepaliveTime();
    if (time == null) {
      return;
    }
    builder.keepAliveTime(Durations.nanos(time), TimeUnit.NANOSECONDS);
    builder.keepAliveTimeout(Durations.nanos(options.keepaliveTimeout()), TimeUnit.NANOSECONDS);
    builder.keepAliveWithoutCalls(false);
  }

  private static ChannelCredentials credentials(Options options) throws IOException {
    if (options.credentials() != null) {
      return options.credentials();
    }
    if (options.tlsTrustedCertificates() != null) {
      return TlsChannelCredentials.newBuilder()
          .trustManager(options.tlsTrustedCertificates().toFile())
          .build();
    }
    return options.tls() ? TlsChannelCredentials.create() : InsecureChannelCredentials.create();
  }

  /** Waits until the channel is READY; a failed attempt or the timeout is UNAVAILABLE. */
  private static void awaitReady(ManagedChannel channel, String target, Duration timeout) {
    long deadline = Durations.deadline(timeout);
    ConnectivityState state = channel.getState(true);
    while (state != ConnectivityState.READY) {
      if (state == ConnectivityState.TRANSIENT_FAILURE || state == ConnectivityState.SHUTDOWN) {
        throw AreException.local(
            Status.Code.UNAVAILABLE,
            "UNAVAILABLE",
            "no ARE sidecar answered at \"" + target + "\" (" + state + ")");
      }
      long left = deadline - System.nanoTime();
      if (left <= 0) {
        throw AreException.local(
            Status.Code.UNAVAILABLE,
            "UNAVAILABLE",
            "no ARE sidecar answered at \"" + target + "\" within " + timeout);
      }
      CountDownLatch changed = new CountDownLatch(1);
      channel.notifyWhenStateChanged(state, changed::countDown);
      try {
        changed.await(left, TimeUnit.NANOSECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw AreException.local(Status.Code.CANCELLED, "INTERRUPTED", "connect interrupted", e);
      }
      state = channel.getState(false);
    }
  }

  /** The target this client connected to. */
  public String target() {
    return target;
  }

  /**
   * The generated stubs and the channel (which sends the token), for everything the facade does
   * not cover; set a deadline on each call ({@code withDeadlineAfter}).
   */
  public Raw raw() {
    return raw;
  }

  /** Bound of each unary call of the facade. */
  public Duration callTimeout() {
    return callTimeout;
  }

  /** Largest message received. */
  int maxMessageBytes() {
    return maxMessageBytes;
  }

  /** The sidecar's overall health ({@code SERVING} once it accepts work). */
  public ServingStatus health() {
    return call(
            "Health.Check",
            () ->
                deadline(raw.health())
                    .check(HealthCheckRequest.newBuilder().setService("").build()))
        .getStatus();
  }

  /** Submits a workflow and returns a handle at once, without waiting. */
  public WorkflowHandle submit(WorkflowBuilder spec) {
    return submit(spec.build());
  }

  /** Submits a workflow spec and returns a handle at once, without waiting. */
  public WorkflowHandle submit(WorkflowSpec spec) {
    return submit(SubmitWorkflowRequest.newBuilder().setSpec(spec).build());
  }

  /** Submits with every field of the request (a {@code request_id} for idempotency). */
  public WorkflowHandle submit(SubmitWorkflowRequest request) {
    SubmitWorkflowResponse resp =
        call("SubmitWorkflow", () -> deadline(raw.scheduler()).submitWorkflow(request));
    return new WorkflowHandle(this, resp.getWorkflowId(), resp.getDeduplicated());
  }

  /** A handle on an existing workflow; makes no call. */
  public WorkflowHandle workflow(String workflowId) {
    return new WorkflowHandle(this, workflowId, false);
  }

  /** The cache service. */
  public Cache cache() {
    return new Cache(this);
  }

  /** The state service: workflow state documents, checkpoints, forks and memory. */
  public State state() {
    return new State(this);
  }

  /** The router: agent cards, task routing, and model routing with reported outcomes. */
  public Router router() {
    return new Router(this);
  }

  /**
   * One page of the tasks waiting at approval gates, oldest request first, with their inputs:
   * those of {@code workflowId} (null or empty: every workflow) having every one of {@code labels}
   * (null or empty: any; at most 8). {@code pageSize}: 0 means 100, at most 100; {@code
   * pageToken}: null or empty for the first page, else the previous page's {@code nextPageToken}
   * (a bad one is INVALID_ARGUMENT, reason {@code INVALID_PAGE_TOKEN}). Approve or reject one with
   * {@code workflow(task.getWorkflowId()).approve(task.getTaskId())}.
   */
  public ApprovalPage listApprovals(
      String workflowId, Map<String, String> labels, int pageSize, String pageToken) {
    ListApprovalsRequest req =
        ListApprovalsRequest.newBuilder()
            .setWorkflowId(workflowId == null ? "" : workflowId)
            .putAllLabels(labels == null ? Map.of() : labels)
            .setPageSize(pageSize)
            .setPageToken(pageToken == null ? "" : pageToken)
            .build();
    ListApprovalsResponse resp =
        call("ListApprovals", () -> deadline(raw.scheduler()).listApprovals(req));
    return new ApprovalPage(List.copyOf(resp.getTasksList()), resp.getNextPageToken());
  }

  /**
   * The tasks waiting at approval gates as {@link #listApprovals} selects them, at most {@code
   * limit} of them, oldest request first; pages are fetched as needed.
   */
  public List<Task> approvals(String workflowId, Map<String, String> labels, int limit) {
    checkLimit(limit);
    List<Task> out = new ArrayList<>();
    String token = "";
    do {
      ApprovalPage page =
          listApprovals(workflowId, labels, Math.min(limit - out.size(), 100), token);
      out.addAll(page.tasks().subList(0, Math.min(page.tasks().size(), limit - out.size())));
      token = page.nextPageToken();
    } while (!token.isEmpty() && out.size() < limit);
    return List.copyOf(out);
  }

  /**
   * One page of the retained events matching {@code filter} (null: every event) after the cursor
   * {@code afterSequence} (0: from the oldest retained; ignored when {@code pageToken} is given),
   * ascending by sequence. {@code pageSize}: 0 means 100, at most 1,000; {@code pageToken}: null
   * or empty for the first page, else the previous page's {@code nextPageToken}. Follow on live
   * with {@link #streamEvents} from the page's {@code lastSequence}. A bad filter or page token is
   * INVALID_ARGUMENT naming the field; a cursor beyond the end of the log (from another data
   * folder) OUT_OF_RANGE, reason {@code SEQUENCE_BEYOND_LOG}.
   */
  public EventPage listEvents(
      EventFilter filter, long afterSequence, int pageSize, String pageToken) {
    ListEventsRequest req =
        ListEventsRequest.newBuilder()
            .setFilter(filter == null ? EventFilter.getDefaultInstance() : filter)
            .setAfterSequence(afterSequence)
            .setPageSize(pageSize)
            .setPageToken(pageToken == null ? "" : pageToken)
            .build();
    return eventPage(call("ListEvents", () -> deadline(raw.trace()).listEvents(req)));
  }

  /** The page of a ListEvents answer. */
  static EventPage eventPage(ListEventsResponse resp) {
    return new EventPage(
        List.copyOf(resp.getEventsList()),
        resp.getNextPageToken(),
        resp.getLastSequence(),
        resp.getOldestRetainedSequence());
  }

  /**
   * The retained events matching {@code filter} after {@code afterSequence}, at most {@code limit}
   * of them, ascending by sequence; pages (of up to 1,000) are fetched as needed.
   */
  public List<Event> events(EventFilter filter, long afterSequence, int limit) {
    checkLimit(limit);
    List<Event> out = new ArrayList<>();
    String token = "";
    do {
      EventPage page =
          listEvents(filter, afterSequence, Math.min(limit - out.size(), 1000), token);
      out.addAll(page.events().subList(0, Math.min(page.events().size(), limit - out.size())));
      token = page.nextPageToken();
    } while (!token.isEmpty() && out.size() < limit);
    return List.copyOf(out);
  }

  private static void checkLimit(int limit) {
    if (limit < 1) {
      throw AreException.local(
          Status.Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "limit must be at least 1");
    }
  }

  /**
   * Opens an event stream: events matching {@code filter}, replayed from {@code afterSequence} (0:
   * the oldest retained) then live; null: live only. Events a slow reader missed are fetched and
   * delivered in place of the sidecar's notice ({@link #streamEvents(EventFilter, Long,
   * boolean)}), and events the sidecar sends batched are delivered one by one ({@link
   * EventStream}). Close it when done.
   */
  public EventStream streamEvents(EventFilter filter, Long afterSequence) {
    return streamEvents(filter, afterSequence, true);
  }

  /**
   * Opens an event stream as {@link #streamEvents(EventFilter, Long)} does. With {@code
   * fillMissed}, a slow-subscriber notice (MISSED_REASON_SLOW_SUBSCRIBER: the sidecar dropped
   * events from this stream's buffer, but still holds them) is not delivered: the stream fetches
   * the missed events with ListEvents and delivers them in its place, in order, each event once.
   * Without it, the notice is delivered as it comes. Retention notices (the events are gone) are
   * always delivered.
   */
  public EventStream streamEvents(EventFilter filter, Long afterSequence, boolean fillMissed) {
    EventFilter f = filter == null ? EventFilter.getDefaultInstance() : filter;
    EventStream stream = new EventStream(this, f, afterSequence, fillMissed);
    if (closed) {
      stream.cancelForClose(); // close() may have missed it
    }
    return stream;
  }

  /** Notes an event stream about to open, for {@link #close()}. */
  void opened(EventStream stream) {
    eventStreams.add(stream);
  }

  /** Forgets an event stream that ended. */
  void ended(EventStream stream) {
    eventStreams.remove(stream);
  }

  /** Reads a payload's bytes, fetching a blob reference from the blob store. */
  public byte[] payloadBytes(Payload payload) {
    if (payload == null) {
      return new byte[0];
    }
    return switch (payload.getContentCase()) {
      case DATA -> payload.getData().toByteArray();
      case BLOB -> getBlob(payload.getBlob().getSha256());
      default -> new byte[0];
    };
  }

  /**
   * Reads a whole blob (GetBlob stream, chunks of at most 1 MiB), bounded by progress rather than
   * by its length: the call timeout bounds the wait for each chunk (the first included), not the
   * whole download, so a large blob over a slow link comes down as long as it keeps coming, and a
   * download that stalls fails within the call timeout (DEADLINE_EXCEEDED, reason {@code TIMEOUT})
   * however large the blob. The stream asks for one chunk at a time, so at most about one chunk
   * waits in the client beyond what it has read.
   */
  public byte[] getBlob(String sha256) {
    GetBlobRequest req = GetBlobRequest.newBuilder().setSha256(sha256).build();
    LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();
    Object end = new Object();
    CompletableFuture<ClientCallStreamObserver<GetBlobRequest>> started =
        new CompletableFuture<>();
    StateServiceGrpc.newStub(raw.channel())
        .withMaxInboundMessageSize(maxMessageBytes)
        .getBlob(
            req,
            new ClientResponseObserver<GetBlobRequest, GetBlobResponse>() {
              @Override
              public void beforeStart(ClientCallStreamObserver<GetBlobRequest> stream) {
                stream.disableAutoRequestWithInitial(1);
                started.complete(stream);
              }

              @Override
              public void onNext(GetBlobResponse value) {
                queue.add(value);
              }

              @Override
              public void onError(Throwable t) {
                queue.add(t);
              }

              @Override
              public void onCompleted() {
                queue.add(end);
              }
            });
    ClientCallStreamObserver<GetBlobRequest> stream = started.join();
    List<ByteString> chunks = new ArrayList<>();
    long received = 0;
    try {
      while (true) {
        Object item;
        try {
          item = queue.poll(Durations.nanos(callTimeout), TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw AreException.local(Status.Code.CANCELLED, "INTERRUPTED", "GetBlob interrupted", e);
        }
        if (item == null) {
          throw AreException.local(
              Status.Code.DEADLINE_EXCEEDED,
              "TIMEOUT",
              "GetBlob of "
                  + sha256
                  + ": no chunk came within "
                  + callTimeout
                  + " (after "
                  + received
                  + " bytes)");
        }
        if (item == end) {
          return ByteString.copyFrom(chunks).toByteArray();
        }
        if (item instanceof Throwable t) {
          throw translate("GetBlob", t);
        }
        ByteString chunk = ((GetBlobResponse) item).getChunk();
        chunks.add(chunk);
        received += chunk.size();
        stream.request(1);
      }
    } finally {
      // Ended early (a timeout, an interrupt, an error): nothing more is wanted. A no-op once the
      // stream completed.
      stream.cancel("GetBlob ended by the client", null);
    }
  }

  /**
   * Stores a blob (PutBlob stream, 1 MiB chunks), owned by {@code workflowId} when not empty.
   * Bounded by progress rather than by its length, as {@link #getBlob} is: the call timeout bounds
   * each wait until the stream can take the next chunk (gRPC's flow control lets one in only as the
   * sidecar takes what came before; the first wait includes opening the stream), and then the wait
   * for the sidecar's answer after the last chunk, not the whole upload. So a large blob over a
   * slow link is stored as long as the sidecar keeps taking it, and an upload that stalls fails
   * (DEADLINE_EXCEEDED, reason {@code TIMEOUT}) one call timeout after its last progress. At most
   * about one chunk waits in the client beyond what the transport sent.
   */
  public BlobRef putBlob(byte[] data, String contentType, String workflowId) {
    CompletableFuture<PutBlobResponse> done = new CompletableFuture<>();
    Object ready = new Object();
    ClientResponseObserver<PutBlobRequest, PutBlobResponse> answer =
        new ClientResponseObserver<>() {
          @Override
          public void beforeStart(ClientCallStreamObserver<PutBlobRequest> stream) {
            stream.setOnReadyHandler(() -> wake(ready));
          }

          @Override
          public void onNext(PutBlobResponse value) {
            done.complete(value);
          }

          @Override
          public void onError(Throwable t) {
            done.completeExceptionally(t);
            wake(ready);
          }

          @Override
          public void onCompleted() {
            done.completeExceptionally(
                AreException.local(
                    Status.Code.INTERNAL, "EMPTY_RESPONSE", "PutBlob returned no blob"));
            wake(ready);
          }
        };
    // No deadline on the call: each wait below has its own.
    ClientCallStreamObserver<PutBlobRequest> requests =
        (ClientCallStreamObserver<PutBlobRequest>)
            StateServiceGrpc.newStub(raw.channel()).putBlob(answer);
    boolean finished = false;
    try {
      boolean open = awaitReady(requests, ready, done, data.length, 0);
      if (open) {
        requests.onNext(
            PutBlobRequest.newBuilder()
                .setHeader(
                    BlobHeader.newBuilder()
                        .setContentType(contentType)
                        .setSizeBytes(data.length)
                        .setWorkflowId(workflowId == null ? "" : workflowId))
                .build());
      }
      for (int at = 0; open && at < data.length; at += BLOB_CHUNK_BYTES) {
        open = awaitReady(requests, ready, done, data.length, at);
        if (open) {
          int n = Math.min(BLOB_CHUNK_BYTES, data.length - at);
          requests.onNext(
              PutBlobRequest.newBuilder().setChunk(ByteString.copyFrom(data, at, n)).build());
        }
      }
      if (!done.isDone()) {
        requests.onCompleted();
      }
      BlobRef blob;
      try {
        blob = done.get(Durations.nanos(callTimeout), TimeUnit.NANOSECONDS).getBlob();
      } catch (ExecutionException e) {
        throw translate("PutBlob", e.getCause());
      } catch (TimeoutException e) {
        throw AreException.timeout(
            "PutBlob (waiting for the answer after its last chunk)", callTimeout);
      }
      finished = true;
      return blob;
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw AreException.local(Status.Code.CANCELLED, "INTERRUPTED", "PutBlob interrupted", e);
    } catch (RuntimeException e) {
      throw AreException.from(e);
    } finally {
      if (!finished) {
        // Ended early (a timeout, an interrupt, an error): a no-op once the call ended.
        requests.cancel("PutBlob ended by the client", null);
      }
    }
  }

  /**
   * Waits, at most the call timeout, until {@code requests} (a PutBlob of {@code size} bytes that
   * sent {@code sent} so far) can take a message; false when the call ended meanwhile.
   */
  private boolean awaitReady(
      ClientCallStreamObserver<?> requests,
      Object ready,
      CompletableFuture<?> done,
      long size,
      long sent)
      throws InterruptedException {
    long deadline = Durations.deadline(callTimeout);
    synchronized (ready) {
      while (!requests.isReady() && !done.isDone()) {
        long left = deadline - System.nanoTime();
        if (left <= 0) {
          throw AreException.timeout(
              "PutBlob of " + size + " bytes (waiting to send more after " + sent + " bytes)",
              callTimeout);
        }
        TimeUnit.NANOSECONDS.timedWait(ready, left);
      }
    }
    return !done.isDone();
  }

  private static void wake(Object ready) {
    synchronized (ready) {
      ready.notifyAll();
    }
  }

  /** A payload of {@code data}: inline up to {@link #MAX_INLINE_BYTES}, else a blob. */
  public Payload inlineOrBlob(byte[] data, String contentType, String workflowId) {
    Payload.Builder p = Payload.newBuilder().setContentType(contentType);
    if (data.length <= MAX_INLINE_BYTES) {
      p.setData(ByteString.copyFrom(data));
    } else {
      p.setBlob(putBlob(data, contentType, workflowId));
    }
    return p.build();
  }

  /**
   * Closes the connection; calls in flight are cancelled after up to 5 seconds. Waits on workflows
   * ({@link WorkflowHandle#await}) and event streams ({@link #streamEvents}) are cancelled at once,
   * since they would hold the close for the whole 5 seconds: waits, and workers using the client,
   * then end with CANCELLED, reason {@code CLIENT_CLOSED}, instead of retrying a connection that
   * never comes back, and an event stream's {@code next} throws the same.
   */
  @Override
  public void close() {
    closed = true;
    watchManaged.shutdownNow(); // waits only: nothing there to let finish
    for (EventStream stream : eventStreams) {
      stream.cancelForClose();
    }
    managed.shutdown();
    try {
      if (!managed.awaitTermination(5, TimeUnit.SECONDS)) {
        managed.shutdownNow();
      }
    } catch (InterruptedException e) {
      managed.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** Whether {@link #close()} was called: its calls then fail with UNAVAILABLE, for good. */
  boolean isClosed() {
    return closed;
  }

  /**
   * The error ending {@code what} (a wait, a worker) that retries UNAVAILABLE, once the client is
   * closed: CANCELLED, reason {@code CLIENT_CLOSED}.
   */
  static AreException closedError(String what, Throwable cause) {
    return AreException.local(
        Status.Code.CANCELLED, "CLIENT_CLOSED", what + ": the client was closed", cause);
  }

  /** A stub bounded by the call timeout (none when it is over 100 years). */
  <S extends io.grpc.stub.AbstractStub<S>> S deadline(S stub) {
    return Durations.withTimeout(stub, callTimeout);
  }

  /** Runs a call, turning any failure into an {@link AreException}. */
  <T> T call(String what, Supplier<T> call) {
    try {
      return call.get();
    } catch (RuntimeException e) {
      throw translate(what, e);
    }
  }

  private AreException translate(String what, Throwable t) {
    AreException e = AreException.from(t);
    if (e.code() == Status.Code.DEADLINE_EXCEEDED
        && e.reason().isEmpty()
        && t instanceof StatusRuntimeException) {
      return AreException.local(
          Status.Code.DEADLINE_EXCEEDED,
          "TIMEOUT",
          what + " did not finish within " + callTimeout,
          t);
    }
    return e;
  }
}
