//! Outcome events: one JSON message in `FLUXGATE_OUTCOMES` per thing that happened to a
//! delivery, or to several deliveries of one receiver at once (a coalesced patch, a backlog's
//! dispatches), on `fluxgate.outcomes.<namespace>.<receiver>.<type>`. Delivery status, dead
//! letters and history are computed from these; nothing else is stored.
//!
//! Every event has `type`, `delivery` (id), `seq` (its stream sequence in FLUXGATE_DELIVERIES),
//! `receiver` (`namespace/name`) and `at` (RFC 3339 UTC, nanoseconds); `more` lists the other
//! deliveries (`delivery`, `seq`) the same happened to, when there are any. Plus by type:
//!
//! | type | fields |
//! |---|---|
//! | `dispatched` | `targets`: the resolved objects |
//! | `duplicate` | `of_seq`: the sequence that first carried this delivery |
//! | `coalesced` | `target`, `batch`, `size`: no longer written; `patched` carries `size` |
//! | `patched` | `target`, `requested_at` (the annotation value), `batch`, `size` (deliveries sharing the patch), `attempts` |
//! | `would_patch` | `target` (`--dry-run`) |
//! | `filtered_out` | `target`: a CEL filter of the receiver was false for it |
//! | `retrying` | `target`, `attempt`, `error`, `retry_in_ms` |
//! | `failed` | `target` (absent when the whole delivery failed), `reason` |
//! | `replayed` | `replay_seq` (the new message), `actor`: recorded on the original |
//! | `handled` | `target`, `handled_at` (its `status.lastHandledReconcileAt`), `latency_ms` |
//! | `not_handled` | `target`, `reason`: not confirmed within the confirm timeout |
//!
//! Readers tolerate types they do not know (a newer writer's): they read as [`Event::Unknown`].

use async_nats::jetstream::message::PublishMessage;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{DeliveryMeta, outcome_subject};
use crate::error::Error;

/// One object to annotate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {}/{}",
            self.api_version, self.kind, self.namespace, self.name
        )
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Dispatched {
        targets: Vec<Target>,
    },
    Duplicate {
        of_seq: u64,
    },
    /// Written by earlier versions, once per delivery of a coalesced patch; `patched` now
    /// carries the batch's `size` instead, one message fewer per delivery.
    Coalesced {
        target: Target,
        batch: String,
        size: usize,
    },
    Patched {
        target: Target,
        requested_at: String,
        batch: String,
        /// How many deliveries the patch carried: one unless coalesced (read as one when absent,
        /// as in the events of earlier versions).
        #[serde(default = "one")]
        size: usize,
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
    /// A type this reader does not know, written by a newer fluxgate.
    #[serde(other)]
    Unknown,
}

impl Event {
    /// The `type` field, the last subject token and the `outcome` metric label.
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
            Self::Unknown => "unknown",
        }
    }

    /// The one target the event is about, if it is about one.
    pub fn target(&self) -> Option<&Target> {
        match self {
            Self::Coalesced { target, .. }
            | Self::Patched { target, .. }
            | Self::WouldPatch { target }
            | Self::FilteredOut { target }
            | Self::Retrying { target, .. }
            | Self::Handled { target, .. }
            | Self::NotHandled { target, .. } => Some(target),
            Self::Failed { target, .. } => target.as_ref(),
            Self::Dispatched { .. }
            | Self::Duplicate { .. }
            | Self::Replayed { .. }
            | Self::Unknown => None,
        }
    }
}

/// `size` of a `patched` event that does not say it.
fn one() -> usize {
    1
}

/// A delivery an event happened to besides the first of its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concerned {
    pub delivery: String,
    pub seq: u64,
}

/// An event with the deliveries it is about: the message stored in `FLUXGATE_OUTCOMES`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub event: Event,
    pub delivery: String,
    pub seq: u64,
    /// The other deliveries, of the same receiver, the event happened to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Concerned>,
    /// `namespace/name`.
    pub receiver: String,
    /// RFC 3339 UTC with nanoseconds.
    pub at: String,
}

impl Outcome {
    /// `event`, happening now, to the delivery stored at `seq`.
    pub fn now(delivery: &DeliveryMeta, seq: u64, event: Event) -> Self {
        Self {
            event,
            delivery: delivery.id.clone(),
            seq,
            more: Vec::new(),
            receiver: format!("{}/{}", delivery.namespace, delivery.receiver),
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
        }
    }

    /// The event as it concerns each of its deliveries, the first first: what readers
    /// (history, tail) show.
    pub fn per_delivery(self) -> Vec<Outcome> {
        let mut each = Vec::with_capacity(1 + self.more.len());
        let Self {
            event,
            delivery,
            seq,
            more,
            receiver,
            at,
        } = self;
        let one = |delivery, seq| Outcome {
            event: event.clone(),
            delivery,
            seq,
            more: Vec::new(),
            receiver: receiver.clone(),
            at: at.clone(),
        };
        each.push(one(delivery, seq));
        each.extend(more.into_iter().map(|c| one(c.delivery, c.seq)));
        each
    }

