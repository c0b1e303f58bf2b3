//! `quay`: no authentication; the body must decode as `{docker_url, updated_tags[]}`.

use axum::http::HeaderMap;
use fluxgate_shared::gojson::Shape;

use super::{GoRead, Verified, decode};
use crate::error::Error;

/// Flux's Quay payload.
const PAYLOAD: Shape = Shape::Object(&[
    ("docker_url", Shape::String),
    ("updated_tags", Shape::Strings),
]);

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    decode(body, "Quay", GoRead::Decoder, PAYLOAD)?;
    Ok(Verified::unnamed(headers))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::headers;
    use super::*;

    #[test]
    fn push_payload_is_valid() {
        let body = br#"{"docker_url":"quay.io/org/app","updated_tags":["latest","v2"]}"#;
        assert!(verify(&headers(&[]), body).is_ok());
    }

    /// Bodies Go's decoder, and so Flux, accepts: nulls, trailing data, keys in another case.
    #[test]
    fn payloads_go_accepts_are_accepted() {
        for body in [
            br#"{"docker_url":null,"updated_tags":null}"#.as_slice(),
            br#"{"docker_url":"quay.io/a"} and then some"#,
            br#"{"Docker_URL":"quay.io/a","UPDATED_TAGS":["v1"]}"#,
            b"null",
        ] {
            let accepted = verify(&headers(&[]), body);
            assert!(accepted.is_ok(), "{}", String::from_utf8_lossy(body));
        }
        assert!(verify(&headers(&[]), br#"{"UPDATED_TAGS":"v1"}"#).is_err());
    }

    #[test]
    fn malformed_payload_is_a_bad_request() {
        assert!(matches!(
            verify(&headers(&[]), b"{"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            verify(&headers(&[]), br#"{"updated_tags":"v2"}"#),
            Err(Error::BadRequest(_))
        ));
    }
}
