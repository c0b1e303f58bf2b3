//! The contract between ingest, the dispatcher and the CLI: stream, subject, object-store and
//! header names, a delivery's metadata ([`DeliveryMeta`]) and the outcome events ([`Outcome`]).
//! Changing any of these breaks stored data.

mod delivery;
mod index;
mod outcome;

pub use delivery::{DeliveryMeta, IdSource};
pub use index::{INDEX_STREAM, INDEX_SUBJECT_PREFIX, IndexEntry, index_subject};
pub use outcome::{Concerned, Event, Outcome, Target};

/// The event log of accepted webhooks.
pub const DELIVERIES_STREAM: &str = "FLUXGATE_DELIVERIES";
/// Subjects of `DELIVERIES_STREAM`: `fluxgate.deliveries.<namespace>.<receiver>` for what
/// ingest stores, and `fluxgate.deliveries.<namespace>.<receiver>.replay` for replays. Replays
/// have a subject of their own so that NATS permissions can grant replaying to one role alone
/// (`fluxgate.deliveries.*.*` allows ingest's subjects and not theirs); only there are the replay
/// headers believed. One stream subject holds both, as NATS 2.9 consumer filters need.
pub const DELIVERIES_SUBJECT_PREFIX: &str = "fluxgate.deliveries";
/// The last token of a replay's subject.
const REPLAY_TOKEN: &str = "replay";
/// What happened to each delivery, one event per thing ([`Outcome`]).
pub const OUTCOMES_STREAM: &str = "FLUXGATE_OUTCOMES";
/// Subjects of `OUTCOMES_STREAM`: `fluxgate.outcomes.<namespace>.<receiver>.<type>`, the event
/// type last, so that history queries filter by receiver and by type on the server.
pub const OUTCOMES_SUBJECT_PREFIX: &str = "fluxgate.outcomes";
/// Object store holding bodies larger than the server's `max_payload`.
pub const BODIES_OBJECT_STORE: &str = "fluxgate-bodies";

/// Header names of a delivery message. The payload is the exact raw request body, unless the
/// metadata names a `body_object`, in which case the payload is empty and the body is the
/// object of that name in [`BODIES_OBJECT_STORE`].
pub mod header {
    /// The deduplication key, `<namespace>/<receiver>/<delivery-id>`: the deliveries stream
    /// drops a message whose id it stored within its duplicate window (ingest's
    /// `--stream-duplicate-window`, 72 h by default). A replay has an id of its own
    /// (`replay/<uuid>`), so it is never taken for a duplicate.
    pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
    /// The metadata, [`super::DeliveryMeta`], as a JSON object on one line.
    pub const DELIVERY: &str = "Fluxgate-Delivery";
    /// The W3C trace context the dispatcher continues.
    pub const TRACEPARENT: &str = "traceparent";
}

/// Declares [`KEPT_REQUEST_HEADERS`] and [`is_kept_request_header`] from one list, so the two
/// cannot drift apart: the check is a `match` (lengths compared first), where a binary search of
/// the list cost ingest 1 % of its CPU per webhook.
macro_rules! kept_request_headers {
    ($($name:literal,)*) => {
        /// Request headers worth keeping with a delivery (lowercase, sorted). Credentials
        /// (`Authorization`, `X-Gitlab-Token`) are deliberately absent; signatures (HMAC
        /// outputs) may be kept.
        pub const KEPT_REQUEST_HEADERS: &[&str] = &[$($name,)*];

        /// Whether a (lowercase) request header is kept with the delivery.
        pub fn is_kept_request_header(name: &str) -> bool {
            matches!(name, $($name)|*)
        }
    };
}

kept_request_headers! {
    "ce-id",
    "ce-source",
    "ce-specversion",
    "ce-subject",
    "ce-time",
    "ce-type",
    "idempotency-key",
    "user-agent",
    "x-attempt-number",
    "x-event-key",
    "x-forgejo-delivery",
    "x-forgejo-event",
    "x-forgejo-signature",
    "x-gitea-delivery",
    "x-gitea-event",
    "x-gitea-signature",
    "x-github-delivery",
    "x-github-event",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
    "x-gitlab-event",
    "x-gitlab-event-uuid",
    "x-gitlab-instance",
    "x-gitlab-webhook-uuid",
    "x-hook-uuid",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-nexus-webhook-delivery",
    "x-nexus-webhook-id",
    "x-nexus-webhook-signature",
    "x-request-id",
    "x-request-uuid",
    "x-signature",
}

