//! End-to-end tests of the `fluxgate` CLI: real webhooks through ingest and the dispatcher into
//! a real nats-server, then the CLI binary reading the history back.

use std::time::Duration;

use fluxgate_shared::contract::{self, DeliveryMeta, IdSource, IndexEntry};
use fluxgate_tests::eventually;
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{
    github_push_body, hook_path, post_github_push, receiver_manifest, secret_manifest,
};
use fluxgate_tests::{fluxgate_cli, http};
use serde_json::{Value, json};

const NS: &str = "flux-system";
const GH_TOKEN: &str = "gh-secret";
const DEADLINE: Duration = Duration::from_secs(60);

/// NATS, the stand-in with the `app` repository, and ingest and a dispatcher (with extra
/// flags) serving a GitHub receiver and one whose target's namespace does not exist.
async fn start_with(dispatcher_args: &[&str]) -> Stack {
    let manifests = [
        secret_manifest("gh-token", NS, GH_TOKEN),
        receiver_manifest("gh", NS, "github", "gh-token", ""),
        secret_manifest("plain", NS, "plain-token"),
        // Targets GitRepository `app` in its own namespace `elsewhere`, which does not exist.
        receiver_manifest("missing", "elsewhere", "generic", "plain", ""),
        secret_manifest("plain", "elsewhere", "plain-token"),
    ];
    let mut args = vec!["--leader-election", "false"];
    if !dispatcher_args.contains(&"--coalesce-window") {
        args.extend(["--coalesce-window", "20ms"]);
    }
    args.extend_from_slice(dispatcher_args);
    Stack::builder()
        .cluster([json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "app", "namespace": NS},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        })])
        .receivers(manifests.join("---\n"))
        .ingest(&[])
        .dispatcher(&args)
        .start()
        .await
}

async fn start() -> Stack {
    start_with(&[]).await
}

async fn push(s: &Stack, delivery: &str, body: Vec<u8>) {
    let url = s.hook_url(GH_TOKEN, "gh", NS);
    let response = post_github_push(&url, GH_TOKEN, delivery, body).await;
    assert_eq!(response.status, 202, "{:?}", response.body);
}

async fn trigger_missing(s: &Stack) -> String {
    let url = s.hook_url("plain-token", "missing", "elsewhere");
    let response = http::post(&url, &[], "").await.expect("post");
    assert_eq!(response.status, 202);
    response.json()["delivery"].as_str().expect("id").to_owned()
}

/// Waits until `count` deliveries have a final outcome (patched or failed).
async fn settle(s: &Stack, count: usize) -> Vec<Value> {
    s.outcomes_until("final outcomes", |events| {
        events
            .iter()
            .filter(|e| e["type"] == "patched" || e["type"] == "failed")
            .count()
            >= count
    })
    .await
}

fn cli(s: &Stack, args: &[&str]) -> String {
    let kubeconfig = s.kubeconfig().display().to_string();
    let (ok, stdout, stderr) =
        fluxgate_cli(s.nats_url(), args, &[("KUBECONFIG", kubeconfig.as_str())]);
    assert!(ok, "fluxgate {args:?} failed: {stderr}");
    stdout
}

