//! Delivery history, computed from the streams alone: the deliveries' headers (read without
//! their bodies) joined with their outcome events, and each delivery's status derived from
//! them. Filters go to the server where they can: the receiver and an outcome's type are
//! subject tokens, `since` is a consumer's start time, and newest-first listing reads back from
//! the end of a stream in growing sequence windows (deliveries, and the outcomes that follow
//! them) instead of from its start; only event, `until` and the final status check are matched
//! here.

use std::collections::HashMap;
use std::ops::ControlFlow;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use chrono::{DateTime, Utc};
use fluxgate_shared::contract::{self, header};
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::Value;

use crate::delivery::Delivery;
use crate::error::Error;

/// A stored delivery, as its headers describe it.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub seq: u64,
    pub id: String,
    /// `namespace/name`.
    pub receiver: String,
    pub receiver_type: String,
    pub event: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    /// When the stream stored it (the server's clock, which outcome times share).
    pub stored_at: DateTime<Utc>,
    pub body_size: u64,
    /// The sequence of the delivery this one replays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<u64>,
    #[serde(skip)]
    pub headers: HeaderMap,
}

impl Stored {
    /// Reads the headers as the dispatcher does ([`Delivery::from_headers`]), plus what only
    /// the history shows.
    fn from_message(seq: u64, stored_at: DateTime<Utc>, headers: HeaderMap) -> Option<Self> {
        let delivery = Delivery::from_headers(seq, Some(&headers)).ok()?;
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        Some(Self {
            seq,
            id: delivery.id,
            receiver: format!("{}/{}", delivery.namespace, delivery.receiver),
            receiver_type: get(header::RECEIVER_TYPE).unwrap_or_default(),
            event: delivery.event,
            received_at: delivery.received_at,
            stored_at,
            body_size: get(header::BODY_SIZE)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            replay_of: delivery.replay_of,
            headers,
        })
    }
}

/// What became of a delivery, from its outcome events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored; the dispatcher has not resolved it yet.
    Accepted,
    /// Another message already carried this delivery.
    Duplicate,
    /// A target is being retried.
    Retrying,
    /// Something was given up on.
    Failed,
    /// Every target patched (or, with `--dry-run`, would have been); none may be left.
    Patched,
    /// Every target's controller has handled the request.
    Handled,
    /// Patched, but a target's controller did not handle the request in time.
    NotHandled,
}

impl Status {
    /// The outcome type every delivery with this status has (and few others do), for finding
    /// them by subject; `accepted` and `patched` are the common case and are found by reading
    /// back from the newest delivery.
    fn telltale(self) -> Option<&'static str> {
        match self {
            Self::Duplicate => Some("duplicate"),
            Self::Retrying => Some("retrying"),
            Self::Failed => Some("failed"),
            Self::Handled => Some("handled"),
            Self::NotHandled => Some("not_handled"),
            Self::Accepted | Self::Patched => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Patched => "patched",
            Self::Handled => "handled",
            Self::NotHandled => "not_handled",
        }
    }
}

/// A delivery with its outcome trail and what it adds up to.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub delivery: Stored,
    pub status: Status,
    /// Targets resolved by the dispatcher.
    pub targets: usize,
    /// From receipt to the last patch (or handling), once there is one.
    pub latency_ms: Option<i64>,
    /// Outcome events, oldest first.
    pub outcomes: Vec<Value>,
}

impl Summary {
    pub fn new(delivery: Stored, outcomes: Vec<Value>) -> Self {
        let (status, targets) = status_of(&outcomes);
        let last_effect = outcomes
            .iter()
            .filter(|e| matches!(kind(e), "patched" | "would_patch" | "handled"))
            .filter_map(|e| e["at"].as_str())
            .filter_map(|t| DateTime::parse_from_rfc3339(t).ok())
            .max();
        let latency_ms = match (delivery.received_at, last_effect) {
            (Some(received), Some(done)) => {
                Some((done.with_timezone(&Utc) - received).num_milliseconds())
            }
            _ => None,
        };
        Self {
            delivery,
            status,
            targets,
            latency_ms,
            outcomes,
        }
    }
}

/// Whether `event` is the first the dispatcher records about a delivery it handles. (One it
/// cannot handle at all gets a lone `failed`, which a refused reference after `dispatched`
/// also is: that is left to the other ways a read back is known to be complete.)
fn opens(event: &Value) -> bool {
    matches!(kind(event), "dispatched" | "duplicate")
}

fn kind(event: &Value) -> &str {
    event["type"].as_str().unwrap_or_default()
}

