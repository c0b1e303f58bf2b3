//! A local OpenID Connect issuer for tests: serves discovery (RS256 only) and its key set over
//! HTTP -- a decoy public key first, then the test key -- and mints ID tokens with the fixed test
//! key (`tests/fixtures`), so `generic-oidc` and `gcr` receivers are verified exactly as against
//! a real provider. It counts key-set fetches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const KEY_PEM: &[u8] = include_bytes!("../fixtures/oidc-test-key.pem");
const JWK: &str = include_str!("../fixtures/oidc-test-jwk.json");
/// Another key of the set, which signs nothing: a token without `kid` must be tried beyond it.
const DECOY_JWK: &str = include_str!("../fixtures/oidc-decoy-jwk.json");
/// The `kid` of the test key.
pub const KEY_ID: &str = "fluxgate-test";

struct Shared {
    issuer: String,
    key_fetches: AtomicUsize,
}

/// A running issuer on `127.0.0.1`, serving until dropped.
pub struct Issuer {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind issuer");
        let issuer = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared {
            issuer,
            key_fetches: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, task }
    }

    /// The issuer URL (`iss`), also the base of its discovery document.
    pub fn url(&self) -> &str {
        &self.shared.issuer
    }

    /// Where its key set is: what `--google-certs-url` points at for gcr tests.
    pub fn keys_url(&self) -> String {
        format!("{}/keys", self.shared.issuer)
    }

    /// How many times the key set was fetched.
    pub fn key_fetches(&self) -> usize {
        self.shared.key_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a token from this issuer for `audience`, valid for ten minutes.
    pub fn claims(&self, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({"iss": self.url(), "aud": audience, "sub": "tester", "iat": now, "exp": now + 600})
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An RS256 token with `claims`, signed with the test key (`kid` as given).
pub fn sign(claims: &Value, kid: &str) -> String {
    sign_with(claims, Some(kid), Algorithm::RS256)
}

/// A token with `claims`, signed with the test key by `alg` (an RSA one), naming `kid` if any.
pub fn sign_with(claims: &Value, kid: Option<&str>, alg: Algorithm) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(KEY_PEM).expect("test key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}/keys", shared.issuer),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn keys(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.key_fetches.fetch_add(1, Ordering::SeqCst);
    let key = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    Json(json!({ "keys": [key(DECOY_JWK), key(JWK)] }))
}
