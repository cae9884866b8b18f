//! Event attributes a handler attaches to the events it reports
//! (event.proto `AttributeValue`), and the options of
//! [`Task::report_llm_call_with`](super::Task::report_llm_call_with) and
//! [`Task::report_tool_call_with`](super::Task::report_tool_call_with).

use std::collections::HashMap;

use tonic::Code;

use crate::error::{Error, FieldViolation};
use crate::pb;

/// One event attribute's value: a string (at most 16 KiB), a 64-bit integer,
/// a finite double or a boolean, as event.proto's `AttributeValue`. Any of
/// those Rust types converts into one with `.into()`; a NaN or an infinity
/// is refused when the event is reported.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    /// A UTF-8 string.
    String(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A double; it must be finite.
    Double(f64),
    /// A boolean.
    Bool(bool),
}

/// Event attributes by key: at most 64, keys 1 to 128 characters (the
/// sidecar's bounds, past which it refuses the event).
pub type Attributes = HashMap<String, AttributeValue>;

impl From<String> for AttributeValue {
    fn from(v: String) -> Self {
        AttributeValue::String(v)
    }
}

impl From<&str> for AttributeValue {
    fn from(v: &str) -> Self {
        AttributeValue::String(v.to_string())
    }
}

impl From<i64> for AttributeValue {
    fn from(v: i64) -> Self {
        AttributeValue::Int(v)
    }
}

impl From<i32> for AttributeValue {
    fn from(v: i32) -> Self {
        AttributeValue::Int(v.into())
    }
}

impl From<u32> for AttributeValue {
    fn from(v: u32) -> Self {
        AttributeValue::Int(v.into())
    }
}

impl From<f64> for AttributeValue {
    fn from(v: f64) -> Self {
        AttributeValue::Double(v)
    }
}

impl From<f32> for AttributeValue {
    fn from(v: f32) -> Self {
        AttributeValue::Double(v.into())
    }
}

impl From<bool> for AttributeValue {
    fn from(v: bool) -> Self {
        AttributeValue::Bool(v)
    }
}

/// What [`Task::report_llm_call_with`](super::Task::report_llm_call_with)
/// records beyond the model, usage and duration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LlmCallOptions {
    /// The provider ("openai", "anthropic", ...): attribute `gen_ai.system`;
    /// empty: none.
    pub provider: String,
    /// The model that answered, when it differs from the one asked for:
    /// attribute `gen_ai.response.model`; empty: none.
    pub response_model: String,
    /// Further attributes; a key here wins over the two above.
    pub attributes: Attributes,
}

/// What [`Task::report_tool_call_with`](super::Task::report_tool_call_with)
/// records beyond the tool's name and duration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCallOptions {
    /// The model's id for the call: attribute `gen_ai.tool.call.id`; empty:
    /// none.
    pub call_id: String,
    /// Further attributes; a key here wins over `call_id`'s.
    pub attributes: Attributes,
}

/// The attributes as sent: `named` (empty values left out), then `extra`
/// over them; a non-finite double is INVALID_ARGUMENT naming the attribute,
/// before anything is sent (boxed, as this is not an async fn's result: the
/// caller unboxes it).
pub(crate) fn to_proto(
    named: &[(&str, &str)],
    extra: impl IntoIterator<Item = (String, AttributeValue)>,
) -> Result<HashMap<String, pb::AttributeValue>, Box<Error>> {
    use pb::attribute_value::Value;
    let mut out = HashMap::new();
    for (key, value) in named.iter().filter(|(_, v)| !v.is_empty()) {
        let value = Value::StringValue(value.to_string());
        out.insert(key.to_string(), pb::AttributeValue { value: Some(value) });
    }
    for (key, value) in extra {
        let value = match value {
            AttributeValue::String(s) => Value::StringValue(s),
            AttributeValue::Int(i) => Value::IntValue(i),
            AttributeValue::Bool(b) => Value::BoolValue(b),
            AttributeValue::Double(d) if d.is_finite() => Value::DoubleValue(d),
            AttributeValue::Double(d) => {
                let description = format!("is {d}: event attributes must be finite numbers");
                let mut e = Error::local(
                    Code::InvalidArgument,
                    "INVALID_ARGUMENT",
                    format!("attribute {key:?} {description}"),
                );
                e.field_violations.push(FieldViolation {
                    field: format!("attributes['{key}']"),
                    description,
                });
                return Err(Box::new(e));
            }
        };
        out.insert(key, pb::AttributeValue { value: Some(value) });
    }
    Ok(out)
}
