//! Domain-separated tagged hashes (BIP-340 style): every signed or derived value in the
//! protocol is `SHA-256(SHA-256(tag) || SHA-256(tag) || data)` with a tag of its own, so a
//! signature or key made for one purpose can never be replayed as another.

use sha2::{Digest, Sha256};

/// The domain tags used by the protocol. Each one names exactly one kind of hashed object;
/// changing one is a protocol break.
pub mod tags {
    /// Signed request (`msg`) bytes.
    pub const REQUEST: &str = "pigeonhole/v1/request";
    /// Signed letter (the plaintext inside a sealed envelope).
    pub const LETTER: &str = "pigeonhole/v1/letter";
    /// Identity card.
    pub const CARD: &str = "pigeonhole/v1/card";
    /// Identity of a stored record (its unsigned request bytes).
    pub const RECORD: &str = "pigeonhole/v1/record";
    /// Relay commit header (the Merkle root a relay signs per commit group).
    pub const COMMIT: &str = "pigeonhole/v1/commit";
    /// Relay-signed documents (info, usage report, generic responses).
    pub const RELAY_DOCUMENT: &str = "pigeonhole/v1/relay-document";
    /// Drop tag bits derived from the per-message ECDH secret.
    pub const DROP_TAG: &str = "pigeonhole/v1/drop-tag";
    /// Contact chain key derived from the long-term ECDH secret.
    pub const CHAIN_KEY: &str = "pigeonhole/v1/chain-key";
    /// Contact fast-path tag derived from a chain key and a counter.
    pub const CHAIN_TAG: &str = "pigeonhole/v1/chain-tag";
    /// Session challenge answer.
    pub const SESSION: &str = "pigeonhole/v1/session";
    /// Seed of a relay's per-epoch postage key (RFC 9497 DeriveKeyPair input).
    pub const POSTAGE_SEED: &str = "pigeonhole/v1/postage-seed";
    /// Identity of a spent postage stamp (the relay's double-spend key).
    pub const POSTAGE_SPENT: &str = "pigeonhole/v1/postage-spent";
    /// Domain prefix of a postage stamp's HMAC message (not a tagged hash: the HMAC key is the
    /// token's PRF output).
    pub const POSTAGE_STAMP: &str = "pigeonhole/v1/postage-stamp";
}

/// `SHA-256(SHA-256(tag) || SHA-256(tag) || parts[0] || parts[1] || ...)`.
pub fn tagged_hash(tag: &str, parts: &[&[u8]]) -> [u8; 32] {
    let tag_hash = Sha256::digest(tag.as_bytes());
    let mut hasher = Sha256::new();
    hasher.update(tag_hash);
    hasher.update(tag_hash);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Plain SHA-256, for places where a standard names it (Merkle trees, proof of work).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_bip340_challenge_construction() {
        // BIP-340's own tagged hash, computed by hand: the tag is hashed once and prefixed twice.
        let tag = Sha256::digest(b"BIP0340/challenge");
        let mut expected = Sha256::new();
        expected.update(tag);
        expected.update(tag);
        expected.update(b"abc");
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(tagged_hash("BIP0340/challenge", &[b"a", b"bc"]), expected);
    }

    #[test]
    fn different_tags_differ() {
        assert_ne!(tagged_hash(tags::REQUEST, &[b"x"]), tagged_hash(tags::LETTER, &[b"x"]));
    }
}
