//! NIP-44 version 2 encrypted payloads (Nostr): conversation keys, message keys, padding,
//! ChaCha20 + HMAC-SHA256 encryption and decryption, raw and base64 forms.
//!
//! This is a pure implementation of <https://github.com/nostr-protocol/nips/blob/master/44.md>
//! (version `0x02`): it draws no randomness, so every encryption takes an explicit 32-byte
//! nonce that the caller must generate from a CSPRNG and never reuse under the same
//! conversation key.
//!
//! Layout of a raw payload: `0x02 || nonce (32) || ciphertext || mac (32)`, where
//! `ciphertext = ChaCha20(pad(plaintext))` and `mac = HMAC-SHA256(hmac_key, nonce || ciphertext)`.
//! Nostr events carry the payload base64-encoded (standard alphabet, with padding); see
//! [`encrypt_with_nonce_base64`] and [`decrypt_base64`].
//!
//! Checked against the official vectors (`spec/vectors/official/nip44.vectors.json`) by
//! `tests/nip44_official.rs`.

use core::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use secp256k1::{Parity, PublicKey, SecretKey, XOnlyPublicKey};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The version byte this module implements (`0x02`).
pub const VERSION: u8 = 2;
/// Smallest plaintext NIP-44 v2 can carry, in bytes.
pub const MIN_PLAINTEXT: usize = 1;
/// Largest plaintext NIP-44 v2 can carry, in bytes (the length prefix is a `u16`).
pub const MAX_PLAINTEXT: usize = 65535;
/// Smallest raw payload: version (1) + nonce (32) + padded minimum (2 + 32) + mac (32).
pub const MIN_PAYLOAD_LEN: usize = 99;
/// Largest raw payload: version (1) + nonce (32) + padded maximum (2 + 65536) + mac (32).
pub const MAX_PAYLOAD_LEN: usize = 65603;
/// Smallest base64 payload, in characters (base64 of [`MIN_PAYLOAD_LEN`] bytes).
pub const MIN_BASE64_LEN: usize = 132;
/// Largest base64 payload, in characters (base64 of [`MAX_PAYLOAD_LEN`] bytes).
pub const MAX_BASE64_LEN: usize = 87472;

/// HKDF salt of the conversation key.
const SALT: &[u8] = b"nip44-v2";
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
/// Length prefix of the padded plaintext (big-endian `u16`).
const PREFIX_LEN: usize = 2;
const HEADER_LEN: usize = 1 + NONCE_LEN;
/// HKDF-expand output: chacha key (32) || chacha nonce (12) || hmac key (32).
const MESSAGE_KEYS_LEN: usize = 76;

/// Why a NIP-44 operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nip44Error {
    /// The payload's version byte is not `0x02`.
    #[error("unsupported NIP-44 version byte {0:#04x}")]
    UnsupportedVersion(u8),
    /// The base64 payload starts with `#`: NIP-44 reserves that for future versions that
    /// are not base64-encoded, which this implementation does not support.
    #[error("unsupported NIP-44 payload encoding (payload starts with '#')")]
    UnsupportedEncoding,
    /// The base64 payload is shorter than [`MIN_BASE64_LEN`] or longer than
    /// [`MAX_BASE64_LEN`] (its length in bytes is carried).
    #[error("invalid NIP-44 base64 payload length {0} (expected {MIN_BASE64_LEN}..={MAX_BASE64_LEN})")]
    InvalidBase64Length(usize),
    /// The payload is not canonical, padded, standard-alphabet base64.
    #[error("NIP-44 payload is not valid base64")]
    InvalidBase64,
    /// The raw payload is shorter than [`MIN_PAYLOAD_LEN`] or longer than
    /// [`MAX_PAYLOAD_LEN`] bytes (its length is carried).
    #[error("invalid NIP-44 payload length {0} (expected {MIN_PAYLOAD_LEN}..={MAX_PAYLOAD_LEN} bytes)")]
    InvalidPayloadLength(usize),
    /// The HMAC does not authenticate the nonce and ciphertext under this key.
    #[error("NIP-44 message authentication failed")]
    InvalidMac,
    /// The authenticated plaintext is not a well-formed padded message.
    #[error("invalid NIP-44 padding")]
    InvalidPadding,
    /// The plaintext length is outside [`MIN_PLAINTEXT`]..=[`MAX_PLAINTEXT`].
    #[error("NIP-44 plaintext length {0} outside {MIN_PLAINTEXT}..={MAX_PLAINTEXT}")]
    PlaintextLength(usize),
}

