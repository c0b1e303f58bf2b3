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
    /// Reads the headers; a message missing the delivery id or the receiver is poison.
    pub fn read(sequence: u64, headers: Option<&HeaderMap>) -> Result<Self, Error> {
        Ok(Self {
            sequence,
            meta: DeliveryMeta::from_headers(headers)?,
        })
    }
}
