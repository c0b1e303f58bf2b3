//! Reconcile confirmation: after a patch, the target is watched until its controller reports
//! the request handled -- `status.lastHandledReconcileAt` equal to the value written, or a later
//! time -- and `handled` is recorded for each delivery of the batch with its webhook-to-handled
//! latency; `not_handled` when that does not happen within the confirm timeout (a suspended
//! target, a controller that is down). Best effort: a restart forgets confirmations under way.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::outcome::Recorder;
use crate::targets::{Resolver, Target, describe};
use fluxgate_shared::contract::Event;

pub struct Confirmer {
    pub resolver: Arc<Resolver>,
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
    ) {
        if self.timeout.is_zero() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.confirm(target, requested_at, deliveries).await });
    }

    async fn confirm(&self, target: Target, requested_at: String, deliveries: Vec<Delivery>) {
        let outcome =
            tokio::time::timeout(self.timeout, self.handled(&target, &requested_at)).await;
        let now = Utc::now();
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

    /// Watches `target` until it reports `requested_at` (or later) handled; the value it reports.
    async fn handled(&self, target: &Target, requested_at: &str) -> Result<String, String> {
        let resource = self
            .resolver
            .api_resource(&target.api_version, &target.kind)
            .await
            .map_err(|e| describe(&e))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.resolver.client().clone(), &target.namespace, &resource);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
        let mut objects = watcher::watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(object) = objects.next().await {
            let Ok(object) = object else { continue };
            if let Some(handled) = object.data["status"]["lastHandledReconcileAt"].as_str()
                && is_handled(handled, requested_at)
            {
                return Ok(handled.to_owned());
            }
        }
        Err("the watch of the target ended".into())
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
