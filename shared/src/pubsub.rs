//! Google Cloud Pub/Sub push messages, as gcr receivers get them: the envelope's message id
//! and the Artifact/Container Registry event carried base64-encoded in its `data`.

use base64::Engine as _;

use crate::gojson::{self, Shape};

/// The registry event of a push message, and the message's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub message_id: Option<String>,
    /// `{action, digest, tag}`: what Flux decodes, and the `req` of a gcr receiver's filters.
    pub event: serde_json::Value,
}

/// The push request as Flux decodes it.
const ENVELOPE: Shape = Shape::Object(&[(
    "message",
    Shape::Object(&[
        ("data", Shape::String),
        ("messageId", Shape::String),
        ("publishTime", Shape::Time),
        ("subscription", Shape::String),
    ]),
)]);

/// The registry event in `message.data`, as Flux decodes it.
const EVENT_FIELDS: [&str; 3] = ["action", "digest", "tag"];
const EVENT: Shape = Shape::Object(&[
    ("action", Shape::String),
    ("digest", Shape::String),
    ("tag", Shape::String),
]);

/// Parses a push request body as Flux does (Go's decoder: the first JSON value of the body,
/// `null`s and unknown keys allowed); the message says what is wrong with it.
pub fn parse(body: &[u8]) -> Result<PushMessage, String> {
    let not_push = |e: String| format!("not a Pub/Sub push message: {e}");
    let envelope = gojson::first_value(body).map_err(not_push)?;
    gojson::check(&envelope, ENVELOPE).map_err(not_push)?;
    let message = gojson::field(&envelope, "message")
        .cloned()
        .unwrap_or_default();
    // Go's decoder skips line breaks in base64; nothing else.
    let data = gojson::string_field(&message, "data").replace(['\r', '\n'], "");
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("message.data is not base64: {e}"))?;
    let not_event = |e: String| format!("message.data is not a registry event: {e}");
    let event = gojson::whole(&data).map_err(not_event)?;
    gojson::check(&event, EVENT).map_err(not_event)?;
    let event = EVENT_FIELDS
        .iter()
        .map(|name| {
            (
                (*name).to_owned(),
                gojson::string_field(&event, name).into(),
            )
        })
        .collect::<serde_json::Map<_, _>>();
    let message_id = gojson::string_field(&message, "messageId");
    Ok(PushMessage {
        message_id: Some(message_id).filter(|id| !id.is_empty()),
        event: serde_json::Value::Object(event),
    })
}

/// A push body for `event` (tests and the sample sender).
pub fn envelope(event: &serde_json::Value, message_id: &str) -> serde_json::Value {
    let data = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    serde_json::json!({
        "message": {"data": data, "messageId": message_id, "publishTime": "2026-11-24T00:00:00Z"},
        "subscription": "projects/p/subscriptions/gcr",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unwraps_the_registry_event_and_the_message_id() {
        let event = json!({"action": "INSERT", "digest": "gcr.io/p/app@sha256:1", "tag": "gcr.io/p/app:1.0"});
        let body = envelope(&event, "m-1").to_string();
        let parsed = parse(body.as_bytes()).expect("valid");
        assert_eq!(parsed.message_id.as_deref(), Some("m-1"));
        assert_eq!(parsed.event, event);
    }

    #[test]
    fn decodes_as_go_does_trailing_data_nulls_and_key_case_aside() {
        let event = json!({"Action": "INSERT", "tag": null, "extra": 1});
        let mut body = envelope(&event, "m-2");
        body["message"]["publishTime"] = json!(null);
        let body = format!("{body} trailing");
        let parsed = parse(body.as_bytes()).expect("Go accepts it");
        assert_eq!(
            parsed.event,
            json!({"action": "INSERT", "digest": "", "tag": ""})
        );
        let mut late = envelope(&event, "m-3");
        late["message"]["publishTime"] = json!("not a time");
        assert!(parse(late.to_string().as_bytes()).is_err());
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        assert!(
            parse(b"[]")
                .expect_err("array")
                .contains("not a Pub/Sub push message")
        );
        let bad = json!({"message": {"data": "%%%"}}).to_string();
        assert!(
            parse(bad.as_bytes())
                .expect_err("data")
                .contains("not base64")
        );
    }
}
