//! What a delivery's CEL filters read besides the target: `req`, from the stored webhook (the
//! message payload, or the object-store object it references when the body was too large for
//! one message), and `claims`, the verified ID token's (generic-oidc).

use async_nats::jetstream;
use fluxgate_shared::contract::DeliveryMeta;
use fluxgate_shared::filter;
use fluxgate_shared::receivers::Receiver;

use crate::error::Error;

/// The filters' inputs of one delivery.
pub struct Inputs {
    pub req: filter::Value,
    pub claims: Option<filter::Value>,
}

impl Inputs {
    /// The inputs of a stored delivery for `receiver`'s filters; nothing is read for a receiver
    /// without filters. A body that is not the JSON its Content-Type promises is
    /// [`Error::Body`], which no retry fixes; NATS errors are worth retrying.
    pub async fn of(
        jetstream: &jetstream::Context,
        receiver: &Receiver,
        meta: &DeliveryMeta,
        payload: &[u8],
    ) -> Result<Self, Error> {
        if !receiver.has_filters() {
            return Ok(Self {
                req: filter::Value::Null,
                claims: None,
            });
        }
        let body = meta.body(jetstream, payload).await?;
        let claims = meta
            .oidc_claims
            .as_deref()
            .map(|claims| {
                serde_json::from_str(claims)
                    .map(|json| filter::value(&json))
                    .map_err(|e| Error::Body(format!("stored claims are not JSON: {e}")))
            })
            .transpose()?;
        Ok(Self {
            req: filter::request(receiver.kind, meta.content_type.as_deref(), &body)
                .map_err(Error::Body)?,
            claims,
        })
    }
}