/// 32-byte NIP-44 conversation key shared by two keypairs; zeroized on drop.
///
/// `Debug` never prints the key: it shows `ConversationKey(..)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ConversationKey([u8; 32]);

impl ConversationKey {
    /// Wraps raw conversation-key bytes (e.g. from a test vector or secure storage).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConversationKey(..)")
    }
}

/// Per-message keys derived from a conversation key and a nonce; zeroized on drop.
///
/// `Debug` never prints the keys.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKeys {
    chacha_key: [u8; 32],
    chacha_nonce: [u8; 12],
    hmac_key: [u8; 32],
}

impl MessageKeys {
    /// The ChaCha20 key (HKDF-expand output bytes 0..32).
    #[must_use]
    pub fn chacha_key(&self) -> &[u8; 32] {
        &self.chacha_key
    }

    /// The 12-byte IETF ChaCha20 nonce (HKDF-expand output bytes 32..44).
    #[must_use]
    pub fn chacha_nonce(&self) -> &[u8; 12] {
        &self.chacha_nonce
    }

    /// The HMAC-SHA256 key (HKDF-expand output bytes 44..76).
    #[must_use]
    pub fn hmac_key(&self) -> &[u8; 32] {
        &self.hmac_key
    }
}

impl fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageKeys(..)")
    }
}

/// Conversation key between `secret` and `public`: HKDF-extract(salt = `"nip44-v2"`,
/// IKM = x coordinate of ECDH(`secret`, `public` lifted to the point with even Y)).
///
/// Symmetric: `conversation_key(a, B) == conversation_key(b, A)`. Invalid keys (zero or
/// out-of-range scalars, x coordinates not on the curve) are rejected earlier, when the
/// `secp256k1` types are parsed, so this cannot fail.
#[must_use]
pub fn conversation_key(secret: &SecretKey, public: &XOnlyPublicKey) -> ConversationKey {
    let point: PublicKey = public.public_key(Parity::Even);
    // x || y of secret * point; never the point at infinity, since `secret` is a valid
    // nonzero scalar below the group order and the curve has prime order.
    let mut shared = Zeroizing::new(secp256k1::ecdh::shared_secret_point(&point, secret));
    let (mut prk, _expander) = Hkdf::<Sha256>::extract(Some(SALT), &shared[..32]);
    shared.zeroize();
    let mut key = [0_u8; 32];
    key.copy_from_slice(&prk);
    prk.as_mut_slice().zeroize();
    ConversationKey(key)
}

/// Message keys for `nonce` under `key`: HKDF-expand(PRK = conversation key, info = nonce,
/// L = 76) split into ChaCha20 key (32), ChaCha20 nonce (12) and HMAC key (32).
#[must_use]
pub fn message_keys(key: &ConversationKey, nonce: &[u8; 32]) -> MessageKeys {
    let expander = Hkdf::<Sha256>::from_prk(key.as_bytes())
        .expect("a 32-byte PRK is exactly SHA-256's output length, the minimum HKDF accepts");
    let mut okm = Zeroizing::new([0_u8; MESSAGE_KEYS_LEN]);
    expander
        .expand(nonce, okm.as_mut_slice())
        .expect("76 bytes is far below HKDF-SHA256's 255 * 32 byte output limit");
    let mut keys = MessageKeys { chacha_key: [0; 32], chacha_nonce: [0; 12], hmac_key: [0; 32] };
    keys.chacha_key.copy_from_slice(&okm[0..32]);
    keys.chacha_nonce.copy_from_slice(&okm[32..44]);
    keys.hmac_key.copy_from_slice(&okm[44..76]);
    keys
}

