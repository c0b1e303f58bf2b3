//! `bitbucket` (Cloud and Server): signed exactly like GitHub (`X-Hub-Signature(-256)`), event
//! in `X-Event-Key`, delivery id in `X-Request-UUID` (Cloud) or `X-Request-Id` (Server).

use axum::http::HeaderMap;

use super::github::verify_signed_payload;
use super::{Verified, event_name, first_header};
use crate::error::Error;

pub fn verify(token: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    verify_signed_payload(token, headers, body)?;
    Ok(Verified {
        event: event_name(headers, &["x-event-key"]),
        delivery_id: first_header(headers, &["x-request-uuid", "x-request-id"]),
        claims: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{headers, hmac_hex, sha256_signature};
    use super::*;

    const BODY: &[u8] = br#"{"changes":[]}"#;

    fn server_push(sig: &str) -> HeaderMap {
        headers(&[
            ("content-type", "application/json; charset=UTF-8"),
            ("x-event-key", "repo:refs_changed"),
            ("x-request-id", "b1f3"),
            ("x-hub-signature", sig),
        ])
    }

    #[test]
    fn server_push_with_charset_is_valid() {
        let v = verify(b"s", &server_push(&sha256_signature(b"s", BODY)), BODY).expect("valid");
        assert_eq!(v.event.as_deref(), Some("repo:refs_changed"));
        assert_eq!(v.delivery_id.as_deref(), Some("b1f3"));
    }

    #[test]
    fn cloud_delivery_uuid_wins() {
        let mut h = server_push(&sha256_signature(b"s", BODY));
        h.insert("x-request-uuid", "cloud-1".parse().expect("value"));
        assert_eq!(
            verify(b"s", &h, BODY)
                .expect("valid")
                .delivery_id
                .as_deref(),
            Some("cloud-1")
        );
    }

    #[test]
    fn tampered_body_fails() {
        assert!(verify(b"s", &server_push(&sha256_signature(b"s", BODY)), b"{}").is_err());
    }

    #[test]
    fn wrong_secret_fails() {
        assert!(verify(b"s", &server_push(&sha256_signature(b"x", BODY)), BODY).is_err());
    }

    #[test]
    fn missing_header_fails() {
        let h = headers(&[("content-type", "application/json")]);
        assert!(matches!(
            verify(b"s", &h, BODY),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_prefix_fails() {
        let sig = format!("sha3={}", hmac_hex::<sha2::Sha256>(b"s", BODY));
        assert!(verify(b"s", &server_push(&sig), BODY).is_err());
    }
}
