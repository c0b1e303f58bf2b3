//! A delivery's metadata, the headers of its message in `FLUXGATE_DELIVERIES`: written by
//! ingest (and by a replay), read by the dispatcher and the CLI, through this one type.

use async_nats::{HeaderMap, HeaderName};
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::AsyncReadExt as _;

use super::{
    BODIES_OBJECT_STORE, delivery_key, delivery_subject, header, is_replay_subject, replay_subject,
};
use crate::error::Error;

/// Where a delivery id came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdSource {
    /// The sender's own id: a repeat of it is a duplicate.
    Sender,
    /// Made up by ingest (unique): such a delivery is never a duplicate.
    #[default]
    Generated,
}

impl IdSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sender => "sender",
            Self::Generated => "generated",
        }
    }
}

/// Everything the headers of a delivery message say about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryMeta {
    pub id: String,
    pub id_source: IdSource,
    pub namespace: String,
    pub receiver: String,
    /// `spec.type` of the receiver (`github`, ...).
    pub receiver_type: String,
    /// The provider's event name (`push`, `Push Hook`, ...); none for types without events.
    pub event: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    pub content_type: Option<String>,
    /// Lowercase hex SHA-256 of the raw body.
    pub body_sha256: Option<String>,
    pub body_size: u64,
    /// The object in `fluxgate-bodies` holding the body, when it was too large for a message.
    pub body_object: Option<String>,
    pub traceparent: Option<String>,
    /// The stream sequence of the delivery this message replays.
    pub replay_of: Option<u64>,
    /// Who asked for the replay.
    pub replay_actor: Option<String>,
    /// The verified ID token's claims as JSON (generic-oidc), never the token.
    pub oidc_claims: Option<String>,
}

/// The contract's header names, parsed once at compile time instead of on every request.
mod names {
    use super::{HeaderName, header};

    pub const DELIVERY_ID: HeaderName = HeaderName::from_static(header::DELIVERY_ID);
    pub const DELIVERY_ID_SOURCE: HeaderName = HeaderName::from_static(header::DELIVERY_ID_SOURCE);
    pub const RECEIVER_NAMESPACE: HeaderName = HeaderName::from_static(header::RECEIVER_NAMESPACE);
    pub const RECEIVER_NAME: HeaderName = HeaderName::from_static(header::RECEIVER_NAME);
    pub const RECEIVER_TYPE: HeaderName = HeaderName::from_static(header::RECEIVER_TYPE);
    pub const EVENT: HeaderName = HeaderName::from_static(header::EVENT);
    pub const RECEIVED_AT: HeaderName = HeaderName::from_static(header::RECEIVED_AT);
    pub const CONTENT_TYPE: HeaderName = HeaderName::from_static(header::CONTENT_TYPE);
    pub const BODY_SHA256: HeaderName = HeaderName::from_static(header::BODY_SHA256);
    pub const BODY_SIZE: HeaderName = HeaderName::from_static(header::BODY_SIZE);
    pub const BODY_OBJECT: HeaderName = HeaderName::from_static(header::BODY_OBJECT);
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(header::TRACEPARENT);
    pub const REPLAY_OF_SEQ: HeaderName = HeaderName::from_static(header::REPLAY_OF_SEQ);
    pub const REPLAY_ACTOR: HeaderName = HeaderName::from_static(header::REPLAY_ACTOR);
    pub const OIDC_CLAIMS: HeaderName = HeaderName::from_static(header::OIDC_CLAIMS);
}

impl DeliveryMeta {
    /// `<namespace>/<receiver>/<delivery-id>`: the deduplication key and `Nats-Msg-Id`.
    pub fn key(&self) -> String {
        delivery_key(&self.namespace, &self.receiver, &self.id)
    }

    /// `fluxgate.deliveries.<namespace>.<receiver>`, with a last token `.replay` for a replay.
    pub fn subject(&self) -> String {
        match self.replay_of {
            Some(_) => replay_subject(&self.namespace, &self.receiver),
            None => delivery_subject(&self.namespace, &self.receiver),
        }
    }

