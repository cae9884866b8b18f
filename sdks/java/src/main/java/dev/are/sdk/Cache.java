package dev.are.sdk;

import com.fasterxml.jackson.databind.JsonNode;
import dev.are.sdk.v1.CacheNamespace;
import dev.are.sdk.v1.CacheTier;
import dev.are.sdk.v1.LookupCacheRequest;
import dev.are.sdk.v1.LookupCacheResponse;
import dev.are.sdk.v1.PutNamespaceRequest;
import dev.are.sdk.v1.PutNamespaceResponse;
import dev.are.sdk.v1.StoreCacheRequest;
import dev.are.sdk.v1.Usage;
import dev.are.sdk.v1.Vector;
import io.grpc.Status;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/** The semantic cache of LLM results: {@code client.cache()}. */
public final class Cache {
  private static final System.Logger LOG = System.getLogger(Cache.class.getName());

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

    /** Oldest entry a lookup accepts. */
    public CacheOptions withMaxAge(Duration d) {
      return new CacheOptions(vector, threshold, d, exactOnly, ttl, metadata, usage);
    }

    /** Only the exact tier (lookup). */
    public CacheOptions withExactOnly(boolean e) {
      return new CacheOptions(vector, threshold, maxAge, e, ttl, metadata, usage);
    }

    /** Time to live of a stored entry. */
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
   * A cache hit: the entry's id, the tier that answered, the similarity (1 for an exact hit), the
   * response decoded from JSON, the stored prompt, metadata and usage.
   */
  public record CacheHit(
      String entryId,
      CacheTier tier,
      double similarity,
      JsonNode value,
      String matchedPrompt,
      Map<String, String> metadata,
      Usage usage) {}

  /** What {@link #getOrCall} returns: the value, and the hit when the cache answered. */
  public record Result(JsonNode value, Optional<CacheHit> hit) {
    /** Whether the cache answered (the call did not run). */
    public boolean isHit() {
      return hit.isPresent();
    }
  }

  /** What a call computed on a miss: a value written as JSON, and what it cost (or null). */
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
    if (options.maxAge() != null) {
      req.setMaxAge(Durations.toProto(options.maxAge()));
    }
    LookupCacheResponse resp =
        client.call(
            "LookupCache", () -> client.deadline(client.raw().cache()).lookupCache(req.build()));
    if (!resp.getHit()) {
      return Optional.empty();
    }
    JsonNode value = Json.decode(client.payloadBytes(resp.getResponse()));
    return Optional.of(
        new CacheHit(
            resp.getEntryId(),
            resp.getTier(),
            resp.getSimilarity(),
            value,
            resp.getMatchedPrompt(),
            Map.copyOf(resp.getMetadataMap()),
            resp.hasUsage() ? resp.getUsage() : null));
  }

  /** Stores a response (written as JSON) for {@code prompt}; returns the entry's id. */
  public String store(String namespace, String prompt, Object value, CacheOptions options) {
    StoreCacheRequest.Builder req =
        StoreCacheRequest.newBuilder()
            .setNamespace(namespace)
            .setPrompt(prompt)
            .setResponse(client.inlineOrBlob(Json.encode(value), Json.CONTENT_TYPE, ""))
            .putAllMetadata(options.metadata() == null ? Map.of() : options.metadata());
    if (options.vector() != null) {
      req.setVector(Vector.newBuilder().addAllValues(options.vector()));
    }
    if (options.ttl() != null) {
      req.setTtl(Durations.toProto(options.ttl()));
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
   * is. The cache failing does not stop the call it stands in front of: a lookup that fails because
   * the cache is down or busy (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED) is
   * logged and the call is made, its answer not stored; a store that fails after the call (the
   * answer over the namespace's {@code max_bytes}, the sidecar busy or gone) is logged and the
   * answer returned. Other lookup errors (an unknown namespace, a bad vector) are thrown as {@link
   * AreException}s.
   */
  public <E extends Exception> Result getOrCall(
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
      return new Result(Json.mapper().valueToTree(call.call().value()), Optional.empty());
    }
    if (hit.isPresent()) {
      return new Result(hit.get().value(), hit);
    }
    Computed computed = call.call();
    CacheOptions storeOptions =
        computed.usage() != null ? options.withUsage(computed.usage()) : options;
    JsonNode value = Json.mapper().valueToTree(computed.value());
    try {
      store(namespace, prompt, value, storeOptions);
    } catch (RuntimeException e) {
      // The answer was paid for: return it anyway.
      LOG.log(
          System.Logger.Level.WARNING,
          "cache: the answer to a prompt in \"" + namespace + "\" was not stored: " + e);
    }
    return new Result(value, Optional.empty());
  }

  /** Whether a lookup failed because the cache is down or busy, not because it was wrong. */
  private static boolean isDown(Status.Code code) {
    return switch (code) {
      case UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED -> true;
      default -> false;
    };
  }
}
