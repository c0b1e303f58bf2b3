//! `dockerhub`: no authentication; the body must decode as `{push_data.tag, repository.repo_url}`.

use axum::http::HeaderMap;
use serde::Deserialize;

use super::{Verified, parse_json};
use crate::error::Error;

#[derive(Deserialize)]
#[allow(dead_code)] // decoded to validate the shape, as Flux does
struct Payload {
    #[serde(default)]
    push_data: PushData,
    #[serde(default)]
    repository: Repository,
}

#[derive(Deserialize, Default)]
#[allow(dead_code)]
struct PushData {
    #[serde(default)]
    tag: String,
}

#[derive(Deserialize, Default)]
#[allow(dead_code)]
struct Repository {
    #[serde(default)]
    repo_url: String,
}

pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    parse_json::<Payload>(body, "DockerHub")?;
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
