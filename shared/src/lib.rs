//! fluxgate-shared: what ingest, dispatcher and CLI must agree on -- the delivery contract
//! (stream, subject and header names, delivery metadata, outcome events), the receiver catalog,
//! and telemetry set-up.

pub mod catalog;
pub mod cluster;
pub mod config;
pub mod contract;
mod error;
pub mod filter;
pub mod gojson;
pub mod pubsub;
pub mod shutdown;
pub mod source;
pub mod telemetry;

pub use error::Error;
