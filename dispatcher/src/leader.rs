//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go does it: read the
//! Lease, then create it or replace it under its resourceVersion, so that of two contenders
//! exactly one write wins (the other gets 409). A holder that stops renewing for the lease
//! duration -- measured on this replica's own clock from when the record last changed, so clock
//! skew between nodes does not matter -- is replaced; a graceful shutdown releases at once.

use std::time::Duration;

use fluxgate_shared::within_deadline;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long after another's lease runs out a standby looks again.
const EXPIRY_MARGIN: Duration = Duration::from_millis(10);

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease's resourceVersion when we last saw it change, and when that was.
    observed: Option<(String, Instant)>,
    /// When another's lease runs out unless renewed: a standby looks again then, not a retry
    /// period later.
    expires: Option<Instant>,
}

fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: None,
            expires: None,
        }
    }

    /// Runs until `stop` turns true, publishing whether this replica leads; releases the
    /// Lease on the way out if it holds it.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let retry_period = self.duration / 3;
        let mut last_renewal: Option<Instant> = None;
        loop {
            let leads = match self.try_acquire_or_renew().await {
                Ok(leads) => leads,
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the Lease");
                    // Without an answer, keep leading only while our last renewal still holds.
                    last_renewal.is_some_and(|t| t.elapsed() < self.duration)
                }
            };
            if leads {
                last_renewal = Some(Instant::now());
            }
            leading.send_if_modified(|current| {
                let changed = *current != leads;
                if changed {
                    tracing::info!(identity = %self.identity, leads, "leadership changed");
                }
                *current = leads;
                changed
            });
            let next = match self.expires {
                // Just past the expiry: it is taken only once strictly over.
                Some(at) if !leads => (at + EXPIRY_MARGIN).min(Instant::now() + retry_period),
                _ => Instant::now() + retry_period,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if *leading.borrow() {
            match self.release().await {
                Ok(()) => tracing::info!(identity = %self.identity, "lease released"),
                Err(error) => tracing::warn!(%error, "cannot release the lease"),
            }
            leading.send_replace(false);
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs())
                    .unwrap_or(i32::MAX)
                    .max(1),
            ),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = within_deadline(self.api.get_opt(&self.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match within_deadline(self.api.create(&PostParams::default(), &lease)).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(error) if conflict(&error) => Ok(false),
                Err(error) => Err(error),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.duration);
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, seen)| seen.elapsed() > duration);
        self.expires = (!ours)
            .then_some(self.observed.as_ref().map(|(_, seen)| *seen + duration))
            .flatten();
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(acquired, transitions));
        match within_deadline(self.api.replace(&self.name, &PostParams::default(), &lease)).await {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(error) if conflict(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != version)
        {
            self.observed = Some((version, Instant::now()));
        }
    }

    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = within_deadline(self.api.get_opt(&self.name)).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        within_deadline(self.api.replace(&self.name, &PostParams::default(), &lease))
            .await
            .map(|_| ())
    }
}
