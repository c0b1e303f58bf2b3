//! The consumer: reads deliveries from the durable pull consumer and takes each through target
//! resolution and coalescing, recording what happens. A delivery is acknowledged only once its
//! effect happened; unreadable ones are terminated and recorded. (Duplicates never get here:
//! the deliveries stream drops them within its duplicate window.)

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fluxgate_shared::contract::{DeliveryMeta, Event};
use fluxgate_shared::receivers::SharedCatalog;
use futures::StreamExt as _;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::becomes;
use crate::coalesce::Coalescer;
use crate::delivery::Delivery;
use crate::error::Error;
use crate::index::Indexer;
use crate::inflight::{InFlight, Registry, acknowledge};
use crate::metrics::Metrics;
use crate::outcome::Recorder;
use crate::request::Inputs;
use crate::targets::{Resolver, Target};

/// Deliveries handled at once.
const CONCURRENCY: usize = 256;
/// How long one pull request waits for messages, and how often the server says it is alive.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long JetStream waits before redelivering a delivery whose handling failed transiently.
const RETRY_DELAY: Duration = Duration::from_secs(5);

pub struct Dispatcher {
    pub catalog: SharedCatalog,
    pub resolver: Arc<Resolver>,
    pub recorder: Recorder,
    pub coalescer: Coalescer<Arc<InFlight>>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub dry_run: bool,
    pub indexer: Indexer,
    pub jetstream: jetstream::Context,
    /// The consumer's `max_deliver`: the attempt after which a delivery that keeps failing
    /// transiently is recorded failed.
    pub max_deliver: i64,
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
        // Short pulls with frequent heartbeats: when the consumer's leader moves (a NATS node
        // lost or partitioned), a pull request is lost with it, and only a missed heartbeat or
        // the pull's expiry tells the client to ask again.
        let messages = (consumer.stream())
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(Error::nats)?;
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

