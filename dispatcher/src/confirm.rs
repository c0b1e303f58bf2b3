//! Reconcile confirmation: after a patch, the target is watched until its controller reports
//! the request handled -- `status.lastHandledReconcileAt` equal to the value written, or a later
//! time -- and `handled` is recorded for each delivery of the batch with its webhook-to-handled
//! latency; `not_handled` when that does not happen within the confirm timeout (a suspended
//! target, a controller that is down). Best effort: a restart forgets confirmations under way.
//! One watch per kind and namespace serves every confirmation there, not one per target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::outcome::Recorder;
use crate::targets::{Resolver, Target, describe};
use fluxgate_shared::contract::Event;

/// Watches open at once: one per kind and namespace with confirmations under way. A
/// confirmation in a further scope waits for one to close (within its timeout).
const MAX_WATCHES: usize = 256;
/// How often a watch without events drops the confirmations that timed out.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

pub struct Confirmer {
    pub resolver: Arc<Resolver>,
    pub watches: Arc<Watches>,
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

    /// Waits until `target` reports `requested_at` (or later) handled, on the shared watch of
    /// its kind and namespace; the value it reports.
    async fn handled(&self, target: &Target, requested_at: &str) -> Result<String, String> {
        let (done, handled) = oneshot::channel();
        let waiter = Waiter {
            requested_at: requested_at.to_owned(),
            done,
        };
        let scope = Scope {
            api_version: target.api_version.clone(),
            kind: target.kind.clone(),
            namespace: target.namespace.clone(),
        };
        // Known before the waiter is added, so that a scope opened is always watched.
        let resource = self
            .resolver
            .api_resource(&target.api_version, &target.kind)
            .await
            .map_err(|e| describe(&e))?;
        // A new scope waits for a free watch first: at most `MAX_WATCHES` at once.
        let permit = if self.watches.has(&scope) {
            None
        } else {
            let permit = self.watches.slots.clone().acquire_owned().await;
            Some(permit.map_err(|_| "shutting down".to_owned())?)
        };
        if let Some(started) = self.watches.wait(&scope, &target.name, waiter, permit) {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.resolver.client().clone(), &target.namespace, &resource);
            tokio::spawn(self.watches.clone().run(scope, api, started));
        }
        handled
            .await
            .map_err(|_| "the watch of the target ended".to_owned())
    }
}

/// Where a shared watch looks: one kind in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    api_version: String,
    kind: String,
    namespace: String,
}

/// A confirmation waiting for one object's `status.lastHandledReconcileAt`.
struct Waiter {
    requested_at: String,
    done: oneshot::Sender<String>,
}

/// Confirmations under way, by scope and object name.
type Waiting = HashMap<String, Vec<Waiter>>;

/// One watch per scope, shared by every confirmation waiting in it, at most `MAX_WATCHES` at
/// once; a watch ends once no confirmation waits in its scope.
pub struct Watches {
    scopes: Mutex<HashMap<Scope, Waiting>>,
    slots: Arc<Semaphore>,
}

impl Watches {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            scopes: Mutex::default(),
            slots: Arc::new(Semaphore::new(MAX_WATCHES)),
        })
    }

    fn has(&self, scope: &Scope) -> bool {
        self.scopes.lock().is_ok_and(|s| s.contains_key(scope))
    }

    /// Adds a waiter; the permit when it opened the scope, whose watch the caller then starts.
    fn wait(
        &self,
        scope: &Scope,
        name: &str,
        waiter: Waiter,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<OwnedSemaphorePermit> {
        let Ok(mut scopes) = self.scopes.lock() else {
            return None;
        };
        let opened = !scopes.contains_key(scope);
        let waiting = scopes.entry(scope.clone()).or_default();
        waiting.entry(name.to_owned()).or_default().push(waiter);
        // Another confirmation may have opened it meanwhile: then the permit goes back.
        permit.filter(|_| opened)
    }

    /// Watches the scope's objects, answering its waiters, until none is left (those whose
    /// confirmation timed out are dropped as they are found).
    async fn run(
        self: Arc<Self>,
        scope: Scope,
        api: Api<DynamicObject>,
        _slot: OwnedSemaphorePermit,
    ) {
        let mut objects = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                object = objects.next() => match object {
                    Some(Ok(object)) => self.seen(&scope, &object),
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = prune.tick() => {}
            }
            if self.close_if_idle(&scope) {
                return;
            }
        }
        // The stream ended: its waiters hear that their watch did.
        if let Ok(mut scopes) = self.scopes.lock() {
            scopes.remove(&scope);
        }
    }

    /// Answers the waiters of `object` whose request it reports handled.
    fn seen(&self, scope: &Scope, object: &DynamicObject) {
        let Some(handled) = object.data["status"]["lastHandledReconcileAt"].as_str() else {
            return;
        };
        let (Some(name), Ok(mut scopes)) = (object.metadata.name.as_deref(), self.scopes.lock())
        else {
            return;
        };
        let Some(waiters) = scopes.get_mut(scope).and_then(|w| w.get_mut(name)) else {
            return;
        };
        for waiter in std::mem::take(waiters) {
            if is_handled(handled, &waiter.requested_at) {
                let _ = waiter.done.send(handled.to_owned());
            } else {
                waiters.push(waiter);
            }
        }
    }

    /// Drops waiters that stopped waiting; ends the scope (true) when none is left.
    fn close_if_idle(&self, scope: &Scope) -> bool {
        let Ok(mut scopes) = self.scopes.lock() else {
            return true;
        };
        let Some(waiting) = scopes.get_mut(scope) else {
            return true;
        };
        waiting.retain(|_, waiters| {
            waiters.retain(|w| !w.done.is_closed());
            !waiters.is_empty()
        });
        let idle = waiting.is_empty();
        if idle {
            scopes.remove(scope);
        }
        idle
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
