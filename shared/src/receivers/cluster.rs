//! Receivers from the cluster: Flux `Receiver` objects watched with kube-runtime (all
//! namespaces or one), each joined with its token Secret. Every Secret a Receiver names is
//! watched on its own, listed and watched with the field selector `metadata.name=<name>` in its
//! namespace (as the kubelet watches the Secrets its pods mount), so ingest never lists a Secret
//! it does not need, a rotated token moves its hook path as soon as the watch tells, and the
//! Secrets are read again only when they change. A change rebuilds the one receiver it touches
//! (or the few that share a Secret), never the whole catalog.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};

use super::manifest::{ReceiverManifest, SecretLookup};
use super::{Catalog, Receiver, SecretValue, SharedCatalog};
use crate::watch_backoff;

/// Which Receivers to serve, and whether to read their Secrets.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None` watches every namespace.
    pub namespace: Option<String>,
    /// Ingest reads token Secrets; the dispatcher has no use for them.
    pub read_secrets: bool,
    /// Read only the Secrets with these labels, all in one watch, instead of a watch per Secret
    /// a Receiver names (a connection each): for thousands of Receivers, whose token Secrets are
    /// labelled for fluxgate. A Secret a Receiver names without the labels is not read.
    pub secrets_selector: Option<String>,
}

/// Namespace and name.
type Key = (String, String);
type SecretData = BTreeMap<String, SecretValue>;

/// What a Secret's watch says.
#[derive(Debug)]
enum SecretNews {
    /// The Secret as listed or changed: its data, or `None` when there is no such Secret.
    Data(Option<SecretData>),
    /// Its first list failed (it is tried again): a receiver with no data read yet is left out.
    Unreadable,
}

/// What the watch of labelled Secrets says.
#[derive(Debug)]
enum LabelledNews {
    /// Every labelled Secret, at a (re)list.
    Listed(HashMap<Key, SecretData>),
    /// One changed (`None`: deleted, or its labels removed).
    Changed(Key, Option<SecretData>),
    /// The first list failed (it is tried again).
    Unreadable,
}

/// Keeps `shared` equal to the cluster's Receivers until `shutdown`; `synced` turns true once
/// the Receivers are listed and each Secret they name has been answered for, and `on_change`
/// hears of every new catalog, once it is served.
pub async fn watch(
    client: kube::Client,
    settings: Settings,
    shared: SharedCatalog,
    synced: watch::Sender<bool>,
    on_change: impl Fn(&Catalog),
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api = receivers_api(client.clone(), &settings);
    let mut receivers = watcher::watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .boxed();
    let (news_tx, mut news) = mpsc::unbounded_channel();
    let (labelled_tx, mut labelled_news) = mpsc::unbounded_channel();
    let labelled = match (&settings.secrets_selector, settings.read_secrets) {
        (Some(selector), true) => {
            let api: Api<Secret> = match &settings.namespace {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            };
            let task = tokio::spawn(watch_labelled_secrets(api, selector.clone(), labelled_tx));
            Some(Labelled {
                data: HashMap::new(),
                listed: false,
                _watch: Task(task),
            })
        }
        _ => None,
    };
    let mut state = State {
        client,
        labelled,
        read_secrets: settings.read_secrets,
        objects: HashMap::new(),
        secret_of: HashMap::new(),
        secrets: HashMap::new(),
        problems: HashMap::new(),
        news: news_tx,
        listed: false,
    };
    let mut listing: HashMap<Key, DynamicObject> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        let mut catalog = Catalog::clone(&shared.current());
        tokio::select! {
            _ = &mut shutdown => return,
            event = receivers.next() => match event {
                None => return,
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching Receivers failed; retrying");
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    listing.clear();
                    continue;
                }
                Some(Ok(Event::InitApply(object))) => {
                    listing.insert(key(&object), object);
                    continue;
                }
                Some(Ok(Event::InitDone)) => {
                    state.relisted(std::mem::take(&mut listing), &mut catalog);
                }
                Some(Ok(Event::Apply(object))) => state.applied(object, &mut catalog),
                Some(Ok(Event::Delete(object))) => state.deleted(&key(&object), &mut catalog),
            },
            Some((secret, said)) = news.recv() => state.secret_news(secret, said, &mut catalog),
            Some(said) = labelled_news.recv() => state.labelled_news(said, &mut catalog),
        }
        shared.replace(catalog);
        on_change(&shared.current());
        if state.synced() {
            synced.send_if_modified(|synced| !std::mem::replace(synced, true));
        }
    }
}

