//! Manifests: `Receiver` and `Secret` documents parsed and checked as Flux checks them (field
//! by field, with the document and field named in every error), their expressions compiled,
//! and turned into served [`Receiver`]s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use super::{
    Catalog, DEFAULT_OIDC_AUDIENCE, OidcProvider, Receiver, ReceiverType, ResourceRef, SecretValue,
    hook_digest,
};
use crate::error::Error;
use crate::filter::Expression;

/// Flux's Receiver API versions whose spec fluxgate reads (v1beta2 has the same fields).
const RECEIVER_API_VERSIONS: &[&str] = &[
    "notification.toolkit.fluxcd.io/v1",
    "notification.toolkit.fluxcd.io/v1beta2",
];

impl Catalog {
    /// Parses a multi-document YAML stream of `Receiver` and `Secret` manifests. Other kinds are
    /// skipped, so the same file can carry the rest of an application's manifests.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut receivers = Vec::new();
        let mut secrets: HashMap<(String, String), BTreeMap<String, SecretValue>> = HashMap::new();
        for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let document = index + 1;
            let value = serde_yaml_ng::Value::deserialize(doc)
                .map_err(|source| Error::Yaml { document, source })?;
            if value.is_null() {
                continue;
            }
            let api_version = value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            match value.get("kind").and_then(|v| v.as_str()).unwrap_or("") {
                "Receiver" if RECEIVER_API_VERSIONS.contains(&api_version) => {
                    let manifest: ReceiverManifest = typed(document, "Receiver", value)?;
                    receivers.push((document, manifest));
                }
                "Secret" if api_version == "v1" => {
                    let manifest: SecretManifest = typed(document, "Secret", value)?;
                    let key = (
                        manifest.metadata.namespace(),
                        manifest.metadata.name.clone(),
                    );
                    let data = manifest.decode(document)?;
                    if secrets.insert(key, data).is_some() {
                        return Err(field_error(
                            document,
                            "Secret",
                            &manifest.metadata,
                            "metadata.name",
                            "defined twice in this file".into(),
                        ));
                    }
                }
                _ => {}
            }
        }

        let mut built = Vec::with_capacity(receivers.len());
        let mut seen = HashSet::new();
        for (document, manifest) in receivers {
            let object = manifest.object();
            let fail = |invalid: Invalid| Error::Field {
                document,
                kind: "Receiver",
                object: object.clone(),
                field: invalid.field,
                reason: invalid.reason,
            };
            if !seen.insert(object.clone()) {
                return Err(fail(Invalid::new(
                    "metadata.name",
                    "defined twice in this file",
                )));
            }
            let key = (
                manifest.metadata.namespace(),
                manifest.secret_name().unwrap_or_default().to_owned(),
            );
            let secret = secrets
                .get(&key)
                .map_or(SecretLookup::Missing, SecretLookup::Found);
            let receiver = manifest.into_receiver(secret).map_err(fail)?;
            if let Some(reason) = &receiver.not_ready {
                tracing::warn!(receiver = %object, %reason, "receiver not ready");
            }
            built.push(receiver);
        }
        Ok(Self::new(built))
    }
}

/// Deserializes one document into its manifest type, naming the failing field.
fn typed<T: serde::de::DeserializeOwned>(
    document: usize,
    kind: &'static str,
    value: serde_yaml_ng::Value,
) -> Result<T, Error> {
    let object = object_name(&value);
    serde_path_to_error::deserialize(value).map_err(|e| Error::Field {
        document,
        kind,
        object,
        field: e.path().to_string(),
        reason: e.into_inner().to_string(),
    })
}

fn object_name(value: &serde_yaml_ng::Value) -> String {
    let meta = value.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(|v| v.as_str());
    format!(
        "{}/{}",
        get("namespace").unwrap_or("default"),
        get("name").unwrap_or("?")
    )
}

