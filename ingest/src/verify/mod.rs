//! Webhook verification, one module per Flux receiver type, each doing exactly what Flux's
//! notification-controller does for that type, with constant-time comparisons and no
//! unauthenticated pass for an empty token.

mod acr;
mod bitbucket;
mod cdevents;
mod dockerhub;
mod gcr;
mod generic;
mod generic_hmac;
mod generic_oidc;
mod github;
mod gitlab;
mod harbor;
mod nexus;
mod quay;

use axum::http::HeaderMap;
use fluxgate_shared::gojson::{self, Shape};
use fluxgate_shared::receivers::{Receiver, ReceiverType};
use hmac::{EagerHash, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::identity::Identity;

/// What verification learned about an authentic webhook.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The provider's event name, for types that have one (`spec.events` applies to it).
    pub event: Option<String>,
    /// The sender's own delivery id, when it sends one.
    pub delivery_id: Option<String>,
    /// The verified ID token's claims (generic-oidc), for the dispatcher's filters.
    pub claims: Option<serde_json::Value>,
}

/// Verifies a webhook for `receiver` as Flux would: `Unauthorized` for a bad or missing
/// credential, `BadRequest` for a body the type cannot parse. Only the ID-token types wait on
/// anything (their issuers' keys). The request path runs the two halves itself, reading the
/// body in between; the tests verify whole requests.
#[cfg(test)]
pub async fn verify(
    identity: &Identity,
    receiver: &Receiver,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, Error> {
    let checked = before_body(identity, receiver, headers).await?;
    after_body(receiver, headers, body, checked)
}

/// What the headers alone established, before the body is read.
pub enum Headers {
    /// The whole verification: the type authenticates by a header and needs nothing from the
    /// body (gitlab, harbor, generic-oidc).
    Verified(Verified),
    /// The sender is authenticated; the body still gives the delivery id (gcr).
    Authenticated,
    /// Nothing yet: the credential covers the body, or the type has none.
    Unchecked,
}

/// The part of verification the headers alone allow: the types that authenticate by a header
/// refuse an unauthenticated request here, so that it never gets a body buffered. The ID-token
/// checks are boxed: their futures (fetching Google's keys) are large, and inline they would
/// make every request's future as large, copied whole at each move.
pub async fn before_body(
    identity: &Identity,
    receiver: &Receiver,
    headers: &HeaderMap,
) -> Result<Headers, Error> {
    Ok(match receiver.kind {
        ReceiverType::Gitlab => Headers::Verified(gitlab::verify(token(receiver)?, headers)?),
        ReceiverType::Harbor => Headers::Verified(harbor::verify(token(receiver)?, headers)?),
        ReceiverType::GenericOidc => {
            Headers::Verified(Box::pin(generic_oidc::verify(identity, receiver, headers)).await?)
        }
        ReceiverType::Gcr => {
            Box::pin(gcr::authenticate(identity, receiver, headers)).await?;
            Headers::Authenticated
        }
        _ => Headers::Unchecked,
    })
}

/// The rest of verification, with the body, from what [`before_body`] established.
pub fn after_body(
    receiver: &Receiver,
    headers: &HeaderMap,
    body: &[u8],
    checked: Headers,
) -> Result<Verified, Error> {
    match (checked, receiver.kind) {
        (Headers::Verified(verified), _) => Ok(verified),
        (Headers::Authenticated, ReceiverType::Gcr) => gcr::from_body(body),
        (Headers::Unchecked, ReceiverType::Generic) => generic::verify(headers),
        (Headers::Unchecked, ReceiverType::GenericHmac) => {
            generic_hmac::verify(token(receiver)?, headers, body)
        }
        (Headers::Unchecked, ReceiverType::Github) => {
            github::verify(token(receiver)?, headers, body)
        }
        (Headers::Unchecked, ReceiverType::Bitbucket) => {
            bitbucket::verify(token(receiver)?, headers, body)
        }
        (Headers::Unchecked, ReceiverType::Nexus) => nexus::verify(token(receiver)?, headers, body),
        (Headers::Unchecked, ReceiverType::Dockerhub) => dockerhub::verify(headers, body),
        (Headers::Unchecked, ReceiverType::Quay) => quay::verify(headers, body),
        (Headers::Unchecked, ReceiverType::Acr) => acr::verify(headers, body),
        (Headers::Unchecked, ReceiverType::Cdevents) => cdevents::verify(headers, body),
        // A header type whose headers were not checked: fail closed.
        (_, kind) => Err(Error::Unauthorized(format!(
            "the {} credential in the headers was not verified",
            kind.as_str()
        ))),
    }
}

/// The receiver's token. An empty one never authenticates: Flux would accept unsigned requests
/// (go-github skips the check), and anyone can compute an HMAC with an empty key.
fn token(receiver: &Receiver) -> Result<&[u8], Error> {
    if receiver.token.is_empty() {
        return Err(Error::Unauthorized(
            "the receiver's Secret has an empty token, which never authenticates".into(),
        ));
    }
    Ok(receiver.token.expose())
}

/// A header's value, if present and printable.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first non-empty value among `names`: how senders' delivery ids and event names are read.
fn first_header(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| header(headers, name))
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The event name of a type that has one. A missing header counts as the empty name, so a
/// receiver with `spec.events` ignores it, as Flux does.
fn event_name(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    Some(first_header(headers, names).unwrap_or_default())
}

/// `Idempotency-Key`, the delivery id of types whose sender has none of its own.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    first_header(headers, &["idempotency-key"])
}

