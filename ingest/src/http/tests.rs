//! The webhook endpoint in-process: requests go straight to `Hooks::answer` and deliveries into an
//! in-memory store, so every answer and rejection is checked without a server or a socket.

use std::sync::atomic::Ordering;

use axum::http::Request;
use fluxgate_shared::contract::{DeliveryMeta, IdSource};
use fluxgate_shared::receivers::Catalog;
use fluxgate_tests::webhook::{
    github_push_body, github_signature, hook_path, receiver_manifest, secret_manifest,
};
use serde_json::Value;

use super::*;
use crate::testing::MemoryStore;

const NS: &str = "flux-system";
const GH_TOKEN: &str = "gh-secret";
const TOKEN: &str = "plain-token";
const MAX_BODY: usize = 2048;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const BODIES: usize = 4;

struct App {
    hooks: Hooks,
    state: Arc<AppState>,
    store: Arc<MemoryStore>,
    synced: watch::Sender<bool>,
}

impl App {
    fn new() -> Self {
        let manifests = [
            secret_manifest("gh-token", NS, GH_TOKEN),
            receiver_manifest("gh", NS, "github", "gh-token", "  events: [push]\n"),
            secret_manifest("plain", NS, TOKEN),
            receiver_manifest("quay", NS, "quay", "plain", ""),
            receiver_manifest("acr", NS, "acr", "plain", ""),
            receiver_manifest("trigger", NS, "generic", "plain", ""),
            receiver_manifest("gitlab", NS, "gitlab", "plain", ""),
            receiver_manifest("harbor", NS, "harbor", "plain", ""),
            receiver_manifest("paused", NS, "generic", "plain", "  suspend: true\n"),
            receiver_manifest(
                "filtered",
                NS,
                "generic",
                "plain",
                "  resourceFilter: req.action == 'deploy'\n",
            ),
            receiver_manifest(
                "broken",
                NS,
                "generic",
                "plain",
                "  resourceFilter: req.action ==\n",
            ),
        ];
        let catalog = Catalog::parse(&manifests.join("---\n")).expect("the test receivers");
        let store = Arc::new(MemoryStore::default());
        let (synced, catalog_synced) = watch::channel(true);
        let state = Arc::new(AppState {
            catalog: SharedCatalog::new(catalog),
            catalog_synced,
            store: store.clone(),
            identity: Identity::new("http://127.0.0.1:9/certs".into()).expect("identity"),
            metrics: Arc::new(Metrics::default()),
            max_body_bytes: MAX_BODY,
            body_timeout: BODY_TIMEOUT,
            bodies: Arc::new(Semaphore::new(BODIES)),
        });
        Self {
            hooks: Hooks::new(state.clone()),
            state,
            store,
            synced,
        }
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.hooks.answer(request).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        Answer {
            status,
            json: serde_json::from_slice(&body).expect("every answer is JSON"),
            headers,
        }
    }

    async fn post(&self, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Answer {
        let mut request = Request::post(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(body.into()).expect("request")).await
    }

    fn stored(&self) -> usize {
        self.store.deliveries().len()
    }

    /// `fluxgate_ingest_requests_total` for one label set.
    fn count(&self, receiver_type: &str, outcome: &str) -> u64 {
        let line = format!(
            "fluxgate_ingest_requests_total{{receiver_type=\"{receiver_type}\",outcome=\"{outcome}\"}} "
        );
        self.state
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.parse().expect("a count"))
    }
}

struct Answer {
    status: u16,
    json: Value,
    headers: HeaderMap,
}

impl Answer {
    fn reason(&self) -> &str {
        self.json["error"].as_str().unwrap_or_default()
    }
}

fn github_headers<'a>(event: &'a str, signature: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("content-type", "application/json"),
        ("x-github-event", event),
        ("x-github-delivery", "d-0001"),
        ("x-hub-signature-256", signature),
    ]
}

