//! The webhook endpoint: `POST /hook/<digest>` finds the receiver, reads the body under a size
//! limit and a deadline, verifies, filters events, stores the delivery and answers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fluxgate_shared::filter;
use fluxgate_shared::receivers::{Receiver, SharedCatalog};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant as Deadline;
use tracing::Instrument as _;

use crate::error::Error;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::publish::Store;
use crate::{delivery, verify};

/// Everything a request needs, shared by all of them.
pub struct AppState {
    pub catalog: SharedCatalog,
    /// False until every receiver is known (the first full list of the cluster's).
    pub catalog_synced: watch::Receiver<bool>,
    pub store: Arc<dyn Store>,
    pub identity: Identity,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// One permit per body held at once (`--max-concurrent-bodies`).
    pub bodies: Arc<Semaphore>,
}

/// The public endpoint: only `POST /hook/<digest>` exists. A hyper service of its own rather
/// than an axum router: one route needs no router, and the router's boxed service per request,
/// request extensions and extractors were 5 % of ingest's CPU in a profile (end to end, within
/// the benchmark's noise).
#[derive(Clone)]
pub struct Hooks(Arc<AppState>);

impl Hooks {
    pub fn new(state: Arc<AppState>) -> Self {
        Self(state)
    }

    /// Answers one request: `POST /hook/<digest>` is a webhook; another method there is a
    /// 405, any other path a 404.
    pub async fn answer(&self, request: Request) -> Response {
        let state = &self.0;
        let digest = (request.uri().path().strip_prefix("/hook/"))
            .filter(|digest| !digest.is_empty() && !digest.contains('/'))
            // As a router would decode it; one that does not decode is no receiver's.
            .map(|digest| {
                percent_encoding::percent_decode_str(digest)
                    .decode_utf8()
                    .map(String::from)
            });
        match digest {
            None => reject(state, NO_RECEIVER, None, Error::NotFound, Instant::now()),
            Some(_) if request.method() != Method::POST => {
                method_not_allowed(state, request.method())
            }
            Some(digest) => receive(state, digest.ok(), request).await,
        }
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Hooks {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let hooks = self.clone();
        Box::pin(async move { Ok(hooks.answer(request.map(Body::new)).await) })
    }
}

/// Label of requests that matched no receiver.
const NO_RECEIVER: &str = "none";

/// The 202 body: the delivery id and whether JetStream already held it.
#[derive(serde::Serialize)]
struct StoredResponse<'a> {
    delivery: &'a str,
    duplicate: bool,
}

enum Accepted {
    Stored {
        delivery_id: String,
        duplicate: bool,
    },
    Ignored {
        event: String,
    },
}

