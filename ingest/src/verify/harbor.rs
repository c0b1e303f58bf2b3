//! `harbor`: the whole `Authorization` header equals the Secret's token (constant-time).

use axum::http::HeaderMap;

use super::{Verified, header, idempotency_key, secret_eq};
use crate::error::Error;

pub fn verify(token: &[u8], headers: &HeaderMap) -> Result<Verified, Error> {
    let given = header(headers, "authorization")
        .ok_or_else(|| Error::Unauthorized("missing Authorization header".into()))?;
    if !secret_eq(given.as_bytes(), token) {
        return Err(Error::Unauthorized(
            "the Authorization header does not match the receiver token".into(),
        ));
    }
    Ok(Verified {
        event: None,
        delivery_id: idempotency_key(headers),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::headers;
    use super::*;

    #[test]
    fn whole_header_must_match() {
        assert!(verify(b"Bearer abc", &headers(&[("authorization", "Bearer abc")])).is_ok());
        assert!(verify(b"abc", &headers(&[("authorization", "Bearer abc")])).is_err());
    }

    #[test]
    fn wrong_token_fails() {
        assert!(matches!(
            verify(b"abc", &headers(&[("authorization", "abd")])),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn missing_header_fails() {
        assert!(matches!(
            verify(b"abc", &headers(&[])),
            Err(Error::Unauthorized(_))
        ));
    }
}
