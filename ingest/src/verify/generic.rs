//! `generic`: no authentication beyond the secret hook path.

use axum::http::HeaderMap;

use super::Verified;
use crate::error::Error;

pub fn verify(headers: &HeaderMap) -> Result<Verified, Error> {
    Ok(Verified::unnamed(headers))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::headers;
    use super::*;

    #[test]
    fn accepts_anything_and_reads_idempotency_key() {
        assert_eq!(verify(&headers(&[])).expect("valid"), Verified::default());
        let v = verify(&headers(&[("idempotency-key", "k1")])).expect("valid");
        assert_eq!(v.delivery_id.as_deref(), Some("k1"));
    }
}
