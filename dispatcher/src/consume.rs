//! The consumer: reads deliveries from the durable pull consumer and takes each through
//! deduplication, target resolution and coalescing, recording what happens. A delivery is
//! acknowledged only once its effect happened; unreadable ones are terminated and recorded.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use fluxgate_shared::contract::{DeliveryMeta, Event};
use fluxgate_shared::receivers::SharedCatalog;
use futures::StreamExt as _;
use tokio::sync::watch;

use crate::becomes;
use crate::coalesce::Coalescer;
use crate::dedup::{Claim, Dedup};
use crate::delivery::Delivery;
use crate::error::Error;
use crate::inflight::{Registry, acknowledge};
use crate::outcome::Recorder;
use crate::request::Inputs;
use crate::targets::Resolver;

/// Deliveries handled at once.
const CONCURRENCY: usize = 256;
/// How long JetStream waits before redelivering a delivery whose handling failed transiently.
const RETRY_DELAY: Duration = Duration::from_secs(5);

pub struct Dispatcher {
    pub catalog: SharedCatalog,
    pub dedup: Dedup,
    pub resolver: Arc<Resolver>,
    pub recorder: Recorder,
    pub coalescer: Coalescer,
    pub registry: Registry,
    pub dry_run: bool,
    pub jetstream: jetstream::Context,
}

impl Dispatcher {
    /// Consumes until `stop` turns true or `leading` turns false, handling up to
    /// `CONCURRENCY` deliveries at once (each waits on NATS and the API server, not the CPU).
    pub async fn consume(
        &self,
        consumer: &PullConsumer,
        mut stop: watch::Receiver<bool>,
        mut leading: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let messages = consumer.messages().await.map_err(Error::nats)?;
        let (mut stop_seen, mut leading_seen) = (stop.clone(), leading.clone());
        let ended = async move {
            tokio::select! {
                _ = becomes(&mut stop_seen, true) => {}
                _ = becomes(&mut leading_seen, false) => {}
            }
        };
        messages
            .take_until(ended)
            .for_each_concurrent(CONCURRENCY, |next| async {
                match next {
                    Ok(message) => self.handle(message).await,
                    // Missed heartbeats and the like: the stream carries on.
                    Err(error) => tracing::warn!(%error, "consumer error"),
                }
            })
            .await;
        let told_to_stop = *stop.borrow_and_update() || !*leading.borrow_and_update();
        if told_to_stop {
            Ok(())
        } else {
            Err(Error::nats("the consumer's message stream ended"))
        }
    }

    async fn handle(&self, message: jetstream::Message) {
        let sequence = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(error) => {
                tracing::error!(%error, "message without JetStream metadata; terminating it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        if self.registry.contains(sequence) {
            // Still in flight from an earlier delivery of the same message.
            return;
        }
        let delivery = match Delivery::read(sequence, message.headers.as_ref()) {
            Ok(delivery) => delivery,
            Err(error) => return self.poison(sequence, &message, error).await,
        };
        // A replay is the same delivery again, on purpose: only it bypasses deduplication.
        if delivery.meta.from_sender() && delivery.meta.replay_of.is_none() {
            match self.dedup.claim(&delivery).await {
                Ok(Claim::DuplicateOf(first)) => {
                    self.recorder
                        .record(&delivery, Event::Duplicate { of_seq: first })
                        .await;
                    return acknowledge(&message, &delivery).await;
                }
                Ok(Claim::First | Claim::Redelivery) => {}
                Err(error) => {
                    tracing::warn!(%error, delivery = %delivery.meta.id, "cannot check for duplicates; retrying later");
                    let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                    return;
                }
            }
        }
        let catalog = self.catalog.current();
        let Some(receiver) = catalog.by_name(&delivery.meta.namespace, &delivery.meta.receiver)
        else {
            let reason = format!(
                "receiver {}/{} is not in the catalog",
                delivery.meta.namespace, delivery.meta.receiver
            );
            self.fail(&delivery, reason).await;
            return acknowledge(&message, &delivery).await;
        };
        if let Some(reason) = &receiver.not_ready {
            self.fail(&delivery, format!("receiver is not ready: {reason}"))
                .await;
            return acknowledge(&message, &delivery).await;
        }
        let inputs = match Inputs::of(&self.jetstream, receiver, &delivery.meta, &message.payload)
            .await
        {
            Ok(inputs) => inputs,
            Err(error @ Error::Body(_)) => {
                self.fail(&delivery, error.to_string()).await;
                return acknowledge(&message, &delivery).await;
            }
            Err(error) => {
                tracing::warn!(%error, delivery = %delivery.meta.id, "cannot read the body for filters; retrying later");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                return;
            }
        };
        let resolved = match self.resolver.resolve(receiver, &inputs).await {
            Ok(resolved) => resolved,
            Err(error) => {
                tracing::warn!(%error, delivery = %delivery.meta.id, "cannot resolve targets; retrying later");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                return;
            }
        };
        let targets = resolved.targets;
        self.recorder
            .record(
                &delivery,
                Event::Dispatched {
                    targets: targets.clone(),
                },
            )
            .await;
        for target in resolved.filtered_out {
            self.recorder
                .record(&delivery, Event::FilteredOut { target })
                .await;
        }
        for (target, reason) in resolved.refused {
            self.recorder
                .record(&delivery, Event::Failed { target, reason })
                .await;
        }
        if targets.is_empty() {
            return acknowledge(&message, &delivery).await;
        }
        if self.dry_run {
            for target in targets {
                self.recorder
                    .record(&delivery, Event::WouldPatch { target })
                    .await;
            }
            return acknowledge(&message, &delivery).await;
        }
        let in_flight = self.registry.start(delivery, message, targets.len());
        for target in targets {
            self.coalescer.submit(target, in_flight.clone());
        }
    }

    /// Records a failure that concerns the delivery as a whole, not one target.
    async fn fail(&self, delivery: &Delivery, reason: String) {
        self.recorder
            .record(
                delivery,
                Event::Failed {
                    target: None,
                    reason,
                },
            )
            .await;
    }

    /// A message without a delivery's metadata can never be handled: record and terminate it.
    async fn poison(&self, sequence: u64, message: &jetstream::Message, error: Error) {
        tracing::error!(%error, seq = sequence, "poison message terminated");
        let unknown = Delivery {
            sequence,
            meta: DeliveryMeta {
                id: format!("seq-{sequence}"),
                namespace: "_unknown".into(),
                receiver: "_unknown".into(),
                ..Default::default()
            },
        };
        self.fail(&unknown, error.to_string()).await;
        if let Err(error) = message.ack_with(AckKind::Term).await {
            tracing::warn!(%error, seq = sequence, "cannot terminate a poison message");
        }
    }
}
