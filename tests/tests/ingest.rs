//! End-to-end tests of `fluxgate-ingest`: the real binary, a real `nats-server`, real HTTP.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::Duration;

use async_nats::jetstream;
use fluxgate_shared::contract::{self, DeliveryMeta, IdSource, header};
use fluxgate_tests::http::{self, Response};
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{
    github_push_body, github_signature, hook_path, receiver_manifest, secret_manifest,
};
use fluxgate_tests::{eventually, workspace_binary};
use sha2::Digest;
use tokio::io::AsyncReadExt;

const NS: &str = "flux-system";
const GH_TOKEN: &str = "gh-secret";

/// A receivers file with the receivers these tests need.
fn receivers_yaml() -> String {
    [
        secret_manifest("gh-token", NS, GH_TOKEN),
        receiver_manifest(
            "gh",
            NS,
            "github",
            "gh-token",
            "  events: [\"push\", \"ping\"]\n",
        ),
        secret_manifest("plain", NS, "plain-token"),
        receiver_manifest("quay", NS, "quay", "plain", ""),
    ]
    .join("---\n")
}

/// NATS (with extra configuration lines) and ingest (with extra flags) serving the file above.
async fn start(nats_config: &str, ingest_args: &[&str]) -> Stack {
    Stack::builder()
        .nats_config(nats_config)
        .receivers(receivers_yaml())
        .ingest(ingest_args)
        .start()
        .await
}

async fn github_push(stack: &Stack, delivery: &str, body: &[u8]) -> Response {
    let signature = github_signature(GH_TOKEN, body);
    http::post(
        &stack.hook_url(GH_TOKEN, "gh", NS),
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &signature),
            ("user-agent", "GitHub-Hookshot/test"),
        ],
        body.to_vec(),
    )
    .await
    .expect("request")
}

fn stored_header<'a>(
    message: &'a jetstream::message::StreamMessage,
    name: &str,
) -> Option<&'a str> {
    message.headers.get(name).map(|v| v.as_str())
}

fn stored_meta(message: &jetstream::message::StreamMessage) -> DeliveryMeta {
    DeliveryMeta::read(&message.subject, Some(&message.headers)).expect("a delivery")
}

#[tokio::test]
async fn signed_github_push_is_stored_byte_exact() {
    let stack = start("", &[]).await;
    let body = github_push_body(1024);
    let response = github_push(&stack, "d-0001", &body).await;
    assert_eq!(response.status, 202, "{:?}", response.body);
    assert_eq!(
        response.json(),
        serde_json::json!({"delivery": "d-0001", "duplicate": false})
    );

    let stored = stack.last_delivery(NS, "gh").await;
    assert_eq!(
        stored.payload.as_ref(),
        body.as_slice(),
        "payload must be the exact body"
    );
    // Three headers: the id JetStream deduplicates by, the metadata, the trace context.
    let mut names: Vec<String> = stored.headers.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [header::DELIVERY, header::NATS_MSG_ID, header::TRACEPARENT]
    );
    assert_eq!(
        stored_header(&stored, header::NATS_MSG_ID),
        Some("flux-system/gh/d-0001")
    );
    assert!(stored_header(&stored, header::TRACEPARENT).is_some_and(|t| t.starts_with("00-")));
    let json = stored_header(&stored, header::DELIVERY).expect("the metadata");
    assert!(
        json.contains(r#""received_at":"20"#) && json.contains(r#"Z","#),
        "{json}"
    );
    let meta = stored_meta(&stored);
    assert_eq!(
        (meta.id.as_str(), meta.id_source, meta.namespace.as_str()),
        ("d-0001", IdSource::Sender, NS)
    );
    assert_eq!(
        (meta.receiver.as_str(), meta.receiver_type.as_str()),
        ("gh", "github")
    );
    assert_eq!(meta.event.as_deref(), Some("push"));
    assert_eq!(meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        meta.body_sha256,
        Some(hex::encode(sha2::Sha256::digest(&body)))
    );
    assert_eq!(meta.body_size, body.len() as u64);
    assert!(meta.received_at.is_some());
    let kept: Vec<&str> = meta.request_headers.keys().map(String::as_str).collect();
    assert_eq!(
        kept,
        [
            "user-agent",
            "x-github-delivery",
            "x-github-event",
            "x-hub-signature-256"
        ]
    );
    assert_eq!(meta.request_headers["user-agent"], "GitHub-Hookshot/test");
}

