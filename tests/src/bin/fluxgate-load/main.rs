//! `fluxgate-load`: fluxgate's benchmarks, each next to the raw JetStream rate on the same
//! server. `ingest`: signed webhooks over keep-alive connections; `dispatcher`: draining a
//! stored backlog into patches; `slow`: ingest's memory under slow senders of large bodies;
//! `soak`: both services under a long mix of good and bad requests and faults; `catalog`: both
//! services on thousands of Receivers and Secrets.
//!
//! Run with `cargo run --release -p fluxgate-tests --bin fluxgate-load -- ingest --requests 50000`.

mod catalog;
mod dispatcher;
mod history;
mod ingest;
mod slow;
mod soak;

use clap::Parser;

#[derive(Parser)]
enum Command {
    /// HTTP -> JetStream throughput and latency of fluxgate-ingest.
    Ingest(ingest::Args),
    /// Backlog drain rate of fluxgate-dispatcher against the Kubernetes API stand-in.
    Dispatcher(dispatcher::Args),
    /// ingest's memory under many slow, unauthenticated senders of large bodies.
    Slow(slow::Args),
    /// ingest and the dispatcher under a long request mix, a NATS restart and a SIGKILL.
    Soak(soak::Args),
    /// Start-up, memory and change latency of both services on thousands of Receivers.
    Catalog(catalog::Args),
    /// The CLI's look-ups by id and listings over a million stored deliveries.
    History(history::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Ingest(args) => ingest::run(args).await,
        Command::Dispatcher(args) => dispatcher::run(args).await,
        Command::Slow(args) => slow::run(args).await,
        Command::Soak(args) => soak::run(args).await,
        Command::Catalog(args) => catalog::run(args).await,
        Command::History(args) => history::run(args).await,
    }
}
