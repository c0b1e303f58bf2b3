//! Normalisation: turns a verified webhook into the stored delivery of DESIGN.md -- the raw
//! body and its metadata, credentials left out.

use axum::http::{HeaderMap as RequestHeaders, HeaderValue};
use bytes::Bytes;
use chrono::Utc;
use fluxgate_shared::contract::{self, DeliveryMeta, IdSource, header};
use fluxgate_shared::receivers::Receiver;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::publish::Delivery;
use crate::verify::Verified;

/// Longest value taken from a sender that ingest puts in a NATS header or message id.
pub const MAX_HEADER_VALUE: usize = 256;

/// The delivery for an authentic webhook, and its delivery id; a `BadRequest` naming the
/// value when one that would reach a NATS header (the delivery id, the event name, a kept request
/// header) is not header-safe.
pub fn build(
    receiver: &Receiver,
    verified: Verified,
    request: &RequestHeaders,
    body: Bytes,
    traceparent: Option<String>,
) -> Result<(String, Delivery), Error> {
    if let Some(id) = &verified.delivery_id {
        header_safe(id).map_err(|refused| refused.naming("the delivery id"))?;
    }
    if let Some(event) = &verified.event {
        header_safe(event).map_err(|refused| refused.naming("the event name"))?;
    }
    let content_type = request
        .get("content-type")
        .map(|value| kept_value("content-type", value))
        .transpose()?;
    let (id, id_source) = match verified.delivery_id {
        Some(id) => (id, IdSource::Sender),
        // A fresh id: such a delivery is never deduplicated (two bare triggers reconcile twice).
        None => (uuid::Uuid::now_v7().to_string(), IdSource::Generated),
    };
    let mut meta = DeliveryMeta {
        id,
        id_source,
        namespace: receiver.namespace.clone(),
        receiver: receiver.name.clone(),
        receiver_type: receiver.kind.as_str().into(),
        event: verified.event.filter(|e| !e.is_empty()),
        received_at: Some(Utc::now()),
        content_type: content_type.map(str::to_owned),
        body_sha256: Some(hex::encode(Sha256::digest(&body))),
        body_size: body.len() as u64,
        body_object: None,
        traceparent: Some(traceparent.unwrap_or_else(|| given_or_new_traceparent(request))),
        replay_of: None,
        replay_actor: None,
        oidc_claims: verified.claims.map(|claims| claims.to_string()),
        request_headers: Default::default(),
    };
    // Walk the request's few headers rather than look up every kept name: this is the hot path.
    for (name, value) in request {
        if contract::is_kept_request_header(name.as_str()) {
            let value = kept_value(name.as_str(), value)?;
            meta.request_headers
                .insert(name.as_str().to_owned(), value.to_owned());
        }
    }
    Ok((meta.id.clone(), Delivery { meta, body }))
}

/// A request header's value, refused unless it is header-safe.
fn kept_value<'a>(name: &str, value: &'a HeaderValue) -> Result<&'a str, Error> {
    let value = value
        .to_str()
        .map_err(|_| Error::BadRequest(format!("header {name} is not printable ASCII")))?;
    header_safe(value).map_err(|refused| refused.naming(format_args!("header {name}")))?;
    Ok(value)
}

/// Why a sender's value cannot go into a NATS header.
enum Unsafe {
    TooLong,
    NotPrintable,
}

impl Unsafe {
    /// The 400 that names the value (formatted only when a value is refused).
    fn naming(self, what: impl std::fmt::Display) -> Error {
        Error::BadRequest(match self {
            Self::TooLong => format!("{what} is longer than {MAX_HEADER_VALUE} bytes"),
            Self::NotPrintable => format!("{what} holds a character that is not printable ASCII"),
        })
    }
}

/// A sender's value bound for a NATS header: printable ASCII, at most [`MAX_HEADER_VALUE`]
/// bytes. A line break would end the header block (async-nats refuses it with a panic), other
/// control characters reach operators' terminals, and the length of each is stored with every
/// message.
fn header_safe(value: &str) -> Result<(), Unsafe> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(Unsafe::TooLong);
    }
    if !value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Unsafe::NotPrintable);
    }
    Ok(())
}