fn field_error(
    document: usize,
    kind: &'static str,
    meta: &Metadata,
    field: &str,
    reason: String,
) -> Error {
    Error::Field {
        document,
        kind,
        object: format!("{}/{}", meta.namespace(), meta.name),
        field: field.into(),
        reason,
    }
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

impl Metadata {
    /// kubectl's default namespace when a manifest names none.
    fn namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| "default".into())
    }
}

#[derive(Deserialize)]
pub struct ReceiverManifest {
    metadata: Metadata,
    spec: ReceiverSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiverSpec {
    #[serde(rename = "type")]
    kind: ReceiverType,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
    #[serde(default)]
    resource_filter: Option<String>,
    #[serde(default)]
    secret_ref: Option<SecretRef>,
    #[serde(default)]
    suspend: bool,
    #[serde(default)]
    oidc_providers: Vec<OidcProviderSpec>,
}

/// One entry of `spec.resources`, as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpec {
    #[serde(default)]
    api_version: Option<String>,
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    filter: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OidcProviderSpec {
    #[serde(default, rename = "issuerURL")]
    issuer_url: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    variables: Vec<NamedExpression>,
    #[serde(default)]
    validations: Vec<Validation>,
}

#[derive(Deserialize)]
struct NamedExpression {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expression: String,
}

#[derive(Deserialize)]
struct Validation {
    #[serde(default)]
    expression: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct SecretRef {
    name: String,
}

/// What the loader found of a Receiver's token Secret.
#[derive(Debug, Clone, Copy)]
pub enum SecretLookup<'a> {
    /// The Secret's data.
    Found(&'a BTreeMap<String, SecretValue>),
    /// There is no such Secret.
    Missing,
    /// Not read: the dispatcher needs no token (hook paths and verification are ingest's), so
    /// it is not given the right to read Secrets.
    NotRead,
}

/// Why a Receiver cannot be served at all: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

const NAME_RULE: &str = "must be a Kubernetes name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters";

/// A DNS-1123 subdomain of at most `max` characters (a label when it holds no `.`).
fn is_kubernetes_name(name: &str, max: usize) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= max
                && alphanumeric(first)
                && alphanumeric(last)
                && bytes
                    .iter()
                    .all(|&b| alphanumeric(b) || b == b'-' || b == b'.')
        }
        _ => false,
    }
}

impl ReceiverManifest {
    /// `namespace/name`.
    fn object(&self) -> String {
        format!("{}/{}", self.metadata.namespace(), self.metadata.name)
    }

    /// The Secret the receiver names, if any.
    pub fn secret_name(&self) -> Option<&str> {
        self.spec.secret_ref.as_ref().map(|r| r.name.as_str())
    }

