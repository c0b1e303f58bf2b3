//! End-to-end tests of the whole pipeline: `fluxgate-ingest` and `fluxgate-dispatcher` as real
//! processes, a real `nats-server`, and the Kubernetes API stand-in as the cluster.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use fluxgate_shared::contract;
use fluxgate_tests::apiserver::{Fault, ObjectRef, RecordedRequest};
use fluxgate_tests::dispatcher::Dispatcher;
use fluxgate_tests::eventually;
use fluxgate_tests::http;
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{github_push_body, post_github_push, secret_manifest};
use futures::TryStreamExt as _;
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
        // Its filter's cost grows with the cube of the request's list.
        receiver(
            "costly",
            "generic",
            "plain",
            "    - kind: GitRepository\n      name: app\n      filter: req.items.all(x, req.items.all(y, req.items.all(z, x + y + z >= 0)))\n",
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

/// NATS, the stand-in with its repositories, and ingest serving the receivers above;
/// dispatchers are started by the tests.
async fn start() -> Stack {
    start_serving(receivers_yaml()).await
}

async fn start_serving(receivers: String) -> Stack {
    let repositories = [
        ("app", "core"),
        ("flaky", "core"),
        ("web-1", "web"),
        ("web-2", "web"),
        ("api", "api"),
        ("img-a", "img"),
        ("img-b", "img"),
        ("img-c", "img"),
    ];
    Stack::builder()
        .cluster(repositories.map(|(name, team)| git_repository(name, team)))
        .receivers(receivers)
        .ingest(&[])
        .start()
        .await
}

async fn push(p: &Stack, delivery: &str) {
    let url = p.hook_url(GH_TOKEN, "gh", NS);
    let response = post_github_push(&url, GH_TOKEN, delivery, github_push_body(512)).await;
    assert_eq!(response.status, 202, "{:?}", response.body);
}

/// A bare generic trigger; returns its delivery id.
async fn trigger(p: &Stack, receiver: &str) -> String {
    let response = post_generic(p, receiver, &[], "").await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    response.json()["delivery"]
        .as_str()
        .expect("delivery id")
        .to_owned()
}

/// A generic webhook with a JSON body; returns its delivery id.
async fn trigger_json(p: &Stack, receiver: &str, body: Value) -> String {
    let response = post_generic(
        p,
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
    p: &Stack,
    receiver: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response {
    http::post(&p.hook_url(TOKEN, receiver, NS), headers, body.to_owned())
        .await
        .expect("post")
}

/// Successful patches of a repository, in order.
fn patches(p: &Stack, name: &str) -> Vec<Value> {
    requests_to(p, name, "PATCH")
        .into_iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.body)
        .collect()
}

fn requests_to(p: &Stack, name: &str, method: &str) -> Vec<RecordedRequest> {
    let path = format!("/apis/source.toolkit.fluxcd.io/v1/namespaces/{NS}/gitrepositories/{name}");
    p.api()
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path == path)
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn annotation(object: &Value) -> Option<&str> {
    object["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].as_str()
}

#[tokio::test]
async fn signed_push_patches_its_target_once_and_records_the_trail() {
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "100ms"]).await;
    push(&p, "guid-1").await;
    push(&p, "guid-1").await; // GitHub redelivery: stored once by JetStream.

    let events = p
        .outcomes_until("the patch", |e| !of_type(e, "patched").is_empty())
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

    let app = p.api().get(&repo("app")).expect("app");
    let value = annotation(&app).expect("requestedAt annotation");
    assert_eq!(patched[0]["requested_at"], value);
    assert!(
        chrono::DateTime::parse_from_rfc3339(value).is_ok()
            && value.ends_with('Z')
            && value.len() == 30,
        "{value}"
    );
    assert_eq!(patches(&p, "app").len(), 1, "one delivery, one patch");
    assert!(patches(&p, "web-1").is_empty() && patches(&p, "flaky").is_empty());
}

#[tokio::test]
async fn a_burst_to_one_target_becomes_one_or_two_patches() {
    // More deliveries than one outcome message lists (200).
    const BURST: u64 = 250;
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "1s"]).await;
    futures::future::join_all((0..BURST).map(|i| {
        let p = &p;
        async move { push(p, &format!("burst-{i}")).await }
    }))
    .await;
    let events = p
        .outcomes_until("every delivery patched", |e| {
            of_type(e, "patched").len() as u64 == BURST
        })
        .await;
    let patches = patches(&p, "app").len();
    assert!(
        (1..=2).contains(&patches),
        "{BURST} deliveries made {patches} patches"
    );
    let batches: HashSet<&str> = of_type(&events, "patched")
        .iter()
        .filter_map(|e| e["batch"].as_str())
        .collect();
    assert_eq!(batches.len(), patches);
    // Each patch's event says how many deliveries it carried: all of them between them.
    let mut sizes: HashMap<&str, u64> = HashMap::new();
    for event in of_type(&events, "patched") {
        let (batch, size) = (event["batch"].as_str(), event["size"].as_u64());
        sizes.insert(batch.unwrap_or_default(), size.unwrap_or_default());
    }
    assert_eq!(sizes.values().sum::<u64>(), BURST, "{sizes:?}");
    // Stored as one message per patch listing the deliveries it carried, 200 at most each.
    let messages: u64 = sizes.values().map(|size| size.div_ceil(200)).sum();
    assert_eq!(
        messages_on(&p, "fluxgate.outcomes.flux-system.gh.patched").await as u64,
        messages,
        "{sizes:?}"
    );
}

