//! ID tokens (`generic-oidc` and `gcr`), checked as Flux's OIDC library (go-oidc) checks them:
//! the signature with the issuer's keys (found through OIDC discovery; a token without `kid`
//! tries every key), by an algorithm the discovery document lists, `exp` without leeway, `nbf`
//! with five minutes, the issuer and the audience; the claims returned. Flux fetches discovery
//! and keys on every request; here they are kept for an hour and fetched again early only when
//! no cached key verifies the token, at most once per `MIN_REFRESH` per key set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::error::Error;

/// How long discovery documents and key sets are trusted.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// The shortest time between two fetches of one key set for an unknown key id.
const MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long a failed key-set fetch is answered from memory instead of fetched again.
const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Deadline of one fetch from an identity provider.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest discovery document or key set read.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// How far in the future a token's `nbf` may be, as go-oidc allows for clock skew.
const NOT_BEFORE_LEEWAY_SECS: f64 = 300.0;

/// Signature algorithms an ID token may use, go-oidc's (but ES512, which `jsonwebtoken` lacks):
/// asymmetric only, so that a public key can never be used as an HMAC secret.
pub const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

struct Cached<T> {
    value: T,
    fetched: Instant,
}

/// Fetches and caches what verifying ID tokens needs from identity providers.
pub struct Identity {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Google's ID-token key set (gcr), configurable so tests can use a local issuer.
    pub google_certs_url: String,
    /// Issuer URL -> what its discovery document says.
    discovered: Mutex<HashMap<String, Cached<Discovered>>>,
    /// Key set URL -> keys.
    keys: Mutex<HashMap<String, Cached<JwkSet>>>,
    /// Key set URL -> held while that set is fetched, so that a burst of tokens makes one fetch.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Key set URL -> why its last fetch failed, answered for `FAILURE_TTL` without fetching.
    failed: Mutex<HashMap<String, Cached<String>>>,
}

/// What an OIDC issuer's discovery document says about its ID tokens.
#[derive(Clone)]
pub struct Discovered {
    pub jwks_uri: String,
    /// The signing algorithms it lists that are allowed; RS256 when it lists none, as in go-oidc.
    pub algorithms: Vec<Algorithm>,
}

/// What a token must show besides a valid signature and expiry.
pub struct Expected<'a> {
    pub issuers: &'a [&'a str],
    pub audience: &'a str,
    pub algorithms: &'a [Algorithm],
}

