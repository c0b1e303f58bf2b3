//! End-to-end tests of the whole pipeline: `fluxgate-ingest` and `fluxgate-dispatcher` as real
//! processes, a real `nats-server`, and the Kubernetes API stand-in as the cluster.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use fluxgate_shared::contract::{self, header};
use fluxgate_tests::apiserver::{ApiServer, Fault, ObjectRef};
use fluxgate_tests::dispatcher::{Dispatcher, outcomes};
use fluxgate_tests::eventually;
use fluxgate_tests::http;
use fluxgate_tests::ingest::Ingest;
use fluxgate_tests::nats::NatsServer;
use fluxgate_tests::webhook::{github_push_body, hook_path, post_github_push, secret_manifest};
use serde_json::{Value, json};

const NS: &str = "flux-system";
const SOURCE: &str = "source.toolkit.fluxcd.io/v1";
const GH_TOKEN: &str = "gh-secret";
const TOKEN: &str = "plain-token";

fn receiver(name: &str, kind: &str, secret: &str, resources: &str) -> String {
    format!(
        "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  type: {kind}\n  secretRef:\n    name: {secret}\n  resources:\n{resources}"
    )
}

fn receivers_yaml() -> String {
    [
        secret_manifest("gh-token", NS, GH_TOKEN),
        secret_manifest("plain", NS, TOKEN),
        receiver(
            "gh",
            "github",
            "gh-token",
            "    - kind: GitRepository\n      name: app\n",
        ),
        receiver(
            "labels",
            "generic",
            "plain",
            "    - kind: GitRepository\n      name: \"*\"\n      matchLabels:\n        team: web\n",
        ),
        receiver(
            "missing",
            "generic",
            "plain",
            "    - kind: GitRepository\n      name: ghost\n",
        ),
        receiver(
            "flaky",
            "generic",
            "plain",
            "    - kind: GitRepository\n      name: flaky\n",
        ),
        // Flux's image-tag example, as written in its docs.
        receiver(
            "images",
            "generic",
            "plain",
            "    - kind: GitRepository\n      name: \"*\"\n      matchLabels:\n        team: img\n  resourceFilter: req.tag.split('/').last().value().split(\":\").first().value() == res.metadata.annotations['update-image']\n",
        ),
        receiver(
            "deploys",
            "generic",
            "plain",
            "    - kind: GitRepository\n      name: app\n      filter: req.action == 'deploy'\n    - kind: GitRepository\n      name: api\n      filter: req.missing == 'x'\n",
        ),
        receiver(
            "broken",
            "generic",
            "plain",
            "    - kind: GitRepository\n      name: app\n      filter: req.action ==\n",
        ),
    ]
    .join("---\n")
}

fn git_repository(name: &str, team: &str) -> Value {
    json!({
        "apiVersion": SOURCE,
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": NS, "labels": {"team": team}, "annotations": {"update-image": name}},
        "spec": {"url": "https://example.org/repo", "interval": "10m"},
    })
}

fn repo(name: &str) -> ObjectRef {
    ObjectRef::new(SOURCE, "GitRepository", NS, name)
}

struct Pipeline {
    nats: NatsServer,
    cluster: ApiServer,
    ingest: Ingest,
    dir: tempfile::TempDir,
    receivers: PathBuf,
    kubeconfig: PathBuf,
}

impl Pipeline {
    /// NATS, the stand-in with its repositories, and ingest; dispatchers are started by the tests.
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let cluster = ApiServer::start_local().await;
        for (name, team) in [
            ("app", "core"),
            ("flaky", "core"),
            ("web-1", "web"),
            ("web-2", "web"),
            ("api", "api"),
            ("img-a", "img"),
            ("img-b", "img"),
            ("img-c", "img"),
        ] {
            cluster.apply(git_repository(name, team));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let receivers = dir.path().join("receivers.yaml");
        std::fs::write(&receivers, receivers_yaml()).expect("write receivers");
        let kubeconfig = cluster.write_kubeconfig(dir.path()).expect("kubeconfig");
        let ingest = Ingest::start(&nats.url(), &receivers, &[]).await;
        Self {
            nats,
            cluster,
            ingest,
            dir,
            receivers,
            kubeconfig,
        }
    }

