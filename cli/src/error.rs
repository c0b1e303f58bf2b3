//! The one error type of the CLI; each variant's message is the one line a user sees.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A receivers file that cannot be loaded, a stored message that is not a delivery.
    #[error(transparent)]
    Shared(#[from] fluxgate_shared::Error),
    /// `replay --dry-run` asks the dispatcher's resolver.
    #[error(transparent)]
    Dispatcher(#[from] fluxgate_dispatcher::Error),
    #[error("cannot connect to NATS at {url}: {reason} (set --nats-url or NATS_URL)")]
    Connect { url: String, reason: String },
    #[error(
        "stream {stream} not found on NATS at {url}: is this the NATS fluxgate uses? (set --nats-url or NATS_URL)"
    )]
    StreamNotFound { stream: String, url: String },
    #[error("NATS: {0}")]
    Nats(#[source] async_nats::Error),
    /// A NATS error that followed a permission the server denied: the denial is the reason.
    #[error(
        "NATS denied it: {0} (this user's permissions: see the NATS account configuration in the README's Security section)"
    )]
    Denied(String),
    #[error("Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A command that cannot run as asked.
    #[error("{0}")]
    Usage(String),
    /// No such delivery, receiver or message.
    #[error("{0}")]
    NotFound(String),
    /// The delivery was there once; the stream's limits removed it.
    #[error("{0}")]
    AgedOut(String),
    #[error("cannot print: {0}")]
    Output(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn nats(error: impl Into<async_nats::Error>) -> Self {
        Self::Nats(error.into())
    }

    /// A NATS failure explained by what the server denied, when it denied something.
    pub fn explained(self) -> Self {
        match (self, crate::connect::denied()) {
            (Self::Nats(_), Some(denied)) => Self::Denied(denied),
            (error, _) => error,
        }
    }
}
