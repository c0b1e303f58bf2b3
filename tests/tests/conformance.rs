//! Flux conformance: notification-controller's own receiver handler cases, replayed through the
//! real binaries (ingest and dispatcher watching Receivers in the Kubernetes API stand-in, a real
//! nats-server, a local OIDC issuer). Each case states Flux's answer and fluxgate's -- status
//! code and number of objects annotated -- and where they differ, the case says why in its
//! `differs` field. Accepted is 200 for Flux (after patching) and 202 for fluxgate (once stored);
//! that one difference holds for every accepted case and is not repeated.

use std::time::Duration;

use fluxgate_shared::pubsub;
use fluxgate_tests::apiserver::{ApiServer, ObjectRef};
use fluxgate_tests::dispatcher::{Dispatcher, outcomes};
use fluxgate_tests::http;
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::oidc::{self, Issuer, KEY_ID};
use fluxgate_tests::webhook::{github_signature, hook_path};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

const TOKEN: &str = "token";
const RECEIVER: &str = "receiver";
const SOURCE: &str = "source.toolkit.fluxcd.io/v1";
const MAX_BODY: usize = 64 * 1024;
const GCR_EMAIL: &str = "push@p.iam.gserviceaccount.com";
const GCR_AUDIENCE: &str = "https://hooks.example.org";
const MERGED: &str = "dev.cdevents.change.merged.0.2.0";
const DEADLINE: Duration = Duration::from_secs(60);

/// How a case's request proves itself.
#[derive(Clone, Copy)]
enum Auth {
    None,
    /// `X-Hub-Signature-256` (github, bitbucket).
    HubSignature,
    /// `X-Signature: sha256=...` (generic-hmac).
    XSignature,
    GitlabToken,
    /// `Authorization: <token>` (harbor).
    Authorization,
    /// `X-Nexus-Webhook-Signature`: bare hex HMAC-SHA1.
    Nexus,
    /// A token from the local issuer with these claims changes (`null` removes a claim).
    Oidc(fn(&mut Value)),
    /// A Google-style token for gcr.
    Google,
    /// Any header value, as given.
    Raw(&'static str, &'static str),
}

