//! Prometheus metrics of the dispatcher.

use std::time::Duration;

use fluxgate_shared::TraceExemplar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AckLabels {
    ack: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    outcomes: Family<OutcomeLabels, Counter>,
    coalesced: Counter,
    patches: Family<ResultLabels, Counter>,
    patch_duration: Histogram,
    webhook_to_patch: HistogramWithExemplars<TraceExemplar>,
    webhook_to_handled: HistogramWithExemplars<TraceExemplar>,
    pending: Gauge,
    leader: Gauge,
    watch_caches: Gauge,
    ack_failures: Family<AckLabels, Counter>,
    outcome_retries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fluxgate_dispatcher");
        let outcomes = Family::default();
        registry.register(
            "outcomes",
            "Outcome events recorded, by type",
            outcomes.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced_events",
            "Deliveries folded into another delivery's patch",
            coalesced.clone(),
        );
        let patches = Family::default();
        registry.register(
            "patches",
            "Patch attempts by result (patched, retry, failed)",
            patches.clone(),
        );
        let patch_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "patch_duration_seconds",
            "Time of one patch attempt",
            patch_duration.clone(),
        );
        let webhook_to_patch = HistogramWithExemplars::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "webhook_to_patch_seconds",
            "Time from the webhook's arrival at ingest to its target's patch",
            webhook_to_patch.clone(),
        );
        // 0.1 s to ~14 min: controllers take seconds to minutes.
        let webhook_to_handled = HistogramWithExemplars::new(exponential_buckets(0.1, 2.0, 14));
        registry.register(
            "webhook_to_handled_seconds",
            "Time from the webhook's arrival at ingest to its target's controller handling the request",
            webhook_to_handled.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "consumer_pending",
            "Deliveries stored but not yet consumed",
            pending.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease and consumes",
            leader.clone(),
        );
        let watch_caches = Gauge::default();
        registry.register(
            "watch_caches",
            "Watch caches open: one per kind and namespace that Receivers name",
            watch_caches.clone(),
        );
        let ack_failures = Family::default();
        registry.register(
            "ack_failures",
            "Acknowledgements that could not be sent to JetStream, by kind (ack, nak, term, progress)",
            ack_failures.clone(),
        );
        let outcome_retries = Counter::default();
        registry.register(
            "outcome_retries",
            "Attempts to store an outcome event that NATS did not take (each is retried)",
            outcome_retries.clone(),
        );
        Self {
            registry,
            outcomes,
            outcome_retries,
            coalesced,
            patches,
            patch_duration,
            webhook_to_patch,
            webhook_to_handled,
            pending,
            leader,
            watch_caches,
            ack_failures,
        }
    }
}

impl Metrics {
    pub fn outcome(&self, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn outcome_retried(&self) {
        self.outcome_retries.inc();
    }

    pub fn ack_failed(&self, ack: &'static str) {
        self.ack_failures.get_or_create(&AckLabels { ack }).inc();
    }

    pub fn coalesced(&self, folded: usize) {
        self.coalesced.inc_by(u64::try_from(folded).unwrap_or(0));
    }

    pub fn patch(&self, result: &'static str, elapsed: Duration) {
        self.patches.get_or_create(&ResultLabels { result }).inc();
        self.patch_duration.observe(elapsed.as_secs_f64());
    }

    pub fn webhook_to_patch(&self, elapsed: Duration) {
        // In the patch's span, the handled in the confirmation's: their sampled trace becomes
        // the bucket's exemplar.
        let exemplar = fluxgate_shared::current_exemplar();
        (self.webhook_to_patch).observe(elapsed.as_secs_f64(), exemplar, None);
    }

    pub fn webhook_to_handled(&self, elapsed: Duration) {
        let exemplar = fluxgate_shared::current_exemplar();
        (self.webhook_to_handled).observe(elapsed.as_secs_f64(), exemplar, None);
    }

    pub fn set_pending(&self, pending: u64) {
        self.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// The gauge the watch caches keep current.
    pub fn watch_caches(&self) -> Gauge {
        self.watch_caches.clone()
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
