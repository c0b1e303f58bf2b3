//! A delivery as the dispatcher handles it: where it is in the stream, and its metadata as the
//! shared contract reads it from the message headers.

use async_nats::HeaderMap;
use fluxgate_shared::contract::DeliveryMeta;

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sequence: u64,
    pub meta: DeliveryMeta,
}

impl Delivery {
    /// Reads the headers of a message stored on `subject`; a message missing the delivery id
    /// or the receiver is poison. Replay fields on a delivery subject are ignored (the contract
    /// believes them only on a replay subject) and said so.
    pub fn read(sequence: u64, subject: &str, headers: Option<&HeaderMap>) -> Result<Self, Error> {
        let (meta, ignored_replay) = DeliveryMeta::read_noting_ignored_replay(subject, headers)?;
        if ignored_replay {
            tracing::warn!(
                seq = sequence,
                %subject,
                "replay headers on a delivery subject ignored: only a replay subject carries replays"
            );
        }
        Ok(Self { sequence, meta })
    }
}