#[tokio::test]
async fn redelivery_is_stored_once() {
    let stack = start("", &[]).await;
    let body = github_push_body(512);
    let first = github_push(&stack, "same-guid", &body).await;
    let second = github_push(&stack, "same-guid", &body).await;
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.json()["duplicate"], false);
    assert_eq!(second.json()["duplicate"], true);
    assert_eq!(stack.stored().await, 1);
    assert!(stack.ingest().metrics().await.contains(
        r#"fluxgate_ingest_requests_total{receiver_type="github",outcome="duplicate"} 1"#
    ));
}

/// The stream's duplicate window is how long a delivery id is remembered: GitHub redelivers
/// for three days, and the stream cannot remember longer than it keeps deliveries.
#[tokio::test]
async fn delivery_ids_are_remembered_for_72_hours_and_never_past_the_deliveries_age() {
    for (args, window) in [
        (&[][..], Duration::from_secs(72 * 3600)),
        (&["--stream-max-age", "1h"][..], Duration::from_secs(3600)),
    ] {
        let stack = start("", args).await;
        let info = jetstream::new(stack.client().await)
            .get_stream(contract::DELIVERIES_STREAM)
            .await
            .expect("the deliveries stream")
            .info()
            .await
            .expect("its info")
            .config
            .clone();
        assert_eq!(info.duplicate_window, window, "with {args:?}");
    }
}

#[tokio::test]
async fn an_oversized_body_gets_a_clean_413_not_a_reset_connection() {
    // Had ingest answered and closed with most of the body unread, the kernel would reset the
    // connection and the client would, more often than not, see that instead of the answer.
    let stack = start("", &["--max-body-bytes", "65536"]).await;
    let big = github_push_body(96 * 1024);
    let signature = github_signature(GH_TOKEN, &big);
    for _ in 0..20 {
        let response = http::post(
            &stack.hook_url(GH_TOKEN, "gh", NS),
            &[
                ("content-type", "application/json"),
                ("x-github-event", "push"),
                ("x-hub-signature-256", &signature),
            ],
            big.clone(),
        )
        .await
        .expect("an answer, not a reset");
        assert_eq!(response.status, 413);
    }
    assert_eq!(stack.stored().await, 0);
}

