//! An OTLP trace receiver for tests: collects the spans the binaries export, over HTTP
//! (protobuf `POST /v1/traces`) or gRPC, decoded with `opentelemetry-proto`, so that a test can
//! check a trace's shape -- names, parents, links, attributes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

/// One exported span, with ids in hex.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_PRODUCER`, ...
    pub kind: String,
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each linked span.
    pub links: Vec<(String, String)>,
    /// The names of its events.
    pub events: Vec<String>,
}

impl Span {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

type Collected = Arc<Mutex<Vec<Span>>>;

pub struct Receiver {
    pub port: u16,
    spans: Collected,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("its address").port();
        let spans = Collected::default();
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(spans.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { port, spans }
    }

    /// The same receiver over OTLP/gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`).
    pub async fn start_grpc() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("its address").port();
        let spans = Collected::default();
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Self { port, spans }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the binaries.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }
}

async fn export(State(spans): State<Collected>, body: Bytes) -> Vec<u8> {
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        collect(&spans, request);
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

struct Grpc(Collected);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn collect(spans: &Collected, request: ExportTraceServiceRequest) {
    {
        let mut collected = spans.lock().expect("spans");
        for resource in request.resource_spans {
            let service = (resource.resource.iter())
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .map(text)
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                collected.push(Span {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    kind: span.kind().as_str_name().to_owned(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a)))
                        .collect(),
                    links: (span.links.iter())
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    events: span.events.iter().map(|e| e.name.clone()).collect(),
                    name: span.name,
                });
            }
        }
    }
}

/// An attribute's value as text.
fn text(attribute: &KeyValue) -> String {
    match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}
