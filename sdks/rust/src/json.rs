//! JSON to and from the sidecar, nested as deep as the sidecar stores it.
//!
//! The sidecar keeps JSON values that nest arrays and objects up to 512 deep,
//! but serde_json stops at 127 levels by default. So every decode of a value
//! from the sidecar or a peer goes through [`from_slice`] or [`from_value`],
//! and every encode through [`to_vec`]:
//!
//! - serde_json's own limit is off (its `unbounded_depth` feature) and the
//!   SDK keeps the sidecar's bound instead: text nested more than
//!   [`MAX_DEPTH`] deep is refused before it is parsed, so a hostile document
//!   cannot make a parse take stack or memory in proportion to its depth;
//! - within that bound, the parse and the encode recurse through
//!   serde_stacker, which moves to a new stack segment on the heap when the
//!   thread's runs low, so how deep a value can be read or written does not
//!   depend on the stack of the thread that does it (512 levels take about
//!   0.8 MiB in a debug build, a tokio worker thread has 2 MiB);
//! - a double reads back as the double written, to the bit (serde_json's
//!   `float_roundtrip` feature; without it about one in ten came back a unit
//!   in the last place off). Integers are exact within i64 and u64; past
//!   them they read as the nearest double (see the README, "JSON numbers").
//!
//! [`is_json_content_type`] tells JSON payloads by their content type, as
//! the Python SDK does: a cache hit of another type is read as its bytes.

use serde::de::{DeserializeOwned, Error as _};
use serde::Serialize;
use serde_json::Value;

/// How deep a JSON value may nest arrays and objects (`[]` is 1 deep, a
/// scalar 0): the sidecar's bound (`MAX_JSON_DEPTH`).
pub(crate) const MAX_DEPTH: usize = 512;

/// Decodes JSON `text` into `T`; text nested more than [`MAX_DEPTH`] deep is
/// an error.
pub(crate) fn from_slice<T: DeserializeOwned>(text: &[u8]) -> serde_json::Result<T> {
    if nests_deeper_than(text, MAX_DEPTH) {
        return Err(serde_json::Error::custom(format!(
            "nests arrays and objects more than {MAX_DEPTH} deep"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit(); // the bound above stands in for it
    let value = T::deserialize(serde_stacker::Deserializer::new(&mut de))?;
    de.end()?;
    Ok(value)
}

/// Converts a decoded value into `T`, with the stack growing as it goes.
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value) -> serde_json::Result<T> {
    T::deserialize(serde_stacker::Deserializer::new(value))
}

/// Encodes `value` as compact JSON text (the text of `value.to_string()`),
/// with the stack growing as it goes. Any depth is written: the sidecar
/// judges what it takes.
pub(crate) fn to_vec(value: &Value) -> Vec<u8> {
    let mut text = Vec::new();
    value
        .serialize(serde_stacker::Serializer::new(
            &mut serde_json::Serializer::new(&mut text),
        ))
        .expect("a Value always encodes: its keys are strings and a Vec takes every write");
    text
}

/// Whether a payload of `content_type` is JSON, as the Python SDK decides
/// (`is_json_content_type`): "" (the contract's default),
/// `application/json` and any `*+json`, in any case, parameters aside.
pub(crate) fn is_json_content_type(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base.is_empty()
        || base.eq_ignore_ascii_case(crate::workflow::JSON_CONTENT_TYPE)
        || base.to_ascii_lowercase().ends_with("+json")
}

/// Whether JSON `text` nests arrays and objects more than `limit` deep. One
/// pass that counts the brackets outside strings: exact for JSON text, and
/// text that is not JSON is left to the parser to refuse.
fn nests_deeper_than(text: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON text nesting `depth` levels, arrays and objects in turn, around a
    /// string full of brackets and escaped quotes (which do not nest).
    fn nested_text(depth: usize) -> String {
        let (mut open, mut close) = (String::new(), String::new());
        for level in 0..depth {
            if level % 2 == 0 {
                open.push('[');
                close.insert(0, ']');
            } else {
                open.push_str(r#"{"a":"#);
                close.insert(0, '}');
            }
        }
        format!(r#"{open}"[{{\"[\\"{close}"#)
    }

    #[test]
    fn json_nested_512_deep_decodes_and_encodes() {
        let text = nested_text(MAX_DEPTH);
        let value: Value = from_slice(text.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(to_vec(&value)).unwrap(), text);
        assert_eq!(to_vec(&value), value.to_string().into_bytes());
        assert_eq!(from_value::<Value>(&value).unwrap(), value);
        let outer: Vec<Value> = from_slice(text.as_bytes()).unwrap();
        assert_eq!(outer.len(), 1);
    }

    #[test]
    fn json_nested_past_512_deep_is_refused() {
        let e = from_slice::<Value>(nested_text(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(e.to_string(), "nests arrays and objects more than 512 deep");
        let e = crate::Error::from(e);
        assert_eq!(
            (e.code, e.reason.as_str()),
            (tonic::Code::InvalidArgument, "INVALID_JSON")
        );
        // Brackets in strings do not nest; other errors are the parser's.
        let brackets = format!(r#"["{}"]"#, "[{".repeat(MAX_DEPTH));
        assert!(from_slice::<Value>(brackets.as_bytes()).is_ok());
        assert!(from_slice::<Value>(b"[1] x").is_err());
        assert!(from_slice::<Value>(b"[1").is_err());
    }

    #[test]
    fn doubles_decode_to_the_double_encoded() {
        // Bit patterns from xorshift64: every exponent, every mantissa.
        let (mut x, mut checked) = (0x9E37_79B9_7F4A_7C15_u64, 0);
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let double = f64::from_bits(x);
            if !double.is_finite() {
                continue;
            }
            let text = to_vec(&serde_json::json!(double));
            let back: f64 = from_slice(&text).unwrap();
            assert_eq!(
                back.to_bits(),
                double.to_bits(),
                "{} read back as {back:e}",
                String::from_utf8_lossy(&text)
            );
            checked += 1;
        }
        assert!(checked > 199_000);
        let back: Value = from_slice(b"0.9856906946328695").unwrap();
        assert_eq!(back.to_string(), "0.9856906946328695");
    }

    #[test]
    fn json_content_types_are_the_python_sdks() {
        for json in [
            "",
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/problem+json ",
            "application/vnd.are.v1+JSON;v=2",
        ] {
            assert!(is_json_content_type(json), "{json:?}");
        }
        for other in [
            "application/octet-stream",
            "text/plain",
            "text/json",
            "application/jsonl",
            "application/json-seq",
        ] {
            assert!(!is_json_content_type(other), "{other:?}");
        }
    }

    #[test]
    fn json_nested_512_deep_decodes_and_encodes_on_a_small_stack() {
        let text = nested_text(MAX_DEPTH);
        // 128 KiB: what 512 levels take without a growing stack is several
        // times that in a debug build.
        let (value, encoded) = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn({
                let text = text.clone();
                move || {
                    let value: Value = from_slice(text.as_bytes()).unwrap();
                    let encoded = to_vec(&value);
                    (value, encoded) // dropped on the test's own stack
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(encoded, text.into_bytes());
        drop(value);
    }
}