#[tokio::test]
async fn nats_outage_answers_503_then_recovers_by_itself() {
    let mut stack = start("", &["--publish-timeout", "2s"]).await;
    let body = github_push_body(256);
    assert_eq!(github_push(&stack, "before", &body).await.status, 202);

    stack.nats_mut().kill();
    let during = github_push(&stack, "during", &body).await;
    assert_eq!(during.status, 503, "{:?}", during.body);
    assert!(
        during.header("retry-after").is_some(),
        "503 must carry Retry-After"
    );
    assert!(
        during.json()["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    let readyz = http::get(&stack.ingest().admin_url("/readyz"))
        .await
        .expect("readyz");
    assert_eq!(readyz.status, 503);

    stack.nats_mut().restart().await;
    stack.ingest().wait_ready().await;
    let after = github_push(&stack, "after", &body).await;
    assert_eq!(after.status, 202, "{:?}", after.body);
    let subject_messages = stack.stored().await;
    assert!(
        subject_messages >= 2,
        "before and after must both be stored"
    );
}

#[tokio::test]
async fn a_deleted_stream_is_provisioned_again() {
    let stack = start("", &[]).await;
    let body = github_push_body(256);
    jetstream::new(stack.client().await)
        .delete_stream(contract::DELIVERIES_STREAM)
        .await
        .expect("delete the stream");
    let lost = github_push(&stack, "while-gone", &body).await;
    assert_eq!(lost.status, 503, "no stream, no 2xx: {:?}", lost.body);

    eventually("the stream provisioned again", || async {
        let response = github_push(&stack, "after", &body).await;
        match response.status {
            202 => Ok(()),
            503 => Err(response.body),
            other => panic!("only 503 until the stream is back, got {other}: {response:?}"),
        }
    })
    .await;
    assert_eq!(stack.stored().await, 1);
}

#[tokio::test]
async fn concurrent_deliveries_are_stored_exactly_once_each() {
    let stack = start("", &[]).await;
    let body = github_push_body(1024);
    // 200 deliveries, each sent twice at the same time, as a retrying sender might.
    let requests = (0..400).map(|i| {
        let stack = &stack;
        let body = &body;
        async move { github_push(stack, &format!("burst-{}", i % 200), body).await }
    });
    let responses = futures::future::join_all(requests).await;
    assert!(
        responses.iter().all(|r| r.status == 202),
        "every request must be accepted"
    );
    let fresh = responses
        .iter()
        .filter(|r| r.json()["duplicate"] == false)
        .count();
    assert_eq!(fresh, 200, "exactly one of each pair is new");

    let stream = stack.deliveries().await;
    assert_eq!(stack.stored().await, 200);
    let mut ids = HashSet::new();
    for seq in 1..=200 {
        let message = stream.get_raw_message(seq).await.expect("stored message");
        ids.insert(stored_meta(&message).id);
    }
    assert_eq!(ids.len(), 200, "each delivery is stored once");
}

#[tokio::test]
async fn body_above_max_payload_is_stored_intact_in_the_object_store() {
    let stack = start("max_payload: 65536\n", &[]).await;
    let body = github_push_body(300 * 1024);
    let response = github_push(&stack, "large-1", &body).await;
    assert_eq!(response.status, 202, "{:?}", response.body);

    let stored = stack.last_delivery(NS, "gh").await;
    assert!(stored.payload.is_empty(), "the body must not be inline");
    let meta = stored_meta(&stored);
    let object = meta.body_object.expect("object reference");
    assert_eq!(meta.body_size, body.len() as u64);
    let store = jetstream::new(stack.client().await)
        .get_object_store(contract::BODIES_OBJECT_STORE)
        .await
        .expect("object store");
    let mut read_back = Vec::new();
    store
        .get(&object)
        .await
        .expect("object")
        .read_to_end(&mut read_back)
        .await
        .expect("read object");
    assert_eq!(read_back, body, "the stored body must be byte-exact");
}

#[tokio::test]
async fn receivers_file_is_reloaded_and_a_bad_version_keeps_the_old_catalog() {
    let stack = start("", &[]).await;
    let added_url = stack.hook_url("plain-token", "added", NS);
    assert_eq!(
        http::post(&added_url, &[], "").await.expect("req").status,
        404
    );

    let extended = format!(
        "{}---\n{}",
        receivers_yaml(),
        receiver_manifest("added", NS, "generic", "plain", "")
    );
    std::fs::write(stack.receivers_file(), extended).expect("rewrite");
    eventually("the new receiver served", || async {
        let status = http::post(&added_url, &[], "").await.expect("req").status;
        if status == 202 { Ok(()) } else { Err(status) }
    })
    .await;

    std::fs::write(stack.receivers_file(), "kind: [broken").expect("rewrite");
    let invalid = r#"fluxgate_ingest_catalog_reloads_total{result="invalid"} 1"#;
    eventually("the bad file noticed", || async {
        let metrics = stack.ingest().metrics().await;
        if metrics.contains(invalid) {
            Ok(())
        } else {
            Err(metrics)
        }
    })
    .await;
    assert_eq!(
        http::post(&added_url, &[], "").await.expect("req").status,
        202,
        "old catalog kept"
    );
}

#[test]
fn invalid_receivers_file_fails_at_startup_naming_document_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("receivers.yaml");
    std::fs::write(
        &file,
        receivers_yaml().replace("type: quay", "type: quay.io"),
    )
    .expect("write");
    let output = std::process::Command::new(workspace_binary("fluxgate-ingest"))
        .arg("--receivers-file")
        .arg(&file)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .output()
        .expect("run fluxgate-ingest");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("document 4 (Receiver flux-system/quay): spec.type"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let mut stack = start("", &[]).await;
    let body = github_push_body(1024);
    let signature = github_signature(GH_TOKEN, &body);
    let path = hook_path(GH_TOKEN, "gh", NS);
    let port = stack.ingest().port;

    // Send the headers and half the body; `Expect: 100-continue` makes ingest say when its
    // handler has started reading the body, so the request is surely in flight before SIGTERM.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\ncontent-type: application/json\r\nx-github-event: push\r\nx-github-delivery: in-flight\r\nx-hub-signature-256: {signature}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("write head");
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).expect("read 100 Continue");
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    conn.write_all(&body[..512]).expect("write half");
    let pid = stack.ingest().pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");

    // Once the listener refuses new connections, shutdown has begun; then finish the request.
    eventually("the listener closed after SIGTERM", || async {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => Err("still accepting"),
            Err(_) => Ok(()),
        }
    })
    .await;
    conn.write_all(&body[512..]).expect("write rest");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    assert!(
        stack.ingest_mut().terminate().await,
        "ingest must exit successfully"
    );
    assert_eq!(stack.stored().await, 1);
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let stack = start(
        "",
        &["--header-timeout", "300ms", "--body-timeout", "300ms"],
    )
    .await;
    let path = hook_path(GH_TOKEN, "gh", NS);

    // Headers never finished: the connection is closed without a response.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", stack.ingest().port))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stalled,
        format!("POST {path} HTTP/1.1\r\nhost: x\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "a client that never finishes its headers must be disconnected"
    );
    assert!(!String::from_utf8_lossy(&received).contains("202"));

    // Body never finished: 408 with a reason.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", stack.ingest().port))
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    tokio::io::AsyncWriteExt::write_all(&mut slow, head.as_bytes())
        .await
        .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut response))
        .await
        .expect("ingest must answer a stalled body")
        .expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("not received in time"), "{response}");
    assert_eq!(stack.stored().await, 0);
}

