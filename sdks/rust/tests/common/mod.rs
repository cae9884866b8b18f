//! Helpers shared by the integration tests (each test file is its own crate).

use serde_json::{json, Value};

/// A value nesting arrays and objects in turn `depth` deep (`[]` is 1 deep),
/// built a level at a time (`json!` would copy it recursively).
pub fn nested(depth: usize) -> Value {
    let mut value = json!("leaf");
    for level in 0..depth {
        value = if level % 2 == 0 {
            Value::Array(vec![value])
        } else {
            Value::Object(serde_json::Map::from_iter([("a".to_string(), value)]))
        };
    }
    value
}