/// What the cluster holds and what is served of it.
struct State {
    client: kube::Client,
    /// With `--secrets-selector`: the labelled Secrets, from one watch.
    labelled: Option<Labelled>,
    read_secrets: bool,
    /// Every Receiver, as last seen.
    objects: HashMap<Key, DynamicObject>,
    /// The Secret each Receiver names (only when Secrets are read).
    secret_of: HashMap<Key, Key>,
    /// Each watched Secret.
    secrets: HashMap<Key, WatchedSecret>,
    /// What is wrong with each receiver, as last logged: a problem is logged when it appears or
    /// changes.
    problems: HashMap<Key, String>,
    news: mpsc::UnboundedSender<(Key, SecretNews)>,
    /// The Receivers have been listed once.
    listed: bool,
}

struct WatchedSecret {
    /// Its data once its watch answered (`Some(None)`: no such Secret).
    data: Option<Option<SecretData>>,
    /// The Receivers naming it.
    users: HashSet<Key>,
    /// Its own watch; none when the labelled Secrets' watch tells of it.
    _watch: Option<Task>,
}

/// Every labelled Secret's data, as one watch tells.
struct Labelled {
    data: HashMap<Key, SecretData>,
    listed: bool,
    _watch: Task,
}

/// A task that ends with its owner.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl State {
    /// Every Receiver listed and every Secret they name answered for.
    fn synced(&self) -> bool {
        self.listed && self.secrets.values().all(|s| s.data.is_some())
    }

    /// A full list (the first, or after the watch lost its place): what changed is applied,
    /// what is gone removed; unchanged Receivers are not rebuilt.
    fn relisted(&mut self, listing: HashMap<Key, DynamicObject>, catalog: &mut Catalog) {
        let gone: Vec<Key> = (self.objects.keys())
            .filter(|k| !listing.contains_key(*k))
            .cloned()
            .collect();
        for receiver in gone {
            self.deleted(&receiver, catalog);
        }
        for (receiver, object) in listing {
            let unchanged = self.objects.get(&receiver).is_some_and(|known| {
                known.metadata.resource_version == object.metadata.resource_version
            });
            if !unchanged {
                self.applied(object, catalog);
            }
        }
        if !self.listed {
            self.listed = true;
            tracing::info!(
                receivers = self.objects.len(),
                secrets = self.secrets.len(),
                "Receivers listed"
            );
        }
    }

    fn applied(&mut self, object: DynamicObject, catalog: &mut Catalog) {
        let receiver = key(&object);
        let secret = (self.read_secrets)
            .then(|| secret_name(&object).map(|name| (receiver.0.clone(), name.to_owned())))
            .flatten();
        self.objects.insert(receiver.clone(), object);
        if self.secret_of.get(&receiver) != secret.as_ref() {
            self.forget_secret_of(&receiver);
            if let Some(secret) = secret {
                self.use_secret(&receiver, secret);
            }
        }
        self.rebuild(&receiver, catalog);
    }

    fn deleted(&mut self, receiver: &Key, catalog: &mut Catalog) {
        self.objects.remove(receiver);
        self.forget_secret_of(receiver);
        self.problems.remove(receiver);
        catalog.remove(&receiver.0, &receiver.1);
    }

    /// Notes that `receiver` names `secret`, watching it if no other Receiver did.
    fn use_secret(&mut self, receiver: &Key, secret: Key) {
        self.secret_of.insert(receiver.clone(), secret.clone());
        let (client, news, labelled) = (&self.client, &self.news, &self.labelled);
        let watched = self
            .secrets
            .entry(secret.clone())
            .or_insert_with(|| match labelled {
                // The labelled Secrets' watch tells of it: known once that is listed.
                Some(labelled) => WatchedSecret {
                    data: labelled.listed.then(|| labelled.data.get(&secret).cloned()),
                    users: HashSet::new(),
                    _watch: None,
                },
                None => WatchedSecret {
                    data: None,
                    users: HashSet::new(),
                    _watch: Some(Task(tokio::spawn(watch_secret(
                        client.clone(),
                        secret,
                        news.clone(),
                    )))),
                },
            });
        watched.users.insert(receiver.clone());
    }

    /// Forgets the Secret `receiver` named; one no Receiver names any more is no longer watched.
    fn forget_secret_of(&mut self, receiver: &Key) {
        let Some(secret) = self.secret_of.remove(receiver) else {
            return;
        };
        if let Some(watched) = self.secrets.get_mut(&secret) {
            watched.users.remove(receiver);
            if watched.users.is_empty() {
                self.secrets.remove(&secret);
            }
        }
    }

    fn secret_news(&mut self, secret: Key, news: SecretNews, catalog: &mut Catalog) {
        let Some(watched) = self.secrets.get_mut(&secret) else {
            return; // No longer watched.
        };
        match news {
            SecretNews::Data(data) => watched.data = Some(data),
            // Data read before stays: the receiver stays served while the API server is away.
            SecretNews::Unreadable => {
                watched.data.get_or_insert(None);
            }
        }
        let users: Vec<Key> = watched.users.iter().cloned().collect();
        for receiver in users {
            self.rebuild(&receiver, catalog);
        }
    }

    /// The labelled Secrets' watch: their data kept, and the receivers naming one that changed
    /// rebuilt (all of them at a list).
    fn labelled_news(&mut self, news: LabelledNews, catalog: &mut Catalog) {
        let Some(labelled) = self.labelled.as_mut() else {
            return;
        };
        let (changed, unreadable): (Vec<Key>, bool) = match news {
            LabelledNews::Listed(data) => {
                labelled.data = data;
                labelled.listed = true;
                (self.secrets.keys().cloned().collect(), false)
            }
            LabelledNews::Changed(secret, data) => {
                match data {
                    Some(data) => labelled.data.insert(secret.clone(), data),
                    None => labelled.data.remove(&secret),
                };
                (vec![secret], false)
            }
            // Nothing read yet: the receivers are left out until a list succeeds.
            LabelledNews::Unreadable => {
                labelled.listed = true;
                (self.secrets.keys().cloned().collect(), true)
            }
        };
        let mut users = Vec::new();
        for secret in changed {
            let Some(watched) = self.secrets.get_mut(&secret) else {
                continue;
            };
            if unreadable {
                watched.data.get_or_insert(None);
            } else {
                watched.data = Some(labelled.data.get(&secret).cloned());
            }
            users.extend(watched.users.iter().cloned());
        }
        for receiver in users {
            self.rebuild(&receiver, catalog);
        }
    }

    /// Serves `receiver` as its object and Secret are now, or takes it out of the catalog (a
    /// Secret not read yet, none, no token, a bad spec: answered 404, as Flux does); logs what is
    /// wrong with it when that changes.
    fn rebuild(&mut self, receiver: &Key, catalog: &mut Catalog) {
        let Some(object) = self.objects.get(receiver) else {
            return;
        };
        let secret = match self.secret_of.get(receiver) {
            None if self.read_secrets => SecretLookup::Missing,
            None => SecretLookup::NotRead,
            Some(secret) => match self.secrets.get(secret).and_then(|s| s.data.as_ref()) {
                // Its Secret's first answer is still to come: served once it is.
                None => {
                    catalog.remove(&receiver.0, &receiver.1);
                    return;
                }
                Some(Some(data)) => SecretLookup::Found(data),
                Some(None) => SecretLookup::Missing,
            },
        };
        let problem = match build(object, secret) {
            Ok(built) => {
                let problem = match (&built.not_ready, self.read_secrets) {
                    (Some(reason), _) => Some(format!("not ready: {reason}")),
                    (None, true) => built
                        .open_to_anyone()
                        .map(|why| format!("anyone can trigger it: {why}")),
                    (None, false) => None,
                };
                catalog.insert(built);
                problem
            }
            Err(reason) => {
                catalog.remove(&receiver.0, &receiver.1);
                Some(format!("not served: {reason}"))
            }
        };
        match problem {
            Some(problem) if self.problems.get(receiver) != Some(&problem) => {
                let name = format!("{}/{}", receiver.0, receiver.1);
                tracing::warn!(receiver = %name, %problem, "Receiver cannot be served as it is");
                self.problems.insert(receiver.clone(), problem);
            }
            Some(_) => {}
            None => {
                self.problems.remove(receiver);
            }
        }
    }
}