    pub fn into_receiver(self, secret: SecretLookup<'_>) -> Result<Receiver, Invalid> {
        let namespace = self.metadata.namespace();
        // The API server guarantees both; a receivers file does not, and they become NATS
        // subject tokens and header values.
        if !is_kubernetes_name(&self.metadata.name, 253) {
            return Err(Invalid::new("metadata.name", NAME_RULE));
        }
        if !is_kubernetes_name(&namespace, 63) || namespace.contains('.') {
            return Err(Invalid::new(
                "metadata.namespace",
                "must be a Kubernetes namespace: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters",
            ));
        }
        let empty = BTreeMap::new();
        let secret_data = match (self.secret_name(), self.spec.kind, secret) {
            (Some(_), ReceiverType::GenericOidc, _) => {
                return Err(Invalid::new(
                    "spec.secretRef",
                    "must not be set for type generic-oidc",
                ));
            }
            (None, ReceiverType::GenericOidc, _) | (_, _, SecretLookup::NotRead) => &empty,
            (None, kind, _) => {
                return Err(Invalid::new(
                    "spec.secretRef.name",
                    format!("required for type {kind}"),
                ));
            }
            (Some(name), _, SecretLookup::Missing) => {
                return Err(Invalid::new(
                    "spec.secretRef.name",
                    format!("Secret {namespace}/{name} not found"),
                ));
            }
            (Some(_), _, SecretLookup::Found(data)) => data,
        };
        let token = match (self.spec.kind, secret) {
            (ReceiverType::GenericOidc, _) | (_, SecretLookup::NotRead) => SecretValue::default(),
            _ => secret_data.get("token").cloned().ok_or_else(|| {
                Invalid::new("spec.secretRef.name", "the Secret has no key 'token'")
            })?,
        };
        let hook_path = format!(
            "/hook/{}",
            hook_digest(token.expose(), &self.metadata.name, &namespace)
        );
        let mut not_ready = Vec::new();
        if self.spec.kind == ReceiverType::Gcr && !matches!(secret, SecretLookup::NotRead) {
            // Flux refuses every webhook then; the receiver can never serve, so say so once.
            for key in ["email", "audience"] {
                if secret_data.get(key).is_none_or(SecretValue::is_empty) {
                    not_ready.push(format!(
                        "spec.secretRef.name: the Secret has no '{key}', which type gcr needs"
                    ));
                }
            }
        }
        // What a filter may name, as Flux declares it: `claims` only for generic-oidc.
        let declared: &[&str] = if self.spec.kind == ReceiverType::GenericOidc {
            &["res", "req", "claims"]
        } else {
            &["res", "req"]
        };
        let resource_filter = filter(
            &mut not_ready,
            "spec.resourceFilter",
            self.spec.resource_filter.as_deref(),
            declared,
        );
        let resources = (self.spec.resources.into_iter().enumerate())
            .map(|(i, spec)| ResourceRef {
                filter: filter(
                    &mut not_ready,
                    &format!("spec.resources[{i}].filter"),
                    spec.filter.as_deref(),
                    declared,
                ),
                api_version: spec.api_version,
                kind: spec.kind,
                name: spec.name,
                namespace: spec.namespace,
                match_labels: spec.match_labels,
            })
            .collect();
        let oidc_providers = oidc_providers(self.spec.oidc_providers, &mut not_ready);
        if self.spec.kind == ReceiverType::GenericOidc && oidc_providers.is_empty() {
            not_ready
                .push("spec.oidcProviders: at least one is required for type generic-oidc".into());
        }
        let not_ready = (!not_ready.is_empty()).then(|| not_ready.join("; "));
        Ok(Receiver {
            namespace,
            name: self.metadata.name,
            kind: self.spec.kind,
            events: self.spec.events,
            resources,
            resource_filter,
            suspend: self.spec.suspend,
            not_ready,
            token,
            secret_data: secret_data.clone(),
            oidc_providers,
            hook_path,
        })
    }
}

/// The names an OIDC provider's expressions may use, as Flux declares them.
const OIDC_DECLARED: &[&str] = &["claims", "vars"];

