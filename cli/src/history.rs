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
use fluxgate_shared::contract::{self, DeliveryMeta, Event, IndexEntry, Outcome, Target};
use futures::StreamExt as _;
use serde::Serialize;

use crate::connect::Streams;
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
    /// Who replayed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_actor: Option<String>,
    /// The subject it was stored on (a delivery's or a replay's).
    #[serde(skip)]
    pub subject: String,
    #[serde(skip)]
    pub headers: HeaderMap,
}

impl Stored {
    /// Reads the headers as the dispatcher does, through the shared contract; a message that
    /// is not a delivery is left out.
    fn from_message(
        seq: u64,
        stored_at: DateTime<Utc>,
        subject: &str,
        headers: HeaderMap,
    ) -> Option<Self> {
        let meta = DeliveryMeta::read(subject, Some(&headers)).ok()?;
        Some(Self {
            seq,
            receiver: format!("{}/{}", meta.namespace, meta.receiver),
            id: meta.id,
            receiver_type: meta.receiver_type,
            event: meta.event,
            received_at: meta.received_at,
            stored_at,
            body_size: meta.body_size,
            replay_of: meta.replay_of,
            replay_actor: meta.replay_actor,
            subject: subject.to_owned(),
            headers,
        })
    }
}

/// What became of a delivery, from its outcome events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Status {
    /// Stored; the dispatcher has not resolved it yet.
    Accepted,
    /// Another message already carried this delivery.
    Duplicate,
    /// A target is being retried.
    Retrying,
    /// Something was given up on.
    Failed,
    /// Every target patched; none may be left.
    Patched,
    /// A dispatcher in `--dry-run` would have patched every target; nothing was patched.
    DryRun,
    /// Every target's controller has handled the request.
    Handled,
    /// Patched, but a target's controller did not handle the request in time.
    #[value(alias = "not-handled")]
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
            Self::Accepted | Self::Patched | Self::DryRun => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Patched => "patched",
            Self::DryRun => "dry_run",
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
    pub outcomes: Vec<Outcome>,
}