#[tokio::test]
async fn a_signed_push_is_stored_with_its_metadata_and_a_repeat_is_a_duplicate() {
    let app = App::new();
    let body = github_push_body(512);
    let signature = github_signature(GH_TOKEN, &body);
    let path = hook_path(GH_TOKEN, "gh", NS);

    let mut headers = github_headers("push", &signature);
    headers.push(("authorization", "Bearer not-for-the-stream"));
    let first = app.post(&path, &headers, body.clone()).await;
    assert_eq!(first.status, 202, "{}", first.json);
    assert_eq!(
        first.json,
        serde_json::json!({"delivery": "d-0001", "duplicate": false})
    );
    {
        let stored = app.store.deliveries();
        let delivery = &stored[0];
        assert_eq!(delivery.body.as_ref(), body.as_slice(), "stored byte-exact");
        let subject = delivery.meta.subject();
        let meta = DeliveryMeta::read(&subject, Some(&delivery.headers())).expect("valid metadata");
        assert_eq!(
            (meta.id.as_str(), meta.id_source, meta.event.as_deref()),
            ("d-0001", IdSource::Sender, Some("push"))
        );
        assert_eq!(
            (meta.namespace.as_str(), meta.receiver.as_str()),
            (NS, "gh")
        );
        assert_eq!(subject, meta.subject());
        assert_eq!(
            meta.request_headers.get("x-hub-signature-256"),
            Some(&signature),
            "the provider's headers are kept"
        );
        assert!(
            !meta.request_headers.contains_key("authorization"),
            "credentials are not stored"
        );
    }

    let again = app
        .post(&path, &github_headers("push", &signature), body)
        .await;
    assert_eq!(
        (again.status, again.json["duplicate"].as_bool()),
        (202, Some(true))
    );
    assert_eq!(app.stored(), 1);
    assert_eq!(app.count("github", "accepted"), 1);
    assert_eq!(app.count("github", "duplicate"), 1);
}

#[tokio::test]
async fn bare_triggers_get_fresh_ids_and_are_each_stored() {
    let app = App::new();
    let path = hook_path(TOKEN, "trigger", NS);
    let a = app.post(&path, &[], "").await;
    let b = app.post(&path, &[], "").await;
    assert_eq!((a.status, b.status), (202, 202));
    assert_ne!(a.json["delivery"], b.json["delivery"]);
    assert_eq!(app.stored(), 2);
}

/// Every way a webhook is refused: the status, a JSON reason that does not leak the secret,
/// the metric label it is counted under, and nothing stored.
#[tokio::test]
async fn every_rejection_says_why_is_counted_and_stores_nothing() {
    let app = App::new();
    let gh = hook_path(GH_TOKEN, "gh", NS);
    let body = github_push_body(256);
    let good = github_signature(GH_TOKEN, &body);
    let wrong = github_signature("not-the-secret", &body);
    let big = github_push_body(MAX_BODY * 2);
    let big_signature = github_signature(GH_TOKEN, &big);
    let json = ("content-type", "application/json");
    let trigger = |name: &str| hook_path(TOKEN, name, NS);

    let cases = [
        (
            "unknown hook",
            app.post("/hook/0000", &[], "").await,
            404,
            ("none", "not_found"),
        ),
        (
            "other path",
            app.post("/elsewhere", &[], "").await,
            404,
            ("none", "not_found"),
        ),
        (
            "over the limit",
            app.post(&gh, &github_headers("push", &big_signature), big.clone())
                .await,
            413,
            ("github", "too_large"),
        ),
        (
            "wrong signature",
            app.post(&gh, &github_headers("push", &wrong), body.clone())
                .await,
            401,
            ("github", "unauthorized"),
        ),
        (
            "missing signature",
            app.post(&gh, &[json, ("x-github-event", "push")], body.clone())
                .await,
            401,
            ("github", "unauthorized"),
        ),
        (
            "malformed quay body",
            app.post(&hook_path(TOKEN, "quay", NS), &[json], "{not json")
                .await,
            400,
            ("quay", "bad_request"),
        ),
        (
            "a filter's JSON body that is not an object",
            app.post(&trigger("filtered"), &[json], "[1, 2]").await,
            400,
            ("generic", "bad_request"),
        ),
        (
            "suspended",
            app.post(&trigger("paused"), &[], "").await,
            503,
            ("generic", "unavailable"),
        ),
        (
            "an invalid CEL expression",
            app.post(&trigger("broken"), &[], "").await,
            503,
            ("generic", "unavailable"),
        ),
        (
            "a hook path that does not decode",
            app.post("/hook/%FF", &[], "").await,
            404,
            ("none", "not_found"),
        ),
    ];
    for (case, answer, status, (receiver_type, outcome)) in &cases {
        assert_eq!(answer.status, *status, "{case}: {}", answer.json);
        assert!(!answer.reason().is_empty(), "{case}: the body must say why");
        assert!(
            !answer.reason().contains(GH_TOKEN) && !answer.reason().contains(TOKEN),
            "{case}: the reason leaks the secret"
        );
        assert!(
            app.count(receiver_type, outcome) > 0,
            "{case}: not counted as {receiver_type}/{outcome}"
        );
    }
    assert!(cases[7].1.reason().contains("flux-system/paused"));
    assert_eq!(app.count("none", "not_found"), 3);
    assert_eq!(app.count("github", "unauthorized"), 2);
    assert_eq!(app.count("generic", "unavailable"), 2);

    // A filter reads a body that is not JSON at all as `{}`, as Flux does: accepted.
    let plain = app.post(&trigger("filtered"), &[], "deploy").await;
    assert_eq!(plain.status, 202, "{}", plain.json);
    assert_eq!(app.stored(), 1, "only the accepted webhook is stored");
    // The GitHub push signed correctly still passes after all those refusals.
    let pushed = app.post(&gh, &github_headers("push", &good), body).await;
    assert_eq!(pushed.status, 202, "{}", pushed.json);
}

