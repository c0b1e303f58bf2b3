//! `gcr`: a Pub/Sub push with a Google-signed ID token whose audience is the Secret's
//! `audience`, issuer Google's, and `email` the Secret's with `email_verified`; the registry
//! event is unwrapped from the message, whose id is the delivery id.

use axum::http::HeaderMap;
use fluxgate_shared::pubsub;
use fluxgate_shared::receivers::Receiver;

use super::Verified;
use crate::error::Error;
use crate::identity::{self, Expected, Identity};

/// The issuers of Google ID tokens.
const GOOGLE_ISSUERS: &[&str] = &["accounts.google.com", "https://accounts.google.com"];

/// The Pub/Sub push message of an authenticated request: its `messageId` is the delivery id.
pub fn from_body(body: &[u8]) -> Result<Verified, Error> {
    let message = pubsub::parse(body).map_err(Error::BadRequest)?;
    Ok(Verified {
        event: None,
        delivery_id: message.message_id,
        claims: None,
    })
}

/// The bearer token: Google's, for the receiver's audience, of its service account's verified
/// email.
pub async fn authenticate(
    identity: &Identity,
    receiver: &Receiver,
    headers: &HeaderMap,
) -> Result<(), Error> {
    // The catalog marks a gcr receiver without these not ready, so they are here.
    let secret = |key: &str| {
        receiver
            .secret_data
            .get(key)
            .map(|v| String::from_utf8_lossy(v.expose()).into_owned())
            .unwrap_or_default()
    };
    let (audience, email) = (secret("audience"), secret("email"));
    let token = identity::bearer(headers)?;
    let expected = Expected {
        issuers: GOOGLE_ISSUERS,
        audience: &audience,
        algorithms: identity::ALLOWED,
    };
    let claims = identity
        .verify(token, &identity.google_certs_url, &expected)
        .await?;
    check_email(&claims, &email)
}

fn check_email(claims: &serde_json::Value, email: &str) -> Result<(), Error> {
    if claims["email"].as_str() != Some(email) {
        return Err(Error::Unauthorized(
            "the token's email is not the receiver's".into(),
        ));
    }
    if claims["email_verified"] != serde_json::Value::Bool(true) {
        return Err(Error::Unauthorized(
            "the token's email is not verified".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_must_match_and_be_verified() {
        let ok = json!({"email": "push@p.iam.gserviceaccount.com", "email_verified": true});
        assert!(check_email(&ok, "push@p.iam.gserviceaccount.com").is_ok());
        assert!(check_email(&ok, "other@p.iam.gserviceaccount.com").is_err());
        let unverified =
            json!({"email": "push@p.iam.gserviceaccount.com", "email_verified": false});
        assert!(check_email(&unverified, "push@p.iam.gserviceaccount.com").is_err());
        assert!(check_email(&json!({}), "").is_err());
    }
}
