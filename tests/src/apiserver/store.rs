//! The stand-in's state: resource types, objects with a cluster-wide resourceVersion, the full
//! event history (so a watch can resume from any version), injected faults and recorded requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A kind the stand-in serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ResourceType {
    pub fn new(api_version: &str, kind: &str, plural: &str) -> Self {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced: true,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Where an object lives: its type's group and plural, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as a watch reports it.
#[derive(Debug)]
pub struct WatchEvent {
    pub revision: u64,
    pub key: ObjectKey,
    pub kind: EventType,
    pub object: Value,
}

/// An injected failure (or delay) for requests on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Only requests with this method (`PATCH`, `GET`, ...), or any.
    pub method: Option<String>,
    /// The status to answer instead of serving the request, or none to serve it after `delay`.
    pub status: Option<u16>,
    pub retry_after_seconds: Option<u64>,
    pub delay: Duration,
}

impl Fault {
    /// Answer `status` once.
    pub fn status(status: u16) -> Self {
        Self {
            method: None,
            status: Some(status),
            retry_after_seconds: None,
            delay: Duration::ZERO,
        }
    }

    /// 429 Too Many Requests with `Retry-After`.
    pub fn too_many_requests(retry_after_seconds: u64) -> Self {
        Self {
            retry_after_seconds: Some(retry_after_seconds),
            ..Self::status(429)
        }
    }

    /// Serve the request, but only after `delay`.
    pub fn delay(delay: Duration) -> Self {
        Self {
            method: None,
            status: None,
            retry_after_seconds: None,
            delay,
        }
    }

    /// Only for requests with `method`.
    pub fn on(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }
}

/// A request as the stand-in saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
    pub status: u16,
    /// Who asked (the bearer token's user), when the request carried one.
    pub user: Option<String>,
    /// What RBAC would check for it; `None` for discovery and other non-resource paths.
    pub attributes: Option<super::rbac::Attributes>,
}

pub struct Store {
    pub types: Vec<ResourceType>,
    pub objects: BTreeMap<ObjectKey, Value>,
    pub revision: u64,
    pub history: Vec<Arc<WatchEvent>>,
    pub live: broadcast::Sender<Arc<WatchEvent>>,
    /// Bumped to end every open watch, as an API server restart or a dropped connection does.
    pub watches_ended: tokio::sync::watch::Sender<u64>,
    pub faults: HashMap<ObjectKey, VecDeque<Fault>>,
    pub requests: Vec<RecordedRequest>,
    /// RBAC in force, when the test asked for it.
    pub authorizer: Option<super::rbac::Authorizer>,
}

/// The kinds Flux users target, plus what fluxgate itself reads and writes.
/// A Secret's `stringData` is write-only: the API server merges it into `data` (base64),
/// winning over a `data` key of the same name, and never returns it.
fn fold_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(plain)) = secret.as_object_mut().and_then(|s| s.remove("stringData"))
    else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (key, value) in plain {
        let text = value.as_str().unwrap_or_default();
        secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

fn default_types() -> Vec<ResourceType> {
    [
        ("v1", "ConfigMap", "configmaps"),
        ("v1", "Secret", "secrets"),
        ("notification.toolkit.fluxcd.io/v1", "Receiver", "receivers"),
        ("coordination.k8s.io/v1", "Lease", "leases"),
        (
            "source.toolkit.fluxcd.io/v1",
            "GitRepository",
            "gitrepositories",
        ),
        (
            "source.toolkit.fluxcd.io/v1",
            "OCIRepository",
            "ocirepositories",
        ),
        (
            "source.toolkit.fluxcd.io/v1",
            "HelmRepository",
            "helmrepositories",
        ),
        ("source.toolkit.fluxcd.io/v1", "HelmChart", "helmcharts"),
        ("source.toolkit.fluxcd.io/v1", "Bucket", "buckets"),
        (
            "source.extensions.fluxcd.io/v1beta1",
            "ArtifactGenerator",
            "artifactgenerators",
        ),
        (
            "image.toolkit.fluxcd.io/v1",
            "ImageRepository",
            "imagerepositories",
        ),
        (
            "kustomize.toolkit.fluxcd.io/v1",
            "Kustomization",
            "kustomizations",
        ),
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease", "helmreleases"),
        ("notification.toolkit.fluxcd.io/v1", "Receiver", "receivers"),
    ]
    .into_iter()
    .map(|(api_version, kind, plural)| ResourceType::new(api_version, kind, plural))
    .collect()
}

impl Default for Store {
    fn default() -> Self {
        Self {
            types: default_types(),
            objects: BTreeMap::new(),
            revision: 1,
            history: Vec::new(),
            live: broadcast::channel(4096).0,
            watches_ended: tokio::sync::watch::Sender::new(0),
            faults: HashMap::new(),
            requests: Vec::new(),
            authorizer: None,
        }
    }
}

impl Store {
    pub fn resource_type(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn type_of_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Records a change: bumps the revision, stamps it on the object, keeps and broadcasts it.
    pub fn commit(&mut self, key: ObjectKey, kind: EventType, mut object: Value) -> Value {
        if key.group.is_empty() && key.plural == "secrets" {
            fold_string_data(&mut object);
        }
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        match kind {
            EventType::Deleted => {
                self.objects.remove(&key);
            }
            _ => {
                self.objects.insert(key.clone(), object.clone());
            }
        }
        let event = Arc::new(WatchEvent {
            revision: self.revision,
            key,
            kind,
            object: object.clone(),
        });
        self.history.push(event.clone());
        // No receiver is fine: nobody watches.
        let _ = self.live.send(event);
        object
    }

    /// The next fault injected for this object and method, if any.
    pub fn take_fault(&mut self, key: &ObjectKey, method: &str) -> Option<Fault> {
        let queue = self.faults.get_mut(key)?;
        let index = queue
            .iter()
            .position(|f| f.method.as_deref().is_none_or(|m| m == method))?;
        queue.remove(index)
    }
}
