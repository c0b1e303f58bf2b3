//! `generic-oidc`: a bearer ID token from one of the receiver's OIDC providers (chosen by the
//! token's `iss`), then the provider's CEL `variables` in order and its `validations`, every
//! failing message joined with "; " into the 401, as Flux does.

use std::collections::HashMap;

use axum::http::HeaderMap;
use fluxgate_shared::catalog::{OidcProvider, Receiver};
use fluxgate_shared::filter::{self, Value};

use super::{Verified, idempotency_key};
use crate::error::Error;
use crate::identity::{self, Expected, Identity};

pub async fn verify(
    identity: &Identity,
    receiver: &Receiver,
    headers: &HeaderMap,
) -> Result<Verified, Error> {
    let token = identity::bearer(headers)?;
    let issuer = Identity::unverified_issuer(token)?;
    let mut first_error = None;
    for provider in receiver
        .oidc_providers
        .iter()
        .filter(|p| p.issuer_url == issuer)
    {
        match check(identity, provider, token).await {
            Ok(claims) => {
                return Ok(Verified {
                    event: None,
                    delivery_id: idempotency_key(headers),
                    claims: Some(claims),
                });
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        Error::Unauthorized(format!(
            "no OIDC provider of this receiver has issuer {issuer}"
        ))
    }))
}

async fn check(
    identity: &Identity,
    provider: &OidcProvider,
    token: &str,
) -> Result<serde_json::Value, Error> {
    let jwks = identity.jwks_uri(&provider.issuer_url).await?;
    let expected = Expected {
        issuers: &[provider.issuer_url.as_str()],
        audience: &provider.audience,
    };
    let claims = identity.verify(token, &jwks, &expected).await?;
    validate(provider, &claims)?;
    Ok(claims)
}

/// Evaluates the provider's variables in order, each seeing `claims` and the `variables`
/// before it, then every validation; the messages of those that fail are the error.
fn validate(provider: &OidcProvider, claims: &serde_json::Value) -> Result<(), Error> {
    let claims = filter::value(claims);
    let mut variables: HashMap<String, Value> = HashMap::new();
    for (name, expression) in &provider.variables {
        let known = Value::from(variables.clone());
        let value = expression
            .evaluate(&[("claims", &claims), ("variables", &known)])
            .map_err(Error::Unauthorized)?;
        variables.insert(name.clone(), value);
    }
    let variables = Value::from(variables);
    let failed: Vec<String> = provider
        .validations
        .iter()
        .filter_map(|(expression, message)| {
            match expression.is_true(&[("claims", &claims), ("variables", &variables)]) {
                Ok(true) => None,
                Ok(false) if message.is_empty() => {
                    Some(format!("{} is false", expression.source()))
                }
                Ok(false) => Some(message.clone()),
                Err(error) => Some(error),
            }
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Unauthorized(failed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_shared::filter::Expression;
    use serde_json::json;

    fn provider(variables: &[(&str, &str)], validations: &[(&str, &str)]) -> OidcProvider {
        OidcProvider {
            issuer_url: "https://issuer".into(),
            audience: "notification-controller".into(),
            variables: variables
                .iter()
                .map(|(n, e)| ((*n).to_owned(), Expression::compile(e).expect("compiles")))
                .collect(),
            validations: validations
                .iter()
                .map(|(e, m)| (Expression::compile(e).expect("compiles"), (*m).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn variables_are_evaluated_in_order_before_validations() {
        let p = provider(
            &[
                ("repo", "claims.sub.split(':')[1]"),
                ("owner", "variables.repo.split('/')[0]"),
            ],
            &[("variables.owner == 'org'", "wrong owner")],
        );
        let claims = json!({"sub": "repo:org/app:ref:refs/heads/main"});
        assert!(validate(&p, &claims).is_ok());
        let other = json!({"sub": "repo:evil/app:ref:refs/heads/main"});
        assert_eq!(
            validate(&p, &other).expect_err("other owner").to_string(),
            "wrong owner"
        );
    }

    #[test]
    fn every_failing_message_is_joined() {
        let p = provider(
            &[],
            &[
                ("claims.aud == 'x'", "first"),
                ("claims.sub == 'me'", "passes"),
                ("claims.ref == 'main'", "second"),
            ],
        );
        let claims = json!({"aud": "y", "sub": "me", "ref": "dev"});
        assert_eq!(
            validate(&p, &claims).expect_err("fails").to_string(),
            "first; second"
        );
    }

    #[test]
    fn an_evaluation_error_fails_with_its_reason() {
        let p = provider(&[], &[("claims.missing == 'x'", "never shown")]);
        let message = validate(&p, &json!({})).expect_err("error").to_string();
        assert!(message.contains("claims.missing"), "{message}");
    }
}
