//! A delivery's metadata, carried in the headers of its message in `FLUXGATE_DELIVERIES`:
//! written by ingest (and by a replay), read by the dispatcher and the CLI, through this one type.

use std::collections::BTreeMap;

use async_nats::{HeaderMap, HeaderName};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use super::{
    BODIES_OBJECT_STORE, delivery_key, delivery_subject, header, is_kept_request_header,
    is_replay_subject, replay_subject,
};
use crate::error::Error;

/// Where a delivery id came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdSource {
    /// The sender's own id: a repeat of it is a duplicate.
    Sender,
    /// Made up by ingest (unique): such a delivery is never a duplicate.
    #[default]
    Generated,
}

/// Everything the headers of a delivery message say about it. Stored as the JSON object of
/// [`header::DELIVERY`], absent values left out, next to the W3C [`header::TRACEPARENT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMeta {
    pub id: String,
    #[serde(default)]
    pub id_source: IdSource,
    pub namespace: String,
    pub receiver: String,
    /// `spec.type` of the receiver (`github`, ...).
    #[serde(default)]
    pub receiver_type: String,
    /// The provider's event name (`push`, `Push Hook`, ...); none for types without events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_nanos"
    )]
    pub received_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Lowercase hex SHA-256 of the raw body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    #[serde(default)]
    pub body_size: u64,
    /// The object in `fluxgate-bodies` holding the body, when it was too large for a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_object: Option<String>,
    /// A header of its own, the standard's.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// The stream sequence of the delivery this message replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<u64>,
    /// Who asked for the replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_actor: Option<String>,
    /// The verified ID token's claims as JSON (generic-oidc), never the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc_claims: Option<String>,
    /// The request headers worth keeping ([`super::KEPT_REQUEST_HEADERS`]), by lowercase name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_headers: BTreeMap<String, String>,
}

/// `received_at` as RFC 3339 UTC with nanoseconds.
mod rfc3339_nanos {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Nanos, true)),
            None => s.serialize_none(),
        }
    }

    /// A time that does not parse is no time, as an absent one: it only orders and shows.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let at = Option::<String>::deserialize(d)?;
        Ok(at.and_then(|at| super::parse_time(&at)))
    }
}

