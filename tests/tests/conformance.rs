//! Flux conformance: every case of notification-controller's own receiver tests
//! (`Test_handlePayload`, `TestValidateGenericOIDC`, the claims processor, provider spec
//! validation and compilation, the CEL expression tests, filter stacking) plus go-oidc's checks
//! and Go's decoding, replayed through the real binaries (ingest and dispatcher watching
//! Receivers in the Kubernetes API stand-in, a real nats-server, local OIDC issuers) with the
//! inputs Flux's tests use. Each case states Flux's answer and fluxgate's -- status code and
//! number of objects annotated -- and where they differ, the case says why in its `differs`
//! field. Accepted is 200 for Flux (after patching) and 202 for fluxgate (once stored); that one
//! difference holds for every accepted case and is not repeated. The table is printed.

#[path = "conformance/cases.rs"]
mod cases;

use base64::Engine as _;
use fluxgate_tests::apiserver::{ApiServer, ObjectRef};
use fluxgate_tests::eventually;
use fluxgate_tests::http;
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::oidc::{self, Issuer, KEY_ID};
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{github_signature, hook_path};
use hmac::{KeyInit, Mac};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const TOKEN: &str = "token";
const RECEIVER: &str = "receiver";
const SOURCE: &str = "source.toolkit.fluxcd.io/v1";
const MAX_BODY: usize = 64 * 1024;
const GCR_EMAIL: &str = "push@p.iam.gserviceaccount.com";
const GCR_AUDIENCE: &str = "https://hooks.example.org";

/// An ID token a case sends.
#[derive(Clone, Copy)]
struct Token {
    /// Changes to the issuer's default claims (`null` removes a claim).
    claims: fn(&mut Value),
    kid: Option<&'static str>,
    alg: Algorithm,
    /// From the second issuer, which the receiver may not know.
    other_issuer: bool,
}

impl Token {
    fn of(claims: fn(&mut Value)) -> Self {
        Self {
            claims,
            kid: Some(KEY_ID),
            alg: Algorithm::RS256,
            other_issuer: false,
        }
    }
}