/// A Kubernetes name may contain `.`, which separates NATS subject tokens; `_` never occurs in
/// Kubernetes names, so mapping `.` to `_` keeps the subject one token and stays reversible.
fn subject_token(name: &str) -> String {
    name.replace('.', "_")
}

/// `fluxgate.deliveries.<namespace>.<receiver>`.
pub fn delivery_subject(namespace: &str, receiver: &str) -> String {
    format!(
        "{DELIVERIES_SUBJECT_PREFIX}.{}.{}",
        subject_token(namespace),
        subject_token(receiver)
    )
}

/// `fluxgate.deliveries.<namespace>.<receiver>.replay`.
pub fn replay_subject(namespace: &str, receiver: &str) -> String {
    format!("{}.{REPLAY_TOKEN}", delivery_subject(namespace, receiver))
}

/// Whether a message of `DELIVERIES_STREAM` was published as a replay.
pub fn is_replay_subject(subject: &str) -> bool {
    // `.<namespace>.<receiver>.replay`: exactly two tokens between the prefix and the last.
    subject
        .strip_prefix(DELIVERIES_SUBJECT_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(REPLAY_TOKEN))
        .and_then(|rest| rest.strip_suffix('.'))
        .is_some_and(|receiver| receiver.matches('.').count() == 1)
}

/// The consumer filter of the deliveries and replays of a namespace's receivers, or of all.
/// One receiver's deliveries and replays have no filter of their own in common (a NATS 2.9
/// consumer has one filter), so readers narrow by namespace here and check the receiver.
pub fn deliveries_filter(namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) => format!("{DELIVERIES_SUBJECT_PREFIX}.{}.>", subject_token(namespace)),
        None => format!("{DELIVERIES_SUBJECT_PREFIX}.>"),
    }
}

/// `fluxgate.outcomes.<namespace>.<receiver>.<type>`; `*` for a token matches any.
pub fn outcome_subject(namespace: &str, receiver: &str, kind: &str) -> String {
    format!(
        "{OUTCOMES_SUBJECT_PREFIX}.{}.{}.{kind}",
        subject_token(namespace),
        subject_token(receiver)
    )
}

/// The `Nats-Msg-Id` of a delivery: scoped by receiver, because GitHub shares one delivery GUID
/// across every hook subscribed to an event.
pub fn delivery_key(namespace: &str, receiver: &str, delivery_id: &str) -> String {
    format!("{namespace}/{receiver}/{delivery_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_keeps_dotted_names_in_one_token() {
        assert_eq!(
            delivery_subject("flux-system", "app.github"),
            "fluxgate.deliveries.flux-system.app_github"
        );
    }

    #[test]
    fn replays_have_subjects_of_their_own_under_the_deliveries() {
        let replay = replay_subject("flux-system", "app.github");
        assert_eq!(replay, "fluxgate.deliveries.flux-system.app_github.replay");
        assert!(is_replay_subject(&replay));
        // A receiver named `replay` is still one token away from a replay.
        for subject in [
            delivery_subject("flux-system", "replay"),
            delivery_subject("replay", "app"),
            "fluxgate.deliveries.a.b.c.replay".to_owned(),
            "fluxgate.outcomes.a.b.replay".to_owned(),
        ] {
            assert!(!is_replay_subject(&subject), "{subject}");
        }
    }

    #[test]
    fn delivery_key_is_scoped_by_receiver() {
        assert_eq!(delivery_key("ns", "r", "abc"), "ns/r/abc");
        assert_ne!(
            delivery_key("ns", "r1", "abc"),
            delivery_key("ns", "r2", "abc")
        );
    }

    #[test]
    fn credentials_are_never_kept() {
        for h in ["authorization", "x-gitlab-token", "cookie"] {
            assert!(!is_kept_request_header(h), "{h} must not be kept");
        }
    }

    #[test]
    fn kept_headers_are_sorted_lowercase_and_found() {
        assert!(
            KEPT_REQUEST_HEADERS.windows(2).all(|w| w[0] < w[1]),
            "keep the list sorted"
        );
        for h in KEPT_REQUEST_HEADERS {
            assert_eq!(h.to_ascii_lowercase(), *h);
            assert!(is_kept_request_header(h), "{h}");
        }
        // Only whole names: no prefix, extension or other case of one.
        for h in [
            "x-github",
            "x-github-delivery2",
            "X-GitHub-Delivery",
            "",
            "host",
        ] {
            assert!(!is_kept_request_header(h), "{h}");
        }
    }
}
