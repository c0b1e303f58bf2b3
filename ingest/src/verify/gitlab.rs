//! `gitlab`: `X-Gitlab-Token` equals the Secret's token (constant-time, unlike Flux), event in
//! `X-Gitlab-Event`, delivery id from `Idempotency-Key` then `X-Gitlab-Event-UUID`.

use axum::http::HeaderMap;

use super::{Verified, event_name, first_header, require_token_header};
use crate::error::Error;

pub fn verify(token: &[u8], headers: &HeaderMap) -> Result<Verified, Error> {
    require_token_header(headers, "X-Gitlab-Token", token)?;
    Ok(Verified {
        event: event_name(headers, &["x-gitlab-event"]),
        delivery_id: first_header(headers, &["idempotency-key", "x-gitlab-event-uuid"]),
        claims: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::headers;
    use super::*;

    #[test]
    fn matching_token_passes_with_event_and_uuid() {
        let h = headers(&[
            ("x-gitlab-token", "t0k"),
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-event-uuid", "u-1"),
        ]);
        let v = verify(b"t0k", &h).expect("valid");
        assert_eq!(
            (v.event.as_deref(), v.delivery_id.as_deref()),
            (Some("Push Hook"), Some("u-1"))
        );
    }

    #[test]
    fn idempotency_key_wins_over_event_uuid() {
        let h = headers(&[
            ("x-gitlab-token", "t"),
            ("idempotency-key", "k"),
            ("x-gitlab-event-uuid", "u"),
        ]);
        assert_eq!(
            verify(b"t", &h).expect("valid").delivery_id.as_deref(),
            Some("k")
        );
    }

    #[test]
    fn wrong_token_fails() {
        assert!(matches!(
            verify(b"t0k", &headers(&[("x-gitlab-token", "t0K")])),
            Err(Error::Unauthorized(_))
        ));
        assert!(verify(b"t0k", &headers(&[("x-gitlab-token", "t0k ")])).is_err());
    }

    #[test]
    fn missing_header_fails() {
        assert!(matches!(
            verify(b"t0k", &headers(&[])),
            Err(Error::Unauthorized(_))
        ));
    }
}