/// The status a trail of events adds up to, and the number of targets resolved.
pub fn status_of(events: &[Value]) -> (Status, usize) {
    if events.iter().any(|e| kind(e) == "duplicate") {
        return (Status::Duplicate, 0);
    }
    let Some(dispatched) = events.iter().find(|e| kind(e) == "dispatched") else {
        let failed = events.iter().any(|e| kind(e) == "failed");
        return (
            if failed {
                Status::Failed
            } else {
                Status::Accepted
            },
            0,
        );
    };
    let targets: Vec<&Value> = dispatched["targets"]
        .as_array()
        .map(|t| t.iter().collect())
        .unwrap_or_default();
    // The last word on each target.
    let mut last: HashMap<String, &str> = HashMap::new();
    let mut failed = false;
    for event in events {
        match kind(event) {
            "failed" if event.get("target").is_none() => failed = true,
            "failed" | "patched" | "would_patch" | "retrying" | "handled" | "not_handled" => {
                last.insert(event["target"].to_string(), kind(event));
            }
            _ => {}
        }
    }
    let states: Vec<&str> = targets
        .iter()
        .map(|t| last.get(&t.to_string()).copied().unwrap_or("pending"))
        .collect();
    let status = if failed || states.contains(&"failed") {
        Status::Failed
    } else if states.contains(&"not_handled") {
        Status::NotHandled
    } else if states.contains(&"retrying") {
        Status::Retrying
    } else if states.contains(&"pending") {
        Status::Accepted
    } else if !states.is_empty() && states.iter().all(|s| *s == "handled") {
        Status::Handled
    } else {
        Status::Patched
    };
    (status, targets.len())
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `namespace/name`.
    pub receiver: Option<(String, String)>,
    pub status: Option<Status>,
    pub event: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Filter {
    fn delivery_subject(&self) -> String {
        match &self.receiver {
            Some((namespace, name)) => contract::delivery_subject(namespace, name),
            None => format!("{}.>", contract::DELIVERIES_SUBJECT_PREFIX),
        }
    }

    /// Outcome events of the receiver (or of all), of one type or all.
    fn outcome_subject(&self, kind: &str) -> String {
        match &self.receiver {
            Some((namespace, name)) => contract::outcome_subject(namespace, name, kind),
            None => format!("{}.*.*.{kind}", contract::OUTCOMES_SUBJECT_PREFIX),
        }
    }

    fn keeps(&self, delivery: &Stored) -> bool {
        let event_ok = self.event.as_ref().is_none_or(|e| {
            delivery
                .event
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(e))
        });
        let until_ok = self.until.is_none_or(|until| delivery.stored_at <= until);
        event_ok && until_ok
    }
}

/// Reads the history in the streams.
pub struct History {
    jetstream: jetstream::Context,
}

impl History {
    pub fn new(jetstream: jetstream::Context) -> Self {
        Self { jetstream }
    }

    async fn stream(&self, name: &str) -> Result<Stream, Error> {
        self.jetstream.get_stream(name).await.map_err(Error::nats)
    }