struct Case {
    name: &'static str,
    /// `spec` of the Receiver; `secretRef` is added unless the type is generic-oidc or `secret`
    /// says otherwise.
    spec: Value,
    /// `stringData` of the Secret `token`; `None`: no Secret at all.
    secret: Option<Value>,
    /// GitRepositories in the case's namespace: `(name, labels, annotations)`.
    objects: Vec<(&'static str, Value, Value)>,
    headers: Vec<(&'static str, &'static str)>,
    body: Value,
    auth: Auth,
    flux: (u16, usize),
    fluxgate: (u16, usize),
    /// Why fluxgate answers differently, where it does.
    differs: Option<&'static str>,
    /// Something the response body must say.
    says: Option<&'static str>,
}

fn case(name: &'static str, spec: Value) -> Case {
    Case {
        name,
        spec,
        secret: Some(json!({"token": TOKEN})),
        objects: vec![("app", json!({}), json!({}))],
        headers: vec![],
        body: json!({}),
        auth: Auth::None,
        flux: (200, 1),
        fluxgate: (202, 1),
        differs: None,
        says: None,
    }
}

impl Case {
    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
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
}

fn app() -> Value {
    json!([{"kind": "GitRepository", "name": "app"}])
}

/// Two candidates, of which the filter keeps `app`: `res` and `req` both at work.
fn filtered(kind: &str, req_check: &str) -> Value {
    json!({
        "type": kind,
        "resources": [{"kind": "GitRepository", "name": "app"}, {"kind": "GitRepository", "name": "app-2"}],
        "resourceFilter": format!("res.metadata.name == 'app' && {req_check}"),
    })
}

fn two_objects() -> Vec<(&'static str, Value, Value)> {
    vec![
        ("app", json!({}), json!({})),
        ("app-2", json!({}), json!({})),
    ]
}

fn oidc_spec(issuer: &str, validations: Value, variables: Value) -> Value {
    json!({
        "type": "generic-oidc",
        "resources": app(),
        "oidcProviders": [{"issuerURL": issuer, "variables": variables, "validations": validations}],
    })
}

const CREDENTIAL: &str = "fluxgate answers 401 to a missing or bad credential";
const NOT_SENDERS: &str = "stored and answered 202; the failure is recorded by the dispatcher, as it is not the sender's to fix";

fn cases(issuer: &str) -> Vec<Case> {
    let cdevent = |events: Value| json!({"type": "cdevents", "events": events, "resources": app()});
    let cdevent_body = json!({
        "context": {"version": "0.4.1", "id": "271069a8-fc18-44f1-b38f-9d70a1695819", "source": "/event/source/123", "type": MERGED, "timestamp": "2023-03-20T14:27:05.315384Z"},
        "subject": {"id": "s", "source": "/event/source/123", "type": "change", "content": {"repository": {"id": "cdevents/service", "source": "https://example.org"}}}
    });
    let valid_oidc = || {
        oidc_spec(
            issuer,
            json!([{"expression": "claims.sub == 'tester'", "message": "not the tester"}]),
            json!([]),
        )
    };
    let json_ct = ("content-type", "application/json");
    vec![
        case("generic receiver", json!({"type": "generic", "resources": app()})),
        case("gitlab receiver", json!({"type": "gitlab", "resources": app()}))
            .with(|c| c.auth = Auth::GitlabToken),
        case("cdevents receiver with a matching event filter", cdevent(json!([MERGED])))
            .with(|c| {
                c.headers = vec![json_ct, ("ce-type", MERGED), ("ce-id", "1"), ("ce-source", "/ci")];
                c.body = cdevent_body.clone();
            }),
        case("cdevents receiver with a wrong event filter", cdevent(json!(["dev.cdevents.change.abandoned.0.2.0"])))
            .with(|c| {
                c.headers = vec![json_ct, ("ce-type", MERGED), ("ce-id", "2"), ("ce-source", "/ci")];
                c.body = cdevent_body.clone();
                c.says = Some("\"ignored\":true");
            })
            .answers((400, 0), (200, 0))
            .differs("an event outside spec.events is ignored with 200: GitLab disables a hook that answers 4xx"),
        case("cdevents receiver without an event filter", cdevent(json!([])))
            .with(|c| {
                c.headers = vec![json_ct, ("ce-type", MERGED), ("ce-id", "3"), ("ce-source", "/ci")];
                c.body = cdevent_body.clone();
            }),
        case("github receiver (sha256)", json!({"type": "github", "resources": app()}))
            .with(|c| {
                c.auth = Auth::HubSignature;
                c.headers = vec![json_ct, ("x-github-event", "push"), ("x-github-delivery", "g-1")];
                c.body = json!({"action": "push"});
            }),
        case("generic hmac receiver", json!({"type": "generic-hmac", "resources": app()}))
            .with(|c| {
                c.auth = Auth::XSignature;
                c.headers = vec![json_ct];
            }),
        case("bitbucket receiver with X-Event-Key", json!({"type": "bitbucket", "events": ["push"], "resources": app()}))
            .with(|c| {
                c.auth = Auth::HubSignature;
                c.headers = vec![json_ct, ("x-event-key", "push")];
            }),
        case("quay receiver", json!({"type": "quay", "resources": app()}))
            .with(|c| c.body = json!({"docker_url": "docker.io", "updated_tags": ["v0.0.1"]})),
        case("harbor receiver", json!({"type": "harbor", "resources": app()}))
            .with(|c| c.auth = Auth::Authorization),
        case("missing secret", json!({"type": "generic", "resources": app()}))
            .with(|c| c.secret = None)
            .answers((400, 0), (404, 0))
            .differs("a Receiver whose Secret is missing is not served at all: its hook path needs the token"),
        case("no receiver configured", json!(null)).answers((404, 0), (404, 0)),
        case("not ready receiver (invalid CEL)", json!({"type": "generic", "resources": app(), "resourceFilter": "req.tag =="}))
            .answers((503, 0), (503, 0)),
        case("suspended receiver", json!({"type": "generic", "resources": app(), "suspend": true}))
            .answers((503, 0), (503, 0)),
        case("kind without apiVersion", json!({"type": "generic", "resources": [{"kind": "Kustomization", "name": "app"}]}))
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case("resource by name not found", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "does-not-exist"}]}))
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case("annotating resources by label match", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "*", "matchLabels": {"label": "match"}}]}))
            .with(|c| c.objects = vec![("app", json!({"label": "match"}), json!({})), ("app-2", json!({"label": "does-not-match"}), json!({}))]),
        case("annotating resource by name", json!({"type": "generic", "resources": app()}))
            .with(|c| c.objects = two_objects()),
        case("name * without matchLabels", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "*"}]}))
            .with(|c| c.objects = two_objects())
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case("matchLabels is ignored if name is not *", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "app", "matchLabels": {"label": "match"}}]}))
            .with(|c| c.objects = vec![("app", json!({}), json!({})), ("app-2", json!({"label": "match"}), json!({}))]),
        case("cross-namespace reference refused (--no-cross-namespace-refs)", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "app", "namespace": "flux-system"}]}))
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case("body over the limit", json!({"type": "generic", "resources": app()}))
            .with(|c| c.body = json!({"padding": "x".repeat(MAX_BODY)}))
            .answers((413, 0), (413, 0)),
        case("CEL on image tags vs target annotations (3 candidates, 1 match)", json!({
            "type": "generic",
            "resources": [{"kind": "GitRepository", "name": "*", "matchLabels": {"team": "img"}}],
            "resourceFilter": "req.tag.split('/').last().value().split(\":\").first().value() == res.metadata.annotations['update-image']",
        }))
            .with(|c| {
                c.headers = vec![json_ct];
                c.body = json!({"tag": "registry.example/org/img-b:1.2.3"});
                c.objects = ["img-a", "img-b", "img-c"]
                    .into_iter()
                    .map(|n| (n, json!({"team": "img"}), json!({"update-image": n})))
                    .collect();
            }),
        case("CEL rejecting a named target", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "app", "filter": "req.action == 'deploy'"}]}))
            .with(|c| {
                c.headers = vec![json_ct];
                c.body = json!({"action": "build"});
            })
            .answers((200, 0), (202, 0)),
        case("CEL for github", filtered("github", "req.ref == 'refs/heads/main'"))
            .with(|c| {
                c.auth = Auth::HubSignature;
                c.headers = vec![json_ct, ("x-github-event", "push"), ("x-github-delivery", "g-2")];
                c.body = json!({"ref": "refs/heads/main"});
                c.objects = two_objects();
            }),
        case("CEL for gitlab", filtered("gitlab", "req.object_kind == 'push'"))
            .with(|c| {
                c.auth = Auth::GitlabToken;
                c.headers = vec![json_ct, ("x-gitlab-event", "Push Hook")];
                c.body = json!({"object_kind": "push"});
                c.objects = two_objects();
            }),
        case("CEL for cdevents", filtered("cdevents", "req.subject.content.repository.id == 'cdevents/service'"))
            .with(|c| {
                c.headers = vec![json_ct, ("ce-type", MERGED), ("ce-id", "4"), ("ce-source", "/ci")];
                c.body = cdevent_body.clone();
                c.objects = two_objects();
            }),
        case("CEL for bitbucket", filtered("bitbucket", "req.push.changes[0].new.name == 'main'"))
            .with(|c| {
                c.auth = Auth::HubSignature;
                c.headers = vec![json_ct, ("x-event-key", "repo:push")];
                c.body = json!({"push": {"changes": [{"new": {"name": "main"}}]}});
                c.objects = two_objects();
            }),
        case("CEL for quay", filtered("quay", "req.docker_url == 'quay.io/org/app' && 'v2' in req.updated_tags"))
            .with(|c| {
                c.headers = vec![json_ct];
                c.body = json!({"docker_url": "quay.io/org/app", "updated_tags": ["latest", "v2"]});
                c.objects = two_objects();
            }),
        case("CEL for harbor", filtered("harbor", "req.event_data.repository.repo_full_name == 'library/app'"))
            .with(|c| {
                c.auth = Auth::Authorization;
                c.headers = vec![json_ct];
                c.body = json!({"type": "PUSH_ARTIFACT", "event_data": {"repository": {"repo_full_name": "library/app"}}});
                c.objects = two_objects();
            }),
        case("CEL for dockerhub", filtered("dockerhub", "req.push_data.tag == 'v1'"))
            .with(|c| {
                c.headers = vec![json_ct];
                c.body = json!({"push_data": {"tag": "v1"}, "repository": {"repo_url": "https://hub.docker.com/r/org/app"}});
                c.objects = two_objects();
            }),
        case("CEL for gcr", filtered("gcr", "req.tag == 'gcr.io/p/app:1.0' && req.action == 'INSERT'"))
            .with(|c| {
                c.auth = Auth::Google;
                c.secret = Some(json!({"token": TOKEN, "email": GCR_EMAIL, "audience": GCR_AUDIENCE}));
                c.headers = vec![json_ct];
                c.body = pubsub::envelope(&json!({"action": "INSERT", "digest": "gcr.io/p/app@sha256:1", "tag": "gcr.io/p/app:1.0"}), "m-1");
                c.objects = two_objects();
            }),
        case("CEL for nexus", filtered("nexus", "req.action == 'CREATED' && req.repositoryName == 'docker-hosted'"))
            .with(|c| {
                c.auth = Auth::Nexus;
                c.headers = vec![json_ct];
                c.body = json!({"action": "CREATED", "repositoryName": "docker-hosted"});
                c.objects = two_objects();
            }),
        case("CEL for acr", filtered("acr", "req.target.repository == 'app' && req.target.tag == 'v1'"))
            .with(|c| {
                c.headers = vec![json_ct];
                c.body = json!({"id": "e-1", "action": "push", "target": {"repository": "app", "tag": "v1"}});
                c.objects = two_objects();
            }),
        case("gcr Secret without email", json!({"type": "gcr", "resources": app()}))
            .with(|c| {
                c.auth = Auth::Google;
                c.secret = Some(json!({"token": TOKEN, "audience": GCR_AUDIENCE}));
                c.body = pubsub::envelope(&json!({"action": "INSERT", "tag": "t"}), "m-2");
            })
            .answers((400, 0), (503, 0))
            .differs("a receiver that can never authenticate is not ready (503), not the sender's bad request"),
        case("gcr Secret without audience", json!({"type": "gcr", "resources": app()}))
            .with(|c| {
                c.auth = Auth::Google;
                c.secret = Some(json!({"token": TOKEN, "email": GCR_EMAIL}));
                c.body = pubsub::envelope(&json!({"action": "INSERT", "tag": "t"}), "m-3");
            })
            .answers((400, 0), (503, 0))
            .differs("a receiver that can never authenticate is not ready (503), not the sender's bad request"),
        case("CEL evaluation error", json!({"type": "generic", "resources": [{"kind": "GitRepository", "name": "app", "filter": "req.missing == 'x'"}]}))
            .with(|c| {
                c.headers = vec![json_ct];
                c.body = json!({"action": "push"});
            })
            .answers((500, 0), (202, 0))
            .differs(NOT_SENDERS),
        case("generic-oidc with a valid token", valid_oidc())
            .with(|c| {
                c.secret = None;
                c.auth = Auth::Oidc(|_| {});
            }),
        case("generic-oidc without Authorization", valid_oidc())
            .with(|c| c.secret = None)
            .answers((400, 0), (401, 0))
            .differs(CREDENTIAL),
        case("generic-oidc with a malformed bearer", valid_oidc())
            .with(|c| {
                c.secret = None;
                c.auth = Auth::Raw("authorization", "Bearer not.a.jwt");
            })
            .answers((400, 0), (401, 0))
            .differs(CREDENTIAL),
        case("generic-oidc with an unknown issuer", valid_oidc())
            .with(|c| {
                c.secret = None;
                c.auth = Auth::Oidc(|claims| claims["iss"] = json!("https://unknown.example"));
            })
            .answers((400, 0), (401, 0))
            .differs(CREDENTIAL),
        case("generic-oidc with a wrong audience", valid_oidc())
            .with(|c| {
                c.secret = None;
                c.auth = Auth::Oidc(|claims| claims["aud"] = json!("someone-else"));
            })
            .answers((400, 0), (401, 0))
            .differs(CREDENTIAL),
        case("generic-oidc with an expired token", valid_oidc())
            .with(|c| {
                c.secret = None;
                c.auth = Auth::Oidc(|claims| claims["exp"] = json!(chrono::Utc::now().timestamp() - 3600));
            })
            .answers((400, 0), (401, 0))
            .differs(CREDENTIAL),
        case("generic-oidc aggregates validation messages", oidc_spec(
            issuer,
            json!([
                {"expression": "claims.sub == 'someone'", "message": "wrong subject"},
                {"expression": "claims.aud == 'notification-controller'", "message": "never shown"},
                {"expression": "has(claims.ref)", "message": "no ref"},
            ]),
            json!([]),
        ))
            .with(|c| {
                c.secret = None;
                c.auth = Auth::Oidc(|_| {});
                c.says = Some("wrong subject; no ref");
            })
            .answers((400, 0), (401, 0))
            .differs(CREDENTIAL),
        case("CEL with the claims of a generic-oidc token", {
            let mut spec = valid_oidc();
            spec["resources"] = json!([{"kind": "GitRepository", "name": "app"}, {"kind": "GitRepository", "name": "app-2"}]);
            spec["resourceFilter"] = json!("res.metadata.name == claims.repository.split('/')[1]");
            spec
        })
        .with(|c| {
            c.secret = None;
            c.auth = Auth::Oidc(|claims| claims["repository"] = json!("org/app"));
            c.objects = two_objects();
        }),
        case("generic-oidc evaluates variables before validations", oidc_spec(
            issuer,
            json!([{"expression": "variables.owner == 'org'", "message": "wrong owner"}]),
            json!([{"name": "repo", "expression": "claims.repository"}, {"name": "owner", "expression": "variables.repo.split('/')[0]"}]),
        ))
            .with(|c| {
                c.secret = None;
                c.auth = Auth::Oidc(|claims| claims["repository"] = json!("org/app"));
            }),
    ]
}