    /// Handles one message: works out its disposition, then carries it out.
    async fn handle(&self, message: jetstream::Message) {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(error) => {
                tracing::error!(%error, "message without JetStream metadata; terminating it");
                let (_, acker) = message.split();
                return self.settle(&acker, 0, Disposition::Terminate).await;
            }
        };
        // The body is read while dispatching, then dropped; only the acker stays in flight.
        let (message, acker) = message.split();
        if self.registry.contains(sequence) {
            // Still in flight from an earlier delivery of the same message.
            return;
        }
        let delivery = match Delivery::read(sequence, &message.subject, message.headers.as_ref()) {
            Ok(delivery) => delivery,
            Err(error) => {
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
                return self.settle(&acker, sequence, disposition_of(&error)).await;
            }
        };
        if delivered == 1 {
            // Only a first delivery: those come in the order stored, which the index keeps
            // (a redelivery would put an older sequence after newer ones).
            self.indexer.add(sequence, &delivery.meta);
        }
        // The delivery's trace goes on from ingest's request span, stored with it.
        let span = tracing::info_span!(
            "consume",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.message.id = %delivery.meta.key(),
            fluxgate.sequence = sequence,
            fluxgate.attempt = delivered,
            fluxgate.delivery_id = %delivery.meta.id,
            fluxgate.receiver = %format_args!("{}/{}", delivery.meta.namespace, delivery.meta.receiver),
            fluxgate.targets = tracing::field::Empty,
        );
        if let Some(traceparent) = &delivery.meta.traceparent {
            fluxgate_shared::continue_trace(&span, traceparent);
        }
        // Registered before its handling starts, so that it is kept alive with progress acks
        // even while its dispatch waits (on NATS, on the API server), and a redelivery of it
        // meanwhile is recognised above.
        let trace = fluxgate_shared::traceparent_of(&span);
        let in_flight = self.registry.start(delivery, acker, trace);
        let delivery = &in_flight.delivery;
        let dispatched = (self.dispatch(&in_flight, &message.payload, delivered > 1))
            .instrument(span)
            .await;
        drop(message);
        let disposition = match dispatched {
            Ok(disposition) => disposition,
            Err(error) => match disposition_of(&error) {
                Disposition::Retry(delay) if delivered < self.max_deliver => {
                    tracing::warn!(%error, delivery = %delivery.meta.id, attempt = delivered, retry_in = ?delay, "cannot dispatch now; retrying later");
                    Disposition::Retry(delay)
                }
                // The consumer's last delivery of it: JetStream would not redeliver it again.
                Disposition::Retry(_) => {
                    let reason = format!("gave up after {delivered} attempts: {error}");
                    self.fail(delivery, reason).await;
                    Disposition::Ack
                }
                disposition => {
                    self.fail(delivery, error.to_string()).await;
                    disposition
                }
            },
        };
        match disposition {
            Disposition::InFlight(targets) => {
                in_flight.expect(targets.len());
                for target in targets {
                    self.coalescer.submit(target, in_flight.clone());
                }
            }
            other => {
                in_flight.recorded().await;
                self.settle(&in_flight.acker, sequence, other).await;
                self.registry.remove(sequence);
            }
        }
    }

    /// Takes a delivery through the catalog, its filters' inputs and target resolution,
    /// recording each step; what is left to do with the message is the result. A `redelivered`
    /// one may have been patched already (a lost ack, a crash).
    async fn dispatch(
        &self,
        in_flight: &InFlight,
        body: &Bytes,
        redelivered: bool,
    ) -> Result<Disposition, Error> {
        let delivery = &in_flight.delivery;
        let catalog = self.catalog.current();
        let meta = &delivery.meta;
        let Some(receiver) = catalog.by_name(&meta.namespace, &meta.receiver) else {
            let reason = format!(
                "receiver {}/{} is not in the catalog",
                meta.namespace, meta.receiver
            );
            self.fail(delivery, reason).await;
            return Ok(Disposition::Ack);
        };
        if let Some(reason) = &receiver.not_ready {
            self.fail(delivery, format!("receiver is not ready: {reason}"))
                .await;
            return Ok(Disposition::Ack);
        }
        let resolving = async {
            let inputs = Inputs::of(&self.jetstream, receiver, meta, body).await?;
            Ok::<_, Error>(self.resolver.resolve(receiver, &Arc::new(inputs)).await?)
        };
        let resolved = resolving.instrument(tracing::info_span!("resolve")).await?;
        let targets = resolved.targets;
        tracing::Span::current().record("fluxgate.targets", targets.len());
        // Stored with those of the receiver's deliveries dispatched about now, by the time the
        // delivery is acknowledged; its patch need not wait for it.
        in_flight.dispatched(self.recorder.record_soon(
            delivery,
            Event::Dispatched {
                targets: targets.clone(),
            },
        ));
        for target in resolved.filtered_out {
            self.recorder
                .record(delivery, Event::FilteredOut { target })
                .await;
        }
        for (target, reason) in resolved.refused {
            self.recorder
                .record(delivery, Event::Failed { target, reason })
                .await;
        }
        if self.dry_run {
            for target in targets {
                self.recorder
                    .record(delivery, Event::WouldPatch { target })
                    .await;
            }
            return Ok(Disposition::Ack);
        }
        let targets = match delivery.meta.received_at {
            Some(received_at) if redelivered => {
                self.not_requested_since(delivery, targets, received_at)
                    .await
            }
            _ => targets,
        };
        if targets.is_empty() {
            return Ok(Disposition::Ack);
        }
        Ok(Disposition::InFlight(targets))
    }

    /// The targets of a redelivered delivery that still need its patch. One asked to reconcile
    /// since the webhook was received -- by this delivery's own patch before a crash or a lost
    /// ack, or by any later request -- has had what the delivery asks for (its reconcile reads
    /// the source as it is after the webhook): it is recorded `patched` with the value it
    /// carries and no attempt (after a lost ack, a second record of the same patch), and not
    /// patched again.
    async fn not_requested_since(
        &self,
        delivery: &Delivery,
        targets: Vec<Target>,
        received_at: DateTime<Utc>,
    ) -> Vec<Target> {
        let mut left = Vec::with_capacity(targets.len());
        for target in targets {
            let requested = self.resolver.requested_at(&target).await;
            let since_received = (requested.as_deref())
                .and_then(|value| DateTime::parse_from_rfc3339(value).ok())
                .is_some_and(|value| value >= received_at);
            match requested {
                Some(requested_at) if since_received => {
                    let event = Event::Patched {
                        target,
                        requested_at,
                        batch: String::new(),
                        size: 1,
                        attempts: 0,
                    };
                    self.recorder.record(delivery, event).await;
                }
                _ => left.push(target),
            }
        }
        left
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

    /// Acknowledges, naks or terminates the message; a failure to is logged and counted.
    async fn settle(&self, acker: &Acker, sequence: u64, disposition: Disposition) {
        let (kind, ack) = match disposition {
            Disposition::Ack => return acknowledge(acker, sequence, &self.metrics).await,
            Disposition::Retry(delay) => ("nak", AckKind::Nak(Some(delay))),
            Disposition::Terminate => ("term", AckKind::Term),
            Disposition::InFlight(_) => return,
        };
        if let Err(error) = acker.ack_with(ack).await {
            self.metrics.ack_failed(kind);
            tracing::warn!(%error, seq = sequence, ack = kind, "cannot send the acknowledgement; JetStream will redeliver after the ack wait");
        }
    }
}

/// What becomes of a message.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Done with, for good (handled, or failed in a way no retry fixes, and recorded).
    Ack,
    /// Worth another try: JetStream redelivers it after the delay.
    Retry(Duration),
    /// Never a delivery: JetStream drops it.
    Terminate,
    /// Its targets are being patched: the in-flight registry acknowledges it once they are done.
    InFlight(Vec<Target>),
}

/// The one place that decides what an error means for the message. Only errors in the
/// delivery itself are permanent: a message that is not a delivery, a body the filters cannot
/// read. NATS and the API server failing (the resolver returns only its transient errors) are
/// worth retrying.
fn disposition_of(error: &Error) -> Disposition {
    match error {
        Error::Shared(fluxgate_shared::Error::NotADelivery(_)) => Disposition::Terminate,
        Error::Body(_) => Disposition::Ack,
        Error::Shared(_) | Error::Nats(_) | Error::Kube(_) | Error::Listen(_) => {
            Disposition::Retry(RETRY_DELAY)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_faults_of_the_delivery_itself_are_permanent() {
        let not_a_delivery = Error::Shared(fluxgate_shared::Error::NotADelivery("x".into()));
        assert_eq!(disposition_of(&not_a_delivery), Disposition::Terminate);
        assert_eq!(
            disposition_of(&Error::Body("not JSON".into())),
            Disposition::Ack
        );
        assert_eq!(
            disposition_of(&Error::nats("connection reset")),
            Disposition::Retry(RETRY_DELAY)
        );
        let unavailable = kube::Error::Api(Box::new(kube::core::Status {
            code: 503,
            ..Default::default()
        }));
        assert_eq!(
            disposition_of(&Error::Kube(unavailable)),
            Disposition::Retry(RETRY_DELAY)
        );
    }
}