    /// The newest deliveries matching `filter`, newest first, at most `filter.limit`.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Summary>, Error> {
        let mut summaries = match filter.status.and_then(Status::telltale) {
            Some(kind) => self.list_by_outcome(filter, kind).await?,
            None => self.list_by_delivery(filter).await?,
        };
        summaries.sort_by_key(|s| std::cmp::Reverse(s.delivery.seq));
        summaries.truncate(filter.limit);
        Ok(summaries)
    }

    /// Reads deliveries back from the end of the stream (or from `since`) in growing windows
    /// until `limit` of them match.
    async fn list_by_delivery(&self, filter: &Filter) -> Result<Vec<Summary>, Error> {
        let mut deliveries = self.stream(contract::DELIVERIES_STREAM).await?;
        let state = deliveries.info().await.map_err(Error::nats)?.state.clone();
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        let mut window = (filter.limit as u64).max(64);
        loop {
            let from = state
                .last_sequence
                .saturating_sub(window - 1)
                .max(state.first_sequence);
            let start = match filter.since {
                Some(since) => DeliverPolicy::ByStartTime {
                    start_time: to_offset(since),
                },
                None => DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
            };
            let mut found = Vec::new();
            scan(
                &deliveries,
                &filter.delivery_subject(),
                start,
                true,
                |message| {
                    if let Some(stored) = stored(message)
                        && filter.keeps(&stored)
                    {
                        found.push(stored);
                    }
                    ControlFlow::Continue(())
                },
            )
            .await?;
            // The newest first: only they can be listed, and only their trails are read.
            found.sort_by_key(|d| std::cmp::Reverse(d.seq));
            if filter.status.is_none() {
                found.truncate(filter.limit);
            }
            let mut summaries = self.with_trails(filter, found).await?;
            summaries.retain(|s| filter.status.is_none_or(|status| s.status == status));
            if summaries.len() >= filter.limit
                || filter.since.is_some()
                || from <= state.first_sequence
            {
                return Ok(summaries);
            }
            window = window.saturating_mul(4);
        }
    }

    /// For a status that an outcome type betrays (`failed`, `handled`, ...): the deliveries
    /// with such an event, found by that type's subject, then checked.
    async fn list_by_outcome(&self, filter: &Filter, kind: &str) -> Result<Vec<Summary>, Error> {
        let Ok(outcomes) = self.stream(contract::OUTCOMES_STREAM).await else {
            return Ok(Vec::new());
        };
        let start = filter
            .since
            .map_or(DeliverPolicy::All, |since| DeliverPolicy::ByStartTime {
                start_time: to_offset(since),
            });
        let mut candidates = Vec::new();
        scan(
            &outcomes,
            &filter.outcome_subject(kind),
            start,
            false,
            |message| {
                if let Ok(event) = serde_json::from_slice::<Value>(&message.payload)
                    && let Some(seq) = event["seq"].as_u64()
                {
                    candidates.push(seq);
                }
                ControlFlow::Continue(())
            },
        )
        .await?;
        candidates.sort_unstable_by_key(|seq| std::cmp::Reverse(*seq));
        candidates.dedup();
        let deliveries = self.stream(contract::DELIVERIES_STREAM).await?;
        let mut summaries = Vec::new();
        // In batches, newest first, until enough have the status.
        for batch in candidates.chunks(filter.limit.max(16)) {
            let mut found = Vec::with_capacity(batch.len());
            for &seq in batch {
                if let Ok(message) = message_at(&deliveries, seq).await
                    && let Some(stored) =
                        Stored::from_message(seq, from_offset(message.time), message.headers)
                    && filter.keeps(&stored)
                {
                    found.push(stored);
                }
            }
            let mut checked = self.with_trails(filter, found).await?;
            checked.retain(|s| filter.status.is_none_or(|status| s.status == status));
            summaries.extend(checked);
            if summaries.len() >= filter.limit {
                break;
            }
        }
        Ok(summaries)
    }

    /// Joins deliveries with their outcome trails.
    async fn with_trails(
        &self,
        filter: &Filter,
        found: Vec<Stored>,
    ) -> Result<Vec<Summary>, Error> {
        let Some(oldest) = found.iter().map(|d| d.stored_at).min() else {
            return Ok(Vec::new());
        };
        let wanted = found.iter().map(|d| d.seq).collect();
        let mut by_seq = self
            .trails(&filter.outcome_subject("*"), &wanted, oldest)
            .await?;
        Ok(found
            .into_iter()
            .map(|d| {
                let events = by_seq.remove(&d.seq).unwrap_or_default();
                Summary::new(d, events)
            })
            .collect())
    }

    /// The outcome events on `subject` of the deliveries `wanted`, stored at `oldest` or later.
    /// Outcomes follow their deliveries, so the newest deliveries' are near the end of the
    /// stream: it is read back from the end in growing windows, until the window holds every
    /// wanted delivery's first event (nothing about it came before), or starts before `oldest`
    /// or at the start of the stream.
    async fn trails(
        &self,
        subject: &str,
        wanted: &std::collections::HashSet<u64>,
        oldest: DateTime<Utc>,
    ) -> Result<HashMap<u64, Vec<Value>>, Error> {
        let Ok(mut outcomes) = self.stream(contract::OUTCOMES_STREAM).await else {
            // No dispatcher has run yet.
            return Ok(HashMap::new());
        };
        let state = outcomes.info().await.map_err(Error::nats)?.state.clone();
        let mut window = (wanted.len() as u64 * 8).max(256);
        loop {
            let from = state
                .last_sequence
                .saturating_sub(window - 1)
                .max(state.first_sequence);
            // Complete once the window starts before the oldest delivery was stored: every
            // event about it came later. (By the stream's own clock, whatever the subject.)
            let complete = from <= state.first_sequence
                || message_at(&outcomes, from)
                    .await
                    .is_ok_and(|m| from_offset(m.time) < oldest);
            let mut by_seq: HashMap<u64, Vec<Value>> = HashMap::new();
            let start = DeliverPolicy::ByStartSequence {
                start_sequence: from,
            };
            scan(&outcomes, subject, start, false, |message| {
                if let Ok(event) = serde_json::from_slice::<Value>(&message.payload)
                    && let Some(seq) = event["seq"].as_u64()
                    && wanted.contains(&seq)
                {
                    by_seq.entry(seq).or_default().push(event);
                }
                ControlFlow::Continue(())
            })
            .await?;
            let all_opened = wanted.iter().all(|seq| {
                by_seq
                    .get(seq)
                    .is_some_and(|events| events.iter().any(opens))
            });
            if complete || all_opened {
                return Ok(by_seq);
            }
            window = window.saturating_mul(4);
        }
    }

    /// New deliveries (headers only) and new outcome events matching `filter`'s receiver, as
    /// they are stored, from now on.
    pub async fn follow(
        &self,
        filter: &Filter,
    ) -> Result<
        (
            impl futures::Stream<Item = Result<Stored, Error>> + use<>,
            impl futures::Stream<Item = Result<Value, Error>> + use<>,
        ),
        Error,
    > {
        let deliveries = follow(
            &self.stream(contract::DELIVERIES_STREAM).await?,
            &filter.delivery_subject(),
            true,
        )
        .await?
        .filter_map(|message| async move {
            match message {
                Ok(message) => stored(message).map(Ok),
                Err(error) => Some(Err(error)),
            }
        });
        let outcomes = follow(
            &self.stream(contract::OUTCOMES_STREAM).await?,
            &filter.outcome_subject("*"),
            false,
        )
        .await?
        .filter_map(|message| async move {
            match message {
                Ok(message) => serde_json::from_slice::<Value>(&message.payload)
                    .ok()
                    .map(Ok),
                Err(error) => Some(Err(error)),
            }
        });
        Ok((deliveries, outcomes))
    }

    /// One delivery by stream sequence, with its body and outcome trail.
    pub async fn by_seq(&self, seq: u64) -> Result<(Summary, bytes::Bytes), Error> {
        let mut deliveries = self.stream(contract::DELIVERIES_STREAM).await?;
        let message = match message_at(&deliveries, seq).await {
            Ok(message) => message,
            Err(error) => {
                let state = deliveries.info().await.map_err(Error::nats)?.state.clone();
                return Err(if seq < state.first_sequence {
                    Error::AgedOut(format!(
                        "delivery #{seq} has aged out of {} (the oldest kept is #{})",
                        contract::DELIVERIES_STREAM,
                        state.first_sequence
                    ))
                } else {
                    Error::NotFound(format!("no delivery #{seq}: {error}"))
                });
            }
        };
        let stored_at = from_offset(message.time);
        let delivery = Stored::from_message(seq, stored_at, message.headers)
            .ok_or_else(|| Error::NotFound(format!("message #{seq} is not a delivery")))?;
        let (namespace, name) = delivery.receiver.split_once('/').unwrap_or_default();
        let subject = contract::outcome_subject(namespace, name, "*");
        let mut events = self.trails(&subject, &[seq].into(), stored_at).await?;
        let summary = Summary::new(delivery, events.remove(&seq).unwrap_or_default());
        Ok((summary, message.payload))
    }

    /// The sequences of the deliveries with this id (a delivery and its replays), oldest first.
    pub async fn find(
        &self,
        id: &str,
        receiver: Option<&(String, String)>,
    ) -> Result<Vec<u64>, Error> {
        let deliveries = self.stream(contract::DELIVERIES_STREAM).await?;
        let filter = Filter {
            receiver: receiver.cloned(),
            ..Default::default()
        };
        let mut found = Vec::new();
        scan(
            &deliveries,
            &filter.delivery_subject(),
            DeliverPolicy::All,
            true,
            |message| {
                let headers = message.headers.as_ref();
                if headers
                    .and_then(|h| h.get(header::DELIVERY_ID))
                    .map(|v| v.as_str())
                    == Some(id)
                    && let Ok(info) = message.info()
                {
                    found.push(info.stream_sequence);
                }
                ControlFlow::Continue(())
            },
        )
        .await?;
        Ok(found)
    }
}