fn hmac_hex<D: hmac::EagerHash>(body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<D> as KeyInit>::new_from_slice(TOKEN.as_bytes()).expect("any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
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
        api.apply(json!({
            "apiVersion": SOURCE,
            "kind": "GitRepository",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        }));
    }
}

async fn send(ingest: &Ingest, issuer: &Issuer, namespace: &str, case: &Case) -> http::Response {
    let body = case.body.to_string().into_bytes();
    let mut headers: Vec<(String, String)> = case
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let token = match case.auth {
        Auth::Oidc(_) | Auth::Raw(..) => "",
        _ if case.spec["type"] == "generic-oidc" => "",
        _ => TOKEN,
    };
    let signature = match case.auth {
        Auth::None => None,
        Auth::HubSignature => Some(("x-hub-signature-256", github_signature(TOKEN, &body))),
        Auth::XSignature => Some((
            "x-signature",
            format!("sha256={}", hmac_hex::<sha2::Sha256>(&body)),
        )),
        Auth::GitlabToken => Some(("x-gitlab-token", TOKEN.to_owned())),
        Auth::Authorization => Some(("authorization", TOKEN.to_owned())),
        Auth::Nexus => Some(("x-nexus-webhook-signature", hmac_hex::<sha1::Sha1>(&body))),
        Auth::Oidc(change) => {
            let mut claims = issuer.claims("notification-controller");
            change(&mut claims);
            Some((
                "authorization",
                format!("Bearer {}", oidc::sign(&claims, KEY_ID)),
            ))
        }
        Auth::Google => {
            let mut claims = issuer.claims(GCR_AUDIENCE);
            claims["iss"] = json!("https://accounts.google.com");
            claims["email"] = json!(GCR_EMAIL);
            claims["email_verified"] = json!(true);
            Some((
                "authorization",
                format!("Bearer {}", oidc::sign(&claims, KEY_ID)),
            ))
        }
        Auth::Raw(name, value) => Some((name, value.to_owned())),
    };
    if let Some((name, value)) = signature {
        headers.push((name.to_owned(), value));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let path = if case.spec.is_null() {
        "/hook/0000000000000000000000000000000000000000000000000000000000000000".to_owned()
    } else {
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
            api.get(&ObjectRef::new(SOURCE, "GitRepository", namespace, name))
                .is_some_and(|o| {
                    o["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].is_string()
                })
        })
        .count()
}

#[tokio::test]
async fn flux_receiver_handler_cases() {
    let nats = NatsServer::start().await;
    let api = ApiServer::start_local().await;
    let issuer = Issuer::start().await;
    let cases = cases(issuer.url());
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(
            case.differs.is_some(),
            case.flux.1 != case.fluxgate.1
                || !(case.flux.0 == case.fluxgate.0
                    || (case.flux.0 == 200 && case.fluxgate.0 == 202)),
            "case {:?} must say why it differs from Flux, and only then",
            case.name
        );
        install(&api, &format!("case-{i}"), case);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
    let max_body = MAX_BODY.to_string();
    let keys = issuer.keys_url();
    let ingest = Ingest::start_in_cluster(
        &nats.url(),
        &kubeconfig,
        &["--max-body-bytes", &max_body, "--google-certs-url", &keys],
    )
    .await;
    let _dispatcher = Dispatcher::start(
        &nats.url(),
        None,
        &kubeconfig,
        &[
            "--no-cross-namespace-refs",
            "--leader-election",
            "false",
            "--coalesce-window",
            "50ms",
        ],
    )
    .await;

    let mut answers = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        answers.push(send(&ingest, &issuer, &format!("case-{i}"), case).await);
    }

    let client = nats.client().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let events = outcomes(&client).await;
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
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut report =
        vec!["| case | Flux | fluxgate | why fluxgate differs |\n|---|---|---|---|".to_owned()];
    let mut failures = Vec::new();
    for (i, (case, answer)) in cases.iter().zip(&answers).enumerate() {
        let got = (answer.status, annotated(&api, &format!("case-{i}"), case));
        report.push(format!(
            "| {} | {} / {} | {} / {} | {} |",
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
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