impl Verified {
    /// A webhook of a type without event names, identified by its `Idempotency-Key` if any.
    fn unnamed(headers: &HeaderMap) -> Self {
        Self {
            event: None,
            delivery_id: idempotency_key(headers),
            claims: None,
        }
    }
}

/// Constant-time equality that also hides the length of the secret: both sides are hashed first.
fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    Sha256::digest(given)
        .ct_eq(&Sha256::digest(expected))
        .into()
}

/// Checks that header `name` carries exactly the receiver's token (gitlab, harbor).
fn require_token_header(headers: &HeaderMap, name: &str, token: &[u8]) -> Result<(), Error> {
    let given = header(headers, name)
        .ok_or_else(|| Error::Unauthorized(format!("missing {name} header")))?;
    if secret_eq(given.as_bytes(), token) {
        Ok(())
    } else {
        Err(Error::Unauthorized(format!(
            "the {name} header does not match the receiver token"
        )))
    }
}

/// Whether `mac` is the HMAC of `body` under `key` with digest `D` (constant-time).
fn hmac_matches<D: EagerHash>(key: &[u8], body: &[u8], mac: &[u8]) -> bool {
    match <hmac::Hmac<D> as KeyInit>::new_from_slice(key) {
        Ok(mut hmac) => {
            hmac.update(body);
            hmac.verify_slice(mac).is_ok()
        }
        Err(_) => false,
    }
}

/// Checks a `<algorithm>=<hex>` signature (go-github's `ValidateSignature`): sha1, sha256 or
/// sha512 HMAC of the raw body.
fn verify_prefixed_signature(signature: &str, body: &[u8], key: &[u8]) -> Result<(), Error> {
    let (algorithm, hex_mac) = signature.split_once('=').ok_or_else(|| {
        Error::Unauthorized("signature is not of the form <algorithm>=<hex>".into())
    })?;
    let mac = hex::decode(hex_mac.trim())
        .map_err(|_| Error::Unauthorized("signature is not hexadecimal".into()))?;
    let valid = match algorithm {
        "sha1" => hmac_matches::<sha1::Sha1>(key, body, &mac),
        "sha256" => hmac_matches::<sha2::Sha256>(key, body, &mac),
        "sha512" => hmac_matches::<sha2::Sha512>(key, body, &mac),
        other => {
            return Err(Error::Unauthorized(format!(
                "unsupported signature algorithm {other:?} (expected sha1, sha256 or sha512)"
            )));
        }
    };
    if valid {
        Ok(())
    } else {
        Err(Error::Unauthorized(
            "signature does not match the body".into(),
        ))
    }
}

/// How Flux reads a type's body: `json.NewDecoder(body).Decode` (the first value; what follows
/// is not read) or `json.Unmarshal` (the whole body).
#[derive(Clone, Copy)]
enum GoRead {
    Decoder,
    Unmarshal,
}

/// Decodes a body into the shape Flux decodes for the type, as Go does: a missing or `null`
/// field is fine, a wrongly typed one is not.
fn decode(body: &[u8], provider: &str, read: GoRead, shape: Shape) -> Result<Value, Error> {
    let bad =
        |e: String| Error::BadRequest(format!("cannot decode {provider} webhook payload: {e}"));
    let value = match read {
        GoRead::Decoder => gojson::first_value(body),
        GoRead::Unmarshal => gojson::whole(body),
    }
    .map_err(bad)?;
    gojson::check(&value, shape).map_err(bad)?;
    Ok(value)
}

