//! The catalog: every served receiver, found by hook digest (ingest) or by name (the
//! dispatcher), and the one currently served, swapped atomically on reload.

use std::sync::Arc;

use arc_swap::ArcSwap;
use imbl::HashMap;

use super::Receiver;

/// All served receivers, indexed by hook digest (ingest) and by namespace and name
/// (dispatcher). The maps are persistent: a copy costs O(1) and shares all but what is changed
/// after, so one Receiver's change makes a new catalog in O(log n) rather than rebuilding it.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    by_digest: HashMap<String, Arc<Receiver>>,
    by_name: HashMap<(String, String), Arc<Receiver>>,
    not_ready: usize,
}

impl Catalog {
    /// The receiver whose hook path is `/hook/<digest>`.
    pub fn get(&self, digest: &str) -> Option<&Arc<Receiver>> {
        self.by_digest.get(digest)
    }

    /// The receiver `namespace/name`.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Receiver>> {
        self.by_name.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn receivers(&self) -> impl Iterator<Item = &Arc<Receiver>> {
        self.by_name.values()
    }

    /// How many receivers cannot serve (see [`Receiver::not_ready`]).
    pub fn not_ready(&self) -> usize {
        self.not_ready
    }

    /// Indexes receivers by hook digest and by name.
    pub fn new(receivers: impl IntoIterator<Item = Receiver>) -> Self {
        let mut catalog = Self::default();
        for receiver in receivers {
            catalog.insert(receiver);
        }
        catalog
    }

    /// Serves `receiver` in place of the one of the same namespace and name, whose hook path
    /// goes with it.
    pub fn insert(&mut self, receiver: Receiver) {
        self.remove(&receiver.namespace, &receiver.name);
        let receiver = Arc::new(receiver);
        self.not_ready += usize::from(receiver.not_ready.is_some());
        self.by_digest
            .insert(digest_of(&receiver), receiver.clone());
        let name = (receiver.namespace.clone(), receiver.name.clone());
        self.by_name.insert(name, receiver);
    }

    /// Stops serving the receiver `namespace/name`.
    pub fn remove(&mut self, namespace: &str, name: &str) {
        let name = (namespace.to_owned(), name.to_owned());
        if let Some(gone) = self.by_name.remove(&name) {
            self.by_digest.remove(&digest_of(&gone));
            self.not_ready -= usize::from(gone.not_ready.is_some());
        }
    }
}

fn digest_of(receiver: &Receiver) -> String {
    receiver.hook_path.trim_start_matches("/hook/").to_owned()
}

/// The catalog currently served: swapped atomically on reload, read without locks.
#[derive(Debug, Clone)]
pub struct SharedCatalog(Arc<ArcSwap<Catalog>>);

impl SharedCatalog {
    pub fn new(catalog: Catalog) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(catalog)))
    }

    pub fn current(&self) -> Arc<Catalog> {
        self.0.load_full()
    }

    pub fn replace(&self, catalog: Catalog) {
        self.0.store(Arc::new(catalog));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::hook_digest;

    /// Receiver `name` of namespace `ns`, whose Secret holds `token`.
    fn receiver(name: &str, token: &str) -> Receiver {
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: ns\nstringData:\n  token: {token}\n---\napiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: {name}\n  namespace: ns\nspec:\n  type: generic\n  secretRef:\n    name: s\n  resources:\n    - kind: GitRepository\n      name: app\n"
        );
        let catalog = Catalog::parse(&yaml).expect("manifests");
        Receiver::clone(catalog.by_name("ns", name).expect("parsed"))
    }

    #[test]
    fn a_receiver_replaced_moves_its_hook_path_and_the_copy_before_keeps_its_own() {
        let mut catalog = Catalog::new([receiver("a", "one"), receiver("b", "two")]);
        let before = catalog.clone();
        catalog.insert(receiver("a", "rotated"));
        let (old, new) = (
            hook_digest(b"one", "a", "ns"),
            hook_digest(b"rotated", "a", "ns"),
        );
        assert!(catalog.get(&old).is_none());
        assert_eq!(catalog.get(&new).map(|r| r.name.as_str()), Some("a"));
        assert_eq!(catalog.len(), 2);
        assert!(before.get(&old).is_some() && before.get(&new).is_none());

        catalog.remove("ns", "b");
        assert!(catalog.by_name("ns", "b").is_none());
        assert!(catalog.get(&hook_digest(b"two", "b", "ns")).is_none());
        assert_eq!((catalog.len(), before.len()), (1, 2));
        catalog.remove("ns", "nothing");
        assert_eq!(catalog.len(), 1);
    }
}