impl Summary {
    pub fn new(delivery: Stored, outcomes: Vec<Outcome>) -> Self {
        let (status, targets) = status_of(&outcomes);
        let last_effect = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o.event,
                    Event::Patched { .. } | Event::WouldPatch { .. } | Event::Handled { .. }
                )
            })
            .filter_map(Outcome::time)
            .max();
        let latency_ms = match (delivery.received_at, last_effect) {
            (Some(received), Some(done)) => Some((done - received).num_milliseconds()),
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

/// Whether `outcome` is the first the dispatcher records about a delivery it handles. (One it
/// cannot handle at all gets a lone `failed`, which a refused reference after `dispatched`
/// also is: that is left to the other ways a read back is known to be complete.)
fn opens(outcome: &Outcome) -> bool {
    matches!(
        outcome.event,
        Event::Dispatched { .. } | Event::Duplicate { .. }
    )
}

/// The status a trail of events adds up to, and the number of targets resolved.
pub fn status_of(outcomes: &[Outcome]) -> (Status, usize) {
    let events = || outcomes.iter().map(|o| &o.event);
    if events().any(|e| matches!(e, Event::Duplicate { .. })) {
        return (Status::Duplicate, 0);
    }
    let Some(targets) = events().find_map(|e| match e {
        Event::Dispatched { targets } => Some(targets),
        _ => None,
    }) else {
        let failed = events().any(|e| matches!(e, Event::Failed { .. }));
        return (
            if failed {
                Status::Failed
            } else {
                Status::Accepted
            },
            0,
        );
    };
    // The last word on each target, as the status it would give.
    let mut last: HashMap<&Target, Status> = HashMap::new();
    let mut failed = false;
    for event in events() {
        let word = match event {
            Event::Failed { target: None, .. } => {
                failed = true;
                continue;
            }
            Event::Failed { .. } => Status::Failed,
            Event::Patched { .. } => Status::Patched,
            Event::WouldPatch { .. } => Status::DryRun,
            Event::Retrying { .. } => Status::Retrying,
            Event::Handled { .. } => Status::Handled,
            Event::NotHandled { .. } => Status::NotHandled,
            _ => continue,
        };
        if let Some(target) = event.target() {
            last.insert(target, word);
        }
    }
    let states: Vec<Status> = targets
        .iter()
        .map(|t| last.get(t).copied().unwrap_or(Status::Accepted))
        .collect();
    let all = |status| !states.is_empty() && states.iter().all(|s| *s == status);
    let status = if failed || states.contains(&Status::Failed) {
        Status::Failed
    } else if states.contains(&Status::NotHandled) {
        Status::NotHandled
    } else if states.contains(&Status::Retrying) {
        Status::Retrying
    } else if states.contains(&Status::Accepted) {
        Status::Accepted
    } else if all(Status::Handled) {
        Status::Handled
    } else if all(Status::DryRun) {
        Status::DryRun
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
    /// Deliveries and replays of the receiver's namespace (or of all); [`Filter::is_receiver`]
    /// narrows them to the receiver.
    fn delivery_subject(&self) -> String {
        contract::deliveries_filter(
            self.receiver
                .as_ref()
                .map(|(namespace, _)| namespace.as_str()),
        )
    }

    /// The subjects to list from: a receiver's deliveries and its replays (two subjects, which
    /// the server filters without sending the namespace's other deliveries), or all of them.
    fn listing_subjects(&self) -> Vec<String> {
        match &self.receiver {
            Some((namespace, name)) => vec![
                contract::delivery_subject(namespace, name),
                contract::replay_subject(namespace, name),
            ],
            None => vec![contract::deliveries_filter(None)],
        }
    }

    fn is_receiver(&self, delivery: &Stored) -> bool {
        self.receiver.as_ref().is_none_or(|(namespace, name)| {
            delivery.receiver.split_once('/') == Some((namespace.as_str(), name.as_str()))
        })
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
        self.is_receiver(delivery) && event_ok && until_ok
    }
}

/// Reads the history in the streams.
pub struct History {
    streams: Streams,
}

impl History {
    pub fn new(streams: Streams) -> Self {
        Self { streams }
    }

    async fn stream(&self, name: &str) -> Result<Stream, Error> {
        self.streams.get(name).await
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

    /// Reads deliveries back from the end of the stream in growing windows until `limit` of
    /// them match, or the window reaches back past `since` (then it is read from `since`): the
    /// cost follows what is listed, not the size of the stream or of the `--since` window.
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
            let reaches_since = match filter.since {
                Some(since) => {
                    from <= state.first_sequence
                        || message_at(&deliveries, from)
                            .await
                            .is_ok_and(|m| from_offset(m.time) < since)
                }
                None => false,
            };
            let start = match filter.since {
                Some(since) if reaches_since => DeliverPolicy::ByStartTime {
                    start_time: to_offset(since),
                },
                _ => DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
            };
            let mut found = Vec::new();
            for subject in filter.listing_subjects() {
                scan(&deliveries, &subject, start, true, |message| {
                    if let Some(stored) = stored(message)
                        && filter.keeps(&stored)
                    {
                        found.push(stored);
                    }
                    ControlFlow::Continue(())
                })
                .await?;
            }
            // The newest first: only they can be listed, and only their trails are read.
            found.sort_by_key(|d| std::cmp::Reverse(d.seq));
            let last_window = reaches_since || from <= state.first_sequence;
            // Without a status to check, the trails are read once, for the deliveries listed.
            if filter.status.is_none() && found.len() < filter.limit && !last_window {
                window = window.saturating_mul(4);
                continue;
            }
            if filter.status.is_none() {
                found.truncate(filter.limit);
            }
            let mut summaries = self.with_trails(filter, found).await?;
            summaries.retain(|s| filter.status.is_none_or(|status| s.status == status));
            if summaries.len() >= filter.limit || last_window {
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
                if let Ok(outcome) = serde_json::from_slice::<Outcome>(&message.payload) {
                    candidates.push(outcome.seq);
                    candidates.extend(outcome.more.iter().map(|c| c.seq));
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
                    && let Some(stored) = Stored::from_message(
                        seq,
                        from_offset(message.time),
                        &message.subject,
                        message.headers,
                    )
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
    ) -> Result<HashMap<u64, Vec<Outcome>>, Error> {
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
            let mut by_seq: HashMap<u64, Vec<Outcome>> = HashMap::new();
            let start = DeliverPolicy::ByStartSequence {
                start_sequence: from,
            };
            scan(&outcomes, subject, start, false, |message| {
                if let Ok(outcome) = serde_json::from_slice::<Outcome>(&message.payload) {
                    for one in outcome.per_delivery() {
                        if wanted.contains(&one.seq) {
                            by_seq.entry(one.seq).or_default().push(one);
                        }
                    }
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
            impl futures::Stream<Item = Result<Outcome, Error>> + use<>,
        ),
        Error,
    > {
        let receiver = Filter {
            receiver: filter.receiver.clone(),
            ..Default::default()
        };
        let deliveries = follow(
            &self.stream(contract::DELIVERIES_STREAM).await?,
            &filter.delivery_subject(),
            true,
        )
        .await?
        .filter_map(move |message| {
            futures::future::ready(match message {
                Ok(message) => stored(message)
                    .filter(|delivery| receiver.is_receiver(delivery))
                    .map(Ok),
                Err(error) => Some(Err(error)),
            })
        });
        let outcomes = follow(
            &self.stream(contract::OUTCOMES_STREAM).await?,
            &filter.outcome_subject("*"),
            false,
        )
        .await?
        .flat_map(|message| {
            let each: Vec<Result<Outcome, Error>> = match message {
                Ok(message) => serde_json::from_slice::<Outcome>(&message.payload)
                    .map(|outcome| outcome.per_delivery().into_iter().map(Ok).collect())
                    .unwrap_or_default(),
                Err(error) => vec![Err(error)],
            };
            futures::stream::iter(each)
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
        let delivery = Stored::from_message(seq, stored_at, &message.subject, message.headers)
            .ok_or_else(|| Error::NotFound(format!("message #{seq} is not a delivery")))?;
        let (namespace, name) = delivery.receiver.split_once('/').unwrap_or_default();
        let subject = contract::outcome_subject(namespace, name, "*");
        let mut events = self.trails(&subject, &[seq].into(), stored_at).await?;
        let summary = Summary::new(delivery, events.remove(&seq).unwrap_or_default());
        Ok((summary, message.payload))
    }

    /// The sequences of the deliveries with this id (a delivery and its replays), oldest first:
    /// from the delivery index, which reads a few entries whatever the stream holds, when it
    /// covers the whole deliveries stream; else by reading every delivery's headers (a stream
    /// older than its index, kept from before fluxgate wrote one).
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
        if let Some(found) = self.find_indexed(&deliveries, id, &filter).await? {
            return Ok(found);
        }
        by_headers(&deliveries, id, &filter, DeliverPolicy::All).await
    }

    /// The id's sequences from the index, or `None` when there is no index or it starts after
    /// the oldest delivery kept. The dispatcher indexes deliveries as it reads them, in the
    /// order stored: those after the newest entry's are read by their headers (a backlog's
    /// worth, however long the stream).
    async fn find_indexed(
        &self,
        deliveries: &Stream,
        id: &str,
        filter: &Filter,
    ) -> Result<Option<Vec<u64>>, Error> {
        let Ok(mut index) = self.stream(contract::INDEX_STREAM).await else {
            return Ok(None);
        };
        let info = index.info().await.map_err(Error::nats)?;
        let (created, newest) = (info.created, info.state.last_sequence);
        let first = deliveries.cached_info().state.first_sequence;
        let covered = match message_at(deliveries, first).await {
            Ok(oldest) => oldest.time >= created,
            // An empty stream: nothing to miss.
            Err(_) => deliveries.cached_info().state.messages == 0,
        };
        if !covered {
            return Ok(None);
        }
        let mut found = Vec::new();
        let subject = contract::index_subject(id);
        scan(&index, &subject, DeliverPolicy::All, false, |message| {
            if let Ok(entry) = serde_json::from_slice::<IndexEntry>(&message.payload)
                && entry.id == id
                && filter.receiver.as_ref().is_none_or(|(namespace, name)| {
                    entry.receiver.split_once('/') == Some((namespace.as_str(), name.as_str()))
                })
                && entry.seq >= first
            {
                found.push(entry.seq);
            }
            ControlFlow::Continue(())
        })
        .await?;
        let indexed_to = match newest {
            0 => 0,
            newest => message_at(&index, newest)
                .await
                .ok()
                .and_then(|entry| serde_json::from_slice::<IndexEntry>(&entry.payload).ok())
                .map_or(0, |entry| entry.seq),
        };
        let start = DeliverPolicy::ByStartSequence {
            start_sequence: (indexed_to + 1).max(first),
        };
        found.extend(by_headers(deliveries, id, filter, start).await?);
        found.sort_unstable();
        found.dedup();
        Ok(Some(found))
    }
}

/// The sequences of the deliveries with this id from `start` on, read from every message's
/// headers.
async fn by_headers(
    deliveries: &Stream,
    id: &str,
    filter: &Filter,
    start: DeliverPolicy,
) -> Result<Vec<u64>, Error> {
    let mut found = Vec::new();
    scan(
        deliveries,
        &filter.delivery_subject(),
        start,
        true,
        |message| {
            if let Some(delivery) = stored(message)
                && delivery.id == id
                && filter.is_receiver(&delivery)
            {
                found.push(delivery.seq);
            }
            ControlFlow::Continue(())
        },
    )
    .await?;
    Ok(found)
}

fn stored(message: jetstream::Message) -> Option<Stored> {
    let info = message.info().ok()?;
    let (seq, stored_at) = (info.stream_sequence, from_offset(info.published));
    Stored::from_message(seq, stored_at, &message.subject, message.headers.clone()?)
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

    /// The server narrows a receiver's deliveries only to its namespace (a receiver's
    /// deliveries and replays share no one filter); the receiver itself is checked here.
    #[test]
    fn a_receiver_filter_keeps_only_that_receiver_of_its_namespace() {
        let stored = |receiver: &str| Stored {
            seq: 1,
            id: "d".into(),
            receiver: receiver.into(),
            receiver_type: "github".into(),
            event: None,
            received_at: None,
            stored_at: Utc::now(),
            body_size: 0,
            replay_of: None,
            replay_actor: None,
            subject: String::new(),
            headers: HeaderMap::new(),
        };
        let filter = Filter {
            receiver: Some(("flux-system".into(), "gh".into())),
            ..Default::default()
        };
        assert_eq!(
            filter.delivery_subject(),
            "fluxgate.deliveries.flux-system.>"
        );
        assert_eq!(
            filter.listing_subjects(),
            [
                "fluxgate.deliveries.flux-system.gh",
                "fluxgate.deliveries.flux-system.gh.replay"
            ]
        );
        assert_eq!(
            Filter::default().listing_subjects(),
            ["fluxgate.deliveries.>"]
        );
        assert!(filter.keeps(&stored("flux-system/gh")));
        for other in ["flux-system/gh2", "flux-system/g", "other/gh"] {
            assert!(!filter.keeps(&stored(other)), "{other}");
        }
        assert!(Filter::default().keeps(&stored("any/one")));
    }

    fn target(name: &str) -> Target {
        Target {
            api_version: "v1".into(),
            kind: "K".into(),
            namespace: "n".into(),
            name: name.into(),
        }
    }

    fn trail(events: Vec<Event>) -> Vec<Outcome> {
        events
            .into_iter()
            .map(|event| Outcome {
                more: Vec::new(),
                event,
                delivery: "d".into(),
                seq: 1,
                receiver: "n/r".into(),
                at: "2026-11-24T00:00:00Z".into(),
            })
            .collect()
    }

    fn status(events: Vec<Event>) -> (Status, usize) {
        status_of(&trail(events))
    }

    #[test]
    fn status_follows_the_last_word_on_each_target() {
        let dispatched = Event::Dispatched {
            targets: vec![target("a"), target("b")],
        };
        let patched = |n| Event::Patched {
            target: target(n),
            requested_at: String::new(),
            batch: String::new(),
            size: 1,
            attempts: 1,
        };
        let retrying = |n| Event::Retrying {
            target: target(n),
            attempt: 1,
            error: String::new(),
            retry_in_ms: 1,
        };
        let handled = |n| Event::Handled {
            target: target(n),
            handled_at: String::new(),
            latency_ms: None,
        };
        assert_eq!(status(vec![]), (Status::Accepted, 0));
        assert_eq!(status(vec![dispatched.clone()]), (Status::Accepted, 2));
        assert_eq!(
            status(vec![dispatched.clone(), patched("a"), retrying("b")]),
            (Status::Retrying, 2)
        );
        assert_eq!(
            status(vec![
                dispatched.clone(),
                retrying("b"),
                patched("a"),
                patched("b")
            ]),
            (Status::Patched, 2)
        );
        assert_eq!(
            status(vec![
                dispatched.clone(),
                patched("a"),
                patched("b"),
                handled("a"),
                handled("b")
            ]),
            (Status::Handled, 2)
        );
        let not_handled = Event::NotHandled {
            target: target("b"),
            reason: "late".into(),
        };
        assert_eq!(
            status(vec![
                dispatched.clone(),
                patched("a"),
                patched("b"),
                handled("a"),
                not_handled
            ]),
            (Status::NotHandled, 2)
        );
        let failed = Event::Failed {
            target: Some(target("b")),
            reason: "404".into(),
        };
        assert_eq!(
            status(vec![dispatched.clone(), patched("a"), failed]),
            (Status::Failed, 2)
        );
        let whole = Event::Failed {
            target: None,
            reason: "not in the catalog".into(),
        };
        assert_eq!(status(vec![whole]), (Status::Failed, 0));
        assert_eq!(
            status(vec![Event::Duplicate { of_seq: 1 }]),
            (Status::Duplicate, 0)
        );
        let nothing = Event::Dispatched { targets: vec![] };
        assert_eq!(status(vec![nothing]), (Status::Patched, 0));
    }

    #[test]
    fn a_dry_run_is_not_shown_as_patched() {
        let would = |n| Event::WouldPatch { target: target(n) };
        let dispatched = Event::Dispatched {
            targets: vec![target("a"), target("b")],
        };
        assert_eq!(
            status(vec![dispatched.clone(), would("a"), would("b")]),
            (Status::DryRun, 2)
        );
        assert_eq!(status(vec![dispatched, would("a")]), (Status::Accepted, 2));
    }

    #[test]
    fn unknown_events_change_nothing() {
        let dispatched = Event::Dispatched {
            targets: vec![target("a")],
        };
        let patched = Event::Patched {
            target: target("a"),
            requested_at: String::new(),
            batch: String::new(),
            size: 1,
            attempts: 1,
        };
        assert_eq!(
            status(vec![dispatched, patched, Event::Unknown]),
            (Status::Patched, 1)
        );
    }

    #[test]
    fn status_names_are_accepted_as_written() {
        use clap::ValueEnum as _;
        for name in ["not_handled", "not-handled", "dry_run", "failed"] {
            assert!(Status::from_str(name, false).is_ok(), "{name}");
        }
        assert_eq!(
            Status::NotHandled
                .to_possible_value()
                .map(|v| v.get_name().to_owned()),
            Some(Status::NotHandled.as_str().to_owned())
        );
    }
}
