//! `cdevents`: no authentication; the body must be a valid CDEvent (checked with the CDEvents
//! SDK, as Flux does with its Go SDK), the event name is `Ce-Type`, the delivery id is the
//! CloudEvents `ce-source` + `ce-id`, else the CDEvent's own `context.source` + `context.id`.
//! Go's SDK decodes leniently -- unknown fields ignored, a missing `subject.content` empty --
//! where the Rust SDK refuses, so the body is first shaped the way Go reads it.

use axum::http::HeaderMap;
use fluxgate_shared::gojson;
use serde::Deserialize as _;
use serde_json::Value;

use super::{Verified, event_name, first_header};
use crate::error::Error;

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    let event =
        parse(body).map_err(|e| Error::BadRequest(format!("unable to validate CDEvent: {e}")))?;
    let delivery_id = match (
        first_header(headers, &["ce-source"]),
        first_header(headers, &["ce-id"]),
    ) {
        (Some(source), Some(id)) => format!("{source}/{id}"),
        _ => format!("{}/{}", event.source(), event.id()),
    };
    Ok(Verified {
        event: event_name(headers, &["ce-type"]),
        delivery_id: Some(delivery_id),
        claims: None,
    })
}

/// The fields of a CDEvent's context and of the event itself, as the SDKs know them.
const CONTEXT_FIELDS: &[&str] = &["version", "id", "source", "type", "timestamp"];
const EVENT_FIELDS: &[&str] = &["context", "subject", "customData", "customDataContentType"];
/// How many unknown content fields are dropped before giving up.
const MAX_UNKNOWN: usize = 32;

/// The CDEvent in `body`, read as Go's SDK reads it.
fn parse(body: &[u8]) -> Result<cdevents_sdk::CDEvent, String> {
    let mut event = gojson::first_value(body)?;
    let Some(fields) = event.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    fields.retain(|key, _| EVENT_FIELDS.contains(&key.as_str()));
    if let Some(context) = fields.get_mut("context").and_then(Value::as_object_mut) {
        context.retain(|key, _| CONTEXT_FIELDS.contains(&key.as_str()));
    }
    if let Some(subject) = fields.get_mut("subject").and_then(Value::as_object_mut) {
        let content = subject.entry("content").or_insert(Value::Null);
        if content.is_null() {
            *content = Value::Object(serde_json::Map::new());
        }
    }
    // The content's fields depend on the event's type; the SDK names an unknown one, which Go
    // would ignore: drop it (wherever in the content it is) and read again.
    for _ in 0..MAX_UNKNOWN {
        match cdevents_sdk::CDEvent::deserialize(&event) {
            Ok(parsed) => return Ok(parsed),
            Err(e) => {
                let message = e.to_string();
                let unknown = message
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned());
                let content = event.pointer_mut("/subject/content");
                let dropped = match (unknown, content) {
                    (Some(name), Some(content)) => remove_key(content, &name),
                    _ => false,
                };
                if !dropped {
                    return Err(message);
                }
            }
        }
    }
    Err("too many unknown fields".into())
}

/// Removes every `key` in `value`'s objects, at any depth; whether there was one.
fn remove_key(value: &mut Value, key: &str) -> bool {
    let mut removed = false;
    match value {
        Value::Object(map) => {
            removed = map.remove(key).is_some();
            for v in map.values_mut() {
                removed |= remove_key(v, key);
            }
        }
        Value::Array(items) => {
            for v in items {
                removed |= remove_key(v, key);
            }
        }
        _ => {}
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::super::test_support::headers;
    use super::*;

    pub const CHANGE_MERGED: &[u8] = br#"{
      "context": {
        "version": "0.4.1",
        "id": "271069a8-fc18-44f1-b38f-9d70a1695819",
        "source": "/event/source/123",
        "type": "dev.cdevents.change.merged.0.2.0",
        "timestamp": "2023-03-20T14:27:05.315384Z"
      },
      "subject": {
        "id": "mySubject123",
        "source": "/event/source/123",
        "type": "change",
        "content": {"repository": {"id": "cdevents/service", "source": "https://example.org"}}
      }
    }"#;

    #[test]
    fn valid_cdevent_uses_ce_headers() {
        let h = headers(&[
            ("ce-type", "dev.cdevents.change.merged.0.2.0"),
            ("ce-source", "/ci"),
            ("ce-id", "42"),
        ]);
        let v = verify(&h, CHANGE_MERGED).expect("valid");
        assert_eq!(v.event.as_deref(), Some("dev.cdevents.change.merged.0.2.0"));
        assert_eq!(v.delivery_id.as_deref(), Some("/ci/42"));
    }

    #[test]
    fn delivery_id_falls_back_to_the_event_context() {
        let v = verify(&headers(&[]), CHANGE_MERGED).expect("valid");
        assert_eq!(
            v.delivery_id.as_deref(),
            Some("/event/source/123/271069a8-fc18-44f1-b38f-9d70a1695819")
        );
    }

    /// The body of notification-controller's cdevents cases: extra context fields, no
    /// `subject.content`, and unknown fields elsewhere, all of which Go's SDK ignores.
    #[test]
    fn fluxs_own_cdevent_is_accepted() {
        let flux = br#"{"context":{"gitRepository":"adamkenihan/notification-controller","gitRevision":"5555","version":"0.3.0","id":"5555","source":"github","timestamp":"2023-12-07T14:51:29.908479495Z","type":"dev.cdevents.change.merged.0.2.0"},"subject":{"type":"change","id":"5555"}}"#;
        let v = verify(&headers(&[("ce-type", "cd.change.merged.v1")]), flux).expect("valid");
        assert_eq!(v.event.as_deref(), Some("cd.change.merged.v1"));
        assert_eq!(v.delivery_id.as_deref(), Some("github/5555"));
        let extra = String::from_utf8_lossy(CHANGE_MERGED)
            .replace(
                "\"id\": \"cdevents/service\"",
                "\"id\": \"cdevents/service\", \"extra\": 1",
            )
            .replace("\"context\": {", "\"custom\": true, \"context\": {");
        assert!(verify(&headers(&[]), extra.as_bytes()).is_ok(), "{extra}");
    }

    #[test]
    fn invalid_cdevents_are_bad_requests() {
        let unknown_type =
            String::from_utf8_lossy(CHANGE_MERGED).replace("change.merged", "change.melted");
        for body in [b"{}".as_slice(), b"not json", unknown_type.as_bytes()] {
            assert!(matches!(
                verify(&headers(&[]), body),
                Err(Error::BadRequest(_))
            ));
        }
    }
}