/// How a case's request proves itself.
#[derive(Clone, Copy)]
enum Auth {
    None,
    /// `X-Hub-Signature-256` (github, bitbucket).
    HubSignature,
    /// `X-Signature: sha256=...` (generic-hmac).
    XSignature,
    /// `X-Nexus-Webhook-Signature`: bare hex HMAC-SHA1.
    Nexus,
    /// `Authorization: Bearer <token>` from a local issuer.
    Oidc(Token),
    /// A Google-style token for gcr.
    Google,
    /// `Authorization` as given.
    Raw(&'static str),
    /// `Bearer header.<payload naming the main issuer>.sig`: Flux's unverified-issuer token.
    UnsignedWithIssuer,
}

impl Auth {
    fn token(claims: fn(&mut Value)) -> Self {
        Auth::Oidc(Token::of(claims))
    }
}

struct Case {
    /// The Flux test the case comes from.
    from: &'static str,
    name: &'static str,
    /// `spec` of the Receiver; `secretRef` is added unless the type is generic-oidc.
    spec: Value,
    /// `stringData` of the Secret `token`; `None`: no Secret at all.
    secret: Option<Value>,
    /// GitRepositories `(name, labels, annotations)` in the case's namespace; `ns/name` puts
    /// one in the namespace `<case namespace>-ns`.
    objects: Vec<(&'static str, Value, Value)>,
    headers: Vec<(&'static str, &'static str)>,
    /// Sent as JSON (Flux's test marshals its payload: `null` when it has none).
    body: Value,
    /// Sent instead of `body`, as is.
    raw_body: Option<Vec<u8>>,
    auth: Auth,
    flux: (u16, usize),
    fluxgate: (u16, usize),
    /// Why fluxgate answers differently, where it does.
    differs: Option<&'static str>,
    /// Something the response body must say.
    says: Option<&'static str>,
}

impl Case {
    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    fn objects(mut self, objects: Vec<(&'static str, Value, Value)>) -> Self {
        self.objects = objects;
        self
    }

    fn headers(mut self, headers: &[(&'static str, &'static str)]) -> Self {
        self.headers = headers.to_vec();
        self
    }

    fn body(mut self, body: Value) -> Self {
        self.body = body;
        self
    }

    fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    fn says(mut self, says: &'static str) -> Self {
        self.says = Some(says);
        self
    }

    fn answers(mut self, flux: (u16, usize), fluxgate: (u16, usize)) -> Self {
        self.flux = flux;
        self.fluxgate = fluxgate;
        self
    }

    fn differs(mut self, why: &'static str) -> Self {
        self.differs = Some(why);
        self
    }

    fn body_bytes(&self) -> Vec<u8> {
        self.raw_body
            .clone()
            .unwrap_or_else(|| self.body.to_string().into_bytes())
    }
}

fn hmac_hex<D: hmac::EagerHash>(body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<D> as KeyInit>::new_from_slice(TOKEN.as_bytes()).expect("any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Where an object of a case lives: `ns/name` is in a namespace of its own.
fn placed<'a>(namespace: &str, name: &'a str) -> (String, &'a str) {
    match name.split_once('/') {
        Some((suffix, name)) => (format!("{namespace}-{suffix}"), name),
        None => (namespace.to_owned(), name),
    }
}

/// The objects of one case, in its own namespace.
fn install(api: &ApiServer, namespace: &str, case: &Case) {
    if let Some(data) = &case.secret {
        api.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token", "namespace": namespace}, "stringData": data}));
    }
    if !case.spec.is_null() {
        let mut spec = case.spec.clone();
        if spec["type"] != "generic-oidc" {
            spec["secretRef"] = json!({"name": "token"});
        }
        api.apply(json!({"apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver", "metadata": {"name": RECEIVER, "namespace": namespace}, "spec": spec}));
    }
    for (name, labels, annotations) in &case.objects {
        let (namespace, name) = placed(namespace, name);
        api.apply(json!({
            "apiVersion": SOURCE,
            "kind": "GitRepository",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        }));
    }
}

async fn send(
    ingest: &Ingest,
    issuers: [&Issuer; 2],
    namespace: &str,
    case: &Case,
) -> http::Response {
    let body = case.body_bytes();
    let mut headers: Vec<(String, String)> = case
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let bearer = |claims: &Value, token: &Token| {
        format!("Bearer {}", oidc::sign_with(claims, token.kid, token.alg))
    };
    let signature = match case.auth {
        Auth::None => None,
        Auth::HubSignature => Some(("X-Hub-Signature-256", github_signature(TOKEN, &body))),
        Auth::XSignature => Some((
            "X-Signature",
            format!("sha256={}", hmac_hex::<sha2::Sha256>(&body)),
        )),
        Auth::Nexus => Some(("X-Nexus-Webhook-Signature", hmac_hex::<sha1::Sha1>(&body))),
        Auth::Oidc(token) => {
            let issuer = issuers[usize::from(token.other_issuer)];
            let mut claims = issuer.claims("notification-controller");
            (token.claims)(&mut claims);
            Some(("Authorization", bearer(&claims, &token)))
        }
        Auth::Google => {
            let mut claims = issuers[0].claims(GCR_AUDIENCE);
            claims["iss"] = json!("https://accounts.google.com");
            claims["email"] = json!(GCR_EMAIL);
            claims["email_verified"] = json!(true);
            Some(("Authorization", bearer(&claims, &Token::of(|_| {}))))
        }
        Auth::Raw(value) => Some(("Authorization", value.to_owned())),
        Auth::UnsignedWithIssuer => {
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({"iss": issuers[0].url()}).to_string());
            Some(("Authorization", format!("Bearer header.{payload}.sig")))
        }
    };
    headers.extend(signature.map(|(name, value)| (name.to_owned(), value)));
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let path = if case.spec.is_null() {
        "/hook/0000000000000000000000000000000000000000000000000000000000000000".to_owned()
    } else {
        let token = if case.spec["type"] == "generic-oidc" {
            ""
        } else {
            TOKEN
        };
        hook_path(token, RECEIVER, namespace)
    };
    http::post(&ingest.hook_url(&path), &headers, body)
        .await
        .expect("request")
}

/// Whether the dispatcher is done with a delivery: it resolved the targets and recorded a
/// final outcome (patched or failed) for each of them.
fn settled(events: &[Value], receiver: &str, delivery: &str) -> bool {
    let of_delivery: Vec<&Value> = events
        .iter()
        .filter(|e| e["receiver"] == receiver && e["delivery"] == delivery)
        .collect();
    let Some(dispatched) = of_delivery.iter().find(|e| e["type"] == "dispatched") else {
        return false;
    };
    let targets = dispatched["targets"].as_array().map_or(0, Vec::len);
    let finished = of_delivery
        .iter()
        .filter(|e| e["type"] == "patched" || (e["type"] == "failed" && e.get("target").is_some()))
        .count();
    finished >= targets
}

fn annotated(api: &ApiServer, namespace: &str, case: &Case) -> usize {
    case.objects
        .iter()
        .filter(|(name, _, _)| {
            let (namespace, name) = placed(namespace, name);
            api.get(&ObjectRef::new(SOURCE, "GitRepository", &namespace, name))
                .is_some_and(|o| {
                    o["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].is_string()
                })
        })
        .count()
}

#[tokio::test]
async fn flux_receiver_handler_cases() {
    let stack = Stack::builder().cluster([]).start().await;
    let api = stack.api();
    let issuer = Issuer::start().await;
    let other = Issuer::start().await;
    let cases = cases::all(&cases::Issuers {
        main: issuer.url(),
        other: other.url(),
    });
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            case.differs.is_some(),
            case.flux.1 != case.fluxgate.1
                || !(case.flux.0 == case.fluxgate.0
                    || (case.flux.0 == 200 && case.fluxgate.0 == 202)),
            "case {:?} must say why it differs from Flux, and only then",
            case.name
        );
        install(api, &format!("case-{i}"), case);
    }
    let max_body = MAX_BODY.to_string();
    let keys = issuer.keys_url();
    let ingest = stack
        .start_ingest(&["--max-body-bytes", &max_body, "--google-certs-url", &keys])
        .await;
    let _dispatcher = stack
        .start_dispatcher(&[
            "--no-cross-namespace-refs",
            "--leader-election",
            "false",
            "--coalesce-window",
            "50ms",
        ])
        .await;

