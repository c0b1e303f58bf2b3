//! `acr`: no authentication; the body must decode as `{action, target{repository, tag}}`.

use axum::http::HeaderMap;
use serde::Deserialize;

use super::{Verified, first_header, parse_json};
use crate::error::Error;

#[derive(Deserialize)]
#[allow(dead_code)] // decoded to validate the shape, as Flux does
struct Payload {
    #[serde(default)]
    id: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: Target,
}

#[derive(Deserialize, Default)]
#[allow(dead_code)]
struct Target {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    tag: String,
}

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    let payload = parse_json::<Payload>(body, "ACR")?;
    Ok(Verified {
        event: None,
        // ACR gives every event an `id`; an explicit Idempotency-Key still wins.
        delivery_id: first_header(headers, &["idempotency-key"])
            .or(Some(payload.id).filter(|id| !id.is_empty())),
        claims: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::headers;
    use super::*;

    #[test]
    fn push_payload_is_valid_and_its_id_is_the_delivery() {
        let body = br#"{"id":"e-1","action":"push","target":{"repository":"app","tag":"v1"}}"#;
        assert_eq!(
            verify(&headers(&[]), body)
                .expect("valid")
                .delivery_id
                .as_deref(),
            Some("e-1")
        );
    }

    #[test]
    fn malformed_payload_is_a_bad_request() {
        assert!(matches!(
            verify(&headers(&[]), b"[]"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            verify(&headers(&[]), br#"{"target":{"tag":7}}"#),
            Err(Error::BadRequest(_))
        ));
    }
}
