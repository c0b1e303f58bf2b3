//! Reads a delivery's metadata back from its stream message headers (DESIGN.md's contract).

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use fluxgate_shared::contract::{self, header};

use crate::error::Error;

/// What the dispatcher needs to know about a stored webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sequence: u64,
    pub id: String,
    /// The sender gave the id: the delivery takes part in deduplication.
    pub from_sender: bool,
    pub namespace: String,
    pub receiver: String,
    pub event: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    /// The sequence of the delivery this message replays (`fluxgate replay`).
    pub replay_of: Option<u64>,
}

impl Delivery {
    /// Reads the headers; a message missing the delivery id or the receiver is poison.
    pub fn from_headers(sequence: u64, headers: Option<&HeaderMap>) -> Result<Self, Error> {
        let headers = headers.ok_or_else(|| Error::Poison("message has no headers".into()))?;
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        let require =
            |name: &str| get(name).ok_or_else(|| Error::Poison(format!("missing header {name}")));
        Ok(Self {
            sequence,
            id: require(header::DELIVERY_ID)?,
            from_sender: get(header::DELIVERY_ID_SOURCE).as_deref()
                == Some(contract::DELIVERY_ID_FROM_SENDER),
            namespace: require(header::RECEIVER_NAMESPACE)?,
            receiver: require(header::RECEIVER_NAME)?,
            event: get(header::EVENT),
            received_at: get(header::RECEIVED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            replay_of: get(header::REPLAY_OF_SEQ).and_then(|s| s.parse().ok()),
        })
    }

    /// `<namespace>/<receiver>/<delivery-id>`, the deduplication key.
    pub fn key(&self) -> String {
        contract::delivery_key(&self.namespace, &self.receiver, &self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, *v);
        }
        map
    }

    #[test]
    fn reads_a_complete_delivery() {
        let h = headers(&[
            (header::DELIVERY_ID, "d-1"),
            (header::DELIVERY_ID_SOURCE, "sender"),
            (header::RECEIVER_NAMESPACE, "flux-system"),
            (header::RECEIVER_NAME, "gh"),
            (header::EVENT, "push"),
            (header::RECEIVED_AT, "2026-11-23T00:00:00.123456789Z"),
        ]);
        let d = Delivery::from_headers(7, Some(&h)).expect("valid");
        assert_eq!((d.sequence, d.id.as_str(), d.from_sender), (7, "d-1", true));
        assert_eq!(d.key(), "flux-system/gh/d-1");
        assert_eq!(
            d.received_at.map(|t| t.timestamp_subsec_nanos()),
            Some(123_456_789)
        );
    }

    #[test]
    fn generated_ids_do_not_take_part_in_dedup() {
        let h = headers(&[
            (header::DELIVERY_ID, "u"),
            (header::DELIVERY_ID_SOURCE, "generated"),
            (header::RECEIVER_NAMESPACE, "n"),
            (header::RECEIVER_NAME, "r"),
        ]);
        assert!(
            !Delivery::from_headers(1, Some(&h))
                .expect("valid")
                .from_sender
        );
    }

    #[test]
    fn missing_metadata_is_poison() {
        assert!(matches!(
            Delivery::from_headers(1, None),
            Err(Error::Poison(_))
        ));
        let h = headers(&[(header::DELIVERY_ID, "d")]);
        let error = Delivery::from_headers(1, Some(&h)).expect_err("poison");
        assert!(error.to_string().contains(header::RECEIVER_NAMESPACE));
    }
}
