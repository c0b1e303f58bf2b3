//! Deliveries in flight: each holds its JetStream message's acker until every one of its targets
//! is done (patched, or failed for good), then acknowledges it -- never before. Messages held
//! longer than a keep-alive interval are kept alive with progress acks so JetStream does not
//! redeliver them meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use tokio::time::Instant;

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::outcome::Recording;

pub struct InFlight {
    pub delivery: Delivery,
    /// What acknowledges its message: the message itself (its body) is not kept in flight.
    pub acker: Acker,
    /// When it arrived: it needs progress acks only once held for a keep-alive interval.
    arrived: Instant,
    /// The W3C `traceparent` of its `consume` span, when spans are exported: the patch that
    /// carries it links there.
    pub trace: Option<String>,
    remaining: AtomicUsize,
    /// Its `dispatched` event on its way: stored before the message is acknowledged.
    dispatched: Mutex<Option<Recording>>,
    registry: Registry,
}

impl InFlight {
    /// The delivery goes to `targets` targets: it is finished once each is done.
    pub fn expect(&self, targets: usize) {
        self.remaining.store(targets, Ordering::Release);
    }

    /// Its `dispatched` event is being recorded.
    pub fn dispatched(&self, recording: Recording) {
        if let Ok(mut slot) = self.dispatched.lock() {
            *slot = Some(recording);
        }
    }

    /// Waits until its `dispatched` event, if any, is stored: before any ack.
    pub async fn recorded(&self) {
        let recording = self.dispatched.lock().ok().and_then(|mut slot| slot.take());
        if let Some(recording) = recording {
            recording.stored().await;
        }
    }

    /// One target of this delivery is done; the last one acknowledges the message.
    pub async fn target_done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.recorded().await;
            acknowledge(&self.acker, self.delivery.sequence, &self.registry.metrics).await;
            self.registry.remove(self.delivery.sequence);
        }
    }
}

/// Acknowledges, without waiting for JetStream to confirm it: a lost ack is redelivered after
/// the ack wait, and its targets, asked to reconcile since its webhook was received, are not
/// patched again (see `Dispatcher::not_requested_since`). (A confirmed ack subscribes to a
/// reply inbox each time: four messages through nats-server instead of one, for an answer
/// nothing would act on.) A failure to send is logged and counted.
pub async fn acknowledge(acker: &Acker, sequence: u64, metrics: &Metrics) {
    if let Err(error) = acker.ack().await {
        metrics.ack_failed("ack");
        tracing::warn!(%error, seq = sequence, "ack not sent; JetStream will redeliver");
    }
}

/// Every delivery in flight, by stream sequence.
#[derive(Clone)]
pub struct Registry {
    in_flight: Arc<Mutex<HashMap<u64, Arc<InFlight>>>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            in_flight: Arc::default(),
            metrics,
        }
    }

    /// Registers a delivery as it arrives; its targets are known later ([`InFlight::expect`]).
    pub fn start(&self, delivery: Delivery, acker: Acker, trace: Option<String>) -> Arc<InFlight> {
        let in_flight = Arc::new(InFlight {
            delivery,
            acker,
            arrived: Instant::now(),
            trace,
            remaining: AtomicUsize::new(0),
            dispatched: Mutex::new(None),
            registry: self.clone(),
        });
        if let Ok(mut map) = self.in_flight.lock() {
            map.insert(in_flight.delivery.sequence, in_flight.clone());
        }
        in_flight
    }

    /// Whether this stream sequence is already being handled (JetStream redelivered it).
    pub fn contains(&self, sequence: u64) -> bool {
        self.in_flight
            .lock()
            .map(|m| m.contains_key(&sequence))
            .unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a delivery settled without patching.
    pub fn remove(&self, sequence: u64) {
        if let Ok(mut map) = self.in_flight.lock() {
            map.remove(&sequence);
        }
    }

    /// Every `interval`, forever, sends a progress ack for each delivery in flight for at least
    /// that long. One arriving just after a tick is first kept alive two intervals later, so
    /// `interval` must be under half the ack wait (it is a third). Most deliveries are done
    /// within one interval (the coalescing window and a patch) and never need one.
    pub async fn keep_alive(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            let Some(held_since) = Instant::now().checked_sub(interval) else {
                continue;
            };
            let messages: Vec<Arc<InFlight>> = self
                .in_flight
                .lock()
                .map(|m| {
                    m.values()
                        .filter(|in_flight| in_flight.arrived <= held_since)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for in_flight in messages {
                if let Err(error) = in_flight.acker.ack_with(AckKind::Progress).await {
                    self.metrics.ack_failed("progress");
                    tracing::warn!(%error, seq = in_flight.delivery.sequence, "progress ack failed; JetStream may redeliver once the ack wait ends");
                }
            }
        }
    }
}
