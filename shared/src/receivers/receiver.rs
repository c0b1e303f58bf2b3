//! What a served receiver is: a Flux `Receiver`'s spec, checked and compiled, joined with the
//! data of its token Secret, and the hook path Flux computes for it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::filter::Expression;

/// `spec.type` of a Receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiverType {
    Generic,
    GenericHmac,
    GenericOidc,
    Github,
    Gitlab,
    Bitbucket,
    Harbor,
    Dockerhub,
    Quay,
    Gcr,
    Nexus,
    Acr,
    Cdevents,
}

impl ReceiverType {
    /// Every type, in the order of Flux's API reference.
    pub const ALL: [Self; 13] = [
        Self::Generic,
        Self::GenericHmac,
        Self::GenericOidc,
        Self::Github,
        Self::Gitlab,
        Self::Bitbucket,
        Self::Harbor,
        Self::Dockerhub,
        Self::Quay,
        Self::Gcr,
        Self::Nexus,
        Self::Acr,
        Self::Cdevents,
    ];

    /// The name used in manifests, headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::GenericHmac => "generic-hmac",
            Self::GenericOidc => "generic-oidc",
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Bitbucket => "bitbucket",
            Self::Harbor => "harbor",
            Self::Dockerhub => "dockerhub",
            Self::Quay => "quay",
            Self::Gcr => "gcr",
            Self::Nexus => "nexus",
            Self::Acr => "acr",
            Self::Cdevents => "cdevents",
        }
    }

    /// Types whose webhook proves itself with the Secret's `token` (HMAC key or shared token).
    /// For the others the hook path is the only secret.
    pub fn authenticates_with_token(self) -> bool {
        matches!(
            self,
            Self::GenericHmac
                | Self::Github
                | Self::Gitlab
                | Self::Bitbucket
                | Self::Harbor
                | Self::Nexus
        )
    }
}

impl fmt::Display for ReceiverType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret value: bytes that never appear in `Debug` output, so a logged receiver leaks nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One entry of `spec.resources`; defaults are applied where targets are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub api_version: Option<String>,
    pub kind: String,
    /// Required by Flux's CRD; missing, it names nothing, and the dispatcher says so.
    pub name: String,
    pub namespace: Option<String>,
    pub match_labels: Option<BTreeMap<String, String>>,
    /// The entry's `filter`, compiled when the receiver was loaded.
    pub filter: Option<Expression>,
}

/// Flux's default audience of a `generic-oidc` provider.
pub const DEFAULT_OIDC_AUDIENCE: &str = "notification-controller";

/// One `spec.oidcProviders` entry of a `generic-oidc` Receiver, its expressions compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    pub issuer_url: String,
    pub audience: String,
    /// Evaluated in order; each sees `claims` and the `variables` before it.
    pub variables: Vec<(String, Expression)>,
    /// Every one must hold; the messages of those that do not are the 401's reason.
    pub validations: Vec<(Expression, String)>,
}

/// A Receiver ready to serve: its spec plus the data of its Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub namespace: String,
    pub name: String,
    pub kind: ReceiverType,
    /// `spec.events`, compared case-insensitively; empty means every event.
    pub events: Vec<String>,
    pub resources: Vec<ResourceRef>,
    /// `spec.resourceFilter`, ANDed with each resource's own `filter`.
    pub resource_filter: Option<Expression>,
    pub suspend: bool,
    /// Why the receiver cannot serve (an expression that does not compile): Flux marks such a
    /// Receiver Stalled; ingest answers 503 for it.
    pub not_ready: Option<String>,
    /// The Secret's `token` (empty for `generic-oidc`, which has no Secret).
    pub token: SecretValue,
    /// Every key of the Secret (gcr reads `email` and `audience`).
    pub secret_data: BTreeMap<String, SecretValue>,
    /// `spec.oidcProviders` (generic-oidc only).
    pub oidc_providers: Vec<OidcProvider>,
    /// `/hook/<digest>`, as Flux computes it.
    pub hook_path: String,
}

impl Receiver {
    /// Whether any CEL filter applies to this receiver's targets.
    pub fn has_filters(&self) -> bool {
        self.resource_filter.is_some() || self.resources.iter().any(|r| r.filter.is_some())
    }

    /// Whether `event` passes `spec.events` (case-insensitive; empty list allows all).
    pub fn allows_event(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e.eq_ignore_ascii_case(event))
    }

    /// Why anyone can trigger this receiver, when they can: a type that checks nothing but the
    /// hook path, with an empty token, has a path computed from its name and namespace alone.
    /// Only meaningful where the token was read (ingest, the CLI; not the dispatcher's cluster
    /// source).
    pub fn open_to_anyone(&self) -> Option<&'static str> {
        let unauthenticated = matches!(
            self.kind,
            ReceiverType::Generic
                | ReceiverType::Dockerhub
                | ReceiverType::Quay
                | ReceiverType::Acr
                | ReceiverType::Cdevents
        );
        (unauthenticated && self.token.is_empty()).then_some(
            "empty token: its type checks nothing but the hook path, which anyone can compute from the name and namespace",
        )
    }
}

/// Flux's webhook digest: lowercase hex SHA-256 of `token + name + namespace`.
pub fn hook_digest(token: &[u8], name: &str, namespace: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(token);
    hasher.update(name.as_bytes());
    hasher.update(namespace.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_digest_matches_flux() {
        // `printf %s tokennamenamespace | sha256sum`, computed outside this code.
        assert_eq!(
            hook_digest(b"token", "name", "namespace"),
            "033cd85fb94eef8b750b62b37d50fa65adb47b1f0ab5d6a8f9f6692e516e686a"
        );
    }

    #[test]
    fn only_unauthenticated_types_with_an_empty_token_are_open_to_anyone() {
        let receiver = |kind: ReceiverType, token: &str| Receiver {
            namespace: "apps".into(),
            name: "hook".into(),
            kind,
            events: vec![],
            resources: vec![],
            resource_filter: None,
            not_ready: None,
            suspend: false,
            token: SecretValue::new(token),
            secret_data: Default::default(),
            oidc_providers: vec![],
            hook_path: "/hook/x".into(),
        };
        for kind in [
            ReceiverType::Generic,
            ReceiverType::Dockerhub,
            ReceiverType::Quay,
            ReceiverType::Acr,
            ReceiverType::Cdevents,
        ] {
            assert!(receiver(kind, "").open_to_anyone().is_some(), "{kind}");
            assert!(receiver(kind, "t").open_to_anyone().is_none(), "{kind}");
        }
        // These prove themselves otherwise (an empty token never authenticates; an ID token).
        for kind in [
            ReceiverType::Github,
            ReceiverType::GenericHmac,
            ReceiverType::GenericOidc,
            ReceiverType::Gcr,
        ] {
            assert!(receiver(kind, "").open_to_anyone().is_none(), "{kind}");
        }
    }
}
