//! `fluxgate`: the command line over fluxgate's streams (history, receivers).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = fluxgate_dispatcher::cli::Cli::parse();
    fluxgate_dispatcher::cli::run(cli).await?;
    Ok(())
}
