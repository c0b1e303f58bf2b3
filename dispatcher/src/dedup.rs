//! Deduplication by delivery key in the JetStream KV bucket `fluxgate-dedup`: the first stream
//! message that claims a key wins (an atomic create); a different message with the same key is
//! a duplicate; the same message seen again (a redelivery after a crash) is not, unless it was
//! finished: its targets patched and recorded, the entry marked done before the ack, so that a
//! lost ack does not patch it again.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use fluxgate_shared::contract;
use sha2::{Digest, Sha256};

use crate::delivery::Delivery;
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This message is the first with its key.
    First,
    /// This very message claimed the key before (JetStream redelivered it).
    Redelivery,
    /// This very message was finished before: only its ack was lost.
    Finished,
    /// Another message, at this stream sequence, carried the same delivery first.
    DuplicateOf(u64),
}

impl Claim {
    /// The claim as its span records it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Redelivery => "redelivery",
            Self::Finished => "finished",
            Self::DuplicateOf(_) => "duplicate",
        }
    }
}

/// What follows the stream sequence in the entry of a finished delivery.
const FINISHED: &str = " finished";

#[derive(Clone)]
pub struct Dedup {
    store: kv::Store,
}

impl Dedup {
    /// Creates the bucket if needed; keys expire after `ttl`.
    ///
    /// The bucket's stream is created directly, with the settings a KV bucket has, because
    /// async-nats's `create_key_value` first reads account information in a shape NATS 2.9
    /// does not send.
    pub async fn provision(
        jetstream: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, Error> {
        let bucket = contract::DEDUP_BUCKET;
        if let Ok(store) = jetstream.get_key_value(bucket).await {
            return Ok(Self { store });
        }
        jetstream
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("delivery key -> stream sequence that claimed it".into()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: ttl,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(Error::nats)?;
        let store = jetstream.get_key_value(bucket).await.map_err(Error::nats)?;
        Ok(Self { store })
    }

    /// Claims the delivery's key for its stream sequence.
    pub async fn claim(&self, delivery: &Delivery) -> Result<Claim, Error> {
        let key = key(delivery);
        let sequence = delivery.sequence.to_string();
        // Twice at most: the holder may expire between our create and our read.
        for _ in 0..2 {
            match self.store.create(&key, sequence.clone().into()).await {
                Ok(_) => return Ok(Claim::First),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(Error::nats(error)),
            }
            let entry = self.store.get(&key).await.map_err(Error::nats)?;
            if let Some(entry) = entry {
                let entry = String::from_utf8_lossy(&entry);
                let (holder, finished) = match entry.strip_suffix(FINISHED) {
                    Some(holder) => (holder, true),
                    None => (&*entry, false),
                };
                let holder: u64 = holder.parse().map_err(|_| {
                    Error::nats(format!(
                        "unreadable dedup entry for {}",
                        delivery.meta.key()
                    ))
                })?;
                return Ok(match (holder == delivery.sequence, finished) {
                    (true, true) => Claim::Finished,
                    (true, false) => Claim::Redelivery,
                    (false, _) => Claim::DuplicateOf(holder),
                });
            }
        }
        Err(Error::nats(format!(
            "cannot claim dedup key for {}",
            delivery.meta.key()
        )))
    }

    /// Marks the delivery finished, before its ack: a redelivery after a lost ack is then
    /// acknowledged, not patched again.
    pub async fn finish(&self, delivery: &Delivery) -> Result<(), Error> {
        let entry = format!("{}{FINISHED}", delivery.sequence);
        self.store
            .put(key(delivery), entry.into())
            .await
            .map(|_| ())
            .map_err(Error::nats)
    }
}

/// The entry's key: delivery ids may hold any character, KV keys may not.
fn key(delivery: &Delivery) -> String {
    hex::encode(Sha256::digest(delivery.meta.key()))
}