/// Deliveries of one receiver dispatched one after another, not at once, share their
/// `dispatched` message when they come within its linger (a quarter of the coalescing window).
#[tokio::test]
async fn deliveries_dispatched_one_after_another_share_their_dispatched_message() {
    const DELIVERIES: usize = 6;
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "1s"]).await;
    // 20 ms apart, about 120 ms in all: within the linger of 250 ms.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for i in 0..DELIVERIES {
        pace.tick().await;
        push(&p, &format!("paced-{i}")).await;
    }
    p.outcomes_until("every delivery dispatched and patched", |e| {
        of_type(e, "dispatched").len() == DELIVERIES && of_type(e, "patched").len() == DELIVERIES
    })
    .await;
    all_acknowledged(&p).await;
    // One message, or two should the machine stall past the linger; one each without it.
    let messages = messages_on(&p, "fluxgate.outcomes.flux-system.gh.dispatched").await;
    assert!(
        (1..=DELIVERIES / 2).contains(&messages),
        "{DELIVERIES} deliveries dispatched in {messages} messages"
    );
}

#[tokio::test]
async fn a_label_selector_patches_every_match_and_nothing_else() {
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "100ms"]).await;
    let delivery = trigger(&p, "labels").await;
    let events = p
        .outcomes_until("two patches", |e| of_type(e, "patched").len() == 2)
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
    assert_eq!(
        (patches(&p, "web-1").len(), patches(&p, "web-2").len()),
        (1, 1)
    );
    assert!(patches(&p, "api").is_empty() && patches(&p, "app").is_empty());
    assert!(requests_to(&p, "api", "PATCH").is_empty());
}