/// Watches one Secret by name, telling `news` of its data at the first list and at every
/// change, until aborted.
async fn watch_secret(
    client: kube::Client,
    secret: Key,
    news: mpsc::UnboundedSender<(Key, SecretNews)>,
) {
    let api: Api<Secret> = Api::namespaced(client, &secret.0);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret.1));
    let mut events = watcher::watcher(api, config)
        .backoff(watch_backoff())
        .boxed();
    let (mut listed, mut answered) = (None, false);
    while let Some(event) = events.next().await {
        let said = match event {
            Ok(Event::Init) => {
                listed = None;
                continue;
            }
            Ok(Event::InitApply(object)) => {
                listed = Some(decode(object));
                continue;
            }
            Ok(Event::InitDone) => SecretNews::Data(listed.take()),
            Ok(Event::Apply(object)) => SecretNews::Data(Some(decode(object))),
            Ok(Event::Delete(_)) => SecretNews::Data(None),
            Err(error) => {
                let name = format!("{}/{}", secret.0, secret.1);
                tracing::warn!(secret = %name, %error, "cannot watch a Receiver's Secret; retrying");
                if answered {
                    continue;
                }
                SecretNews::Unreadable
            }
        };
        answered = true;
        if news.send((secret.clone(), said)).is_err() {
            return;
        }
    }
}

