//! Replays: a stored delivery published again on purpose, as a new message on the same subject
//! that references the original (`Fluxgate-Replay-Of-Seq`) and so bypasses deduplication, with
//! its own outcome trail; the original's trail records that, when and by whom it was replayed.
//! A dry run resolves the receiver and evaluates its filters as of now, and changes nothing.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::Stream};
use chrono::{SecondsFormat, Utc};
use fluxgate_shared::catalog::Catalog;
use fluxgate_shared::contract::{self, header};

use crate::delivery::Delivery;
use crate::error::Error;
use crate::history::message_at;
use crate::metrics::Metrics;
use crate::outcome::{Event, Recorder};
use crate::request::{self, Inputs};
use crate::targets::{Resolved, Resolver};

/// What a replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub delivery: String,
    pub seq: u64,
    pub replay_seq: u64,
}

pub struct Replayer {
    jetstream: jetstream::Context,
    deliveries: Stream,
    recorder: Recorder,
    actor: String,
}

impl Replayer {
    pub async fn new(jetstream: jetstream::Context, actor: String) -> Result<Self, Error> {
        let deliveries = jetstream
            .get_stream(contract::DELIVERIES_STREAM)
            .await
            .map_err(Error::nats)?;
        let recorder = Recorder::new(jetstream.clone(), Arc::new(Metrics::default()));
        Ok(Self {
            jetstream,
            deliveries,
            recorder,
            actor,
        })
    }

    /// The stored message `seq`, as a delivery with its headers and payload.
    async fn original(
        &self,
        seq: u64,
    ) -> Result<(Delivery, jetstream::message::StreamMessage), Error> {
        let message = message_at(&self.deliveries, seq)
            .await
            .map_err(|e| Error::NotFound(format!("no delivery #{seq}: {e}")))?;
        let delivery = Delivery::from_headers(seq, Some(&message.headers))?;
        Ok((delivery, message))
    }

    /// Publishes delivery `seq` again and records that on the original.
    pub async fn replay(&self, seq: u64) -> Result<Replayed, Error> {
        let (delivery, message) = self.original(seq).await?;
        let mut headers = HeaderMap::new();
        for (name, values) in message.headers.iter() {
            let name = name.to_string();
            if [
                header::NATS_MSG_ID,
                header::RECEIVED_AT,
                header::REPLAY_OF_SEQ,
                header::REPLAY_ACTOR,
            ]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&name))
            {
                continue;
            }
            for value in values {
                headers.append(name.as_str(), value.as_str());
            }
        }
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        headers.insert(header::RECEIVED_AT, now.as_str());
        headers.insert(header::REPLAY_OF_SEQ, seq.to_string().as_str());
        headers.insert(header::REPLAY_ACTOR, self.actor.as_str());
        // A message id of its own, so that JetStream's duplicate window keeps it too.
        let msg_id = format!("replay/{}", uuid::Uuid::now_v7());
        headers.insert(header::NATS_MSG_ID, msg_id.as_str());
        let ack = self
            .jetstream
            .publish_with_headers(message.subject.to_string(), headers, message.payload)
            .await
            .map_err(Error::nats)?
            .await
            .map_err(Error::nats)?;
        self.recorder
            .record(
                &delivery,
                Event::Replayed {
                    replay_seq: ack.sequence,
                    actor: self.actor.clone(),
                },
            )
            .await;
        Ok(Replayed {
            delivery: delivery.id,
            seq,
            replay_seq: ack.sequence,
        })
    }

    /// The delivery id of message `seq` and the targets it would be dispatched to now: the
    /// receiver as it is in `catalog`, its targets as they are in the cluster, its filters
    /// evaluated.
    pub async fn plan(
        &self,
        catalog: &Catalog,
        resolver: &Resolver,
        seq: u64,
    ) -> Result<(String, Resolved), Error> {
        let (delivery, message) = self.original(seq).await?;
        let receiver = catalog
            .by_name(&delivery.namespace, &delivery.receiver)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "receiver {}/{} is not served now",
                    delivery.namespace, delivery.receiver
                ))
            })?;
        let inputs = if receiver.has_filters() {
            request::of(
                &self.jetstream,
                receiver.kind,
                Some(&message.headers),
                &message.payload,
            )
            .await?
        } else {
            Inputs::none()
        };
        Ok((delivery.id, resolver.resolve(receiver, &inputs).await?))
    }
}
