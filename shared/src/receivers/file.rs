//! The file source: a receivers file (`--receivers-file`), loaded at start-up and polled for
//! changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Catalog, SharedCatalog};
use crate::error::Error;

impl Catalog {
    /// Reads and parses a receivers file.
    pub fn load_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }
}

/// Reloads `path` into `shared` whenever its content changes, until `shutdown` resolves.
/// The file is polled rather than watched with inotify: Kubernetes updates a mounted ConfigMap
/// or Secret by swapping a symlink, which file watchers easily miss, while reading a small file
/// every `interval` always sees it. A file that fails to parse keeps the old catalog and is
/// logged once per distinct content.
///
/// The file is read once when this is called, so only later changes count as reloads;
/// `on_reload` hears of every reload attempt (the new catalog, or why it failed).
pub fn watch_file(
    path: PathBuf,
    shared: SharedCatalog,
    interval: Duration,
    on_reload: impl Fn(Result<&Catalog, &Error>) + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let last = std::fs::read(&path).ok();
    watch_loop(path, shared, interval, last, on_reload, shutdown)
}

async fn watch_loop(
    path: PathBuf,
    shared: SharedCatalog,
    interval: Duration,
    mut last: Option<Vec<u8>>,
    on_reload: impl Fn(Result<&Catalog, &Error>),
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        let content = match tokio::fs::read(&path).await {
            Ok(content) => content,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read receivers file; keeping the current catalog");
                continue;
            }
        };
        if last.as_deref() == Some(content.as_slice()) {
            continue;
        }
        match Catalog::parse(&String::from_utf8_lossy(&content)) {
            Ok(catalog) => {
                tracing::info!(path = %path.display(), receivers = catalog.len(), "receivers file reloaded");
                super::warn_open_to_anyone(&catalog);
                shared.replace(catalog);
                on_reload(Ok(&shared.current()));
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "receivers file is invalid; keeping the current catalog");
                on_reload(Err(&error));
            }
        }
        last = Some(content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::hook_digest;

    /// The quick start's receivers: two, both with the token below.
    const FILE: &str = include_str!("../../../deploy/examples/receivers.yaml");
    const TOKEN: &[u8] = b"quickstart-secret-change-me";

    #[tokio::test]
    async fn watcher_reloads_changes_and_keeps_old_catalog_on_bad_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("receivers.yaml");
        std::fs::write(&path, FILE).expect("write");
        let shared = SharedCatalog::new(Catalog::load_file(&path).expect("load"));
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(watch_file(
            path.clone(),
            shared.clone(),
            Duration::from_millis(10),
            move |result| {
                let _ = events_tx.send(result.map(Catalog::len).map_err(|e| e.to_string()));
            },
            async {
                let _ = stopped.await;
            },
        ));
        let old_digest = hook_digest(TOKEN, "github-receiver", "flux-system");

        std::fs::write(&path, "kind: [").expect("write bad");
        let failed = events.recv().await.expect("reload event");
        assert!(failed.expect_err("bad file").contains("not valid YAML"));
        assert!(
            shared.current().get(&old_digest).is_some(),
            "bad file must keep the old catalog"
        );

        std::fs::write(&path, FILE.replace("github-receiver", "renamed")).expect("write good");
        assert_eq!(events.recv().await.expect("reload event"), Ok(2));
        assert!(shared.current().get(&old_digest).is_none());
        assert!(
            shared
                .current()
                .get(&hook_digest(TOKEN, "renamed", "flux-system"))
                .is_some()
        );

        let _ = stop.send(());
        task.await.expect("watcher ends on shutdown");
    }
}
