//! `nexus`: `X-Nexus-Webhook-Signature` is the bare lowercase hex HMAC-SHA1 of the body, and the
//! body must decode as Nexus's `{action, repositoryName}`.

use axum::http::HeaderMap;
use fluxgate_shared::gojson::Shape;

use super::{GoRead, Verified, decode, first_header, header, hmac_matches};
use crate::error::Error;

/// Flux's Nexus payload.
const PAYLOAD: Shape =
    Shape::Object(&[("action", Shape::String), ("repositoryName", Shape::String)]);

pub fn verify(token: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    let signature = header(headers, "x-nexus-webhook-signature")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Unauthorized("missing X-Nexus-Webhook-Signature header".into()))?;
    let mac = hex::decode(signature)
        .map_err(|_| Error::Unauthorized("Nexus signature is not hexadecimal".into()))?;
    if !hmac_matches::<sha1::Sha1>(token, body, &mac) {
        return Err(Error::Unauthorized("invalid Nexus signature".into()));
    }
    decode(body, "Nexus", GoRead::Unmarshal, PAYLOAD)?;
    Ok(Verified {
        event: None,
        delivery_id: first_header(headers, &["x-nexus-webhook-delivery", "idempotency-key"]),
        claims: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{headers, hmac_hex};
    use super::*;

    const BODY: &[u8] = br#"{"action":"CREATED","repositoryName":"docker-hosted"}"#;

    fn signed(body: &[u8], key: &[u8]) -> HeaderMap {
        headers(&[
            (
                "x-nexus-webhook-signature",
                &hmac_hex::<sha1::Sha1>(key, body),
            ),
            ("x-nexus-webhook-delivery", "n-1"),
        ])
    }

    #[test]
    fn valid_signature_passes() {
        assert_eq!(
            verify(b"k", &signed(BODY, b"k"), BODY)
                .expect("valid")
                .delivery_id
                .as_deref(),
            Some("n-1")
        );
    }

    #[test]
    fn tampered_body_fails() {
        assert!(matches!(
            verify(b"k", &signed(BODY, b"k"), b"{}"),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_secret_fails() {
        assert!(verify(b"k", &signed(BODY, b"x"), BODY).is_err());
    }

    #[test]
    fn missing_header_fails() {
        assert!(matches!(
            verify(b"k", &headers(&[]), BODY),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_prefix_fails() {
        let sig = format!("sha1={}", hmac_hex::<sha1::Sha1>(b"k", BODY));
        assert!(verify(b"k", &headers(&[("x-nexus-webhook-signature", &sig)]), BODY).is_err());
    }

    /// Flux reads a Nexus body with `json.Unmarshal`: the whole body, unlike the other types.
    #[test]
    fn trailing_data_is_refused_and_nulls_are_not() {
        let trailing = br#"{"action":"CREATED"} x"#;
        assert!(matches!(
            verify(b"k", &signed(trailing, b"k"), trailing),
            Err(Error::BadRequest(_))
        ));
        let nulls = br#"{"action":null,"repositoryName":null}"#;
        assert!(verify(b"k", &signed(nulls, b"k"), nulls).is_ok());
    }

    #[test]
    fn signed_non_json_is_a_bad_request() {
        assert!(matches!(
            verify(b"k", &signed(b"nope", b"k"), b"nope"),
            Err(Error::BadRequest(_))
        ));
    }
}
