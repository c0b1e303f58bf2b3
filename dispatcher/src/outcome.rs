//! Records outcome events (the shared contract's [`Outcome`]) for the deliveries the
//! dispatcher handles, counting each, and provisions the stream that keeps them. The same event
//! recorded for several deliveries of one receiver at the same moment -- the deliveries of a
//! coalesced patch, a backlog's dispatches to the same targets -- is stored as one message that
//! lists them: a NATS write per event, not per delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use fluxgate_shared::contract::{self, Concerned, Event, Outcome};
use tokio::sync::{mpsc, oneshot};

use crate::delivery::Delivery;
use crate::error::Error;
use crate::metrics::Metrics;

/// The first and the longest wait between attempts to store an outcome.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// The most deliveries one message lists: with ids of up to 256 bytes, under 64 KiB, well
/// within any `max_payload` NATS is run with.
const MAX_GROUP: usize = 200;
/// The most records taken from the queue at once.
const MAX_TAKEN: usize = 1000;

/// Writes outcome events, waiting for JetStream's ack so that history is never behind the
/// acknowledgement of the delivery it describes.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::UnboundedSender<Record>,
}

/// An event to store for one delivery, and who waits until it is stored.
struct Record {
    outcome: Outcome,
    stored: oneshot::Sender<()>,
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
        let (queue, records) = mpsc::unbounded_channel();
        tokio::spawn(write(jetstream, metrics, records));
        Ok(Self { queue })
    }

    /// Stores the event and counts it, retrying until JetStream has it: a delivery is
    /// acknowledged only after its outcomes are stored, so that its history never stops short
    /// (the messages of deliveries in flight are kept alive meanwhile).
    pub async fn record(&self, delivery: &Delivery, event: Event) {
        let outcome = Outcome::now(&delivery.meta, delivery.sequence, event);
        let (stored, done) = oneshot::channel();
        // The writer lives as long as any recorder; a send can only fail at exit.
        if self.queue.send(Record { outcome, stored }).is_ok() {
            let _ = done.await;
        }
    }
}

/// Takes the records queued, stores the alike ones together, each group by a task of its own,
/// and goes on with those queued meanwhile: under load the queue fills while groups are
/// stored, so groups grow with the load, and a lone record is stored at once.
async fn write(
    jetstream: jetstream::Context,
    metrics: Arc<Metrics>,
    mut records: mpsc::UnboundedReceiver<Record>,
) {
    let mut queued = Vec::new();
    while records.recv_many(&mut queued, MAX_TAKEN).await > 0 {
        // Each record's group, found by its receiver and event as they are (no copy of either).
        let mut index: HashMap<(&str, &Event), usize> = HashMap::new();
        let group_of: Vec<usize> = (queued.iter())
            .map(|record| {
                let next = index.len();
                let alike = (record.outcome.receiver.as_str(), &record.outcome.event);
                *index.entry(alike).or_insert(next)
            })
            .collect();
        let mut groups: Vec<Vec<Record>> = (0..index.len()).map(|_| Vec::new()).collect();
        for (record, group) in queued.drain(..).zip(group_of) {
            if let Some(group) = groups.get_mut(group) {
                group.push(record);
            }
        }
        for mut group in groups {
            while group.len() > MAX_GROUP {
                let rest = group.split_off(MAX_GROUP);
                tokio::spawn(store(jetstream.clone(), metrics.clone(), group));
                group = rest;
            }
            tokio::spawn(store(jetstream.clone(), metrics.clone(), group));
        }
    }
}

/// Stores one event for every delivery of `group` in one message, retrying until JetStream
/// has it; a retry carries the same message id, so an event whose ack was lost is stored once.
async fn store(jetstream: jetstream::Context, metrics: Arc<Metrics>, group: Vec<Record>) {
    let mut records = group.into_iter();
    let Some(first) = records.next() else {
        return;
    };
    let mut waiting = vec![first.stored];
    let mut outcome = first.outcome;
    for record in records {
        outcome.more.push(Concerned {
            delivery: record.outcome.delivery,
            seq: record.outcome.seq,
        });
        waiting.push(record.stored);
    }
    let mut backoff = FIRST_RETRY;
    loop {
        match outcome.publish(&jetstream).await {
            Ok(_) => break,
            Err(fluxgate_shared::Error::Encode(error)) => {
                // No retry makes it encodable.
                tracing::error!(%error, delivery = %outcome.delivery, "cannot encode an outcome");
                return;
            }
            Err(error) => {
                if backoff == FIRST_RETRY {
                    tracing::warn!(%error, delivery = %outcome.delivery, outcome = outcome.event.label(), "cannot record an outcome yet; retrying until NATS stores it");
                }
                metrics.outcome_retried();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RETRY);
            }
        }
    }
    for stored in waiting {
        metrics.outcome(outcome.event.label());
        let _ = stored.send(());
    }
}
