//! `github` (also Gitea and Forgejo): HMAC of the raw body in `X-Hub-Signature-256`
//! (`sha256=<hex>`), else the legacy `X-Hub-Signature` (`sha1=<hex>`), as go-github's
//! `ValidatePayload` checks it; Gitea and Forgejo may send only their bare-hex SHA-256 header.

use axum::http::HeaderMap;

use super::{Verified, event_name, first_header, header, hmac_matches, verify_prefixed_signature};
use crate::error::Error;

/// Gitea's and Forgejo's own signature headers: bare lowercase hex HMAC-SHA256.
const BARE_SHA256_HEADERS: &[&str] = &["x-gitea-signature", "x-forgejo-signature"];

pub fn verify(token: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    verify_signed_payload(token, headers, body)?;
    Ok(Verified {
        event: event_name(
            headers,
            &["x-github-event", "x-gitea-event", "x-forgejo-event"],
        ),
        delivery_id: first_header(
            headers,
            &[
                "x-github-delivery",
                "x-gitea-delivery",
                "x-forgejo-delivery",
            ],
        ),
        claims: None,
    })
}

/// go-github's `ValidatePayload`: a JSON or form-encoded body (media-type parameters such as
/// charset allowed) signed in `X-Hub-Signature-256` or `X-Hub-Signature`. Bitbucket uses it too.
pub(super) fn verify_signed_payload(
    token: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Error> {
    let content_type = header(headers, "content-type").unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json")
        && !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return Err(Error::BadRequest(format!(
            "unsupported Content-Type {content_type:?}: expected application/json or application/x-www-form-urlencoded"
        )));
    }
    if let Some(signature) = first_header(headers, &["x-hub-signature-256", "x-hub-signature"]) {
        return verify_prefixed_signature(&signature, body, token);
    }
    if let Some(signature) = first_header(headers, BARE_SHA256_HEADERS) {
        let mac = hex::decode(signature)
            .map_err(|_| Error::Unauthorized("signature is not hexadecimal".into()))?;
        return if hmac_matches::<sha2::Sha256>(token, body, &mac) {
            Ok(())
        } else {
            Err(Error::Unauthorized(
                "signature does not match the body".into(),
            ))
        };
    }
    Err(Error::Unauthorized(
        "missing X-Hub-Signature-256 or X-Hub-Signature header".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{headers, hmac_hex, sha256_signature};
    use super::*;

    const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

    fn push(sig_header: &str, sig: &str) -> HeaderMap {
        headers(&[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            (sig_header, sig),
        ])
    }

    #[test]
    fn valid_sha256_push_yields_event_and_delivery() {
        let v = verify(
            b"s",
            &push("x-hub-signature-256", &sha256_signature(b"s", BODY)),
            BODY,
        )
        .expect("valid");
        assert_eq!(v.event.as_deref(), Some("push"));
        assert_eq!(
            v.delivery_id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
    }

    #[test]
    fn legacy_sha1_header_is_accepted() {
        let sig = format!("sha1={}", hmac_hex::<sha1::Sha1>(b"s", BODY));
        assert!(verify(b"s", &push("x-hub-signature", &sig), BODY).is_ok());
    }

    #[test]
    fn form_encoded_body_with_charset_is_accepted() {
        let body = b"payload=%7B%22zen%22%3A%22hi%22%7D";
        let mut h = push("x-hub-signature-256", &sha256_signature(b"s", body));
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .expect("value"),
        );
        assert!(verify(b"s", &h, body).is_ok());
    }

    #[test]
    fn gitea_and_forgejo_headers_are_understood() {
        let bare = hmac_hex::<sha2::Sha256>(b"s", BODY);
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", "d-1"),
            ("x-gitea-signature", &bare),
        ]);
        let v = verify(b"s", &h, BODY).expect("valid");
        assert_eq!(
            (v.event.as_deref(), v.delivery_id.as_deref()),
            (Some("push"), Some("d-1"))
        );
        let forgejo = headers(&[
            ("content-type", "application/json"),
            ("x-forgejo-signature", &bare),
        ]);
        assert!(verify(b"s", &forgejo, BODY).is_ok());
        assert!(verify(b"s", &forgejo, b"{}").is_err());
    }

    #[test]
    fn tampered_body_fails() {
        let h = push("x-hub-signature-256", &sha256_signature(b"s", BODY));
        assert!(matches!(
            verify(b"s", &h, br#"{"ref":"evil"}"#),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_secret_fails() {
        let h = push("x-hub-signature-256", &sha256_signature(b"other", BODY));
        assert!(matches!(
            verify(b"s", &h, BODY),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn missing_signature_fails() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
        ]);
        assert!(matches!(
            verify(b"s", &h, BODY),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_prefix_fails() {
        let mac = hmac_hex::<sha2::Sha256>(b"s", BODY);
        for sig in [format!("sha1={mac}"), format!("md5={mac}"), mac.clone()] {
            assert!(
                verify(b"s", &push("x-hub-signature-256", &sig), BODY).is_err(),
                "{sig}"
            );
        }
    }

    #[test]
    fn unsupported_content_type_is_a_bad_request() {
        let mut h = push("x-hub-signature-256", &sha256_signature(b"s", BODY));
        h.insert("content-type", "text/plain".parse().expect("value"));
        assert!(matches!(verify(b"s", &h, BODY), Err(Error::BadRequest(_))));
    }
}