/// The sender's W3C `traceparent` when it is well formed, else the root of a new trace.
fn given_or_new_traceparent(request: &RequestHeaders) -> String {
    let given = request
        .get(header::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    match given {
        Some(value) if is_traceparent(value) => value.to_owned(),
        _ => fluxgate_shared::new_traceparent(),
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex_of(parts[0], 2)
        && hex_of(parts[1], 32)
        && hex_of(parts[2], 16)
        && hex_of(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_shared::receivers::ReceiverType;

    fn receiver() -> Receiver {
        Receiver {
            namespace: "flux-system".into(),
            name: "app.github".into(),
            ..crate::verify::test_support::receiver(ReceiverType::Github, "t")
        }
    }

    fn request(pairs: &[(&str, &str)]) -> RequestHeaders {
        let mut map = RequestHeaders::new();
        for (k, v) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn sender_id_becomes_the_scoped_message_id() {
        let verified = Verified {
            event: Some("push".into()),
            delivery_id: Some("d-1".into()),
            claims: None,
        };
        let req = request(&[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("authorization", "Bearer secret"),
            ("x-gitlab-token", "secret"),
        ]);
        let (id, d) =
            build(&receiver(), verified, &req, Bytes::from_static(b"{}"), None).expect("built");
        assert_eq!(id, "d-1");
        let meta = &d.meta;
        assert_eq!(meta.key(), "flux-system/app.github/d-1");
        assert_eq!(meta.subject(), "fluxgate.deliveries.flux-system.app_github");
        assert_eq!(meta.id_source, IdSource::Sender);
        assert_eq!(meta.event.as_deref(), Some("push"));
        assert_eq!(meta.receiver_type, "github");
        assert_eq!(meta.content_type.as_deref(), Some("application/json"));
        assert_eq!(meta.body_sha256, Some(hex::encode(Sha256::digest(b"{}"))));
        assert_eq!(meta.body_size, 2);
        // The kept request headers, never a credential.
        let kept: Vec<_> = meta.request_headers.iter().collect();
        assert_eq!(kept, [(&"x-github-event".to_owned(), &"push".to_owned())]);
        let received = meta.received_at.expect("received-at");
        assert!(Utc::now() - received < chrono::TimeDelta::minutes(1));
    }

    #[test]
    fn missing_sender_id_gets_a_fresh_generated_one() {
        let (a, da) = build(
            &receiver(),
            Verified::default(),
            &request(&[]),
            Bytes::new(),
            None,
        )
        .expect("built");
        let (b, _) = build(
            &receiver(),
            Verified::default(),
            &request(&[]),
            Bytes::new(),
            None,
        )
        .expect("built");
        assert_ne!(a, b);
        assert_eq!(da.meta.id_source, IdSource::Generated);
        assert!(da.meta.event.is_none());
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_made_otherwise() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (_, kept) = build(
            &receiver(),
            Verified::default(),
            &request(&[("traceparent", tp)]),
            Bytes::new(),
            None,
        )
        .expect("built");
        assert_eq!(kept.meta.traceparent.as_deref(), Some(tp));
        let (_, made) = build(
            &receiver(),
            Verified::default(),
            &request(&[("traceparent", "junk")]),
            Bytes::new(),
            None,
        )
        .expect("built");
        assert!(is_traceparent(
            made.meta.traceparent.as_deref().expect("traceparent")
        ));
        // The request's span, when spans are exported, wins over the sender's: it is that
        // span's child the dispatcher continues.
        let span = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        let (_, spanned) = build(
            &receiver(),
            Verified::default(),
            &request(&[("traceparent", tp)]),
            Bytes::new(),
            Some(span.to_owned()),
        )
        .expect("built");
        assert_eq!(spanned.meta.traceparent.as_deref(), Some(span));
    }

    /// Each value a sender controls that reaches a header is refused, by name, when it could
    /// break the header block, reach a terminal, or bloat every message.
    #[test]
    fn values_that_are_not_header_safe_are_refused_naming_the_value() {
        let long = "x".repeat(MAX_HEADER_VALUE + 1);
        let with = |delivery_id: Option<&str>, event: Option<&str>| Verified {
            event: event.map(str::to_owned),
            delivery_id: delivery_id.map(str::to_owned),
            claims: None,
        };
        let cases = [
            (
                with(Some("a\nb"), None),
                vec![],
                "the delivery id holds a character",
            ),
            (
                with(Some("a\rX-Evil: 1"), None),
                vec![],
                "the delivery id holds",
            ),
            (
                with(Some(&long), None),
                vec![],
                "the delivery id is longer than 256",
            ),
            (
                with(None, Some("push\u{1b}]0;owned\u{7}")),
                vec![],
                "the event name holds",
            ),
            (with(Some("café"), None), vec![], "the delivery id holds"),
            (
                with(None, None),
                vec![("user-agent", long.as_str())],
                "header user-agent is longer",
            ),
            (
                with(None, None),
                vec![("x-request-id", "a\tb")],
                "header x-request-id holds",
            ),
            (
                with(None, None),
                vec![("content-type", long.as_str())],
                "header content-type is longer",
            ),
        ];
        for (verified, pairs, says) in cases {
            match build(&receiver(), verified, &request(&pairs), Bytes::new(), None) {
                Err(Error::BadRequest(reason)) => assert!(reason.starts_with(says), "{reason}"),
                other => panic!(
                    "{says}: expected a bad request, got {:?}",
                    other.map(|(id, _)| id)
                ),
            }
        }
        let at_limit = "x".repeat(MAX_HEADER_VALUE);
        let (id, _) = build(
            &receiver(),
            with(Some(&at_limit), Some("push")),
            &request(&[("user-agent", "GitHub-Hookshot/1 (~ok)")]),
            Bytes::new(),
            None,
        )
        .expect("printable ASCII up to the limit is kept");
        assert_eq!(id, at_limit);
    }
}