/// NIP-44 padded length of a plaintext of `unpadded_len` bytes (without the 2-byte length
/// prefix): 32 up to 32 bytes, then chunks of 32 up to 256 bytes, then chunks of one eighth
/// of the next power of two.
///
/// The function is defined for every nonzero length (the official vectors include 65536,
/// one past [`MAX_PLAINTEXT`]); encryption separately limits plaintexts to
/// [`MIN_PLAINTEXT`]..=[`MAX_PLAINTEXT`].
///
/// # Errors
/// [`Nip44Error::PlaintextLength`] for 0, and for lengths above `2^(usize::BITS - 1)`, whose
/// padded length would not fit in a `usize`.
pub fn calc_padded_len(unpadded_len: usize) -> Result<usize, Nip44Error> {
    if unpadded_len == 0 {
        return Err(Nip44Error::PlaintextLength(unpadded_len));
    }
    if unpadded_len <= 32 {
        return Ok(32);
    }
    let last = unpadded_len - 1;
    // 1 << (floor(log2(len - 1)) + 1): the power of two strictly above len - 1.
    let next_power = 1_usize
        .checked_shl(usize::BITS - last.leading_zeros())
        .ok_or(Nip44Error::PlaintextLength(unpadded_len))?;
    let chunk = if next_power <= 256 { 32 } else { next_power / 8 };
    (last / chunk + 1).checked_mul(chunk).ok_or(Nip44Error::PlaintextLength(unpadded_len))
}

/// Encrypts `plaintext` under `key` with the caller's 32-byte `nonce` and returns the RAW
/// payload bytes `0x02 || nonce || ciphertext || mac`.
///
/// The nonce must come from a CSPRNG and must never repeat under one conversation key.
///
/// # Errors
/// [`Nip44Error::PlaintextLength`] if `plaintext` is empty or longer than [`MAX_PLAINTEXT`].
pub fn encrypt_with_nonce(
    key: &ConversationKey,
    plaintext: &[u8],
    nonce: &[u8; 32],
) -> Result<Vec<u8>, Nip44Error> {
    let len = plaintext.len();
    let prefix = match u16::try_from(len) {
        Ok(prefix) if len >= MIN_PLAINTEXT => prefix,
        _ => return Err(Nip44Error::PlaintextLength(len)),
    };
    let padded_len = PREFIX_LEN + calc_padded_len(len)?;
    let keys = message_keys(key, nonce);

    let mut payload = Vec::with_capacity(HEADER_LEN + padded_len + MAC_LEN);
    payload.push(VERSION);
    payload.extend_from_slice(nonce);
    payload.extend_from_slice(&prefix.to_be_bytes());
    payload.extend_from_slice(plaintext);
    payload.resize(HEADER_LEN + padded_len, 0);

    // The padded plaintext is encrypted in place, so no plaintext copy outlives this call.
    // `apply_keystream` panics only past ChaCha20's 256 GiB keystream; this is <= 65538 bytes.
    let mut cipher = ChaCha20::new(keys.chacha_key().into(), keys.chacha_nonce().into());
    cipher.apply_keystream(&mut payload[HEADER_LEN..]);

    let mac = hmac_aad(&keys, nonce, &payload[HEADER_LEN..]);
    payload.extend_from_slice(&mac);
    Ok(payload)
}

