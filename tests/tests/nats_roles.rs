//! The NATS account of `deploy/nats/fluxgate-account.conf` -- the one the README gives -- on a
//! server with mutual TLS: each binary works with its own user, and what a role may not do is
//! denied by the server (its own words, in its log and to the client) or, for a replay forged on
//! a delivery subject, ignored by the dispatcher.

use std::collections::BTreeSet;

use async_nats::jetstream;
use async_nats::{Event, HeaderMap, ServerError};
use fluxgate_shared::contract::{self, DeliveryMeta};
use fluxgate_tests::stack::Stack;
use fluxgate_tests::tls::Pki;
use fluxgate_tests::webhook::{
    github_push_body, post_github_push, receiver_manifest, secret_manifest,
};
use fluxgate_tests::{eventually, fluxgate_cli, repository_root};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NS: &str = "flux-system";
const GH_TOKEN: &str = "gh-secret";
/// Bodies above this go to the object store, which every role then uses.
const MAX_PAYLOAD: usize = 64 * 1024;

/// The users of the account and the variable each one's password is read from.
const USERS: [(&str, &str); 4] = [
    ("fluxgate-ingest", "FLUXGATE_INGEST_PASSWORD"),
    ("fluxgate-dispatcher", "FLUXGATE_DISPATCHER_PASSWORD"),
    ("fluxgate-viewer", "FLUXGATE_VIEWER_PASSWORD"),
    ("fluxgate-replayer", "FLUXGATE_REPLAYER_PASSWORD"),
];

fn password(user: &str) -> String {
    format!("{user}-pw")
}

/// A connection as `user`, with the client certificate and the inbox its binary uses, and the
/// permission violations the server reports to it.
async fn connect_as(
    stack: &Stack,
    pki: &Pki,
    user: &str,
    inbox: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = pki
        .client_options()
        .user_and_password(user.into(), password(user))
        .custom_inbox_prefix(inbox)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(ServerError::Other(text)) = event {
                    let _ = tx.send(text);
                }
            }
        })
        .connect(stack.nats_url())
        .await
        .expect("connect");
    (client, rx)
}

/// Waits for the server to deny `subject` to this connection.
async fn denied(violations: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    loop {
        let text = violations.recv().await.expect("the connection is open");
        if text.contains(&format!(
            "Permissions Violation for {what} to \"{subject}\""
        )) {
            return;
        }
    }
}

/// `flags` for a binary connecting as `user` with the client certificate.
fn flags(pki: &Pki, dir: &std::path::Path, user: &str) -> Vec<String> {
    let file = dir.join(user);
    std::fs::write(&file, password(user)).expect("write a password file");
    let mut args = pki.client_args();
    args.extend(["--nats-user".into(), user.into()]);
    args.extend(["--nats-password-file".into(), file.display().to_string()]);
    args
}