    let mut answers = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        answers.push(send(&ingest, [&issuer, &other], &format!("case-{i}"), case).await);
    }

    eventually("every accepted case settled", || async {
        let events = stack.outcomes().await;
        let pending: Vec<&str> = cases
            .iter()
            .zip(&answers)
            .enumerate()
            .filter(|(_, (_, answer))| answer.status == 202)
            .filter(|(i, (_, answer))| {
                let delivery = answer.json()["delivery"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                !settled(&events, &format!("case-{i}/{RECEIVER}"), &delivery)
            })
            .map(|(_, (case, _))| case.name)
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending)
        }
    })
    .await;

    let mut report = vec![
        "| Flux test | case | Flux | fluxgate | why fluxgate differs |\n|---|---|---|---|---|"
            .to_owned(),
    ];
    let mut failures = Vec::new();
    for (i, (case, answer)) in cases.iter().zip(&answers).enumerate() {
        let got = (answer.status, annotated(api, &format!("case-{i}"), case));
        report.push(format!(
            "| {} | {} | {} / {} | {} / {} | {} |",
            case.from,
            case.name,
            case.flux.0,
            case.flux.1,
            got.0,
            got.1,
            case.differs.unwrap_or("")
        ));
        if got != case.fluxgate {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}: {:?}",
                case.name, case.fluxgate, answer.body
            ));
        }
        if let Some(says) = case.says {
            let body = String::from_utf8_lossy(&answer.body);
            if !body.contains(says) {
                failures.push(format!("{}: body {body:?} should say {says:?}", case.name));
            }
        }
    }
    let table = report.join("\n");
    println!("{table}");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    check_published_table(&table);
}

/// The table in `docs/answers.md` is this test's output: rewritten with `FLUXGATE_BLESS=1`,
/// else it must be what the test just found.
fn check_published_table(table: &str) {
    const BEGIN: &str = "<!-- BEGIN conformance table";
    const END: &str = "<!-- END conformance table -->";
    let path = fluxgate_tests::repository_root().join("docs/answers.md");
    let page = std::fs::read_to_string(&path).expect("read docs/answers.md");
    let start = page.find(BEGIN).expect("the table's BEGIN marker");
    let start = start + page[start..].find('\n').expect("marker line") + 1;
    let end = page.find(END).expect("the table's END marker");
    let published = page[start..end].trim_end();
    if std::env::var_os("FLUXGATE_BLESS").is_some() {
        let updated = format!("{}{table}\n{}", &page[..start], &page[end..]);
        std::fs::write(&path, updated).expect("write docs/answers.md");
    } else {
        assert!(
            published == table,
            "docs/answers.md's conformance table is not what the test found; \
             run it with FLUXGATE_BLESS=1 and commit the result"
        );
    }
}
