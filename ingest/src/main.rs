//! `fluxgate-ingest`: parses the configuration, binds the listeners and runs until SIGTERM.

use anyhow::Context as _;
use clap::Parser as _;
use fluxgate_ingest::Config;
use tokio::net::TcpListener;

// glibc's malloc serialises the many small allocations of concurrent requests on arena locks;
// mimalloc's per-thread heaps do not (measured with fluxgate-load: see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let tracing = fluxgate_shared::init_telemetry(config.common.log_format, "fluxgate-ingest")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin_listen))?;
    let ran =
        fluxgate_ingest::run(config, listener, admin, fluxgate_shared::shutdown_signal()).await;
    tracing.shutdown().await;
    Ok(ran?)
}
