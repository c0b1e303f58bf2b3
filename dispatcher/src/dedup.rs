//! Deduplication by delivery key in the JetStream KV bucket `fluxgate-dedup`: the first stream
//! message that claims a key wins (an atomic create, which notes when); a different message with
//! the same key is a duplicate; the same message seen again (a redelivery after a crash or a
//! lost ack) is not, and the time of its claim tells the dispatcher which of its targets were
//! asked to reconcile since -- those it does not patch again.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use chrono::{DateTime, SecondsFormat, Utc};
use fluxgate_shared::contract;
use sha2::{Digest, Sha256};

use crate::delivery::Delivery;
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This message is the first with its key.
    First,
    /// This very message claimed the key before (JetStream redelivered it), at this time (not
    /// known for claims of earlier versions).
    Redelivery { claimed_at: Option<DateTime<Utc>> },
    /// This very message was marked finished before its ack by an earlier version: only its ack
    /// was lost.
    Finished,
    /// Another message, at this stream sequence, carried the same delivery first.
    DuplicateOf(u64),
}

impl Claim {
    /// The claim as its span records it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Redelivery { .. } => "redelivery",
            Self::Finished => "finished",
            Self::DuplicateOf(_) => "duplicate",
        }
    }
}

/// What followed the stream sequence in the entry of a delivery an earlier version finished.
const FINISHED: &str = "finished";

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

    /// Claims the delivery's key for its stream sequence; the entry is `<sequence> <now>`.
    pub async fn claim(&self, delivery: &Delivery) -> Result<Claim, Error> {
        let key = key(delivery);
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let claim = format!("{} {now}", delivery.sequence);
        // Twice at most: the holder may expire between our create and our read.
        for _ in 0..2 {
            match self.store.create(&key, claim.clone().into()).await {
                Ok(_) => return Ok(Claim::First),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(Error::nats(error)),
            }
            let entry = self.store.get(&key).await.map_err(Error::nats)?;
            if let Some(entry) = entry {
                return read_claim(&String::from_utf8_lossy(&entry), delivery.sequence).ok_or_else(
                    || {
                        Error::nats(format!(
                            "unreadable dedup entry for {}",
                            delivery.meta.key()
                        ))
                    },
                );
            }
        }
        Err(Error::nats(format!(
            "cannot claim dedup key for {}",
            delivery.meta.key()
        )))
    }
}

/// What an entry (`<sequence> <claimed at>`, or from earlier versions `<sequence>` and
/// `<sequence> finished`) means for the message at `sequence`.
fn read_claim(entry: &str, sequence: u64) -> Option<Claim> {
    let (holder, after) = entry.split_once(' ').unwrap_or((entry, ""));
    let holder: u64 = holder.parse().ok()?;
    Some(match after {
        _ if holder != sequence => Claim::DuplicateOf(holder),
        FINISHED => Claim::Finished,
        claimed_at => Claim::Redelivery {
            claimed_at: DateTime::parse_from_rfc3339(claimed_at)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        },
    })
}

/// The entry's key: delivery ids may hold any character, KV keys may not.
fn key(delivery: &Delivery) -> String {
    hex::encode(Sha256::digest(delivery.meta.key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_this_and_earlier_versions_are_read() {
        let at = "2026-12-07T10:00:00.000000001Z";
        let claimed_at = DateTime::parse_from_rfc3339(at).map(|t| t.with_timezone(&Utc));
        assert_eq!(
            read_claim(&format!("7 {at}"), 7),
            Some(Claim::Redelivery {
                claimed_at: claimed_at.ok()
            })
        );
        assert_eq!(
            read_claim(&format!("7 {at}"), 9),
            Some(Claim::DuplicateOf(7))
        );
        assert_eq!(
            read_claim("7", 7),
            Some(Claim::Redelivery { claimed_at: None })
        );
        assert_eq!(read_claim("7 finished", 7), Some(Claim::Finished));
        assert_eq!(read_claim("7 finished", 8), Some(Claim::DuplicateOf(7)));
        assert_eq!(read_claim("seven", 7), None);
    }
}
