//! Reconcile confirmation: after a patch, the target is watched until its controller reports
//! the request handled -- `status.lastHandledReconcileAt` equal to the value written, or a later
//! time -- and `handled` is recorded for each delivery of the batch with its webhook-to-handled
//! latency; `not_handled` when that does not happen within the confirm timeout (a suspended
//! target, a controller that is down). Best effort: a restart forgets confirmations under way.
//! The scopes' watch caches (shared with resolution) tell of the changes: no API call of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

use chrono::{DateTime, Utc};
use kube::api::DynamicObject;
use tokio::sync::oneshot;

use crate::cache::Scope;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::outcome::Recorder;
use crate::targets::{Refusal, Resolver, Target, describe};
use fluxgate_shared::contract::Event;

pub struct Confirmer {
    pub resolver: Arc<Resolver>,
    pub waiting: Arc<Waiting>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Zero turns confirmation off.
    pub timeout: Duration,
}

impl Confirmer {
    /// Confirms in the background that `requested_at`, just written on `target`, is handled.
    pub fn spawn(
        self: &Arc<Self>,
        target: Target,
        requested_at: String,
        deliveries: Vec<Delivery>,
        span: tracing::Span,
    ) {
        if self.timeout.is_zero() {
            return;
        }
        let this = self.clone();
        tokio::spawn(
            async move { this.confirm(target, requested_at, deliveries).await }.instrument(span),
        );
    }

    async fn confirm(&self, target: Target, requested_at: String, deliveries: Vec<Delivery>) {
        let outcome =
            tokio::time::timeout(self.timeout, self.handled(&target, &requested_at)).await;
        let now = Utc::now();
        // The trace's last span says how it ended, and how long after the first webhook.
        let span = tracing::Span::current();
        match &outcome {
            Ok(Ok(handled_at)) => {
                span.record("fluxgate.result", "handled");
                span.record("fluxgate.handled_at", handled_at.as_str());
            }
            _ => {
                span.record("fluxgate.result", "not_handled");
            }
        }
        let first_received = deliveries.iter().filter_map(|d| d.meta.received_at).min();
        if let (Ok(Ok(_)), Some(received)) = (&outcome, first_received) {
            span.record(
                "fluxgate.webhook_to_handled_ms",
                (now - received).num_milliseconds(),
            );
        }
        for delivery in &deliveries {
            let event = match &outcome {
                Ok(Ok(handled_at)) => {
                    let latency = delivery.meta.received_at.map(|received| now - received);
                    if let Some(latency) = latency {
                        self.metrics
                            .webhook_to_handled(latency.to_std().unwrap_or_default());
                    }
                    Event::Handled {
                        target: target.clone(),
                        handled_at: handled_at.clone(),
                        latency_ms: latency.map(|l| l.num_milliseconds()),
                    }
                }
                Ok(Err(reason)) => Event::NotHandled {
                    target: target.clone(),
                    reason: reason.clone(),
                },
                Err(_) => Event::NotHandled {
                    target: target.clone(),
                    reason: format!(
                        "status.lastHandledReconcileAt did not reach {requested_at} within {:?}: \
                         is the target suspended, or its controller down?",
                        self.timeout
                    ),
                },
            };
            self.recorder.record(delivery, event).await;
        }
    }

    /// Waits until `target` reports `requested_at` (or later) handled, as its scope's cache
    /// sees it; the value it reports.
    async fn handled(&self, target: &Target, requested_at: &str) -> Result<String, String> {
        let resource = self
            .resolver
            .api_resource(&target.api_version, &target.kind)
            .await
            .map_err(|e| describe(&e))?;
        let scope = Scope::of(target);
        let cache = match self.resolver.caches().synced(&scope, &resource).await {
            Ok(cache) => cache,
            Err(Refusal::Permanent(reason)) => return Err(reason),
            Err(Refusal::Transient(error)) => return Err(describe(&error)),
        };
        // Waiting first, then a look at the cache: an event stored in between is seen by one
        // of the two, never by neither.
        let handled = self.waiting.add(&scope, &target.name, requested_at);
        if let Some(object) = cache.get(&target.name) {
            self.waiting.seen(&scope, &object);
        }
        let answer = handled.await;
        // The cache is held until the answer: dropping it would end the watch it waits on.
        drop(cache);
        answer.map_err(|_| "the watch of the target ended".to_owned())
    }
}

/// A confirmation waiting for one object's `status.lastHandledReconcileAt`.
struct Waiter {
    requested_at: String,
    done: oneshot::Sender<String>,
}

/// Confirmations under way, by scope and object name; the caches tell it of every object they
/// see.
#[derive(Default)]
pub struct Waiting(Mutex<HashMap<(Scope, String), Vec<Waiter>>>);

impl Waiting {
    fn add(&self, scope: &Scope, name: &str, requested_at: &str) -> oneshot::Receiver<String> {
        let (done, handled) = oneshot::channel();
        let mut waiting = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let waiters = waiting.entry((scope.clone(), name.to_owned())).or_default();
        // Confirmations that timed out leave their waiters here until the next one for the object.
        waiters.retain(|w| !w.done.is_closed());
        waiters.push(Waiter {
            requested_at: requested_at.to_owned(),
            done,
        });
        handled
    }

    /// Answers the waiters of `object` whose request it reports handled.
    pub fn seen(&self, scope: &Scope, object: &DynamicObject) {
        let Some(handled) = object.data["status"]["lastHandledReconcileAt"].as_str() else {
            return;
        };
        let Some(name) = object.metadata.name.as_deref() else {
            return;
        };
        let mut waiting = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (scope.clone(), name.to_owned());
        let Some(waiters) = waiting.get_mut(&key) else {
            return;
        };
        for waiter in std::mem::take(waiters) {
            if is_handled(handled, &waiter.requested_at) {
                let _ = waiter.done.send(handled.to_owned());
            } else if !waiter.done.is_closed() {
                waiters.push(waiter);
            }
        }
        if waiters.is_empty() {
            waiting.remove(&key);
        }
    }
}

/// Whether a controller that reports `handled` has handled `requested`: the same value, or,
/// both being times, a later one (a newer request handled covers the older).
fn is_handled(handled: &str, requested: &str) -> bool {
    let time = |s: &str| DateTime::parse_from_rfc3339(s).ok();
    handled == requested || matches!((time(handled), time(requested)), (Some(h), Some(r)) if h >= r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_value_or_a_later_time_is_handled() {
        let ours = "2026-11-24T10:00:00.000000001Z";
        assert!(is_handled(ours, ours));
        assert!(
            is_handled("2026-11-24T10:00:01Z", ours),
            "Flux trims trailing zeros"
        );
        assert!(!is_handled("2026-11-24T09:59:59.9Z", ours));
        assert!(is_handled("manual", "manual"));
        assert!(!is_handled("manual", ours) && !is_handled(ours, "manual"));
    }
}
