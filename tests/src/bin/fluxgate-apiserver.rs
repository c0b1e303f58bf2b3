//! `fluxgate-apiserver`: runs the Kubernetes API stand-in as a process, preloaded with objects
//! from YAML files, and writes a kubeconfig pointing at it -- for running the dispatcher by hand
//! where no real cluster is reachable.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use fluxgate_tests::apiserver::ApiServer;

#[derive(Parser)]
#[command(about = "A Kubernetes API stand-in over plain HTTP, for tests and local runs")]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Multi-document YAML files of objects to create at start-up.
    #[arg(long = "objects")]
    objects: Vec<PathBuf>,
    /// Where to write a kubeconfig for this server (none when not given).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The server URL the kubeconfig names, when clients reach this server by another address
    /// (a container's service name); default: the address it serves on.
    #[arg(long)]
    server_url: Option<String>,
    /// Play the Flux controllers: report each reconcile request handled after this long
    /// (`status.lastHandledReconcileAt`), except on suspended objects.
    #[arg(long, value_parser = humantime::parse_duration)]
    play_flux: Option<std::time::Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = ApiServer::start(args.listen).await.context("bind")?;
    for file in &args.objects {
        let yaml =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let count = server
            .apply_yaml(&yaml)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        eprintln!("applied {count} objects from {}", file.display());
    }
    if let Some(delay) = args.play_flux {
        server.play_flux_controllers(delay);
    }
    if let Some(path) = &args.kubeconfig {
        let url = args.server_url.clone().unwrap_or_else(|| server.url());
        std::fs::write(path, server.kubeconfig_for_url(&url))
            .with_context(|| format!("write {}", path.display()))?;
        println!("kubeconfig: {}", path.display());
    }
    println!("serving the Kubernetes API stand-in on {}", server.url());
    fluxgate_shared::shutdown_signal().await;
    Ok(())
}
