//! `fluxgate-sample`: sends a signed sample GitHub push to a hook URL, and shows what the
//! streams hold -- the quick start's way to watch a webhook land in JetStream and what the
//! dispatcher made of it.

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Parser, Subcommand};
use fluxgate_shared::contract;
use fluxgate_tests::{http, webhook};

#[derive(Parser)]
#[command(
    about = "Send a signed sample webhook to fluxgate-ingest, or show the last stored delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST a GitHub push signed with the receiver's token.
    Send {
        /// The receiver's full webhook URL.
        #[arg(long)]
        url: String,
        /// The receiver Secret's token.
        #[arg(long, env = "WEBHOOK_SECRET")]
        secret: String,
        /// The X-GitHub-Delivery id (a fresh one by default).
        #[arg(long)]
        delivery: Option<String>,
        #[arg(long, default_value = "push")]
        event: String,
    },
    /// Wait until a URL answers 200 (ingest's /readyz), for at most `--seconds`.
    Wait {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Exit 0 if the current kubeconfig's cluster answers within 5 seconds, else 1.
    ClusterReachable,
    /// Print the outcome events the dispatcher recorded, one JSON object per line.
    Outcomes {
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// Wait until at least this many events are there (for at most 30 s).
        #[arg(long, default_value_t = 0)]
        at_least: usize,
    },
    /// Print the last delivery stored in FLUXGATE_DELIVERIES: its headers and body.
    Show {
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Send {
            url,
            secret,
            delivery,
            event,
        } => {
            let body = webhook::github_push_body(1024);
            let signature = webhook::github_signature(&secret, &body);
            let delivery = delivery.unwrap_or_else(|| format!("sample-{}", std::process::id()));
            let response = http::post(
                &url,
                &[
                    ("content-type", "application/json"),
                    ("x-github-event", &event),
                    ("x-github-delivery", &delivery),
                    ("x-hub-signature-256", &signature),
                    ("user-agent", "fluxgate-sample"),
                ],
                body,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot POST to {url}: {e}"))?;
            println!(
                "HTTP {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
            anyhow::ensure!(response.status < 300, "webhook was not accepted");
        }
        Command::Wait { url, seconds } => {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
            while !http::get(&url).await.is_ok_and(|r| r.status == 200) {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{url} not ready after {seconds}s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Command::ClusterReachable => {
            let answered = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let client = kube::Client::try_default().await.ok()?;
                client.apiserver_version().await.ok()
            })
            .await;
            anyhow::ensure!(
                matches!(answered, Ok(Some(_))),
                "no reachable cluster in the current kubeconfig"
            );
        }
        Command::Outcomes { nats_url, at_least } => {
            let client = async_nats::connect(&nats_url)
                .await
                .with_context(|| format!("connect to {nats_url}"))?;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut events = fluxgate_tests::dispatcher::outcomes(&client).await;
            while events.len() < at_least && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                events = fluxgate_tests::dispatcher::outcomes(&client).await;
            }
            for event in events {
                println!("{event}");
            }
        }
        Command::Show { nats_url } => {
            let client = async_nats::connect(&nats_url)
                .await
                .with_context(|| format!("connect to {nats_url}"))?;
            let mut stream = jetstream::new(client)
                .get_stream(contract::DELIVERIES_STREAM)
                .await
                .context("the deliveries stream does not exist yet")?;
            let last = stream
                .info()
                .await
                .context("stream info")?
                .state
                .last_sequence;
            anyhow::ensure!(last > 0, "no delivery stored yet");
            let message = stream
                .get_raw_message(last)
                .await
                .context("read the last delivery")?;
            println!(
                "{} #{} on {}",
                contract::DELIVERIES_STREAM,
                message.sequence,
                message.subject
            );
            for (name, values) in message.headers.iter() {
                for value in values {
                    println!("  {name}: {value}");
                }
            }
            let body = String::from_utf8_lossy(&message.payload);
            let shown: String = body.chars().take(160).collect();
            let more = if shown.len() < body.len() { "..." } else { "" };
            println!("body ({} bytes): {shown}{more}", message.payload.len());
        }
    }
    Ok(())
}
