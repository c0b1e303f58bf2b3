//! fluxgate-ingest: finds the Flux receiver by its hook path, verifies the webhook as Flux does,
//! stores it in NATS JetStream and answers 2xx only once the stream acknowledged it.

mod admin;
mod config;
mod delivery;
mod error;
mod http;
mod identity;
mod metrics;
mod publish;
mod serve;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;
mod verify;

use std::future::Future;
use std::sync::Arc;

use fluxgate_shared::receivers::{self, ClusterSettings, Origin};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;
pub use error::Error;

use crate::http::AppState;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::publish::{Publisher, StreamSettings};

/// Open connections the admin listener (probes, Prometheus) serves at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Runs ingest on the given listeners until `shutdown` resolves, then drains in-flight requests.
/// Fails at once if the receivers file is invalid (or, without one, if there is no cluster).
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    let origin = match &config.common.receivers_file {
        Some(path) => Origin::File {
            path: path.clone(),
            reload_interval: config.common.reload_interval,
        },
        None => Origin::Cluster(
            kube::Client::try_default().await?,
            ClusterSettings {
                namespace: config.common.watch_namespace.clone(),
                read_secrets: true,
                secrets_selector: config.secrets_selector.clone(),
            },
        ),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers = {
        let metrics = metrics.clone();
        let mut stop = stop_rx.clone();
        let on_reload = move |result: Result<&receivers::Catalog, &fluxgate_shared::Error>| {
            metrics.reload(result);
        };
        receivers::start(origin, on_reload, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .map_err(Error::Receivers)?
    };

    let settings = StreamSettings {
        replicas: config.stream_replicas,
        max_age: config.stream_max_age,
        max_bytes: config.stream_max_bytes,
        bodies_max_bytes: config.bodies_max_bytes,
        duplicate_window: config.stream_duplicate_window,
    };
    let publisher = Publisher::connect(
        &config.common.nats_url,
        &config.common.nats_auth,
        settings,
        config.publish_timeout,
    )
    .await?;
    let provisioning = tokio::spawn(publisher.clone().keep_provisioned());

    let state = Arc::new(AppState {
        catalog: receivers.catalog,
        catalog_synced: receivers.synced,
        store: publisher.clone(),
        identity: Identity::new(config.google_certs_url.clone())?,
        metrics,
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.body_timeout,
        bodies: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_bodies)),
    });
    // A target of its own, so a supervisor (the test harness) can enable just this line and
    // learn the bound ports when it asked for port 0.
    tracing::info!(
        target: "fluxgate_ingest::listen",
        listen = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        "fluxgate-ingest serving"
    );
    let admin = tokio::spawn(serve::serve(
        admin_listener,
        TowerToHyperService::new(admin::router(state.clone())),
        config.header_timeout,
        config.shutdown_grace,
        ADMIN_MAX_CONNECTIONS,
        stop_rx.clone(),
    ));
    let hooks = serve::serve(
        listener,
        http::Hooks::new(state),
        config.header_timeout,
        config.shutdown_grace,
        config.max_connections,
        stop_rx,
    );

    let signal = async {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(true);
    };
    tokio::join!(hooks, signal);
    let _ = admin.await;
    let _ = receivers.task.await;
    provisioning.abort();
    tracing::info!("fluxgate-ingest stopped");
    Ok(())
}
