//! What a delivery's CEL filters read besides the target: `req`, from the stored webhook (the
//! message payload, or the object-store object it references when the body was too large for
//! one message), and `claims`, the verified ID token's (generic-oidc).

use async_nats::jetstream;
use fluxgate_shared::catalog::ReceiverType;
use fluxgate_shared::contract::{self, header};
use fluxgate_shared::filter;
use tokio::io::AsyncReadExt as _;

use crate::error::Error;

/// The filters' inputs of one delivery.
pub struct Inputs {
    pub req: filter::Value,
    pub claims: Option<filter::Value>,
}

impl Inputs {
    /// For a receiver without filters: nothing is read.
    pub fn none() -> Self {
        Self {
            req: filter::Value::Null,
            claims: None,
        }
    }
}

/// A stored webhook's body: the message payload, or the object it names in the object store.
pub async fn body(
    jetstream: &jetstream::Context,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let Some(object) = headers.and_then(|h| h.get(header::BODY_OBJECT)) else {
        return Ok(payload.to_vec());
    };
    let mut body = Vec::new();
    jetstream
        .get_object_store(contract::BODIES_OBJECT_STORE)
        .await
        .map_err(Error::nats)?
        .get(object.as_str())
        .await
        .map_err(Error::nats)?
        .read_to_end(&mut body)
        .await
        .map_err(Error::nats)?;
    Ok(body)
}

/// The filters' inputs for a stored delivery message. A body that is not the JSON its
/// Content-Type promises is [`Error::Body`], which no retry fixes; NATS errors are worth
/// retrying.
pub async fn of(
    jetstream: &jetstream::Context,
    kind: ReceiverType,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Inputs, Error> {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let content_type = get(header::CONTENT_TYPE);
    let body = body(jetstream, headers, payload).await?;
    let claims = get(header::OIDC_CLAIMS)
        .map(|claims| {
            serde_json::from_str(claims)
                .map(|json| filter::value(&json))
                .map_err(|e| Error::Body(format!("stored claims are not JSON: {e}")))
        })
        .transpose()?;
    Ok(Inputs {
        req: filter::request(kind, content_type, &body).map_err(Error::Body)?,
        claims,
    })
}