impl Identity {
    pub fn new(google_certs_url: String) -> Result<Self, Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| Error::Unavailable(format!("cannot load the system's CA roots: {e}")))?
            // Plain http is allowed for issuers inside the cluster (and local test issuers).
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            google_certs_url,
            discovered: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        })
    }

    /// The `iss` claim of a token, read before its signature is checked, to pick the provider
    /// whose keys will check it. Only the payload is read, as Flux reads it.
    pub fn unverified_issuer(token: &str) -> Result<String, Error> {
        let malformed = |why: String| Error::Unauthorized(format!("malformed bearer token: {why}"));
        let parts: Vec<&str> = token.split('.').collect();
        let [_, payload, _] = parts.as_slice() else {
            return Err(malformed("not a JWT".into()));
        };
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|e| malformed(format!("payload is not base64url: {e}")))?;
        #[derive(serde::Deserialize)]
        struct Issuer {
            #[serde(default)]
            iss: String,
        }
        let claims: Issuer = serde_json::from_slice(&payload)
            .map_err(|e| malformed(format!("payload is not JSON claims: {e}")))?;
        if claims.iss.is_empty() {
            return Err(Error::Unauthorized("the token has no iss claim".into()));
        }
        Ok(claims.iss)
    }

    /// What the discovery document of an OIDC issuer says.
    pub async fn discover(&self, issuer: &str) -> Result<Discovered, Error> {
        if let Some(discovered) = fresh(&self.discovered, issuer) {
            return Ok(discovered);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
            #[serde(default)]
            id_token_signing_alg_values_supported: Vec<String>,
        }
        let discovery: Discovery = self.fetch(&url).await?;
        if discovery.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(Error::Unauthorized(format!(
                "the discovery document of {issuer} names another issuer, {}",
                discovery.issuer
            )));
        }
        let mut algorithms: Vec<Algorithm> = discovery
            .id_token_signing_alg_values_supported
            .iter()
            .filter_map(|name| name.parse().ok())
            .filter(|alg| ALLOWED.contains(alg))
            .collect();
        if algorithms.is_empty() {
            algorithms.push(Algorithm::RS256);
        }
        let discovered = Discovered {
            jwks_uri: discovery.jwks_uri,
            algorithms,
        };
        store(&self.discovered, issuer, discovered.clone());
        Ok(discovered)
    }

    /// Checks `token`'s signature with the keys at `jwks_url`, its expiry, issuer and audience,
    /// and returns its claims. When no cached key verifies it, the key set is fetched again
    /// (keys rotate) unless it was fetched less than `MIN_REFRESH` ago.
    pub async fn verify(
        &self,
        token: &str,
        jwks_url: &str,
        expected: &Expected<'_>,
    ) -> Result<serde_json::Value, Error> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Error::Unauthorized(format!("malformed bearer token: {e}")))?;
        if !expected.algorithms.contains(&header.alg) {
            return Err(Error::Unauthorized(format!(
                "token algorithm {:?} is not accepted: the issuer signs with {:?}",
                header.alg, expected.algorithms
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.set_audience(&[expected.audience]);
        validation.set_issuer(expected.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let kid = header.kid.as_deref();
        let cached = self
            .keys
            .lock()
            .ok()
            .and_then(|keys| keys.get(jwks_url).map(|c| (c.value.clone(), c.fetched)));
        let claims = match cached {
            Some((set, fetched)) if fetched.elapsed() < CACHE_TTL => {
                match signed_by(&set, kid, token, &validation) {
                    Err(Unverified::NoKey(_)) if fetched.elapsed() >= MIN_REFRESH => {
                        let set = self.fetch_keys(jwks_url, Some(fetched)).await?;
                        signed_by(&set, kid, token, &validation)
                    }
                    verified => verified,
                }
            }
            stale => {
                let set = self
                    .fetch_keys(jwks_url, stale.map(|(_, fetched)| fetched))
                    .await?;
                signed_by(&set, kid, token, &validation)
            }
        }
        .map_err(|e| Error::Unauthorized(e.to_string()))?;
        not_before(&claims)?;
        Ok(claims)
    }

    /// The key set at `url`, fetched once however many requests ask at the same time: each
    /// waits for the one fetch under way and takes its result. `seen` is when the set the
    /// caller found stale was fetched; a newer one in the cache is returned as it is. A failed
    /// fetch is answered from memory for `FAILURE_TTL`, so a burst of tokens does not become a
    /// burst of requests to an issuer that is down.
    async fn fetch_keys(&self, url: &str, seen: Option<Instant>) -> Result<JwkSet, Error> {
        let lock = match self.fetching.lock() {
            Ok(mut fetching) => fetching.entry(url.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let _fetching = lock.lock().await;
        let newer = self.keys.lock().ok().and_then(|keys| {
            keys.get(url)
                .filter(|c| Some(c.fetched) != seen && c.fetched.elapsed() < CACHE_TTL)
                .map(|c| c.value.clone())
        });
        if let Some(set) = newer {
            return Ok(set);
        }
        let failure = self.failed.lock().ok().and_then(|failed| {
            failed
                .get(url)
                .filter(|c| c.fetched.elapsed() < FAILURE_TTL)
                .map(|c| c.value.clone())
        });
        if let Some(reason) = failure {
            return Err(Error::Unavailable(reason));
        }
        match self.fetch::<JwkSet>(url).await {
            Ok(set) => {
                store(&self.keys, url, set.clone());
                Ok(set)
            }
            Err(error) => {
                store(&self.failed, url, error.to_string());
                Err(error)
            }
        }
    }

    /// GETs a JSON document from an identity provider. Failing to reach it is the provider's
    /// trouble, not the sender's: 503, so the sender retries.
    /// The sender hears only that the issuer is unavailable; where it is and what failed
    /// (possibly an address inside the cluster) goes to the log.
    async fn fetch<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Error> {
        self.fetch_document(url).await.map_err(|reason| {
            tracing::warn!(url, %reason, "cannot fetch from an identity provider");
            Error::Unavailable("the token's issuer cannot be reached".into())
        })
    }

    async fn fetch_document<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.http.get(uri))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_DOCUMENT).collect(),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("bad document: {e}"))
    }
}

/// Why a token was not verified.
#[derive(Debug, thiserror::Error)]
enum Unverified {
    /// No key of the set verifies its signature: the set may have rotated.
    #[error("{0}")]
    NoKey(String),
    /// A key verified the signature, but the claims fail.
    #[error("invalid token: {0}")]
    Claims(jsonwebtoken::errors::Error),
}

/// The token's claims, verified with the key of the set its `kid` names, or with any key of the
/// set when it names none, as go-oidc does.
fn signed_by(
    set: &JwkSet,
    kid: Option<&str>,
    token: &str,
    validation: &Validation,
) -> Result<serde_json::Value, Unverified> {
    use jsonwebtoken::errors::ErrorKind;
    let candidates = set
        .keys
        .iter()
        .filter(|jwk| kid.is_none() || jwk.common.key_id.as_deref() == kid);
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<serde_json::Value>(token, &key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::Crypto(_) => continue,
                _ => return Err(Unverified::Claims(e)),
            },
        }
    }
    Err(Unverified::NoKey(match kid {
        Some(kid) => format!("no key {kid} of the issuer's key set verifies the token"),
        None => "no key of the issuer's key set verifies the token".into(),
    }))
}