fn parse_time(at: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The contract's header names, parsed once at compile time instead of on every message.
mod names {
    use super::{HeaderName, header};

    pub const DELIVERY: HeaderName = HeaderName::from_static(header::DELIVERY);
    pub const TRACEPARENT: HeaderName = HeaderName::from_static(header::TRACEPARENT);
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

    /// The message headers: the metadata as one JSON header, and the `traceparent`. One header
    /// rather than one per value: each NATS header costs ingest a map entry and two allocations
    /// to write and the dispatcher as many to read; fifteen were 7 % of ingest's CPU per webhook
    /// in a profile, the one JSON header is 3 %.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // Room for a typical object (about 560 bytes) at once, rather than growing to it.
        let mut json = Vec::with_capacity(1024);
        // Strings, numbers and string maps only: serializing cannot fail, and JSON is UTF-8.
        let _ = serde_json::to_writer(&mut json, self);
        headers.insert(names::DELIVERY, String::from_utf8(json).unwrap_or_default());
        if let Some(traceparent) = &self.traceparent {
            headers.insert(names::TRACEPARENT, traceparent.as_str());
        }
        headers
    }

    /// Reads the metadata of a message stored on `subject`; a message without the delivery id
    /// or the receiver is not a delivery. The replay fields count only on a replay subject,
    /// which only the replay role may publish on: anywhere else they are ignored, so that
    /// whoever may publish deliveries cannot pass one off as a replay someone asked for.
    pub fn read(subject: &str, headers: Option<&HeaderMap>) -> Result<Self, Error> {
        Self::read_noting_ignored_replay(subject, headers).map(|(meta, _)| meta)
    }

    /// [`Self::read`], and whether the message claimed to be a replay off a replay subject.
    pub fn read_noting_ignored_replay(
        subject: &str,
        headers: Option<&HeaderMap>,
    ) -> Result<(Self, bool), Error> {
        let headers =
            headers.ok_or_else(|| Error::NotADelivery("message has no headers".into()))?;
        let mut meta = match headers.get(names::DELIVERY) {
            Some(json) => serde_json::from_str::<Self>(json.as_str()).map_err(|error| {
                Error::NotADelivery(format!("header {}: {error}", header::DELIVERY))
            })?,
            None => legacy::read(headers)?,
        };
        for (what, value) in [
            ("delivery id", &meta.id),
            ("receiver namespace", &meta.namespace),
            ("receiver name", &meta.receiver),
        ] {
            if value.is_empty() {
                return Err(Error::NotADelivery(format!("no {what}")));
            }
        }
        meta.traceparent = (headers.get(names::TRACEPARENT))
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty());
        let claims_replay = meta.replay_of.is_some() || meta.replay_actor.is_some();
        let ignored = claims_replay && !is_replay_subject(subject);
        if ignored {
            meta.replay_of = None;
            meta.replay_actor = None;
        }
        Ok((meta, ignored))
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

/// The form of deliveries stored before the metadata moved into one header: a header per
/// value (`Fluxgate-Delivery-Id`, ...) and the kept request headers as headers. Read so that
/// deliveries stored by an earlier ingest -- up to the stream's age -- are still dispatched,
/// listed and replayed.
mod legacy {
    use super::{DeliveryMeta, Error, HeaderMap, IdSource, is_kept_request_header, parse_time};

    pub fn read(headers: &HeaderMap) -> Result<DeliveryMeta, Error> {
        let get = |name: &str| {
            (headers.get(name))
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        let require = |name: &str| {
            get(name).ok_or_else(|| Error::NotADelivery(format!("missing header {name}")))
        };
        let mut request_headers = std::collections::BTreeMap::new();
        for (name, values) in headers.iter() {
            let name = name.to_string().to_ascii_lowercase();
            if let (true, Some(value)) = (is_kept_request_header(&name), values.last()) {
                request_headers.insert(name, value.as_str().to_owned());
            }
        }
        Ok(DeliveryMeta {
            id: require("Fluxgate-Delivery-Id")?,
            id_source: match get("Fluxgate-Delivery-Id-Source").as_deref() {
                Some("sender") => IdSource::Sender,
                _ => IdSource::Generated,
            },
            namespace: require("Fluxgate-Receiver-Namespace")?,
            receiver: require("Fluxgate-Receiver-Name")?,
            receiver_type: get("Fluxgate-Receiver-Type").unwrap_or_default(),
            event: get("Fluxgate-Event"),
            received_at: get("Fluxgate-Received-At").and_then(|t| parse_time(&t)),
            content_type: get("Fluxgate-Content-Type"),
            body_sha256: get("Fluxgate-Body-Sha256"),
            body_size: (get("Fluxgate-Body-Size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            body_object: get("Fluxgate-Body-Object"),
            traceparent: None,
            replay_of: get("Fluxgate-Replay-Of-Seq").and_then(|s| s.parse().ok()),
            replay_actor: get("Fluxgate-Replay-Actor"),
            oidc_claims: get("Fluxgate-Oidc-Claims"),
            request_headers,
        })
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
            request_headers: [
                ("x-github-event", "push"),
                ("user-agent", "GitHub-Hookshot/1"),
            ]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .into(),
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
    fn the_metadata_is_one_json_header_without_absent_values() {
        let bare = DeliveryMeta {
            id: "u".into(),
            namespace: "n".into(),
            receiver: "r".into(),
            ..Default::default()
        };
        let headers = bare.to_headers();
        assert_eq!(headers.len(), 1, "no traceparent, no other header");
        let json = headers
            .get(header::DELIVERY)
            .expect("the metadata")
            .as_str();
        assert_eq!(
            json,
            r#"{"id":"u","id_source":"generated","namespace":"n","receiver":"r","receiver_type":"","body_size":0}"#
        );
        let complete = complete().to_headers();
        let json = complete
            .get(header::DELIVERY)
            .expect("the metadata")
            .as_str();
        assert!(
            json.contains(r#""received_at":"2026-11-23T00:00:00.123456789Z""#),
            "{json}"
        );
        assert!(!json.contains("traceparent"), "a header of its own: {json}");
        assert!(
            complete
                .get(header::TRACEPARENT)
                .is_some_and(|v| v.as_str().starts_with("00-"))
        );
    }

    /// A delivery stored by an earlier ingest, a header per value, still reads whole.
    #[test]
    fn a_delivery_with_a_header_per_value_still_reads() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("Nats-Msg-Id", "flux-system/app.github/d-1"),
            ("Fluxgate-Delivery-Id", "d-1"),
            ("Fluxgate-Delivery-Id-Source", "sender"),
            ("Fluxgate-Receiver-Namespace", "flux-system"),
            ("Fluxgate-Receiver-Name", "app.github"),
            ("Fluxgate-Receiver-Type", "github"),
            ("Fluxgate-Event", "push"),
            ("Fluxgate-Received-At", "2026-11-23T00:00:00.123456789Z"),
            ("Fluxgate-Content-Type", "application/json"),
            ("Fluxgate-Body-Sha256", &"ab".repeat(32)),
            ("Fluxgate-Body-Size", "2"),
            ("Fluxgate-Body-Object", "sha256-x"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("Fluxgate-Replay-Of-Seq", "7"),
            ("Fluxgate-Replay-Actor", "alice"),
            ("Fluxgate-Oidc-Claims", r#"{"sub":"ci"}"#),
            ("X-GitHub-Event", "push"),
            ("User-Agent", "GitHub-Hookshot/1"),
        ] {
            headers.insert(name, value);
        }
        let expected = complete();
        let read = DeliveryMeta::read(&expected.subject(), Some(&headers)).expect("read");
        assert_eq!(read, expected);
        let (read, ignored) = DeliveryMeta::read_noting_ignored_replay(
            &delivery_subject(&expected.namespace, &expected.receiver),
            Some(&headers),
        )
        .expect("read");
        assert!(ignored && read.replay_of.is_none() && read.replay_actor.is_none());
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
        let (read, ignored) =
            DeliveryMeta::read_noting_ignored_replay(&on_deliveries, Some(&headers)).expect("read");
        assert!(ignored);
        assert_eq!(read.replay_of, None);
        assert_eq!(read.replay_actor, None);
        assert_eq!(read.id, replay.id);
        let (read, ignored) =
            DeliveryMeta::read_noting_ignored_replay(&replay.subject(), Some(&headers))
                .expect("read");
        assert!(!ignored);
        assert_eq!(read.replay_of, Some(7));
    }

    #[test]
    fn missing_metadata_is_not_a_delivery() {
        let subject = "fluxgate.deliveries.n.r";
        let not_a_delivery =
            |headers: Option<&HeaderMap>| match DeliveryMeta::read(subject, headers) {
                Err(Error::NotADelivery(reason)) => reason,
                other => panic!("expected not a delivery, got {other:?}"),
            };
        assert_eq!(not_a_delivery(None), "message has no headers");
        let with = |json: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::DELIVERY, json);
            headers
        };
        let reason = not_a_delivery(Some(&with(r#"{"id":"d","namespace":"n"}"#)));
        assert!(reason.contains("missing field `receiver`"), "{reason}");
        let reason = not_a_delivery(Some(&with(r#"{"id":"","namespace":"n","receiver":"r"}"#)));
        assert_eq!(reason, "no delivery id");
        assert!(not_a_delivery(Some(&with("not json"))).starts_with("header Fluxgate-Delivery: "));
        let mut legacy = HeaderMap::new();
        legacy.insert("Fluxgate-Delivery-Id", "d");
        let reason = not_a_delivery(Some(&legacy));
        assert!(reason.contains("Fluxgate-Receiver-Namespace"), "{reason}");
    }
}
