//! The Pigeonhole relay: stores and forwards sealed records for the keys that hold accounts
//! on it, exactly as the protocol's authorization rules allow.
//!
//! - [`engine`] decides: authentication, freshness and replay, authorization, validation,
//!   quotas. It is synchronous and takes `now` as an argument; it knows nothing of HTTP.
//! - [`commit`] is the group-commit writer: one thread batches concurrent writes into one
//!   durable store commit and signs one Merkle root per batch.
//! - [`http`] is the axum adapter: routes, body limits, JSON errors; [`ws`] the WebSocket
//!   transport for sessions.
//! - [`postage`] admits anonymous drops and issues their blind-token postage; [`drops`] is
//!   its HTTP and WebSocket adapter; [`notify`] wakes only the waiters a commit concerns.
//! - [`server`] wires them together and runs until SIGINT/SIGTERM.

pub mod commit;
pub mod config;
pub mod deliveries;
pub mod drops;
pub mod engine;
pub mod error;
pub mod http;
pub mod notify;
pub mod openapi;
pub mod postage;
pub mod server;
pub mod session;
mod worker;
pub mod ws;
