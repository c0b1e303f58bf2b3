//! Property tests of the accept path: every verifier and the delivery builder, with arbitrary
//! headers and bodies, never panic and never produce a NATS header that is not header-safe; a
//! valid signature or token always verifies, whatever the body and the secret.

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use fluxgate_shared::receivers::{Receiver, ReceiverType};
use proptest::prelude::*;

use super::test_support::receiver;
use super::*;
use crate::delivery;
use crate::testing::proof;

/// Header names the verifiers and the builder read, and a few they do not.
pub(crate) const NAMES: &[&str] = &[
    "content-type",
    "user-agent",
    "authorization",
    "idempotency-key",
    "x-github-event",
    "x-github-delivery",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-gitlab-token",
    "x-gitlab-event",
    "x-event-key",
    "x-request-id",
    "x-signature",
    "x-nexus-webhook-signature",
    "x-nexus-webhook-delivery",
    "ce-type",
    "ce-id",
    "ce-source",
    "traceparent",
    "x-other",
];

/// Any header value HTTP can carry: bytes other than controls (tab aside), obs-text included.
pub(crate) fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        "[ -~]{0,300}".prop_map(|s| HeaderValue::from_str(&s).expect("visible ASCII")),
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..64)
            .prop_map(|bytes| HeaderValue::from_bytes(&bytes).expect("HTTP allows these bytes")),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((proptest::sample::select(NAMES), header_value()), 0..8).prop_map(
        |pairs| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(HeaderName::from_static(name), value);
            }
            map
        },
    )
}

/// Bodies of any bytes, and JSON objects with arbitrary strings (line breaks and escapes
/// included) where the providers put ids.
pub(crate) fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        ("(?s).{0,40}", "(?s).{0,40}").prop_map(|(id, tag)| {
            serde_json::json!({
                "id": id,
                "action": "push",
                "target": {"repository": "app", "tag": tag},
                "message": {"messageId": id, "data": ""},
                "context": {"id": id, "source": tag},
            })
            .to_string()
            .into_bytes()
        }),
    ]
}

thread_local! {
    /// One runtime and one identity client per test thread: loading the system's CA roots for
    /// every case would dominate the run.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Issuers on a closed port: the ID-token types fail fast instead of fetching.
    static IDENTITY: Identity = Identity::new("http://127.0.0.1:9/certs".into()).expect("identity");
}

/// `verify` as the router calls it.
fn verify_now(receiver: &Receiver, headers: &HeaderMap, body: &[u8]) -> Result<Verified, Error> {
    IDENTITY
        .with(|identity| RUNTIME.with(|rt| rt.block_on(verify(identity, receiver, headers, body))))
}

proptest! {
    #[test]
    fn arbitrary_requests_never_panic_nor_make_an_unsafe_header(
        kind in proptest::sample::select(&ReceiverType::ALL[..]),
        token in "[ -~]{0,16}",
        headers in headers(),
        body in body(),
    ) {
        let receiver = receiver(kind, &token);
        let verified = verify_now(&receiver, &headers, &body);
        if let Ok(verified) = verified
            && let Ok((_, delivery)) = delivery::build(&receiver, verified, &headers, Bytes::from(body), None)
        {
            for (name, values) in delivery.headers().iter() {
                for value in values {
                    let value = value.as_str();
                    prop_assert!(!value.contains(['\r', '\n']), "{name}: {value:?}");
                }
            }
        }
    }

    #[test]
    fn a_valid_signature_or_token_always_verifies(
        token in "[!-~]{1,64}",
        body in proptest::collection::vec(any::<u8>(), 0..512),
        action in "[ -~]{0,20}",
    ) {
        // Nexus reads its body after the signature: it must be a Nexus event.
        let nexus_body = serde_json::json!({"action": action, "repositoryName": "r"}).to_string();
        for kind in ReceiverType::ALL {
            let body = if kind == ReceiverType::Nexus { nexus_body.as_bytes() } else { &body };
            let proof = proof(kind, &token, body);
            if proof.is_empty() {
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            for (name, value) in proof {
                headers.insert(name, HeaderValue::from_str(&value).expect("printable"));
            }
            let verified = verify_now(&receiver(kind, &token), &headers, body);
            prop_assert!(verified.is_ok(), "{kind}: {:?}", verified.err());
        }
    }
}