    /// The metadata as message headers; absent values are absent headers. The request's kept
    /// headers are added by the writer.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let mut put = |name: HeaderName, value: Option<String>| {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        };
        put(names::DELIVERY_ID, Some(self.id.clone()));
        put(
            names::DELIVERY_ID_SOURCE,
            Some(self.id_source.as_str().into()),
        );
        put(names::RECEIVER_NAMESPACE, Some(self.namespace.clone()));
        put(names::RECEIVER_NAME, Some(self.receiver.clone()));
        put(names::RECEIVER_TYPE, Some(self.receiver_type.clone()));
        put(names::EVENT, self.event.clone());
        let received_at = self
            .received_at
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true));
        put(names::RECEIVED_AT, received_at);
        put(names::CONTENT_TYPE, self.content_type.clone());
        put(names::BODY_SHA256, self.body_sha256.clone());
        put(names::BODY_SIZE, Some(self.body_size.to_string()));
        put(names::BODY_OBJECT, self.body_object.clone());
        put(names::TRACEPARENT, self.traceparent.clone());
        put(names::REPLAY_OF_SEQ, self.replay_of.map(|s| s.to_string()));
        put(names::REPLAY_ACTOR, self.replay_actor.clone());
        put(names::OIDC_CLAIMS, self.oidc_claims.clone());
        headers
    }

    /// Reads the metadata of a message stored on `subject`; a message without the delivery id
    /// or the receiver is not a delivery. The replay headers count only on a replay subject,
    /// which only the replay role may publish on: anywhere else they are ignored, so that
    /// whoever may publish deliveries cannot pass one off as a replay someone asked for.
    pub fn read(subject: &str, headers: Option<&HeaderMap>) -> Result<Self, Error> {
        let headers =
            headers.ok_or_else(|| Error::NotADelivery("message has no headers".into()))?;
        // By the names' constants: a `&str` would be turned into a name, allocated, each time.
        let get = |name: HeaderName| {
            headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        let require = |name: HeaderName| {
            get(name.clone()).ok_or_else(|| Error::NotADelivery(format!("missing header {name}")))
        };
        let replay = is_replay_subject(subject);
        Ok(Self {
            id: require(names::DELIVERY_ID)?,
            id_source: match get(names::DELIVERY_ID_SOURCE).as_deref() {
                Some("sender") => IdSource::Sender,
                _ => IdSource::Generated,
            },
            namespace: require(names::RECEIVER_NAMESPACE)?,
            receiver: require(names::RECEIVER_NAME)?,
            receiver_type: get(names::RECEIVER_TYPE).unwrap_or_default(),
            event: get(names::EVENT),
            received_at: get(names::RECEIVED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            content_type: get(names::CONTENT_TYPE),
            body_sha256: get(names::BODY_SHA256),
            body_size: get(names::BODY_SIZE)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            body_object: get(names::BODY_OBJECT),
            traceparent: get(names::TRACEPARENT),
            replay_of: replay
                .then(|| get(names::REPLAY_OF_SEQ))
                .flatten()
                .and_then(|s| s.parse().ok()),
            replay_actor: replay.then(|| get(names::REPLAY_ACTOR)).flatten(),
            oidc_claims: get(names::OIDC_CLAIMS),
        })
    }

    /// The webhook's body: the message payload, or the object it names in the object store.
    pub async fn body(
        &self,
        jetstream: &async_nats::jetstream::Context,
        payload: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let Some(object) = &self.body_object else {
            return Ok(payload.to_vec());
        };
        let mut body = Vec::new();
        jetstream
            .get_object_store(BODIES_OBJECT_STORE)
            .await
            .map_err(Error::nats)?
            .get(object)
            .await
            .map_err(Error::nats)?
            .read_to_end(&mut body)
            .await
            .map_err(Error::nats)?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> DeliveryMeta {
        DeliveryMeta {
            id: "d-1".into(),
            id_source: IdSource::Sender,
            namespace: "flux-system".into(),
            receiver: "app.github".into(),
            receiver_type: "github".into(),
            event: Some("push".into()),
            received_at: DateTime::parse_from_rfc3339("2026-11-23T00:00:00.123456789Z")
                .map(|t| t.with_timezone(&Utc))
                .ok(),
            content_type: Some("application/json".into()),
            body_sha256: Some("ab".repeat(32)),
            body_size: 2,
            body_object: Some("sha256-x".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            replay_of: Some(7),
            replay_actor: Some("alice".into()),
            oidc_claims: Some(r#"{"sub":"ci"}"#.into()),
        }
    }

    #[test]
    fn every_field_survives_the_headers() {
        let bare = DeliveryMeta {
            id: "u".into(),
            namespace: "n".into(),
            receiver: "r".into(),
            ..Default::default()
        };
        for meta in [complete(), bare] {
            let headers = meta.to_headers();
            assert_eq!(
                DeliveryMeta::read(&meta.subject(), Some(&headers)).expect("read"),
                meta
            );
        }
    }

    #[test]
    fn absent_values_are_absent_headers() {
        let bare = DeliveryMeta {
            id: "u".into(),
            namespace: "n".into(),
            receiver: "r".into(),
            ..Default::default()
        };
        let headers = bare.to_headers();
        for name in [header::EVENT, header::REPLAY_OF_SEQ, header::BODY_OBJECT] {
            assert!(headers.get(name).is_none(), "{name} written");
        }
        assert_eq!(
            headers.get(header::DELIVERY_ID_SOURCE).map(|v| v.as_str()),
            Some("generated")
        );
    }

    #[test]
    fn key_and_subject_are_scoped_by_receiver() {
        let meta = complete();
        assert_eq!(meta.key(), "flux-system/app.github/d-1");
        assert_eq!(
            meta.subject(),
            "fluxgate.deliveries.flux-system.app_github.replay"
        );
        assert_eq!(meta.id_source, IdSource::Sender);
        let original = DeliveryMeta {
            replay_of: None,
            ..meta
        };
        assert_eq!(
            original.subject(),
            "fluxgate.deliveries.flux-system.app_github"
        );
    }

    #[test]
    fn replay_headers_count_only_on_a_replay_subject() {
        let replay = complete();
        let headers = replay.to_headers();
        let on_deliveries = delivery_subject(&replay.namespace, &replay.receiver);
        let read = DeliveryMeta::read(&on_deliveries, Some(&headers)).expect("read");
        assert_eq!(read.replay_of, None);
        assert_eq!(read.replay_actor, None);
        assert_eq!(read.id, replay.id);
        let read = DeliveryMeta::read(&replay.subject(), Some(&headers)).expect("read");
        assert_eq!(read.replay_of, Some(7));
    }

    #[test]
    fn missing_metadata_is_not_a_delivery() {
        assert!(matches!(
            DeliveryMeta::read("fluxgate.deliveries.n.r", None),
            Err(Error::NotADelivery(_))
        ));
        let mut headers = HeaderMap::new();
        headers.insert(header::DELIVERY_ID, "d");
        let error = DeliveryMeta::read("fluxgate.deliveries.n.r", Some(&headers))
            .expect_err("not a delivery");
        assert!(error.to_string().contains(header::RECEIVER_NAMESPACE));
    }
}
