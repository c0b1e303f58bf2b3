//! Logging and tracing set-up shared by the binaries: structured logs to stderr, filtered by
//! `RUST_LOG`, and, when an OTLP endpoint is set, spans exported over OTLP as the standard
//! `OTEL_*` variables say.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::filter::{FilterExt as _, dynamic_filter_fn, filter_fn};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::Error;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!(
                "unknown log format {other:?} (expected json or text)"
            )),
        }
    }
}

/// The span exporter, while one runs: [`Tracing::shutdown`] sends the spans still batched.
#[must_use = "shut it down when the service stops, or the last spans are lost"]
pub struct Tracing(Option<SdkTracerProvider>);

impl Tracing {
    /// Flushes the batched spans and stops the exporter; a collector that does not answer
    /// costs at most the export timeout. The SDK waits for the flush synchronously: it does
    /// so on a blocking thread, so that the runtime's workers stay free to do the export.
    pub async fn shutdown(self) {
        let Some(provider) = self.0 else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot flush the last spans"),
            Err(error) => tracing::warn!(%error, "cannot flush the last spans"),
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides the default: `info`, and the NATS
/// client's own lines from `warn` (its connection events are logged, with the server and the
/// cause, by [`crate::nats_connect_options`]). Spans are exported only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; without it
/// no OpenTelemetry layer exists, so spans cost what `tracing` alone costs. Call it inside the
/// tokio runtime: the exporter batches on it.
pub fn init_telemetry(format: LogFormat, service: &'static str) -> Result<Tracing, Error> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    // Colours only on a terminal: not in `docker compose logs` or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let logs = match format {
        // JSON lines name no span's fields (`log_format`): the spans are not the logs' to
        // record, so that, without an exporter, a request's span costs nothing.
        LogFormat::Json => (logs.event_format(crate::log_format::JsonLines))
            .with_filter(filter.and(filter_fn(|metadata| !metadata.is_span())))
            .boxed(),
        LogFormat::Text => logs.with_filter(filter).boxed(),
    };
    let provider = endpoint_set().then(|| provider(service)).transpose()?;
    let spans = provider.as_ref().map(|provider| spans(provider, service));
    // JSON lines without an exporter use no span: a global filter (its interest cached per
    // callsite) makes every span a no-op, where per-layer filters still had the registry
    // create and drop each (5 % of ingest's CPU per webhook).
    let no_spans = (spans.is_none() && format == LogFormat::Json)
        .then(|| filter_fn(|metadata| !metadata.is_span()));
    // A second init (in-process tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(no_spans)
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Tracing(provider))
}

/// For a command-line tool: only the span exporter (its output is its own), and only when an
/// OTLP endpoint is set.
pub fn init_exporter_only(service: &'static str) -> Result<Tracing, Error> {
    if !endpoint_set() {
        return Ok(Tracing(None));
    }
    let provider = provider(service)?;
    let _ = (tracing_subscriber::registry())
        .with(spans(&provider, service))
        .try_init();
    Ok(Tracing(Some(provider)))
}

/// The layer that hands [`own_span`]s to the exporter.
fn spans<S>(provider: &SdkTracerProvider, service: &'static str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_filter(dynamic_filter_fn(own_span))
}

/// Spans exported are fluxgate's own, at info and above, whatever level the logs are kept at;
/// and the Kubernetes client's spans of the API calls made inside them (its `get`, `list`,
/// `patch`, at debug), not those of the Lease and the watches, which would be traces of their
/// own every few seconds.
fn own_span<S>(metadata: &tracing::Metadata<'_>, context: &Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    if metadata.target().starts_with("fluxgate") {
        return *metadata.level() <= tracing::Level::INFO;
    }
    metadata.is_span()
        && metadata.target().starts_with("kube_client")
        && (context.lookup_current())
            .is_some_and(|parent| parent.metadata().target().starts_with("fluxgate"))
}

fn endpoint_set() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// The first of these variables that is set.
fn env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| std::env::var(name).ok())
}

/// A tracer provider exporting to the configured endpoint: HTTP/protobuf by default, as the
/// specification says, or gRPC; sampled as `OTEL_TRACES_SAMPLER` says (read by the SDK), its
/// resource from `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, the service's own name
/// when the first is not set.
fn provider(service: &'static str) -> Result<SdkTracerProvider, Error> {
    let protocol = env(&[
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]);
    let endpoint = env(&[
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ])
    .unwrap_or_default();
    let exporter = match protocol.as_deref() {
        None | Some("http/protobuf") => {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| Error::Tracing(format!("cannot load the system's CA roots: {e}")))?
                .https_or_http()
                .enable_http1()
                .build();
            let timeout = env(&[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ])
            .and_then(|ms| ms.parse().ok())
            .map_or(EXPORT_TIMEOUT, Duration::from_millis);
            let client = opentelemetry_http::hyper::HyperClient::new(connector, timeout, None);
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .build()
        }
        Some("grpc") => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if endpoint.starts_with("https:") {
                builder = builder
                    .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
            }
            builder.build()
        }
        Some(other) => {
            return Err(Error::Tracing(format!(
                "OTLP protocol {other:?} is not supported (expected http/protobuf or grpc)"
            )));
        }
    }
    .map_err(|e| Error::Tracing(format!("cannot export spans to {endpoint:?}: {e}")))?;
    let resource = if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name(service).build()
    };
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .with_resource(resource)
        .build())
}

/// How long one export may take, unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise: past it
/// the batch is dropped, never a webhook delayed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
