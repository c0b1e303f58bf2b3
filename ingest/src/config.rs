//! Command-line and environment configuration of `fluxgate-ingest`.

use std::net::SocketAddr;
use std::time::Duration;

/// Every option is a flag with an environment fallback, as DESIGN.md's contract requires.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "fluxgate-ingest",
    version,
    about = "Verify Flux webhooks and store them durably in NATS JetStream",
    after_help = fluxgate_shared::SERVICE_HELP
)]
pub struct Config {
    #[command(flatten)]
    pub common: fluxgate_shared::CommonConfig,

    /// Address of the webhook listener.
    #[arg(long, env = "FLUXGATE_LISTEN", default_value = "0.0.0.0:9292")]
    pub listen: SocketAddr,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "FLUXGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9293")]
    pub admin_listen: SocketAddr,

    /// Largest accepted request body, in bytes (Flux's limit is 3 MiB).
    #[arg(long, env = "FLUXGATE_MAX_BODY_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Time a client has to send the request headers.
    #[arg(long, env = "FLUXGATE_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send the whole request body.
    #[arg(long, env = "FLUXGATE_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Most webhook connections open at once; past it, new ones wait in the listen queue.
    #[arg(long, env = "FLUXGATE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Most webhook bodies held at once (being read, verified or stored), which bounds their
    /// memory at this many times --max-body-bytes; past it a request waits, within its body
    /// timeout, then gets 503.
    #[arg(long, env = "FLUXGATE_MAX_CONCURRENT_BODIES", default_value_t = 64)]
    pub max_concurrent_bodies: usize,

    /// Deadline for JetStream to acknowledge a delivery; past it the sender gets 503.
    #[arg(long, env = "FLUXGATE_PUBLISH_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    /// Replicas of the deliveries stream (and the large-body object store).
    #[arg(long, env = "FLUXGATE_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// How long deliveries are kept.
    #[arg(long, env = "FLUXGATE_STREAM_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub stream_max_age: Duration,

    /// Most bytes of deliveries kept (2 GiB). When they are reached, new webhooks get 503
    /// "event store is full" until old deliveries age out: a stored delivery is never dropped
    /// to make room, since the dispatcher may not have handled it yet. -1: no limit (the
    /// server's storage is then the bound).
    #[arg(long, env = "FLUXGATE_STREAM_MAX_BYTES", default_value_t = 2 << 30, allow_negative_numbers = true)]
    pub stream_max_bytes: i64,

    /// Most bytes of the object store holding bodies above NATS's max_payload (1 GiB); full,
    /// it refuses large bodies with 503 as the stream does. -1: no limit.
    #[arg(long, env = "FLUXGATE_BODIES_MAX_BYTES", default_value_t = 1 << 30, allow_negative_numbers = true)]
    pub bodies_max_bytes: i64,

    /// How long a delivery id is remembered: a webhook whose id the stream stored within this
    /// window is answered `"duplicate": true` and not stored again (JetStream's `Nats-Msg-Id`
    /// duplicate window). 72 h covers GitHub's redelivery horizon of 3 days; at most
    /// `--stream-max-age`. nats-server keeps each id of the window in memory.
    #[arg(long, env = "FLUXGATE_STREAM_DUPLICATE_WINDOW", default_value = "72h", value_parser = humantime::parse_duration)]
    pub stream_duplicate_window: Duration,

    /// Without a receivers file: read only the token Secrets carrying these labels (a label
    /// selector, e.g. `fluxgate.io/webhook-token=true`), all in one watch, instead of watching
    /// each Secret a Receiver names on its own (a connection to the API server each, ~25 KiB of
    /// memory). For thousands of Receivers; a Secret without the labels is not read.
    #[arg(long, env = "FLUXGATE_SECRETS_SELECTOR")]
    pub secrets_selector: Option<String>,

    /// Google's ID-token keys (JWKS), which sign the Pub/Sub pushes of gcr receivers.
    #[arg(
        long,
        env = "FLUXGATE_GOOGLE_CERTS_URL",
        default_value = "https://www.googleapis.com/oauth2/v3/certs"
    )]
    pub google_certs_url: String,

    /// Time in-flight requests get to finish after SIGTERM.
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
