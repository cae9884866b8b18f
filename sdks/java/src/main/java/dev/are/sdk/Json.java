package dev.are.sdk;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.NullNode;
import com.google.protobuf.ByteString;
import dev.are.sdk.v1.Payload;
import io.grpc.Status;
import java.io.IOException;
import java.util.Locale;

/**
 * JSON for task inputs, outputs, cache responses and heartbeat details (Jackson). Any value
 * Jackson can serialise is accepted: a {@link JsonNode}, a record, a map, a string, a number.
 */
public final class Json {
  /** Content type of JSON payloads. */
  public static final String CONTENT_TYPE = "application/json";

  /**
   * The longest string (and member name) read, in characters: 256 MiB, the largest blob the
   * sidecar stores, so that no value it hands back is too long to read. (Jackson's default is 20
   * million characters: a cache hit, result or state value holding a longer string was refused.)
   */
  static final int MAX_STRING_CHARS = 256 * 1024 * 1024;

  /**
   * The deepest nesting of arrays and objects read: Jackson's default of 1,000, set here so that it
   * stays at least the sidecar's 512 (how deep it stores state and reads inputs).
   */
  static final int MAX_NESTING_DEPTH = 1000;

  /**
   * What the mapper reads. Numbers are as long as a string may be: the sidecar takes a double of
   * any length (and integers to 4,300 digits, Python's bound), where Jackson stopped at 1,000
   * characters; long integers are parsed by Jackson's fast parser, which is not quadratic in their
   * length as {@code new BigInteger(String)} is.
   */
  private static final StreamReadConstraints READ_CONSTRAINTS =
      StreamReadConstraints.builder()
          .maxStringLength(MAX_STRING_CHARS)
          .maxNameLength(MAX_STRING_CHARS)
          .maxNumberLength(MAX_STRING_CHARS)
          .maxNestingDepth(MAX_NESTING_DEPTH)
          .build();

  private static final ObjectMapper MAPPER =
      new ObjectMapper(
              JsonFactory.builder()
                  .streamReadConstraints(READ_CONSTRAINTS)
                  .enable(StreamReadFeature.USE_FAST_BIG_NUMBER_PARSER)
                  .build())
          .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);

  private Json() {}

  /** The mapper the SDK uses (share it; do not reconfigure it). */
  public static ObjectMapper mapper() {
    return MAPPER;
  }

  /**
   * Whether a payload of this content type is JSON: {@code ""} (the contract's default), {@code
   * application/json} and {@code *+json} types, parameters ({@code ; charset=utf-8}) and case
   * aside.
   */
  public static boolean isJsonContentType(String contentType) {
    int semicolon = contentType.indexOf(';');
    String base =
        (semicolon < 0 ? contentType : contentType.substring(0, semicolon))
            .strip()
            .toLowerCase(Locale.ROOT);
    return base.isEmpty() || base.equals(CONTENT_TYPE) || base.endsWith("+json");
  }

  /** Serialises a value to JSON bytes; an unserialisable value is INVALID_ARGUMENT. */
  public static byte[] encode(Object value) {
    try {
      return MAPPER.writeValueAsBytes(value);
    } catch (JsonProcessingException e) {
      throw AreException.local(
          Status.Code.INVALID_ARGUMENT,
          "INVALID_JSON",
          "value cannot be written as JSON: " + e.getOriginalMessage(),
          e);
    }
  }

  /** Parses JSON bytes to a tree; empty bytes are JSON null. */
  public static JsonNode decode(byte[] bytes) {
    if (bytes.length == 0) {
      return NullNode.getInstance();
    }
    try {
      return MAPPER.readTree(bytes);
    } catch (IOException e) {
      throw invalid(e);
    }
  }

  /** Parses JSON bytes to a type; empty bytes are JSON null. */
  public static <T> T decode(byte[] bytes, Class<T> type) {
    try {
      return MAPPER.treeToValue(decode(bytes), type);
    } catch (IOException e) {
      throw invalid(e);
    }
  }

  /** Converts a tree to a type. */
  public static <T> T convert(JsonNode node, Class<T> type) {
    try {
      return MAPPER.treeToValue(node, type);
    } catch (IOException e) {
      throw invalid(e);
    }
  }

  /** A JSON payload of a value, inline. */
  public static Payload payload(Object value) {
    return Payload.newBuilder()
        .setData(ByteString.copyFrom(encode(value)))
        .setContentType(CONTENT_TYPE)
        .build();
  }

  private static AreException invalid(IOException e) {
    return AreException.local(
        Status.Code.INVALID_ARGUMENT, "INVALID_JSON", "payload is not valid JSON: " + e, e);
  }
}