/// Watches the Secrets carrying the labels of `selector`, telling `news` of them all at each
/// list and of each change, until aborted.
async fn watch_labelled_secrets(
    api: Api<Secret>,
    selector: String,
    news: mpsc::UnboundedSender<LabelledNews>,
) {
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher::watcher(api, config)
        .backoff(watch_backoff())
        .boxed();
    let (mut listing, mut answered) = (HashMap::new(), false);
    let key_of = |secret: &Secret| {
        let meta = &secret.metadata;
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    };
    while let Some(event) = events.next().await {
        let said = match event {
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(secret)) => {
                listing.insert(key_of(&secret), decode(secret));
                continue;
            }
            Ok(Event::InitDone) => LabelledNews::Listed(std::mem::take(&mut listing)),
            Ok(Event::Apply(secret)) => {
                LabelledNews::Changed(key_of(&secret), Some(decode(secret)))
            }
            Ok(Event::Delete(secret)) => LabelledNews::Changed(key_of(&secret), None),
            Err(error) => {
                tracing::warn!(%error, %selector, "cannot watch the labelled Secrets; retrying");
                if answered {
                    continue;
                }
                LabelledNews::Unreadable
            }
        };
        answered = true;
        if news.send(said).is_err() {
            return;
        }
    }
}

/// The cluster's Receivers as they are now, for a one-off look (the CLI): the catalog, and why
/// each Receiver left out of it is. Secrets are read by name, each once.
pub async fn list(
    client: kube::Client,
    settings: &Settings,
) -> Result<(Catalog, BTreeMap<String, String>), kube::Error> {
    let api = receivers_api(client.clone(), settings);
    let objects = crate::within_deadline(api.list(&Default::default()))
        .await?
        .items;
    let mut secrets: HashMap<Key, Option<SecretData>> = HashMap::new();
    let mut catalog = Catalog::default();
    let mut left_out = BTreeMap::new();
    for object in objects {
        let secret = match (settings.read_secrets, secret_name(&object)) {
            (false, _) => None,
            (true, None) => Some(None),
            (true, Some(name)) => {
                let secret = (
                    object.metadata.namespace.clone().unwrap_or_default(),
                    name.to_owned(),
                );
                if !secrets.contains_key(&secret) {
                    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.0);
                    let data = crate::within_deadline(api.get_opt(&secret.1)).await?;
                    secrets.insert(secret.clone(), data.map(decode));
                }
                Some(secrets.get(&secret).and_then(Option::as_ref))
            }
        };
        let lookup = match secret {
            None => SecretLookup::NotRead,
            Some(Some(data)) => SecretLookup::Found(data),
            Some(None) => SecretLookup::Missing,
        };
        let (namespace, name) = key(&object);
        match build(&object, lookup) {
            Ok(receiver) => catalog.insert(receiver),
            Err(reason) => {
                left_out.insert(format!("{namespace}/{name}"), reason);
            }
        }
    }
    Ok((catalog, left_out))
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

/// `spec.secretRef.name`, when the Receiver names a Secret.
fn secret_name(object: &DynamicObject) -> Option<&str> {
    object.data["spec"]["secretRef"]["name"].as_str()
}

/// A Receiver object and its Secret made into the served receiver, or why it cannot be.
fn build(object: &DynamicObject, secret: SecretLookup<'_>) -> Result<Receiver, String> {
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let manifest: ReceiverManifest = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    manifest
        .into_receiver(secret)
        .map_err(|invalid| invalid.to_string())
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
