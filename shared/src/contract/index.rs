//! The delivery index: which stream sequences hold a delivery id, so that `fluxgate deliveries
//! show <id>` and `replay <id>` find a delivery without reading every header of the stream.
//! Each stored copy -- what ingest stores, each replay -- adds one small entry when the
//! dispatcher reads it, on a subject of 65,536 buckets by the id's hash: a look-up reads the few
//! entries of one bucket (about 15 at a million deliveries), and the server keeps per-subject
//! state for the buckets, not for every id. Entries are written in the order the deliveries
//! were stored, so the deliveries after the newest entry's are the only ones not indexed yet.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::DeliveryMeta;

/// Delivery id -> sequences, one message per stored copy ([`IndexEntry`]).
pub const INDEX_STREAM: &str = "FLUXGATE_INDEX";
/// Subjects of `INDEX_STREAM`: `fluxgate.index.<bucket>`, the bucket being the first four hex
/// digits of the id's SHA-256.
pub const INDEX_SUBJECT_PREFIX: &str = "fluxgate.index";

/// The subject of `id`'s bucket.
pub fn index_subject(id: &str) -> String {
    let hash = sha2::Sha256::digest(id.as_bytes());
    format!("{INDEX_SUBJECT_PREFIX}.{}", hex::encode(&hash[..2]))
}

/// One stored copy of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The delivery id.
    pub id: String,
    /// Its message's sequence in the deliveries stream.
    pub seq: u64,
    /// `namespace/name`.
    pub receiver: String,
    /// For a replay, the sequence it replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<u64>,
}

impl IndexEntry {
    /// The entry of the message at `seq` carrying `meta`.
    pub fn of(seq: u64, meta: &DeliveryMeta) -> Self {
        Self {
            id: meta.id.clone(),
            seq,
            receiver: format!("{}/{}", meta.namespace, meta.receiver),
            replay_of: meta.replay_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fall_in_one_of_65536_buckets() {
        let subject = index_subject("a-github-guid");
        let bucket = subject.strip_prefix("fluxgate.index.").expect("prefix");
        assert_eq!(bucket.len(), 4);
        assert!(bucket.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(index_subject("a-github-guid"), subject, "stable");
        // Any id -- dots, spaces, wildcards -- makes one valid subject token.
        assert!(!index_subject("a.b *>").contains(' '));
        assert_eq!(index_subject("a.b *>").matches('.').count(), 2);
    }
}
