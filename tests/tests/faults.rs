//! Faults of a 3-node JetStream cluster (NATS in containers, streams and KV at 3 replicas),
//! each under a steady load of signed webhooks through the real ingest and dispatcher: every
//! delivery answered 2xx must end patched, exactly once, and each test prints what senders saw
//! -- the error rate and the longest stretch without a 2xx.
//!
//! Needs Docker and the NATS image of docker-compose.yml, which the test command provides
//! (`scripts/docker.sh start`, `scripts/images.sh`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use fluxgate_shared::contract;
use fluxgate_tests::containers::{NatsNodes, Node};
use fluxgate_tests::http;
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{github_push_body, github_signature, secret_manifest};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NS: &str = "flux-system";
const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
const TOKEN: &str = "gh-secret";
/// One webhook every this often, one at a time.
const PACE: Duration = Duration::from_millis(20);
/// How many 2xx answers the load must reach between the steps of a fault.
const STEP: usize = 50;

fn receivers() -> String {
    [
        secret_manifest("gh-token", NS, TOKEN),
        format!(
            "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: gh\n  namespace: {NS}\nspec:\n  type: github\n  secretRef:\n    name: gh-token\n  resources:\n    - kind: GitRepository\n      name: app\n"
        ),
    ]
    .join("---\n")
}

fn repository() -> Value {
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"url": "https://example.org/repo", "interval": "10m"},
    })
}

/// The cluster, the API stand-in with one GitRepository, and ingest and a dispatcher on the
/// cluster with every stream and bucket at 3 replicas.
async fn start() -> (NatsNodes, Stack) {
    let nodes = NatsNodes::cluster().await;
    let replicas = ["--stream-replicas", "3"];
    let stack = Stack::builder()
        .nats_url(nodes.url())
        .cluster([repository()])
        .receivers(receivers())
        .ingest(&replicas)
        .dispatcher(&[&replicas[..], &["--coalesce-window", "50ms"]].concat())
        .start()
        .await;
    (nodes, stack)
}

fn is_2xx(status: &u16) -> bool {
    (200..300).contains(status)
}

/// One answer a sender saw.
struct Answer {
    sent: Instant,
    at: Instant,
    /// The status, or why there was none.
    status: Result<u16, String>,
    retry_after: bool,
}

/// Signed pushes with fresh delivery ids, one every [`PACE`], until stopped.
struct Load {
    accepted: watch::Receiver<usize>,
    answered: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<(Vec<Answer>, Vec<String>)>,
}

impl Load {
    fn start(url: String) -> Self {
        let (accepted_tx, accepted) = watch::channel(0);
        let (answered_tx, answered) = watch::channel(0);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let (mut answers, mut ids) = (Vec::new(), Vec::new());
            let mut pace = tokio::time::interval(PACE);
            let body = github_push_body(512);
            let signature = github_signature(TOKEN, &body);
            for n in 0.. {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = pace.tick() => {}
                }
                let id = format!("load-{n}");
                let headers = [
                    ("content-type", "application/json"),
                    ("x-github-event", "push"),
                    ("x-github-delivery", id.as_str()),
                    ("x-hub-signature-256", signature.as_str()),
                ];
                let sent = Instant::now();
                let response = http::post(&url, &headers, body.clone()).await;
                let answer = Answer {
                    sent,
                    at: Instant::now(),
                    retry_after: response
                        .as_ref()
                        .is_ok_and(|r| r.header("retry-after").is_some()),
                    status: response.map(|r| r.status).map_err(|e| e.to_string()),
                };
                if answer.status.as_ref().is_ok_and(is_2xx) {
                    ids.push(id);
                    accepted_tx.send_modify(|n| *n += 1);
                }
                answers.push(answer);
                answered_tx.send_modify(|n| *n += 1);
            }
            (answers, ids)
        });
        Self {
            accepted,
            answered,
            stop,
            task,
        }
    }

    /// Waits until `more` further webhooks have been answered 2xx.
    async fn accepts(&mut self, more: usize) {
        count_up(&mut self.accepted, more, "accepted webhooks").await;
    }

    /// Waits until `more` further webhooks have been answered, whatever the answer.
    async fn refusals(&mut self, more: usize) {
        count_up(&mut self.answered, more, "answers").await;
    }

    async fn finish(self) -> (Vec<Answer>, Vec<String>) {
        let _ = self.stop.send(true);
        self.task.await.expect("the load task")
    }
}

