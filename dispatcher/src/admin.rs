//! The operations endpoint: `/healthz`, `/readyz` (every receiver known, NATS connected) and
//! `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub struct AdminState {
    pub nats: async_nats::Client,
    pub metrics: Arc<Metrics>,
    pub leading: watch::Receiver<bool>,
    /// True once every receiver is known (the first full list of the cluster's).
    pub catalog_synced: watch::Receiver<bool>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            let body = json!({ "error": "not_found", "reason": "the admin port serves /healthz, /readyz and /metrics" });
            (StatusCode::NOT_FOUND, axum::Json(body))
        })
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let leader = *state.leading.borrow();
    // A standby is ready too: it is healthy and takes over when needed.
    let synced = *state.catalog_synced.borrow();
    if synced && state.nats.connection_state() == async_nats::connection::State::Connected {
        (
            StatusCode::OK,
            axum::Json(json!({ "status": "ready", "leader": leader })),
        )
            .into_response()
    } else {
        let reason = if synced {
            "NATS is not connected"
        } else {
            "the cluster's Receivers are not listed yet"
        };
        let body = json!({ "status": "not ready", "reason": reason, "leader": leader });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