fn cli_json(s: &Stack, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let stdout = cli(s, &all);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn ids_of(rows: &Value) -> Vec<&str> {
    rows.as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect()
}

#[tokio::test]
async fn deliveries_list_filters_and_shows_status() {
    let s = start().await;
    for id in ["d-1", "d-2", "d-3"] {
        push(&s, id, github_push_body(300)).await;
    }
    let missing = trigger_missing(&s).await;
    settle(&s, 4).await;

    let all = cli_json(&s, &["deliveries", "list"]);
    assert_eq!(
        ids_of(&all),
        [missing.as_str(), "d-3", "d-2", "d-1"],
        "newest first"
    );
    let newest_push = &all[1];
    assert_eq!(newest_push["receiver"], "flux-system/gh");
    assert_eq!(newest_push["receiver_type"], "github");
    assert_eq!(newest_push["event"], "push");
    assert_eq!(newest_push["seq"], 3);
    assert_eq!(newest_push["status"], "patched");
    assert_eq!(newest_push["targets"], 1);
    assert!(newest_push["latency_ms"].as_i64().is_some_and(|ms| ms >= 0));
    assert!(
        newest_push.get("outcomes").is_none(),
        "the list leaves out the trail"
    );
    assert_eq!(all[0]["status"], "failed");

    let failed = cli_json(&s, &["deliveries", "list", "--status", "failed"]);
    assert_eq!(ids_of(&failed), [missing.as_str()]);
    let two = cli_json(
        &s,
        &[
            "deliveries",
            "list",
            "--receiver",
            "flux-system/gh",
            "--limit",
            "2",
        ],
    );
    assert_eq!(ids_of(&two), ["d-3", "d-2"]);
    let pushes = cli_json(
        &s,
        &["deliveries", "list", "--event", "PUSH", "--since", "1h"],
    );
    assert_eq!(ids_of(&pushes), ["d-3", "d-2", "d-1"]);
    let none = cli_json(&s, &["deliveries", "list", "--until", "1h"]);
    assert_eq!(ids_of(&none), Vec::<&str>::new());

    let table = cli(&s, &["deliveries", "list"]);
    let header = table.lines().next().expect("header");
    assert!(
        header.starts_with("TIME") && header.contains("STATUS"),
        "{table}"
    );
    assert!(
        !table.contains('\u{1b}'),
        "no colour when stdout is not a terminal"
    );
    assert_eq!(table.lines().count(), 5);
}

#[tokio::test]
async fn deliveries_show_gives_headers_body_and_timeline() {
    let s = start().await;
    let body = github_push_body(400);
    push(&s, "d-1", body.clone()).await;
    settle(&s, 1).await;

    let shown = cli_json(&s, &["deliveries", "show", "d-1"]);
    assert_eq!(shown["id"], "d-1");
    assert_eq!(shown["status"], "patched");
    assert_eq!(shown["headers"]["x-github-event"], "push");
    assert!(shown["headers"].get("authorization").is_none());
    let sent: Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(shown["body"], sent);
    let types: Vec<&str> = shown["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types, ["dispatched", "patched"]);

    let (ok, raw, _) = fluxgate_cli(s.nats_url(), &["deliveries", "show", "#1", "--raw"], &[]);
    assert!(ok);
    assert_eq!(
        raw.as_bytes(),
        body.as_slice(),
        "--raw prints the body byte for byte"
    );
    let file = s.dir().join("body.json");
    cli(
        &s,
        &[
            "deliveries",
            "show",
            "d-1",
            "--output-file",
            file.to_str().expect("path"),
        ],
    );
    assert_eq!(std::fs::read(&file).expect("written"), body);

    let traceparent = shown["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    let trace_id = traceparent.split('-').nth(1).expect("a trace id");
    assert_eq!(shown["trace_id"], trace_id);
    let template = "https://jaeger.example/trace/{trace_id}";
    let linked = cli_json(&s, &["deliveries", "show", "d-1", "--trace-url", template]);
    let link = format!("https://jaeger.example/trace/{trace_id}");
    assert_eq!(linked["trace_url"], link.as_str());

    let page = cli(&s, &["deliveries", "show", "d-1", "--trace-url", template]);
    assert!(
        page.contains("Delivery d-1 (#1)") && page.contains("Timeline:"),
        "{page}"
    );
    assert!(
        page.contains(&format!("Trace:     {trace_id}  {link}")),
        "{page}"
    );
    assert!(
        page.contains("patched GitRepository flux-system/app"),
        "{page}"
    );

    let (ok, _, error) = fluxgate_cli(s.nats_url(), &["deliveries", "show", "nope"], &[]);
    assert!(!ok);
    assert!(error.contains("no delivery \"nope\""), "{error}");
}

#[tokio::test]
async fn deliveries_sharing_one_stored_event_each_show_it() {
    // A window that holds the whole burst: one patch, its event one message for all four.
    let s = start_with(&["--coalesce-window", "500ms"]).await;
    let ids = ["b-1", "b-2", "b-3", "b-4"];
    futures::future::join_all(ids.map(|id| push(&s, id, github_push_body(300)))).await;
    settle(&s, 4).await;

    let all = cli_json(&s, &["deliveries", "list"]);
    let statuses: Vec<&str> = (all.as_array().expect("rows").iter())
        .filter_map(|row| row["status"].as_str())
        .collect();
    assert_eq!(statuses, ["patched"; 4], "{all}");
    let listed = cli_json(&s, &["deliveries", "list", "--status", "patched"]);
    assert_eq!(ids_of(&listed).len(), 4, "{listed}");
    for id in ids {
        let shown = cli_json(&s, &["deliveries", "show", id]);
        let patched: Vec<&Value> = (shown["outcomes"].as_array().expect("outcomes").iter())
            .filter(|e| e["type"] == "patched")
            .collect();
        assert_eq!(patched.len(), 1, "{id}: {shown}");
        assert_eq!(patched[0]["delivery"], id);
        assert_eq!(patched[0]["size"], 4);
    }
}

#[tokio::test]
async fn receivers_list_gives_urls_and_whether_served() {
    let s = start().await;
    let file = s.receivers_file().to_str().expect("path");
    let rows = cli_json(
        &s,
        &[
            "receivers",
            "list",
            "--receivers-file",
            file,
            "--base-url",
            "https://hooks.example.org/",
        ],
    );
    let gh = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["receiver"] == "flux-system/gh")
        .expect("gh");
    assert_eq!(gh["type"], "github");
    assert_eq!(gh["served"], true);
    assert_eq!(gh["targets"], json!(["GitRepository flux-system/app"]));
    assert_eq!(
        gh["url"],
        format!("https://hooks.example.org{}", hook_path(GH_TOKEN, "gh", NS))
    );
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_failed_delivery_replayed_after_its_target_exists_is_patched() {
    let s = start().await;
    let missing = trigger_missing(&s).await;
    settle(&s, 1).await;
    assert_eq!(cli_json(&s, &["deliveries", "list"])[0]["status"], "failed");

    s.api().apply(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "app", "namespace": "elsewhere"},
        "spec": {"url": "https://example.org/repo", "interval": "10m"},
    }));
    let replayed = cli_json(&s, &["replay", &missing, "--actor", "oncall"]);
    assert_eq!(replayed[0]["seq"], 1);
    assert_eq!(replayed[0]["replay_seq"], 2);

    let events = s
        .outcomes_until("the outcomes", |e| {
            e.iter().any(|e| e["type"] == "patched" && e["seq"] == 2)
        })
        .await;
    let replayed_event = events
        .iter()
        .find(|e| e["type"] == "replayed")
        .expect("recorded");
    assert_eq!(
        (
            &replayed_event["seq"],
            &replayed_event["replay_seq"],
            &replayed_event["actor"]
        ),
        (&json!(1), &json!(2), &json!("oncall"))
    );
    let rows = cli_json(&s, &["deliveries", "list"]);
    assert_eq!(rows[0]["seq"], 2);
    assert_eq!(rows[0]["replay_of"], 1);
    assert_eq!(
        rows[0]["id"],
        missing.as_str(),
        "a replay is the same delivery again"
    );
    assert_eq!(rows[0]["status"], "patched");
    assert_eq!(
        rows[1]["status"], "failed",
        "the original keeps its own trail"
    );
    let original = cli_json(&s, &["deliveries", "show", "#1"]);
    let types: Vec<&str> = original["outcomes"]
        .as_array()
        .expect("trail")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(types, ["dispatched", "failed", "replayed"]);
}