    /// When it happened, if the writer said so readably.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// What makes this event itself: its delivery's stream sequence (and which more it
    /// concerns), its type, and what it is about (the target, the attempt, the replay). Its
    /// message's `Nats-Msg-Id`, so that an event stored again -- a record retried after a lost
    /// ack, a delivery handled again after a crash -- is kept once.
    pub fn message_id(&self) -> String {
        let about = match &self.event {
            Event::Coalesced { target, .. }
            | Event::Patched { target, .. }
            | Event::WouldPatch { target }
            | Event::FilteredOut { target }
            | Event::Handled { target, .. }
            | Event::NotHandled { target, .. } => target.to_string(),
            Event::Retrying {
                target, attempt, ..
            } => format!("{target} #{attempt}"),
            Event::Failed { target, .. } => {
                target.as_ref().map(Target::to_string).unwrap_or_default()
            }
            Event::Replayed { replay_seq, .. } => replay_seq.to_string(),
            Event::Dispatched { .. } | Event::Duplicate { .. } | Event::Unknown => String::new(),
        };
        // The others by a digest of their sequences: a retry of the same message keeps its id,
        // another set of deliveries starting at the same one gets another.
        let more = if self.more.is_empty() {
            String::new()
        } else {
            let mut digest = sha2::Sha256::new();
            for concerned in &self.more {
                digest.update(concerned.seq.to_be_bytes());
            }
            format!("+{}", hex::encode(&digest.finalize()[..8]))
        };
        format!("{}{more}:{}:{about}", self.seq, self.event.label())
    }

