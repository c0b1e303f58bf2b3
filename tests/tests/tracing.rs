//! OpenTelemetry traces of the real binaries, caught by an in-process OTLP receiver: one
//! webhook's trace from the sender's span to Flux handling it, a coalesced patch linked to its
//! deliveries; and no export, and no harm, without a collector.

use std::collections::BTreeMap;
use std::time::Duration;

use fluxgate_shared::contract::header;
use fluxgate_tests::apiserver::{Fault, ObjectRef};
use fluxgate_tests::otlp::{self, Span};
use fluxgate_tests::stack::Stack;
use fluxgate_tests::webhook::{
    github_push_body, github_signature, receiver_manifest, secret_manifest,
};
use fluxgate_tests::{eventually, fluxgate_cli, http};
use serde_json::json;

const NS: &str = "flux-system";
const TOKEN: &str = "gh-secret";
/// The sender's own span: its CI job, say.
const SENDER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";
const REQUEST: &str = "POST /hook/{digest}";

fn receivers() -> String {
    [
        secret_manifest("gh-token", NS, TOKEN),
        // A filter, so that its evaluation has a span.
        receiver_manifest(
            "gh",
            NS,
            "github",
            "gh-token",
            "  resourceFilter: req.ref == 'refs/heads/main'\n",
        ),
    ]
    .join("---\n")
}

/// A stack whose services export to `endpoint` (none: no variable at all): ingest, the
/// dispatcher (coalescing for 500 ms) and the API stand-in with the receiver's GitRepository,
/// its controller played so that patches are confirmed.
async fn start(endpoint: Option<&str>) -> Stack {
    let mut builder = Stack::builder()
        .cluster([json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "app", "namespace": NS},
            "spec": {"url": "https://example.org/repo", "interval": "10m"},
        })])
        .receivers(receivers())
        .ingest(&[])
        .dispatcher(&["--coalesce-window", "500ms"]);
    if let Some(endpoint) = endpoint {
        builder = builder
            .services_env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            // Export each batch within 100 ms rather than the default 5 s.
            .services_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    }
    let stack = builder.start().await;
    stack.api().play_flux_controllers(Duration::from_millis(50));
    stack
}