#[tokio::test]
async fn a_replay_bypasses_deduplication_and_a_dry_run_changes_nothing() {
    let s = start().await;
    push(&s, "d-1", github_push_body(200)).await;
    settle(&s, 1).await;

    let stored = s.stored().await;
    let file = s.receivers_file().to_str().expect("path");
    let plan = cli_json(
        &s,
        &["replay", "d-1", "--dry-run", "--receivers-file", file],
    );
    assert_eq!(plan[0]["delivery"], "d-1");
    assert_eq!(
        plan[0]["targets"],
        json!([{"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "namespace": NS, "name": "app"}])
    );
    assert_eq!(s.stored().await, stored, "a dry run publishes nothing");
    let events = s.outcomes().await;
    assert!(
        events.iter().all(|e| e["type"] != "replayed"),
        "and records nothing"
    );

    cli(&s, &["replay", "d-1"]);
    let events = s
        .outcomes_until("the outcomes", |e| {
            e.iter().filter(|e| e["type"] == "patched").count() == 2
        })
        .await;
    assert!(
        events.iter().all(|e| e["type"] != "duplicate"),
        "{events:#?}"
    );
    // The replay carries the original's kept request headers, in its metadata.
    let replay = cli_json(&s, &["deliveries", "show", &format!("#{}", stored + 1)]);
    assert_eq!(replay["metadata"]["replay_of"], 1, "{replay}");
    assert_eq!(replay["headers"]["x-github-event"], "push", "{replay}");
    assert_eq!(replay["headers"]["x-github-delivery"], "d-1", "{replay}");
}

/// A delivery stored by an earlier ingest -- a header per value, the kept request headers as
/// headers -- is dispatched, shown and replayed; the replay is written in today's form: three
/// headers, the kept ones inside the metadata, once.
#[tokio::test]
async fn a_delivery_in_the_earlier_header_form_is_dispatched_shown_and_replayed() {
    let s = start().await;
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("Nats-Msg-Id", "flux-system/gh/earlier-1"),
        ("Fluxgate-Delivery-Id", "earlier-1"),
        ("Fluxgate-Delivery-Id-Source", "sender"),
        ("Fluxgate-Receiver-Namespace", NS),
        ("Fluxgate-Receiver-Name", "gh"),
        ("Fluxgate-Receiver-Type", "github"),
        ("Fluxgate-Event", "push"),
        ("X-GitHub-Event", "push"),
    ] {
        headers.insert(name, value);
    }
    let jetstream = async_nats::jetstream::new(s.client().await);
    let subject = fluxgate_shared::contract::delivery_subject(NS, "gh");
    let ack = (jetstream.publish_with_headers(subject, headers, "{}".into()))
        .await
        .expect("publish")
        .await
        .expect("stored");
    settle(&s, 1).await;
    let shown = cli_json(&s, &["deliveries", "show", &format!("#{}", ack.sequence)]);
    assert_eq!(shown["status"], "patched", "{shown}");
    assert_eq!(shown["metadata"]["event"], "push", "{shown}");
    assert_eq!(shown["headers"]["x-github-event"], "push", "{shown}");

    cli(&s, &["replay", &format!("#{}", ack.sequence)]);
    let replay = (s.deliveries().await)
        .get_raw_message(ack.sequence + 1)
        .await
        .expect("the replay");
    let mut names: Vec<String> = replay.headers.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(names, ["Fluxgate-Delivery", "Nats-Msg-Id", "traceparent"]);
    let meta = DeliveryMeta::read(&replay.subject, Some(&replay.headers)).expect("a delivery");
    assert_eq!(
        (meta.id.as_str(), meta.replay_of),
        ("earlier-1", Some(ack.sequence))
    );
    assert_eq!(
        meta.request_headers
            .get("x-github-event")
            .map(String::as_str),
        Some("push")
    );
}

#[tokio::test]
async fn replaying_by_filter_asks_before_many_and_paces() {
    let s = start().await;
    for id in ["d-1", "d-2", "d-3"] {
        push(&s, id, github_push_body(200)).await;
    }
    settle(&s, 3).await;
    let by_receiver = [
        "replay",
        "--receiver",
        "flux-system/gh",
        "--confirm-above",
        "2",
    ];
    let (ok, _, error) = fluxgate_cli(s.nats_url(), &by_receiver, &[]);
    assert!(!ok, "no terminal to ask on, no --yes: nothing happens");
    assert!(
        error.contains("would replay 3 deliveries") && error.contains("--yes"),
        "{error}"
    );
    assert_eq!(s.stored().await, 3);

    let mut with_yes = by_receiver.to_vec();
    with_yes.extend(["--yes", "--rate", "50"]);
    let replayed = cli_json(&s, &with_yes);
    let originals: Vec<u64> = replayed
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(originals, [1, 2, 3], "oldest first");
    assert_eq!(s.stored().await, 6);
    // The receiver's listing reads its deliveries' subject and its replays' subject.
    let listed = cli_json(&s, &["deliveries", "list", "--receiver", "flux-system/gh"]);
    let seqs: Vec<u64> = (listed.as_array().expect("rows").iter())
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        [6, 5, 4, 3, 2, 1],
        "replays listed with the originals"
    );
    let (ok, _, error) = fluxgate_cli(s.nats_url(), &["replay"], &[]);
    assert!(!ok && error.contains("--receiver"), "{error}");
}

#[tokio::test]
async fn tail_follows_deliveries_and_outcomes_live() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let s = start().await;
    let mut child = Command::new(fluxgate_tests::workspace_binary("fluxgate"))
        .env("NATS_URL", s.nats_url())
        .args(["-o", "json", "tail", "--receiver", "flux-system/gh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    // The consumers exist once it says it is following.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read stderr");
    assert!(line.contains("following"), "{line}");

    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    push(&s, "live-1", github_push_body(200)).await;
    trigger_missing(&s).await; // another receiver: not followed

    // Deliveries and outcomes come from two streams, each in order; between them, in the order
    // they arrive, so the dispatcher's first outcome may be printed before the delivery line.
    let mut seen: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let done = |seen: &[Value]| {
        seen.iter().any(|v| v["kind"] == "delivery")
            && seen.iter().any(|v| v["outcome"]["type"] == "patched")
    };
    while !done(&seen) {
        let line = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .expect("tail printed the delivery and the patch in time")
            .expect("tail is running");
        seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    child.kill().expect("stop tail");
    let _ = child.wait();
    let deliveries: Vec<&Value> = seen.iter().filter(|v| v["kind"] == "delivery").collect();
    assert_eq!(deliveries.len(), 1, "{seen:#?}");
    assert_eq!(deliveries[0]["delivery"]["id"], "live-1");
    assert_eq!(deliveries[0]["delivery"]["receiver"], "flux-system/gh");
    let kinds: Vec<&str> = seen
        .iter()
        .filter_map(|v| v["outcome"]["type"].as_str())
        .collect();
    assert_eq!(kinds, ["dispatched", "patched"]);
    assert!(
        seen.iter()
            .all(|v| v["delivery"]["receiver"] != "elsewhere/missing"
                && v["outcome"]["receiver"] != "elsewhere/missing")
    );
}

#[tokio::test]
async fn a_patch_is_confirmed_handled_when_flux_reconciles_it() {
    let s = start().await;
    s.api().play_flux_controllers(Duration::from_millis(50));
    push(&s, "d-1", github_push_body(200)).await;
    let events = s
        .outcomes_until("the outcomes", |e| e.iter().any(|e| e["type"] == "handled"))
        .await;
    let patched = events
        .iter()
        .find(|e| e["type"] == "patched")
        .expect("patched");
    let handled = events
        .iter()
        .find(|e| e["type"] == "handled")
        .expect("handled");
    assert_eq!(handled["handled_at"], patched["requested_at"]);
    assert_eq!(handled["target"], patched["target"]);
    assert!(
        handled["latency_ms"].as_i64().is_some_and(|ms| ms >= 50),
        "{handled}"
    );
    assert_eq!(
        cli_json(&s, &["deliveries", "list"])[0]["status"],
        "handled"
    );
    let metrics = http::get(&s.dispatcher().admin_url("/metrics"))
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("fluxgate_dispatcher_webhook_to_handled_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_suspended_target_is_recorded_not_handled() {
    let s = start_with(&["--confirm-timeout", "500ms"]).await;
    s.api().play_flux_controllers(Duration::from_millis(10));
    s.api().apply(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "app", "namespace": NS},
        "spec": {"url": "https://example.org/repo", "interval": "10m", "suspend": true},
    }));
    push(&s, "d-1", github_push_body(200)).await;
    let events = s
        .outcomes_until("the outcomes", |e| {
            e.iter().any(|e| e["type"] == "not_handled")
        })
        .await;
    let not_handled = events
        .iter()
        .find(|e| e["type"] == "not_handled")
        .expect("recorded");
    let reason = not_handled["reason"].as_str().expect("reason");
    assert!(
        reason.contains("lastHandledReconcileAt") && reason.contains("suspended"),
        "{reason}"
    );
    assert!(events.iter().all(|e| e["type"] != "handled"));
    let listed = cli_json(&s, &["deliveries", "list"]);
    assert_eq!(
        listed[0]["status"], "not_handled",
        "{listed:#?} {events:#?}"
    );
}