/// Waits until `counter` has grown by `more`.
async fn count_up(counter: &mut watch::Receiver<usize>, more: usize, what: &str) {
    let target = *counter.borrow() + more;
    let waited = tokio::time::timeout(
        fluxgate_tests::EVENTUALLY_DEADLINE,
        counter.wait_for(|n| *n >= target),
    )
    .await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "the load did not reach {target} {what}"
    );
}

/// What senders saw: requests, the share not answered 2xx, the longest stretch without a 2xx.
fn report(fault: &str, answers: &[Answer]) -> (f64, Duration) {
    let failed = (answers.iter())
        .filter(|a| !a.status.as_ref().is_ok_and(is_2xx))
        .count();
    let mut longest = Duration::ZERO;
    let mut last_ok = answers.first().map(|a| a.at);
    for answer in answers {
        if answer.status.as_ref().is_ok_and(is_2xx) {
            if let Some(last) = last_ok {
                longest = longest.max(answer.at - last);
            }
            last_ok = Some(answer.at);
        }
    }
    let rate = failed as f64 / answers.len().max(1) as f64;
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for answer in answers {
        let kind = match &answer.status {
            Ok(status) => status.to_string(),
            Err(_) => "no answer".into(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    eprintln!(
        "{fault}: {} webhooks, {failed} not 2xx ({:.2}%), longest gap without a 2xx {longest:?}; answers {kinds:?}",
        answers.len(),
        rate * 100.0
    );
    (rate, longest)
}

/// Every accepted delivery ends patched, once: none lost, none patched twice.
async fn each_patched_once(stack: &Stack, accepted: &[String]) {
    let events = stack
        .outcomes_until("every accepted delivery patched", |events| {
            let patched: HashSet<&str> = (events.iter())
                .filter(|e| e["type"] == "patched")
                .filter_map(|e| e["delivery"].as_str())
                .collect();
            accepted.iter().all(|id| patched.contains(id.as_str()))
        })
        .await;
    let made = patches_made(&events);
    let twice: Vec<_> = made.iter().filter(|(_, n)| **n > 1).collect();
    let trails: Vec<&Value> = (events.iter())
        .filter(|e| twice.iter().any(|(id, _)| e["delivery"] == **id))
        .collect();
    assert!(
        twice.is_empty(),
        "patched more than once: {twice:?} {trails:#?}"
    );
    // Every patch the API server took is one of the recorded batches: a delivery patched again
    // (its record deduplicated) would leave a value no `patched` event has.
    let recorded: BTreeSet<&str> = (events.iter())
        .filter(|e| e["type"] == "patched")
        .filter_map(|e| e["requested_at"].as_str())
        .collect();
    let path = format!("/apis/source.toolkit.fluxcd.io/v1/namespaces/{NS}/gitrepositories/app");
    let requests = stack.api().requests();
    let taken: BTreeSet<&str> = (requests.iter())
        .filter(|r| r.method == "PATCH" && r.path == path && r.status == 200)
        .filter_map(|r| r.body.as_ref()?["metadata"]["annotations"][REQUESTED_AT].as_str())
        .collect();
    assert_eq!(taken, recorded, "patches the history does not show");
    let found = (events.iter())
        .filter(|e| e["type"] == "patched" && e["attempts"] == 0)
        .count();
    eprintln!(
        "{} accepted deliveries, each patched once, in {} patches; 0 lost; {found} redelivered found their patch made",
        accepted.len(),
        taken.len()
    );
}

/// How many patches (distinct `requestedAt` values) were made for each delivery: its `patched`
/// events with attempts. A redelivery -- after a lost ack, say -- that finds its target asked
/// to reconcile since its webhook was received makes no patch and records the one it found (`attempts` 0).
fn patches_made(events: &[Value]) -> HashMap<&str, usize> {
    let mut values: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let made = |e: &&Value| e["type"] == "patched" && e["attempts"] != 0;
    for event in events.iter().filter(made) {
        if let (Some(id), Some(value)) =
            (event["delivery"].as_str(), event["requested_at"].as_str())
        {
            values.entry(id).or_default().insert(value);
        }
    }
    values.into_iter().map(|(id, v)| (id, v.len())).collect()
}

/// Starts the cluster and the stack, sends the steady load, lets it reach [`STEP`] 2xx answers,
/// runs `fault`, then stops the load, prints what senders saw and checks that every accepted
/// delivery was patched once. What `fault` returns, and the answers, are the caller's.
async fn under_load<T>(
    fault: &str,
    act: impl AsyncFnOnce(&NatsNodes, &mut Load) -> T,
) -> (T, Vec<Answer>) {
    let (nodes, stack) = start().await;
    let mut load = Load::start(stack.hook_url(TOKEN, "gh", NS));
    load.accepts(STEP).await;
    let acted = act(&nodes, &mut load).await;
    let (answers, accepted) = load.finish().await;
    report(fault, &answers);
    each_patched_once(&stack, &accepted).await;
    (acted, answers)
}

async fn deliveries_leader(nodes: &NatsNodes) -> &Node {
    nodes.stream_leader(contract::DELIVERIES_STREAM).await
}

#[tokio::test]
async fn the_stream_leaders_node_killed_then_back_loses_nothing() {
    under_load("stream leader killed", async |nodes, load| {
        let leader = deliveries_leader(nodes).await;
        let killed = Instant::now();
        leader.kill().await;
        load.accepts(STEP).await;
        eprintln!("2xx again {:?} after the kill", killed.elapsed());
        leader.start().await;
        load.accepts(STEP).await;
    })
    .await;
}

#[tokio::test]
async fn without_quorum_ingest_answers_503_with_retry_after_never_2xx() {
    let ((lost, restoring), answers) = under_load("no quorum", async |nodes, load| {
        nodes.nodes[1].kill().await;
        nodes.nodes[2].kill().await;
        let lost = Instant::now();
        // One more than needed: the request under way at `lost` was sent before it.
        load.refusals(STEP + 1).await;
        let restoring = Instant::now();
        nodes.nodes[1].start().await;
        nodes.nodes[2].start().await;
        load.accepts(STEP).await;
        (lost, restoring)
    })
    .await;
    let without_quorum: Vec<&Answer> = (answers.iter())
        .filter(|a| a.sent >= lost && a.at <= restoring)
        .collect();
    assert!(without_quorum.len() >= STEP);
    for answer in &without_quorum {
        assert_eq!(answer.status, Ok(503), "without quorum");
        assert!(answer.retry_after, "a 503 without Retry-After");
    }
    let first_2xx = (answers.iter())
        .find(|a| a.sent >= restoring && a.status.as_ref().is_ok_and(is_2xx))
        .expect("2xx again");
    eprintln!(
        "without quorum: all {} webhooks answered 503 with Retry-After; 2xx again {:?} after the nodes were restarted",
        without_quorum.len(),
        first_2xx.at - restoring
    );
}

#[tokio::test]
async fn a_node_paused_past_the_election_timeout_loses_nothing() {
    under_load("stream leader paused", async |nodes, load| {
        let leader = deliveries_leader(nodes).await;
        let paused = Instant::now();
        leader.pause().await;
        // Cut off from its peers until they elect another leader, and then for a while more.
        let successor = nodes
            .stream_leader_other_than(contract::DELIVERIES_STREAM, Some(leader))
            .await;
        eprintln!(
            "{} leads the deliveries after {:?}",
            successor.name,
            paused.elapsed()
        );
        load.accepts(STEP).await;
        leader.unpause().await;
        leader.wait_healthy().await;
        load.accepts(STEP).await;
    })
    .await;
}

#[tokio::test]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    under_load("rolling restart", async |nodes, load| {
        for node in &nodes.nodes {
            let stopped = Instant::now();
            node.restart().await;
            eprintln!("{} restarted in {:?}", node.name, stopped.elapsed());
            load.accepts(STEP).await;
        }
    })
    .await;
}

#[tokio::test]
async fn ingests_own_node_killed_loses_nothing() {
    under_load("ingest's node killed", async |nodes, load| {
        let own = nodes.serving("fluxgate-ingest").await;
        let killed = Instant::now();
        own.kill().await;
        load.accepts(STEP).await;
        eprintln!(
            "2xx again {:?} after ingest's node was killed",
            killed.elapsed()
        );
        own.start().await;
        load.accepts(STEP).await;
    })
    .await;
}
