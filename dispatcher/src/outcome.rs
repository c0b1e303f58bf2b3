//! Records outcome events (the shared contract's [`Outcome`]) for the deliveries the
//! dispatcher handles, counting each, and provisions the stream that keeps them. The same event
//! recorded for several deliveries of one receiver at the same moment -- the deliveries of a
//! coalesced patch, a backlog's dispatches to the same targets -- is stored as one message that
//! lists them: a NATS write per event, not per delivery. A record that may wait
//! ([`Recorder::record_soon`]) waits a moment for alike ones, so that a receiver's deliveries
//! dispatched one after another share a message too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use fluxgate_shared::contract::{self, Concerned, Event, Outcome};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::delivery::Delivery;
use crate::error::Error;
use crate::metrics::Metrics;

/// The first and the longest wait between attempts to store an outcome.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// The most deliveries one message lists: with ids of up to 256 bytes, under 64 KiB, well
/// within any `max_payload` NATS is run with.
const MAX_GROUP: usize = 200;
/// The most batches of records taken from the queue at once.
const MAX_TAKEN: usize = 1000;
/// The longest a record that may wait waits for alike ones.
const MAX_LINGER: Duration = Duration::from_millis(250);

/// Writes outcome events, waiting for JetStream's ack so that history is never behind the
/// acknowledgement of the delivery it describes.
#[derive(Clone)]
pub struct Recorder {
    /// Records go in by the batch: those queued together are taken together.
    queue: mpsc::UnboundedSender<Vec<Record>>,
}

/// An event to store for one delivery, and who waits until it is stored.
struct Record {
    outcome: Outcome,
    stored: oneshot::Sender<()>,
    /// It may wait for alike records.
    may_wait: bool,
}

/// A record on its way to the outcomes stream ([`Recorder::record_soon`]).
pub struct Recording(oneshot::Receiver<()>);

impl Recording {
    /// Resolves once the record is stored (or the writer is gone, at exit).
    pub async fn stored(self) {
        let _ = self.0.await;
    }
}

impl Recorder {
    /// Creates or updates the outcomes stream. Records that may wait wait a quarter of
    /// `coalesce_window` at most (and never more than 250 ms): a delivery is patched a window
    /// after it is dispatched, so its `dispatched` event is normally stored first.
    pub async fn provision(
        jetstream: jetstream::Context,
        metrics: Arc<Metrics>,
        replicas: usize,
        max_age: Duration,
        max_bytes: i64,
        coalesce_window: Duration,
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
        let linger = (coalesce_window / 4).min(MAX_LINGER);
        tokio::spawn(write(jetstream, metrics, records, linger));
        Ok(Self { queue })
    }

    /// Stores the event and counts it, retrying until JetStream has it: a delivery is
    /// acknowledged only after its outcomes are stored, so that its history never stops short
    /// (the messages of deliveries in flight are kept alive meanwhile).
    pub async fn record(&self, delivery: &Delivery, event: Event) {
        self.enqueue(delivery, event, false).stored().await;
    }

    /// [`Recorder::record`] for each of `deliveries`, queued as one batch: the writer takes them
    /// all in the same turn, so that the deliveries of a coalesced patch are stored together
    /// (a message per [`MAX_GROUP`]) however its turns fall between their records.
    pub async fn record_all<'a>(
        &self,
        deliveries: impl IntoIterator<Item = &'a Delivery>,
        event: &Event,
    ) {
        let (records, stored): (Vec<Record>, Vec<Recording>) = (deliveries.into_iter())
            .map(|delivery| Record::new(delivery, event.clone(), false))
            .unzip();
        let _ = self.queue.send(records);
        futures::future::join_all(stored.into_iter().map(Recording::stored)).await;
    }

    /// [`Recorder::record`], except that the event waits a moment for alike ones of the same
    /// receiver before it is stored; await the [`Recording`] before acknowledging the delivery.
    pub fn record_soon(&self, delivery: &Delivery, event: Event) -> Recording {
        self.enqueue(delivery, event, true)
    }

    fn enqueue(&self, delivery: &Delivery, event: Event, may_wait: bool) -> Recording {
        let (record, recording) = Record::new(delivery, event, may_wait);
        // The writer lives as long as any recorder; a send can only fail at exit, and the
        // record's `Recording` then resolves at once.
        let _ = self.queue.send(vec![record]);
        recording
    }
}

impl Record {
    fn new(delivery: &Delivery, event: Event, may_wait: bool) -> (Self, Recording) {
        let outcome = Outcome::now(&delivery.meta, delivery.sequence, event);
        let (stored, done) = oneshot::channel();
        let record = Self {
            outcome,
            stored,
            may_wait,
        };
        (record, Recording(done))
    }
}

/// Records that may wait, gathered by receiver and event until their time is up.
#[derive(Default)]
struct Lingering {
    /// Receiver -> its groups: the event, when its first record came, the records.
    groups: HashMap<String, Vec<(Event, Instant, Vec<Record>)>>,
    /// When each group was started, oldest first, by receiver: the next one due is in front.
    started: VecDeque<(Instant, String)>,
}

impl Lingering {
    /// Adds a record to its group; a group that is full is returned, to be stored now.
    fn add(&mut self, record: Record) -> Option<Vec<Record>> {
        let receiver = record.outcome.receiver.as_str();
        let groups = match self.groups.get_mut(receiver) {
            Some(groups) => groups,
            None => self.groups.entry(receiver.to_owned()).or_default(),
        };
        let Some(at) = (groups.iter()).position(|(event, _, _)| *event == record.outcome.event)
        else {
            let now = Instant::now();
            self.started
                .push_back((now, record.outcome.receiver.clone()));
            groups.push((record.outcome.event.clone(), now, vec![record]));
            return None;
        };
        let group = &mut groups[at].2;
        group.push(record);
        (group.len() >= MAX_GROUP).then(|| groups.swap_remove(at).2)
    }