#[tokio::test]
async fn an_aged_out_delivery_is_reported_as_such() {
    let manifests = [
        secret_manifest("gh-token", NS, GH_TOKEN),
        receiver_manifest("gh", NS, "github", "gh-token", ""),
    ];
    let s = Stack::builder()
        .receivers(manifests.join("---\n"))
        .ingest(&["--stream-max-age", "1s", "--stream-duplicate-window", "1s"])
        .start()
        .await;
    let url = s.hook_url(GH_TOKEN, "gh", NS);
    assert_eq!(
        post_github_push(&url, GH_TOKEN, "old-1", github_push_body(100))
            .await
            .status,
        202
    );

    let (ok, shown, _) = fluxgate_cli(
        s.nats_url(),
        &["-o", "json", "deliveries", "show", "#1"],
        &[],
    );
    assert!(ok, "there while it is kept: {shown}");
    // JetStream removes it once older than the stream's max age.
    eventually("the delivery aged out", || async {
        match s.stored().await {
            0 => Ok(()),
            kept => Err(kept),
        }
    })
    .await;
    // A newer delivery, so that the stream's first sequence is past the old one.
    assert_eq!(
        post_github_push(&url, GH_TOKEN, "new-1", github_push_body(100))
            .await
            .status,
        202
    );
    let (ok, _, error) = fluxgate_cli(s.nats_url(), &["deliveries", "show", "#1"], &[]);
    assert!(!ok);
    assert!(
        error.contains("delivery #1 has aged out of FLUXGATE_DELIVERIES"),
        "{error}"
    );
    let (ok, _, error) = fluxgate_cli(s.nats_url(), &["deliveries", "show", "old-1"], &[]);
    assert!(!ok);
    assert!(error.contains("aged out"), "{error}");
}

