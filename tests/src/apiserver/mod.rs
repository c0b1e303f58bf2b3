//! A Kubernetes API stand-in for tests: no real API server can run here, so this one speaks the
//! same REST protocol over plain HTTP to the real `kube` client through a kubeconfig --
//! discovery, GET, LIST with selectors, WATCH, merge and JSON patches, create/replace with
//! resourceVersion preconditions (Leases), `Status` errors -- with per-object fault injection, a
//! record of every request, and, when a test asks for it, RBAC enforced per ServiceAccount.

mod rbac;
mod routes;
mod selector;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub use rbac::{Attributes, Authorizer, VERBS, service_account_user};
use store::{EventType, ObjectKey, Store};
pub use store::{Fault, RecordedRequest, ResourceType};

/// The reconcile request a Flux controller would handle now: a `requestedAt` annotation not yet
/// reported handled, on an object that is not suspended.
fn pending_request(object: &Value) -> Option<String> {
    let requested =
        object["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].as_str()?;
    let handled = object["status"]["lastHandledReconcileAt"].as_str();
    let suspended = object["spec"]["suspend"].as_bool().unwrap_or(false);
    (!suspended && handled != Some(requested)).then(|| requested.to_owned())
}

/// State shared by the HTTP handlers and the test's control calls.
struct Shared {
    store: Mutex<Store>,
    addr: SocketAddr,
}

/// Names one object: `apiVersion`, `kind`, namespace and name, as in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(api_version: &str, kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// A running stand-in on `127.0.0.1`, serving until dropped.
pub struct ApiServer {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Starts serving on `addr` (port 0 picks a free one).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            addr: listener.local_addr()?,
        });
        let app = axum::Router::new()
            .fallback(routes::handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { shared, task })
    }

    /// Starts on a free port of 127.0.0.1.
    pub async fn start_local() -> Self {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the API stand-in")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig whose current context points at this stand-in (namespace `flux-system`), as
    /// the cluster admin.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for_url(&self.url())
    }

    /// A kubeconfig naming this stand-in by `url`, for clients that reach it by another address.
    pub fn kubeconfig_for_url(&self, url: &str) -> String {
        kubeconfig(url, rbac::ADMIN_TOKEN)
    }

    /// Writes a kubeconfig that authenticates as the ServiceAccount `namespace/name` to
    /// `dir/<name>.kubeconfig` and returns its path.
    pub fn write_service_account_kubeconfig(
        &self,
        dir: &Path,
        namespace: &str,
        name: &str,
    ) -> std::io::Result<PathBuf> {
        let path = dir.join(format!("{name}.kubeconfig"));
        let token = service_account_user(namespace, name);
        std::fs::write(&path, kubeconfig(&self.url(), &token))?;
        Ok(path)
    }

    /// Enforces the RBAC objects of `manifests` from now on: a request is served only when a
    /// binding of its user grants it (the admin kubeconfig's user is allowed everything).
    pub fn enforce_rbac(&self, manifests: &str) -> Result<(), String> {
        self.store().authorizer = Some(Authorizer::from_yaml(manifests)?);
        Ok(())
    }

    /// Writes [`Self::kubeconfig`] to `dir/kubeconfig` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig())?;
        Ok(path)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().expect("stand-in state")
    }

    /// Serves another kind (a CRD) from now on.
    pub fn register(&self, ty: ResourceType) {
        self.store().types.push(ty);
    }

    fn key(&self, store: &Store, object: &ObjectRef) -> ObjectKey {
        let ty = store
            .type_of_kind(&object.api_version, &object.kind)
            .unwrap_or_else(|| {
                panic!(
                    "the stand-in does not serve {} {}",
                    object.api_version, object.kind
                )
            });
        ObjectKey {
            group: ty.group.clone(),
            plural: ty.plural.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        }
    }

    /// Creates or replaces an object from its manifest (as `kubectl apply` would), notifying
    /// watchers; returns it as stored.
    pub fn apply(&self, mut manifest: Value) -> Value {
        let api_version = manifest["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = manifest["kind"].as_str().unwrap_or_default().to_owned();
        let name = manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = manifest["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let mut store = self.store();
        let key = self.key(
            &store,
            &ObjectRef::new(&api_version, &kind, &namespace, &name),
        );
        match store.objects.get(&key).cloned() {
            Some(current) => {
                for field in ["uid", "creationTimestamp", "generation"] {
                    manifest["metadata"][field] = current["metadata"][field].clone();
                }
                manifest["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
                store.commit(key, EventType::Modified, manifest)
            }
            None => {
                let ty = store
                    .type_of_kind(&api_version, &kind)
                    .cloned()
                    .expect("type checked by key()");
                routes::stamp_new(&mut manifest, &ty, &namespace);
                store.commit(key, EventType::Added, manifest)
            }
        }
    }

    /// Applies every document of a multi-document YAML stream.
    pub fn apply_yaml(&self, yaml: &str) -> Result<usize, String> {
        let mut applied = 0;
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value: Value =
                serde::Deserialize::deserialize(document).map_err(|e| e.to_string())?;
            if value.is_object() {
                self.apply(value);
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Plays the Flux controllers' part from now on: whenever an object's
    /// `reconcile.fluxcd.io/requestedAt` annotation differs from its
    /// `status.lastHandledReconcileAt` -- already, or after a change -- copies it there after
    /// `delay`, through the status subresource's path of change -- except for objects with
    /// `spec.suspend: true`, which Flux does not reconcile.
    pub fn play_flux_controllers(&self, delay: std::time::Duration) {
        let shared = self.shared.clone();
        let (mut events, pending): (_, Vec<ObjectKey>) = {
            let store = shared.store.lock().expect("stand-in state");
            let pending = (store.objects.iter())
                .filter(|(_, object)| pending_request(object).is_some())
                .map(|(key, _)| key.clone())
                .collect();
            (store.live.subscribe(), pending)
        };
        tokio::spawn(async move {
            let mut pending = pending.into_iter();
            loop {
                let key = match pending.next() {
                    Some(key) => key,
                    None => match events.recv().await {
                        Ok(event)
                            if event.kind != EventType::Deleted
                                && pending_request(&event.object).is_some() =>
                        {
                            event.key.clone()
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    },
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut store = shared.store.lock().expect("stand-in state");
                    let Some(mut object) = store.objects.get(&key).cloned() else {
                        return;
                    };
                    if let Some(requested) = pending_request(&object) {
                        object["status"]["lastHandledReconcileAt"] = Value::String(requested);
                        store.commit(key, EventType::Modified, object);
                    }
                });
            }
        });
    }

    /// The object as currently stored.
    pub fn get(&self, object: &ObjectRef) -> Option<Value> {
        let store = self.store();
        let key = self.key(&store, object);
        store.objects.get(&key).cloned()
    }

    /// Deletes an object, notifying watchers.
    pub fn delete(&self, object: &ObjectRef) -> Option<Value> {
        let mut store = self.store();
        let key = self.key(&store, object);
        let current = store.objects.get(&key).cloned()?;
        Some(store.commit(key, EventType::Deleted, current))
    }

    /// Queues a fault for the next matching request on `object` (faults apply in order). With
    /// an empty name, on the collection (its LIST and WATCH); with an empty namespace too, on
    /// the collection across namespaces.
    pub fn inject(&self, object: &ObjectRef, fault: Fault) {
        let mut store = self.store();
        let key = self.key(&store, object);
        store.faults.entry(key).or_default().push_back(fault);
    }

    /// Ends every open watch: clients watch again, and meet the faults queued for that.
    pub fn end_watches(&self) {
        self.store().watches_ended.send_modify(|n| *n += 1);
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.store().requests.clone()
    }
}

/// A kubeconfig for the stand-in at `url` (namespace `flux-system`), authenticating with `token`.
fn kubeconfig(url: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {url}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\n    namespace: flux-system\ncurrent-context: stand-in\nusers:\n- name: stand-in\n  user:\n    token: {token}\n"
    )
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