#[tokio::test]
async fn cel_filters_keep_the_targets_that_match_the_request() {
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "100ms"]).await;
    // Three candidates by label, one whose annotation names the pushed image.
    let images = trigger_json(
        &p,
        "images",
        json!({"tag": "registry.example/org/img-b:1.2.3"}),
    )
    .await;
    // A named target whose filter is false, and one whose filter cannot be evaluated.
    let deploys = trigger_json(&p, "deploys", json!({"action": "build"})).await;
    let events = p
        .outcomes_until("the image patch and both filter results", |e| {
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
    assert_eq!(patches(&p, "img-b").len(), 1);
    for name in ["img-a", "img-c", "app", "api"] {
        assert!(
            requests_to(&p, name, "PATCH").is_empty(),
            "{name} was patched"
        );
    }
}

#[tokio::test]
async fn receivers_with_filters_refuse_bad_json_and_invalid_expressions_are_not_served() {
    let p = start().await;
    let json = [("content-type", "application/json")];
    let not_json = post_generic(&p, "deploys", &json, "{oops").await;
    assert_eq!(not_json.status, 400, "{:?}", not_json.body);
    assert!(
        not_json.json()["error"]
            .as_str()
            .expect("error")
            .contains("not valid JSON")
    );
    let broken = post_generic(&p, "broken", &json, "{}").await;
    assert_eq!(broken.status, 503, "{:?}", broken.body);
    assert!(
        broken.json()["error"]
            .as_str()
            .expect("error")
            .contains("not ready")
    );
    let metrics = http::get(&p.ingest().admin_url("/metrics"))
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
    let p = start().await;
    for fault in [
        Fault::status(500),
        Fault::status(500),
        Fault::too_many_requests(1),
    ] {
        p.api().inject(&repo("flaky"), fault.on("PATCH"));
    }
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "100ms"]).await;
    trigger(&p, "flaky").await;
    let events = p
        .outcomes_until("the patch", |e| !of_type(e, "patched").is_empty())
        .await;
    let statuses: Vec<u16> = requests_to(&p, "flaky", "PATCH")
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
    assert!(annotation(&p.api().get(&repo("flaky")).expect("flaky")).is_some());
}

#[tokio::test]
async fn a_missing_target_fails_at_once_without_a_retry_storm() {
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "100ms"]).await;
    let delivery = trigger(&p, "missing").await;
    let events = p
        .outcomes_until("the failure", |e| !of_type(e, "failed").is_empty())
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
        requests_to(&p, "ghost", "PATCH").len(),
        1,
        "a 404 is not retried"
    );
    assert!(of_type(&events, "retrying").is_empty());
    // The failed delivery is acknowledged: a later one is handled normally.
    trigger(&p, "labels").await;
    p.outcomes_until("the next delivery", |e| of_type(e, "patched").len() == 2)
        .await;
    assert_eq!(requests_to(&p, "ghost", "PATCH").len(), 1);
}

