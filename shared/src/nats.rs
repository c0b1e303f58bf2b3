//! Connecting the services to NATS: retried in the background from the start (a service
//! starts, and reports itself not ready, while NATS is away), and every connection event logged
//! with the server's URL and, for a failure, the operating system's reason.

use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerAddr};

use crate::error::Error;
use crate::nats_auth::NatsAuth;

/// Connects a service to NATS at `url` with `auth`. Credentials that cannot be read or that the
/// server refuses, and a failed TLS handshake, stop start-up with the reason: retrying cannot
/// fix them. A server that cannot be reached yet is retried in the background, so the service
/// starts (and reports itself not ready) while NATS is away.
pub async fn connect(name: &str, url: &str, auth: &NatsAuth) -> Result<Client, Error> {
    let servers = servers(url)?;
    let options = auth.apply(options(name, url)).await?;
    match options.clone().connect(servers.clone()).await {
        Ok(client) => Ok(client),
        Err(error) if is_refusal(&error) => Err(Error::NatsRefused {
            url: url.to_owned(),
            reason: refusal_reason(&error),
        }),
        Err(error) => {
            tracing::warn!(nats = %url, %error, "NATS is not reachable yet; retrying in the background");
            options
                .retry_on_initial_connect()
                .connect(servers)
                .await
                .map_err(Error::nats)
        }
    }
}

/// The servers of a NATS URL list, `nats://a:4222,nats://b:4222`, as NATS clients take one
/// (async-nats parses a single URL only).
pub fn servers(url: &str) -> Result<Vec<ServerAddr>, Error> {
    (url.split(',').map(str::trim))
        .map(|one| {
            one.parse::<ServerAddr>()
                .map_err(|e| Error::NatsConfig(format!("NATS URL {one:?}: {e}")))
        })
        .collect()
}

/// Errors that the same credentials and certificates will meet again: the server refused them,
/// or TLS failed (rustls' handshake errors reach async-nats as I/O errors of kind
/// `InvalidData`).
pub fn is_refusal(error: &async_nats::ConnectError) -> bool {
    let tls_failed = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
    tls_failed
        || matches!(
            error.kind(),
            ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::Authentication
                | ConnectErrorKind::Tls
        )
}

/// The error with its causes, which name what TLS or the server objected to.
pub fn refusal_reason(error: &async_nats::ConnectError) -> String {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
        source = cause.source();
    }
    reason
}

/// The options every binary starts from: its name, and an inbox of its own,
/// `_INBOX.<name>`, where the replies to its requests (JetStream's answers, a pull consumer's
/// messages) arrive. With inboxes apart, NATS permissions can let each user subscribe to its own
/// replies and no one else's: a user allowed `_INBOX.>` could read the dispatcher's deliveries
/// on their way to it.
pub fn client_options(name: &str) -> ConnectOptions {
    ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(format!("_INBOX.{name}"))
}

/// How often the services ping their server. A server that stops answering -- paused, or cut
/// off by a partition, its TCP connection still open -- is left for another after three
/// unanswered pings: within about 6 s, where the client's default (a minute) took two.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// The options both services connect with.
fn options(name: &str, url: &str) -> ConnectOptions {
    let url = url.to_owned();
    let options = client_options(name).ping_interval(PING_INTERVAL);
    options.event_callback(move |event| {
        let url = url.clone();
        async move {
            match event {
                Event::Connected => tracing::info!(nats = %url, "connected to NATS"),
                Event::Disconnected => {
                    tracing::warn!(nats = %url, "disconnected from NATS; reconnecting")
                }
                Event::ClientError(error) => {
                    // The client only says "IO error"; ask the network what is wrong.
                    let cause = reachability(&url).await;
                    tracing::warn!(nats = %url, %error, %cause, "cannot reach NATS; retrying");
                }
                other => tracing::warn!(nats = %url, event = %other, "NATS"),
            }
        }
    })
}

/// Why the first server of `url` cannot be reached, as the operating system says it
/// (`Connection refused`, `No route to host`), or that TCP works and NATS itself refused.
async fn reachability(url: &str) -> String {
    let address = tcp_address(url);
    let attempt = tokio::net::TcpStream::connect(address.as_str());
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(_)) => format!("{address} accepts connections: the NATS handshake failed"),
        Ok(Err(error)) => format!("{address}: {error}"),
        Err(_) => format!("{address}: no answer within 2 s"),
    }
}

/// `host:port` of the first server of a NATS URL list (`nats://user:pass@host:4222,...`).
fn tcp_address(url: &str) -> String {
    let first = url.split(',').next().unwrap_or(url).trim();
    let without_scheme = first.split_once("://").map_or(first, |(_, rest)| rest);
    let host_port = without_scheme
        .rsplit_once('@')
        .map_or(without_scheme, |(_, rest)| rest);
    let host_port = host_port.trim_end_matches('/');
    if host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_is_every_server_of_it() {
        let three = servers("nats://a:4222, tls://b:4443,c").expect("three servers");
        let hosts: Vec<_> = three.iter().map(|s| (s.host(), s.port())).collect();
        assert_eq!(hosts, [("a", 4222), ("b", 4443), ("c", 4222)]);
        assert!(three[1].tls_required());
        let wrong = servers("nats://a:4222,nats://b:x").expect_err("a port that is no number");
        assert!(wrong.to_string().contains("nats://b:x"), "{wrong}");
    }

    #[test]
    fn the_first_server_of_a_url_list_is_probed() {
        assert_eq!(tcp_address("nats://127.0.0.1:14222"), "127.0.0.1:14222");
        assert_eq!(
            tcp_address("tls://u:p@nats.example:4443,nats://b:4222"),
            "nats.example:4443"
        );
        assert_eq!(tcp_address("nats"), "nats:4222");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let cause = reachability(&format!("nats://{address}")).await;
        assert!(cause.contains("refused"), "{cause}");
    }
}