#[cfg(test)]
pub(crate) mod properties;

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers for the providers' unit tests.
    use axum::http::{HeaderMap, HeaderName, HeaderValue};

    pub use crate::testing::{hmac_hex, sha256_signature};

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        map
    }

    /// A receiver of `kind` with `token`, in namespace `ns`, named `r`.
    pub fn receiver(
        kind: fluxgate_shared::receivers::ReceiverType,
        token: &str,
    ) -> fluxgate_shared::receivers::Receiver {
        fluxgate_shared::receivers::Receiver {
            namespace: "ns".into(),
            name: "r".into(),
            kind,
            events: vec![],
            resources: vec![],
            resource_filter: None,
            not_ready: None,
            suspend: false,
            token: fluxgate_shared::receivers::SecretValue::new(token),
            secret_data: Default::default(),
            oidc_providers: vec![],
            hook_path: "/hook/x".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn prefixed_signature_accepts_each_algorithm() {
        let body = b"payload";
        for sig in [
            format!("sha1={}", hmac_hex::<sha1::Sha1>(b"k", body)),
            format!("sha256={}", hmac_hex::<sha2::Sha256>(b"k", body)),
            format!("sha512={}", hmac_hex::<sha2::Sha512>(b"k", body)),
        ] {
            assert!(verify_prefixed_signature(&sig, body, b"k").is_ok(), "{sig}");
            assert!(
                verify_prefixed_signature(&sig, b"other", b"k").is_err(),
                "{sig}"
            );
        }
    }

    #[test]
    fn prefixed_signature_rejects_unknown_algorithm_and_bad_hex() {
        let mac = hmac_hex::<sha2::Sha256>(b"k", b"x");
        assert!(verify_prefixed_signature(&format!("md5={mac}"), b"x", b"k").is_err());
        assert!(verify_prefixed_signature("sha256=zz", b"x", b"k").is_err());
        assert!(verify_prefixed_signature(&mac, b"x", b"k").is_err());
    }

    fn identity() -> Identity {
        Identity::new("http://127.0.0.1:9/certs".into()).expect("identity")
    }

    #[tokio::test]
    async fn empty_token_never_authenticates() {
        // Requests signed with an empty key, or carrying an empty token, as an attacker could send.
        let body = b"{}";
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-signature", &sha256_signature(b"", body)),
            ("x-hub-signature-256", &sha256_signature(b"", body)),
            (
                "x-nexus-webhook-signature",
                &hmac_hex::<sha1::Sha1>(b"", body),
            ),
            ("x-gitlab-token", ""),
            ("authorization", ""),
        ]);
        for kind in [
            ReceiverType::GenericHmac,
            ReceiverType::Github,
            ReceiverType::Gitlab,
            ReceiverType::Bitbucket,
            ReceiverType::Harbor,
            ReceiverType::Nexus,
        ] {
            assert!(kind.authenticates_with_token());
            assert!(
                matches!(
                    verify(&identity(), &receiver(kind, ""), &h, body).await,
                    Err(Error::Unauthorized(_))
                ),
                "{kind}"
            );
        }
    }

    #[tokio::test]
    async fn id_token_types_need_a_bearer_token() {
        for kind in [ReceiverType::Gcr, ReceiverType::GenericOidc] {
            for h in [
                headers(&[]),
                headers(&[("authorization", "Basic dXNlcg==")]),
                headers(&[("authorization", "Bearer not-a-jwt")]),
            ] {
                let result = verify(&identity(), &receiver(kind, "t"), &h, b"{}").await;
                assert!(
                    matches!(result, Err(Error::Unauthorized(_))),
                    "{kind}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn secret_eq_compares_exactly() {
        assert!(secret_eq(b"token", b"token"));
        assert!(!secret_eq(b"token", b"tokeN"));
        assert!(!secret_eq(b"token", b"token "));
        assert!(!secret_eq(b"", b"token"));
    }

    #[test]
    fn first_header_skips_blank_values() {
        let h = headers(&[("a", " "), ("b", "id-1")]);
        assert_eq!(first_header(&h, &["a", "b"]), Some("id-1".into()));
        assert_eq!(first_header(&h, &["c"]), None);
    }
}
