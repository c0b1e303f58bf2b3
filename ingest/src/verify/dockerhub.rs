//! `dockerhub`: no authentication; the body must decode as `{push_data.tag, repository.repo_url}`.

use axum::http::HeaderMap;
use fluxgate_shared::gojson::Shape;

use super::{GoRead, Verified, decode};
use crate::error::Error;

/// Flux's DockerHub payload.
const PAYLOAD: Shape = Shape::Object(&[
    ("push_data", Shape::Object(&[("tag", Shape::String)])),
    ("repository", Shape::Object(&[("repo_url", Shape::String)])),
]);

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    decode(body, "DockerHub", GoRead::Decoder, PAYLOAD)?;
    Ok(Verified::unnamed(headers))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::headers;
    use super::*;

    #[test]
    fn push_payload_is_valid() {
        let body = br#"{"push_data":{"tag":"v1"},"repository":{"repo_url":"https://hub.docker.com/r/a/b"}}"#;
        assert!(verify(&headers(&[]), body).is_ok());
    }

    #[test]
    fn malformed_payload_is_a_bad_request() {
        assert!(matches!(
            verify(&headers(&[]), b"not json"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            verify(&headers(&[]), br#"{"push_data":{"tag":1}}"#),
            Err(Error::BadRequest(_))
        ));
    }
}
