//! JSON read as Go's `encoding/json` reads it, where that changes whether Flux accepts a body:
//! `json.Decoder` takes the first value and ignores what follows, invalid UTF-8 inside strings
//! becomes U+FFFD, `null` leaves a field at its zero value, object keys match struct fields
//! case-insensitively, and only a value of the wrong type is refused.

use serde::Deserialize as _;
use serde_json::Value;

/// The first JSON value of `body`, as `json.NewDecoder(body).Decode` reads it: what follows it
/// is not looked at.
pub fn first_value(body: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(body);
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    Value::deserialize(&mut deserializer).map_err(|e| e.to_string())
}

/// The whole of `body` as one JSON value, as `json.Unmarshal` reads it: only white space may
/// follow the value.
pub fn whole(body: &[u8]) -> Result<Value, String> {
    serde_json::from_str(&String::from_utf8_lossy(body)).map_err(|e| e.to_string())
}

/// The Go type a value is decoded into.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    String,
    /// `[]string`.
    Strings,
    /// `time.Time`: an RFC 3339 string.
    Time,
    /// A struct: its fields' JSON names and shapes; other keys are ignored.
    Object(&'static [(&'static str, Shape)]),
}

/// Whether Go would decode `value` into `shape` without error; the message names the field.
pub fn check(value: &Value, shape: Shape) -> Result<(), String> {
    check_at(value, shape, "")
}

fn check_at(value: &Value, shape: Shape, path: &str) -> Result<(), String> {
    let mismatch = || {
        let at = if path.is_empty() { "the body" } else { path };
        format!(
            "{at}: cannot decode {} into {}",
            describe(value),
            go_type(shape)
        )
    };
    match (shape, value) {
        // Go leaves the zero value for null, whatever the type.
        (_, Value::Null) | (Shape::String, Value::String(_)) => Ok(()),
        (Shape::Time, Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|_| ())
            .map_err(|e| format!("{path}: not an RFC 3339 time: {e}")),
        (Shape::Strings, Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_at(v, Shape::String, &format!("{path}[{i}]"))),
        (Shape::Object(fields), Value::Object(_)) => fields.iter().try_for_each(|(name, shape)| {
            field(value, name).map_or(Ok(()), |v| {
                let path = if path.is_empty() {
                    (*name).to_owned()
                } else {
                    format!("{path}.{name}")
                };
                check_at(v, *shape, &path)
            })
        }),
        _ => Err(mismatch()),
    }
}

/// The value Go decodes into the struct field `name`: the key spelled exactly so, else the
/// first spelled so in another case.
pub fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.get(name).or_else(|| {
        map.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The string Go decodes into a `string` field `name` (empty when absent or null).
pub fn string_field(object: &Value, name: &str) -> String {
    field(object, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The JSON type of a value, for messages.
pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn go_type(shape: Shape) -> &'static str {
    match shape {
        Shape::String => "a string",
        Shape::Strings => "a list of strings",
        Shape::Time => "a time",
        Shape::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PAYLOAD: Shape = Shape::Object(&[
        ("docker_url", Shape::String),
        ("updated_tags", Shape::Strings),
        ("target", Shape::Object(&[("tag", Shape::String)])),
    ]);

    #[test]
    fn the_decoder_reads_the_first_value_and_unmarshal_the_whole_body() {
        assert_eq!(first_value(b"{\"a\":1} trailing"), Ok(json!({"a": 1})));
        assert_eq!(first_value(b" null "), Ok(Value::Null));
        assert!(first_value(b"   ").is_err());
        assert!(first_value(b"{\"a\":").is_err());
        assert!(whole(b"{\"a\":1} trailing").is_err());
        assert_eq!(whole(b"{\"a\":1}\n"), Ok(json!({"a": 1})));
    }

    #[test]
    fn invalid_utf8_in_strings_is_replaced_not_refused() {
        assert_eq!(
            first_value(b"{\"a\":\"x\xffy\"}"),
            Ok(json!({"a": "x\u{fffd}y"}))
        );
    }

    #[test]
    fn null_unknown_and_differently_cased_keys_decode_as_in_go() {
        for ok in [
            json!(null),
            json!({}),
            json!({"docker_url": null, "updated_tags": null, "target": null}),
            json!({"updated_tags": ["a", null], "other": 1}),
            json!({"Docker_URL": "quay.io/x", "TARGET": {"TAG": "v1"}}),
        ] {
            assert_eq!(check(&ok, PAYLOAD), Ok(()), "{ok}");
        }
        assert_eq!(
            string_field(&json!({"Docker_URL": "quay.io/x"}), "docker_url"),
            "quay.io/x"
        );
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_naming_the_field() {
        for (bad, says) in [
            (json!([]), "the body: cannot decode an array into an object"),
            (
                json!({"docker_url": 1}),
                "docker_url: cannot decode a number",
            ),
            (
                json!({"updated_tags": "v1"}),
                "updated_tags: cannot decode a string",
            ),
            (
                json!({"updated_tags": [1]}),
                "updated_tags[0]: cannot decode a number",
            ),
            (
                json!({"Target": {"tag": true}}),
                "target.tag: cannot decode a boolean",
            ),
        ] {
            let message = check(&bad, PAYLOAD).expect_err("refused");
            assert!(message.starts_with(says), "{message}");
        }
        let time = Shape::Object(&[("publishTime", Shape::Time)]);
        assert!(check(&json!({"publishTime": "2026-11-24T00:00:00Z"}), time).is_ok());
        assert!(check(&json!({"publishTime": "yesterday"}), time).is_err());
    }
}