/// A delivery whose id, event and body hold escape sequences -- one a hostile publisher put on
/// the stream, since ingest refuses such ids -- is printed with them escaped: nothing that
/// would retitle, recolour or clear the operator's terminal.
#[tokio::test]
async fn cli_output_shows_control_characters_escaped() {
    let manifests = [
        secret_manifest("gh-token", NS, GH_TOKEN),
        receiver_manifest("gh", NS, "github", "gh-token", ""),
    ];
    let s = Stack::builder()
        .receivers(manifests.join("---\n"))
        .ingest(&[])
        .start()
        .await;
    let meta = DeliveryMeta {
        id: "\u{1b}]0;pwned\u{7}\u{1b}[31mred".into(),
        id_source: IdSource::Sender,
        namespace: NS.into(),
        receiver: "gh".into(),
        receiver_type: "github".into(),
        event: Some("push\u{1b}[2J".into()),
        ..Default::default()
    };
    async_nats::jetstream::new(s.client().await)
        .publish_with_headers(
            meta.subject(),
            meta.to_headers(),
            "\u{1b}[2Jplain text".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");

    for args in [
        &["deliveries", "list"][..],
        &["deliveries", "show", "#1"][..],
    ] {
        let (ok, stdout, stderr) = fluxgate_cli(s.nats_url(), args, &[]);
        assert!(ok, "{args:?}: {stderr}");
        assert!(
            !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
            "{args:?}: {stdout:?}"
        );
        assert!(
            stdout.contains(r"\u{1b}]0;pwned\u{7}\u{1b}[31mred"),
            "{args:?}: {stdout}"
        );
        assert!(stdout.contains(r"push\u{1b}[2J"), "{args:?}: {stdout}");
    }
    let (_, shown, _) = fluxgate_cli(s.nats_url(), &["deliveries", "show", "#1"], &[]);
    assert!(shown.contains(r"\u{1b}[2Jplain text"), "{shown}");
}

#[test]
fn receivers_list_warns_of_a_receiver_anyone_can_trigger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("receivers.yaml");
    let manifests = [
        secret_manifest("gh-token", NS, GH_TOKEN),
        receiver_manifest("gh", NS, "github", "gh-token", ""),
        secret_manifest("empty", NS, ""),
        receiver_manifest("open", NS, "generic", "empty", ""),
    ];
    std::fs::write(&file, manifests.join("---\n")).expect("write");
    let file = file.display().to_string();
    let args = ["receivers", "list", "--receivers-file", file.as_str()];
    let (ok, table, stderr) = fluxgate_cli("nats://127.0.0.1:1", &args, &[]);
    assert!(ok, "{stderr}");
    let open = table
        .lines()
        .find(|l| l.starts_with("flux-system/open"))
        .expect("the open receiver's row");
    assert!(
        open.contains("yes, but anyone can trigger it (empty token"),
        "{table}"
    );
    let gh = table
        .lines()
        .find(|l| l.starts_with("flux-system/gh"))
        .expect("gh's row");
    assert!(gh.trim_end().ends_with("yes"), "{table}");

    let mut json_args = vec!["-o", "json"];
    json_args.extend(args);
    let (ok, json, _) = fluxgate_cli("nats://127.0.0.1:1", &json_args, &[]);
    assert!(ok);
    let rows: Value = serde_json::from_str(&json).expect("JSON");
    let warnings: Vec<(&str, bool)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["receiver"].as_str().unwrap_or_default(),
                r["warning"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        warnings,
        [("flux-system/gh", false), ("flux-system/open", true)]
    );
}

