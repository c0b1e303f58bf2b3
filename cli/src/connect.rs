//! The NATS connection of the commands that read or write the streams, with errors that say
//! which server and which stream.

use std::sync::Mutex;

use async_nats::jetstream::{self, ErrorCode, context::GetStreamErrorKind, stream::Stream};
use async_nats::{Event, ServerError};

use crate::error::Error;

/// Where NATS is (`--nats-url`, `NATS_URL`).
#[derive(Debug, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    #[command(flatten)]
    pub auth: fluxgate_shared::NatsAuth,
}

/// The last thing NATS denied this user, as the server said it. A denied publish or request
/// only times out on the client's side; this says why.
static DENIED: Mutex<Option<String>> = Mutex::new(None);

/// What NATS denied this process's user, if anything.
pub fn denied() -> Option<String> {
    DENIED.lock().ok().and_then(|denied| denied.clone())
}

/// JetStream on the server the user named.
#[derive(Clone)]
pub struct Streams {
    pub jetstream: jetstream::Context,
    url: String,
}

impl NatsArgs {
    pub async fn connect(&self) -> Result<Streams, Error> {
        let options = self
            .auth
            .apply(
                fluxgate_shared::nats_client_options("fluxgate-cli").event_callback(
                    |event| async move {
                        if let Event::ServerError(ServerError::Other(text)) = event
                            && text.to_lowercase().contains("permissions violation")
                            && let Ok(mut denied) = DENIED.lock()
                        {
                            *denied = Some(text);
                        }
                    },
                ),
            )
            .await?;
        let client = options
            .connect(fluxgate_shared::nats_servers(&self.nats_url)?)
            .await
            .map_err(|error| Error::Connect {
                url: self.nats_url.clone(),
                reason: fluxgate_shared::nats_refusal_reason(&error),
            })?;
        Ok(Streams {
            jetstream: jetstream::new(client),
            url: self.nats_url.clone(),
        })
    }
}

impl Streams {
    /// A stream by name; its absence is the user's likely mistake of pointing at another NATS.
    pub async fn get(&self, name: &str) -> Result<Stream, Error> {
        self.jetstream.get_stream(name).await.map_err(|error| {
            if let GetStreamErrorKind::JetStream(e) = error.kind()
                && e.error_code() == ErrorCode::STREAM_NOT_FOUND
            {
                Error::StreamNotFound {
                    stream: name.to_owned(),
                    url: self.url.clone(),
                }
            } else {
                Error::nats(error)
            }
        })
    }
}