/// The request's span, a child of the sender's `traceparent` when it sent one, with the HTTP
/// semantic conventions' attributes; what the delivery carries on to the dispatcher.
async fn receive(state: &AppState, digest: Option<String>, request: Request) -> Response {
    let span = tracing::info_span!(
        "POST /hook/{digest}",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/hook/{digest}",
        fluxgate.receiver = tracing::field::Empty,
        fluxgate.receiver_type = tracing::field::Empty,
        fluxgate.delivery_id = tracing::field::Empty,
        fluxgate.outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(traceparent) = (request
        .headers()
        .get(fluxgate_shared::contract::header::TRACEPARENT))
    .and_then(|v| v.to_str().ok())
    {
        fluxgate_shared::continue_trace(&span, traceparent);
    }
    let response = handle(state, digest, request)
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// Records the `outcome` label on the request's span too.
fn record_outcome(outcome: &'static str) -> &'static str {
    tracing::Span::current().record("fluxgate.outcome", outcome);
    outcome
}

/// `digest` is `None` when the path's digest does not decode (`/hook/%FF`): no receiver's, a 404.
async fn handle(state: &AppState, digest: Option<String>, request: Request) -> Response {
    let started = Instant::now();
    // Take the headers out of the request rather than have an extractor clone them.
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if !*state.catalog_synced.borrow() {
        // Not a 404: the receiver may well exist, and the sender should try again.
        let error = Error::Unavailable("receivers are not loaded yet".into());
        return reject(state, NO_RECEIVER, None, error, started);
    }
    let catalog = state.catalog.current();
    let Some(receiver) = digest.and_then(|digest| catalog.get(&digest)) else {
        return reject(state, NO_RECEIVER, None, Error::NotFound, started);
    };
    let span = tracing::Span::current();
    span.record(
        "fluxgate.receiver",
        tracing::field::display(format_args!("{}/{}", receiver.namespace, receiver.name)),
    );
    span.record("fluxgate.receiver_type", receiver.kind.as_str());
    match accept(state, receiver, &headers, body).await {
        Ok(Accepted::Stored {
            delivery_id,
            duplicate,
        }) => {
            let outcome = record_outcome(if duplicate { "duplicate" } else { "accepted" });
            tracing::Span::current().record("fluxgate.delivery_id", delivery_id.as_str());
            // Debug, not info: the deliveries stream is the record of every stored webhook
            // (`fluxgate deliveries list`, `tail`), and a line per webhook at the default level
            // cost ingest as much CPU as the rest of its work beyond a bare handler's took out.
            tracing::debug!(
                receiver = %format_args!("{}/{}", receiver.namespace, receiver.name),
                receiver_type = receiver.kind.as_str(),
                delivery = %delivery_id,
                duplicate,
                "delivery stored"
            );
            state
                .metrics
                .request(receiver.kind.as_str(), outcome, started.elapsed());
            (
                StatusCode::ACCEPTED,
                Json(StoredResponse {
                    delivery: &delivery_id,
                    duplicate,
                }),
            )
                .into_response()
        }
        Ok(Accepted::Ignored { event }) => {
            let reason = format!("event {event:?} is not in the receiver's spec.events");
            tracing::info!(
                receiver = %format_args!("{}/{}", receiver.namespace, receiver.name),
                %reason,
                "webhook ignored"
            );
            state.metrics.request(
                receiver.kind.as_str(),
                record_outcome("ignored"),
                started.elapsed(),
            );
            // 200, not 4xx: GitLab disables a hook that keeps answering 4xx.
            (
                StatusCode::OK,
                Json(json!({ "ignored": true, "reason": reason })),
            )
                .into_response()
        }
        Err(error) => reject(
            state,
            receiver.kind.as_str(),
            Some(receiver),
            error,
            started,
        ),
    }
}

async fn accept(
    state: &AppState,
    receiver: &Receiver,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, Error> {
    let name = || format!("{}/{}", receiver.namespace, receiver.name);
    if receiver.suspend {
        return Err(Error::Suspended(name()));
    }
    if receiver.not_ready.is_some() {
        return Err(Error::NotReady(name()));
    }
    let deadline = Deadline::now() + state.body_timeout;
    // Verification takes in the body's reading: a signature covers the body.
    let verifying = async {
        let checked = match verify::before_body(&state.identity, receiver, headers).await {
            Ok(checked) => checked,
            Err(error) => {
                // Refused on its headers alone: the body is never kept, only read and dropped.
                drain(body, state.max_body_bytes, deadline).await;
                return Err(error);
            }
        };
        // Held until the body is dropped, so that at most --max-concurrent-bodies are in memory.
        let permit = tokio::time::timeout_at(deadline, state.bodies.clone().acquire_owned())
            .await
            .map_err(|_| Error::Busy)?
            .map_err(|_| Error::Busy)?;
        let body = read_body(body, headers, state.max_body_bytes, deadline)
            .instrument(tracing::info_span!("read body"))
            .await?;
        let verified = verify::after_body(receiver, headers, &body, checked)?;
        Ok((permit, body, verified))
    };
    let (_permit, body, verified) = verifying
        .instrument(tracing::info_span!(
            "verify",
            fluxgate.receiver_type = receiver.kind.as_str()
        ))
        .await?;
    if receiver.has_filters() {
        // The dispatcher's filters read a JSON body as `req`: refuse one that is not JSON now,
        // as Flux does, rather than fail it later where the sender cannot hear.
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        filter::request(receiver.kind, content_type, &body).map_err(Error::BadRequest)?;
    }
    if let Some(event) = &verified.event
        && !receiver.allows_event(event)
    {
        return Ok(Accepted::Ignored {
            event: event.clone(),
        });
    }
    // The stored trace context is this request's span, so that the dispatcher's spans join
    // its trace; without exported spans, the sender's `traceparent` or a new one.
    let traceparent = fluxgate_shared::traceparent_of(&tracing::Span::current());
    let (delivery_id, delivery) = delivery::build(receiver, verified, headers, body, traceparent)?;
    let publish = tracing::info_span!(
        "publish",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.destination.name = %delivery.meta.subject(),
        messaging.message.id = %delivery.meta.key(),
        fluxgate.stream = fluxgate_shared::contract::DELIVERIES_STREAM,
        fluxgate.sequence = tracing::field::Empty,
    );
    let publishing = Instant::now();
    let stored = state
        .store
        .publish(delivery)
        .instrument(publish.clone())
        .await?;
    publish.record("fluxgate.sequence", stored.sequence);
    state.metrics.published(publishing.elapsed());
    Ok(Accepted::Stored {
        delivery_id,
        duplicate: stored.duplicate,
    })
}

/// Reads the whole body, refusing it as soon as it exceeds `limit` (by its declared length
/// before reading, else while reading) and giving up at `deadline` against slow senders.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    deadline: Deadline,
) -> Result<Bytes, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > limit as u64
    {
        if declared <= 2 * limit as u64 {
            drain(body, 2 * limit, deadline).await;
        }
        return Err(Error::TooLarge(limit));
    }
    match tokio::time::timeout_at(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Error::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Error::TooLarge(limit))
        }
        Ok(Err(error)) => Err(Error::BodyRead(error.to_string())),
    }
}

/// Reads and drops a body that will not be used, up to `limit` bytes and until `deadline`:
/// closing a socket with unread data resets the connection, and the sender would see that
/// instead of the answer. Nothing is kept.
async fn drain(body: Body, limit: usize, deadline: Deadline) {
    let mut body = Limited::new(body, limit);
    let _ = tokio::time::timeout_at(deadline, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

fn reject(
    state: &AppState,
    receiver_type: &'static str,
    receiver: Option<&Receiver>,
    error: Error,
    started: Instant,
) -> Response {
    let name = receiver.map(|r| format!("{}/{}", r.namespace, r.name));
    tracing::warn!(receiver = name.as_deref().unwrap_or("-"), receiver_type, outcome = error.outcome(), reason = %error, "webhook rejected");
    state.metrics.request(
        receiver_type,
        record_outcome(error.outcome()),
        started.elapsed(),
    );
    error.into_response()
}

fn method_not_allowed(state: &AppState, method: &Method) -> Response {
    let mut response = reject(
        state,
        NO_RECEIVER,
        None,
        Error::MethodNotAllowed(method.to_string()),
        Instant::now(),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    response
}

#[cfg(test)]
mod tests;
