//! Connecting the services to NATS: retried in the background from the start (a service
//! starts, and reports itself not ready, while NATS is away), and every connection event logged
//! with the server's URL and, for a failure, the operating system's reason.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};

/// The options both services connect with.
pub fn connect_options(name: &str, url: &str) -> ConnectOptions {
    let url = url.to_owned();
    ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .event_callback(move |event| {
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
