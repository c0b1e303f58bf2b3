//! Receivers from the cluster: Flux `Receiver` objects watched with kube-runtime (all
//! namespaces or one), each joined with its token Secret, read by name with a GET -- never
//! listed or watched, so ingest needs no right to read every Secret -- and read again every
//! `secret_refresh` so a rotated token takes effect within seconds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::catalog::{
    Catalog, Receiver, ReceiverManifest, SecretLookup, SecretValue, SharedCatalog,
};

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
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("notification.toolkit.fluxcd.io", "v1", "Receiver"),
        "receivers",
    );
    let api: Api<DynamicObject> = match &settings.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut loader = Loader {
        client,
        read_secrets: settings.read_secrets,
        secrets: HashMap::new(),
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
    /// What is wrong with each receiver, as last logged: a problem is logged when it appears or
    /// changes, not at every rebuild.
    problems: HashMap<String, String>,
}

impl Loader {
    /// The catalog of `receivers`. One that cannot be served (no Secret, no token, a bad spec)
    /// is left out -- answered 404, as Flux does -- and one with an invalid expression is kept
    /// but not ready (503); both are logged.
    async fn load(&mut self, receivers: &BTreeMap<Key, DynamicObject>) -> Catalog {
        let mut served = Vec::with_capacity(receivers.len());
        let mut problems = HashMap::new();
        for (key, object) in receivers {
            let name = format!("{}/{}", key.0, key.1);
            match self.receiver(object).await {
                Ok(receiver) => {
                    if let Some(reason) = &receiver.not_ready {
                        problems.insert(name, format!("not ready: {reason}"));
                    }
                    served.push(receiver);
                }
                Err(reason) => {
                    problems.insert(name, format!("not served: {reason}"));
                }
            }
        }
        for (receiver, problem) in &problems {
            if self.problems.get(receiver) != Some(problem) {
                tracing::warn!(%receiver, %problem, "Receiver cannot be served as it is");
            }
        }
        self.problems = problems;
        Catalog::new(served)
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

    /// A Secret's data, `None` when it does not exist or cannot be read (logged).
    async fn secret(&mut self, key: &Key) -> Option<SecretData> {
        if let Some(cached) = self.secrets.get(key) {
            return cached.clone();
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.0);
        let data = match api.get_opt(&key.1).await {
            Ok(Some(secret)) => Some(decode(secret)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(secret = %format_args!("{}/{}", key.0, key.1), %error, "cannot read a Receiver's Secret");
                None
            }
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
