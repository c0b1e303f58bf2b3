//! `fluxgate-load`: fluxgate's benchmarks, each next to the raw JetStream rate on the same
//! server. `ingest`: signed webhooks over keep-alive connections; `dispatcher`: draining a
//! stored backlog into patches.
//!
//! Run with `cargo run --release -p fluxgate-tests --bin fluxgate-load -- ingest --requests 50000`.

mod dispatcher;
mod ingest;

use clap::Parser;

#[derive(Parser)]
enum Command {
    /// HTTP -> JetStream throughput and latency of fluxgate-ingest.
    Ingest(ingest::Args),
    /// Backlog drain rate of fluxgate-dispatcher against the Kubernetes API stand-in.
    Dispatcher(dispatcher::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Command::parse() {
        Command::Ingest(args) => ingest::run(args).await,
        Command::Dispatcher(args) => dispatcher::run(args).await,
    }
}