/// `spec.oidcProviders`, checked as Flux's `ValidateOIDCProvidersSpec` checks them and compiled;
/// what is wrong is added to `errors`. An empty expression is an error, never skipped: a
/// provider whose validations all vanished would accept any token of its issuer.
fn oidc_providers(specs: Vec<OidcProviderSpec>, errors: &mut Vec<String>) -> Vec<OidcProvider> {
    let mut providers = Vec::with_capacity(specs.len());
    let mut issuers = HashSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let field = format!("spec.oidcProviders[{i}]");
        let issuer = &spec.issuer_url;
        if issuer.is_empty() {
            errors.push(format!("{field}.issuerURL: required"));
        } else if !(issuer.starts_with("http://") || issuer.starts_with("https://")) {
            errors.push(format!(
                "{field}.issuerURL: {issuer:?} must start with http:// or https://"
            ));
        } else if !issuers.insert(issuer.clone()) {
            errors.push(format!("{field}.issuerURL: duplicate issuerURL {issuer:?}"));
        }
        if spec.audience.as_deref() == Some("") {
            errors.push(format!("{field}.audience: must not be empty"));
        }
        if spec.validations.is_empty() {
            errors.push(format!(
                "{field}.validations: at least one validation is required; without validations \
                 any caller able to obtain a token from this issuer can trigger the Receiver"
            ));
        }
        let mut variables = Vec::new();
        for (j, v) in spec.variables.into_iter().enumerate() {
            let field = format!("{field}.variables[{j}]");
            if v.name.is_empty() {
                errors.push(format!("{field}.name: required"));
            }
            let compiled = required(errors, &format!("{field}.expression"), &v.expression)
                .and_then(|source| {
                    compiled(errors, &field, Expression::compile(source, OIDC_DECLARED))
                });
            variables.extend(compiled.map(|e| (v.name, e)));
        }
        let mut validations = Vec::new();
        for (j, v) in spec.validations.into_iter().enumerate() {
            let field = format!("{field}.validations[{j}]");
            if v.message.is_empty() {
                errors.push(format!("{field}.message: required"));
            }
            let compiled = required(errors, &format!("{field}.expression"), &v.expression)
                .and_then(|source| {
                    compiled(errors, &field, Expression::condition(source, OIDC_DECLARED))
                });
            validations.extend(compiled.map(|e| (e, v.message)));
        }
        providers.push(OidcProvider {
            issuer_url: spec.issuer_url,
            audience: spec
                .audience
                .unwrap_or_else(|| DEFAULT_OIDC_AUDIENCE.into()),
            variables,
            validations,
        });
    }
    providers
}

/// A filter (`spec.resourceFilter`, `resources[].filter`): absent or `""` means none, as in
/// Flux; one that does not compile, or is seen not to return a bool, is added to `errors`.
fn filter(
    errors: &mut Vec<String>,
    field: &str,
    source: Option<&str>,
    declared: &[&str],
) -> Option<Expression> {
    let source = source.filter(|s| !s.is_empty())?;
    compiled(errors, field, Expression::condition(source, declared))
}

fn required<'a>(errors: &mut Vec<String>, field: &str, value: &'a str) -> Option<&'a str> {
    if value.is_empty() {
        errors.push(format!("{field}: required"));
        None
    } else {
        Some(value)
    }
}

