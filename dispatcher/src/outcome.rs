//! Records outcome events (the shared contract's [`Outcome`]) for the deliveries the
//! dispatcher handles, counting each, and provisions the stream that keeps them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use fluxgate_shared::contract::{self, Event, Outcome};

use crate::delivery::Delivery;
use crate::error::Error;
use crate::metrics::Metrics;

/// The first and the longest wait between attempts to store an outcome.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

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
        Ok(Self { jetstream, metrics })
    }

    /// Stores the event and counts it, retrying until JetStream has it: a delivery is
    /// acknowledged only after its outcomes are stored, so that its history never stops short
    /// (the messages of deliveries in flight are kept alive meanwhile). A retry carries the same
    /// message id, so an event whose ack was lost is stored once.
    pub async fn record(&self, delivery: &Delivery, event: Event) {
        let outcome = Outcome::now(&delivery.meta, delivery.sequence, event);
        let mut backoff = FIRST_RETRY;
        loop {
            match outcome.publish(&self.jetstream).await {
                Ok(_) => break,
                Err(fluxgate_shared::Error::Encode(error)) => {
                    // No retry makes it encodable.
                    tracing::error!(%error, delivery = %delivery.meta.id, "cannot encode an outcome");
                    return;
                }
                Err(error) => {
                    if backoff == FIRST_RETRY {
                        tracing::warn!(%error, delivery = %delivery.meta.id, outcome = outcome.event.label(), "cannot record an outcome yet; retrying until NATS stores it");
                    }
                    self.metrics.outcome_retried();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RETRY);
                }
            }
        }
        self.metrics.outcome(outcome.event.label());
    }
}
