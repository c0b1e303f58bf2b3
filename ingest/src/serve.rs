//! HTTP/1.1 serving with the protections axum's `serve` lacks: a header-read timeout against
//! slow clients, a cap on open connections, and a graceful shutdown that stops accepting, lets
//! in-flight requests finish within a grace period, then returns.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The most a connection's read buffer grows to (hyper's default is about 400 KiB): bodies are
/// read through it in pieces of at most this size, and a thousand connections draining bodies
/// at once hold 64 MiB, not 400.
const MAX_READ_BUFFER: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `app` (the webhook endpoint, or the admin router through
/// `hyper_util::service::TowerToHyperService`) on `listener` until `shutdown`.
pub async fn serve<S, B>(
    listener: TcpListener,
    app: S,
    header_timeout: Duration,
    grace: Duration,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // A permit per open connection: at the cap, new connections wait in the listen queue (the
    // kernel's, which costs this process nothing) until one closes.
    let open = Arc::new(Semaphore::new(max_connections));
    let mut at_limit = false;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    let graceful = GracefulShutdown::new();
    loop {
        let permit = match open.clone().try_acquire_owned() {
            Ok(permit) => {
                at_limit = false;
                permit
            }
            Err(_) => {
                // Said once per stretch at the cap, not once per waiting connection.
                if !at_limit {
                    tracing::warn!(
                        max_connections,
                        "at the connection limit: new connections wait until one closes"
                    );
                }
                at_limit = true;
                let waited = tokio::select! {
                    permit = open.clone().acquire_owned() => permit,
                    _ = stopped(&mut shutdown) => break,
                };
                let Ok(permit) = waited else { break };
                permit
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = http.serve_connection(TokioIo::new(stream), app.clone());
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        );
    }
}

/// Resolves once `true` is sent (or the sender is gone); the watch guard never crosses an await.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    async fn answer(mut stream: TcpStream) -> String {
        stream.write_all(REQUEST).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    }

    /// At the cap, a new connection is not served until an open one closes; then it is.
    #[tokio::test]
    async fn past_max_connections_a_connection_waits_for_one_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let app = Router::new().route("/", axum::routing::get(|| async { "served" }));
        let (_stop, shutdown) = watch::channel(false);
        let long = Duration::from_secs(60);
        let app = hyper_util::service::TowerToHyperService::new(app);
        tokio::spawn(serve(listener, app, long, long, 1, shutdown));

        // The first holds the only connection: accepted, mid-request.
        let mut first = TcpStream::connect(address).await.expect("connect");
        first.write_all(b"GET / HTTP/1.1\r\n").await.expect("send");
        let mut second = tokio::spawn(answer(TcpStream::connect(address).await.expect("connect")));
        // Bounded, and it can only fail the wrong way: a second connection served now would be a
        // connection past the cap.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut second)
                .await
                .is_err(),
            "served past the cap"
        );
        drop(first);
        let answered = second.await.expect("task");
        assert!(
            answered.contains("200 OK") && answered.contains("served"),
            "{answered}"
        );
    }
}