#[tokio::test]
async fn show_by_id_gives_the_original_with_its_replays_listed() {
    let s = start().await;
    push(&s, "d-1", github_push_body(200)).await;
    push(&s, "d-2", github_push_body(200)).await;
    settle(&s, 2).await;
    cli(&s, &["replay", "d-1"]);
    cli(&s, &["replay", "d-1"]);

    let shown = cli_json(&s, &["deliveries", "show", "d-1"]);
    assert_eq!(shown["seq"], 1, "the original: {shown}");
    assert!(shown.get("replay_of").is_none());
    let replays: Vec<(u64, u64)> = (shown["replays"].as_array().into_iter())
        .flatten()
        .filter_map(|r| Some((r["seq"].as_u64()?, r["replay_of"].as_u64()?)))
        .collect();
    assert_eq!(replays, [(3, 1), (4, 1)]);
    let recorded = (shown["outcomes"].as_array().into_iter())
        .flatten()
        .filter(|o| o["type"] == "replayed")
        .count();
    assert_eq!(
        recorded, 2,
        "the original's timeline shows both replays: {shown}"
    );

    let page = cli(&s, &["deliveries", "show", "d-1"]);
    assert!(page.starts_with("Delivery d-1 (#1)"), "{page}");
    assert!(
        page.contains("Replays:\n  #3  ") && page.contains("replay of #1 by"),
        "{page}"
    );
    assert_eq!(
        cli_json(&s, &["deliveries", "show", "d-2"])["replays"],
        json!([])
    );
}

