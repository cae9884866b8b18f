package dev.are.sdk;

import dev.are.sdk.v1.AttributeValue;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Turns the attributes a handler gives {@link TaskContext#reportLlmCall}, {@link
 * TaskContext#reportToolCall} and {@link TaskContext#reportEvent} into event.proto's {@code
 * AttributeValue}s, refusing what the sidecar would (a value of another type, a NaN or an
 * infinity) before anything is sent.
 */
final class EventAttributes {
  private EventAttributes() {}

  /**
   * The attributes as sent: {@code named} (empty or null values left out), then {@code extra}
   * over them (null: none).
   *
   * @throws AreException INVALID_ARGUMENT naming {@code attributes['key']}: a value that is not a
   *     String, Long, Integer, Short, Byte, Double, Float or Boolean, or a non-finite number
   */
  static Map<String, AttributeValue> toProto(Map<String, String> named, Map<String, ?> extra) {
    Map<String, AttributeValue> out = new LinkedHashMap<>();
    named.forEach(
        (key, value) -> {
          if (value != null && !value.isEmpty()) {
            out.put(key, AttributeValue.newBuilder().setStringValue(value).build());
          }
        });
    if (extra != null) {
      extra.forEach((key, value) -> out.put(key, of(key, value)));
    }
    return out;
  }

  private static AttributeValue of(String key, Object value) {
    if (key == null) {
      throw AreException.invalidField("attributes", "has a null key: keys are 1 to 128 characters");
    }
    String field = "attributes['" + key + "']";
    AttributeValue.Builder out = AttributeValue.newBuilder();
    if (value instanceof String s) {
      return out.setStringValue(s).build();
    }
    if (value instanceof Boolean b) {
      return out.setBoolValue(b).build();
    }
    if (value instanceof Long || value instanceof Integer || value instanceof Short
        || value instanceof Byte) {
      return out.setIntValue(((Number) value).longValue()).build();
    }
    if (value instanceof Double || value instanceof Float) {
      double d = ((Number) value).doubleValue();
      if (!Double.isFinite(d)) {
        throw AreException.invalidField(
            field, "is " + d + ": event attributes must be finite numbers");
      }
      return out.setDoubleValue(d).build();
    }
    String type = value == null ? "null" : "a " + value.getClass().getName();
    throw AreException.invalidField(
        field, "is " + type + ": give a String, Long or Integer, Double or Float, or Boolean");
  }
}
