package dev.are.sdk;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.POJONode;
import com.google.protobuf.FieldMask;
import dev.are.sdk.v1.CacheNamespace;
import dev.are.sdk.v1.CacheTier;
import dev.are.sdk.v1.DeleteNamespaceRequest;
import dev.are.sdk.v1.LookupCacheRequest;
import dev.are.sdk.v1.LookupCacheResponse;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.PutNamespaceRequest;
import dev.are.sdk.v1.PutNamespaceResponse;
import dev.are.sdk.v1.StoreCacheRequest;
import dev.are.sdk.v1.Usage;
import dev.are.sdk.v1.Vector;
import io.grpc.Context;
import io.grpc.Status;
import java.nio.charset.StandardCharsets;
import java.text.Normalizer;
import java.time.Duration;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The semantic cache of LLM results: {@code client.cache()}.
 *
 * <p>Responses are stored as JSON ({@link Json}), or as they are when given as a {@link
 * RawPayload} (bytes with a content type of the caller's choice). A stored response is read back
 * as a {@link JsonNode}: decoded from JSON when its content type is JSON ({@link
 * Json#isJsonContentType}), otherwise (content stored as {@code application/octet-stream} or
 * {@code text/plain} by another SDK, say) a {@link POJONode} holding its {@link RawPayload}, as the
 * Python SDK returns a {@code RawPayload} for it.
 */
public final class Cache {
  private static final System.Logger LOG = System.getLogger(Cache.class.getName());

  /**
   * The longest time to live the sidecar gives an entry (366 days): what a TTL of {@code
   * ChronoUnit.FOREVER.getDuration()} stores.
   */
  public static final Duration MAX_TTL = Duration.ofDays(366);

  /** Content type of bytes of no stated type. */
  static final String OCTET_STREAM = "application/octet-stream";

  /**
   * The threads the shared lookups, calls and stores of {@link #getOrCall} run on: daemons, made as
   * needed and ended after a minute idle, so that an idle process holds none.
   */
  private static final ExecutorService FLIGHT_THREADS =
      Executors.newCachedThreadPool(
          new java.util.concurrent.ThreadFactory() {
            private final AtomicInteger made = new AtomicInteger();

            @Override
            public Thread newThread(Runnable r) {
              Thread t = new Thread(r, "are-cache-call-" + made.incrementAndGet());
              t.setDaemon(true);
              return t;
            }
          });

  private final Client client;

  Cache(Client client) {
    this.client = client;
  }

  /** Options of a lookup or a store; the defaults are the namespace's. Immutable. */
  public record CacheOptions(
      List<Float> vector,
      Double threshold,
      Duration maxAge,
      boolean exactOnly,
      Duration ttl,
      Map<String, String> metadata,
      Usage usage) {
    /** No vector, the namespace's threshold and TTL, both tiers, no metadata or usage. */
    public static CacheOptions defaults() {
      return new CacheOptions(null, null, null, false, null, Map.of(), null);
    }

    /** A vector the caller computed (namespaces with embedder "caller"). */
    public CacheOptions withVector(List<Float> v) {
      return new CacheOptions(v, threshold, maxAge, exactOnly, ttl, metadata, usage);
    }

    /** Least similarity of a semantic hit (lookup). */
    public CacheOptions withThreshold(double t) {
      return new CacheOptions(vector, t, maxAge, exactOnly, ttl, metadata, usage);
    }

    /**
     * Oldest entry a lookup accepts. One over 100 years ({@code ChronoUnit.FOREVER.getDuration()})
     * is no bound: the field is left unset, and entries of any age (not expired) are hits.
     */
    public CacheOptions withMaxAge(Duration d) {
      return new CacheOptions(vector, threshold, d, exactOnly, ttl, metadata, usage);
    }

    /** Only the exact tier (lookup). */
    public CacheOptions withExactOnly(boolean e) {
      return new CacheOptions(vector, threshold, maxAge, e, ttl, metadata, usage);
    }

    /**
     * Time to live of a stored entry: at most {@link #MAX_TTL} (366 days, the sidecar's bound;
     * unset: the namespace's default). One over 100 years ({@code
     * ChronoUnit.FOREVER.getDuration()}) means "as long as the cache keeps anything": it is sent
     * as {@link #MAX_TTL}. A finite TTL over 366 days is sent as it is and refused by the sidecar
     * (INVALID_ARGUMENT naming {@code ttl}): the SDK does not shorten a TTL you chose.
     */
    public CacheOptions withTtl(Duration d) {
      return new CacheOptions(vector, threshold, maxAge, exactOnly, d, metadata, usage);
    }

    /** Metadata stored with the entry. */
    public CacheOptions withMetadata(Map<String, String> m) {
      return new CacheOptions(vector, threshold, maxAge, exactOnly, ttl, Map.copyOf(m), usage);
    }

    /** Usage the stored response cost (counted as saved on hits). */
    public CacheOptions withUsage(Usage u) {
      return new CacheOptions(vector, threshold, maxAge, exactOnly, ttl, metadata, u);
    }
  }

  /**
   * A response stored as it is: bytes and their content type ({@code application/octet-stream}
   * when it is null). {@link #store} stores one as it is, not as JSON; a stored response whose
   * content type is not JSON is read back as one (held by a {@link POJONode}). Immutable: the bytes
   * are copied in and out.
   */
  public record RawPayload(byte[] data, String contentType) {
    /** Copies {@code data}; a null content type is {@code application/octet-stream}. */
    public RawPayload {
      data = Objects.requireNonNull(data, "data").clone();
      contentType = contentType == null ? OCTET_STREAM : contentType;
    }

    /** Bytes of no stated type ({@code application/octet-stream}). */
    public static RawPayload of(byte[] data) {
      return new RawPayload(data, OCTET_STREAM);
    }

    /** Text, sent as UTF-8 ({@code text/plain; charset=utf-8} for instance). */
    public static RawPayload of(String text, String contentType) {
      return new RawPayload(text.getBytes(StandardCharsets.UTF_8), contentType);
    }

    /** A copy of the bytes. */
    @Override
    public byte[] data() {
      return data.clone();
    }

    /** The bytes decoded as UTF-8 text. */
    public String text() {
      return new String(data, StandardCharsets.UTF_8);
    }

    /** Equal bytes and content type. */
    @Override
    public boolean equals(Object o) {
      return o instanceof RawPayload r
          && contentType.equals(r.contentType)
          && Arrays.equals(data, r.data);
    }

    @Override
    public int hashCode() {
      return 31 * contentType.hashCode() + Arrays.hashCode(data);
    }

    /** The content type, the size and the first bytes (in hex). */
    @Override
    public String toString() {
      int shown = Math.min(data.length, 16);
      return "RawPayload["
          + contentType
          + ", "
          + data.length
          + " bytes: "
          + HexFormat.of().formatHex(data, 0, shown)
          + (shown < data.length ? "..." : "")
          + "]";
    }
  }

  /**
   * A cache hit: the entry's id, the tier that answered, the similarity (1 for an exact hit), the
   * response as {@link Cache} reads it back (decoded from JSON for a JSON content type, else a
   * {@link POJONode} holding a {@link RawPayload}; JSON that does not parse is one too), the
   * response's bytes and content type as stored (a blob fetched first), the stored prompt,
   * metadata and usage.
   */
  public record CacheHit(
      String entryId,
      CacheTier tier,
      double similarity,
      JsonNode value,
      byte[] data,
      String contentType,
      String matchedPrompt,
      Map<String, String> metadata,
      Usage usage) {
    /** The response's bytes and content type, as stored. */
    public RawPayload raw() {
      return new RawPayload(data, contentType);
    }

    /** Whether {@link #value()} is JSON: the content type is JSON and the bytes parse. */
    public boolean isJson() {
      return !(value instanceof POJONode);
    }
  }

  /**
   * What {@link #getOrCall} returns: the value, and the hit when the cache answered. The value is
   * the same on a miss as on a later hit: the call's answer as it is stored, read back ({@link
   * Cache}); a response that is not JSON is a {@link POJONode} holding its {@link RawPayload}; an
   * answer that cannot be written as JSON (and so was not stored) is a {@link POJONode} holding the
   * answer as the call returned it. {@code Json.convert(value, Type.class)} reads every case: JSON
   * decoded to {@code Type}, or the object the node holds when it is a {@code Type}.
   */
  public record Result(JsonNode value, Optional<CacheHit> hit) {
    /** Whether the cache answered (the call did not run). */
    public boolean isHit() {
      return hit.isPresent();
    }

    /** The response when it is not JSON: its bytes and content type; empty for JSON. */
    public Optional<RawPayload> raw() {
      return value instanceof POJONode p && p.getPojo() instanceof RawPayload r
          ? Optional.of(r)
          : Optional.empty();
    }
  }

  /**
   * What a call computed on a miss: a value written as JSON (a {@link RawPayload} as it is), and
   * what it cost (or null).
   */
  public record Computed(Object value, Usage usage) {
    /** A value with no usage. */
    public static Computed of(Object value) {
      return new Computed(value, null);
    }

    /** A value and its usage. */
    public static Computed of(Object value, Usage usage) {
      return new Computed(value, usage);
    }
  }

  /** The call of {@link #getOrCall}, run on a miss; may throw its own exception. */
  @FunctionalInterface
  public interface Call<E extends Exception> {
    /** Computes the value (an LLM call, say). */
    Computed call() throws E;
  }

  /** Creates or updates a namespace; returns it and whether it was created. */
  public PutNamespaceResponse putNamespace(CacheNamespace namespace) {
    PutNamespaceRequest req = PutNamespaceRequest.newBuilder().setNamespace(namespace).build();
    return client.call(
        "PutNamespace", () -> client.deadline(client.raw().cache()).putNamespace(req));
  }

  /**
   * Changes only the settings of an existing namespace that {@code fields} names (CacheNamespace
   * field names: {@code similarity_threshold}, {@code default_ttl}, {@code max_entries}, {@code
   * max_bytes}, {@code description}, {@code search_expansion}, {@code recall_target}), taking their
   * values from {@code namespace}; the others keep theirs. {@link #putNamespace} instead sets every
   * mutable setting, and those left zero return to their defaults. A named field sent as zero
   * means its default. Errors: NOT_FOUND ({@code NAMESPACE_NOT_FOUND}) when there is no such
   * namespace; INVALID_ARGUMENT naming {@code update_mask} for a field that is not a mutable
   * setting.
   */
  public CacheNamespace updateNamespace(CacheNamespace namespace, String... fields) {
    PutNamespaceRequest req =
        PutNamespaceRequest.newBuilder()
            .setNamespace(namespace)
            .setUpdateMask(FieldMask.newBuilder().addAllPaths(Arrays.asList(fields)))
            .build();
    return client
        .call("PutNamespace", () -> client.deadline(client.raw().cache()).putNamespace(req))
        .getNamespace();
  }

  /**
   * Deletes a namespace with its entries, counters and index; returns how many entries it held.
   * Meanwhile lookups still answer the entries not yet removed, while stores and settings changes
   * fail with ABORTED ({@code NAMESPACE_DELETING}). Once it returns the name is free and no longer
   * counts toward the sidecar's 1,000 namespaces. Errors: NOT_FOUND ({@code NAMESPACE_NOT_FOUND});
   * RESOURCE_EXHAUSTED ({@code RESOURCE_LIMIT}) when the storage is busy: the entries removed so far
   * stay removed and calling again finishes the deletion.
   */
  public long deleteNamespace(String name) {
    DeleteNamespaceRequest req = DeleteNamespaceRequest.newBuilder().setNamespace(name).build();
    return client
        .call("DeleteNamespace", () -> client.deadline(client.raw().cache()).deleteNamespace(req))
        .getRemovedCount();
  }

  /** Looks {@code prompt} up: the exact tier, then the semantic one; empty on a miss. */
  public Optional<CacheHit> lookup(String namespace, String prompt, CacheOptions options) {
    LookupCacheRequest.Builder req =
        LookupCacheRequest.newBuilder()
            .setNamespace(namespace)
            .setPrompt(prompt)
            .setExactOnly(options.exactOnly());
    if (options.vector() != null) {
      req.setVector(Vector.newBuilder().addAllValues(options.vector()));
    }
    if (options.threshold() != null) {
      req.setThreshold(options.threshold());
    }
    if (options.maxAge() != null && !Durations.isUnbounded(options.maxAge())) {
      req.setMaxAge(Durations.unchecked(options.maxAge()));
    }
    LookupCacheResponse resp =
        client.call(
            "LookupCache", () -> client.deadline(client.raw().cache()).lookupCache(req.build()));
    if (!resp.getHit()) {
      return Optional.empty();
    }
    Payload payload = resp.getResponse();
    byte[] data = client.payloadBytes(payload);
    String contentType = payload.getContentType();
    if (contentType.isEmpty() && payload.hasBlob()) {
      contentType = payload.getBlob().getContentType();
    }
    return Optional.of(
        new CacheHit(
            resp.getEntryId(),
            resp.getTier(),
            resp.getSimilarity(),
            decode(data, contentType),
            data,
            contentType,
            resp.getMatchedPrompt(),
            Map.copyOf(resp.getMetadataMap()),
            resp.hasUsage() ? resp.getUsage() : null));
  }

  /**
   * Stores a response for {@code prompt}: written as JSON, or as it is when it is a {@link
   * RawPayload} (or a {@link POJONode} holding one, as read back); returns the entry's id. A value
   * that cannot be written as JSON is INVALID_ARGUMENT, reason {@code INVALID_JSON}.
   */
  public String store(String namespace, String prompt, Object value, CacheOptions options) {
    return store(namespace, prompt, encode(value), options);
  }

  private String store(String namespace, String prompt, RawPayload response, CacheOptions options) {
    StoreCacheRequest.Builder req =
        StoreCacheRequest.newBuilder()
            .setNamespace(namespace)
            .setPrompt(prompt)
            .setResponse(client.inlineOrBlob(response.data, response.contentType(), ""))
            .putAllMetadata(options.metadata() == null ? Map.of() : options.metadata());
    if (options.vector() != null) {
      req.setVector(Vector.newBuilder().addAllValues(options.vector()));
    }
    if (options.ttl() != null) {
      req.setTtl(
          Durations.unchecked(Durations.isUnbounded(options.ttl()) ? MAX_TTL : options.ttl()));
    }
    if (options.usage() != null) {
      req.setUsage(options.usage());
    }
    return client
        .call("StoreCache", () -> client.deadline(client.raw().cache()).storeCache(req.build()))
        .getEntryId();
  }

  /**
   * Returns the cached response for {@code prompt}, or runs {@code call} on a miss and stores what
   * it returns (with its usage). A failed call stores nothing and its exception propagates as it
   * is.
   *
   * <p>Concurrent calls of one client that ask the same question share one lookup and one {@code
   * call}, as in the Python, Go and TypeScript SDKs, so that five callers of a prompt that misses
   * pay for one LLM call, not five: the same namespace, the same prompt (equal once normalised as
   * the sidecar does: Unicode NFC, whitespace runs collapsed, trimmed) and the same lookup options
   * (vector, threshold, max age, exact only). The first caller's {@code call} and other options
   * (TTL, metadata, usage) are used, and every caller gets its result (the same one: treat its
   * value as read-only, {@code deepCopy()} it to change it), or its exception (the same one; then
   * nothing is stored). The shared lookup, call and store run on a thread of the SDK's, with the
   * first caller's {@link io.grpc.Context} values but not its cancellation: a caller interrupted
   * while it waits stops waiting (CANCELLED, reason {@code INTERRUPTED}, its interrupt flag set),
   * while the others still wait; the shared call's thread is interrupted only when no caller waits
   * for it any more, and a call arriving after that starts a call of its own. Each shared call is
   * forgotten the moment it ends (or is given up on): nothing is kept for the questions answered.
   * A checked exception of the call reaches every caller as it is, so callers that ask the same
   * question should declare the same exceptions.
   *
   * <p>The value is the same on a miss as on a later hit: the answer is encoded once, as it is
   * stored, and the value returned is that encoding read back (a {@code float} 0.1 comes back as
   * the double 0.1, a {@code long} 5 as an int node, a {@code BigDecimal} as a double, a {@code
   * byte[]} as its base64 text), as the Python SDK does. A hit whose content type is not JSON
   * (bytes or text another SDK stored) is returned as a {@link POJONode} holding its {@link
   * RawPayload}, and so is an answer given as a {@link RawPayload}. An answer that cannot be
   * written as JSON (a {@code java.time} value, which the SDK's mapper does not know) is logged,
   * not stored, and returned as it is, held by a {@link POJONode}.
   *
   * <p>The cache failing does not stop the call it stands in front of: a lookup that fails because
   * the cache is down or busy (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED) is
   * logged and the call is made, its answer not stored; a store that fails after the call (the
   * answer over the namespace's {@code max_bytes}, the sidecar busy or gone) is logged and the
   * answer returned. Other lookup errors (an unknown namespace, a bad vector) are thrown as {@link
   * AreException}s.
   */
  public <E extends Exception> Result getOrCall(
      String namespace, String prompt, CacheOptions options, Call<E> call) throws E {
    FlightKey key = FlightKey.of(namespace, prompt, options);
    Flights flights = client.cacheFlights;
    Flight flight;
    synchronized (flights) {
      flight = flights.underWay.get(key);
      if (flight == null) {
        // Never one that has ended: a flight leaves the map before it lands.
        Flight started = new Flight();
        flight = started;
        flights.underWay.put(key, started);
        Runnable fly =
            () -> {
              Result result = null;
              Throwable failure = null;
              try {
                result = lookUpOrCall(namespace, prompt, options, call);
              } catch (Throwable t) { // the call's own, for every caller to get
                failure = t;
              }
              synchronized (flights) {
                started.landed = true;
                if (flights.underWay.get(key) == started) {
                  flights.underWay.remove(key);
                }
              }
              if (failure == null) {
                started.result.complete(result);
              } else {
                started.result.completeExceptionally(failure);
              }
            };
        // The first caller's values (a trace context, say), not its cancellation.
        started.task = FLIGHT_THREADS.submit(Context.current().fork().wrap(fly));
      }
      flight.waiters++;
    }
    try {
      return flight.result.get();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw AreException.local(Status.Code.CANCELLED, "INTERRUPTED", "interrupted", e);
    } catch (ExecutionException e) {
      throw Cache.<E>rethrown(e.getCause());
    } finally {
      boolean abandoned;
      synchronized (flights) {
        flight.waiters--;
        abandoned = !flight.landed && flight.waiters == 0;
        if (abandoned && flights.underWay.get(key) == flight) {
          // Every caller gave up on it: forget it now, so that a caller arriving meanwhile starts
          // its own call instead of joining one that is being interrupted.
          flights.underWay.remove(key);
        }
      }
      if (abandoned) {
        flight.task.cancel(true);
      }
    }
  }

  /**
   * What a caller of a shared call throws for its failure: the call's exception as it is, which is
   * {@code E} when it is checked ({@link Call} throws nothing else).
   */
  @SuppressWarnings("unchecked")
  private static <E extends Exception> E rethrown(Throwable failure) throws E {
    if (failure instanceof RuntimeException r) {
      throw r;
    }
    if (failure instanceof Error r) {
      throw r;
    }
    return (E) failure;
  }

  /** The lookup, call and store of {@link #getOrCall}, shared by its concurrent callers. */
  private <E extends Exception> Result lookUpOrCall(
      String namespace, String prompt, CacheOptions options, Call<E> call) throws E {
    Optional<CacheHit> hit;
    try {
      hit = lookup(namespace, prompt, options);
    } catch (AreException e) {
      if (!isDown(e.code())) {
        throw e;
      }
      // A cache down or busy must not become an LLM outage: the call answers, and its answer is
      // not stored (the sidecar is gone or shedding load).
      LOG.log(
          System.Logger.Level.WARNING,
          "cache: \"" + namespace + "\" could not be looked up, so the call is made: " + e);
      Object answer = call.call().value();
      RawPayload encoded;
      try {
        encoded = encode(answer);
      } catch (RuntimeException notJson) {
        return new Result(JsonNodeFactory.instance.pojoNode(answer), Optional.empty());
      }
      return new Result(decode(encoded.data, encoded.contentType()), Optional.empty());
    }
    if (hit.isPresent()) {
      return new Result(hit.get().value(), hit);
    }
    Computed computed = call.call();
    RawPayload encoded;
    try {
      // Encoded once, for the store and for the value returned: what a hit will return.
      encoded = encode(computed.value());
    } catch (RuntimeException e) {
      // The answer was paid for: return it as it is (a hit could not return it).
      LOG.log(
          System.Logger.Level.WARNING,
          "cache: the answer to a prompt in \"" + namespace + "\" was not stored: " + e);
      return new Result(JsonNodeFactory.instance.pojoNode(computed.value()), Optional.empty());
    }
    JsonNode value = decode(encoded.data, encoded.contentType());
    CacheOptions storeOptions =
        computed.usage() != null ? options.withUsage(computed.usage()) : options;
    try {
      store(namespace, prompt, encoded, storeOptions);
    } catch (RuntimeException e) {
      // The answer was paid for: return it anyway.
      LOG.log(
          System.Logger.Level.WARNING,
          "cache: the answer to a prompt in \"" + namespace + "\" was not stored: " + e);
    }
    return new Result(value, Optional.empty());
  }

  /**
   * The {@link #getOrCall} calls under way of a client, by what decides their answer ({@link
   * FlightKey}): one per distinct question being answered now, removed when its call ends or the
   * moment its last caller gives up on it (as the other SDKs keep theirs). Guarded by itself.
   */
  static final class Flights {
    private final Map<FlightKey, Flight> underWay = new HashMap<>();

    /** How many calls are under way (tests check that none is left). */
    synchronized int size() {
      return underWay.size();
    }

    /**
     * How many callers wait now for the shared call of a question (0: none under way): tests start
     * concurrent callers and need to know when all have joined.
     */
    synchronized int waiters(String namespace, String prompt, CacheOptions options) {
      Flight flight = underWay.get(FlightKey.of(namespace, prompt, options));
      return flight == null ? 0 : flight.waiters;
    }
  }

  /** A {@link #getOrCall} under way, shared by the callers waiting for it. */
  private static final class Flight {
    final CompletableFuture<Result> result = new CompletableFuture<>();
    // Guarded by the Flights:
    Future<?> task;
    int waiters;
    boolean landed;
  }

  /**
   * What decides a {@link #getOrCall}'s answer, as the Go SDK's key: the namespace, the normalised
   * prompt and the lookup options.
   */
  private record FlightKey(
      String namespace,
      String prompt,
      List<Float> vector,
      Double threshold,
      Duration maxAge,
      boolean exactOnly) {
    static FlightKey of(String namespace, String prompt, CacheOptions options) {
      return new FlightKey(
          namespace,
          normalisePrompt(prompt),
          options.vector() == null ? null : List.copyOf(options.vector()),
          options.threshold(),
          options.maxAge(),
          options.exactOnly());
    }
  }

  /**
   * The prompt as the sidecar's exact tier keys it: Unicode NFC, runs of whitespace (Python's
   * {@code str.isspace}: space separators, U+0009 to U+000D, U+001C to U+001F and U+0085) collapsed
   * to one space, trimmed.
   */
  static String normalisePrompt(String prompt) {
    String nfc = Normalizer.normalize(prompt, Normalizer.Form.NFC);
    StringBuilder out = new StringBuilder(nfc.length());
    boolean space = false;
    for (int i = 0; i < nfc.length(); ) {
      int c = nfc.codePointAt(i);
      i += Character.charCount(c);
      if (Character.isSpaceChar(c)
          || (c >= 0x09 && c <= 0x0d)
          || (c >= 0x1c && c <= 0x1f)
          || c == 0x85) {
        space = out.length() > 0;
        continue;
      }
      if (space) {
        out.append(' ');
        space = false;
      }
      out.appendCodePoint(c);
    }
    return out.toString();
  }

  /**
   * A response as it is stored: a {@link RawPayload} as it is (also when a {@link POJONode} holds
   * it, as read back), anything else written as JSON (INVALID_ARGUMENT, reason {@code
   * INVALID_JSON}, when it cannot be).
   */
  static RawPayload encode(Object value) {
    if (value instanceof POJONode node && node.getPojo() instanceof RawPayload raw) {
      return raw;
    }
    if (value instanceof RawPayload raw) {
      return raw;
    }
    return new RawPayload(Json.encode(value), Json.CONTENT_TYPE);
  }

  /**
   * A stored response as it is read back: decoded from JSON when its content type is JSON (empty
   * bytes are JSON null), else, or when it does not parse, a {@link POJONode} holding its {@link
   * RawPayload} (the payload is the sender's: it is returned, not refused).
   */
  static JsonNode decode(byte[] data, String contentType) {
    if (Json.isJsonContentType(contentType)) {
      try {
        return Json.decode(data);
      } catch (AreException notJson) {
        return JsonNodeFactory.instance.pojoNode(
            new RawPayload(data, contentType.isEmpty() ? Json.CONTENT_TYPE : contentType));
      }
    }
    return JsonNodeFactory.instance.pojoNode(new RawPayload(data, contentType));
  }

  /** Whether a lookup failed because the cache is down or busy, not because it was wrong. */
  private static boolean isDown(Status.Code code) {
    return switch (code) {
      case UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED -> true;
      default -> false;
    };
  }
}
