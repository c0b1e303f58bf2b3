//! Receivers from the cluster: Flux `Receiver` objects watched with kube-runtime (all
//! namespaces or one), each joined with its token Secret, read by name with a GET -- never
//! listed or watched, so ingest needs no right to read every Secret -- and read again every
//! `secret_refresh` so a rotated token takes effect within seconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::manifest::{ReceiverManifest, SecretLookup};
use super::{Catalog, Receiver, SecretValue, SharedCatalog};

/// Which Receivers to serve, and whether to read their Secrets.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None` watches every namespace.
    pub namespace: Option<String>,
    /// Ingest reads token Secrets; the dispatcher has no use for them.
    pub read_secrets: bool,
    pub secret_refresh: Duration,
}

type Key = (String, String);
type SecretData = BTreeMap<String, SecretValue>;

/// Keeps `shared` equal to the cluster's Receivers until `shutdown`; `synced` turns true after
/// the first full list, and `on_reload` hears of every rebuilt catalog.
pub async fn watch(
    client: kube::Client,
    settings: Settings,
    shared: SharedCatalog,
    synced: watch::Sender<bool>,
    on_reload: impl Fn(&Catalog),
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api = receivers_api(client.clone(), &settings);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut loader = Loader {
        client,
        read_secrets: settings.read_secrets,
        secrets: HashMap::new(),
        last_read: HashMap::new(),
        used: HashSet::new(),
        problems: HashMap::new(),
    };
    let mut receivers: BTreeMap<Key, DynamicObject> = BTreeMap::new();
    let mut listing: BTreeMap<Key, DynamicObject> = BTreeMap::new();
    let mut refresh = tokio::time::interval(settings.secret_refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let changed = tokio::select! {
            _ = &mut shutdown => return,
            event = events.next() => match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching Receivers failed; retrying");
                    false
                }
                Some(Ok(Event::Init)) => {
                    listing.clear();
                    false
                }
                Some(Ok(Event::InitApply(object))) => {
                    listing.insert(key(&object), object);
                    false
                }
                Some(Ok(Event::InitDone)) => {
                    receivers = std::mem::take(&mut listing);
                    true
                }
                Some(Ok(Event::Apply(object))) => {
                    receivers.insert(key(&object), object);
                    true
                }
                Some(Ok(Event::Delete(object))) => {
                    receivers.remove(&key(&object));
                    true
                }
            },
            // Secrets are not watched: read them again now and then.
            _ = refresh.tick(), if *synced.borrow() => {
                loader.secrets.clear();
                true
            }
        };
        if changed {
            let catalog = loader.load(&receivers).await;
            on_reload(&catalog);
            shared.replace(catalog);
            synced.send_if_modified(|synced| !std::mem::replace(synced, true));
        }
    }
}

/// The cluster's Receivers as they are now, for a one-off look (the CLI): the catalog, and why
/// each Receiver left out of it is.
pub async fn list(
    client: kube::Client,
    settings: &Settings,
) -> Result<(Catalog, BTreeMap<String, String>), kube::Error> {
    let api = receivers_api(client.clone(), settings);
    let receivers = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .map(|o| (key(&o), o))
        .collect();
    let mut loader = Loader {
        client,
        read_secrets: settings.read_secrets,
        secrets: HashMap::new(),
        last_read: HashMap::new(),
        used: HashSet::new(),
        problems: HashMap::new(),
    };
    Ok(loader.build(&receivers).await)
}

fn receivers_api(client: kube::Client, settings: &Settings) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("notification.toolkit.fluxcd.io", "v1", "Receiver"),
        "receivers",
    );
    match &settings.namespace {
        Some(namespace) => Api::namespaced_with(client, namespace, &resource),
        None => Api::all_with(client, &resource),
    }
}

