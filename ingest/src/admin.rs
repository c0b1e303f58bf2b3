//! The operations endpoint: `/healthz` (the process serves), `/readyz` (every receiver known,
//! NATS connected, stream provisioned) and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::http::AppState;

pub fn router(state: Arc<AppState>) -> Router {
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

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let not_ready = |reason: &str| {
        let body = json!({ "status": "not ready", "reason": reason });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    };
    if !*state.catalog_synced.borrow() {
        not_ready("the cluster's Receivers are not listed yet")
    } else if state.store.is_ready() {
        (
            StatusCode::OK,
            axum::Json(json!({ "status": "ready", "receivers": state.catalog.current().len() })),
        )
            .into_response()
    } else {
        not_ready("NATS JetStream is not connected or the stream is not provisioned")
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
