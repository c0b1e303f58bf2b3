//! `cdevents`: no authentication; the body must be a valid CDEvent (checked with the CDEvents
//! SDK, as Flux does with its Go SDK), the event name is `Ce-Type`, the delivery id is the
//! CloudEvents `ce-source` + `ce-id`, else the CDEvent's own `context.source` + `context.id`.

use axum::http::HeaderMap;

use super::{Verified, event_name, first_header};
use crate::error::Error;

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    let event: cdevents_sdk::CDEvent = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("unable to validate CDEvent: {e}")))?;
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
