//! The one error type of the dispatcher.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A receivers file that cannot be loaded, a message that is not a delivery, a NATS
    /// operation of the shared contract.
    #[error(transparent)]
    Shared(#[from] fluxgate_shared::Error),
    /// Kept whole, so that the consumer can tell transient failures from permanent ones.
    #[error("NATS: {0}")]
    Nats(#[source] async_nats::Error),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    /// A stored body that the filters cannot read as their `req`.
    #[error("cannot evaluate filters: {0}")]
    Body(String),
}

impl Error {
    pub fn nats(error: impl Into<async_nats::Error>) -> Self {
        Self::Nats(error.into())
    }
}
