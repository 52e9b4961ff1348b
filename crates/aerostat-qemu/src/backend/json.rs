//! Small, lenient field readers for QMP reply objects.

use serde_json::{Map, Value};

use crate::qmp::QmpError;

/// The reply as an object, or a `Protocol` error naming the command.
pub(crate) fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, QmpError> {
    v.as_object()
        .ok_or_else(|| QmpError::protocol(format!("{what}: expected an object, got {}", kind(v))))
}

/// A non-negative integer field; anything else (missing, negative, float, string) is `None`.
pub(crate) fn opt_u64(obj: &Map<String, Value>, key: &str) -> Option<u64> {
    obj.get(key).and_then(Value::as_u64)
}

pub(crate) fn opt_i64(obj: &Map<String, Value>, key: &str) -> Option<i64> {
    obj.get(key).and_then(Value::as_i64)
}

pub(crate) fn opt_f64(obj: &Map<String, Value>, key: &str) -> Option<f64> {
    obj.get(key)
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite())
}

pub(crate) fn opt_str(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_string)
}

pub(crate) fn opt_bool(obj: &Map<String, Value>, key: &str) -> Option<bool> {
    obj.get(key).and_then(Value::as_bool)
}

/// A required non-negative integer field.
pub(crate) fn req_u64(obj: &Map<String, Value>, key: &str, what: &str) -> Result<u64, QmpError> {
    opt_u64(obj, key).ok_or_else(|| missing(obj, key, what, "a non-negative integer"))
}

pub(crate) fn req_str(obj: &Map<String, Value>, key: &str, what: &str) -> Result<String, QmpError> {
    opt_str(obj, key).ok_or_else(|| missing(obj, key, what, "a string"))
}

pub(crate) fn req_bool(obj: &Map<String, Value>, key: &str, what: &str) -> Result<bool, QmpError> {
    opt_bool(obj, key).ok_or_else(|| missing(obj, key, what, "a boolean"))
}

fn missing(obj: &Map<String, Value>, key: &str, what: &str, expected: &str) -> QmpError {
    match obj.get(key) {
        None => QmpError::protocol(format!("{what}: field `{key}` is missing")),
        Some(v) => QmpError::protocol(format!(
            "{what}: field `{key}` should be {expected}, got {}",
            kind(v)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