fn stored(message: jetstream::Message) -> Option<Stored> {
    let info = message.info().ok()?;
    let (seq, stored_at) = (info.stream_sequence, from_offset(info.published));
    Stored::from_message(seq, stored_at, message.headers.clone()?)
}

/// Reads every message of `stream` on `subject` from `start` up to the last one there was when
/// the read began (headers only if asked), with an ordered consumer, until `each` breaks. The
/// end is that last message's sequence, asked for first: the consumers' pending counts are not
/// exact with wildcard filters on NATS 2.9, so waiting for them to reach zero could wait forever.
pub async fn scan(
    stream: &Stream,
    subject: &str,
    start: DeliverPolicy,
    headers_only: bool,
    mut each: impl FnMut(jetstream::Message) -> ControlFlow<()>,
) -> Result<(), Error> {
    let last = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(last) => last,
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
        Err(error) => return Err(Error::nats(error)),
    };
    let nothing_after_start = match start {
        DeliverPolicy::ByStartSequence { start_sequence } => last.sequence < start_sequence,
        DeliverPolicy::ByStartTime { start_time } => last.time < start_time,
        _ => false,
    };
    if nothing_after_start {
        return Ok(());
    }
    let consumer = ordered(stream, subject, start, headers_only).await?;
    let mut messages = consumer.messages().await.map_err(Error::nats)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(Error::nats)?;
        let sequence = message
            .info()
            .map(|i| i.stream_sequence)
            .unwrap_or(u64::MAX);
        if each(message).is_break() || sequence >= last.sequence {
            break;
        }
    }
    Ok(())
}

