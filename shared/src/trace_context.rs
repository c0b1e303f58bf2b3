//! W3C trace context between spans and messages: the `traceparent` a span's context is
//! stored as, a span continuing or linking to a stored one, and new trace roots.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C `traceparent` of a span, when spans are exported (else the span has no
/// OpenTelemetry context): what a stored delivery carries to the dispatcher.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// A latency observation's exemplar: the trace it was measured in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

/// The exemplar of the current span's trace, when that trace is sampled: a histogram bucket in
/// Grafana then leads to a trace that exists.
pub fn current_exemplar() -> Option<TraceExemplar> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    (ids.is_valid() && ids.is_sampled()).then(|| TraceExemplar {
        trace_id: ids.trace_id().to_string(),
    })
}

/// The W3C `traceparent` of a new trace's root. Trace ids need to be unique, not secret: a
/// fast non-cryptographic generator saves a getrandom system call per request. Hex-encoded
/// into place: formatting the two numbers with padding cost ingest 1 % of its CPU per webhook.
pub fn new_traceparent() -> String {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    // Neither can fail: each slice is exactly twice its id's length.
    let _ = hex::encode_to_slice(fastrand::u128(1..).to_be_bytes(), &mut text[3..35]);
    let _ = hex::encode_to_slice(fastrand::u64(1..).to_be_bytes(), &mut text[36..52]);
    text.iter().copied().map(char::from).collect()
}

/// Makes `span` a child of the span a W3C `traceparent` names (a sender's, or one stored with
/// a delivery); a malformed value leaves it a root.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    // A span no layer records (no exporter) has no parent to set: skip the parsing.
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = parse(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// The span context a W3C `traceparent` names, if it is well formed.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Links `span` to the span a W3C `traceparent` names: a coalesced patch to each delivery it
/// carries, a replay to its original.
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    if let Some(linked) = parse(traceparent) {
        span.add_link(linked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_only_when_well_formed() {
        let read = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(
            read.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(read.span_id().to_string(), "00f067aa0ba902b7");
        assert!(read.is_sampled());
        for malformed in [
            "",
            "junk",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse(malformed).is_none(), "{malformed:?}");
        }
    }

    #[test]
    fn new_roots_are_well_formed_and_distinct() {
        let root = new_traceparent();
        assert!(parse(&root).is_some(), "{root}");
        assert_eq!(root.len(), 55, "{root}");
        assert!(root.starts_with("00-") && root.ends_with("-01"), "{root}");
        assert_ne!(root, new_traceparent());
    }
}