/// A signed push sent from a span of trace `trace`.
async fn push(stack: &Stack, delivery: &str, trace: &str) -> http::Response {
    let body = github_push_body(256);
    let signature = github_signature(TOKEN, &body);
    let traceparent = format!("00-{trace}-{SENDER_SPAN}-01");
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

/// The spans of trace `trace`, by name, once all of `names` arrived.
async fn trace_of(
    receiver: &otlp::Receiver,
    trace: &str,
    names: &[&str],
) -> BTreeMap<String, Span> {
    eventually("the trace's spans", || async {
        let spans: BTreeMap<String, Span> = (receiver.spans().into_iter())
            .filter(|s| s.trace_id == trace)
            .map(|s| (s.name.clone(), s))
            .collect();
        if names.iter().all(|n| spans.contains_key(*n)) {
            Ok(spans)
        } else {
            Err(spans.into_keys().collect::<Vec<_>>())
        }
    })
    .await
}

/// The one span named `name`, once it arrived.
async fn the_only(receiver: &otlp::Receiver, name: &str) -> Span {
    eventually(&format!("one {name} span"), || async {
        let named: Vec<Span> = (receiver.spans().into_iter())
            .filter(|s| s.name == name)
            .collect();
        match named.as_slice() {
            [span] => Ok(span.clone()),
            other => Err(other.to_vec()),
        }
    })
    .await
}

fn assert_attributes(span: &Span, expected: &[(&str, &str)]) {
    for (name, value) in expected {
        assert_eq!(span.attribute(name), Some(*value), "{} {name}", span.name);
    }
}

#[tokio::test]
async fn one_webhook_is_one_trace_from_the_senders_span_to_flux_handling_it() {
    let receiver = otlp::Receiver::start().await;
    let stack = start(Some(&receiver.endpoint())).await;
    let response = push(&stack, "traced-1", SENDER_TRACE).await;
    assert_eq!(response.status, 202, "{:?}", response.body);

    let names = [
        REQUEST,
        "verify",
        "read body",
        "publish",
        "consume",
        "resolve",
        "evaluate filters",
        "reconcile",
        "confirm",
    ];
    let spans = trace_of(&receiver, SENDER_TRACE, &names).await;
    eprintln!("the trace of one webhook, as the OTLP receiver caught it:");
    for name in names {
        let span = &spans[name];
        let parent = (spans.values())
            .find(|p| p.span_id == span.parent_span_id)
            .map_or("the sender's span", |p| p.name.as_str());
        eprintln!(
            "  {:<20} {:<18} under {:<20} {:?}",
            span.service, span.name, parent, span.attributes
        );
    }

    // ingest: the request continues the sender's span; verify (reading the body) and publish.
    let request = &spans[REQUEST];
    assert_eq!(request.parent_span_id, SENDER_SPAN);
    assert_eq!(request.service, "fluxgate-ingest");
    assert_eq!(request.kind, "SPAN_KIND_SERVER");
    assert_attributes(
        request,
        &[
            ("http.request.method", "POST"),
            ("http.route", "/hook/{digest}"),
            ("http.response.status_code", "202"),
            ("fluxgate.receiver", "flux-system/gh"),
            ("fluxgate.receiver_type", "github"),
            ("fluxgate.delivery_id", "traced-1"),
            ("fluxgate.outcome", "accepted"),
        ],
    );
    assert_eq!(spans["verify"].parent_span_id, request.span_id);
    assert_eq!(spans["read body"].parent_span_id, spans["verify"].span_id);
    let publish = &spans["publish"];
    assert_eq!(publish.parent_span_id, request.span_id);
    assert_eq!(publish.kind, "SPAN_KIND_PRODUCER");
    assert_attributes(
        publish,
        &[
            ("messaging.system", "nats"),
            ("messaging.operation.type", "send"),
            (
                "messaging.destination.name",
                "fluxgate.deliveries.flux-system.gh",
            ),
            ("messaging.message.id", "flux-system/gh/traced-1"),
            ("fluxgate.stream", "FLUXGATE_DELIVERIES"),
            ("fluxgate.sequence", "1"),
        ],
    );
    // The delivery carries the request's span on, for the dispatcher to continue.
    let stored = stack.last_delivery(NS, "gh").await;
    let traceparent = stored
        .headers
        .get(header::TRACEPARENT)
        .map(|v| v.to_string());
    assert_eq!(
        traceparent,
        Some(format!("00-{SENDER_TRACE}-{}-01", request.span_id))
    );

    // The dispatcher: consume continues the request; resolve (with the filters' evaluation)
    // under it; the patch, linked to the delivery; confirmation last.
    let consume = &spans["consume"];
    assert_eq!(consume.service, "fluxgate-dispatcher");
    assert_eq!(consume.parent_span_id, request.span_id);
    assert_eq!(consume.kind, "SPAN_KIND_CONSUMER");
    assert_attributes(
        consume,
        &[
            ("messaging.system", "nats"),
            ("messaging.operation.type", "process"),
            ("fluxgate.sequence", "1"),
            ("fluxgate.delivery_id", "traced-1"),
            ("fluxgate.receiver", "flux-system/gh"),
            ("fluxgate.targets", "1"),
        ],
    );
    assert_eq!(spans["resolve"].parent_span_id, consume.span_id);
    assert_eq!(
        spans["evaluate filters"].parent_span_id,
        spans["resolve"].span_id
    );
    let patch = &spans["reconcile"];
    assert_eq!(patch.parent_span_id, consume.span_id);
    assert_eq!(
        patch.links,
        vec![(SENDER_TRACE.to_owned(), consume.span_id.clone())]
    );
    assert_attributes(
        patch,
        &[
            (
                "fluxgate.target",
                "source.toolkit.fluxcd.io/v1/GitRepository flux-system/app",
            ),
            ("fluxgate.batch_size", "1"),
            ("fluxgate.attempts", "1"),
            ("fluxgate.result", "patched"),
        ],
    );
    // The API calls, as the Kubernetes client's spans: reading the target under resolve, the
    // PATCH under the reconcile request.
    let calls: Vec<Span> = (receiver.spans().into_iter())
        .filter(|s| s.trace_id == SENDER_TRACE)
        .filter(|s| s.kind == "SPAN_KIND_CLIENT" && s.attribute("http.method").is_some())
        .collect();
    assert!(
        (calls.iter()).any(|c| c.parent_span_id == spans["resolve"].span_id),
        "{calls:?}"
    );
    let patched = (calls.iter())
        .find(|c| c.parent_span_id == patch.span_id)
        .unwrap_or_else(|| panic!("no API call under the reconcile request: {calls:?}"));
    assert_eq!(patched.name, "patch");
    assert_attributes(
        patched,
        &[("http.method", "PATCH"), ("http.status_code", "200")],
    );
    let confirm = &spans["confirm"];
    assert_eq!(confirm.parent_span_id, patch.span_id);
    assert_attributes(confirm, &[("fluxgate.result", "handled")]);
    let latency = confirm.attribute("fluxgate.webhook_to_handled_ms");
    assert!(
        latency
            .and_then(|ms| ms.parse::<i64>().ok())
            .is_some_and(|ms| ms >= 0),
        "{:?}",
        confirm.attributes
    );

    // The latency histograms carry the trace as an OpenMetrics exemplar.
    let exemplar = format!("# {{trace_id=\"{SENDER_TRACE}\"}}");
    let ingest = stack.ingest().metrics().await;
    let bucket = "fluxgate_ingest_request_duration_seconds_bucket";
    assert!(
        (ingest.lines()).any(|l| l.starts_with(bucket) && l.contains(&exemplar)),
        "{ingest}"
    );
    let dispatcher = http::get(&stack.dispatcher().admin_url("/metrics"))
        .await
        .expect("metrics");
    let dispatcher = String::from_utf8_lossy(&dispatcher.body);
    for histogram in ["webhook_to_patch", "webhook_to_handled"] {
        let bucket = format!("fluxgate_dispatcher_{histogram}_seconds_bucket");
        assert!(
            (dispatcher.lines()).any(|l| l.starts_with(&bucket) && l.contains(&exemplar)),
            "{histogram}: {dispatcher}"
        );
    }
}

#[tokio::test]
async fn each_retry_of_a_patch_is_an_event_of_its_span() {
    let receiver = otlp::Receiver::start().await;
    let stack = start(Some(&receiver.endpoint())).await;
    let app = ObjectRef::new("source.toolkit.fluxcd.io/v1", "GitRepository", NS, "app");
    stack.api().inject(&app, Fault::status(500).on("PATCH"));
    assert_eq!(push(&stack, "retried-1", SENDER_TRACE).await.status, 202);
    let patch = trace_of(&receiver, SENDER_TRACE, &["reconcile"]).await["reconcile"].clone();
    assert_attributes(
        &patch,
        &[("fluxgate.attempts", "2"), ("fluxgate.result", "patched")],
    );
    assert_eq!(
        (patch.events.iter())
            .filter(|e| *e == "patch failed; retrying")
            .count(),
        1,
        "{:?}",
        patch.events
    );
}

#[tokio::test]
async fn a_log_line_inside_a_span_names_its_trace_and_span() {
    let receiver = otlp::Receiver::start().await;
    let stack = start(Some(&receiver.endpoint())).await;
    let forged = http::post(
        &stack.hook_url(TOKEN, "gh", NS),
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-hub-signature-256", "sha256=00"),
            (
                "traceparent",
                &format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01"),
            ),
        ],
        "{}",
    )
    .await
    .expect("request");
    assert_eq!(forged.status, 401);
    let request = trace_of(&receiver, SENDER_TRACE, &[REQUEST]).await[REQUEST].clone();
    assert_attributes(&request, &[("fluxgate.outcome", "unauthorized")]);
    let rejected: serde_json::Value = eventually("the rejection's log line", || async {
        let logs = stack.ingest().logs();
        (logs.iter())
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "webhook rejected")
            .ok_or(logs)
    })
    .await;
    assert_eq!(rejected["trace_id"], SENDER_TRACE, "{rejected}");
    assert_eq!(rejected["span_id"], request.span_id.as_str(), "{rejected}");
    assert_eq!(rejected["outcome"], "unauthorized", "{rejected}");
}

