//! Pigeonhole client library: one identity's keys, card, relays, contacts and messages, and
//! the operations a wallet or messaging app needs — send, sync, listen, acknowledge, audit.
//!
//! State lives in a [`home::Home`] directory: the encrypted key file (NIP-49 `ncryptsec`,
//! see [`home::KEYFILE_LOG_N_ENV`] for tests) and a SQLite database ([`db`]). The network
//! side talks HTTP and WebSocket to relays ([`relay`], [`listen`]); a relay that is down or
//! slow never holds the others up: every call has a timeout and calls to several relays run
//! in parallel, each reporting its own outcome.
//!
//! The library prints nothing and returns typed errors ([`error`]) whose messages say what
//! to do. A typical session:
//!
//! ```no_run
//! # async fn demo() -> Result<(), pigeonhole_client::error::ClientError> {
//! use pigeonhole_client::{Client, ClientConfig, home::Home};
//! let mut alice = Client::open(Home::new("/tmp/alice"), ClientConfig::default())?;
//! alice.unlock("correct horse battery staple")?;
//! let report = alice.send_text("bob", "hello").await?;
//! assert!(report.stored() >= 1);
//! let synced = alice.sync(&mut |_progress| {}).await?;
//! # let _ = synced; Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod client;
pub mod db;
pub mod drops;
pub mod error;
pub mod home;
pub mod listen;
pub mod relay;
pub mod sync;
pub mod usage;

pub use client::{Client, ClientConfig, RelayChange, RelayStatus, RelayWrite, SendReport};