#[tokio::test]
async fn dry_run_records_what_it_would_patch_and_patches_nothing() {
    let p = start().await;
    let dispatcher = p.start_dispatcher(&["--dry-run"]).await;
    trigger(&p, "labels").await;
    let events = p
        .outcomes_until("two would_patch", |e| of_type(e, "would_patch").len() == 2)
        .await;
    assert!(of_type(&events, "patched").is_empty());
    assert!(p.api().requests().iter().all(|r| r.method != "PATCH"));
    // Both admin ports answer a path they do not serve with a JSON 404 that says what they do.
    for url in [dispatcher.admin_url("/nope"), p.ingest().admin_url("/nope")] {
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
async fn a_dispatcher_killed_mid_backlog_loses_nothing_and_its_successor_patches_at_once() {
    let p = start().await;
    // The consumer as an earlier version made it, with a 30 s ack wait.
    p.deliveries()
        .await
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("fluxgate-dispatcher".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("an old consumer");
    // The first patch hangs: every delivery is in flight when the dispatcher dies.
    p.api().inject(
        &repo("app"),
        Fault::delay(Duration::from_secs(10)).on("PATCH"),
    );
    let ids: Vec<String> = (0..200).map(|i| format!("backlog-{i}")).collect();
    for id in &ids {
        push(&p, id).await;
    }
    // The default ack wait, which the dispatcher gives the old consumer.
    let args = ["--leader-election", "false", "--coalesce-window", "50ms"];
    let mut first = p.start_dispatcher(&args).await;
    p.outcomes_until("every delivery dispatched", |e| {
        of_type(e, "dispatched").len() == 200
    })
    .await;
    assert_eq!(
        consumer_info(&p).await.config.ack_wait,
        Duration::from_secs(5),
        "the consumer keeps its old ack wait"
    );
    first.service.kill();
    assert!(patched_deliveries(&p.outcomes().await).is_empty());

    let started = tokio::time::Instant::now();
    let _second = p.start_dispatcher(&args).await;
    let expected: HashSet<String> = ids.into_iter().collect();
    let events = p
        .outcomes_until("every delivery patched", |e| {
            patched_deliveries(e).is_superset(&expected)
        })
        .await;
    eprintln!(
        "killed with 200 deliveries in flight; the successor had patched them {:?} after its start; {} patches in all",
        started.elapsed(),
        patches(&p, "app").len()
    );
    assert!(patched_deliveries(&events).is_superset(&expected));
    assert!(annotation(&p.api().get(&repo("app")).expect("app")).is_some());
}

#[tokio::test]
async fn only_the_leader_patches_and_a_standby_takes_over_when_it_dies() {
    let p = start().await;
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
    let mut a = p.start_dispatcher(&args("a")).await;
    wait_metric(&a, "fluxgate_dispatcher_leader 1").await;
    let b = p.start_dispatcher(&args("b")).await;
    wait_metric(&b, "fluxgate_dispatcher_leader 0").await;

    push(&p, "while-a-leads").await;
    p.outcomes_until("the patch", |e| of_type(e, "patched").len() == 1)
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
    eprintln!("the standby leads {failover:?} after the leader's SIGKILL (lease duration 2 s)");
    push(&p, "after-failover").await;
    p.outcomes_until("the second patch", |e| of_type(e, "patched").len() == 2)
        .await;
    wait_metric(
        &b,
        r#"fluxgate_dispatcher_outcomes_total{outcome="patched"} 1"#,
    )
    .await;
    let lease = p
        .api()
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
    let p = start().await;
    let mut a = p
        .start_dispatcher(&["--identity", "a", "--lease-duration", "60s"])
        .await;
    wait_metric(&a, "fluxgate_dispatcher_leader 1").await;
    let lease_ref = ObjectRef::new("coordination.k8s.io/v1", "Lease", NS, "fluxgate-dispatcher");
    assert_eq!(
        p.api().get(&lease_ref).expect("lease")["spec"]["holderIdentity"],
        "a"
    );
    assert!(a.service.terminate().await, "a graceful shutdown exits 0");
    let lease = p.api().get(&lease_ref).expect("lease");
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
    // With the lease released, a newcomer leads without waiting out the 60s lease.
    let b = p
        .start_dispatcher(&["--identity", "b", "--lease-duration", "60s"])
        .await;
    wait_metric(&b, "fluxgate_dispatcher_leader 1").await;
}

#[tokio::test]
async fn sigterm_patches_and_acknowledges_what_is_in_flight_before_exiting() {
    let p = start().await;
    let mut dispatcher = p
        .start_dispatcher(&["--coalesce-window", "500ms", "--leader-election", "false"])
        .await;
    let delivery = trigger(&p, "flaky").await;
    // Dispatched: it waits in the coalescing window when the signal comes.
    p.outcomes_until("the delivery dispatched", |e| {
        !of_type(e, "dispatched").is_empty()
    })
    .await;
    assert!(
        dispatcher.service.terminate().await,
        "a graceful shutdown exits 0"
    );
    let events = p.outcomes().await;
    assert_eq!(patched_deliveries(&events), HashSet::from([delivery]));
    // Acknowledged: the consumer's ack floor passes it, with no dispatcher left to redeliver to.
    eventually("the delivery acknowledged", || async {
        match consumer_info(&p).await.ack_floor.stream_sequence {
            1 => Ok(()),
            floor => Err(floor),
        }
    })
    .await;
}

#[tokio::test]
async fn a_poison_message_is_terminated_and_recorded() {
    let p = start().await;
    let jetstream = jetstream::new(p.client().await);
    jetstream
        .publish(contract::delivery_subject(NS, "gh"), "no headers".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let _dispatcher = p.start_dispatcher(&["--ack-wait", "1s"]).await;
    let events = p
        .outcomes_until("the poison record", |e| !of_type(e, "failed").is_empty())
        .await;
    let failed = of_type(&events, "failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0]["seq"].as_u64(), failed[0]["receiver"].as_str()),
        (Some(1), Some("_unknown/_unknown"))
    );
    // Terminated, not redelivered: a later delivery is handled and the poison is not seen again.
    push(&p, "after-poison").await;
    let events = p
        .outcomes_until("the next patch", |e| !of_type(e, "patched").is_empty())
        .await;
    assert_eq!(of_type(&events, "failed").len(), 1);
}

/// The dispatcher's durable consumer, as JetStream has it now.
async fn consumer_info(p: &Stack) -> jetstream::consumer::Info {
    let mut consumer: jetstream::consumer::PullConsumer = p
        .deliveries()
        .await
        .get_consumer("fluxgate-dispatcher")
        .await
        .expect("the dispatcher's consumer");
    consumer.info().await.expect("consumer info").clone()
}

/// How many outcome messages `subject` holds.
async fn messages_on(p: &Stack, subject: &str) -> usize {
    let jetstream = jetstream::new(p.client().await);
    let outcomes = (jetstream.get_stream(contract::OUTCOMES_STREAM).await).expect("outcomes");
    let counts = outcomes.info_with_subjects(subject).await.expect("counts");
    let counts: Vec<(String, usize)> = counts.try_collect().await.expect("counts");
    counts.iter().map(|(_, count)| count).sum()
}

/// How many deliveries the dispatcher's consumer holds unacknowledged.
async fn ack_pending(p: &Stack) -> usize {
    consumer_info(p).await.num_ack_pending
}

/// Waits until the dispatcher's consumer holds nothing unacknowledged.
async fn all_acknowledged(p: &Stack) {
    eventually("the delivery acknowledged", || async {
        match ack_pending(p).await {
            0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
}

#[tokio::test]
async fn a_delivery_is_acknowledged_only_once_its_outcomes_are_stored() {
    let p = start().await;
    let dispatcher = p.start_dispatcher(&["--coalesce-window", "50ms"]).await;
    push(&p, "before").await;
    let events = p
        .outcomes_until("the first patch", |e| !of_type(e, "patched").is_empty())
        .await;
    // The outcomes stream takes nothing more, as a stream at its limits or without quorum.
    let jetstream = jetstream::new(p.client().await);
    let mut outcomes = jetstream
        .get_stream(contract::OUTCOMES_STREAM)
        .await
        .expect("the outcomes stream");
    let open = outcomes.info().await.expect("info").config.clone();
    let full = jetstream::stream::Config {
        max_messages: events.len() as i64,
        discard: jetstream::stream::DiscardPolicy::New,
        ..open.clone()
    };
    jetstream
        .update_stream(&full)
        .await
        .expect("limit the outcomes");

    push(&p, "while-full").await;
    wait_metric(&dispatcher, "fluxgate_dispatcher_outcome_retries_total 3").await;
    assert_eq!(
        ack_pending(&p).await,
        1,
        "acknowledged before its outcomes were stored"
    );

    jetstream
        .update_stream(&open)
        .await
        .expect("lift the limit");
    // Its `dispatched` event may come after its `patched`: the patch does not wait for it.
    let events = p
        .outcomes_until("the second delivery's events recorded", |e| {
            patched_deliveries(e).contains("while-full") && of_type(e, "dispatched").len() >= 2
        })
        .await;
    assert_eq!(
        of_type(&events, "dispatched").len(),
        2,
        "each event stored once"
    );
    all_acknowledged(&p).await;
}

#[tokio::test]
async fn a_delivery_held_past_the_ack_wait_is_kept_alive_not_redelivered() {
    let p = start().await;
    // Its patch takes three ack waits: only progress acks keep JetStream from redelivering it.
    p.api().inject(
        &repo("flaky"),
        Fault::delay(Duration::from_secs(3)).on("PATCH"),
    );
    let _dispatcher = p
        .start_dispatcher(&["--ack-wait", "1s", "--coalesce-window", "50ms"])
        .await;
    trigger(&p, "flaky").await;
    let events = p
        .outcomes_until("the slow patch", |e| !of_type(e, "patched").is_empty())
        .await;
    assert_eq!(of_type(&events, "dispatched").len(), 1);
    all_acknowledged(&p).await;
    // The consumer's sequence counts every delivery of a message, redeliveries included.
    assert_eq!(
        consumer_info(&p).await.delivered.consumer_sequence,
        1,
        "redelivered while its patch was under way"
    );
}

/// Flags of a dispatcher whose successor takes over within seconds of its death: a short lease,
/// and its deliveries redelivered a second after their last ack.
fn failover_args<'a>(identity: &'a str, coalesce_window: &'a str) -> [&'a str; 8] {
    [
        "--identity",
        identity,
        "--lease-duration",
        "2s",
        "--ack-wait",
        "1s",
        "--coalesce-window",
        coalesce_window,
    ]
}

#[tokio::test]
async fn a_delivery_patched_before_a_crash_is_not_patched_again_when_redelivered() {
    let mut p = start().await;
    let args = |id| failover_args(id, "50ms");
    // The patch takes a second: time to cut the dispatcher off from NATS while it is under way.
    p.api().inject(
        &repo("flaky"),
        Fault::delay(Duration::from_secs(1)).on("PATCH"),
    );
    let mut first = p.start_dispatcher(&args("a")).await;
    let keyed = [("idempotency-key", "crash-1")];
    let response = post_generic(&p, "flaky", &keyed, "").await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    p.outcomes_until("dispatched", |e| !of_type(e, "dispatched").is_empty())
        .await;
    // NATS goes down: the patch lands, but neither its outcome nor the ack can follow, and the
    // dispatcher dies so; NATS comes back with its store.
    p.nats_mut().kill();
    eventually("the patch to land", || async {
        match patches(&p, "flaky").len() {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    first.service.kill();
    p.nats_mut().restart().await;

    // The next leader gets it again, finds the target asked to reconcile since the webhook came, and
    // records the patch that was made instead of making another.
    let _second = p.start_dispatcher(&args("b")).await;
    let events = p
        .outcomes_until("the patch recorded", |e| !of_type(e, "patched").is_empty())
        .await;
    all_acknowledged(&p).await;
    let taken = patches(&p, "flaky");
    assert_eq!(taken.len(), 1, "patched again: {taken:?}");
    let patched = of_type(&events, "patched");
    assert_eq!(patched.len(), 1, "{patched:?}");
    assert_eq!(patched[0]["requested_at"].as_str(), annotation(&taken[0]));
    assert_eq!(patched[0]["attempts"], 0, "no attempt of its own");
    assert!(
        consumer_info(&p).await.delivered.consumer_sequence >= 2,
        "redelivered"
    );
}

#[tokio::test]
async fn a_delivery_redelivered_before_its_patch_is_patched_by_the_next_leader() {
    let p = start().await;
    // The target was last asked to reconcile before the webhook came: that does not cover it.
    let mut flaky = git_repository("flaky", "core");
    flaky["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"] =
        "2026-01-01T00:00:00Z".into();
    p.api().apply(flaky);
    // The first leader holds the delivery for a coalescing window it never sees the end of.
    let mut first = p.start_dispatcher(&failover_args("a", "1h")).await;
    let keyed = [("idempotency-key", "unpatched-1")];
    let response = post_generic(&p, "flaky", &keyed, "").await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    p.outcomes_until("dispatched", |e| !of_type(e, "dispatched").is_empty())
        .await;
    first.service.kill();

    let _second = p.start_dispatcher(&failover_args("b", "50ms")).await;
    let events = p
        .outcomes_until("the patch recorded", |e| !of_type(e, "patched").is_empty())
        .await;
    all_acknowledged(&p).await;
    let taken = patches(&p, "flaky");
    assert_eq!(taken.len(), 1, "{taken:?}");
    let patched = of_type(&events, "patched");
    assert_eq!(patched[0]["requested_at"].as_str(), annotation(&taken[0]));
    assert!(patched[0]["attempts"].as_u64() >= Some(1), "{patched:?}");
    assert!(
        consumer_info(&p).await.delivered.consumer_sequence >= 2,
        "redelivered"
    );
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_recorded_failed_after_max_deliver_attempts() {
    let p = start().await;
    // Every list of GitRepositories fails: the "labels" receiver's targets cannot be resolved.
    let repositories = ObjectRef::new(SOURCE, "GitRepository", NS, "");
    for _ in 0..10 {
        p.api().inject(&repositories, Fault::status(500).on("GET"));
    }
    let _dispatcher = p.start_dispatcher(&["--max-deliver", "2"]).await;
    trigger(&p, "labels").await;
    let events = p
        .outcomes_until("the delivery failed", |e| !of_type(e, "failed").is_empty())
        .await;
    let failed = of_type(&events, "failed");
    let reason = failed[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("gave up after 2 attempts: "), "{reason}");
    assert!(reason.contains("500"), "the last list's failure: {reason}");
    assert!(of_type(&events, "dispatched").is_empty());
}

#[tokio::test]
async fn confirmations_in_one_namespace_share_one_watch() {
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "50ms"]).await;
    // "labels" patches web-1 and web-2, "flaky" a third repository of the namespace; the
    // controllers start once all three wait for confirmation.
    trigger(&p, "labels").await;
    trigger(&p, "flaky").await;
    p.outcomes_until("three targets patched", |e| {
        of_type(e, "patched").len() == 3
    })
    .await;
    p.api().play_flux_controllers(Duration::from_millis(50));
    let events = p
        .outcomes_until("three targets handled", |e| {
            of_type(e, "handled").len() == 3
        })
        .await;
    let mut handled: Vec<&str> = of_type(&events, "handled")
        .iter()
        .filter_map(|e| e["target"]["name"].as_str())
        .collect();
    handled.sort();
    assert_eq!(handled, ["flaky", "web-1", "web-2"]);
    let path = format!("/apis/source.toolkit.fluxcd.io/v1/namespaces/{NS}/gitrepositories");
    let watches = (p.api().requests().into_iter())
        .filter(|r| r.path == path && r.query.contains("watch=true"))
        .count();
    assert_eq!(watches, 1, "one watch for the namespace's GitRepositories");
}

#[tokio::test]
async fn a_filter_past_its_budget_fails_its_delivery_and_stalls_nothing() {
    let p = start().await;
    let dispatcher = p
        .start_dispatcher(&["--identity", "a", "--lease-duration", "2s"])
        .await;
    let items: Vec<u32> = (0..400).collect();
    let costly = trigger_json(&p, "costly", json!({ "items": items })).await;
    let events = p
        .outcomes_until("the costly delivery failed", |e| {
            !of_type(e, "failed").is_empty()
        })
        .await;
    let failed = of_type(&events, "failed");
    assert_eq!(failed[0]["delivery"], costly.as_str());
    assert_eq!(
        failed[0]["reason"], "the filters did not finish within 1s",
        "{failed:?}"
    );
    // While it still runs on its thread, the dispatcher leads and patches on.
    trigger(&p, "flaky").await;
    p.outcomes_until("the next patch", |e| !of_type(e, "patched").is_empty())
        .await;
    wait_metric(&dispatcher, "fluxgate_dispatcher_leader 1").await;
}

/// Reads of the namespace's GitRepositories, patches aside: (lists, watches, gets).
fn reads_of_repositories(p: &Stack) -> (usize, usize, usize) {
    let collection = format!("/apis/{SOURCE}/namespaces/{NS}/gitrepositories");
    let mut reads = (0, 0, 0);
    for request in p.api().requests() {
        if request.method != "GET" || !request.path.starts_with(&collection) {
            continue;
        }
        if request.path != collection {
            reads.2 += 1;
        } else if request.query.contains("watch=true") {
            reads.1 += 1;
        } else {
            reads.0 += 1;
        }
    }
    reads
}

#[tokio::test]
async fn bursts_cost_the_api_server_one_list_and_one_watch_then_only_patches() {
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "50ms"]).await;
    p.api().play_flux_controllers(Duration::from_millis(10));
    let mut ids = HashSet::new();
    for burst in 0..2 {
        // A label selector (web-1, web-2) and a named target with a filter (app).
        for _ in 0..20 {
            ids.insert(trigger(&p, "labels").await);
            ids.insert(trigger_json(&p, "deploys", json!({"action": "deploy"})).await);
        }
        let events = p
            .outcomes_until("every delivery patched and confirmed", |e| {
                patched_deliveries(e).is_superset(&ids)
                    && of_type(e, "handled").len() >= of_type(e, "patched").len()
            })
            .await;
        assert!(of_type(&events, "not_handled").is_empty());
        assert_eq!(
            reads_of_repositories(&p),
            (1, 1, 0),
            "after burst {burst}: one list and one watch, no get, whatever the deliveries"
        );
    }
}

/// The names a delivery was dispatched to, once its `dispatched` event is stored.
async fn dispatched_to(p: &Stack, delivery: &str) -> Vec<String> {
    let events = p
        .outcomes_until("the delivery dispatched", |e| {
            of_type(e, "dispatched")
                .iter()
                .any(|d| d["delivery"] == delivery)
        })
        .await;
    let dispatched = of_type(&events, "dispatched");
    let event = dispatched.iter().find(|d| d["delivery"] == delivery);
    let mut names: Vec<String> = (event.and_then(|d| d["targets"].as_array()).into_iter())
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Triggers "labels" until a delivery is dispatched to `expected`, which the one after it must
/// be too: the caches follow the cluster, and do not go back.
async fn labels_dispatch_to(p: &Stack, expected: &[&str]) {
    eventually(
        &format!("a delivery dispatched to {expected:?}"),
        || async {
            let names = dispatched_to(p, &trigger(p, "labels").await).await;
            if names == expected {
                Ok(())
            } else {
                Err(names)
            }
        },
    )
    .await;
    let next = dispatched_to(p, &trigger(p, "labels").await).await;
    assert_eq!(next, expected);
}

#[tokio::test]
async fn targets_created_relabelled_or_deleted_are_seen_by_later_deliveries() {
    let p = start().await;
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "20ms"]).await;
    labels_dispatch_to(&p, &["web-1", "web-2"]).await;
    p.api().apply(git_repository("web-3", "web"));
    labels_dispatch_to(&p, &["web-1", "web-2", "web-3"]).await;
    p.api().apply(git_repository("web-2", "core"));
    labels_dispatch_to(&p, &["web-1", "web-3"]).await;
    p.api().delete(&repo("web-1"));
    labels_dispatch_to(&p, &["web-3"]).await;
    let (lists, _, gets) = reads_of_repositories(&p);
    assert_eq!((lists, gets), (1, 0), "the changes came by the watch");
}

#[tokio::test]
async fn a_delivery_waits_for_its_cache_to_be_listed_rather_than_finding_nothing() {
    let p = start().await;
    let repositories = ObjectRef::new(SOURCE, "GitRepository", NS, "");
    p.api().inject(
        &repositories,
        Fault::delay(Duration::from_millis(1500)).on("GET"),
    );
    let _dispatcher = p.start_dispatcher(&["--coalesce-window", "20ms"]).await;
    let delivery = trigger(&p, "labels").await;
    assert_eq!(dispatched_to(&p, &delivery).await, ["web-1", "web-2"]);
}

#[tokio::test]
async fn a_cache_no_receiver_needs_any_more_is_dropped() {
    let elsewhere = receiver(
        "elsewhere",
        "generic",
        "plain",
        "    - kind: GitRepository\n      name: \"*\"\n      namespace: tenant-b\n      matchLabels: {}\n",
    );
    let p = start_serving(format!("{}---\n{elsewhere}", receivers_yaml())).await;
    let dispatcher = p.start_dispatcher(&["--coalesce-window", "20ms"]).await;
    trigger(&p, "labels").await;
    trigger(&p, "elsewhere").await;
    wait_metric(&dispatcher, "fluxgate_dispatcher_watch_caches 2").await;
    std::fs::write(p.receivers_file(), receivers_yaml()).expect("rewrite the receivers file");
    wait_metric(&dispatcher, "fluxgate_dispatcher_watch_caches 1").await;
    // The namespace's cache stays: its deliveries still read nothing.
    trigger(&p, "labels").await;
    let events = p
        .outcomes_until("both deliveries of labels patched", |e| {
            patched_deliveries(e).len() >= 2
        })
        .await;
    assert!(!of_type(&events, "patched").is_empty());
    assert_eq!(reads_of_repositories(&p).0, 1);
}
