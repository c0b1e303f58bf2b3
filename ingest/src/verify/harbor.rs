//! `harbor`: the whole `Authorization` header equals the Secret's token (constant-time).

use axum::http::HeaderMap;

use super::{Verified, require_token_header};
use crate::error::Error;

pub fn verify(token: &[u8], headers: &HeaderMap) -> Result<Verified, Error> {
    require_token_header(headers, "Authorization", token)?;
    Ok(Verified::unnamed(headers))
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
