//! Durable publishing to JetStream: provisions the deliveries stream and the large-body object
//! store, publishes each delivery with its `Nats-Msg-Id`, and waits for the stream's ack under a
//! deadline, so that a 2xx always means "stored".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::object_store::{self, ObjectMetadata};
use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, HeaderName, connection::State};
use bytes::Bytes;
use fluxgate_shared::contract::{self, DeliveryMeta, header};
use tokio::sync::Notify;

use crate::error::Error;

const NATS_MSG_ID: HeaderName = HeaderName::from_static(header::NATS_MSG_ID);
/// Room left for headers when deciding whether a body fits in one message.
const HEADER_ALLOWANCE: usize = 16 * 1024;
/// Largest chunk written to the object store (JetStream's default is 128 KiB).
const MAX_CHUNK: usize = 128 * 1024;

/// Limits of the deliveries stream (and of the object store holding large bodies).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub replicas: usize,
    pub max_age: Duration,
    /// -1: unlimited.
    pub max_bytes: i64,
    /// The object store's limit; -1: unlimited.
    pub bodies_max_bytes: i64,
    pub duplicate_window: Duration,
}

impl StreamSettings {
    /// The duplicate window, at most the age of the deliveries (JetStream refuses a longer one;
    /// past their age, no delivery is left to be a duplicate of).
    fn dedup_window(&self) -> Duration {
        match self.max_age {
            Duration::ZERO => self.duplicate_window,
            max_age => self.duplicate_window.min(max_age),
        }
    }
}

/// A delivery ready to be stored: its metadata and the raw body.
#[derive(Debug)]
pub struct Delivery {
    pub meta: DeliveryMeta,
    pub body: Bytes,
}

impl Delivery {
    /// The headers it is stored with: the metadata's and its `Nats-Msg-Id`.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = self.meta.to_headers();
        headers.insert(NATS_MSG_ID, self.meta.key());
        headers
    }
}

/// The stream's acknowledgement of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub sequence: u64,
    /// JetStream already held a message with this `Nats-Msg-Id` within its duplicate window.
    pub duplicate: bool,
}

/// A store's answer to [`Store::publish`], boxed so the store can sit behind `dyn`.
pub type Storing<'a> = Pin<Box<dyn Future<Output = Result<Stored, Error>> + Send + 'a>>;

/// Where accepted deliveries go: JetStream ([`Publisher`]) in the service. The router depends
/// on this seam only, so its tests put an in-memory store in its place and run the whole accept
/// path -- every answer and rejection -- without a server.
pub trait Store: Send + Sync {
    /// Connected and ready to store: what `/readyz` reports.
    fn is_ready(&self) -> bool;
    /// Stores a delivery; `Ok` only once it is durably stored.
    fn publish(&self, delivery: Delivery) -> Storing<'_>;
}

pub struct Publisher {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    settings: StreamSettings,
    publish_timeout: Duration,
    provisioned: AtomicBool,
    reprovision: Notify,
}

impl Publisher {
    /// Connects to NATS. The connection is retried in the background, so ingest starts (and
    /// answers 503) even while NATS is down, and recovers by itself when it comes back.
    pub async fn connect(
        url: &str,
        auth: &fluxgate_shared::NatsAuth,
        settings: StreamSettings,
        publish_timeout: Duration,
    ) -> Result<Arc<Self>, Error> {
        let client = fluxgate_shared::nats_connect("fluxgate-ingest", url, auth).await?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(publish_timeout);
        Ok(Arc::new(Self {
            client,
            jetstream,
            settings,
            publish_timeout,
            provisioned: AtomicBool::new(false),
            reprovision: Notify::new(),
        }))
    }

