//! fluxgate-shared: what ingest, the dispatcher and the CLI must agree on -- the contract
//! between them (stream, subject and header names, delivery metadata, outcome events), the
//! receivers and their catalog, Flux's CEL and Go's JSON, and how the services start and stop.

mod config;
pub mod contract;
mod error;
pub mod filter;
pub mod gojson;
mod kube_call;
mod log_format;
mod nats;
mod nats_auth;
pub mod pubsub;
pub mod receivers;
mod shutdown;
mod telemetry;
mod trace_context;

pub use config::{CommonConfig, SERVICE_HELP, undescribed_flags};
pub use error::Error;
pub use kube_call::{KUBE_CALL_TIMEOUT, watch_backoff, within_deadline};
pub use nats::{
    client_options as nats_client_options, connect as nats_connect, is_refusal as nats_is_refusal,
    refusal_reason as nats_refusal_reason, servers as nats_servers,
};
pub use nats_auth::NatsAuth;
pub use shutdown::signal as shutdown_signal;
pub use telemetry::{LogFormat, Tracing, init_exporter_only, init_telemetry};
pub use trace_context::{
    TraceExemplar, continue_trace, current_exemplar, link_to, new_traceparent, traceparent_of,
};