#[tokio::test]
async fn other_methods_are_refused_with_allow_post() {
    let app = App::new();
    let request = Request::get(hook_path(TOKEN, "trigger", NS))
        .body(Body::empty())
        .expect("request");
    let answer = app.send(request).await;
    assert_eq!(answer.status, 405);
    assert_eq!(
        answer.headers.get(header::ALLOW).map(|v| v.as_bytes()),
        Some(b"POST".as_slice())
    );
    assert!(answer.reason().contains("GET"), "{}", answer.json);
    assert_eq!(app.count("none", "method_not_allowed"), 1);
}

/// Only `/hook/<digest>` is a hook, as the router Flux's receiver uses has it: the digest
/// percent-decoded, the query ignored, nothing before or after it.
#[tokio::test]
async fn only_a_hook_path_finds_a_receiver() {
    let app = App::new();
    let path = hook_path(TOKEN, "trigger", NS);
    let digest = path.strip_prefix("/hook/").expect("a hook path");
    for elsewhere in [
        "/".to_owned(),
        "/hook".to_owned(),
        "/hook/".to_owned(),
        format!("{path}/"),
        format!("{path}/more"),
        format!("/hooks/{digest}"),
        format!("/x{path}"),
    ] {
        let answer = app.post(&elsewhere, &[], "").await;
        assert_eq!(answer.status, 404, "{elsewhere}: {}", answer.json);
        let get = Request::get(elsewhere.as_str())
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            app.send(get).await.status,
            404,
            "GET {elsewhere}: not a 405"
        );
    }
    assert_eq!(app.stored(), 0);
    let encoded = format!("/hook/%{:02X}{}", digest.as_bytes()[0], &digest[1..]);
    for served in [encoded, format!("{path}?ref=main")] {
        let answer = app.post(&served, &[], "").await;
        assert_eq!(answer.status, 202, "{served}: {}", answer.json);
    }
    assert_eq!(app.stored(), 2);
}

