//! Signed webhooks and receiver manifests, written the way GitHub and a Flux user write them.

use fluxgate_shared::contract::{DeliveryMeta, IdSource};
use fluxgate_shared::receivers::hook_digest;
use hmac::{KeyInit, Mac};

/// GitHub's `X-Hub-Signature-256` value for `body`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs a GitHub push to `url`, signed with `secret`, as GitHub sends it.
pub async fn post_github_push(
    url: &str,
    secret: &str,
    delivery: &str,
    body: Vec<u8>,
) -> crate::http::Response {
    let signature = github_signature(secret, &body);
    crate::http::post(
        url,
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &signature),
        ],
        body,
    )
    .await
    .expect("push")
}

/// Flux's webhook path of a receiver.
pub fn hook_path(token: &str, name: &str, namespace: &str) -> String {
    format!("/hook/{}", hook_digest(token.as_bytes(), name, namespace))
}

/// A GitHub push body of about `size` bytes.
pub fn github_push_body(size: usize) -> Vec<u8> {
    let head = r#"{"ref":"refs/heads/main","repository":{"full_name":"org/app"},"padding":""#;
    let tail = r#""}"#;
    let mut body = head.as_bytes().to_vec();
    body.resize(size.saturating_sub(tail.len()).max(head.len()), b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

/// A `Secret` manifest with `stringData.token`.
pub fn secret_manifest(name: &str, namespace: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nstringData:\n  token: {token:?}\n"
    )
}

/// A `Receiver` manifest targeting one GitRepository; `extra_spec` adds lines under `spec:`.
pub fn receiver_manifest(
    name: &str,
    namespace: &str,
    kind: &str,
    secret: &str,
    extra_spec: &str,
) -> String {
    format!(
        "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  type: {kind}\n  secretRef:\n    name: {secret}\n  resources:\n    - kind: GitRepository\n      name: app\n{extra_spec}"
    )
}

/// The metadata of a generic-looking delivery `id` of `namespace/receiver` from a sender, as a
/// test or benchmark puts it on the stream itself (ingest's way, without ingest).
pub fn sender_delivery(id: &str, namespace: &str, receiver: &str) -> DeliveryMeta {
    DeliveryMeta {
        id: id.into(),
        id_source: IdSource::Sender,
        namespace: namespace.into(),
        receiver: receiver.into(),
        receiver_type: "generic".into(),
        event: Some("push".into()),
        received_at: Some(chrono::Utc::now()),
        content_type: None,
        body_sha256: None,
        body_size: 2,
        body_object: None,
        traceparent: None,
        replay_of: None,
        replay_actor: None,
        oidc_claims: None,
        request_headers: Default::default(),
    }
}