/// The delivery index's entries, in the order stored.
async fn index_entries(s: &Stack) -> Vec<IndexEntry> {
    let jetstream = async_nats::jetstream::new(s.client().await);
    let Ok(mut index) = jetstream.get_stream(contract::INDEX_STREAM).await else {
        return Vec::new();
    };
    let last = index
        .info()
        .await
        .map_or(0, |info| info.state.last_sequence);
    let mut entries = Vec::new();
    for seq in 1..=last {
        if let Ok(message) = index.get_raw_message(seq).await {
            entries.push(serde_json::from_slice(&message.payload).expect("an entry"));
        }
    }
    entries
}

/// The dispatcher indexes each delivery as it reads it first, in the order stored, and each
/// replay with the sequence it replays.
#[tokio::test]
async fn the_dispatcher_indexes_deliveries_in_the_order_stored_replays_too() {
    let s = start().await;
    for id in ["i-1", "i-2", "i-3"] {
        push(&s, id, github_push_body(200)).await;
    }
    settle(&s, 1).await;
    cli(&s, &["replay", "i-2"]);
    let entries = eventually("four index entries", || async {
        let entries = index_entries(&s).await;
        (entries.len() >= 4).then_some(entries).ok_or(())
    })
    .await;
    let indexed: Vec<(&str, u64, Option<u64>)> = (entries.iter())
        .map(|e| (e.id.as_str(), e.seq, e.replay_of))
        .collect();
    assert_eq!(
        indexed,
        [
            ("i-1", 1, None),
            ("i-2", 2, None),
            ("i-3", 3, None),
            ("i-2", 4, Some(2))
        ]
    );
    assert!(entries.iter().all(|e| e.receiver == format!("{NS}/gh")));
}