fn cli_as(stack: &Stack, pki: &Pki, user: &str, args: &[&str]) -> (bool, String, String) {
    let pw = password(user);
    let files = pki.client_env();
    let mut env: Vec<(&str, &str)> = files.iter().map(|(n, v)| (*n, v.as_str())).collect();
    env.extend([("NATS_USER", user), ("NATS_PASSWORD", pw.as_str())]);
    let url = format!("tls://127.0.0.1:{}", stack.nats().port);
    fluxgate_cli(&url, args, &env)
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn each_binary_works_with_its_own_user_and_each_role_is_held_to_its_own() {
    let pki = Pki::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    let mut builder = Stack::builder()
        .nats_config(&format!(
            "{}max_payload: {MAX_PAYLOAD}\n",
            pki.server_config()
        ))
        .nats_include(repository_root().join("deploy/nats/fluxgate-account.conf"))
        // The test reads the streams as the CLI's read-only user does.
        .nats_client(
            pki.client_options()
                .user_and_password("fluxgate-viewer".into(), password("fluxgate-viewer"))
                .custom_inbox_prefix("_INBOX.fluxgate-cli"),
        )
        .cluster([json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "app", "namespace": NS},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        })])
        .receivers(
            [
                secret_manifest("gh-token", NS, GH_TOKEN),
                // A filter on the body makes the dispatcher read it, from the object store
                // for the large one.
                receiver_manifest(
                    "gh",
                    NS,
                    "github",
                    "gh-token",
                    "  resourceFilter: req.ref == 'refs/heads/main'\n",
                ),
            ]
            .join("---\n"),
        );
    for (user, variable) in USERS {
        builder = builder.nats_env(variable, &password(user));
    }
    let stack = builder.start().await;
    let ingest_flags = flags(&pki, secrets.path(), "fluxgate-ingest");
    let ingest = stack.start_ingest(&ingest_flags).await;
    let mut dispatcher_flags = flags(&pki, secrets.path(), "fluxgate-dispatcher");
    dispatcher_flags
        .extend(["--leader-election", "false", "--coalesce-window", "20ms"].map(String::from));
    let dispatcher = stack.start_dispatcher(&dispatcher_flags).await;

    // ingest stores (a large body in the object store), the dispatcher patches.
    let url = ingest.hook_url(&fluxgate_tests::webhook::hook_path(GH_TOKEN, "gh", NS));
    for (id, size) in [("small-1", 256), ("large-1", 3 * MAX_PAYLOAD)] {
        let response = post_github_push(&url, GH_TOKEN, id, github_push_body(size)).await;
        assert_eq!(response.status, 202, "{id}: {:?}", response.body);
    }
    stack
        .outcomes_until("both deliveries patched", |events| {
            events.iter().filter(|e| e["type"] == "patched").count() == 2
        })
        .await;

    // The viewer lists, and shows a body from the object store; it may not replay.
    let (ok, listed, stderr) = cli_as(
        &stack,
        &pki,
        "fluxgate-viewer",
        &["-o", "json", "deliveries", "list"],
    );
    assert!(ok, "{stderr}");
    let listed = json_of(&listed);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        listed
            .as_array()
            .into_iter()
            .flatten()
            .all(|d| d["status"] == "patched")
    );
    let body_file = secrets.path().join("body");
    let (ok, _, stderr) = cli_as(
        &stack,
        &pki,
        "fluxgate-viewer",
        &[
            "deliveries",
            "show",
            "large-1",
            "--output-file",
            &body_file.display().to_string(),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read(&body_file).expect("the body").len(),
        github_push_body(3 * MAX_PAYLOAD).len()
    );
    let (ok, _, stderr) = cli_as(&stack, &pki, "fluxgate-viewer", &["replay", "small-1"]);
    assert!(!ok, "the viewer replayed");
    assert!(
        stderr.contains("NATS denied it")
            && stderr.contains(
                "Permissions Violation for Publish to \"fluxgate.deliveries.flux-system.gh.replay\""
            ),
        "{stderr}"
    );

    // The replayer replays; the NATS user it connects as is recorded with the actor.
    let (ok, _, stderr) = cli_as(
        &stack,
        &pki,
        "fluxgate-replayer",
        &["replay", "small-1", "--actor", "oncall"],
    );
    assert!(ok, "{stderr}");
    let events = stack
        .outcomes_until("the replay patched", |events| {
            events.iter().filter(|e| e["type"] == "patched").count() == 3
        })
        .await;
    let replayed = events
        .iter()
        .find(|e| e["type"] == "replayed")
        .expect("the replay recorded on the original");
    assert_eq!(replayed["actor"], "oncall (NATS user fluxgate-replayer)");
    let replay_seq = replayed["replay_seq"].as_u64().expect("replay_seq");

    // ingest's user: no consuming deliveries, no reading the dispatcher's replies, no outcomes,
    // no replays.
    let (client, mut violations) =
        connect_as(&stack, &pki, "fluxgate-ingest", "_INBOX.fluxgate-ingest").await;
    for subject in [
        "$JS.API.CONSUMER.CREATE.FLUXGATE_DELIVERIES",
        "$JS.API.CONSUMER.MSG.NEXT.FLUXGATE_DELIVERIES.fluxgate-dispatcher",
        "$JS.API.DIRECT.GET.FLUXGATE_DELIVERIES",
        "fluxgate.outcomes.flux-system.gh.patched",
        "fluxgate.deliveries.flux-system.gh.replay",
    ] {
        client
            .publish(subject, "{}".into())
            .await
            .expect("sent to the server");
        denied(&mut violations, "Publish", subject).await;
    }
    let _snoop = client
        .subscribe("_INBOX.fluxgate-dispatcher.>")
        .await
        .expect("sent to the server");
    denied(
        &mut violations,
        "Subscription",
        "_INBOX.fluxgate-dispatcher.>",
    )
    .await;

    // A replay forged on a delivery subject, which ingest's user may publish on: under the
    // original's message id it is the duplicate it is, and the stream does not store it; under
    // an id of its own it is a delivery like any other ingest's user could store, its replay
    // headers ignored -- nobody's replay.
    let first = stack
        .deliveries()
        .await
        .direct_get(1)
        .await
        .expect("delivery #1");
    let mut forged = DeliveryMeta::read(&first.subject, Some(&first.headers)).expect("delivery");
    forged.replay_of = Some(1);
    forged.replay_actor = Some("mallory".into());
    let jetstream = jetstream::new(client);
    let publish_forged = async |msg_id: String| {
        let mut headers: HeaderMap = forged.to_headers();
        headers.insert(contract::header::NATS_MSG_ID, msg_id);
        jetstream
            .publish_with_headers(
                contract::delivery_subject(NS, "gh"),
                headers,
                first.payload.clone(),
            )
            .await
            .expect("published")
            .await
            .expect("stored")
    };
    let again = publish_forged(forged.key()).await;
    assert!(again.duplicate && again.sequence == 1, "{again:?}");
    let ack = publish_forged("forged-1".into()).await;
    assert!(ack.sequence > replay_seq);
    let stored = stack
        .deliveries()
        .await
        .direct_get(ack.sequence)
        .await
        .expect("the forged message");
    let read = DeliveryMeta::read(&stored.subject, Some(&stored.headers)).expect("a delivery");
    assert_eq!((read.replay_of, read.replay_actor), (None, None));
    stack
        .outcomes_until("the forged message dispatched", |events| {
            (events.iter()).any(|e| e["seq"] == ack.sequence && e["type"] == "dispatched")
        })
        .await;
    assert!(
        (dispatcher.service.logs().iter())
            .any(|line| line.contains("replay headers on a delivery subject ignored")),
        "the dispatcher did not say it ignored the replay headers"
    );

    // The server logged exactly what it denied, and nothing else: the binaries needed no
    // permission beyond their role's.
    let expected: BTreeSet<(String, String)> = [
        (
            "fluxgate-viewer",
            "fluxgate.deliveries.flux-system.gh.replay",
        ),
        (
            "fluxgate-ingest",
            "$JS.API.CONSUMER.CREATE.FLUXGATE_DELIVERIES",
        ),
        (
            "fluxgate-ingest",
            "$JS.API.CONSUMER.MSG.NEXT.FLUXGATE_DELIVERIES.fluxgate-dispatcher",
        ),
        ("fluxgate-ingest", "$JS.API.DIRECT.GET.FLUXGATE_DELIVERIES"),
        (
            "fluxgate-ingest",
            "fluxgate.outcomes.flux-system.gh.patched",
        ),
        (
            "fluxgate-ingest",
            "fluxgate.deliveries.flux-system.gh.replay",
        ),
        ("fluxgate-ingest", "_INBOX.fluxgate-dispatcher.>"),
    ]
    .into_iter()
    .map(|(user, subject)| (user.to_owned(), subject.to_owned()))
    .collect();
    eventually("the denials in the server's log", || async {
        let logged = violations_logged(&stack.nats().log());
        if logged == expected {
            Ok(())
        } else {
            Err(logged)
        }
    })
    .await;
}

/// The (user, subject) of each violation nats-server logged:
/// `... Publish Violation - User "u", Subject "s"` (or `Subscription Violation`).
fn violations_logged(log: &str) -> BTreeSet<(String, String)> {
    log.lines()
        .filter(|line| line.contains(" Violation - User \""))
        .filter_map(|line| {
            let (_, rest) = line.split_once("User \"")?;
            let (user, rest) = rest.split_once('"')?;
            let (_, rest) = rest.split_once("Subject \"")?;
            let (subject, _) = rest.split_once('"')?;
            Some((user.to_owned(), subject.to_owned()))
        })
        .collect()
}
