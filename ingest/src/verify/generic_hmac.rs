//! `generic-hmac`: `X-Signature: <sha1|sha256|sha512>=<hex HMAC of the raw body>`.

use axum::http::HeaderMap;

use super::{Verified, header, verify_prefixed_signature};
use crate::error::Error;

pub fn verify(token: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    let signature = header(headers, "x-signature")
        .ok_or_else(|| Error::Unauthorized("missing X-Signature header".into()))?;
    verify_prefixed_signature(signature, body, token)?;
    Ok(Verified::unnamed(headers))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{headers, hmac_hex, sha256_signature};
    use super::*;

    const BODY: &[u8] = br#"{"ref":"main"}"#;

    #[test]
    fn valid_signatures_pass() {
        let sig = sha256_signature(b"secret", BODY);
        assert!(verify(b"secret", &headers(&[("x-signature", &sig)]), BODY).is_ok());
        let sha512 = format!("sha512={}", hmac_hex::<sha2::Sha512>(b"secret", BODY));
        assert!(verify(b"secret", &headers(&[("x-signature", &sha512)]), BODY).is_ok());
    }

    #[test]
    fn tampered_body_fails() {
        let sig = sha256_signature(b"secret", BODY);
        assert!(matches!(
            verify(b"secret", &headers(&[("x-signature", &sig)]), b"{}"),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_secret_fails() {
        let sig = sha256_signature(b"other", BODY);
        assert!(verify(b"secret", &headers(&[("x-signature", &sig)]), BODY).is_err());
    }

    #[test]
    fn missing_header_fails() {
        assert!(matches!(
            verify(b"secret", &headers(&[]), BODY),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_prefix_fails() {
        let mac = hmac_hex::<sha2::Sha256>(b"secret", BODY);
        for sig in [format!("sha384={mac}"), mac.clone(), format!("sha1={mac}")] {
            assert!(
                verify(b"secret", &headers(&[("x-signature", &sig)]), BODY).is_err(),
                "{sig}"
            );
        }
    }
}
