//! `fluxgate-baseline`: the least an ingest could do, for `fluxgate-load ingest` to measure
//! fluxgate-ingest against -- a bare hyper HTTP/1.1 server that publishes each request's body to
//! the deliveries stream (with the sender's delivery id as `Nats-Msg-Id`) and answers `202`
//! once JetStream acknowledged: no receiver look-up, no verification, no metadata, no metrics.
//! Same allocator and runtime as ingest. Prints `listening on <port>` on stdout.

use std::convert::Infallible;

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;
use fluxgate_shared::contract;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nats_url = std::env::args()
        .nth(1)
        .context("usage: fluxgate-baseline <nats-url>")?;
    let jetstream = jetstream::new(async_nats::connect(&nats_url).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {port}")?;
        stdout.flush()?;
    }
    let subject = contract::delivery_subject("bench", "baseline");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (jetstream, subject) = (jetstream.clone(), subject.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                store(jetstream.clone(), subject.clone(), request)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn store(
    jetstream: jetstream::Context,
    subject: String,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = (request.headers().get("x-github-delivery"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let stored = async {
        let body = request.into_body().collect().await?.to_bytes();
        let mut message = jetstream::message::PublishMessage::build().payload(body);
        if let Some(id) = id {
            message = message.message_id(format!("bench/baseline/{id}"));
        }
        jetstream.send_publish(subject, message).await?.await?;
        anyhow::Ok(())
    };
    let status = match stored.await {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = status;
    Ok(response)
}