fn compiled(
    errors: &mut Vec<String>,
    field: &str,
    result: Result<Expression, String>,
) -> Option<Expression> {
    result
        .map_err(|e| errors.push(format!("{field}: invalid CEL expression: {e}")))
        .ok()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretManifest {
    metadata: Metadata,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
}

impl SecretManifest {
    /// `data` is base64; `stringData` is plain and wins over `data`, as in the API server.
    fn decode(&self, document: usize) -> Result<BTreeMap<String, SecretValue>, Error> {
        let mut out = BTreeMap::new();
        for (key, encoded) in &self.data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| {
                    field_error(
                        document,
                        "Secret",
                        &self.metadata,
                        &format!("data.{key}"),
                        format!("not valid base64: {e}"),
                    )
                })?;
            out.insert(key.clone(), SecretValue::new(bytes));
        }
        for (key, plain) in &self.string_data {
            out.insert(key.clone(), SecretValue::new(plain.as_bytes()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: webhook-token
  namespace: flux-system
stringData:
  token: s3cret
---
apiVersion: v1
kind: Secret
metadata:
  name: b64-token
  namespace: apps
data:
  token: aGVsbG8=
---
apiVersion: notification.toolkit.fluxcd.io/v1
kind: Receiver
metadata:
  name: github-receiver
  namespace: flux-system
spec:
  type: github
  events: ["ping", "Push"]
  secretRef:
    name: webhook-token
  resources:
    - kind: GitRepository
      name: webapp
---
apiVersion: notification.toolkit.fluxcd.io/v1
kind: Receiver
metadata:
  name: generic
  namespace: apps
spec:
  type: generic
  suspend: true
  secretRef:
    name: b64-token
  resources:
    - apiVersion: source.toolkit.fluxcd.io/v1
      kind: GitRepository
      name: "*"
      matchLabels:
        app: web
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata:
  name: ignored
"#;

    fn receiver<'a>(catalog: &'a Catalog, token: &str, name: &str, ns: &str) -> &'a Receiver {
        catalog
            .get(&hook_digest(token.as_bytes(), name, ns))
            .expect("receiver by digest")
    }

    #[test]
    fn parses_receivers_with_string_and_base64_secrets() {
        let catalog = Catalog::parse(FILE).expect("valid file");
        assert_eq!(catalog.len(), 2);
        let gh = receiver(&catalog, "s3cret", "github-receiver", "flux-system");
        assert_eq!(gh.kind, ReceiverType::Github);
        assert_eq!(gh.token.expose(), b"s3cret");
        assert_eq!(gh.resources[0].kind, "GitRepository");
        assert!(gh.allows_event("push") && gh.allows_event("PING") && !gh.allows_event("release"));
        assert_eq!(
            catalog
                .by_name("flux-system", "github-receiver")
                .map(|r| r.kind),
            Some(ReceiverType::Github)
        );
        assert!(catalog.by_name("apps", "github-receiver").is_none());
        let generic = receiver(&catalog, "hello", "generic", "apps");
        assert!(generic.suspend);
        assert!(generic.allows_event("anything"));
        assert_eq!(
            generic.resources[0]
                .match_labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(
            generic.hook_path,
            format!("/hook/{}", hook_digest(b"hello", "generic", "apps"))
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let catalog = Catalog::parse(FILE).expect("valid file");
        let text = format!("{catalog:?}");
        assert!(
            !text.contains("s3cret") && !text.contains("hello"),
            "{text}"
        );
    }

    fn error_of(text: &str) -> String {
        Catalog::parse(text).expect_err("must fail").to_string()
    }

    #[test]
    fn unknown_type_names_document_and_field() {
        let bad = FILE.replace("type: github", "type: githb");
        let msg = error_of(&bad);
        assert!(
            msg.starts_with("document 3 (Receiver flux-system/github-receiver): spec.type:"),
            "{msg}"
        );
    }

    #[test]
    fn missing_secret_names_the_reference() {
        let bad = FILE.replace(
            "name: webhook-token\n  resources",
            "name: nope\n  resources",
        );
        let msg = error_of(&bad);
        assert!(
            msg.contains("spec.secretRef.name") && msg.contains("flux-system/nope"),
            "{msg}"
        );
    }

    proptest::proptest! {
        /// The catalog loader never panics: any text loads or fails with a message.
        #[test]
        fn any_text_loads_or_fails_cleanly(text in "(?s).{0,400}") {
            if let Err(error) = Catalog::parse(&text) {
                proptest::prop_assert!(!error.to_string().is_empty());
            }
        }

        /// Any name and token in a valid file: loaded receivers have Kubernetes names (they
        /// become NATS subject tokens and headers), or the load names the field.
        #[test]
        fn any_name_or_token_loads_safely_or_names_the_field(
            name in "(?s).{0,40}",
            token in "(?s).{0,40}",
        ) {
            let quoted = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
            let text = FILE
                .replace("name: github-receiver", &format!("name: {}", quoted(&name)))
                .replace("token: s3cret", &format!("token: {}", quoted(&token)));
            match Catalog::parse(&text) {
                Ok(catalog) => {
                    for receiver in catalog.receivers() {
                        proptest::prop_assert!(is_kubernetes_name(&receiver.name, 253));
                    }
                }
                Err(error) => proptest::prop_assert!(error.to_string().contains("document")),
            }
        }
    }

    #[test]
    fn names_that_are_not_kubernetes_names_are_refused() {
        for (name, field) in [
            ("\"github\\nreceiver\"", "metadata.name"),
            ("\"github receiver\"", "metadata.name"),
            ("GitHub", "metadata.name"),
            ("\"github>\"", "metadata.name"),
            ("-github", "metadata.name"),
        ] {
            let bad = FILE.replace("name: github-receiver", &format!("name: {name}"));
            let msg = error_of(&bad);
            assert!(
                msg.contains(&format!("{field}: must be a Kubernetes name")),
                "{name}: {msg}"
            );
        }
        let dotted = FILE.replace("name: github-receiver", "name: github.receiver-1");
        assert!(Catalog::parse(&dotted).is_ok(), "dots are allowed in names");
    }

    #[test]
    fn secret_without_token_is_rejected() {
        let bad = FILE.replace("token: s3cret", "other: s3cret");
        assert!(error_of(&bad).contains("no key 'token'"));
    }

    #[test]
    fn bad_base64_names_the_key() {
        let bad = FILE.replace("token: aGVsbG8=", "token: '%%%'");
        let msg = error_of(&bad);
        assert!(
            msg.contains("document 2 (Secret apps/b64-token): data.token: not valid base64"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_yaml_names_the_document() {
        let msg = error_of("kind: Secret\n---\nkind: [unclosed\n");
        assert!(msg.starts_with("document 2: not valid YAML"), "{msg}");
    }

    #[test]
    fn oidc_receivers_need_no_secret_and_refuse_one() {
        let oidc = "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata: {name: o, namespace: n}\nspec: {type: generic-oidc}\n";
        assert_eq!(Catalog::parse(oidc).expect("valid").len(), 1);
        let with_secret = oidc.replace("generic-oidc}", "generic-oidc, secretRef: {name: s}}");
        assert!(error_of(&with_secret).contains("spec.secretRef: must not be set"));
    }

    #[test]
    fn filters_compile_at_load_and_an_invalid_one_makes_the_receiver_not_ready() {
        let with_filters = FILE.replace(
            "      name: webapp\n",
            "      name: webapp\n      filter: req.action == 'push'\n  resourceFilter: res.metadata.name != ''\n",
        );
        let catalog = Catalog::parse(&with_filters).expect("valid");
        let gh = receiver(&catalog, "s3cret", "github-receiver", "flux-system");
        assert!(gh.has_filters() && gh.not_ready.is_none());
        assert_eq!(
            gh.resources[0].filter.as_ref().map(Expression::source),
            Some("req.action == 'push'")
        );
        assert_eq!(catalog.not_ready(), 0);

        let broken = with_filters.replace("req.action == 'push'", "req.action ==");
        let catalog = Catalog::parse(&broken).expect("the file still loads");
        let gh = receiver(&catalog, "s3cret", "github-receiver", "flux-system");
        let reason = gh.not_ready.as_deref().expect("not ready");
        assert!(
            reason.starts_with("spec.resources[0].filter: invalid CEL expression"),
            "{reason}"
        );
        assert_eq!(catalog.not_ready(), 1);
    }

    /// Why an OIDC receiver with these `oidcProviders` (YAML flow) is not ready, if it is not.
    fn oidc_not_ready(providers: &str) -> Option<String> {
        let text = format!(
            "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata: {{name: o, namespace: n}}\nspec: {{type: generic-oidc, oidcProviders: {providers}}}\n"
        );
        let catalog = Catalog::parse(&text).expect("loads");
        let receiver = catalog.by_name("n", "o").expect("receiver");
        receiver.not_ready.clone()
    }

    /// notification-controller's `TestValidateOIDCProvidersSpec` and `TestCompileOIDCProviders`.
    #[test]
    fn oidc_providers_are_checked_as_flux_checks_them() {
        let check = "validations: [{expression: \"claims.repository_owner == 'my-org'\", message: wrong org}]";
        let ok = |p: &str| assert_eq!(oidc_not_ready(p), None, "{p}");
        let refused = |p: &str, says: &str| {
            let reason = oidc_not_ready(p).unwrap_or_default();
            assert!(reason.contains(says), "{p}: {reason:?} should say {says:?}");
        };
        ok(&format!(
            "[{{issuerURL: 'https://a', audience: aud, {check}}}, {{issuerURL: 'https://b', audience: aud, {check}}}]"
        ));
        ok(&format!("[{{issuerURL: 'https://a', {check}}}]"));
        refused(
            &format!("[{{audience: aud, {check}}}]"),
            "issuerURL: required",
        );
        refused(
            &format!("[{{issuerURL: example.com, audience: aud, {check}}}]"),
            "must start with http:// or https://",
        );
        refused(
            &format!(
                "[{{issuerURL: 'https://a', audience: aud, variables: [{{name: x}}], {check}}}]"
            ),
            "variables[0].expression: required",
        );
        refused(
            "[{issuerURL: 'https://a', audience: aud, validations: [{message: msg}]}]",
            "validations[0].expression: required",
        );
        refused(
            &format!(
                "[{{issuerURL: 'https://a', audience: aud, {check}}}, {{issuerURL: 'https://a', audience: aud, {check}}}]"
            ),
            "duplicate issuerURL",
        );
        refused(
            "[{issuerURL: 'https://a', audience: aud}]",
            "at least one validation is required",
        );
        refused(
            &format!("[{{issuerURL: 'https://a', audience: '', {check}}}]"),
            "audience: must not be empty",
        );
        refused(
            &format!(
                "[{{issuerURL: 'https://a', variables: [{{expression: claims.x}}], {check}}}]"
            ),
            "variables[0].name: required",
        );
        refused(
            "[{issuerURL: 'https://a', validations: [{expression: 'true'}]}]",
            "validations[0].message: required",
        );
        // Compilation: a valid validation, then one that is not CEL at all.
        ok(
            "[{issuerURL: 'https://a', audience: aud, validations: [{expression: \"claims.x == 'y'\", message: ok}]}]",
        );
        refused(
            "[{issuerURL: 'https://a', audience: aud, validations: [{expression: 'not-valid-cel ===', message: x}]}]",
            "validations[0]: invalid CEL expression",
        );
        // The names are Flux's: `vars`, not `variables`; validations must be bool.
        ok(
            "[{issuerURL: 'https://a', variables: [{name: o, expression: claims.owner}], validations: [{expression: \"vars.o == 'org'\", message: m}]}]",
        );
        refused(
            "[{issuerURL: 'https://a', variables: [{name: o, expression: claims.owner}], validations: [{expression: \"variables.o == 'org'\", message: m}]}]",
            "undeclared reference to 'variables'",
        );
        refused(
            "[{issuerURL: 'https://a', validations: [{expression: claims.sub, message: m}]}]",
            "expected bool, got dyn",
        );
    }

    #[test]
    fn claims_are_declared_for_generic_oidc_filters_only() {
        let providers = "oidcProviders: [{issuerURL: 'https://a', validations: [{expression: 'true', message: m}]}]";
        let filtered = |kind: &str, extra: &str| {
            format!(
                "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata: {{name: o, namespace: n}}\nspec: {{type: {kind}, resourceFilter: \"claims.sub == 'x'\"{extra}}}\n"
            )
        };
        let oidc =
            Catalog::parse(&filtered("generic-oidc", &format!(", {providers}"))).expect("loads");
        assert_eq!(oidc.not_ready(), 0);
        let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: n}\nstringData: {token: t}\n";
        let generic = filtered("generic", ", secretRef: {name: s}") + secret;
        let generic = Catalog::parse(&generic).expect("loads");
        let reason = generic.by_name("n", "o").and_then(|r| r.not_ready.clone());
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("undeclared reference to 'claims'")),
            "{reason:?}"
        );
    }

    #[test]
    fn duplicate_receivers_are_rejected() {
        let doubled = format!(
            "{FILE}\n---\n{}",
            FILE.split("---").nth(2).expect("third document")
        );
        assert!(error_of(&doubled).contains("defined twice"));
    }
}
