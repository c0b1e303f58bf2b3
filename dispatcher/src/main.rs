//! `fluxgate-dispatcher`: parses the configuration, binds the admin listener and runs until
//! SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use fluxgate_dispatcher::Config;
use tokio::net::TcpListener;

// glibc's malloc spent a third of the dispatcher's CPU draining a backlog (arena locks,
// consolidation of the many short-lived messages and events); mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let tracing = fluxgate_shared::init_telemetry(config.common.log_format, "fluxgate-dispatcher")?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
    let ran = fluxgate_dispatcher::run(config, admin, fluxgate_shared::shutdown_signal()).await;
    tracing.shutdown().await;
    Ok(ran?)
}
