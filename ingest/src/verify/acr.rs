//! `acr`: no authentication; the body must decode as `{action, target{repository, tag}}`.

use axum::http::HeaderMap;
use fluxgate_shared::gojson::{self, Shape};

use super::{GoRead, Verified, decode, first_header};
use crate::error::Error;

/// Flux's ACR payload.
const PAYLOAD: Shape = Shape::Object(&[
    ("action", Shape::String),
    (
        "target",
        Shape::Object(&[("repository", Shape::String), ("tag", Shape::String)]),
    ),
]);

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    let payload = decode(body, "ACR", GoRead::Decoder, PAYLOAD)?;
    Ok(Verified {
        event: None,
        // ACR gives every event an `id`; an explicit Idempotency-Key still wins.
        delivery_id: first_header(headers, &["idempotency-key"])
            .or(Some(gojson::string_field(&payload, "id")).filter(|id| !id.is_empty())),
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
