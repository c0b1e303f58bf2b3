//! `generic-oidc`: a bearer ID token from one of the receiver's OIDC providers (chosen by the
//! token's `iss`), then the provider's CEL `variables` in order (bound as `vars.<name>`) and its
//! `validations`, every failing message joined with "; " into the 401, as Flux does.

use std::collections::HashMap;

use axum::http::HeaderMap;
use fluxgate_shared::filter::{self, Value};
use fluxgate_shared::receivers::{OidcProvider, Receiver};

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
    let discovered = identity.discover(&provider.issuer_url).await?;
    let expected = Expected {
        issuers: &[provider.issuer_url.as_str()],
        audience: &provider.audience,
        algorithms: &discovered.algorithms,
    };
    let claims = identity
        .verify(token, &discovered.jwks_uri, &expected)
        .await?;
    validate(provider, &claims)?;
    Ok(claims)
}

/// Evaluates the provider's variables in order, each seeing `claims` and the `vars` before it,
/// then every validation; the messages of those that fail are the error. An expression that
/// cannot be evaluated fails at once, with its reason, as in Flux.
fn validate(provider: &OidcProvider, claims: &serde_json::Value) -> Result<(), Error> {
    let claims = filter::value(claims);
    let mut vars: HashMap<String, Value> = HashMap::new();
    for (name, expression) in &provider.variables {
        let known = Value::from(vars.clone());
        let value = expression
            .evaluate(&[("claims", &claims), ("vars", &known)])
            .map_err(|e| {
                Error::Unauthorized(format!("failed to evaluate variable {name:?}: {e}"))
            })?;
        vars.insert(name.clone(), value);
    }
    let vars = Value::from(vars);
    let mut failed = Vec::new();
    for (expression, message) in &provider.validations {
        let holds = expression
            .is_true(&[("claims", &claims), ("vars", &vars)])
            .map_err(|e| Error::Unauthorized(format!("failed to evaluate validation: {e}")))?;
        if !holds {
            failed.push(message.as_str());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Unauthorized(format!(
            "token validation failed: {}",
            failed.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluxgate_shared::filter::Expression;
    use serde_json::json;

    const DECLARED: &[&str] = &["claims", "vars"];

    fn provider(variables: &[(&str, &str)], validations: &[(&str, &str)]) -> OidcProvider {
        OidcProvider {
            issuer_url: "https://issuer".into(),
            audience: "id".into(),
            variables: variables
                .iter()
                .map(|(n, e)| {
                    let e = Expression::compile(e, DECLARED).expect("compiles");
                    ((*n).to_owned(), e)
                })
                .collect(),
            validations: validations
                .iter()
                .map(|(e, m)| {
                    let e = Expression::condition(e, DECLARED).expect("compiles");
                    (e, (*m).to_owned())
                })
                .collect(),
        }
    }

    /// notification-controller's `TestOIDCClaimsProcessor_Evaluate`, case by case.
    #[test]
    fn flux_claims_processor_cases() {
        let cases: &[(&str, OidcProvider, serde_json::Value, Option<&str>)] = &[
            (
                "no validations always passes",
                provider(&[], &[]),
                json!({"sub": "x"}),
                None,
            ),
            (
                "passing validation",
                provider(&[], &[("claims.repo == 'org/repo'", "wrong repo")]),
                json!({"repo": "org/repo"}),
                None,
            ),
            (
                "all failures aggregated",
                provider(
                    &[],
                    &[
                        ("claims.repo == 'org/repo'", "wrong repo"),
                        ("claims.env == 'prod'", "wrong env"),
                    ],
                ),
                json!({"repo": "evil", "env": "dev"}),
                Some("wrong repo; wrong env"),
            ),
            (
                "variables flow into validations",
                provider(
                    &[("allowed", "['org/repo']")],
                    &[("claims.repo in vars.allowed", "repo denied")],
                ),
                json!({"repo": "org/repo"}),
                None,
            ),
            (
                "variables can reference earlier variables",
                provider(
                    &[
                        ("owner", "claims.owner"),
                        ("allowed", "[vars.owner + '/repo']"),
                    ],
                    &[("claims.repo in vars.allowed", "repo denied")],
                ),
                json!({"owner": "org", "repo": "org/repo"}),
                None,
            ),
        ];
        for (name, provider, claims, error) in cases {
            let got = validate(provider, claims).map_err(|e| e.to_string());
            match error {
                None => assert_eq!(got, Ok(()), "{name}"),
                Some(says) => {
                    let message = got.expect_err(name);
                    assert!(message.contains(says), "{name}: {message}");
                }
            }
        }
    }

    #[test]
    fn an_evaluation_error_fails_with_its_reason() {
        let p = provider(&[], &[("claims.missing == 'x'", "never shown")]);
        let message = validate(&p, &json!({})).expect_err("error").to_string();
        assert!(
            message.starts_with("failed to evaluate validation"),
            "{message}"
        );
        assert!(!message.contains("never shown"), "{message}");
        let p = provider(&[("x", "claims.missing")], &[("true", "m")]);
        let message = validate(&p, &json!({})).expect_err("error").to_string();
        assert!(
            message.starts_with("failed to evaluate variable \"x\""),
            "{message}"
        );
    }
}
