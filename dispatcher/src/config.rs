//! Command-line and environment configuration of `fluxgate-dispatcher`.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "fluxgate-dispatcher",
    version,
    about = "Consume stored Flux webhooks and request reconciles",
    after_help = fluxgate_shared::SERVICE_HELP
)]
pub struct Config {
    #[command(flatten)]
    pub common: fluxgate_shared::CommonConfig,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "FLUXGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9294")]
    pub admin_listen: SocketAddr,

    /// Name of the durable JetStream consumer.
    #[arg(long, env = "FLUXGATE_CONSUMER", default_value = "fluxgate-dispatcher")]
    pub consumer: String,

    /// No longer used: deliveries are deduplicated by the deliveries stream's duplicate window
    /// (ingest's `--stream-duplicate-window`). Still accepted, so that a deployment setting it
    /// starts; a warning says it is ignored.
    #[arg(long, env = "FLUXGATE_DEDUP_TTL", hide = true, value_parser = humantime::parse_duration)]
    pub dedup_ttl: Option<Duration>,

    /// Deliveries for one target within this window become one patch.
    #[arg(long, env = "FLUXGATE_COALESCE_WINDOW", default_value = "1s", value_parser = humantime::parse_duration)]
    pub coalesce_window: Duration,

    /// How long a transiently failing patch is retried before it is recorded as failed.
    #[arg(long, env = "FLUXGATE_RETRY_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub retry_deadline: Duration,

    /// Longest pause between two attempts of a patch.
    #[arg(long, env = "FLUXGATE_RETRY_MAX_BACKOFF", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_max_backoff: Duration,

    /// How long the dispatcher waits for a patched target's controller to report the request
    /// handled (`status.lastHandledReconcileAt`) before recording `not_handled`; 0 turns
    /// confirmation off.
    #[arg(long, env = "FLUXGATE_CONFIRM_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub confirm_timeout: Duration,

    /// JetStream redelivers a message not acknowledged (nor kept alive) within this time: how
    /// long a crashed leader's deliveries in flight wait for the next one. Those at work are
    /// kept alive with a progress ack every third of it.
    #[arg(long, env = "FLUXGATE_ACK_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// Attempts at a delivery whose dispatch keeps failing transiently (NATS or the API server
    /// away; 5 s apart) before it is recorded failed ("gave up after N attempts").
    #[arg(long, env = "FLUXGATE_MAX_DELIVER", default_value_t = 60)]
    pub max_deliver: i64,

    /// Deliveries in flight at once. Each is held for the coalescing window and its patch, so
    /// this bounds the drain: 10,000 held a backlog to about 8,000 a second with a 1 s window.
    #[arg(long, env = "FLUXGATE_MAX_ACK_PENDING", default_value_t = 30_000)]
    pub max_ack_pending: i64,

    /// Hold a Lease so that only one dispatcher consumes.
    #[arg(long, env = "FLUXGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the Lease (the pod's namespace when set, else flux-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "flux-system")]
    pub lease_namespace: String,

    /// Name of the Lease.
    #[arg(
        long,
        env = "FLUXGATE_LEASE_NAME",
        default_value = "fluxgate-dispatcher"
    )]
    pub lease_name: String,

    /// A leader that has not renewed the Lease for this long is replaced.
    #[arg(long, env = "FLUXGATE_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// This replica's identity in the Lease (the pod name when set).
    #[arg(long, env = "HOSTNAME")]
    pub identity: Option<String>,

    /// Resolve targets and record what would be patched, without patching.
    #[arg(long, env = "FLUXGATE_DRY_RUN")]
    pub dry_run: bool,

    /// Refuse targets outside the Receiver's namespace, as Flux's --no-cross-namespace-refs.
    #[arg(long, env = "FLUXGATE_NO_CROSS_NAMESPACE_REFS")]
    pub no_cross_namespace_refs: bool,

    /// Replicas of the outcomes stream.
    #[arg(long, env = "FLUXGATE_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// How long outcomes are kept.
    #[arg(long, env = "FLUXGATE_OUTCOMES_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub outcomes_max_age: Duration,

    /// Most bytes of outcome events kept (1 GiB); the oldest go first, so the dispatcher never
    /// stops for want of room, and history is what shortens. -1: no limit.
    #[arg(long, env = "FLUXGATE_OUTCOMES_MAX_BYTES", default_value_t = 1 << 30, allow_negative_numbers = true)]
    pub outcomes_max_bytes: i64,

    /// Time in-flight patches get to finish after SIGTERM.
    #[arg(long, env = "FLUXGATE_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_has_a_description() {
        use clap::CommandFactory as _;
        assert_eq!(
            fluxgate_shared::undescribed_flags(&super::Config::command()),
            Vec::<String>::new()
        );
    }
}
