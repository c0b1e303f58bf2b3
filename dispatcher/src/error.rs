//! The one error type of the dispatcher, and where each error becomes a metric label.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load receivers: {0}")]
    Catalog(#[from] fluxgate_shared::catalog::CatalogError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    /// A stored body that the filters cannot read as their `req`.
    #[error("cannot evaluate filters: {0}")]
    Body(String),
    /// A command that cannot run as asked.
    #[error("{0}")]
    Usage(String),
    /// Printing a result failed.
    #[error("cannot print: {0}")]
    Output(String),
    /// No such delivery, receiver or message.
    #[error("{0}")]
    NotFound(String),
    /// The delivery was there once; the stream's limits removed it.
    #[error("{0}")]
    AgedOut(String),
    /// A delivery message without the metadata every delivery has.
    #[error("unreadable delivery: {0}")]
    Poison(String),
}

impl Error {
    pub fn nats(error: impl std::fmt::Display) -> Self {
        Self::Nats(error.to_string())
    }
}
