//! Drop tags (Subspace): 160-bit labels whose first L bits are the recipient's published
//! prefix, so relays can serve "every drop in bucket P" and the recipient chooses the size of
//! its own anonymity set (L = 0: everything; L = 32: only its own bucket).
//!
//! The remaining `160 - L` bits come from one of two derivations that look alike to anyone
//! without the keys:
//! - **stranger path**: bits of `tagged_hash(DROP_TAG, conversation key)`, where the
//!   conversation key is the envelope's own ephemeral ECDH key. The recipient confirms a
//!   candidate with one ECDH and one hash, before any decryption.
//! - **contact path**: bits of `tagged_hash(CHAIN_TAG, chain key || counter)`, where the
//!   chain key comes from the long-term keys of a sender and recipient who know each other.
//!   The recipient precomputes the next tags of each contact and recognises a drop with a
//!   hash-table lookup.

use std::fmt;

use crate::hash::{tagged_hash, tags};
use crate::keys::{PublicKey, SecretKey};
use crate::nip44::ConversationKey;
use crate::wire::DecodeError;

/// Length of a tag in bytes (160 bits).
pub const TAG_LEN: usize = 20;
/// The longest prefix a recipient may publish, in bits.
pub const MAX_PREFIX_BITS: u8 = 32;

/// A 160-bit drop tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub [u8; TAG_LEN]);

/// Why a tag or prefix is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Not 40 hex characters.
    #[error("a tag is 40 hex characters (160 bits)")]
    InvalidHex,
    /// More than 32 prefix bits.
    #[error("prefix length {0} is over the maximum of 32 bits")]
    PrefixTooLong(u8),
    /// The prefix value has bits set past its length (non-canonical).
    #[error("prefix value has bits set beyond its {bits} bits")]
    PrefixValueOverflow {
        /// The prefix length.
        bits: u8,
    },
}

impl Tag {
    /// The first 32 bits as a big-endian integer (the part a prefix is compared with).
    pub fn head(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// Lower-case hex (the JSON and URL form).
    pub fn to_hex(&self) -> String {
        crate::to_hex(&self.0)
    }

    /// Parses 40 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, TagError> {
        let mut out = [0u8; TAG_LEN];
        hex::decode_to_slice(text, &mut out).map_err(|_| TagError::InvalidHex)?;
        Ok(Self(out))
    }

    /// Parses exactly 20 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        let array: [u8; TAG_LEN] = bytes
            .try_into()
            .map_err(|_| DecodeError::InvalidValue { field: "tag", reason: "not 20 bytes" })?;
        Ok(Self(array))
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.to_hex())
    }
}

impl_text_serde!(Tag, to_hex, from_hex);

/// A recipient's published prefix: the first `bits` bits of `value` (big-endian, most
/// significant bit first). Bits of `value` past `bits` are always zero, so each prefix has
/// one representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "PrefixJson", into = "PrefixJson")]
pub struct Prefix {
    bits: u8,
    value: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefixJson {
    bits: u8,
    value: u32,
}

impl TryFrom<PrefixJson> for Prefix {
    type Error = TagError;
    fn try_from(json: PrefixJson) -> Result<Self, TagError> {
        Prefix::new(json.bits, json.value)
    }
}

impl From<Prefix> for PrefixJson {
    fn from(prefix: Prefix) -> Self {
        PrefixJson { bits: prefix.bits, value: prefix.value }
    }
}

impl Prefix {
    /// The empty prefix (L = 0): every drop matches it.
    pub const EMPTY: Prefix = Prefix { bits: 0, value: 0 };

    /// A prefix of `bits` bits taken from the top of `value`; lower bits must be zero.
    pub fn new(bits: u8, value: u32) -> Result<Self, TagError> {
        if bits > MAX_PREFIX_BITS {
            return Err(TagError::PrefixTooLong(bits));
        }
        if value & !Self::mask(bits) != 0 {
            return Err(TagError::PrefixValueOverflow { bits });
        }
        Ok(Self { bits, value })
    }

    /// The first `bits` bits of `value`, discarding the rest (for choosing a prefix from a
    /// random or derived 32-bit number).
    pub fn truncate(bits: u8, value: u32) -> Result<Self, TagError> {
        if bits > MAX_PREFIX_BITS {
            return Err(TagError::PrefixTooLong(bits));
        }
        Ok(Self { bits, value: value & Self::mask(bits) })
    }

    /// The prefix length L in bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// The prefix value (its bits at the top of the u32).
    pub fn value(&self) -> u32 {
        self.value
    }

    fn mask(bits: u8) -> u32 {
        if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) }
    }

    /// Whether a tag falls in this prefix's bucket.
    pub fn matches(&self, tag: &Tag) -> bool {
        tag.head() & Self::mask(self.bits) == self.value
    }

    /// Whether every tag matching `self` also matches `other` (`other` is a shorter or equal
    /// prefix of `self`). Relays use it to wake the waiters of a bucket.
    pub fn is_within(&self, other: &Prefix) -> bool {
        other.bits <= self.bits && self.value & Self::mask(other.bits) == other.value
    }

    /// Builds a tag: the prefix bits followed by the bits of `filler` after the first L.
    pub fn apply(&self, filler: &[u8; TAG_LEN]) -> Tag {
        let mut tag = *filler;
        let mask = Self::mask(self.bits);
        let head = (u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]) & !mask) | self.value;
        tag[..4].copy_from_slice(&head.to_be_bytes());
        Tag(tag)
    }
}