fn key(object: &DynamicObject) -> Key {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// Builds catalogs, remembering the Secrets it read until they are cleared.
struct Loader {
    client: kube::Client,
    read_secrets: bool,
    secrets: HashMap<Key, Option<SecretData>>,
    /// Each Secret's data as last read, kept across refreshes for when a read fails.
    last_read: HashMap<Key, SecretData>,
    /// The Secrets the receivers of the last build refer to.
    used: HashSet<Key>,
    /// What is wrong with each receiver, as last logged: a problem is logged when it appears or
    /// changes, not at every rebuild.
    problems: HashMap<String, String>,
}

impl Loader {
    /// The catalog of `receivers`, and why each one left out of it is (no Secret, no token, a
    /// bad spec: answered 404, as Flux does). One with an invalid expression is in the catalog,
    /// not ready (503).
    async fn build(
        &mut self,
        receivers: &BTreeMap<Key, DynamicObject>,
    ) -> (Catalog, BTreeMap<String, String>) {
        let mut served = Vec::with_capacity(receivers.len());
        let mut left_out = BTreeMap::new();
        self.used.clear();
        for (key, object) in receivers {
            match self.receiver(object).await {
                Ok(receiver) => served.push(receiver),
                Err(reason) => {
                    left_out.insert(format!("{}/{}", key.0, key.1), reason);
                }
            }
        }
        // Forget the Secrets no receiver refers to any more.
        let used = &self.used;
        self.last_read.retain(|key, _| used.contains(key));
        (Catalog::new(served), left_out)
    }

    /// [`Self::build`], logging each receiver's problem when it appears or changes.
    async fn load(&mut self, receivers: &BTreeMap<Key, DynamicObject>) -> Catalog {
        let (catalog, left_out) = self.build(receivers).await;
        let mut problems: HashMap<String, String> = left_out
            .into_iter()
            .map(|(name, reason)| (name, format!("not served: {reason}")))
            .collect();
        for receiver in catalog.receivers() {
            if let Some(reason) = &receiver.not_ready {
                let name = format!("{}/{}", receiver.namespace, receiver.name);
                problems.insert(name, format!("not ready: {reason}"));
            }
        }
        for (receiver, problem) in &problems {
            if self.problems.get(receiver) != Some(problem) {
                tracing::warn!(%receiver, %problem, "Receiver cannot be served as it is");
            }
        }
        self.problems = problems;
        catalog
    }

    async fn receiver(&mut self, object: &DynamicObject) -> Result<Receiver, String> {
        let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
        let manifest: ReceiverManifest = serde_path_to_error::deserialize(value)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        let secret = match (self.read_secrets, manifest.secret_name()) {
            (false, _) => None,
            (true, None) => Some(None),
            (true, Some(name)) => Some(self.secret(&(manifest.namespace(), name.to_owned())).await),
        };
        let lookup = match &secret {
            None => SecretLookup::NotRead,
            Some(Some(data)) => SecretLookup::Found(data),
            Some(None) => SecretLookup::Missing,
        };
        manifest
            .into_receiver(lookup)
            .map_err(|invalid| invalid.to_string())
    }

    /// A Secret's data, `None` when it does not exist. One that cannot be read now (the API
    /// server away, a timeout) is not gone: its last data read is kept, so the receiver stays
    /// served, and it is read again at the next rebuild.
    async fn secret(&mut self, key: &Key) -> Option<SecretData> {
        self.used.insert(key.clone());
        if let Some(cached) = self.secrets.get(key) {
            return cached.clone();
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.0);
        let data = match crate::within_deadline(api.get_opt(&key.1)).await {
            Ok(Some(secret)) => Some(decode(secret)),
            Ok(None) => None,
            Err(error) => {
                let kept = self.last_read.get(key).cloned();
                tracing::warn!(secret = %format_args!("{}/{}", key.0, key.1), %error, kept_last_read = kept.is_some(), "cannot read a Receiver's Secret; reading it again at the next refresh");
                return kept;
            }
        };
        match &data {
            Some(data) => self.last_read.insert(key.clone(), data.clone()),
            None => self.last_read.remove(key),
        };
        self.secrets.insert(key.clone(), data.clone());
        data
    }
}

/// `data` (bytes) and `stringData` (which an API server folds into `data` on write).
fn decode(secret: Secret) -> SecretData {
    let mut out: SecretData = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, SecretValue::new(v.0)))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        out.insert(k, SecretValue::new(v.into_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn secret_data_and_string_data_are_both_read() {
        let secret = Secret {
            data: Some([("token".to_owned(), ByteString(b"from-data".to_vec()))].into()),
            string_data: Some([("email".to_owned(), "a@b".to_owned())].into()),
            ..Default::default()
        };
        let data = decode(secret);
        assert_eq!(
            data.get("token").map(SecretValue::expose),
            Some(&b"from-data"[..])
        );
        assert_eq!(
            data.get("email").map(SecretValue::expose),
            Some(&b"a@b"[..])
        );
    }

    #[test]
    fn wire_data_is_base64_decoded() {
        use base64::Engine as _;
        let wire = base64::engine::general_purpose::STANDARD.encode(b"t");
        let secret: Secret =
            serde_json::from_value(serde_json::json!({"data": {"token": wire}})).expect("secret");
        assert_eq!(
            decode(secret).get("token").map(SecretValue::expose),
            Some(&b"t"[..])
        );
    }
}