/// The index answers for every id up to its newest entry: an id whose entry is gone is not
/// looked for in the headers there (and is found by `#<seq>`). What the dispatcher has not
/// read yet is found by the headers of the deliveries after the newest entry.
#[tokio::test]
async fn the_index_answers_up_to_its_newest_entry_and_headers_after_it() {
    let mut s = start().await;
    push(&s, "d-1", github_push_body(200)).await;
    settle(&s, 1).await;
    eventually("d-1 indexed", || async {
        (index_entries(&s).await.len() == 1).then_some(()).ok_or(())
    })
    .await;
    let jetstream = async_nats::jetstream::new(s.client().await);
    let index = jetstream
        .get_stream(contract::INDEX_STREAM)
        .await
        .expect("index");
    index
        .purge()
        .filter(contract::index_subject("d-1"))
        .await
        .expect("d-1's entry dropped");
    push(&s, "d-2", github_push_body(200)).await;
    eventually("d-2 indexed", || async {
        let entries = index_entries(&s).await;
        entries
            .iter()
            .any(|e| e.id == "d-2")
            .then_some(())
            .ok_or(entries)
    })
    .await;
    assert_eq!(cli_json(&s, &["deliveries", "show", "d-2"])["seq"], 2);
    let (ok, _, error) = fluxgate_cli(s.nats_url(), &["deliveries", "show", "d-1"], &[]);
    assert!(!ok && error.contains("no delivery \"d-1\""), "{error}");
    assert_eq!(cli_json(&s, &["deliveries", "show", "#1"])["id"], "d-1");

    assert!(
        s.dispatcher_mut().service.terminate().await,
        "the dispatcher stops"
    );
    push(&s, "d-3", github_push_body(200)).await;
    assert!(!index_entries(&s).await.iter().any(|e| e.id == "d-3"));
    assert_eq!(cli_json(&s, &["deliveries", "show", "d-3"])["seq"], 3);
}

#[tokio::test]
async fn a_stream_older_than_its_index_is_searched_by_its_headers() {
    let s = start().await;
    // Stored before any index existed (an older ingest): the index is dropped, as if never made.
    push(&s, "before", github_push_body(200)).await;
    settle(&s, 1).await;
    let jetstream = async_nats::jetstream::new(s.client().await);
    jetstream
        .delete_stream(fluxgate_shared::contract::INDEX_STREAM)
        .await
        .expect("delete the index");
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: fluxgate_shared::contract::INDEX_STREAM.into(),
            subjects: vec!["fluxgate.index.*".into()],
            ..Default::default()
        })
        .await
        .expect("a newer index");
    push(&s, "after", github_push_body(200)).await;
    assert_eq!(cli_json(&s, &["deliveries", "show", "before"])["seq"], 1);
    assert_eq!(cli_json(&s, &["deliveries", "show", "after"])["seq"], 2);
}

#[tokio::test]
async fn since_keeps_what_came_after_whether_limit_or_since_ends_the_read() {
    let s = start().await;
    push(&s, "before-1", github_push_body(100)).await;
    push(&s, "before-2", github_push_body(100)).await;
    let since = chrono::Utc::now().to_rfc3339();
    // More than the first window (64) after `since`: the newest two are found without reading
    // back to it, and all 70 by reading from it.
    for n in 0..70 {
        push(&s, &format!("after-{n}"), github_push_body(100)).await;
    }
    let newest = cli_json(
        &s,
        &["deliveries", "list", "--since", &since, "--limit", "2"],
    );
    assert_eq!(ids_of(&newest), ["after-69", "after-68"]);
    let all = cli_json(
        &s,
        &["deliveries", "list", "--since", &since, "--limit", "100"],
    );
    let listed = ids_of(&all);
    assert_eq!(listed.len(), 70, "{listed:?}");
    assert!(
        listed.iter().all(|id| id.starts_with("after-")),
        "{listed:?}"
    );
}
