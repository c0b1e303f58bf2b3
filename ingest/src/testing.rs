//! The accept path in process, for the endpoint's tests, a property test and `cargo fuzz`: an
//! in-memory store, the proof each type's sender adds, and [`AcceptPath`], which turns any bytes
//! into a request to the real endpoint and checks the answer against what ingest promises.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use fluxgate_shared::contract::{self, DeliveryMeta};
use fluxgate_shared::receivers::{Catalog, ReceiverType, SharedCatalog};
use hmac::{EagerHash, KeyInit, Mac};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};

use crate::error::Error;
use crate::http::{AppState, Hooks};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::publish::{Delivery, Store, Stored, Storing};

/// Stores in memory as JetStream would: a `msg_id` already held is a duplicate.
#[derive(Default)]
pub struct MemoryStore {
    /// Refuse to store, as JetStream does without quorum.
    pub down: AtomicBool,
    pub stored: Mutex<Vec<Delivery>>,
}

impl MemoryStore {
    /// The deliveries stored so far; a test that panicked while holding them left them whole.
    pub fn deliveries(&self) -> std::sync::MutexGuard<'_, Vec<Delivery>> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn is_ready(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    fn publish(&self, delivery: Delivery) -> Storing<'_> {
        Box::pin(async move {
            if !self.is_ready() {
                return Err(Error::Unavailable("the test store is down".into()));
            }
            let mut stored = self.deliveries();
            if stored.iter().any(|d| d.meta.key() == delivery.meta.key()) {
                return Ok(Stored {
                    sequence: 0,
                    duplicate: true,
                });
            }
            stored.push(delivery);
            Ok(Stored {
                sequence: stored.len() as u64,
                duplicate: false,
            })
        })
    }
}

/// The hex HMAC of `body` under `key`.
pub fn hmac_hex<D: EagerHash>(key: &[u8], body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<D> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `sha256=<hex HMAC>`, as GitHub, Bitbucket and generic-hmac senders sign.
pub fn sha256_signature(key: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hmac_hex::<sha2::Sha256>(key, body))
}

/// The headers with which a sender of `kind` proves `body` with `token`: a signature or the
/// token itself. None for the types the hook path alone authenticates, nor for the ID-token
/// types, whose proof an issuer signs.
pub fn proof(kind: ReceiverType, token: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let key = token.as_bytes();
    match kind {
        ReceiverType::Github => vec![("x-hub-signature-256", sha256_signature(key, body))],
        ReceiverType::GenericHmac => vec![("x-signature", sha256_signature(key, body))],
        ReceiverType::Bitbucket => vec![("x-hub-signature", sha256_signature(key, body))],
        ReceiverType::Gitlab => vec![("x-gitlab-token", token.to_owned())],
        ReceiverType::Harbor => vec![("authorization", token.to_owned())],
        ReceiverType::Nexus => vec![(
            "x-nexus-webhook-signature",
            hmac_hex::<sha1::Sha1>(key, body),
        )],
        ReceiverType::Generic
        | ReceiverType::GenericOidc
        | ReceiverType::Dockerhub
        | ReceiverType::Quay
        | ReceiverType::Gcr
        | ReceiverType::Acr
        | ReceiverType::Cdevents => vec![],
    }
}

const NS: &str = "fuzz";
const TOKEN: &str = "fuzz-token";
/// Small, so that inputs of a fuzzer's usual sizes reach the limit.
const MAX_BODY: usize = 1024;
const BODIES: usize = 4;

/// Receivers beyond one of each type, named after what sets them apart.
const EXTRA_RECEIVERS: [(&str, &str); 2] = [
    (
        "filtered",
        "  type: generic\n  secretRef:\n    name: token\n  resourceFilter: req.action == 'deploy'\n",
    ),
    (
        "suspended",
        "  type: generic\n  secretRef:\n    name: token\n  suspend: true\n",
    ),
];

/// Flags of an input's second byte.
pub mod flag {
    /// Add the type's [`proof`](super::proof) of the body, replacing the input's own.
    pub const PROVE: u8 = 1;
    /// Send `GET` instead of `POST`.
    pub const GET: u8 = 2;
    /// The first header line is the request's path, instead of the chosen receiver's.
    pub const RAW_PATH: u8 = 4;
}