/// `nbf` may be up to five minutes ahead (clock skew), as go-oidc allows.
fn not_before(claims: &serde_json::Value) -> Result<(), Error> {
    let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_f64) else {
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if nbf > now + NOT_BEFORE_LEEWAY_SECS {
        return Err(Error::Unauthorized(
            "invalid token: not valid yet (nbf)".into(),
        ));
    }
    Ok(())
}

fn fresh<T: Clone>(cache: &Mutex<HashMap<String, Cached<T>>>, key: &str) -> Option<T> {
    let cache = cache.lock().ok()?;
    cache
        .get(key)
        .filter(|c| c.fetched.elapsed() < CACHE_TTL)
        .map(|c| c.value.clone())
}

fn store<T>(cache: &Mutex<HashMap<String, Cached<T>>>, key: &str, value: T) {
    if let Ok(mut cache) = cache.lock() {
        cache.insert(
            key.to_owned(),
            Cached {
                value,
                fetched: Instant::now(),
            },
        );
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, Error> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthorized("missing Authorization header".into()))?
        .to_str()
        .map_err(|_| Error::Unauthorized("malformed Authorization header".into()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Error::Unauthorized(
            "malformed Authorization header: expected 'Bearer <token>'".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// notification-controller's `TestUnverifiedTokenIssuer`: only the payload is read.
    #[test]
    fn the_issuer_is_read_from_the_payload_alone() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"iss": "https://example.com"}).to_string());
        let token = format!("header.{payload}.sig");
        assert_eq!(
            Identity::unverified_issuer(&token).map_err(|e| e.to_string()),
            Ok("https://example.com".to_owned())
        );
        assert!(Identity::unverified_issuer("not-a-jwt").is_err());
        let no_issuer = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{}");
        assert!(Identity::unverified_issuer(&format!("h.{no_issuer}.s")).is_err());
    }

    #[test]
    fn not_before_allows_five_minutes_of_clock_skew() {
        let now = chrono::Utc::now().timestamp();
        assert!(not_before(&json!({})).is_ok());
        assert!(not_before(&json!({"nbf": now + 240})).is_ok());
        assert!(not_before(&json!({"nbf": now + 360})).is_err());
    }
}
