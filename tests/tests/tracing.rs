//! OpenTelemetry traces of the real binaries, caught by an in-process OTLP receiver: the spans
//! of one webhook, their parents and attributes; and no export, and no harm, without a
//! collector.

use std::collections::BTreeMap;

use fluxgate_shared::contract::header;
use fluxgate_tests::otlp::{self, Span};
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{
    github_push_body, github_signature, receiver_manifest, secret_manifest,
};
use fluxgate_tests::{eventually, http};

const NS: &str = "flux-system";
const TOKEN: &str = "gh-secret";
/// The sender's own span: its CI job, say.
const SENDER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";

fn receivers() -> String {
    [
        secret_manifest("gh-token", NS, TOKEN),
        receiver_manifest("gh", NS, "github", "gh-token", ""),
    ]
    .join("---\n")
}

/// A stack whose services export to `endpoint` (none: no variable at all).
async fn start(endpoint: Option<&str>) -> Stack {
    let mut builder = Stack::builder().receivers(receivers()).ingest(&[]);
    if let Some(endpoint) = endpoint {
        builder = builder
            .services_env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            // Export each batch within 100 ms rather than the default 5 s.
            .services_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    }
    builder.start().await
}

async fn push(stack: &Stack, delivery: &str) -> http::Response {
    let body = github_push_body(256);
    let signature = github_signature(TOKEN, &body);
    let traceparent = format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01");
    http::post(
        &stack.hook_url(TOKEN, "gh", NS),
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &signature),
            ("traceparent", &traceparent),
        ],
        body,
    )
    .await
    .expect("request")
}

/// The spans of the sender's trace, by name, once all of `names` arrived.
async fn trace(receiver: &otlp::Receiver, names: &[&str]) -> BTreeMap<String, Span> {
    eventually("the trace's spans", || async {
        let all = receiver.spans();
        let spans: BTreeMap<String, Span> = (all.iter())
            .filter(|s| s.trace_id == SENDER_TRACE)
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        if names.iter().all(|n| spans.contains_key(*n)) {
            Ok(spans)
        } else {
            Err(all
                .into_iter()
                .map(|s| (s.name, s.trace_id))
                .collect::<Vec<_>>())
        }
    })
    .await
}

#[tokio::test]
async fn ingest_continues_the_senders_trace_with_verify_and_publish_spans() {
    let receiver = otlp::Receiver::start().await;
    let stack = start(Some(&receiver.endpoint())).await;
    let response = push(&stack, "traced-1").await;
    assert_eq!(response.status, 202, "{:?}", response.body);

    let request = "POST /hook/{digest}";
    let spans = trace(&receiver, &[request, "verify", "read body", "publish"]).await;
    let root = &spans[request];
    assert_eq!(
        root.parent_span_id, SENDER_SPAN,
        "the sender's span is the parent"
    );
    assert_eq!(root.service, "fluxgate-ingest");
    assert_eq!(root.kind, "SPAN_KIND_SERVER");
    for (name, value) in [
        ("http.request.method", "POST"),
        ("http.route", "/hook/{digest}"),
        ("http.response.status_code", "202"),
        ("fluxgate.receiver", "flux-system/gh"),
        ("fluxgate.receiver_type", "github"),
        ("fluxgate.delivery_id", "traced-1"),
        ("fluxgate.outcome", "accepted"),
    ] {
        assert_eq!(root.attribute(name), Some(value), "{request} {name}");
    }
    assert_eq!(spans["verify"].parent_span_id, root.span_id);
    assert_eq!(spans["read body"].parent_span_id, spans["verify"].span_id);
    let publish = &spans["publish"];
    assert_eq!(publish.parent_span_id, root.span_id);
    assert_eq!(publish.kind, "SPAN_KIND_PRODUCER");
    for (name, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "send"),
        (
            "messaging.destination.name",
            "fluxgate.deliveries.flux-system.gh",
        ),
        ("messaging.message.id", "flux-system/gh/traced-1"),
        ("fluxgate.stream", "FLUXGATE_DELIVERIES"),
        ("fluxgate.sequence", "1"),
    ] {
        assert_eq!(publish.attribute(name), Some(value), "publish {name}");
    }
    // The delivery carries the request's span on, for the dispatcher to continue.
    let stored = stack.last_delivery(NS, "gh").await;
    let traceparent = stored
        .headers
        .get(header::TRACEPARENT)
        .map(|v| v.to_string());
    assert_eq!(
        traceparent,
        Some(format!("00-{SENDER_TRACE}-{}-01", root.span_id))
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_the_senders_traceparent_is_stored() {
    let stack = start(None).await;
    assert_eq!(push(&stack, "untraced-1").await.status, 202);
    let stored = stack.last_delivery(NS, "gh").await;
    let traceparent = stored
        .headers
        .get(header::TRACEPARENT)
        .map(|v| v.to_string());
    // No span context exists to take the sender's place.
    assert_eq!(
        traceparent,
        Some(format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01"))
    );
}

#[tokio::test]
async fn an_unreachable_collector_fails_no_webhook() {
    // A port nothing listens on: every export fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let endpoint = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let stack = start(Some(&endpoint)).await;
    for n in 0..20 {
        let response = push(&stack, &format!("lost-spans-{n}")).await;
        assert_eq!(response.status, 202, "{:?}", response.body);
    }
    assert_eq!(stack.stored().await, 20);
}
