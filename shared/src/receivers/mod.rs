//! Receivers: Flux `Receiver` manifests and their Secrets made into the catalog ingest and the
//! dispatcher serve from -- the manifests parsed and checked ([`manifest`]), the served
//! receiver ([`receiver`]), the catalog's lookups ([`catalog`]), and where they come from: the
//! file given with `--receivers-file`, loaded at start-up (a bad one stops the binary) and
//! polled for changes ([`file`]), else the cluster's Receiver objects, watched ([`cluster`]).

mod catalog;
mod cluster;
mod file;
mod manifest;
mod receiver;

pub use catalog::{Catalog, SharedCatalog};
pub use cluster::{Settings as ClusterSettings, list as list_cluster};
pub use receiver::{
    DEFAULT_OIDC_AUDIENCE, OidcProvider, Receiver, ReceiverType, ResourceRef, SecretValue,
    hook_digest,
};

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;

/// The served catalog, whether it has been loaded in full yet, and the task keeping it current.
pub struct Receivers {
    pub catalog: SharedCatalog,
    /// True once the catalog holds every receiver: at once for a file, after the first full
    /// list in the cluster. Nothing should be served or consumed before.
    pub synced: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// Where the receivers are.
pub enum Origin {
    /// A receivers file, checked for changes every `reload_interval`.
    File {
        path: PathBuf,
        reload_interval: Duration,
    },
    Cluster(kube::Client, ClusterSettings),
}

/// Starts keeping the catalog current until `shutdown`; `on_reload` hears of every new catalog,
/// once it is served, or failed reload.
pub fn start(
    origin: Origin,
    on_reload: impl Fn(Result<&Catalog, &Error>) + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Receivers, Error> {
    match origin {
        Origin::File {
            path,
            reload_interval,
        } => {
            let loaded = Catalog::load_file(&path)?;
            if loaded.is_empty() {
                tracing::warn!(file = %path.display(), "the receivers file holds no Receiver: every webhook will be answered 404");
            }
            tracing::info!(receivers = loaded.len(), file = %path.display(), "receivers loaded");
            warn_open_to_anyone(&loaded);
            on_reload(Ok(&loaded));
            let catalog = SharedCatalog::new(loaded);
            let (_, synced) = watch::channel(true);
            let task = tokio::spawn(file::watch_file(
                path,
                catalog.clone(),
                reload_interval,
                on_reload,
                shutdown,
            ));
            Ok(Receivers {
                catalog,
                synced,
                task,
            })
        }
        Origin::Cluster(client, settings) => {
            tracing::info!(
                namespace = settings.namespace.as_deref().unwrap_or("(all)"),
                "watching Receivers in the cluster"
            );
            let catalog = SharedCatalog::new(Catalog::default());
            let (synced_tx, synced) = watch::channel(false);
            let task = tokio::spawn(cluster::watch(
                client,
                settings,
                catalog.clone(),
                synced_tx,
                move |changed| on_reload(Ok(changed)),
                shutdown,
            ));
            Ok(Receivers {
                catalog,
                synced,
                task,
            })
        }
    }
}

/// Warns of each receiver of a loaded file that anyone can trigger (the cluster source warns
/// of each as it changes).
fn warn_open_to_anyone(catalog: &Catalog) {
    for receiver in catalog.receivers() {
        if let Some(why) = receiver.open_to_anyone() {
            let name = format!("{}/{}", receiver.namespace, receiver.name);
            tracing::warn!(receiver = %name, "anyone can trigger this Receiver: {why}");
        }
    }
}
