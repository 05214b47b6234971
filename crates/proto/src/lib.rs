//! Pigeonhole protocol core: keys, canonical bytes, tagged hashes, signatures, sealing,
//! drop tags, identity cards, requests and relay receipts.
//!
//! This crate is pure: it performs no I/O, reads no clock and draws no OS randomness. Time
//! is always an argument, randomness comes from a caller-supplied RNG, and every
//! randomized operation has a `*_with_nonce` (or `*_with_aux`) form for test vectors.

#![forbid(unsafe_code)]

pub mod card;
pub mod drops;
pub mod hash;
pub mod keyfile;
pub mod keys;
pub mod nip44;
pub mod payload;
pub mod receipt;
pub mod request;
pub mod seal;
pub mod tag;
pub mod wire;