/// Decrypts a RAW payload (`0x02 || nonce || ciphertext || mac`) and returns the plaintext.
///
/// Checks, in order: length bounds, version byte, MAC (constant-time comparison), padding.
///
/// # Errors
/// [`Nip44Error::InvalidPayloadLength`], [`Nip44Error::UnsupportedVersion`],
/// [`Nip44Error::InvalidMac`] or [`Nip44Error::InvalidPadding`].
pub fn decrypt(key: &ConversationKey, payload: &[u8]) -> Result<Vec<u8>, Nip44Error> {
    let len = payload.len();
    if !(MIN_PAYLOAD_LEN..=MAX_PAYLOAD_LEN).contains(&len) {
        return Err(Nip44Error::InvalidPayloadLength(len));
    }
    let (header, rest) = payload.split_at(HEADER_LEN);
    let (ciphertext, mac) = rest.split_at(rest.len() - MAC_LEN);
    let (version, nonce) = header.split_at(1);
    if version[0] != VERSION {
        return Err(Nip44Error::UnsupportedVersion(version[0]));
    }
    let nonce: &[u8; 32] =
        nonce.try_into().expect("the header is 1 version byte followed by exactly 32 nonce bytes");

    let keys = message_keys(key, nonce);
    let expected = Zeroizing::new(hmac_aad(&keys, nonce, ciphertext));
    if !bool::from(expected.as_slice().ct_eq(mac)) {
        return Err(Nip44Error::InvalidMac);
    }

    let mut padded = Zeroizing::new(ciphertext.to_vec());
    // Cannot panic: at most 65538 bytes of a 256 GiB keystream (length checked above).
    let mut cipher = ChaCha20::new(keys.chacha_key().into(), keys.chacha_nonce().into());
    cipher.apply_keystream(&mut padded);
    unpad(&padded)
}

/// [`encrypt_with_nonce`], then standard base64 (with padding): the form Nostr events and
/// the official vectors use.
///
/// # Errors
/// As [`encrypt_with_nonce`].
pub fn encrypt_with_nonce_base64(
    key: &ConversationKey,
    plaintext: &[u8],
    nonce: &[u8; 32],
) -> Result<String, Nip44Error> {
    encrypt_with_nonce(key, plaintext, nonce).map(|raw| BASE64.encode(raw))
}

/// Decrypts a base64 payload as carried by Nostr events.
///
/// Follows the NIP's decoding rules: an empty payload or one starting with `#` (reserved for
/// future non-base64 versions) is refused before any decoding, then the base64 length bounds
/// are checked, then the raw payload is decrypted with [`decrypt`].
///
/// # Errors
/// [`Nip44Error::UnsupportedEncoding`], [`Nip44Error::InvalidBase64Length`],
/// [`Nip44Error::InvalidBase64`], or any error of [`decrypt`].
pub fn decrypt_base64(key: &ConversationKey, payload: &str) -> Result<Vec<u8>, Nip44Error> {
    if payload.starts_with('#') {
        return Err(Nip44Error::UnsupportedEncoding);
    }
    let len = payload.len();
    if !(MIN_BASE64_LEN..=MAX_BASE64_LEN).contains(&len) {
        return Err(Nip44Error::InvalidBase64Length(len));
    }
    let raw = BASE64.decode(payload).map_err(|_| Nip44Error::InvalidBase64)?;
    decrypt(key, &raw)
}

/// HMAC-SHA256(hmac_key, nonce || ciphertext).
fn hmac_aad(keys: &MessageKeys, nonce: &[u8; 32], ciphertext: &[u8]) -> [u8; MAC_LEN] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(keys.hmac_key()).expect("HMAC accepts keys of any length");
    mac.update(nonce);
    mac.update(ciphertext);
    mac.finalize().into_bytes().into()
}

