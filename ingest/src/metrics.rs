//! Prometheus metrics of ingest: requests by receiver type and outcome, request and publish
//! latency, catalog reloads.

use std::time::Duration;

use fluxgate_shared::Error as CatalogError;
use fluxgate_shared::receivers::Catalog;

use fluxgate_shared::TraceExemplar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub receiver_type: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramWithExemplars<TraceExemplar>,
    publish_duration: Histogram,
    reloads: Family<ReloadLabels, Counter>,
    receivers: Gauge,
    receivers_not_ready: Gauge,
}

/// 0.25 ms to ~4 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_25, 2.0, 15)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fluxgate_ingest");
        let requests = Family::default();
        registry.register(
            "requests",
            "Webhook requests by receiver type and outcome",
            requests.clone(),
        );
        let request_duration = HistogramWithExemplars::new(latency_buckets());
        registry.register(
            "request_duration_seconds",
            "Time from request to response",
            request_duration.clone(),
        );
        let publish_duration = latency_histogram();
        registry.register(
            "publish_duration_seconds",
            "Time for JetStream to acknowledge a delivery",
            publish_duration.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "catalog_reloads",
            "Receiver catalog loads (start-up, file or cluster changes) by result",
            reloads.clone(),
        );
        let receivers = Gauge::default();
        registry.register("receivers", "Receivers served", receivers.clone());
        let receivers_not_ready = Gauge::default();
        registry.register(
            "receivers_not_ready",
            "Receivers that cannot serve (an invalid CEL expression): answered 503",
            receivers_not_ready.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            publish_duration,
            reloads,
            receivers,
            receivers_not_ready,
        }
    }
}

impl Metrics {
    pub fn request(&self, receiver_type: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                receiver_type,
                outcome,
            })
            .inc();
        // In the request's span: a sampled trace becomes the bucket's exemplar.
        let exemplar = fluxgate_shared::current_exemplar();
        (self.request_duration).observe(elapsed.as_secs_f64(), exemplar, None);
    }

    pub fn published(&self, elapsed: Duration) {
        self.publish_duration.observe(elapsed.as_secs_f64());
    }

    pub fn catalog_loaded(&self, catalog: &Catalog) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.receivers.set(gauge(catalog.len()));
        self.receivers_not_ready.set(gauge(catalog.not_ready()));
    }

    pub fn reload(&self, result: Result<&Catalog, &CatalogError>) {
        let label = match result {
            Ok(catalog) => {
                self.catalog_loaded(catalog);
                "ok"
            }
            Err(_) => "invalid",
        };
        self.reloads
            .get_or_create(&ReloadLabels { result: label })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