#[tokio::test]
async fn spans_go_over_grpc_when_the_protocol_says_so() {
    let receiver = otlp::Receiver::start_grpc().await;
    let stack = Stack::builder()
        .receivers(receivers())
        .ingest(&[])
        .services_env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        .services_env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .services_env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .services_env("OTEL_SERVICE_NAME", "ingest-eu-1")
        .start()
        .await;
    assert_eq!(push(&stack, "grpc-1", SENDER_TRACE).await.status, 202);
    let spans = trace_of(&receiver, SENDER_TRACE, &[REQUEST, "publish"]).await;
    assert_eq!(spans[REQUEST].service, "ingest-eu-1", "OTEL_SERVICE_NAME");
    assert_eq!(spans["publish"].parent_span_id, spans[REQUEST].span_id);
}

#[tokio::test]
async fn a_coalesced_patch_links_every_delivery_it_carries() {
    let receiver = otlp::Receiver::start().await;
    let stack = start(Some(&receiver.endpoint())).await;
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    ];
    // Both within the 500 ms window: one patch.
    for (n, trace) in traces.iter().enumerate() {
        let response = push(&stack, &format!("burst-{n}"), trace).await;
        assert_eq!(response.status, 202, "{:?}", response.body);
    }
    let mut consumed = Vec::new();
    for trace in traces {
        let spans = trace_of(&receiver, trace, &["consume"]).await;
        consumed.push((trace.to_owned(), spans["consume"].span_id.clone()));
    }
    let patch = the_only(&receiver, "reconcile").await;
    assert_attributes(&patch, &[("fluxgate.batch_size", "2")]);
    let mut links = patch.links.clone();
    links.sort();
    assert_eq!(links, consumed, "a link to each delivery's consume span");
    assert!(
        (consumed.iter()).any(|(t, s)| *t == patch.trace_id && *s == patch.parent_span_id),
        "the patch is in the trace of one of its deliveries"
    );
}