    /// Keeps the stream and object store provisioned: creates or updates them now (retrying
    /// until NATS answers), and again whenever a publish finds the stream gone.
    pub async fn keep_provisioned(self: Arc<Self>) {
        loop {
            let mut backoff = Duration::from_millis(100);
            while let Err(error) = self.provision().await {
                tracing::warn!(%error, retry_in = ?backoff, "cannot provision the deliveries stream");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            self.provisioned.store(true, Ordering::Release);
            self.reprovision.notified().await;
            self.provisioned.store(false, Ordering::Release);
        }
    }

    async fn provision(&self) -> Result<(), async_nats::Error> {
        let config = stream::Config {
            name: contract::DELIVERIES_STREAM.into(),
            subjects: vec![format!("{}.>", contract::DELIVERIES_SUBJECT_PREFIX)],
            storage: stream::StorageType::File,
            num_replicas: self.settings.replicas,
            max_age: self.settings.max_age,
            max_bytes: self.settings.max_bytes,
            duplicate_window: self.settings.dedup_window(),
            // Full, the stream refuses new deliveries (503) rather than drop the oldest, which
            // the dispatcher may not have handled yet.
            discard: stream::DiscardPolicy::New,
            // Direct gets let the history CLI read single deliveries without a consumer.
            allow_direct: true,
            ..Default::default()
        };
        self.jetstream.get_or_create_stream(config.clone()).await?;
        // Apply changed limits to an existing stream; a change JetStream refuses (storage
        // type, say) leaves the stream as it is, which still stores deliveries.
        if let Err(error) = self.jetstream.update_stream(&config).await {
            tracing::warn!(%error, "cannot update the deliveries stream's configuration");
        }
        self.jetstream
            .get_or_create_stream(index_config(&self.settings))
            .await?;
        self.bodies().await?;
        self.limit_bodies().await;
        tracing::info!(
            stream = contract::DELIVERIES_STREAM,
            "deliveries stream ready"
        );
        Ok(())
    }

    async fn bodies(&self) -> Result<object_store::ObjectStore, async_nats::Error> {
        if let Ok(store) = self
            .jetstream
            .get_object_store(contract::BODIES_OBJECT_STORE)
            .await
        {
            return Ok(store);
        }
        Ok(self
            .jetstream
            .create_object_store(object_store::Config {
                bucket: contract::BODIES_OBJECT_STORE.into(),
                description: Some("webhook bodies larger than max_payload".into()),
                max_age: self.settings.max_age,
                max_bytes: self.settings.bodies_max_bytes,
                num_replicas: self.settings.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?)
    }

    /// Applies `bodies_max_bytes` to an object store created before it was set (or with
    /// another value); a refusal leaves the store as it is, which still stores bodies.
    async fn limit_bodies(&self) {
        let name = format!("OBJ_{}", contract::BODIES_OBJECT_STORE);
        let Ok(mut stream) = self.jetstream.get_stream(&name).await else {
            return;
        };
        let Ok(info) = stream.info().await else {
            return;
        };
        if info.config.max_bytes == self.settings.bodies_max_bytes {
            return;
        }
        let mut config = info.config.clone();
        config.max_bytes = self.settings.bodies_max_bytes;
        if let Err(error) = self.jetstream.update_stream(&config).await {
            tracing::warn!(%error, "cannot update the object store's byte limit");
        }
    }

    async fn store(&self, mut delivery: Delivery) -> Result<Stored, Error> {
        let max_payload = self.client.max_payload();
        if delivery.body.len() + HEADER_ALLOWANCE > max_payload {
            // Boxed: the object store's futures are large, and inline they would make every
            // delivery's future as large (5.5 KiB, not 1.6), copied whole at each move.
            let name = Box::pin(self.store_body(&delivery.body, max_payload)).await?;
            delivery.meta.body_object = Some(name);
            delivery.body = Bytes::new();
        }
        let (subject, headers) = (delivery.meta.subject(), delivery.headers());
        let message = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(delivery.body);
        let ack = self
            .jetstream
            .send_publish(subject, message)
            .await
            .map_err(|e| self.unavailable(e.kind(), e))?
            .await
            .map_err(|e| self.unavailable(e.kind(), e))?;
        Ok(Stored {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Writes a large body to the object store under its content hash (so a redelivery
    /// reuses it) and returns the object's name.
    async fn store_body(&self, body: &Bytes, max_payload: usize) -> Result<String, Error> {
        let name = format!(
            "sha256-{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body))
        );
        let store = self
            .bodies()
            .await
            .map_err(|e| refused(format!("object store: {e}")))?;
        if store.info(&name).await.is_ok() {
            return Ok(name);
        }
        let meta = ObjectMetadata {
            name: name.clone(),
            chunk_size: Some(MAX_CHUNK.min(max_payload.saturating_sub(HEADER_ALLOWANCE).max(1024))),
            ..Default::default()
        };
        store
            .put(meta, &mut body.as_ref())
            .await
            .map_err(|e| refused(format!("object store: {e}")))?;
        Ok(name)
    }

    fn unavailable(&self, kind: PublishErrorKind, error: impl std::fmt::Display) -> Error {
        if kind == PublishErrorKind::StreamNotFound {
            // Someone deleted the stream, or NATS came back with an empty store.
            self.reprovision.notify_one();
        }
        refused(error.to_string())
    }
}

/// The delivery index, whose entries the dispatcher writes (ingest sets the limits of what is
/// stored): as long-lived and replicated as the deliveries, an eighth of their room
/// (an entry is ~150 bytes), the oldest entries dropped when full.
fn index_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: contract::INDEX_STREAM.into(),
        subjects: vec![format!("{}.*", contract::INDEX_SUBJECT_PREFIX)],
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        max_age: settings.max_age,
        max_bytes: if settings.max_bytes > 0 {
            settings.max_bytes / 8
        } else {
            -1
        },
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    }
}

/// What JetStream says when it has no room: the stream's own byte limit (it discards new
/// messages), or the storage of the server or the account. Matched in the error's text because
/// the object store hands its errors on as text only.
const NO_ROOM: [&str; 3] = [
    "maximum bytes exceeded",
    "insufficient resources",
    "insufficient storage resources",
];

/// A publish JetStream refused or could not take: full storage, else unavailable.
fn refused(error: String) -> Error {
    if NO_ROOM.iter().any(|marker| error.contains(marker)) {
        Error::StorageFull(error)
    } else {
        Error::Unavailable(error)
    }
}

impl Store for Publisher {
    /// Connected to NATS and the stream exists.
    fn is_ready(&self) -> bool {
        self.provisioned.load(Ordering::Acquire)
            && self.client.connection_state() == State::Connected
    }

    /// Stores a delivery and waits for the stream's ack, within the publish deadline.
    fn publish(&self, delivery: Delivery) -> Storing<'_> {
        Box::pin(async move {
            if !self.is_ready() {
                return Err(Error::Unavailable("not connected to NATS JetStream".into()));
            }
            tokio::time::timeout(self.publish_timeout, self.store(delivery))
                .await
                .map_err(|_| Error::Unavailable("JetStream did not acknowledge in time".into()))?
        })
    }
}
