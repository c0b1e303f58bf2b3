//! End-to-end tests of receivers taken from the cluster (no receivers file): the real binaries
//! watch Flux `Receiver` objects in the Kubernetes API stand-in and read their token Secrets.

use std::time::Duration;

use fluxgate_tests::apiserver::{Fault, ObjectRef};
use fluxgate_tests::dispatcher::Dispatcher;
use fluxgate_tests::eventually;
use fluxgate_tests::http::{self, Response};
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{github_push_body, hook_path, post_github_push};
use serde_json::{Value, json};

const NS: &str = "flux-system";
const RECEIVER: &str = "notification.toolkit.fluxcd.io/v1";

fn secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "stringData": data})
}

fn receiver(name: &str, kind: &str, secret: &str, extra: Value) -> Value {
    let mut spec = json!({
        "type": kind,
        "secretRef": {"name": secret},
        "resources": [{"kind": "GitRepository", "name": "app"}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": RECEIVER, "kind": "Receiver", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// NATS and the stand-in holding a GitHub Receiver with its Secret, two that cannot be served
/// (no Secret, no token in it) and their target; the tests start the binaries.
async fn start() -> Stack {
    Stack::builder()
        .cluster([
            secret("gh-token", json!({"token": "first"})),
            receiver("gh", "github", "gh-token", json!({})),
            receiver("orphan", "generic", "nope", json!({})),
            secret("no-token", json!({"other": "x"})),
            receiver("tokenless", "generic", "no-token", json!({})),
            json!({
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "GitRepository",
                "metadata": {"name": "app", "namespace": NS},
                "spec": {"url": "https://example.org/repo", "interval": "10m"},
            }),
        ])
        .start()
        .await
}

async fn push(ingest: &Ingest, token: &str, delivery: &str) -> Response {
    let url = ingest.hook_url(&hook_path(token, "gh", NS));
    post_github_push(&url, token, delivery, github_push_body(256)).await
}

async fn generic(ingest: &Ingest, token: &str, name: &str) -> Response {
    http::post(&ingest.hook_url(&hook_path(token, name, NS)), &[], "")
        .await
        .expect("post")
}

/// Polls `probe` until it answers `status`.
async fn answers<F, Fut>(what: &str, status: u16, probe: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    eventually(what, || async {
        let response = probe().await;
        if response.status == status {
            Ok(())
        } else {
            Err((
                response.status,
                String::from_utf8_lossy(&response.body).into_owned(),
            ))
        }
    })
    .await
}

#[tokio::test]
async fn receivers_are_served_from_the_cluster_and_follow_its_changes() {
    let c = start().await;
    // Ingest::start waits for /readyz, which waits for the first full list.
    let ingest = c.start_ingest::<&str>(&[]).await;
    let ready = http::get(&ingest.admin_url("/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.json()["receivers"], 1, "only gh can be served");

    let accepted = push(&ingest, "first", "d-1").await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    // As in Flux, a Receiver whose Secret or token is missing is not served.
    assert_eq!(generic(&ingest, "", "orphan").await.status, 404);
    assert_eq!(generic(&ingest, "x", "tokenless").await.status, 404);

    c.api().apply(receiver(
        "gh",
        "github",
        "gh-token",
        json!({"suspend": true}),
    ));
    answers("suspended", 503, || push(&ingest, "first", "d-2")).await;
    c.api()
        .apply(receiver("gh", "github", "gh-token", json!({})));
    answers("resumed", 202, || push(&ingest, "first", "d-3")).await;

    // A rotated token moves the hook path (Flux's digest includes it) within seconds.
    c.api()
        .apply(secret("gh-token", json!({"token": "second"})));
    answers("rotated", 202, || push(&ingest, "second", "d-4")).await;
    assert_eq!(push(&ingest, "first", "d-5").await.status, 404);

    c.api()
        .delete(&ObjectRef::new(RECEIVER, "Receiver", NS, "gh"));
    answers("deleted", 404, || push(&ingest, "second", "d-6")).await;

    // Least privilege: only the Secrets Receivers name are listed and watched, each by name;
    // once listed, none is read again: the watch tells of the rotation.
    let secret_requests: Vec<_> = c
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/secrets"))
        .collect();
    let mut lists = Vec::new();
    for request in &secret_requests {
        assert_eq!(request.method, "GET", "{request:?}");
        assert_eq!(request.path, format!("/api/v1/namespaces/{NS}/secrets"));
        let selector = (request.query.split('&'))
            .find_map(|p| p.strip_prefix("fieldSelector="))
            .unwrap_or_default();
        assert!(
            [
                "metadata.name%3Dgh-token",
                "metadata.name%3Dnope",
                "metadata.name%3Dno-token"
            ]
            .contains(&selector),
            "{request:?}"
        );
        if !request.query.contains("watch=true") {
            lists.push(selector);
        }
    }
    lists.sort();
    assert_eq!(
        lists,
        [
            "metadata.name%3Dgh-token",
            "metadata.name%3Dno-token",
            "metadata.name%3Dnope"
        ],
        "one list per Secret named"
    );
}

#[tokio::test]
async fn watch_namespace_limits_the_receivers_served() {
    let c = start().await;
    let ingest = c.start_ingest(&["--watch-namespace", "elsewhere"]).await;
    assert_eq!(push(&ingest, "first", "d-1").await.status, 404);
    assert!(
        c.api()
            .requests()
            .iter()
            .filter(|r| r.path.contains("/receivers"))
            .all(|r| r
                .path
                .starts_with(&format!("/apis/{RECEIVER}/namespaces/elsewhere/"))),
        "only the watched namespace is listed"
    );
}

#[tokio::test]
async fn the_dispatcher_takes_receivers_from_the_cluster_without_reading_secrets() {
    let c = start().await;
    c.api()
        .apply(secret("plain", json!({"token": "plain-token"})));
    c.api()
        .apply(receiver("trigger", "generic", "plain", json!({})));
    // Ingest from a file, so that every Secret request would be the dispatcher's.
    let file = c.dir().join("receivers.yaml");
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            serde_yaml_ng::to_string(&secret("plain", json!({"token": "plain-token"})))
                .expect("yaml"),
            serde_yaml_ng::to_string(&receiver("trigger", "generic", "plain", json!({})))
                .expect("yaml")
        ),
    )
    .expect("write");
    let ingest = Ingest::start(c.nats_url(), &file, &[]).await;
    let _dispatcher = Dispatcher::start(
        c.nats_url(),
        None,
        c.kubeconfig(),
        &["--coalesce-window", "50ms", "--leader-election", "false"],
    )
    .await;
    assert_eq!(generic(&ingest, "plain-token", "trigger").await.status, 202);

    c.outcomes_until("a patch", |events| {
        events.iter().any(|e| e["type"] == "patched")
    })
    .await;
    let app = c
        .api()
        .get(&ObjectRef::new(
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            NS,
            "app",
        ))
        .expect("app");
    assert!(app["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].is_string());
    assert!(
        !c.api()
            .requests()
            .iter()
            .any(|r| r.path.contains("/secrets")),
        "the dispatcher never reads Secrets"
    );
}

#[tokio::test]
async fn a_secret_that_cannot_be_read_for_a_while_keeps_its_receiver_served() {
    let c = start().await;
    let ingest = c.start_ingest::<&str>(&[]).await;
    let token = ObjectRef::new("v1", "Secret", NS, "gh-token");
    let secrets = ObjectRef::new("v1", "Secret", NS, "");
    let secrets_path = format!("/api/v1/namespaces/{NS}/secrets");
    let failed_reads = || {
        (c.api().requests().into_iter())
            .filter(|r| r.path == secrets_path && r.status == 500)
            .count()
    };
    // The watches end and the API server fails the next 3 lists and watches of Secrets (the
    // watches back off between them).
    for _ in 0..3 {
        c.api().inject(&secrets, Fault::status(500));
    }
    c.api().end_watches();
    let (mut pushed, mut pace) = (0, tokio::time::interval(Duration::from_millis(20)));
    while failed_reads() < 3 {
        pace.tick().await;
        let response = push(&ingest, "first", &format!("during-{pushed}")).await;
        assert_eq!(
            response.status,
            202,
            "after {} failed reads: {:?}",
            failed_reads(),
            response.body
        );
        pushed += 1;
    }
    let response = push(&ingest, "first", "after").await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    eprintln!("{pushed} webhooks accepted while 3 reads of the Secrets failed");

    // A Secret really gone takes the receiver out, as in Flux.
    c.api().delete(&token);
    answers("the Secret deleted", 404, || push(&ingest, "first", "gone")).await;
}

#[tokio::test]
async fn receivers_stay_served_while_their_watch_fails() {
    let c = start().await;
    let ingest = c.start_ingest::<&str>(&[]).await;
    assert_eq!(push(&ingest, "first", "before").await.status, 202);
    // The watch ends and the API server fails the next 3 lists and watches of Receivers (the
    // watcher backs off between them).
    let receivers = ObjectRef::new(RECEIVER, "Receiver", "", "");
    for _ in 0..3 {
        c.api().inject(&receivers, Fault::status(500));
    }
    c.api().end_watches();
    let path = "/apis/notification.toolkit.fluxcd.io/v1/receivers";
    let failed = || {
        (c.api().requests().into_iter())
            .filter(|r| r.path == path && r.status == 500)
            .count()
    };
    let (mut pushed, mut pace) = (0, tokio::time::interval(Duration::from_millis(20)));
    while failed() < 3 {
        pace.tick().await;
        let response = push(&ingest, "first", &format!("during-{pushed}")).await;
        assert_eq!(
            response.status,
            202,
            "after {} failures: {:?}",
            failed(),
            response.body
        );
        pushed += 1;
    }
    eprintln!("{pushed} webhooks accepted while 3 lists and watches of Receivers failed");
    // Watching again, it follows changes as before.
    c.api()
        .delete(&ObjectRef::new(RECEIVER, "Receiver", NS, "gh"));
    answers("deleted", 404, || push(&ingest, "first", "after")).await;
}

/// Requests for Secrets so far: (lists, watches).
fn secret_reads(c: &Stack) -> (usize, usize) {
    let requests = c.api().requests();
    let secrets = requests.iter().filter(|r| r.path.ends_with("/secrets"));
    let (watches, lists): (Vec<_>, Vec<_>) = secrets.partition(|r| r.query.contains("watch=true"));
    (lists.len(), watches.len())
}

/// Waits until `lists` Secrets were listed and as many watched (a watch starts just after its
/// list, maybe after the receiver is served).
async fn secrets_read(c: &Stack, lists: usize) {
    eventually(&format!("{lists} Secrets listed and watched"), || async {
        match secret_reads(c) {
            reads if reads == (lists, lists) => Ok(()),
            reads => Err(reads),
        }
    })
    .await;
}

#[tokio::test]
async fn secrets_are_read_once_each_and_again_only_when_they_change() {
    let c = start().await;
    for n in 0..20 {
        c.api().apply(secret(
            &format!("token-{n}"),
            json!({"token": format!("t-{n}")}),
        ));
        c.api().apply(receiver(
            &format!("hook-{n}"),
            "generic",
            &format!("token-{n}"),
            json!({}),
        ));
    }
    let ingest = c.start_ingest::<&str>(&[]).await;
    for n in 0..20 {
        assert_eq!(
            generic(&ingest, &format!("t-{n}"), &format!("hook-{n}"))
                .await
                .status,
            202
        );
    }
    // The 3 Secrets of start() and these 20, each listed (before ingest is ready) and watched
    // once.
    assert_eq!(secret_reads(&c).0, 23);
    secrets_read(&c, 23).await;

    // A rotation comes by the watch: nothing is listed again.
    c.api()
        .apply(secret("token-7", json!({"token": "rotated"})));
    answers("rotated", 202, || generic(&ingest, "rotated", "hook-7")).await;
    assert_eq!(generic(&ingest, "t-7", "hook-7").await.status, 404);
    // A Receiver moved to a new Secret costs that Secret's list and watch, nothing more.
    c.api().apply(secret("fresh", json!({"token": "fresh"})));
    c.api()
        .apply(receiver("hook-3", "generic", "fresh", json!({})));
    answers("moved", 202, || generic(&ingest, "fresh", "hook-3")).await;
    assert_eq!(generic(&ingest, "t-3", "hook-3").await.status, 404);
    secrets_read(&c, 24).await;
    // The others were not touched.
    assert_eq!(generic(&ingest, "t-12", "hook-12").await.status, 202);
}

#[tokio::test]
async fn with_a_secrets_selector_one_watch_reads_the_labelled_secrets_only() {
    let c = start().await;
    let labelled = |name: &str, token: &str| {
        let mut secret = secret(name, json!({"token": token}));
        secret["metadata"]["labels"] = json!({"fluxgate.io/webhook-token": "true"});
        secret
    };
    c.api().apply(labelled("webhook", "one"));
    c.api()
        .apply(receiver("labelled", "generic", "webhook", json!({})));
    let ingest = c
        .start_ingest(&["--secrets-selector", "fluxgate.io/webhook-token=true"])
        .await;
    assert_eq!(generic(&ingest, "one", "labelled").await.status, 202);
    // gh's Secret carries no label: it is not read, and gh is not served.
    assert_eq!(push(&ingest, "first", "d-1").await.status, 404);

    c.api().apply(labelled("webhook", "two"));
    answers("rotated", 202, || generic(&ingest, "two", "labelled")).await;
    c.api().apply(labelled("gh-token", "first"));
    answers("labelled later", 202, || push(&ingest, "first", "d-2")).await;

    // One list and one watch of Secrets, across namespaces, by label, whatever the Receivers.
    let requests = c.api().requests();
    let secrets: Vec<_> = (requests.iter())
        .filter(|r| r.path.contains("/secrets"))
        .collect();
    let lists = secrets
        .iter()
        .filter(|r| !r.query.contains("watch=true"))
        .count();
    assert_eq!(lists, 1, "{secrets:#?}");
    for request in &secrets {
        assert_eq!(request.path, "/api/v1/secrets");
        assert!(
            request
                .query
                .contains("labelSelector=fluxgate.io%2Fwebhook-token%3Dtrue"),
            "{request:?}"
        );
    }
}