/// The answer to one input.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub stored: bool,
}

/// The real endpoint over an in-memory store, serving one receiver of every type (the github one
/// accepts only `push` events) and those of [`EXTRA_RECEIVERS`], all in namespace `fuzz` with
/// the token `fuzz-token`. Its ID-token issuers are on a closed port.
///
/// An input is: a byte choosing the receiver (the one past the last is a path none has), a
/// byte of [`flag`]s, header lines `name: value` up to an empty line, then the body. Without an
/// empty line it is all body.
pub struct AcceptPath {
    runtime: tokio::runtime::Runtime,
    hooks: Hooks,
    metrics: Arc<Metrics>,
    store: Arc<MemoryStore>,
    /// Each receiver's type (`None` for the extra generic ones) and hook path.
    receivers: Vec<(Option<ReceiverType>, String)>,
    /// The subjects the receivers' deliveries may go to.
    subjects: Vec<String>,
}

impl Default for AcceptPath {
    fn default() -> Self {
        Self::new()
    }
}

impl AcceptPath {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let catalog = Catalog::parse(&manifests()).expect("the harness's receivers load");
        let named = |name: &str| {
            catalog
                .by_name(NS, name)
                .expect("every manifest is served")
                .hook_path
                .clone()
        };
        let mut receivers: Vec<_> = ReceiverType::ALL
            .iter()
            .map(|kind| (Some(*kind), named(kind.as_str())))
            .collect();
        receivers.extend(EXTRA_RECEIVERS.iter().map(|(name, _)| (None, named(name))));
        let subjects = catalog
            .receivers()
            .map(|r| contract::delivery_subject(&r.namespace, &r.name))
            .collect();
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(MemoryStore::default());
        let (_, catalog_synced) = watch::channel(true);
        let state = Arc::new(AppState {
            catalog: SharedCatalog::new(catalog),
            catalog_synced,
            store: store.clone(),
            identity: Identity::new("http://127.0.0.1:9/certs".into()).expect("identity"),
            metrics: metrics.clone(),
            max_body_bytes: MAX_BODY,
            body_timeout: Duration::from_secs(10),
            bodies: Arc::new(Semaphore::new(BODIES)),
        });
        Self {
            runtime,
            hooks: Hooks::new(state),
            metrics,
            store,
            receivers,
            subjects,
        }
    }

    /// Sends the request `input` stands for and checks what ingest promises of any request: an
    /// answer of a known status with a JSON body that says why, counted once, and a delivery
    /// stored exactly when the answer is 202 -- on its receiver's subject, with header-safe
    /// headers, the body as sent, and metadata that reads back as the answered delivery id.
    /// `Ok(None)` when the input is no request HTTP can carry; `Err` names the broken promise.
    pub fn check(&self, input: &[u8]) -> Result<Option<Answer>, String> {
        let Some((request, body)) = self.request(input) else {
            return Ok(None);
        };
        let counted = self.requests_counted();
        let (status, json) = self.runtime.block_on(async {
            let response = self.hooks.answer(request).await;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("the answer's body: {e}"))?
                .to_bytes();
            let json: Value = serde_json::from_slice(&bytes)
                .map_err(|_| format!("{status}: the answer is not JSON: {bytes:?}"))?;
            Ok::<_, String>((status, json))
        })?;
        if self.requests_counted() != counted + 1 {
            return Err(format!("{status} {json}: not counted once"));
        }
        let stored = std::mem::take(&mut *self.store.deliveries());
        match (status, stored.as_slice()) {
            (202, [delivery]) => self.check_stored(&json, delivery, &body)?,
            (202, _) => return Err(format!("202 {json} with {} stored", stored.len())),
            (_, [_, ..]) => return Err(format!("{status} {json}, yet a delivery was stored")),
            (200, []) if json["ignored"] == true && json["reason"].is_string() => {}
            (400 | 401 | 404 | 405 | 408 | 413 | 503, []) if has_reason(&json) => {}
            _ => return Err(format!("unexpected answer {status} {json}")),
        }
        Ok(Some(Answer {
            status,
            stored: status == 202,
        }))
    }

    /// The request an input stands for, and its body; `None` when its path is no URI.
    fn request(&self, input: &[u8]) -> Option<(Request<Body>, Vec<u8>)> {
        let (&target, rest) = input.split_first().unwrap_or((&0, &[]));
        let (&flags, rest) = rest.split_first().unwrap_or((&0, &[]));
        let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
            Some(end) => (&rest[..end], &rest[end + 2..]),
            None => (&[][..], rest),
        };
        let mut lines = head.split(|&b| b == b'\n');
        let chosen = self
            .receivers
            .get(usize::from(target) % (self.receivers.len() + 1));
        let path = if flags & flag::RAW_PATH != 0 {
            String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned()
        } else {
            chosen.map_or_else(|| "/hook/0000".to_owned(), |(_, path)| path.clone())
        };
        let mut request = Request::new(Body::from(body.to_vec()));
        *request.uri_mut() = path.parse::<Uri>().ok()?;
        if flags & flag::GET == 0 {
            *request.method_mut() = Method::POST;
        }
        let headers = request.headers_mut();
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        if flags & flag::PROVE != 0
            && let Some((Some(kind), _)) = chosen
        {
            for (name, value) in proof(*kind, TOKEN, body) {
                let value = HeaderValue::from_str(&value).expect("proofs are printable");
                headers.insert(name, value);
            }
        }
        Some((request, body.to_vec()))
    }

    fn check_stored(&self, json: &Value, delivery: &Delivery, sent: &[u8]) -> Result<(), String> {
        let Some(id) = json["delivery"].as_str() else {
            return Err(format!("202 {json} names no delivery"));
        };
        if json["duplicate"] != false {
            return Err(format!("202 {json}: a first delivery is no duplicate"));
        }
        let subject = delivery.meta.subject();
        if !self.subjects.contains(&subject) {
            return Err(format!("stored on {subject:?}"));
        }
        if delivery.body != sent {
            return Err("the stored body is not the body sent".into());
        }
        let headers = delivery.headers();
        for (name, values) in headers.iter() {
            for value in values {
                if value.as_str().contains(['\r', '\n', '\0']) {
                    return Err(format!("stored header {name}: {:?}", value.as_str()));
                }
            }
        }
        let meta = DeliveryMeta::read(&subject, Some(&headers))
            .map_err(|e| format!("the stored delivery does not read back: {e}"))?;
        let msg_id = delivery.meta.key();
        if meta.id != id || meta.key() != msg_id {
            return Err(format!(
                "answered {id:?} but stored {:?} as {msg_id:?}",
                meta.id
            ));
        }
        if !msg_id.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(format!("message id {msg_id:?}"));
        }
        Ok(())
    }

    /// Requests counted by `fluxgate_ingest_requests_total`, whatever their labels.
    fn requests_counted(&self) -> u64 {
        (self.metrics.encode().lines())
            .filter(|line| line.starts_with("fluxgate_ingest_requests_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// A non-2xx body: `{"error": "<why>"}`.
fn has_reason(json: &Value) -> bool {
    json["error"].as_str().is_some_and(|why| !why.is_empty())
}

/// The token Secret and the receivers [`AcceptPath`] serves.
fn manifests() -> String {
    let receiver = |name: &str, spec: &str| {
        format!(
            "apiVersion: notification.toolkit.fluxcd.io/v1\nkind: Receiver\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n{spec}  resources:\n    - kind: GitRepository\n      name: app\n"
        )
    };
    let mut documents = vec![format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\n  namespace: {NS}\nstringData:\n  token: {TOKEN}\n  email: fuzz@example.com\n  audience: fuzz\n"
    )];
    for kind in ReceiverType::ALL {
        let spec = match kind {
            ReceiverType::GenericOidc => {
                "  type: generic-oidc\n  oidcProviders:\n    - issuerURL: http://127.0.0.1:9\n"
                    .to_owned()
            }
            ReceiverType::Github => {
                "  type: github\n  secretRef:\n    name: token\n  events: [push]\n".to_owned()
            }
            kind => format!("  type: {kind}\n  secretRef:\n    name: token\n"),
        };
        documents.push(receiver(kind.as_str(), &spec));
    }
    documents.extend(EXTRA_RECEIVERS.map(|(name, spec)| receiver(name, spec)));
    documents.join("---\n")
}

#[cfg(test)]
mod tests;
