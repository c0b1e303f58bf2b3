//! Watch caches of the objects deliveries target: one kube-runtime reflector per kind and
//! namespace, started when a delivery first needs it and dropped once no Receiver names that
//! scope. Resolving a delivery's targets and confirming its reconcile read these, so a burst of
//! deliveries costs the API server one LIST and one WATCH per scope, then only the patches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use fluxgate_shared::{KUBE_CALL_TIMEOUT, watch_backoff};

use crate::targets::{Refusal, Target, describe, is_permanent};

/// Where a cache looks: one kind in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
}

impl Scope {
    pub fn of(target: &Target) -> Self {
        Self {
            api_version: target.api_version.clone(),
            kind: target.kind.clone(),
            namespace: target.namespace.clone(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} in {}",
            self.api_version, self.kind, self.namespace
        )
    }
}

/// Told of every object a cache lists or sees change: confirmations wait on it.
pub type OnApplied = Arc<dyn Fn(&Scope, &DynamicObject) + Send + Sync>;

/// How far a cache's first list is.
#[derive(Debug, Clone)]
enum Listed {
    Listing,
    Ready,
    /// The last attempt failed (the watch tries again): why, and whether for good (403, an
    /// unknown resource) or for a moment (5xx, timeouts).
    Failed {
        reason: String,
        permanent: bool,
    },
}

/// One scope's objects, as last listed and watched.
pub struct Cache {
    resource: ApiResource,
    namespace: String,
    store: Store<DynamicObject>,
    sync: watch::Receiver<Listed>,
    /// Bumped after every change to which objects there are or to their labels, so that a
    /// selection made before is known stale (other changes, our own patches among them, leave
    /// the selections as they are).
    version: Arc<AtomicU64>,
    /// Each label selector's objects as of a version: a burst of deliveries for one Receiver
    /// selects once, not once per delivery over every object of the scope.
    selections: Mutex<HashMap<BTreeMap<String, String>, (u64, Selected)>>,
    task: tokio::task::JoinHandle<()>,
}

/// The names of the objects a label selector selects.
pub type Selected = Arc<[String]>;

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cache {
    /// The object named `name`, if the cache holds it.
    pub fn get(&self, name: &str) -> Option<Arc<DynamicObject>> {
        let key = ObjectRef::new_with(name, self.resource.clone()).within(&self.namespace);
        self.store.get(&key)
    }

    /// The names of the objects carrying every label of `labels` (an empty map selects all), as
    /// an equality label selector does; chosen again only once objects or labels have changed.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Selected {
        // Read before the store: a change made meanwhile leaves this selection stale, to be
        // made again next time, never a stale one marked current.
        let version = self.version.load(Ordering::Acquire);
        let lock = || self.selections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made, selected)) = lock().get(labels)
            && *made == version
        {
            return selected.clone();
        }
        let selected: Selected = (self.store.state().iter())
            .filter(|object| {
                let own = object.metadata.labels.as_ref();
                (labels.iter()).all(|(key, value)| own.and_then(|l| l.get(key)) == Some(value))
            })
            .filter_map(|object| object.metadata.name.clone())
            .collect();
        lock().insert(labels.clone(), (version, selected.clone()));
        selected
    }
}

/// Every scope's cache, shared by resolution and confirmation.
pub struct Caches {
    client: kube::Client,
    scopes: Mutex<HashMap<Scope, Arc<Cache>>>,
    on_applied: OnApplied,
    /// How many caches are open (a metric; unregistered in the CLI).
    open: Gauge,
}

impl Caches {
    pub fn new(client: kube::Client, on_applied: OnApplied, open: Gauge) -> Arc<Self> {
        Arc::new(Self {
            client,
            scopes: Mutex::default(),
            on_applied,
            open,
        })
    }

    /// The cache of `scope` once its first list is in, started if there is none. One not listed
    /// within [`KUBE_CALL_TIMEOUT`], or whose last list failed, is a transient error, so the
    /// delivery is retried rather than resolved against nothing; one whose list the API server
    /// refuses for good is a permanent one.
    pub async fn synced(
        &self,
        scope: &Scope,
        resource: &ApiResource,
    ) -> Result<Arc<Cache>, Refusal> {
        let cache = self.get_or_start(scope, resource);
        let mut sync = cache.sync.clone();
        let state = tokio::time::timeout(
            KUBE_CALL_TIMEOUT,
            sync.wait_for(|s| !matches!(s, Listed::Listing)),
        )
        .await
        .map(|state| state.map(|s| s.clone()));
        match state {
            Ok(Ok(Listed::Failed { reason, permanent })) => {
                let reason = format!("{scope}: {reason}");
                Err(match permanent {
                    true => Refusal::Permanent(reason),
                    false => unsynced(reason),
                })
            }
            Ok(Ok(_)) => Ok(cache),
            Ok(Err(_)) => Err(unsynced(format!("{scope}: its watch ended"))),
            Err(_) => Err(unsynced(format!(
                "{scope}: not listed within {KUBE_CALL_TIMEOUT:?}"
            ))),
        }
    }

