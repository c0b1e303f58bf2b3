//! The one error type of ingest, and the single place where each error becomes an HTTP status,
//! a JSON body and a metric label.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Seconds a sender is asked to wait when the event store is unavailable.
const RETRY_AFTER_SECONDS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no receiver at this path")]
    NotFound,
    #[error("method {0} not allowed: webhooks are sent with POST")]
    MethodNotAllowed(String),
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("cannot read request body: {0}")]
    BodyRead(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("receiver {0} is suspended")]
    Suspended(String),
    #[error("receiver {0} is not ready (see fluxgate's log)")]
    NotReady(String),
    #[error("event store unavailable, retry later: {0}")]
    Unavailable(String),
    /// The deliveries stream or the object store reached its byte limit, or NATS its storage.
    #[error("event store is full, retry later: {0}")]
    StorageFull(String),
    /// Every body permit (`--max-concurrent-bodies`) stayed taken until the body timeout.
    #[error("too many webhooks are being received at once, retry later")]
    Busy,
    #[error("cannot load receivers: {0}")]
    Receivers(fluxgate_shared::Error),
    /// NATS credentials unreadable or refused.
    #[error(transparent)]
    Shared(#[from] fluxgate_shared::Error),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Suspended(_)
            | Self::NotReady(_)
            | Self::Unavailable(_)
            | Self::StorageFull(_)
            | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Receivers(_) | Self::Shared(_) | Self::Listen(_) | Self::Kube(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The `outcome` label of `fluxgate_ingest_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::TooLarge(_) => "too_large",
            Self::BodyTimeout | Self::BodyRead(_) | Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Suspended(_) | Self::NotReady(_) | Self::Unavailable(_) => "unavailable",
            Self::StorageFull(_) => "storage_full",
            Self::Busy => "busy",
            Self::Receivers(_) | Self::Shared(_) | Self::Listen(_) | Self::Kube(_) => "internal",
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if matches!(
            self,
            Self::Unavailable(_) | Self::StorageFull(_) | Self::Busy
        ) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