impl fmt::Display for Prefix {
    /// `bits/hex-value`, e.g. `8/ab000000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:08x}", self.bits, self.value)
    }
}

fn first_tag_bytes(hash: [u8; 32]) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&hash[..TAG_LEN]);
    out
}

/// The stranger-path tag of an envelope whose conversation key is `key`.
pub fn drop_tag(prefix: &Prefix, key: &ConversationKey) -> Tag {
    prefix.apply(&first_tag_bytes(tagged_hash(tags::DROP_TAG, &[key.as_bytes()])))
}

/// The directional chain key from `sender` to `recipient` for contact-path tags. Either side
/// computes it: the sender with its secret and the recipient's public key, the recipient
/// with its secret and the sender's public key.
pub struct ChainKey([u8; 32]);

impl ChainKey {
    /// Derives the chain key for drops from `sender` to `recipient`; `my_secret` is the secret
    /// of one of them and `their_public` the public key of the other.
    pub fn derive(
        my_secret: &SecretKey,
        their_public: &PublicKey,
        sender: &PublicKey,
        recipient: &PublicKey,
    ) -> Self {
        let point =
            secp256k1::ecdh::shared_secret_point(&their_public.to_even_point(), &my_secret.secp_secret());
        let shared_x = zeroize::Zeroizing::new(point);
        let key = tagged_hash(tags::CHAIN_KEY, &[&shared_x[..32], &sender.to_bytes(), &recipient.to_bytes()]);
        Self(key)
    }

    /// The contact-path tag for the `counter`-th drop.
    pub fn tag(&self, prefix: &Prefix, counter: u64) -> Tag {
        prefix.apply(&first_tag_bytes(tagged_hash(tags::CHAIN_TAG, &[&self.0, &counter.to_be_bytes()])))
    }

    /// The raw 32 bytes (for storing in the client's database, encrypted at rest).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0)
    }

    /// Rebuilds a chain key from stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl Drop for ChainKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
    }

    #[test]
    fn prefix_rules() {
        assert_eq!(Prefix::new(33, 0), Err(TagError::PrefixTooLong(33)));
        assert_eq!(Prefix::new(4, 0x0800_0000), Err(TagError::PrefixValueOverflow { bits: 4 }));
        assert_eq!(Prefix::new(0, 1), Err(TagError::PrefixValueOverflow { bits: 0 }));
        assert!(Prefix::new(4, 0xf000_0000).is_ok());
        assert!(Prefix::new(32, 0xdead_beef).is_ok());
        assert_eq!(Prefix::truncate(8, 0xabcd_ef01), Prefix::new(8, 0xab00_0000));
    }

    #[test]
    fn apply_sets_exactly_the_prefix_bits() {
        for bits in 0..=32u8 {
            let prefix = Prefix::truncate(bits, 0xa5a5_a5a5).expect("bits ok");
            let tag = prefix.apply(&[0x5a; TAG_LEN]);
            assert!(prefix.matches(&tag), "L={bits}");
            // Bytes after the first four are untouched filler.
            assert_eq!(&tag.0[4..], &[0x5a; 16]);
            if bits < 32 {
                let other =
                    Prefix::truncate(bits + 1, tag.head() ^ (1 << (31 - u32::from(bits)))).expect("ok");
                assert!(!other.matches(&tag), "L={bits}");
            }
        }
        assert!(Prefix::EMPTY.matches(&Tag([0xff; TAG_LEN])));
    }

    #[test]
    fn within() {
        let long = Prefix::new(16, 0xabcd_0000).expect("ok");
        assert!(long.is_within(&Prefix::new(8, 0xab00_0000).expect("ok")));
        assert!(long.is_within(&Prefix::EMPTY));
        assert!(!long.is_within(&Prefix::new(8, 0xac00_0000).expect("ok")));
        assert!(!Prefix::EMPTY.is_within(&long));
    }

    #[test]
    fn chain_keys_agree_and_are_directional() {
        let (alice, bob) = (key(1), key(2));
        let (a, b) = (alice.public_key(), bob.public_key());
        let at_alice = ChainKey::derive(&alice, &b, &a, &b);
        let at_bob = ChainKey::derive(&bob, &a, &a, &b);
        let prefix = Prefix::new(8, 0x4200_0000).expect("ok");
        assert_eq!(at_alice.tag(&prefix, 7), at_bob.tag(&prefix, 7));
        assert_ne!(at_alice.tag(&prefix, 7), at_alice.tag(&prefix, 8));
        let reverse = ChainKey::derive(&bob, &a, &b, &a);
        assert_ne!(reverse.tag(&prefix, 7), at_bob.tag(&prefix, 7));
        assert!(prefix.matches(&at_alice.tag(&prefix, 7)));
    }

    #[test]
    fn tag_hex() {
        let tag = Tag([0xab; TAG_LEN]);
        assert_eq!(Tag::from_hex(&tag.to_hex()), Ok(tag));
        assert_eq!(Tag::from_hex("ab"), Err(TagError::InvalidHex));
        assert_eq!(Tag::from_hex(&"zz".repeat(20)), Err(TagError::InvalidHex));
    }
}