    /// Stores the event and waits for the stream's ack, so that history is never behind what
    /// it describes.
    pub async fn publish(&self, jetstream: &async_nats::jetstream::Context) -> Result<u64, Error> {
        let payload = serde_json::to_vec(self).map_err(|e| Error::Encode(e.to_string()))?;
        // `receiver` is `namespace/name`; neither part may hold a `/`.
        let (namespace, name) = self.receiver.split_once('/').unwrap_or_default();
        let subject = outcome_subject(namespace, name, self.event.label());
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(self.message_id());
        let ack = jetstream
            .send_publish(subject, message)
            .await
            .map_err(Error::nats)?
            .await
            .map_err(Error::nats)?;
        Ok(ack.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(name: &str) -> Target {
        Target {
            api_version: "source.toolkit.fluxcd.io/v1".into(),
            kind: "GitRepository".into(),
            namespace: "flux-system".into(),
            name: name.into(),
        }
    }

    /// One of every variant but `Unknown`, which no writer writes.
    fn every_event() -> Vec<Event> {
        vec![
            Event::Dispatched {
                targets: vec![target("a"), target("b")],
            },
            Event::Duplicate { of_seq: 7 },
            Event::Coalesced {
                target: target("a"),
                batch: "b-1".into(),
                size: 3,
            },
            Event::Patched {
                target: target("a"),
                requested_at: "2026-11-24T00:00:00Z".into(),
                batch: "b-1".into(),
                size: 3,
                attempts: 2,
            },
            Event::WouldPatch {
                target: target("a"),
            },
            Event::FilteredOut {
                target: target("a"),
            },
            Event::Retrying {
                target: target("a"),
                attempt: 1,
                error: "503".into(),
                retry_in_ms: 250,
            },
            Event::Failed {
                target: Some(target("a")),
                reason: "404".into(),
            },
            Event::Failed {
                target: None,
                reason: "not in the catalog".into(),
            },
            Event::Replayed {
                replay_seq: 9,
                actor: "alice".into(),
            },
            Event::Handled {
                target: target("a"),
                handled_at: "2026-11-24T00:00:01Z".into(),
                latency_ms: Some(1200),
            },
            Event::Handled {
                target: target("a"),
                handled_at: "2026-11-24T00:00:01Z".into(),
                latency_ms: None,
            },
            Event::NotHandled {
                target: target("a"),
                reason: "late".into(),
            },
        ]
    }

    #[test]
    fn an_event_stored_again_has_its_message_id_and_no_other_event_does() {
        let meta = DeliveryMeta {
            id: "d-1".into(),
            namespace: "flux-system".into(),
            receiver: "gh".into(),
            ..Default::default()
        };
        let ids = |seq| -> Vec<String> {
            let mut events = every_event();
            // Events that differ from every_event's only in their target or attempt.
            events.push(Event::Patched {
                target: target("b"),
                requested_at: "2026-11-24T00:00:00Z".into(),
                batch: "b-1".into(),
                size: 1,
                attempts: 1,
            });
            events.push(Event::Retrying {
                target: target("a"),
                attempt: 2,
                error: "503".into(),
                retry_in_ms: 500,
            });
            (events.into_iter())
                .map(|event| Outcome::now(&meta, seq, event).message_id())
                .collect()
        };
        let (first, again) = (ids(5), ids(5));
        assert_eq!(first, again, "retried: the same ids");
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        // The two `handled` of every_event differ only in their latency.
        assert_eq!(distinct.len(), first.len() - 1, "{first:#?}");
        assert!(
            ids(6).iter().all(|id| !distinct.contains(id)),
            "another delivery"
        );
    }

    #[test]
    fn every_variant_round_trips_with_its_type() {
        let events = every_event();
        let labels: std::collections::BTreeSet<_> = events.iter().map(Event::label).collect();
        assert_eq!(labels.len(), 11, "a variant is missing from the test");
        for event in events {
            let outcome = Outcome {
                event,
                delivery: "d-1".into(),
                seq: 42,
                more: Vec::new(),
                receiver: "flux-system/gh".into(),
                at: "2026-11-24T00:00:00.000000001Z".into(),
            };
            let json = serde_json::to_value(&outcome).expect("serialise");
            assert_eq!(json["type"], outcome.event.label());
            assert_eq!(json["seq"], 42);
            let back: Outcome = serde_json::from_value(json).expect("deserialise");
            assert_eq!(back, outcome);
        }
    }

    #[test]
    fn events_serialise_flat_as_stored() {
        let outcome = Outcome {
            event: Event::Duplicate { of_seq: 7 },
            delivery: "d-1".into(),
            seq: 42,
            more: Vec::new(),
            receiver: "flux-system/gh".into(),
            at: "t".into(),
        };
        assert_eq!(
            serde_json::to_value(&outcome).expect("serialise"),
            json!({"type": "duplicate", "of_seq": 7, "delivery": "d-1", "seq": 42, "receiver": "flux-system/gh", "at": "t"})
        );
        let failed = Event::Failed {
            target: None,
            reason: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(failed).expect("serialise"),
            json!({"type": "failed", "reason": "r"})
        );
    }

    #[test]
    fn an_event_of_several_deliveries_reads_as_one_per_delivery() {
        let stored = json!({
            "type": "patched", "target": target("a"), "requested_at": "v", "batch": "b",
            "size": 3, "attempts": 1, "delivery": "d-1", "seq": 5, "receiver": "n/r", "at": "t",
            "more": [{"delivery": "d-2", "seq": 6}, {"delivery": "d-3", "seq": 9}],
        });
        let outcome: Outcome = serde_json::from_value(stored.clone()).expect("read");
        assert_eq!(serde_json::to_value(&outcome).expect("write"), stored);
        let first_only = Outcome {
            more: Vec::new(),
            ..outcome.clone()
        };
        assert_ne!(
            outcome.message_id(),
            first_only.message_id(),
            "another message"
        );
        let others = Outcome {
            more: vec![
                Concerned {
                    delivery: "d-2".into(),
                    seq: 6,
                },
                Concerned {
                    delivery: "d-4".into(),
                    seq: 10,
                },
            ],
            ..outcome.clone()
        };
        assert_ne!(
            outcome.message_id(),
            others.message_id(),
            "other deliveries"
        );
        assert_eq!(
            outcome.message_id(),
            outcome.clone().message_id(),
            "retried"
        );
        let each = outcome.per_delivery();
        let concerned: Vec<(&str, u64)> = (each.iter())
            .map(|o| (o.delivery.as_str(), o.seq))
            .collect();
        assert_eq!(concerned, [("d-1", 5), ("d-2", 6), ("d-3", 9)]);
        assert!(
            each.iter()
                .all(|o| o.more.is_empty() && o.event == first_only.event)
        );
        assert_eq!(each[0], first_only);
    }

    #[test]
    fn an_unknown_future_type_is_read_as_unknown() {
        let stored = json!({
            "type": "rerouted", "via": "elsewhere",
            "delivery": "d-1", "seq": 5, "receiver": "n/r", "at": "2026-11-24T00:00:00Z"
        });
        let outcome: Outcome = serde_json::from_value(stored).expect("tolerated");
        assert_eq!(outcome.event, Event::Unknown);
        assert_eq!((outcome.seq, outcome.delivery.as_str()), (5, "d-1"));
        assert!(outcome.time().is_some());
    }

    #[test]
    fn target_is_the_one_the_event_is_about() {
        assert_eq!(
            Event::Patched {
                target: target("a"),
                requested_at: String::new(),
                batch: String::new(),
                size: 1,
                attempts: 1
            }
            .target(),
            Some(&target("a"))
        );
        assert_eq!(Event::Duplicate { of_seq: 1 }.target(), None);
    }
}
