//! The `req` of a delivery's CEL filters, from the stored webhook: the message payload, or the
//! object-store object it references when the body was too large for one message.

use async_nats::jetstream;
use fluxgate_shared::contract::{self, header};
use fluxgate_shared::filter;
use tokio::io::AsyncReadExt as _;

use crate::error::Error;

/// The filters' `req` for `message`. A body that is not the JSON its Content-Type promises is
/// [`Error::Body`], which no retry fixes; NATS errors are worth retrying.
pub async fn of(
    jetstream: &jetstream::Context,
    message: &jetstream::Message,
) -> Result<filter::Value, Error> {
    let get = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    };
    let content_type = get(header::CONTENT_TYPE);
    let body = match get(header::BODY_OBJECT) {
        None => message.payload.to_vec(),
        Some(object) => {
            let mut body = Vec::new();
            jetstream
                .get_object_store(contract::BODIES_OBJECT_STORE)
                .await
                .map_err(Error::nats)?
                .get(object)
                .await
                .map_err(Error::nats)?
                .read_to_end(&mut body)
                .await
                .map_err(Error::nats)?;
            body
        }
    };
    filter::request(content_type, &body).map_err(Error::Body)
}