/// Message `seq` of `stream`: a direct get (any replica answers) where the stream allows them,
/// else through the stream's leader (a stream made without `allow_direct` has no responder for
/// direct gets, and asking one would wait for a timeout).
pub async fn message_at(
    stream: &Stream,
    seq: u64,
) -> Result<jetstream::message::StreamMessage, Error> {
    if stream.cached_info().config.allow_direct {
        stream.direct_get(seq).await.map_err(Error::nats)
    } else {
        stream.get_raw_message(seq).await.map_err(Error::nats)
    }
}

/// An ordered consumer (ephemeral, client-side ordered) of `subject` from `start`.
async fn ordered(
    stream: &Stream,
    subject: &str,
    start: DeliverPolicy,
    headers_only: bool,
) -> Result<jetstream::consumer::Consumer<pull::OrderedConfig>, Error> {
    stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: start,
            headers_only,
            ..Default::default()
        })
        .await
        .map_err(Error::nats)
}

/// The messages stored on `subject` from now on.
async fn follow(
    stream: &Stream,
    subject: &str,
    headers_only: bool,
) -> Result<impl futures::Stream<Item = Result<jetstream::Message, Error>> + use<>, Error> {
    let consumer = ordered(stream, subject, DeliverPolicy::New, headers_only).await?;
    let messages = consumer.messages().await.map_err(Error::nats)?;
    Ok(messages.map(|m| m.map_err(Error::nats)))
}

fn to_offset(time: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(
        time.timestamp_nanos_opt().unwrap_or_default().into(),
    )
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn from_offset(time: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(time.unix_timestamp_nanos()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "K", "namespace": "n", "name": name})
    }

    #[test]
    fn status_follows_the_last_word_on_each_target() {
        let dispatched = json!({"type": "dispatched", "targets": [target("a"), target("b")]});
        let patched = |n| json!({"type": "patched", "target": target(n)});
        let retrying = |n| json!({"type": "retrying", "target": target(n)});
        let handled = |n| json!({"type": "handled", "target": target(n)});
        assert_eq!(status_of(&[]), (Status::Accepted, 0));
        assert_eq!(
            status_of(std::slice::from_ref(&dispatched)),
            (Status::Accepted, 2)
        );
        assert_eq!(
            status_of(&[dispatched.clone(), patched("a"), retrying("b")]),
            (Status::Retrying, 2)
        );
        assert_eq!(
            status_of(&[
                dispatched.clone(),
                retrying("b"),
                patched("a"),
                patched("b")
            ]),
            (Status::Patched, 2)
        );
        assert_eq!(
            status_of(&[
                dispatched.clone(),
                patched("a"),
                patched("b"),
                handled("a"),
                handled("b")
            ]),
            (Status::Handled, 2)
        );
        let not_handled = json!({"type": "not_handled", "target": target("b"), "reason": "late"});
        assert_eq!(
            status_of(&[
                dispatched.clone(),
                patched("a"),
                patched("b"),
                handled("a"),
                not_handled
            ]),
            (Status::NotHandled, 2)
        );
        let failed = json!({"type": "failed", "target": target("b"), "reason": "404"});
        assert_eq!(
            status_of(&[dispatched.clone(), patched("a"), failed]),
            (Status::Failed, 2)
        );
        let whole = json!({"type": "failed", "reason": "not in the catalog"});
        assert_eq!(status_of(&[whole]), (Status::Failed, 0));
        assert_eq!(
            status_of(&[json!({"type": "duplicate", "of_seq": 1})]),
            (Status::Duplicate, 0)
        );
        let nothing = json!({"type": "dispatched", "targets": []});
        assert_eq!(status_of(&[nothing]), (Status::Patched, 0));
    }
}
