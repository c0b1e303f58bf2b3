//! The reconcile request: a JSON merge patch of `reconcile.fluxcd.io/requestedAt` on a target,
//! retried with capped exponential backoff and jitter while the error is transient (5xx, 429,
//! timeouts, connection errors) and up to a deadline; a permanent error (404, 403, 422) fails at
//! once. Every attempt's result is recorded for each delivery of the batch.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::coalesce::RunBatch;
use crate::confirm::Confirmer;
use crate::inflight::InFlight;
use crate::metrics::Metrics;
use crate::outcome::Recorder;
use crate::targets::{Resolver, Target, describe, is_permanent};
use fluxgate_shared::contract::Event;

/// The annotation Flux watches.
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// One attempt may take this long before it counts as a transient failure.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause between attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

pub struct Patcher {
    pub resolver: Arc<Resolver>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub confirmer: Arc<Confirmer>,
    pub retry_deadline: Duration,
    pub max_backoff: Duration,
}

enum Attempt {
    Patched,
    Permanent(String),
    Transient(String),
}

impl RunBatch<Arc<InFlight>> for Patcher {
    /// Patches `target` once for the whole batch, retrying as needed, records the outcome for
    /// every delivery and marks the target done for each.
    async fn run_batch(&self, target: &Target, requested_at: &str, batch: Vec<Arc<InFlight>>) {
        let batch_id = uuid::Uuid::now_v7().to_string();
        // One span for the reconcile request, in the trace of its first delivery, linked to
        // every delivery it carries; the API calls (a `patch` each attempt) and confirmation are
        // its children, retries its events.
        let span = tracing::info_span!(
            "reconcile",
            otel.kind = "client",
            http.request.method = "PATCH",
            fluxgate.target = %target,
            fluxgate.requested_at = requested_at,
            fluxgate.batch = %batch_id,
            fluxgate.batch_size = batch.len(),
            fluxgate.attempts = tracing::field::Empty,
            fluxgate.result = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if let Some(first) = batch.first().and_then(|d| d.trace.as_deref()) {
            fluxgate_shared::continue_trace(&span, first);
        }
        for trace in batch.iter().filter_map(|d| d.trace.as_deref()) {
            fluxgate_shared::link_to(&span, trace);
        }
        self.patch_batch(target, requested_at, batch, batch_id, &span)
            .instrument(span.clone())
            .await;
    }
}

impl Patcher {
    async fn patch_batch(
        &self,
        target: &Target,
        requested_at: &str,
        batch: Vec<Arc<InFlight>>,
        batch_id: String,
        span: &tracing::Span,
    ) {
        if batch.len() > 1 {
            self.metrics.coalesced(batch.len() - 1);
        }
        let started = Instant::now();
        let mut attempt = 0u32;
        let final_event = loop {
            attempt += 1;
            let attempt_started = Instant::now();
            let result = self.attempt(target, requested_at).await;
            self.metrics
                .patch(result.label(), attempt_started.elapsed());
            match result {
                Attempt::Patched => {
                    break Event::Patched {
                        target: target.clone(),
                        requested_at: requested_at.to_owned(),
                        batch: batch_id.clone(),
                        size: batch.len(),
                        attempts: attempt,
                    };
                }
                Attempt::Permanent(reason) => {
                    break Event::Failed {
                        target: Some(target.clone()),
                        reason,
                    };
                }
                Attempt::Transient(error) => {
                    let backoff = backoff(attempt, self.max_backoff);
                    if started.elapsed() + backoff > self.retry_deadline {
                        let reason = format!(
                            "gave up after {attempt} attempts over {:?}: {error}",
                            started.elapsed()
                        );
                        break Event::Failed {
                            target: Some(target.clone()),
                            reason,
                        };
                    }
                    tracing::warn!(%target, attempt, %error, retry_in = ?backoff, "patch failed; retrying");
                    let event = Event::Retrying {
                        target: target.clone(),
                        attempt,
                        error: error.clone(),
                        retry_in_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    };
                    self.record_all(&batch, &event).await;
                    tokio::time::sleep(backoff).await;
                }
            }
        };
        span.record("fluxgate.result", final_event.label());
        if let Event::Failed { reason, .. } = &final_event {
            span.record("otel.status_code", "ERROR");
            tracing::error!(%target, %reason, "reconcile request failed");
        }
        if let Event::Patched { attempts, .. } = &final_event {
            span.record("fluxgate.attempts", attempts);
        }
        if matches!(final_event, Event::Patched { .. }) {
            let now = chrono::Utc::now();
            for received in batch.iter().filter_map(|d| d.delivery.meta.received_at) {
                self.metrics
                    .webhook_to_patch((now - received).to_std().unwrap_or_default());
            }
        }
        self.record_all(&batch, &final_event).await;
        if matches!(final_event, Event::Patched { .. }) {
            let deliveries = batch.iter().map(|d| d.delivery.clone()).collect();
            let confirming = tracing::info_span!(
                parent: span,
                "confirm",
                fluxgate.result = tracing::field::Empty,
                fluxgate.handled_at = tracing::field::Empty,
                fluxgate.webhook_to_handled_ms = tracing::field::Empty,
            );
            self.confirmer.spawn(
                target.clone(),
                requested_at.to_owned(),
                deliveries,
                confirming,
            );
        }
        futures::future::join_all(batch.iter().map(|d| d.target_done())).await;
    }

    /// Records one event for every delivery of a batch, stored together.
    async fn record_all(&self, batch: &[Arc<InFlight>], event: &Event) {
        (self.recorder)
            .record_all(batch.iter().map(|d| &d.delivery), event)
            .await;
    }

    async fn attempt(&self, target: &Target, requested_at: &str) -> Attempt {
        let patch = serde_json::json!({"metadata": {"annotations": {REQUESTED_AT: requested_at}}});
        let request = async {
            let resource = self
                .resolver
                .api_resource(&target.api_version, &target.kind)
                .await?;
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.resolver.client().clone(),
                &target.namespace,
                &*resource,
            );
            api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, request).await {
            Ok(Ok(_)) => Attempt::Patched,
            Ok(Err(error)) if is_permanent(&error) => Attempt::Permanent(describe(&error)),
            Ok(Err(error)) => Attempt::Transient(describe(&error)),
            Err(_) => Attempt::Transient(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        }
    }
}

impl Attempt {
    fn label(&self) -> &'static str {
        match self {
            Self::Patched => "patched",
            Self::Permanent(_) => "failed",
            Self::Transient(_) => "retry",
        }
    }
}

/// Capped exponential backoff with "equal jitter": between half and all of the doubled delay.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = doubled.min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_stays_under_the_cap() {
        let cap = Duration::from_secs(30);
        for attempt in 1..40 {
            let ceiling = FIRST_BACKOFF
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(cap);
            let b = backoff(attempt, cap);
            assert!(
                b >= ceiling / 2 && b <= ceiling,
                "attempt {attempt}: {b:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        assert!(backoff(30, cap) >= Duration::from_secs(15));
    }
}