    /// When the oldest group is due.
    fn next_due(&self, linger: Duration) -> Option<Instant> {
        self.started.front().map(|(since, _)| *since + linger)
    }

    /// The groups due by now (all of them once `linger` is zero or the queue is closed).
    fn take_due(&mut self, linger: Duration) -> Vec<Vec<Record>> {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some((since, _)) = self.started.front()
            && *since + linger <= now
        {
            let Some((_, receiver)) = self.started.pop_front() else {
                break;
            };
            let Some(groups) = self.groups.get_mut(&receiver) else {
                continue;
            };
            // A group stored early, being full, left its start behind: nothing is due then.
            let (ready, waiting): (Vec<_>, Vec<_>) =
                (groups.drain(..)).partition(|(_, started, _)| *started + linger <= now);
            due.extend(ready.into_iter().map(|(_, _, records)| records));
            if waiting.is_empty() {
                self.groups.remove(&receiver);
            } else {
                *groups = waiting;
            }
        }
        due
    }
}

/// Takes the records queued, stores the alike ones together, each group by a task of its own,
/// and goes on with those queued meanwhile: under load the queue fills while groups are
/// stored, so groups grow with the load, and a lone record is stored at once -- unless it may
/// wait, when it waits up to `linger` for alike ones.
async fn write(
    jetstream: jetstream::Context,
    metrics: Arc<Metrics>,
    mut records: mpsc::UnboundedReceiver<Vec<Record>>,
    linger: Duration,
) {
    let store_all = |groups: Vec<Vec<Record>>| {
        for group in groups {
            tokio::spawn(store(jetstream.clone(), metrics.clone(), group));
        }
    };
    let (mut batches, mut queued) = (Vec::new(), Vec::new());
    let mut lingering = Lingering::default();
    loop {
        let due = lingering.next_due(linger);
        let taken = tokio::select! {
            taken = records.recv_many(&mut batches, MAX_TAKEN) => taken,
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                store_all(lingering.take_due(linger));
                continue;
            }
        };
        if taken == 0 {
            // Every recorder is gone: what waits is stored now.
            store_all(lingering.take_due(Duration::ZERO));
            return;
        }
        queued.extend(batches.drain(..).flatten());
        if !linger.is_zero() {
            let (later, now): (Vec<Record>, Vec<Record>) =
                queued.drain(..).partition(|record| record.may_wait);
            queued = now;
            let full: Vec<Vec<Record>> = (later.into_iter())
                .filter_map(|record| lingering.add(record))
                .collect();
            store_all(full);
        }
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
        let mut messages = Vec::with_capacity(groups.len());
        for mut group in groups {
            while group.len() > MAX_GROUP {
                let rest = group.split_off(MAX_GROUP);
                messages.push(group);
                group = rest;
            }
            messages.push(group);
        }
        store_all(messages);
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

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_shared::contract::{DeliveryMeta, Target};
    use fluxgate_tests::nats::NatsServer;
    use futures::TryStreamExt as _;

    fn delivery(receiver: &str, sequence: u64) -> Delivery {
        Delivery {
            sequence,
            meta: DeliveryMeta {
                id: format!("{receiver}-{sequence}"),
                namespace: "ns".into(),
                receiver: receiver.into(),
                ..Default::default()
            },
        }
    }

    fn patched(size: usize) -> Event {
        Event::Patched {
            target: Target {
                api_version: "source.toolkit.fluxcd.io/v1".into(),
                kind: "GitRepository".into(),
                namespace: "ns".into(),
                name: "app".into(),
            },
            requested_at: "2026-12-08T00:00:00Z".into(),
            batch: "batch-1".into(),
            size,
            attempts: 1,
        }
    }

    /// A coalesced patch's records are stored together -- 250 in two messages, 200 and 50 --
    /// even while the writer is kept taking other receivers' records: queued one by one, the
    /// writer could take some of them in one turn and the rest in the next (seen in CI).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_patchs_records_are_stored_together_while_the_writer_is_busy() {
        const PATCHED: usize = 250;
        let nats = NatsServer::start().await;
        let jetstream = jetstream::new(nats.client().await);
        let metrics = Arc::new(Metrics::default());
        let recorder = Recorder::provision(
            jetstream.clone(),
            metrics,
            1,
            Duration::ZERO,
            -1,
            Duration::ZERO,
        )
        .await
        .expect("the outcomes stream");
        let busy: Vec<_> = (0..32)
            .map(|task| {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        let other = delivery("other", task * 100 + i);
                        recorder.record(&other, patched(1)).await;
                    }
                })
            })
            .collect();
        let batch: Vec<Delivery> = (0..PATCHED as u64).map(|i| delivery("app", i)).collect();
        recorder.record_all(&batch, &patched(PATCHED)).await;
        for task in busy {
            task.await.expect("a busy task");
        }
        let outcomes = (jetstream.get_stream(contract::OUTCOMES_STREAM).await).expect("stream");
        let subject = contract::outcome_subject("ns", "app", "patched");
        let counts = outcomes.info_with_subjects(&subject).await.expect("counts");
        let counts: Vec<(String, usize)> = counts.try_collect().await.expect("counts");
        let messages: usize = counts.iter().map(|(_, count)| count).sum();
        assert_eq!(messages, PATCHED.div_ceil(MAX_GROUP), "{counts:?}");
    }
}
