//! Records outcome events (the shared contract's [`Outcome`]) for the deliveries the
//! dispatcher handles, counting each, and provisions the stream that keeps them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use fluxgate_shared::contract::{self, Event, Outcome};

use crate::delivery::Delivery;
use crate::error::Error;
use crate::metrics::Metrics;

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

    /// Stores the event (and counts it). One that cannot be stored is logged; the delivery's
    /// own handling goes on.
    pub async fn record(&self, delivery: &Delivery, event: Event) {
        self.metrics.outcome(event.label());
        let outcome = Outcome::now(&delivery.meta, delivery.sequence, event);
        if let Err(error) = outcome.publish(&self.jetstream).await {
            tracing::error!(%error, delivery = %delivery.meta.id, outcome = outcome.event.label(), "cannot record an outcome");
        }
    }
}