/// Strips the NIP-44 padding: a big-endian `u16` length `n >= 1`, then `n` bytes of message,
/// then zero or more padding bytes making the total `2 + calc_padded_len(n)`.
fn unpad(padded: &[u8]) -> Result<Vec<u8>, Nip44Error> {
    let (prefix, body) = padded.split_at_checked(PREFIX_LEN).ok_or(Nip44Error::InvalidPadding)?;
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len < MIN_PLAINTEXT {
        return Err(Nip44Error::InvalidPadding);
    }
    let expected = calc_padded_len(len).map_err(|_| Nip44Error::InvalidPadding)?;
    if body.len() != expected {
        return Err(Nip44Error::InvalidPadding);
    }
    // `expected >= len` for every length, so the slice is in bounds.
    body.get(..len).map(<[u8]>::to_vec).ok_or(Nip44Error::InvalidPadding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> ConversationKey {
        ConversationKey::from_bytes([byte; 32])
    }

    #[test]
    fn padded_lengths_follow_the_nip() {
        let cases = [
            (1, 32),
            (32, 32),
            (33, 64),
            (64, 64),
            (65, 96),
            (256, 256),
            (257, 320),
            (65535, 65536),
            (65536, 65536),
        ];
        for (len, padded) in cases {
            assert_eq!(calc_padded_len(len), Ok(padded), "len {len}");
        }
        assert_eq!(calc_padded_len(0), Err(Nip44Error::PlaintextLength(0)));
        assert!(calc_padded_len(usize::MAX).is_err());
        assert!(calc_padded_len(usize::MAX / 2 + 2).is_err());
        assert!(calc_padded_len(usize::MAX / 2 + 1).is_ok());
    }

    #[test]
    fn padded_length_is_monotone_and_covers_the_message() {
        let mut previous = 0;
        for len in 1..=MAX_PLAINTEXT {
            let padded = calc_padded_len(len).expect("valid length");
            assert!(padded >= len && padded >= previous && padded >= 32, "len {len}");
            previous = padded;
        }
    }

    #[test]
    fn plaintext_length_bounds_are_enforced() {
        let nonce = [1; 32];
        assert_eq!(encrypt_with_nonce(&key(1), b"", &nonce), Err(Nip44Error::PlaintextLength(0)));
        let too_long = vec![0_u8; MAX_PLAINTEXT + 1];
        assert_eq!(
            encrypt_with_nonce(&key(1), &too_long, &nonce),
            Err(Nip44Error::PlaintextLength(MAX_PLAINTEXT + 1))
        );
        let raw = encrypt_with_nonce(&key(1), &too_long[..MAX_PLAINTEXT], &nonce).expect("max length");
        assert_eq!(raw.len(), MAX_PAYLOAD_LEN);
        let raw = encrypt_with_nonce(&key(1), b"x", &nonce).expect("min length");
        assert_eq!(raw.len(), MIN_PAYLOAD_LEN);
        assert_eq!(BASE64.encode(&raw).len(), MIN_BASE64_LEN);
        let max = encrypt_with_nonce_base64(&key(1), &too_long[..MAX_PLAINTEXT], &nonce).expect("max");
        assert_eq!(max.len(), MAX_BASE64_LEN);
    }

    #[test]
    fn large_messages_round_trip() {
        for len in [255, 256, 257, 1024, 4097, 32768, 65534, MAX_PLAINTEXT] {
            let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let raw = encrypt_with_nonce(&key(7), &message, &[9; 32]).expect("encrypt");
            assert_eq!(raw.len(), 1 + 32 + 2 + calc_padded_len(len).expect("len") + 32);
            assert_eq!(decrypt(&key(7), &raw).expect("decrypt"), message, "len {len}");
            let b64 = encrypt_with_nonce_base64(&key(7), &message, &[9; 32]).expect("encrypt");
            assert_eq!(decrypt_base64(&key(7), &b64).expect("decrypt"), message, "len {len}");
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let raw = encrypt_with_nonce(&key(3), b"attack at dawn", &[5; 32]).expect("encrypt");
        assert_eq!(decrypt(&key(3), &raw).expect("decrypt"), b"attack at dawn");
        for bit in 0..raw.len() * 8 {
            let mut tampered = raw.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            let err = decrypt(&key(3), &tampered).expect_err("tampered payload accepted");
            if bit < 8 {
                assert_eq!(err, Nip44Error::UnsupportedVersion(raw[0] ^ (1 << bit)));
            } else {
                assert_eq!(err, Nip44Error::InvalidMac, "bit {bit}");
            }
        }
    }

    #[test]
    fn wrong_key_fails_the_mac() {
        let raw = encrypt_with_nonce(&key(3), b"hello", &[5; 32]).expect("encrypt");
        assert_eq!(decrypt(&key(4), &raw), Err(Nip44Error::InvalidMac));
    }

    #[test]
    fn truncated_and_extended_payloads_are_rejected() {
        let raw = encrypt_with_nonce(&key(3), b"hello", &[5; 32]).expect("encrypt");
        for cut in 0..raw.len() {
            assert!(decrypt(&key(3), &raw[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decrypt(&key(3), &longer).is_err());
        assert_eq!(decrypt(&key(3), &[]), Err(Nip44Error::InvalidPayloadLength(0)));
    }

    #[test]
    fn base64_front_door_checks() {
        let k = key(1);
        assert_eq!(decrypt_base64(&k, "#abc"), Err(Nip44Error::UnsupportedEncoding));
        assert_eq!(decrypt_base64(&k, ""), Err(Nip44Error::InvalidBase64Length(0)));
        let good = encrypt_with_nonce_base64(&k, b"hi", &[2; 32]).expect("encrypt");
        let mut bad = good.clone();
        bad.replace_range(10..11, "*");
        assert_eq!(decrypt_base64(&k, &bad), Err(Nip44Error::InvalidBase64));
        let huge = "A".repeat(MAX_BASE64_LEN + 4);
        assert_eq!(decrypt_base64(&k, &huge), Err(Nip44Error::InvalidBase64Length(MAX_BASE64_LEN + 4)));
    }

    #[test]
    fn padding_is_checked_after_the_mac() {
        // Forge a payload whose MAC is valid but whose length prefix lies: re-encrypt a
        // padded buffer claiming 40 bytes in a 34-byte frame.
        let k = key(8);
        let nonce = [6; 32];
        let keys = message_keys(&k, &nonce);
        let mut padded = vec![0_u8; 2 + 32];
        padded[1] = 40;
        let mut cipher = ChaCha20::new(keys.chacha_key().into(), keys.chacha_nonce().into());
        cipher.apply_keystream(&mut padded);
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&padded);
        raw.extend_from_slice(&hmac_aad(&keys, &nonce, &padded));
        assert_eq!(decrypt(&k, &raw), Err(Nip44Error::InvalidPadding));
    }

    #[test]
    fn debug_output_is_redacted() {
        assert_eq!(format!("{:?}", key(0xAB)), "ConversationKey(..)");
        assert_eq!(format!("{:?}", message_keys(&key(0xAB), &[0; 32])), "MessageKeys(..)");
    }

    proptest! {
        #[test]
        fn round_trip(
            message in proptest::collection::vec(any::<u8>(), 1..=2000),
            key_bytes in any::<[u8; 32]>(),
            nonce in any::<[u8; 32]>(),
        ) {
            let k = ConversationKey::from_bytes(key_bytes);
            let raw = encrypt_with_nonce(&k, &message, &nonce).expect("encrypt");
            prop_assert_eq!(decrypt(&k, &raw).expect("decrypt"), message.clone());
            let b64 = encrypt_with_nonce_base64(&k, &message, &nonce).expect("encrypt");
            prop_assert_eq!(decrypt_base64(&k, &b64).expect("decrypt"), message);
        }

        #[test]
        fn any_flipped_bit_fails(
            message in proptest::collection::vec(any::<u8>(), 1..=600),
            key_bytes in any::<[u8; 32]>(),
            nonce in any::<[u8; 32]>(),
            bit in any::<usize>(),
        ) {
            let k = ConversationKey::from_bytes(key_bytes);
            let mut raw = encrypt_with_nonce(&k, &message, &nonce).expect("encrypt");
            let bit = bit % (raw.len() * 8);
            raw[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decrypt(&k, &raw).is_err());
        }

        #[test]
        fn arbitrary_input_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 0..=300),
            text in ".{0,200}",
        ) {
            let k = key(1);
            let _ = decrypt(&k, &payload);
            let _ = decrypt_base64(&k, &text);
        }
    }
}
