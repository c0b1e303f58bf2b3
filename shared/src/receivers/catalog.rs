//! The catalog: every served receiver, found by hook digest (ingest) or by name (the
//! dispatcher), and the one currently served, swapped atomically on reload.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Receiver;

/// All served receivers, indexed by hook digest (ingest) and by namespace and name (dispatcher),
/// both O(1).
#[derive(Debug, Default)]
pub struct Catalog {
    by_digest: HashMap<String, Arc<Receiver>>,
    by_name: HashMap<(String, String), Arc<Receiver>>,
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
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn receivers(&self) -> impl Iterator<Item = &Arc<Receiver>> {
        self.by_digest.values()
    }

    /// How many receivers cannot serve (see [`Receiver::not_ready`]).
    pub fn not_ready(&self) -> usize {
        self.receivers().filter(|r| r.not_ready.is_some()).count()
    }

    /// Indexes receivers by hook digest and by name.
    pub fn new(receivers: impl IntoIterator<Item = Receiver>) -> Self {
        let mut catalog = Self::default();
        for receiver in receivers {
            let receiver = Arc::new(receiver);
            let digest = receiver.hook_path.trim_start_matches("/hook/").to_owned();
            catalog.by_digest.insert(digest, receiver.clone());
            catalog.by_name.insert(
                (receiver.namespace.clone(), receiver.name.clone()),
                receiver,
            );
        }
        catalog
    }
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