    fn get_or_start(&self, scope: &Scope, resource: &ApiResource) -> Arc<Cache> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cache) = scopes.get(scope) {
            return cache.clone();
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &scope.namespace, resource);
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let (sync_tx, sync) = watch::channel(Listed::Listing);
        let version = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(keep_current(
            api,
            scope.clone(),
            writer,
            sync_tx,
            version.clone(),
            self.on_applied.clone(),
        ));
        let cache = Arc::new(Cache {
            resource: resource.clone(),
            namespace: scope.namespace.clone(),
            store,
            sync,
            version,
            selections: Mutex::default(),
            task,
        });
        tracing::info!(%scope, "caching targets");
        scopes.insert(scope.clone(), cache.clone());
        self.open.set(gauge(scopes.len()));
        cache
    }

    /// Drops the caches of every scope not in `needed` (their watches end once no confirmation
    /// holds them either).
    pub fn retain(&self, needed: &HashSet<Scope>) {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.retain(|scope, _| {
            let keep = needed.contains(scope);
            if !keep {
                tracing::info!(%scope, "no Receiver names these targets any more: cache dropped");
            }
            keep
        });
        self.open.set(gauge(scopes.len()));
    }
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn unsynced(reason: String) -> Refusal {
    Refusal::Transient(kube::Error::Service(reason.into()))
}

/// Lists and watches one scope into its store, telling `on_applied` of every object, until the
/// cache is dropped. Only what resolution and confirmation read is kept: the metadata without
/// `managedFields`, and `status.lastHandledReconcileAt`.
async fn keep_current(
    api: Api<DynamicObject>,
    scope: Scope,
    writer: reflector::store::Writer<DynamicObject>,
    sync: watch::Sender<Listed>,
    version: Arc<AtomicU64>,
    on_applied: OnApplied,
) {
    let mut events = watcher::watcher(api, watcher::Config::default())
        .modify(keep_what_is_read)
        .backoff(watch_backoff())
        .reflect(writer)
        .boxed();
    // Each object's labels, and those of a list under way, to tell which events change what the
    // selectors select.
    let (mut labels, mut listing) = (HashMap::new(), HashMap::new());
    let labels_of = |object: &DynamicObject| {
        let name = object.metadata.name.clone().unwrap_or_default();
        (name, object.metadata.labels.clone().unwrap_or_default())
    };
    while let Some(event) = events.next().await {
        // The store has taken the event in (all but a list's pages, held until it is done).
        let selections_change = match &event {
            Ok(Event::Init) => {
                listing.clear();
                false
            }
            Ok(Event::InitApply(object)) => {
                let (name, own) = labels_of(object);
                listing.insert(name, own);
                false
            }
            Ok(Event::InitDone) => {
                labels = std::mem::take(&mut listing);
                true
            }
            Ok(Event::Apply(object)) => {
                let (name, own) = labels_of(object);
                labels.insert(name, own.clone()) != Some(own)
            }
            Ok(Event::Delete(object)) => labels.remove(&labels_of(object).0).is_some(),
            Err(_) => false,
        };
        if selections_change {
            version.fetch_add(1, Ordering::Release);
        }
        match event {
            Ok(Event::InitDone) => {
                sync.send_if_modified(|s| {
                    !matches!(std::mem::replace(s, Listed::Ready), Listed::Ready)
                });
            }
            Ok(Event::InitApply(object) | Event::Apply(object)) => on_applied(&scope, &object),
            Ok(Event::Init | Event::Delete(_)) => {}
            Err(error) => {
                if let watcher::Error::InitialListFailed(cause) = &error
                    && !matches!(*sync.borrow(), Listed::Ready)
                {
                    sync.send_replace(Listed::Failed {
                        reason: describe(cause),
                        permanent: is_permanent(cause),
                    });
                }
                tracing::warn!(%scope, %error, "watching targets failed; retrying");
            }
        }
    }
}

fn keep_what_is_read(object: &mut DynamicObject) {
    object.metadata.managed_fields = None;
    let handled = object
        .data
        .pointer("/status/lastHandledReconcileAt")
        .cloned();
    object.data = match handled {
        Some(handled) => serde_json::json!({"status": {"lastHandledReconcileAt": handled}}),
        None => serde_json::json!({}),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_metadata_and_the_handled_time_are_kept() {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {
                "name": "app", "namespace": "team", "labels": {"a": "b"},
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {"url": "https://example.com/app.git"},
            "status": {"lastHandledReconcileAt": "now", "artifact": {"revision": "main@sha1:1"}},
        }))
        .expect("object");
        keep_what_is_read(&mut object);
        assert_eq!(object.metadata.managed_fields, None);
        assert_eq!(object.metadata.labels.as_ref().map(|l| l.len()), Some(1));
        assert_eq!(
            object.data,
            serde_json::json!({"status": {"lastHandledReconcileAt": "now"}})
        );
    }
}
