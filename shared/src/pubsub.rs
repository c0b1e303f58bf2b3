//! Google Cloud Pub/Sub push messages, as gcr receivers get them: the envelope's message id
//! and the Artifact/Container Registry event carried base64-encoded in its `data`.

use base64::Engine as _;
use serde::Deserialize;

/// The registry event of a push message, and the message's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub message_id: Option<String>,
    /// `{action, digest, tag}`: what Flux decodes, and the `req` of a gcr receiver's filters.
    pub event: serde_json::Value,
}

#[derive(Deserialize)]
struct Envelope {
    message: Message,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    #[serde(default)]
    data: String,
    #[serde(default)]
    message_id: Option<String>,
}

#[derive(Deserialize, serde::Serialize)]
struct Event {
    #[serde(default)]
    action: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    tag: String,
}

/// Parses a push request body; the message says what is wrong with it.
pub fn parse(body: &[u8]) -> Result<PushMessage, String> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| format!("not a Pub/Sub push message: {e}"))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(envelope.message.data.trim())
        .map_err(|e| format!("message.data is not base64: {e}"))?;
    let event: Event = serde_json::from_slice(&data)
        .map_err(|e| format!("message.data is not a registry event: {e}"))?;
    Ok(PushMessage {
        message_id: envelope.message.message_id.filter(|id| !id.is_empty()),
        event: serde_json::to_value(event).map_err(|e| e.to_string())?,
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
