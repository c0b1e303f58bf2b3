//! fluxgate-ingest: finds the Flux receiver by its hook path, verifies the webhook as Flux does,
//! stores it in NATS JetStream and answers 2xx only once the stream acknowledged it.

pub mod config;
pub mod error;
pub mod verify;