    async fn dispatcher(&self, args: &[&str]) -> Dispatcher {
        Dispatcher::start(
            &self.nats.url(),
            Some(&self.receivers),
            &self.kubeconfig,
            args,
        )
        .await
    }

    async fn push(&self, delivery: &str) {
        let url = self.ingest.hook_url(&hook_path(GH_TOKEN, "gh", NS));
        let response = post_github_push(&url, GH_TOKEN, delivery, github_push_body(512)).await;
        assert_eq!(response.status, 202, "{:?}", response.body);
    }

    /// A bare generic trigger; returns its delivery id.
    async fn trigger(&self, receiver: &str) -> String {
        let response = self.post_generic(receiver, &[], "").await;
        assert_eq!(response.status, 202, "{:?}", response.body);
        response.json()["delivery"]
            .as_str()
            .expect("delivery id")
            .to_owned()
    }

    /// A generic webhook with a JSON body; returns its delivery id.
    async fn trigger_json(&self, receiver: &str, body: Value) -> String {
        let response = self
            .post_generic(
                receiver,
                &[("content-type", "application/json")],
                &body.to_string(),
            )
            .await;
        assert_eq!(response.status, 202, "{:?}", response.body);
        response.json()["delivery"]
            .as_str()
            .expect("delivery id")
            .to_owned()
    }

    async fn post_generic(
        &self,
        receiver: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> http::Response {
        http::post(
            &self.ingest.hook_url(&hook_path(TOKEN, receiver, NS)),
            headers,
            body.to_owned(),
        )
        .await
        .expect("post")
    }

    /// Successful patches of a repository, in order.
    fn patches(&self, name: &str) -> Vec<Value> {
        self.requests_to(name, "PATCH")
            .into_iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.body)
            .collect()
    }

