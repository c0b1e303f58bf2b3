//! The one error type of the shared crate: a receivers file that cannot be loaded, a message
//! that is not a delivery, a NATS operation that failed.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Each catalog variant names the document (1-based) and, where it can, the object and the
    /// field, so that the fix is obvious from the message.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("document {document}: not valid YAML: {source}")]
    Yaml {
        document: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("document {document} ({kind} {object}): {field}: {reason}")]
    Field {
        document: usize,
        kind: &'static str,
        object: String,
        field: String,
        reason: String,
    },
    /// A stream message without the metadata every delivery has.
    #[error("not a delivery: {0}")]
    NotADelivery(String),
    #[error("cannot encode an outcome: {0}")]
    Encode(String),
    #[error("cannot read the NATS {what} {path}: {source}")]
    NatsFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// NATS options that cannot work together.
    #[error("{0}")]
    NatsConfig(String),
    /// Credentials refused, or a TLS handshake that failed: retrying cannot help.
    #[error("NATS at {url} refused the connection: {reason}")]
    NatsRefused { url: String, reason: String },
    /// An OTLP exporter that cannot be built from the `OTEL_*` variables.
    #[error("tracing: {0}")]
    Tracing(String),
    /// Kept whole, so that callers can tell transient failures from permanent ones.
    #[error("NATS: {0}")]
    Nats(#[source] async_nats::Error),
}

impl Error {
    pub fn nats(error: impl Into<async_nats::Error>) -> Self {
        Self::Nats(error.into())
    }
}
