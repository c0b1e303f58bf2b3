//! ID tokens (`generic-oidc` and `gcr`): signature checked against the issuer's keys, found
//! through OIDC discovery and cached; expiry, audience and issuer checked; the claims returned.
//! Flux fetches discovery and keys on every request; here they are kept for an hour and fetched
//! again early only for a key id not seen before, at most once per `MIN_REFRESH` per key set.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
/// Deadline of one fetch from an identity provider.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest discovery document or key set read.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Signature algorithms an ID token may use: asymmetric only, so that a public key can never
/// be used as an HMAC secret.
const ALLOWED: &[Algorithm] = &[
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
    /// Issuer URL -> the `jwks_uri` of its discovery document.
    discovered: Mutex<HashMap<String, Cached<String>>>,
    /// Key set URL -> keys.
    keys: Mutex<HashMap<String, Cached<JwkSet>>>,
}

/// What a token must show besides a valid signature and expiry.
pub struct Expected<'a> {
    pub issuers: &'a [&'a str],
    pub audience: &'a str,
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
        })
    }

    /// The `iss` claim of a token, read before its signature is checked, to pick the provider
    /// whose keys will check it.
    pub fn unverified_issuer(token: &str) -> Result<String, Error> {
        let mut validation = Validation::default();
        validation.insecure_disable_signature_validation();
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        #[derive(serde::Deserialize)]
        struct Issuer {
            iss: Option<String>,
        }
        let data =
            jsonwebtoken::decode::<Issuer>(token, &DecodingKey::from_secret(&[]), &validation)
                .map_err(|e| Error::Unauthorized(format!("malformed bearer token: {e}")))?;
        data.claims
            .iss
            .ok_or_else(|| Error::Unauthorized("the token has no iss claim".into()))
    }

    /// The key set URL of an OIDC issuer, from its discovery document.
    pub async fn jwks_uri(&self, issuer: &str) -> Result<String, Error> {
        if let Some(uri) = fresh(&self.discovered, issuer) {
            return Ok(uri);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let discovery: Discovery = self.fetch(&url).await?;
        if discovery.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(Error::Unauthorized(format!(
                "the discovery document of {issuer} names another issuer, {}",
                discovery.issuer
            )));
        }
        store(&self.discovered, issuer, discovery.jwks_uri.clone());
        Ok(discovery.jwks_uri)
    }

    /// Checks `token`'s signature with the keys at `jwks_url`, its expiry, issuer and audience,
    /// and returns its claims.
    pub async fn verify(
        &self,
        token: &str,
        jwks_url: &str,
        expected: &Expected<'_>,
    ) -> Result<serde_json::Value, Error> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Error::Unauthorized(format!("malformed bearer token: {e}")))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(Error::Unauthorized(format!(
                "token algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = self.key(jwks_url, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[expected.audience]);
        validation.set_issuer(expected.issuers);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| Error::Unauthorized(format!("invalid token: {e}")))
    }

    /// The key `kid` of the set at `url` (the only key when the token names none), fetching
    /// the set when it is not cached, stale, or lacks `kid` and was not fetched just now.
    async fn key(&self, url: &str, kid: Option<&str>) -> Result<DecodingKey, Error> {
        let cached = self.keys.lock().ok().and_then(|keys| {
            keys.get(url)
                .map(|c| (c.value.clone(), c.fetched.elapsed()))
        });
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let jwk = match cached {
            Some((set, age)) if age < CACHE_TTL && (find(&set).is_some() || age < MIN_REFRESH) => {
                find(&set)
            }
            _ => {
                let set: JwkSet = self.fetch(url).await?;
                let jwk = find(&set);
                store(&self.keys, url, set);
                jwk
            }
        };
        let jwk = jwk.ok_or_else(|| {
            Error::Unauthorized(format!(
                "no key {} in the issuer's key set",
                kid.unwrap_or("(unnamed)")
            ))
        })?;
        DecodingKey::from_jwk(&jwk)
            .map_err(|e| Error::Unauthorized(format!("unusable key in the issuer's key set: {e}")))
    }

    /// GETs a JSON document from an identity provider. Failing to reach it is the provider's
    /// trouble, not the sender's: 503, so the sender retries.
    async fn fetch<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Error> {
        let unavailable = |e: String| Error::Unavailable(format!("identity provider {url}: {e}"));
        let uri: hyper::Uri = url.parse().map_err(|e| unavailable(format!("{e}")))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.http.get(uri))
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("answered {}", response.status())));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_DOCUMENT).collect(),
        )
        .await
        .map_err(|_| unavailable("timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| unavailable(format!("bad document: {e}")))
    }
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
