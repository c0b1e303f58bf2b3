//! `quay`: no authentication; the body must decode as `{docker_url, updated_tags[]}`.

use axum::http::HeaderMap;
use serde::Deserialize;

use super::{Verified, parse_json};
use crate::error::Error;

#[derive(Deserialize)]
#[allow(dead_code)] // decoded to validate the shape, as Flux does
struct Payload {
    #[serde(default)]
    docker_url: String,
    #[serde(default)]
    updated_tags: Vec<String>,
}

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    parse_json::<Payload>(body, "Quay")?;
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
