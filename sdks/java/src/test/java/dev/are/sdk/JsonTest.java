package dev.are.sdk;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.fasterxml.jackson.databind.JsonNode;
import org.junit.jupiter.api.Test;

/** The JSON codec, without a server: values nested as deep as the sidecar stores them. */
class JsonTest {
  /** How deep the sidecar lets JSON nest arrays and objects ({@code []} is 1 deep). */
  private static final int MAX_DEPTH = 512;

  /** JSON text nesting arrays and objects in turn {@code depth} deep around a string. */
  private static String nested(int depth) {
    StringBuilder open = new StringBuilder();
    StringBuilder close = new StringBuilder();
    for (int level = 0; level < depth; level++) {
      if (level % 2 == 0) {
        open.append('[');
        close.append(']');
      } else {
        open.append("{\"a\":");
        close.append('}');
      }
    }
    return open + "\"leaf\"" + close.reverse();
  }

  @Test
  void jsonNested512DeepDecodesAndEncodes() {
    String text = nested(MAX_DEPTH);
    byte[] bytes = text.getBytes(UTF_8);
    JsonNode tree = Json.decode(bytes);
    assertEquals(text, new String(Json.encode(tree), UTF_8));
    assertEquals(text, Json.payload(tree).getData().toStringUtf8());
    assertEquals(tree, Json.convert(tree, JsonNode.class));
    Object plain = Json.decode(bytes, Object.class); // lists and maps
    assertEquals(text, new String(Json.encode(plain), UTF_8));
    assertEquals(tree, Json.mapper().valueToTree(plain));
  }

  @Test
  void jsonNestedFarDeeperIsInvalidNotAStackOverflow() {
    AreException e =
        assertThrows(AreException.class, () -> Json.decode(nested(100_000).getBytes(UTF_8)));
    assertEquals("INVALID_JSON", e.reason());
  }

  /**
   * Strings, member names and numbers as long as the sidecar hands back decode: Jackson's default
   * constraints refused a string over 20,000,000 characters, a name over 50,000 and a number over
   * 1,000 digits (the sidecar takes doubles of any length and integers of 4,300 digits).
   */
  @Test
  void stringsNamesAndNumbersAsLongAsTheSidecarTakesDecode() {
    String big = "x".repeat(20_000_001);
    JsonNode tree = Json.decode(("{\"text\":\"" + big + "\"}").getBytes(UTF_8));
    assertEquals(big.length(), tree.path("text").asText().length());
    String name = "n".repeat(60_000);
    assertEquals(1, Json.decode(("{\"" + name + "\":1}").getBytes(UTF_8)).path(name).asInt());
    String integer = "7".repeat(4_300);
    assertEquals(integer, Json.decode(integer.getBytes(UTF_8)).bigIntegerValue().toString());
    String dbl = "0." + "3".repeat(10_000);
    assertEquals(1.0 / 3, Json.decode(dbl.getBytes(UTF_8)).doubleValue(), 1e-15);
  }
}
