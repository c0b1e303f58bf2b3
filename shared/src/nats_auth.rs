//! How the binaries authenticate to NATS and secure the connection, the way NATS users expect:
//! a credentials file, an nkey seed, user and password, or a token, and TLS with a CA and a
//! client certificate. Secrets come from files (a mounted Secret) or the environment, never from
//! a flag's value, which `ps` would show.

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;
use base64::Engine as _;

use crate::error::Error;

/// The environment variables read for secrets when no file is named.
pub const PASSWORD_ENV: &str = "NATS_PASSWORD";
pub const TOKEN_ENV: &str = "NATS_TOKEN";

/// Flattened into each binary's configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsAuth {
    /// NATS credentials file: a user JWT and its nkey seed, as `nsc` writes it.
    #[arg(long, env = "NATS_CREDS", conflicts_with_all = ["nats_nkey", "nats_user", "nats_token_file"])]
    pub nats_creds: Option<PathBuf>,

    /// File holding a NATS nkey seed (`SU...`).
    #[arg(long, env = "NATS_NKEY", conflicts_with_all = ["nats_user", "nats_token_file"])]
    pub nats_nkey: Option<PathBuf>,

    /// NATS user; the password is read from --nats-password-file, else from NATS_PASSWORD.
    #[arg(long, env = "NATS_USER", conflicts_with = "nats_token_file")]
    pub nats_user: Option<String>,

    /// File holding the password of --nats-user.
    #[arg(long, env = "NATS_PASSWORD_FILE", requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,

    /// File holding a NATS token; without it, NATS_TOKEN is used when set.
    #[arg(long, env = "NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,

    /// PEM file of the CA certificates that sign the server's certificate; requires TLS.
    #[arg(long, env = "NATS_CA")]
    pub nats_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS, with --nats-key.
    #[arg(long, env = "NATS_CERT", requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,

    /// Client private key (PEM) for mutual TLS, with --nats-cert.
    #[arg(long, env = "NATS_KEY", requires = "nats_cert")]
    pub nats_key: Option<PathBuf>,
}

impl NatsAuth {
    /// `options` with these credentials and TLS settings. Every file is read (or checked) now,
    /// so one that is missing or unreadable is named at start-up rather than in a retry loop.
    pub async fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, Error> {
        if let Some(path) = &self.nats_creds {
            readable("credentials file", path)?;
            options = options
                .credentials_file(path)
                .await
                .map_err(|source| file_error("credentials file", path, source))?;
        } else if let Some(path) = &self.nats_nkey {
            options = options.nkey(read_secret("nkey seed file", path)?);
        } else if let Some(user) = &self.nats_user {
            let password = match &self.nats_password_file {
                Some(path) => read_secret("password file", path)?,
                None => std::env::var(PASSWORD_ENV).map_err(|_| {
                    Error::NatsConfig(format!(
                        "--nats-user {user} needs a password: --nats-password-file or {PASSWORD_ENV}"
                    ))
                })?,
            };
            options = options.user_and_password(user.clone(), password);
        } else if let Some(path) = &self.nats_token_file {
            options = options.token(read_secret("token file", path)?);
        } else if let Ok(token) = std::env::var(TOKEN_ENV) {
            options = options.token(token);
        }
        if let Some(path) = &self.nats_ca {
            readable("CA file", path)?;
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_cert, &self.nats_key) {
            readable("client certificate", cert)?;
            readable("client key", key)?;
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }

    /// Who these credentials say the client is, for records such as a replay's actor: the
    /// user, the credentials' user name (else its public key), the nkey's public key; `None`
    /// for a token or no authentication.
    pub fn identity(&self) -> Option<String> {
        if let Some(user) = &self.nats_user {
            return Some(user.clone());
        }
        if let Some(path) = &self.nats_creds {
            return std::fs::read_to_string(path)
                .ok()
                .and_then(|text| creds_user(&text));
        }
        let seed = read_secret("nkey seed file", self.nats_nkey.as_deref()?).ok()?;
        nkeys::KeyPair::from_seed(&seed)
            .ok()
            .map(|pair| pair.public_key())
    }
}

/// The user named by the JWT of a credentials file: its `name` claim, else its subject.
fn creds_user(text: &str) -> Option<String> {
    let jwt = text
        .lines()
        .skip_while(|line| !line.contains("BEGIN NATS USER JWT"))
        .nth(1)?
        .trim();
    let payload = jwt.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?,
    )
    .ok()?;
    claims["name"]
        .as_str()
        .filter(|name| !name.is_empty())
        .or(claims["sub"].as_str())
        .map(str::to_owned)
}

/// A secret file's content without the line break editors and `echo` leave at its end.
fn read_secret(what: &'static str, path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| file_error(what, path, source))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Fails now, naming the file, when it cannot be read (the NATS client reads it later).
fn readable(what: &'static str, path: &Path) -> Result<(), Error> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| file_error(what, path, source))
}

fn file_error(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::NatsFile {
        what,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_of_a_credentials_file_is_its_jwt_name() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"name":"replay-bot","sub":"UABC"}"#);
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.{claims}.sig\n------END NATS USER JWT------\n"
        );
        assert_eq!(creds_user(&creds).as_deref(), Some("replay-bot"));
        let unnamed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"UABC"}"#);
        let creds = creds.replace(&claims, &unnamed);
        assert_eq!(creds_user(&creds).as_deref(), Some("UABC"));
        assert_eq!(creds_user("not a credentials file"), None);
    }

    #[tokio::test]
    async fn unreadable_files_are_named() {
        let missing = PathBuf::from("/nonexistent/fluxgate.creds");
        for auth in [
            NatsAuth {
                nats_creds: Some(missing.clone()),
                ..Default::default()
            },
            NatsAuth {
                nats_ca: Some(missing.clone()),
                ..Default::default()
            },
            NatsAuth {
                nats_user: Some("ingest".into()),
                nats_password_file: Some(missing.clone()),
                ..Default::default()
            },
        ] {
            let error = auth
                .apply(ConnectOptions::new())
                .await
                .expect_err("a missing file");
            assert!(
                error.to_string().contains("/nonexistent/fluxgate.creds"),
                "{error}"
            );
        }
    }

    #[test]
    fn an_nkey_identity_is_its_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = nkeys::KeyPair::new_user();
        let path = dir.path().join("seed");
        std::fs::write(&path, format!("{}\n", pair.seed().expect("seed"))).expect("write");
        let auth = NatsAuth {
            nats_nkey: Some(path),
            ..Default::default()
        };
        assert_eq!(auth.identity(), Some(pair.public_key()));
    }
}