#[tokio::test]
async fn a_replay_starts_a_new_trace_linked_to_the_original() {
    let receiver = otlp::Receiver::start().await;
    let stack = start(Some(&receiver.endpoint())).await;
    assert_eq!(push(&stack, "replayed-1", SENDER_TRACE).await.status, 202);
    let original = trace_of(&receiver, SENDER_TRACE, &[REQUEST, "reconcile"]).await;

    // On a blocking thread: the receiver answers on this test's runtime meanwhile.
    let (nats_url, endpoint) = (stack.nats_url().to_owned(), receiver.endpoint());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        fluxgate_cli(
            &nats_url,
            &["replay", "replayed-1", "--yes", "--actor", "tester"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        )
    })
    .await
    .expect("the CLI ran");
    assert!(ok, "{out}{err}");
    let replay = the_only(&receiver, "replay").await;
    assert_eq!(replay.service, "fluxgate-cli");
    assert_ne!(replay.trace_id, SENDER_TRACE, "a trace of its own");
    assert!(replay.parent_span_id.is_empty(), "a root");
    assert_eq!(
        replay.links,
        vec![(SENDER_TRACE.to_owned(), original[REQUEST].span_id.clone())],
        "linked to the original's request"
    );
    assert_attributes(
        &replay,
        &[
            ("fluxgate.delivery_id", "replayed-1"),
            ("fluxgate.replay_of", "1"),
            ("fluxgate.actor", "tester"),
            ("fluxgate.sequence", "2"),
        ],
    );
    // The dispatcher carries the replay's trace on.
    let replayed = trace_of(&receiver, &replay.trace_id, &["consume", "reconcile"]).await;
    assert_eq!(replayed["consume"].parent_span_id, replay.span_id);
    assert_attributes(&replayed["consume"], &[("fluxgate.sequence", "2")]);
}

#[tokio::test]
async fn the_last_spans_are_flushed_at_shutdown() {
    let receiver = otlp::Receiver::start().await;
    let mut stack = Stack::builder()
        .receivers(receivers())
        .ingest(&[])
        .services_env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())
        // No export on schedule within the test: only the shutdown's flush can send them.
        .services_env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .start()
        .await;
    assert_eq!(push(&stack, "flushed-1", SENDER_TRACE).await.status, 202);
    assert!(
        receiver.spans().is_empty(),
        "nothing is sent before the schedule"
    );
    assert!(stack.ingest_mut().terminate().await, "ingest exits cleanly");
    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == REQUEST), "{names:?}");
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_the_senders_traceparent_is_stored() {
    let stack = start(None).await;
    assert_eq!(push(&stack, "untraced-1", SENDER_TRACE).await.status, 202);
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
        let response = push(&stack, &format!("lost-spans-{n}"), SENDER_TRACE).await;
        assert_eq!(response.status, 202, "{:?}", response.body);
    }
    assert_eq!(stack.stored().await, 20);
    stack
        .outcomes_until("every delivery patched", |events| {
            events.iter().filter(|e| e["type"] == "patched").count() == 20
        })
        .await;
}