/// Posts distinct signed pushes of `size` bytes until one is refused (at most `limit`); returns
/// how many were stored and the refusal.
async fn push_until_refused(stack: &Stack, size: usize, limit: usize) -> (usize, Response) {
    for n in 0..limit {
        let mut body = github_push_body(size);
        // Distinct bodies, so that large ones do not share an object.
        body.extend_from_slice(format!("{n:08}").as_bytes());
        let response = github_push(stack, &format!("fill-{n}"), &body).await;
        if response.status != 202 {
            return (n, response);
        }
    }
    panic!("{limit} deliveries of {size} bytes were all stored");
}

/// A full store answers 503 `storage_full` with `Retry-After`, counted, and drops nothing it
/// already acknowledged.
async fn assert_full(stack: &Stack, stored: usize, refusal: &Response) {
    assert!(stored > 0, "nothing was stored before the store was full");
    assert_eq!(refusal.status, 503, "{:?}", refusal.body);
    assert!(refusal.header("retry-after").is_some(), "no Retry-After");
    let error = refusal.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.starts_with("event store is full"), "{error}");
    let counted =
        r#"fluxgate_ingest_requests_total{receiver_type="github",outcome="storage_full"} 1"#;
    let metrics = stack.ingest().metrics().await;
    assert!(metrics.contains(counted), "{metrics}");
    assert_eq!(
        stack.stored().await,
        stored as u64,
        "every acknowledged delivery must still be stored"
    );
}

#[tokio::test]
async fn a_full_deliveries_stream_refuses_new_webhooks_and_keeps_the_stored_ones() {
    let stack = start("", &["--stream-max-bytes", "65536"]).await;
    let (stored, refusal) = push_until_refused(&stack, 8 * 1024, 64).await;
    assert_full(&stack, stored, &refusal).await;
}

#[tokio::test]
async fn a_full_object_store_refuses_large_bodies() {
    let stack = start("max_payload: 65536\n", &["--bodies-max-bytes", "700000"]).await;
    let (stored, refusal) = push_until_refused(&stack, 300 * 1024, 8).await;
    assert_full(&stack, stored, &refusal).await;
}

#[tokio::test]
async fn nats_out_of_storage_refuses_new_webhooks() {
    let stack = start(
        "jetstream { max_file_store: 262144 }\n",
        &["--stream-max-bytes", "-1", "--bodies-max-bytes", "-1"],
    )
    .await;
    let (stored, refusal) = push_until_refused(&stack, 8 * 1024, 128).await;
    assert_full(&stack, stored, &refusal).await;
}