    fn requests_to(
        &self,
        name: &str,
        method: &str,
    ) -> Vec<fluxgate_tests::apiserver::RecordedRequest> {
        let path =
            format!("/apis/source.toolkit.fluxcd.io/v1/namespaces/{NS}/gitrepositories/{name}");
        self.cluster
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    async fn outcomes(&self) -> Vec<Value> {
        outcomes(&self.nats.client().await).await
    }

    /// Waits until `done` holds for the recorded outcomes, and returns them.
    async fn wait_outcomes(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(what, || async {
            let events = self.outcomes().await;
            if done(&events) {
                Ok(events)
            } else {
                Err(events)
            }
        })
        .await
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn annotation(object: &Value) -> Option<&str> {
    object["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].as_str()
}

#[tokio::test]
async fn signed_push_patches_its_target_once_and_records_the_trail() {
    let p = Pipeline::start().await;
    let _dispatcher = p.dispatcher(&["--coalesce-window", "100ms"]).await;
    p.push("guid-1").await;
    p.push("guid-1").await; // GitHub redelivery: stored once by JetStream.

    let events = p
        .wait_outcomes("the patch", |e| !of_type(e, "patched").is_empty())
        .await;
    let patched = of_type(&events, "patched");
    assert_eq!(patched.len(), 1);
    assert_eq!(patched[0]["delivery"], "guid-1");
    assert_eq!(
        patched[0]["target"],
        json!({"apiVersion": SOURCE, "kind": "GitRepository", "namespace": NS, "name": "app"})
    );
    let dispatched = of_type(&events, "dispatched");
    assert_eq!(dispatched.len(), 1);
    assert_eq!(dispatched[0]["seq"], 1);
    assert_eq!(dispatched[0]["receiver"], "flux-system/gh");

    let app = p.cluster.get(&repo("app")).expect("app");
    let value = annotation(&app).expect("requestedAt annotation");
    assert_eq!(patched[0]["requested_at"], value);
    assert!(
        chrono::DateTime::parse_from_rfc3339(value).is_ok()
            && value.ends_with('Z')
            && value.len() == 30,
        "{value}"
    );
    assert_eq!(p.patches("app").len(), 1, "one delivery, one patch");
    assert!(p.patches("web-1").is_empty() && p.patches("flaky").is_empty());
}

#[tokio::test]
async fn a_second_message_with_the_same_delivery_key_is_a_duplicate() {
    let p = Pipeline::start().await;
    // Two stream messages for one delivery, as when a sender retries after JetStream's
    // duplicate window: only the dedup bucket can tell.
    let jetstream = jetstream::new(p.nats.client().await);
    for msg_id in ["first", "second"] {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in [
            (header::DELIVERY_ID, "late-retry"),
            (header::DELIVERY_ID_SOURCE, "sender"),
            (header::RECEIVER_NAMESPACE, NS),
            (header::RECEIVER_NAME, "gh"),
            (header::RECEIVER_TYPE, "github"),
            ("Nats-Msg-Id", msg_id),
        ] {
            headers.insert(name, value);
        }
        jetstream
            .publish_with_headers(contract::delivery_subject(NS, "gh"), headers, "{}".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let _dispatcher = p.dispatcher(&["--coalesce-window", "100ms"]).await;
    let events = p
        .wait_outcomes("the patch and the duplicate", |e| {
            !of_type(e, "patched").is_empty() && !of_type(e, "duplicate").is_empty()
        })
        .await;
    let duplicate = of_type(&events, "duplicate");
    assert_eq!(
        (
            duplicate[0]["seq"].as_u64(),
            duplicate[0]["of_seq"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(of_type(&events, "patched").len(), 1);
    assert_eq!(p.patches("app").len(), 1);
}

#[tokio::test]
async fn a_burst_to_one_target_becomes_one_or_two_patches() {
    let p = Pipeline::start().await;
    let _dispatcher = p.dispatcher(&["--coalesce-window", "1s"]).await;
    futures::future::join_all((0..50).map(|i| {
        let p = &p;
        async move { p.push(&format!("burst-{i}")).await }
    }))
    .await;
    let events = p
        .wait_outcomes("50 patched outcomes", |e| of_type(e, "patched").len() == 50)
        .await;
    let patches = p.patches("app").len();
    assert!(
        (1..=2).contains(&patches),
        "50 deliveries made {patches} patches"
    );
    let batches: HashSet<&str> = of_type(&events, "patched")
        .iter()
        .filter_map(|e| e["batch"].as_str())
        .collect();
    assert_eq!(batches.len(), patches);
    assert!(!of_type(&events, "coalesced").is_empty());
}

#[tokio::test]
async fn a_label_selector_patches_every_match_and_nothing_else() {
    let p = Pipeline::start().await;
    let _dispatcher = p.dispatcher(&["--coalesce-window", "100ms"]).await;
    let delivery = p.trigger("labels").await;
    let events = p
        .wait_outcomes("two patches", |e| of_type(e, "patched").len() == 2)
        .await;
    let dispatched = of_type(&events, "dispatched");
    assert_eq!(dispatched[0]["delivery"], delivery.as_str());
    let names: Vec<&str> = dispatched[0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);
    assert_eq!((p.patches("web-1").len(), p.patches("web-2").len()), (1, 1));
    assert!(p.patches("api").is_empty() && p.patches("app").is_empty());
    assert!(p.requests_to("api", "PATCH").is_empty());
}

#[tokio::test]
async fn cel_filters_keep_the_targets_that_match_the_request() {
    let p = Pipeline::start().await;
    let _dispatcher = p.dispatcher(&["--coalesce-window", "100ms"]).await;
    // Three candidates by label, one whose annotation names the pushed image.
    let images = p
        .trigger_json("images", json!({"tag": "registry.example/org/img-b:1.2.3"}))
        .await;
    // A named target whose filter is false, and one whose filter cannot be evaluated.
    let deploys = p.trigger_json("deploys", json!({"action": "build"})).await;
    let events = p
        .wait_outcomes("the image patch and both filter results", |e| {
            !of_type(e, "patched").is_empty()
                && of_type(e, "filtered_out").len() == 3
                && !of_type(e, "failed").is_empty()
        })
        .await;
    let patched = of_type(&events, "patched");
    assert_eq!(patched.len(), 1);
    assert_eq!(
        (
            patched[0]["delivery"].as_str(),
            patched[0]["target"]["name"].as_str()
        ),
        (Some(images.as_str()), Some("img-b"))
    );
    let mut filtered: Vec<(&str, &str)> = of_type(&events, "filtered_out")
        .iter()
        .filter_map(|e| Some((e["delivery"].as_str()?, e["target"]["name"].as_str()?)))
        .collect();
    filtered.sort();
    let mut expected = vec![
        (images.as_str(), "img-a"),
        (images.as_str(), "img-c"),
        (deploys.as_str(), "app"),
    ];
    expected.sort();
    assert_eq!(filtered, expected);
    let failed = of_type(&events, "failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["delivery"], deploys.as_str());
    assert_eq!(failed[0]["target"]["name"], "api");
    let reason = failed[0]["reason"].as_str().expect("reason");
    assert!(reason.contains("req.missing == 'x'"), "{reason}");
    assert_eq!(p.patches("img-b").len(), 1);
    for name in ["img-a", "img-c", "app", "api"] {
        assert!(
            p.requests_to(name, "PATCH").is_empty(),
            "{name} was patched"
        );
    }
}

#[tokio::test]
async fn receivers_with_filters_refuse_bad_json_and_invalid_expressions_are_not_served() {
    let p = Pipeline::start().await;
    let json = [("content-type", "application/json")];
    let not_json = p.post_generic("deploys", &json, "{oops").await;
    assert_eq!(not_json.status, 400, "{:?}", not_json.body);
    assert!(
        not_json.json()["error"]
            .as_str()
            .expect("error")
            .contains("not valid JSON")
    );
    let broken = p.post_generic("broken", &json, "{}").await;
    assert_eq!(broken.status, 503, "{:?}", broken.body);
    assert!(
        broken.json()["error"]
            .as_str()
            .expect("error")
            .contains("not ready")
    );
    let metrics = http::get(&p.ingest.admin_url("/metrics"))
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("fluxgate_ingest_receivers_not_ready 1"),
        "{text}"
    );
}

#[tokio::test]
async fn transient_errors_are_retried_until_the_patch_lands() {
    let p = Pipeline::start().await;
    for fault in [
        Fault::status(500),
        Fault::status(500),
        Fault::too_many_requests(1),
    ] {
        p.cluster.inject(&repo("flaky"), fault.on("PATCH"));
    }
    let _dispatcher = p.dispatcher(&["--coalesce-window", "100ms"]).await;
    p.trigger("flaky").await;
    let events = p
        .wait_outcomes("the patch", |e| !of_type(e, "patched").is_empty())
        .await;
    let statuses: Vec<u16> = p
        .requests_to("flaky", "PATCH")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 500, 429, 200]);
    let retrying: Vec<u64> = of_type(&events, "retrying")
        .iter()
        .filter_map(|e| e["attempt"].as_u64())
        .collect();
    assert_eq!(retrying, [1, 2]);
    assert_eq!(
        of_type(&events, "patched")[0]["attempts"],
        3,
        "the 429 is retried by the kube client itself"
    );
    assert!(annotation(&p.cluster.get(&repo("flaky")).expect("flaky")).is_some());
}

#[tokio::test]
async fn a_missing_target_fails_at_once_without_a_retry_storm() {
    let p = Pipeline::start().await;
    let _dispatcher = p.dispatcher(&["--coalesce-window", "100ms"]).await;
    let delivery = p.trigger("missing").await;
    let events = p
        .wait_outcomes("the failure", |e| !of_type(e, "failed").is_empty())
        .await;
    let failed = of_type(&events, "failed");
    assert_eq!(failed[0]["delivery"], delivery.as_str());
    assert_eq!(failed[0]["target"]["name"], "ghost");
    assert!(
        failed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not found")),
        "{}",
        failed[0]
    );
    assert_eq!(
        p.requests_to("ghost", "PATCH").len(),
        1,
        "a 404 is not retried"
    );
    assert!(of_type(&events, "retrying").is_empty());
    // The failed delivery is acknowledged: a later one is handled normally.
    p.trigger("labels").await;
    p.wait_outcomes("the next delivery", |e| of_type(e, "patched").len() == 2)
        .await;
    assert_eq!(p.requests_to("ghost", "PATCH").len(), 1);
}

#[tokio::test]
async fn dry_run_records_what_it_would_patch_and_patches_nothing() {
    let p = Pipeline::start().await;
    let dispatcher = p.dispatcher(&["--dry-run"]).await;
    p.trigger("labels").await;
    let events = p
        .wait_outcomes("two would_patch", |e| of_type(e, "would_patch").len() == 2)
        .await;
    assert!(of_type(&events, "patched").is_empty());
    assert!(p.cluster.requests().iter().all(|r| r.method != "PATCH"));
    // Both admin ports answer a path they do not serve with a JSON 404 that says what they do.
    for url in [dispatcher.admin_url("/nope"), p.ingest.admin_url("/nope")] {
        let answer = http::get(&url).await.expect("admin answers");
        assert_eq!(answer.status, 404, "{url}");
        assert!(
            answer.json()["reason"]
                .as_str()
                .is_some_and(|r| r.contains("/readyz")),
            "{url}: {:?}",
            answer.body
        );
    }
    let _ = &p.dir;
}

/// Polls a dispatcher's `/metrics` until `line` appears; returns how long that took.
async fn wait_metric(dispatcher: &Dispatcher, line: &str) -> Duration {
    let started = tokio::time::Instant::now();
    eventually(line, || async {
        let metrics = http::get(&dispatcher.admin_url("/metrics"))
            .await
            .map(|r| String::from_utf8_lossy(&r.body).into_owned());
        match metrics {
            Ok(m) if m.lines().any(|l| l == line) => Ok(()),
            other => Err(other.map_err(|e| e.to_string())),
        }
    })
    .await;
    started.elapsed()
}

fn patched_deliveries(events: &[Value]) -> HashSet<String> {
    of_type(events, "patched")
        .iter()
        .filter_map(|e| e["delivery"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_dispatcher_killed_mid_backlog_loses_nothing() {
    let p = Pipeline::start().await;
    // Slow patches keep deliveries in flight when the dispatcher dies.
    for _ in 0..5 {
        p.cluster.inject(
            &repo("app"),
            Fault::delay(Duration::from_millis(300)).on("PATCH"),
        );
    }
    let ids: Vec<String> = (0..200).map(|i| format!("backlog-{i}")).collect();
    for id in &ids {
        p.push(id).await;
    }
    let args = [
        "--leader-election",
        "false",
        "--ack-wait",
        "2s",
        "--coalesce-window",
        "50ms",
    ];
    let mut first = p.dispatcher(&args).await;
    p.wait_outcomes("the first patch", |e| !of_type(e, "patched").is_empty())
        .await;
    first.service.kill();
    let done_before = patched_deliveries(&p.outcomes().await).len();

    let _second = p.dispatcher(&args).await;
    let expected: HashSet<String> = ids.into_iter().collect();
    let events = p
        .wait_outcomes("every delivery patched", |e| {
            patched_deliveries(e).is_superset(&expected)
        })
        .await;
    eprintln!(
        "killed after {done_before} of 200 deliveries were patched; {} patches in all",
        p.patches("app").len()
    );
    assert!(patched_deliveries(&events).is_superset(&expected));
    assert!(annotation(&p.cluster.get(&repo("app")).expect("app")).is_some());
}

#[tokio::test]
async fn only_the_leader_patches_and_a_standby_takes_over_when_it_dies() {
    let p = Pipeline::start().await;
    let args = |id: &'static str| {
        [
            "--identity",
            id,
            "--lease-duration",
            "2s",
            "--coalesce-window",
            "50ms",
            "--ack-wait",
            "2s",
        ]
    };
    let mut a = p.dispatcher(&args("a")).await;
    wait_metric(&a, "fluxgate_dispatcher_leader 1").await;
    let b = p.dispatcher(&args("b")).await;
    wait_metric(&b, "fluxgate_dispatcher_leader 0").await;

    p.push("while-a-leads").await;
    p.wait_outcomes("the patch", |e| of_type(e, "patched").len() == 1)
        .await;
    wait_metric(
        &a,
        r#"fluxgate_dispatcher_outcomes_total{outcome="patched"} 1"#,
    )
    .await;
    let b_metrics = http::get(&b.admin_url("/metrics")).await.expect("metrics");
    assert!(
        !String::from_utf8_lossy(&b_metrics.body).contains("outcome=\"patched\""),
        "the standby must not patch"
    );

    a.service.kill();
    let failover = wait_metric(&b, "fluxgate_dispatcher_leader 1").await;
    eprintln!("failover after SIGKILL of the leader: {failover:?}");
    p.push("after-failover").await;
    p.wait_outcomes("the second patch", |e| of_type(e, "patched").len() == 2)
        .await;
    wait_metric(
        &b,
        r#"fluxgate_dispatcher_outcomes_total{outcome="patched"} 1"#,
    )
    .await;
    let lease = p
        .cluster
        .get(&ObjectRef::new(
            "coordination.k8s.io/v1",
            "Lease",
            NS,
            "fluxgate-dispatcher",
        ))
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "b");
}

#[tokio::test]
async fn sigterm_releases_the_lease_at_once() {
    let p = Pipeline::start().await;
    let mut a = p
        .dispatcher(&["--identity", "a", "--lease-duration", "60s"])
        .await;
    wait_metric(&a, "fluxgate_dispatcher_leader 1").await;
    let lease_ref = ObjectRef::new("coordination.k8s.io/v1", "Lease", NS, "fluxgate-dispatcher");
    assert_eq!(
        p.cluster.get(&lease_ref).expect("lease")["spec"]["holderIdentity"],
        "a"
    );
    assert!(a.service.terminate().await, "a graceful shutdown exits 0");
    let lease = p.cluster.get(&lease_ref).expect("lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
    // With the lease released, a newcomer leads without waiting out the 60s lease.
    let b = p
        .dispatcher(&["--identity", "b", "--lease-duration", "60s"])
        .await;
    wait_metric(&b, "fluxgate_dispatcher_leader 1").await;
}

#[tokio::test]
async fn a_poison_message_is_terminated_and_recorded() {
    let p = Pipeline::start().await;
    let jetstream = jetstream::new(p.nats.client().await);
    jetstream
        .publish(contract::delivery_subject(NS, "gh"), "no headers".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let _dispatcher = p.dispatcher(&["--ack-wait", "1s"]).await;
    let events = p
        .wait_outcomes("the poison record", |e| !of_type(e, "failed").is_empty())
        .await;
    let failed = of_type(&events, "failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0]["seq"].as_u64(), failed[0]["receiver"].as_str()),
        (Some(1), Some("_unknown/_unknown"))
    );
    // Terminated, not redelivered: a later delivery is handled and the poison is not seen again.
    p.push("after-poison").await;
    let events = p
        .wait_outcomes("the next patch", |e| !of_type(e, "patched").is_empty())
        .await;
    assert_eq!(of_type(&events, "failed").len(), 1);
}