#[tokio::test]
async fn events_outside_spec_events_are_answered_200_ignored_and_not_stored() {
    let app = App::new();
    let gh = hook_path(GH_TOKEN, "gh", NS);
    let body = github_push_body(256);
    let signature = github_signature(GH_TOKEN, &body);

    let release = app
        .post(&gh, &github_headers("release", &signature), body.clone())
        .await;
    assert_eq!(release.status, 200);
    assert_eq!(release.json["ignored"], true);
    assert!(
        release.json["reason"]
            .as_str()
            .is_some_and(|r| r.contains("release"))
    );
    // No event header at all is the empty event name, which `spec.events` does not list.
    let unnamed = app
        .post(
            &gh,
            &[
                ("content-type", "application/json"),
                ("x-hub-signature-256", &signature),
            ],
            body,
        )
        .await;
    assert_eq!(
        (unnamed.status, unnamed.json["ignored"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(app.stored(), 0);
    assert_eq!(app.count("github", "ignored"), 2);
}

#[tokio::test]
async fn until_the_catalog_is_synced_every_hook_is_503_with_retry_after() {
    let app = App::new();
    app.synced.send_replace(false);
    let answer = app.post(&hook_path(TOKEN, "trigger", NS), &[], "").await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer
            .headers
            .get(header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        Some(b"5".as_slice())
    );
    assert!(answer.reason().contains("not loaded"), "{}", answer.json);
    app.synced.send_replace(true);
    let answer = app.post(&hook_path(TOKEN, "trigger", NS), &[], "").await;
    assert_eq!(answer.status, 202);
}

#[tokio::test]
async fn a_store_that_is_down_is_503_with_retry_after_never_2xx() {
    let app = App::new();
    app.store.down.store(true, Ordering::Relaxed);
    let answer = app.post(&hook_path(TOKEN, "trigger", NS), &[], "").await;
    assert_eq!(answer.status, 503, "{}", answer.json);
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    assert!(answer.reason().contains("retry later"), "{}", answer.json);
    assert_eq!(app.count("generic", "unavailable"), 1);
    assert_eq!(app.stored(), 0);
}

/// A sender that declares a body and never sends it is cut off after the body deadline (the
/// clock is paused, so the deadline passes as soon as nothing else can happen).
#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_408_after_the_deadline() {
    let app = App::new();
    let never = futures::stream::pending::<Result<Bytes, std::io::Error>>();
    let answer = app
        .post(
            &hook_path(TOKEN, "trigger", NS),
            &[("content-length", "10")],
            Body::from_stream(never),
        )
        .await;
    assert_eq!(answer.status, 408, "{}", answer.json);
    assert_eq!(app.count("generic", "bad_request"), 1);
    assert_eq!(app.stored(), 0);
}

/// Values a sender controls that would reach a NATS header: refused with a 400 naming the value
/// (an ACR `id` holding a newline used to panic the request task and reset the connection).
#[tokio::test]
async fn hostile_ids_and_headers_are_400_naming_the_value_never_a_panic() {
    let app = App::new();
    let acr = hook_path(TOKEN, "acr", NS);
    let json = ("content-type", "application/json");
    let acr_body = |id: &str| {
        serde_json::json!({"id": id, "action": "push", "target": {"repository": "app", "tag": "v1"}})
            .to_string()
    };
    let long = "k".repeat(300);
    let cases = [
        (
            app.post(&acr, &[json], acr_body("e-1\nX-Injected: yes"))
                .await,
            "the delivery id holds a character that is not printable ASCII",
        ),
        (
            app.post(&acr, &[json], acr_body("\u{1b}]0;pwned\u{7}"))
                .await,
            "the delivery id holds a character that is not printable ASCII",
        ),
        (
            app.post(&acr, &[json, ("idempotency-key", &long)], acr_body("e-1"))
                .await,
            "the delivery id is longer than 256 bytes",
        ),
        (
            app.post(
                &hook_path(TOKEN, "trigger", NS),
                &[("user-agent", &long)],
                "",
            )
            .await,
            "header user-agent is longer than 256 bytes",
        ),
    ];
    for (answer, says) in &cases {
        assert_eq!(answer.status, 400, "{says}: {}", answer.json);
        assert_eq!(answer.reason(), *says);
    }
    assert_eq!(app.count("acr", "bad_request"), 3);
    assert_eq!(app.stored(), 0);
    let fine = app.post(&acr, &[json], acr_body("e-1")).await;
    assert_eq!(
        (fine.status, fine.json["delivery"].as_str()),
        (202, Some("e-1"))
    );
}

/// With every body permit taken, a request whose type authenticates by header alone is still
/// refused at once (before any body is read or held), while one that must read its body to be
/// verified waits for a permit and, at the body deadline, gets 503 with `Retry-After`.
#[tokio::test(start_paused = true)]
async fn header_authenticated_types_are_refused_before_their_body_and_bodies_are_capped() {
    let app = App::new();
    assert_eq!(app.state.bodies.forget_permits(BODIES), BODIES);
    let body = github_push_body(256);
    for (name, header) in [("gitlab", "x-gitlab-token"), ("harbor", "authorization")] {
        let answer = app
            .post(
                &hook_path(TOKEN, name, NS),
                &[(header, "wrong")],
                body.clone(),
            )
            .await;
        assert_eq!(answer.status, 401, "{name}: {}", answer.json);
        assert_eq!(app.count(name, "unauthorized"), 1);
    }
    // Authentic, but no body may be held: it waits, then is told to come back.
    let gitlab = hook_path(TOKEN, "gitlab", NS);
    let answer = app
        .post(&gitlab, &[("x-gitlab-token", TOKEN)], body.clone())
        .await;
    assert_eq!(answer.status, 503, "{}", answer.json);
    assert!(
        answer.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many webhooks"))
    );
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(app.count("gitlab", "busy"), 1);
    // A GitHub signature covers the body: even a wrong one waits for a permit.
    let signature = github_signature("not-the-secret", &body);
    let answer = app
        .post(
            &hook_path(GH_TOKEN, "gh", NS),
            &[
                ("x-github-event", "push"),
                ("x-hub-signature-256", &signature),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 503, "{}", answer.json);
    assert_eq!(app.count("github", "busy"), 1);
    assert_eq!(app.stored(), 0);

    app.state.bodies.add_permits(1);
    let answer = app
        .post(&gitlab, &[("x-gitlab-token", TOKEN)], body.clone())
        .await;
    assert_eq!(answer.status, 202, "{}", answer.json);
    assert_eq!(app.stored(), 1);
    assert_eq!(
        app.state.bodies.available_permits(),
        1,
        "the permit is given back"
    );
}
