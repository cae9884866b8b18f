package dev.are.sdk;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.POJONode;
import com.google.protobuf.ByteString;
import dev.are.sdk.Cache.CacheHit;
import dev.are.sdk.Cache.CacheOptions;
import dev.are.sdk.Cache.RawPayload;
import dev.are.sdk.v1.CacheNamespace;
import dev.are.sdk.v1.Payload;
import dev.are.sdk.v1.StoreCacheRequest;
import java.math.BigDecimal;
import java.time.Instant;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * How the cache encodes and reads back what it stores, against a real sidecar: the same value on a
 * miss as on a hit, answers that cannot be encoded, and entries other SDKs stored that are not
 * JSON. Every wait is bounded.
 */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class CacheTest extends WithSidecar {
  private static final CacheOptions NONE = CacheOptions.defaults();

  /** A getOrCall that must be answered by the cache: its call fails the test. */
  private static Cache.Result hitOnly(Cache cache, String namespace, String prompt) {
    return cache.getOrCall(
        namespace,
        prompt,
        NONE,
        () -> {
          throw new AssertionError("called again for \"" + prompt + "\": the cache did not answer");
        });
  }

  /** Stores a response as another SDK would: bytes and their content type, through the stub. */
  private void storeRaw(String namespace, String prompt, byte[] data, String contentType) {
    client
        .raw()
        .cache()
        .withDeadlineAfter(WAIT.toNanos(), TimeUnit.NANOSECONDS)
        .storeCache(
            StoreCacheRequest.newBuilder()
                .setNamespace(namespace)
                .setPrompt(prompt)
                .setResponse(
                    Payload.newBuilder()
                        .setData(ByteString.copyFrom(data))
                        .setContentType(contentType))
                .build());
  }

  /**
   * An answer holding a string over 20,000,000 characters (Jackson's default bound) is cached and
   * read back as JSON, on the miss and on the hit. (It was refused on reading: the miss returned
   * the answer in a POJONode, and the hit was not JSON.)
   */
  @Test
  void anAnswerWithAStringOver20MillionCharactersReadsBackAsJson() {
    Cache cache = client.cache();
    cache.putNamespace(CacheNamespace.newBuilder().setName("java-big-strings").build());
    String big = "x".repeat(20_000_001);
    Cache.Result miss =
        cache.getOrCall(
            "java-big-strings", "long", NONE, () -> Cache.Computed.of(Map.of("text", big)));
    assertTrue(miss.value().isObject(), miss.value().getNodeType().toString());
    assertEquals(big, miss.value().path("text").asText());
    CacheHit hit = cache.lookup("java-big-strings", "long", NONE).orElseThrow();
    assertTrue(hit.isJson(), hit.contentType());
    assertEquals(big, hit.value().path("text").asText());
  }

  /**
   * getOrCall returns on a miss what a later hit returns: the answer encoded as it is stored and
   * read back, not Jackson's tree of the Java value (a float 0.1 would be a FloatNode worth
   * 0.10000000149011612 on the miss and the double 0.1 on the hit).
   */
  @Test
  void updateNamespaceKeepsWhatItDoesNotNameAndDeleteNamespaceFreesTheName() {
    Cache cache = client.cache();
    String ns = "java-namespace";
    cache.putNamespace(
        CacheNamespace.newBuilder().setName(ns).setMaxEntries(50).setDescription("kept").build());
    CacheNamespace updated =
        cache.updateNamespace(
            CacheNamespace.newBuilder().setName(ns).setSimilarityThreshold(0.8).build(),
            "similarity_threshold");
    assertEquals(0.8, updated.getSimilarityThreshold(), 1e-6);
    assertEquals(50, updated.getMaxEntries());
    assertEquals("kept", updated.getDescription());
    AreException immutable =
        assertThrows(
            AreException.class,
            () -> cache.updateNamespace(CacheNamespace.newBuilder().setName(ns).build(), "dimension"));
    assertEquals(io.grpc.Status.Code.INVALID_ARGUMENT, immutable.code());

    cache.store(ns, "What is the capital of Spain?", "Madrid", NONE);
    cache.store(ns, "What is the capital of Italy?", "Rome", NONE);
    assertEquals(2, cache.deleteNamespace(ns));
    AreException gone =
        assertThrows(
            AreException.class, () -> cache.lookup(ns, "What is the capital of Spain?", NONE));
    assertEquals(io.grpc.Status.Code.NOT_FOUND, gone.code());
    assertEquals("NAMESPACE_NOT_FOUND", gone.reason());
    assertTrue(cache.putNamespace(CacheNamespace.newBuilder().setName(ns).build()).getCreated());
    assertTrue(cache.lookup(ns, "What is the capital of Spain?", NONE).isEmpty());
  }

  @Test
  void getOrCallReturnsOnAMissWhatALaterHitReturns() {
    Cache cache = client.cache();
    cache.putNamespace(CacheNamespace.newBuilder().setName("java-types").build());
    Map<String, Object> nested = new LinkedHashMap<>();
    nested.put("score", 0.1f);
    nested.put("count", 5L);
    nested.put("exact", new BigDecimal("0.10000000000000000001"));
    List<Object> answers =
        List.of(
            0.1f,
            new BigDecimal("0.10000000000000000001"),
            new byte[] {1, 2, 3},
            5L,
            (short) 7,
            nested,
            RawPayload.of("plain words", "text/plain"));
    for (int i = 0; i < answers.size(); i++) {
      Object answer = answers.get(i);
      String prompt = "question number " + i;
      String what = answer.getClass().getSimpleName() + " " + i;
      AtomicInteger calls = new AtomicInteger();
      Cache.Result miss =
          cache.getOrCall(
              "java-types",
              prompt,
              NONE,
              () -> {
                calls.incrementAndGet();
                return Cache.Computed.of(answer);
              });
      assertFalse(miss.isHit(), what);
      Cache.Result hit = hitOnly(cache, "java-types", prompt);
      assertTrue(hit.isHit(), what);
      assertEquals(1, calls.get(), what);
      assertEquals(hit.value(), miss.value(), what);
      assertSame(hit.value().getClass(), miss.value().getClass(), what);
      assertEquals(hit.value().toString(), miss.value().toString(), what);
    }
    assertEquals(0.1, hitOnly(cache, "java-types", "question number 0").value().asDouble());
    assertEquals(
        "AQID", hitOnly(cache, "java-types", "question number 2").value().asText(), "base64");
    JsonNode five = hitOnly(cache, "java-types", "question number 3").value();
    assertTrue(five.isInt(), five.getNodeType().toString());
    assertEquals(
        RawPayload.of("plain words", "text/plain"),
        hitOnly(cache, "java-types", "question number 6").raw().orElseThrow());
  }

  /**
   * An answer the SDK cannot write as JSON (a java.time value: the mapper has no module for it)
   * was paid for: getOrCall returns it as it is, does not store it, and does not throw.
   */
  @Test
  void getOrCallReturnsAnAnswerItCannotEncodeWithoutStoringIt() {
    Cache cache = client.cache();
    cache.putNamespace(CacheNamespace.newBuilder().setName("java-unencodable").build());
    Map<String, Object> answer = Map.of("when", Instant.parse("2024-01-01T00:00:00Z"));
    AtomicInteger calls = new AtomicInteger();
    for (int i = 1; i <= 2; i++) {
      Cache.Result r =
          cache.getOrCall(
              "java-unencodable",
              "when was it",
              NONE,
              () -> {
                calls.incrementAndGet();
                return Cache.Computed.of(answer);
              });
      assertFalse(r.isHit(), "not stored, so never a hit");
      assertEquals(i, calls.get());
      assertInstanceOf(POJONode.class, r.value());
      assertSame(answer, ((POJONode) r.value()).getPojo(), "returned as the call returned it");
      assertSame(answer, Json.convert(r.value(), Map.class));
      assertTrue(r.raw().isEmpty(), "not a stored response");
    }
    assertTrue(cache.lookup("java-unencodable", "when was it", NONE).isEmpty());
    AreException refused =
        assertThrows(
            AreException.class, () -> cache.store("java-unencodable", "when", answer, NONE));
    assertEquals("INVALID_JSON", refused.reason());
  }

  /**
   * Entries another SDK stored as bytes or text (not JSON) are hits like any other: lookup gives
   * their bytes and content type, and getOrCall returns them (a RawPayload, as the Python SDK
   * does) instead of failing to parse them as JSON for good. JSON content types (application/json
   * with parameters, *+json) are decoded; JSON that does not parse is returned as bytes too.
   */
  @Test
  void entriesThatAreNotJsonAreHits() {
    Cache cache = client.cache();
    cache.putNamespace(CacheNamespace.newBuilder().setName("shared").build());
    byte[] png = {(byte) 0x89, 'P', 'N', 'G', '\r', '\n'};
    storeRaw("shared", "render the logo", png, "application/octet-stream");
    storeRaw("shared", "plain text", "hello world".getBytes(UTF_8), "text/plain");
    storeRaw("shared", "broken json", "{\"a\":".getBytes(UTF_8), "application/json");
    storeRaw("shared", "typed json", "{\"a\":1}".getBytes(UTF_8), "application/vnd.are+json; v=1");

    CacheHit logo = cache.lookup("shared", "render the logo", NONE).orElseThrow();
    assertArrayEquals(png, logo.data());
    assertEquals("application/octet-stream", logo.contentType());
    assertFalse(logo.isJson());
    assertEquals(new RawPayload(png, "application/octet-stream"), logo.raw());
    assertEquals(logo.raw(), Json.convert(logo.value(), RawPayload.class));

    CacheHit typed = cache.lookup("shared", "typed json", NONE).orElseThrow();
    assertTrue(typed.isJson());
    assertEquals(1, typed.value().path("a").asInt());

    Map<String, RawPayload> raw =
        Map.of(
            "render the logo", new RawPayload(png, "application/octet-stream"),
            "plain text", RawPayload.of("hello world", "text/plain"),
            "broken json", RawPayload.of("{\"a\":", "application/json"));
    for (Map.Entry<String, RawPayload> e : raw.entrySet()) {
      Cache.Result r = hitOnly(cache, "shared", e.getKey());
      assertTrue(r.isHit(), e.getKey());
      assertEquals(e.getValue(), r.raw().orElseThrow(), e.getKey());
      assertEquals(e.getValue(), r.hit().orElseThrow().raw(), e.getKey());
    }
    assertEquals("hello world", hitOnly(cache, "shared", "plain text").raw().orElseThrow().text());

    // Stored back as read, it stays what it was (not a JSON object describing it).
    cache.store("shared", "the logo again", logo.value(), NONE);
    CacheHit again = cache.lookup("shared", "the logo again", NONE).orElseThrow();
    assertArrayEquals(png, again.data());
    assertEquals("application/octet-stream", again.contentType());
  }

  /** The content types read as JSON follow the other SDKs' rule. */
  @Test
  void jsonContentTypes() {
    for (String json :
        List.of("", "application/json", "Application/JSON; charset=utf-8", "application/x+json")) {
      assertTrue(Json.isJsonContentType(json), json);
    }
    for (String other : List.of("text/plain", "application/octet-stream", "application/jsonl")) {
      assertFalse(Json.isJsonContentType(other), other);
    }
  }
}
