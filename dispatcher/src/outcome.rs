//! Outcome events: one JSON message in `FLUXGATE_OUTCOMES` per thing that happened to a
//! delivery, on `fluxgate.outcomes.<namespace>.<receiver>.<type>`. Delivery status, dead letters and
//! history are computed from these; nothing else is stored.
//!
//! Every event has `type`, `delivery` (id), `seq` (its stream sequence in FLUXGATE_DELIVERIES),
//! `receiver` (`namespace/name`) and `at` (RFC 3339 UTC, nanoseconds), plus by type:
//!
//! | type | fields |
//! |---|---|
//! | `dispatched` | `targets`: the resolved objects |
//! | `duplicate` | `of_seq`: the sequence that first carried this delivery |
//! | `coalesced` | `target`, `batch`, `size`: deliveries sharing one patch |
//! | `patched` | `target`, `requested_at` (the annotation value), `batch`, `attempts` |
//! | `would_patch` | `target` (`--dry-run`) |
//! | `filtered_out` | `target`: a CEL filter of the receiver was false for it |
//! | `retrying` | `target`, `attempt`, `error`, `retry_in_ms` |
//! | `failed` | `target` (absent when the whole delivery failed), `reason` |
//! | `replayed` | `replay_seq` (the new message), `actor`: recorded on the original |
//! | `handled` | `target`, `handled_at` (its `status.lastHandledReconcileAt`), `latency_ms` |
//! | `not_handled` | `target`, `reason`: not confirmed within the confirm timeout |

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use chrono::{SecondsFormat, Utc};
use fluxgate_shared::contract;
use serde::Serialize;

use crate::delivery::Delivery;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::targets::Target;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Dispatched {
        targets: Vec<Target>,
    },
    Duplicate {
        of_seq: u64,
    },
    Coalesced {
        target: Target,
        batch: String,
        size: usize,
    },
    Patched {
        target: Target,
        requested_at: String,
        batch: String,
        attempts: u32,
    },
    WouldPatch {
        target: Target,
    },
    FilteredOut {
        target: Target,
    },
    Retrying {
        target: Target,
        attempt: u32,
        error: String,
        retry_in_ms: u64,
    },
    Failed {
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<Target>,
        reason: String,
    },
    Replayed {
        replay_seq: u64,
        actor: String,
    },
    Handled {
        target: Target,
        handled_at: String,
        /// From the webhook's receipt.
        latency_ms: Option<i64>,
    },
    NotHandled {
        target: Target,
        reason: String,
    },
}

impl Event {
    /// The `outcome` label of `fluxgate_dispatcher_outcomes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Dispatched { .. } => "dispatched",
            Self::Duplicate { .. } => "duplicate",
            Self::Coalesced { .. } => "coalesced",
            Self::Patched { .. } => "patched",
            Self::WouldPatch { .. } => "would_patch",
            Self::FilteredOut { .. } => "filtered_out",
            Self::Retrying { .. } => "retrying",
            Self::Failed { .. } => "failed",
            Self::Replayed { .. } => "replayed",
            Self::Handled { .. } => "handled",
            Self::NotHandled { .. } => "not_handled",
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(flatten)]
    event: &'a Event,
    delivery: &'a str,
    seq: u64,
    receiver: String,
    at: String,
}

/// Writes outcome events, waiting for JetStream's ack so that history is never behind the
/// acknowledgement of the delivery it describes.
#[derive(Clone)]
pub struct Recorder {
    jetstream: jetstream::Context,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Creates or updates the outcomes stream.
    pub async fn provision(
        jetstream: jetstream::Context,
        metrics: Arc<Metrics>,
        replicas: usize,
        max_age: Duration,
        max_bytes: i64,
    ) -> Result<Self, Error> {
        let config = stream::Config {
            name: contract::OUTCOMES_STREAM.into(),
            subjects: vec![format!("{}.>", contract::OUTCOMES_SUBJECT_PREFIX)],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age,
            max_bytes,
            allow_direct: true,
            ..Default::default()
        };
        jetstream
            .get_or_create_stream(config.clone())
            .await
            .map_err(Error::nats)?;
        if let Err(error) = jetstream.update_stream(&config).await {
            tracing::warn!(%error, "cannot update the outcomes stream's configuration");
        }
        Ok(Self::new(jetstream, metrics))
    }

    /// A recorder for a stream that exists (the CLI's), leaving its configuration alone.
    pub fn new(jetstream: jetstream::Context, metrics: Arc<Metrics>) -> Self {
        Self { jetstream, metrics }
    }

    /// Stores the event (and counts it).
    pub async fn record(&self, delivery: &Delivery, event: Event) {
        self.metrics.outcome(event.label());
        let envelope = Envelope {
            event: &event,
            delivery: &delivery.id,
            seq: delivery.sequence,
            receiver: format!("{}/{}", delivery.namespace, delivery.receiver),
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
        };
        let payload = match serde_json::to_vec(&envelope) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "cannot encode an outcome");
                return;
            }
        };
        let subject =
            contract::outcome_subject(&delivery.namespace, &delivery.receiver, event.label());
        let published = async {
            self.jetstream
                .publish(subject, payload.into())
                .await
                .map_err(Error::nats)?
                .await
                .map_err(Error::nats)
        };
        // An outcome that cannot be stored is logged; the delivery's own handling goes on.
        if let Err(error) = published.await {
            tracing::error!(%error, delivery = %delivery.id, outcome = event.label(), "cannot record an outcome");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat_with_their_type() {
        let delivery = Delivery {
            sequence: 42,
            id: "d-1".into(),
            from_sender: true,
            namespace: "flux-system".into(),
            receiver: "gh".into(),
            event: Some("push".into()),
            received_at: None,
            replay_of: None,
        };
        let event = Event::Duplicate { of_seq: 7 };
        let envelope = Envelope {
            event: &event,
            delivery: &delivery.id,
            seq: delivery.sequence,
            receiver: "flux-system/gh".into(),
            at: "t".into(),
        };
        let json = serde_json::to_value(&envelope).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({"type": "duplicate", "of_seq": 7, "delivery": "d-1", "seq": 42, "receiver": "flux-system/gh", "at": "t"})
        );
        let failed = serde_json::to_value(Event::Failed {
            target: None,
            reason: "r".into(),
        })
        .expect("serialise");
        assert_eq!(failed, serde_json::json!({"type": "failed", "reason": "r"}));
    }
}
