//! Encrypted secret keys: NIP-49 `ncryptsec` strings and the Pigeonhole key file built on them.
//!
//! # `ncryptsec` (NIP-49)
//!
//! A secret key is encrypted under a passphrase exactly as Nostr's
//! [NIP-49](https://github.com/nostr-protocol/nips/blob/master/49.md) specifies, so a key can
//! move between Pigeonhole and Nostr clients:
//!
//! 1. the passphrase is normalized to Unicode NFKC;
//! 2. `symmetric_key = scrypt(passphrase, salt, N = 2^log_n, r = 8, p = 1)`, 32 bytes;
//! 3. the 32 secret-key bytes are sealed with XChaCha20-Poly1305 under that key, a 24-byte
//!    nonce and, as associated data, the one [`KeySecurity`] byte;
//! 4. the 91-byte payload `0x02 || log_n || salt(16) || nonce(24) || key_security(1) ||
//!    ciphertext(32) || tag(16)` is written in bech32 (the original BIP-173 checksum, not
//!    bech32m) with the prefix `ncryptsec`.
//!
//! scrypt's memory is `1 KiB * 2^log_n` (64 MiB at [`DEFAULT_LOG_N`]). Decryption refuses
//! `log_n` above [`MAX_LOG_N`] before running scrypt, so a hostile or damaged file cannot make
//! the process allocate more than 4 GiB. [`encrypt`] and [`KeyFile::seal`] refuse `log_n`
//! below [`MIN_LOG_N`]; the deterministic forms [`encrypt_with_nonce`] and
//! [`KeyFile::seal_with_nonce`] accept any `log_n` from 1 so that tests and test vectors can
//! use cheap parameters.
//!
//! # Key file
//!
//! [`KeyFile`] is the JSON document Pigeonhole stores on disk:
//! `{"type":"PigeonholeKey","v":1,"pubkey":"<hex>","ncryptsec":"ncryptsec1..."}`. The public
//! key is in the clear so a client can show who the file belongs to without the passphrase;
//! [`KeyFile::open`] checks that the decrypted secret key really belongs to it.
//!
//! The scrypt output, the normalized passphrase and the decrypted key bytes are held in
//! buffers that are zeroized when dropped.

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use crate::keys::{PublicKey, SecretKey};

/// Human-readable part of an encrypted secret key (`ncryptsec1...`).
pub const NCRYPTSEC_HRP: &str = "ncryptsec";
/// The only NIP-49 payload version this module reads and writes.
pub const NCRYPTSEC_VERSION: u8 = 0x02;
/// Length in bytes of the NIP-49 payload before bech32 encoding.
pub const NCRYPTSEC_PAYLOAD_LEN: usize = 91;
/// The `log_n` used when the caller has no reason to choose another (64 MiB, roughly 0.1 s).
pub const DEFAULT_LOG_N: u8 = 16;
/// The smallest `log_n` that [`encrypt`] and [`KeyFile::seal`] accept (16 MiB).
pub const MIN_LOG_N: u8 = 14;
/// The largest `log_n` accepted anywhere, and in particular when decrypting: 22 needs 4 GiB of
/// memory, the largest setting NIP-49 lists. Files with a larger `log_n` are refused before
/// scrypt runs.
pub const MAX_LOG_N: u8 = 22;
/// The `type` of a Pigeonhole key file.
pub const KEY_FILE_TYPE: &str = "PigeonholeKey";
/// The version (`v`) of the Pigeonhole key file format written and read here.
pub const KEY_FILE_VERSION: u64 = 1;

/// scrypt's block-size parameter `r`, fixed by NIP-49.
const SCRYPT_R: u32 = 8;
/// scrypt's parallelism parameter `p`, fixed by NIP-49.
const SCRYPT_P: u32 = 1;

/// Why a key could not be encrypted, or an `ncryptsec` string or key file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// Not a bech32 string: bad characters, mixed case, wrong checksum (bech32m is not
    /// accepted), bad padding or too long.
    #[error("invalid bech32 string: {0}")]
    InvalidBech32(String),
    /// A valid bech32 string whose prefix is not `ncryptsec`.
    #[error("unexpected prefix `{0}`; expected `ncryptsec`")]
    WrongPrefix(String),
    /// The payload's version byte is not 0x02.
    #[error("unsupported ncryptsec version {0:#04x}; only version 0x02 is supported")]
    UnsupportedVersion(u8),
    /// The scrypt cost is above [`MAX_LOG_N`]; refused without running scrypt.
    #[error(
        "scrypt log_n {log_n} would need {need} of memory; the maximum accepted is {max} ({limit})",
        need = scrypt_memory(*.log_n),
        limit = scrypt_memory(*.max)
    )]
    LogNTooLarge {
        /// The `log_n` asked for.
        log_n: u8,
        /// The largest `log_n` accepted.
        max: u8,
    },
    /// The scrypt cost is below the minimum for this operation.
    #[error("scrypt log_n {log_n} is below the minimum of {min}")]
    LogNTooSmall {
        /// The `log_n` asked for.
        log_n: u8,
        /// The smallest `log_n` accepted.
        min: u8,
    },
    /// Authenticated decryption failed: the passphrase is wrong, or the payload was altered.
    #[error("wrong passphrase or corrupted key file")]
    WrongPassword,
    /// The payload is not 91 bytes long.
    #[error("ncryptsec payload is {0} bytes; expected 91")]
    InvalidLength(usize),
    /// The key-security byte is not 0x00, 0x01 or 0x02.
    #[error("invalid key security byte {0:#04x}; expected 0x00, 0x01 or 0x02")]
    InvalidKeySecurity(u8),
    /// The decrypted bytes are not a valid secret key (zero, or not below the curve order).
    #[error("the decrypted bytes are not a valid secp256k1 secret key")]
    InvalidSecretKey,
    /// The key file decrypted, but to a secret key of another public key.
    #[error("the key file's public key does not match its decrypted secret key")]
    PubkeyMismatch,
    /// The key file is not well-formed JSON of the expected shape.
    #[error("invalid key file JSON: {0}")]
    Json(String),
    /// The key file's `type` is not `PigeonholeKey`.
    #[error("not a Pigeonhole key file: type is `{0}`, expected `PigeonholeKey`")]
    WrongFileType(String),
    /// The key file's `v` is not a version this code reads.
    #[error("unsupported key file version {0}; expected 1")]
    UnsupportedFileVersion(u64),
}

/// Memory scrypt needs for `log_n` with NIP-49's `r = 8`: `128 * r * 2^log_n` bytes.
fn scrypt_memory(log_n: u8) -> String {
    let exponent = u32::from(log_n) + 10;
    match exponent {
        0..=19 => format!("{} KiB", 1u64 << (exponent - 10)),
        20..=29 => format!("{} MiB", 1u64 << (exponent - 20)),
        30..=93 => format!("{} GiB", 1u128 << (exponent - 30)),
        _ => format!("2^{exponent} bytes"),
    }
}

/// How the key was handled before it was encrypted: NIP-49's key-security byte. It is
/// authenticated (the associated data) but not encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeySecurity {
    /// The key is known to have been handled insecurely (stored or pasted unencrypted).
    Insecure = 0,
    /// The key is not known to have been handled insecurely.
    Secure = 1,
    /// The client does not track how the key was handled.
    Unknown = 2,
}

impl KeySecurity {
    /// The byte written in the payload.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Parses the payload byte; anything but 0, 1 or 2 is an error.
    pub fn from_byte(byte: u8) -> Result<Self, KeyFileError> {
        match byte {
            0 => Ok(Self::Insecure),
            1 => Ok(Self::Secure),
            2 => Ok(Self::Unknown),
            other => Err(KeyFileError::InvalidKeySecurity(other)),
        }
    }
}

impl TryFrom<u8> for KeySecurity {
    type Error = KeyFileError;
    fn try_from(byte: u8) -> Result<Self, Self::Error> {
        Self::from_byte(byte)
    }
}

/// Encrypts `key` under `password` with the given scrypt cost, salt and nonce (the
/// deterministic form, for test vectors). `log_n` may be anything from 1 to [`MAX_LOG_N`];
/// production callers should use [`encrypt`], which also enforces [`MIN_LOG_N`] and draws
/// the salt and nonce. Never reuse a salt and nonce pair.
pub fn encrypt_with_nonce(
    key: &SecretKey,
    password: &str,
    log_n: u8,
    salt: [u8; 16],
    nonce: [u8; 24],
    security: KeySecurity,
) -> Result<String, KeyFileError> {
    encrypt_bytes(&key.to_bytes(), password, log_n, salt, nonce, security)
}

/// Encrypts `key` under `password`, drawing a fresh salt and nonce from `rng`. `log_n` must be
/// between [`MIN_LOG_N`] and [`MAX_LOG_N`]; [`DEFAULT_LOG_N`] is a sound choice.
pub fn encrypt<R: rand_core::RngCore + rand_core::CryptoRng>(
    key: &SecretKey,
    password: &str,
    log_n: u8,
    security: KeySecurity,
    rng: &mut R,
) -> Result<String, KeyFileError> {
    if log_n < MIN_LOG_N {
        return Err(KeyFileError::LogNTooSmall { log_n, min: MIN_LOG_N });
    }
    check_log_n(log_n)?;
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    encrypt_with_nonce(key, password, log_n, salt, nonce, security)
}

/// Decrypts an `ncryptsec1...` string with `password`, returning the secret key and the
/// key-security byte it was stored with. Surrounding whitespace is ignored. The payload is
/// fully checked (prefix, checksum, version, length, `log_n` at most [`MAX_LOG_N`],
/// key-security byte) before scrypt runs.
pub fn decrypt(ncryptsec: &str, password: &str) -> Result<(SecretKey, KeySecurity), KeyFileError> {
    let payload = Payload::parse(ncryptsec)?;
    let symmetric_key = derive_key(password, &payload.salt, payload.log_n)?;
    let cipher =
        XChaCha20Poly1305::new_from_slice(&symmetric_key[..]).map_err(|_| KeyFileError::WrongPassword)?;
    let mut plaintext = Zeroizing::new(payload.ciphertext);
    cipher
        .decrypt_inout_detached(
            &XNonce::from(payload.nonce),
            &[payload.security.to_byte()],
            plaintext.as_mut_slice().into(),
            &Tag::from(payload.tag),
        )
        .map_err(|_| KeyFileError::WrongPassword)?;
    let key = SecretKey::from_bytes(&plaintext).map_err(|_| KeyFileError::InvalidSecretKey)?;
    Ok((key, payload.security))
}

/// Encrypts 32 raw bytes; separate from [`encrypt_with_nonce`] so tests can seal bytes that
/// are not a valid secret key.
fn encrypt_bytes(
    secret: &[u8; 32],
    password: &str,
    log_n: u8,
    salt: [u8; 16],
    nonce: [u8; 24],
    security: KeySecurity,
) -> Result<String, KeyFileError> {
    if log_n == 0 {
        return Err(KeyFileError::LogNTooSmall { log_n, min: 1 });
    }
    check_log_n(log_n)?;
    let symmetric_key = derive_key(password, &salt, log_n)?;
    let cipher =
        XChaCha20Poly1305::new_from_slice(&symmetric_key[..]).map_err(|_| KeyFileError::WrongPassword)?;
    // Encrypted in place: the buffer holds the secret until the cipher overwrites it.
    let mut buffer = Zeroizing::new(*secret);
    let security_byte = security.to_byte();
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(nonce), &[security_byte], buffer.as_mut_slice().into())
        .map_err(|_| KeyFileError::WrongPassword)?;

    let mut payload = Vec::with_capacity(NCRYPTSEC_PAYLOAD_LEN);
    payload.push(NCRYPTSEC_VERSION);
    payload.push(log_n);
    payload.extend_from_slice(&salt);
    payload.extend_from_slice(&nonce);
    payload.push(security_byte);
    payload.extend_from_slice(&buffer[..]);
    payload.extend_from_slice(tag.as_slice());
    let hrp = Hrp::parse(NCRYPTSEC_HRP).map_err(|e| KeyFileError::InvalidBech32(e.to_string()))?;
    bech32::encode::<Bech32>(hrp, &payload).map_err(|e| KeyFileError::InvalidBech32(e.to_string()))
}

/// Refuses a `log_n` above [`MAX_LOG_N`].
fn check_log_n(log_n: u8) -> Result<(), KeyFileError> {
    if log_n > MAX_LOG_N {
        return Err(KeyFileError::LogNTooLarge { log_n, max: MAX_LOG_N });
    }
    Ok(())
}

/// NFKC-normalizes the passphrase into a buffer that zeroizes itself.
fn normalize_password(password: &str) -> Zeroizing<String> {
    Zeroizing::new(password.nfkc().collect())
}

/// `scrypt(NFKC(password), salt, 2^log_n, 8, 1)` into 32 self-zeroizing bytes.
fn derive_key(password: &str, salt: &[u8; 16], log_n: u8) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    check_log_n(log_n)?;
    let params = scrypt::Params::new(log_n, SCRYPT_R, SCRYPT_P)
        .map_err(|_| KeyFileError::LogNTooLarge { log_n, max: MAX_LOG_N })?;
    let password = normalize_password(password);
    let mut output = Zeroizing::new([0u8; 32]);
    // Only fails for an empty or enormous output buffer; ours is 32 bytes.
    scrypt::scrypt(password.as_bytes(), salt, &params, output.as_mut_slice())
        .map_err(|_| KeyFileError::WrongPassword)?;
    Ok(output)
}

/// The fields of a checked NIP-49 payload.
struct Payload {
    log_n: u8,
    salt: [u8; 16],
    nonce: [u8; 24],
    security: KeySecurity,
    ciphertext: [u8; 32],
    tag: [u8; 16],
}

impl Payload {
    /// Decodes and checks everything that can be checked without the passphrase.
    fn parse(text: &str) -> Result<Self, KeyFileError> {
        let checked = CheckedHrpstring::new::<Bech32>(text.trim())
            .map_err(|e| KeyFileError::InvalidBech32(e.to_string()))?;
        if !checked.hrp().as_str().eq_ignore_ascii_case(NCRYPTSEC_HRP) {
            return Err(KeyFileError::WrongPrefix(checked.hrp().to_lowercase()));
        }
        checked.validate_segwit_padding().map_err(|e| KeyFileError::InvalidBech32(e.to_string()))?;
        let bytes: Vec<u8> = checked.byte_iter().collect();

        let Some((&version, _)) = bytes.split_first() else {
            return Err(KeyFileError::InvalidLength(0));
        };
        if version != NCRYPTSEC_VERSION {
            return Err(KeyFileError::UnsupportedVersion(version));
        }
        let invalid_length = || KeyFileError::InvalidLength(bytes.len());
        let array: &[u8; NCRYPTSEC_PAYLOAD_LEN] =
            bytes.as_slice().try_into().map_err(|_| invalid_length())?;
        let (&[_version, log_n], rest) = array.split_first_chunk::<2>().ok_or_else(invalid_length)?;
        let (salt, rest) = rest.split_first_chunk::<16>().ok_or_else(invalid_length)?;
        let (nonce, rest) = rest.split_first_chunk::<24>().ok_or_else(invalid_length)?;
        let (&[security], rest) = rest.split_first_chunk::<1>().ok_or_else(invalid_length)?;
        let (ciphertext, tag) = rest.split_first_chunk::<32>().ok_or_else(invalid_length)?;
        let tag: &[u8; 16] = tag.try_into().map_err(|_| invalid_length())?;

        if log_n == 0 {
            return Err(KeyFileError::LogNTooSmall { log_n, min: 1 });
        }
        check_log_n(log_n)?;
        let security = KeySecurity::from_byte(security)?;
        Ok(Self { log_n, salt: *salt, nonce: *nonce, security, ciphertext: *ciphertext, tag: *tag })
    }
}

/// A Pigeonhole key file: the public key in the clear and the secret key as a NIP-49
/// `ncryptsec` string. Serialized as
/// `{"type":"PigeonholeKey","v":1,"pubkey":"<hex>","ncryptsec":"ncryptsec1..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The identity the file holds the secret key of.
    pub pubkey: PublicKey,
    /// The secret key, encrypted under the passphrase (NIP-49).
    pub ncryptsec: String,
}

/// The strict JSON shape of a key file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "v")]
    _version: u64,
    pubkey: PublicKey,
    ncryptsec: String,
}

/// Just the fields that say what a JSON document is, read before the strict parse so that a
/// newer or foreign file gets a precise error rather than "unknown field".
#[derive(serde::Deserialize)]
struct KeyFileHeader {
    #[serde(rename = "type")]
    kind: String,
    v: u64,
}

impl KeyFile {
    /// Encrypts `key` under `password` with a fresh salt and nonce from `rng`. `log_n` must be
    /// between [`MIN_LOG_N`] and [`MAX_LOG_N`]. The key-security byte is
    /// [`KeySecurity::Unknown`]: sealing does not know the key's history.
    pub fn seal<R: rand_core::RngCore + rand_core::CryptoRng>(
        key: &SecretKey,
        password: &str,
        log_n: u8,
        rng: &mut R,
    ) -> Result<Self, KeyFileError> {
        let ncryptsec = encrypt(key, password, log_n, KeySecurity::Unknown, rng)?;
        Ok(Self { pubkey: key.public_key(), ncryptsec })
    }

    /// The deterministic form of [`KeyFile::seal`], for tests and vectors: any `log_n` from 1
    /// to [`MAX_LOG_N`], caller-chosen salt and nonce (never reuse them).
    pub fn seal_with_nonce(
        key: &SecretKey,
        password: &str,
        log_n: u8,
        salt: [u8; 16],
        nonce: [u8; 24],
    ) -> Result<Self, KeyFileError> {
        let ncryptsec = encrypt_with_nonce(key, password, log_n, salt, nonce, KeySecurity::Unknown)?;
        Ok(Self { pubkey: key.public_key(), ncryptsec })
    }

    /// Decrypts the secret key and checks that it belongs to [`KeyFile::pubkey`].
    pub fn open(&self, password: &str) -> Result<SecretKey, KeyFileError> {
        let (key, _security) = decrypt(&self.ncryptsec, password)?;
        if key.public_key() != self.pubkey {
            return Err(KeyFileError::PubkeyMismatch);
        }
        Ok(key)
    }

    /// The compact JSON form, fields in the order `type`, `v`, `pubkey`, `ncryptsec`.
    pub fn to_json(&self) -> String {
        // serde_json::Value's Display cannot fail and escapes the string as JSON requires.
        let ncryptsec = serde_json::Value::String(self.ncryptsec.clone());
        format!(
            "{{\"type\":\"{KEY_FILE_TYPE}\",\"v\":{KEY_FILE_VERSION},\"pubkey\":\"{}\",\"ncryptsec\":{ncryptsec}}}",
            self.pubkey.to_hex()
        )
    }

    /// Parses the JSON form. Unknown fields, a `type` other than `PigeonholeKey`, a `v` other
    /// than 1, an invalid public key and an `ncryptsec` that fails the checks possible without
    /// the passphrase (see [`decrypt`]) are all errors.
    pub fn from_json(text: &str) -> Result<Self, KeyFileError> {
        let header: KeyFileHeader =
            serde_json::from_str(text).map_err(|e| KeyFileError::Json(e.to_string()))?;
        if header.kind != KEY_FILE_TYPE {
            return Err(KeyFileError::WrongFileType(header.kind));
        }
        if header.v != KEY_FILE_VERSION {
            return Err(KeyFileError::UnsupportedFileVersion(header.v));
        }
        let parsed: KeyFileJson =
            serde_json::from_str(text).map_err(|e| KeyFileError::Json(e.to_string()))?;
        Payload::parse(&parsed.ncryptsec)?;
        Ok(Self { pubkey: parsed.pubkey, ncryptsec: parsed.ncryptsec })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::time::{Duration, Instant};

    /// The NIP-49 test vector: password "nostr", log_n 16.
    const NIP49_NCRYPTSEC: &str = "ncryptsec1qgg9947rlpvqu76pj5ecreduf9jxhselq2nae2kghhvd5g7dgjtcxfqtd67p9m0w57lspw8gsq6yphnm8623nsl8xn9j4jdzz84zm3frztj3z7s35vpzmqf6ksu8r89qk5z2zxfmu5gv8th8wclt0h4p";
    const NIP49_SECRET_HEX: &str = "3501454135014541350145413501453fefb02227e449e57cf4d3a3ce05378683";

    /// Cheap scrypt for tests. 7 is chosen so that flipping any bit of the log_n byte gives
    /// either another cheap value (6, 5, 3, 15) or one above MAX_LOG_N (23, 39, 71, 135),
    /// never a multi-gigabyte run.
    const TEST_LOG_N: u8 = 7;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
    }

    fn payload_bytes(ncryptsec: &str) -> Vec<u8> {
        let checked = CheckedHrpstring::new::<Bech32>(ncryptsec).expect("valid bech32");
        checked.byte_iter().collect()
    }

    fn encode(payload: &[u8]) -> String {
        bech32::encode::<Bech32>(Hrp::parse(NCRYPTSEC_HRP).expect("hrp"), payload).expect("fits")
    }

    fn small(key: &SecretKey, password: &str, security: KeySecurity) -> String {
        encrypt_with_nonce(key, password, TEST_LOG_N, [1; 16], [2; 24], security).expect("encrypts")
    }

    #[test]
    fn nip49_vector_decrypts() {
        let (secret, security) = decrypt(NIP49_NCRYPTSEC, "nostr").expect("official vector decrypts");
        assert_eq!(hex::encode(*secret.to_bytes()), NIP49_SECRET_HEX);
        let payload = payload_bytes(NIP49_NCRYPTSEC);
        assert_eq!(payload.len(), NCRYPTSEC_PAYLOAD_LEN);
        assert_eq!(payload[0], NCRYPTSEC_VERSION);
        assert_eq!(payload[1], 16);
        assert_eq!(KeySecurity::from_byte(payload[42]), Ok(security));
    }

    #[test]
    fn nip49_vector_reencrypts_byte_for_byte() {
        // Encrypting the vector's key with the vector's salt, nonce and security byte must
        // give the vector's exact string: checks the encryption side and the bech32 variant.
        let payload = payload_bytes(NIP49_NCRYPTSEC);
        let salt: [u8; 16] = payload[2..18].try_into().expect("16 bytes");
        let nonce: [u8; 24] = payload[18..42].try_into().expect("24 bytes");
        let security = KeySecurity::from_byte(payload[42]).expect("valid byte");
        let secret = SecretKey::parse(NIP49_SECRET_HEX).expect("valid key");
        let again = encrypt_with_nonce(&secret, "nostr", 16, salt, nonce, security).expect("encrypts");
        assert_eq!(again, NIP49_NCRYPTSEC);
    }

    #[test]
    fn nip49_vector_wrong_password_fails() {
        assert_eq!(decrypt(NIP49_NCRYPTSEC, "Nostr").err(), Some(KeyFileError::WrongPassword));
        assert_eq!(KeyFileError::WrongPassword.to_string(), "wrong passphrase or corrupted key file");
    }

    #[test]
    fn nfkc_normalization_matches_nip49_example() {
        // NIP-49: "ÅΩẛ̣" (U+212B U+2126 U+1E9B U+0323) normalizes to "ÅΩṩ" (U+00C5 U+03A9 U+1E69).
        let input = "\u{212B}\u{2126}\u{1E9B}\u{0323}";
        assert_eq!(input.as_bytes(), [0xE2, 0x84, 0xAB, 0xE2, 0x84, 0xA6, 0xE1, 0xBA, 0x9B, 0xCC, 0xA3]);
        let normalized = normalize_password(input);
        assert_eq!(normalized.as_bytes(), [0xC3, 0x85, 0xCE, 0xA9, 0xE1, 0xB9, 0xA9]);

        // End to end: either spelling opens a key sealed under the other.
        let secret = key(4);
        let sealed = small(&secret, input, KeySecurity::Secure);
        let (opened, _) = decrypt(&sealed, "\u{00C5}\u{03A9}\u{1E69}").expect("normalized form opens");
        assert_eq!(opened, secret);
        let sealed = small(&secret, "\u{00C5}\u{03A9}\u{1E69}", KeySecurity::Secure);
        assert_eq!(decrypt(&sealed, input).expect("raw form opens").0, secret);
    }

    #[test]
    fn round_trip_keeps_key_and_security() {
        for security in [KeySecurity::Insecure, KeySecurity::Secure, KeySecurity::Unknown] {
            let secret = key(9);
            let text = small(&secret, "correct horse", security);
            assert!(text.starts_with("ncryptsec1"));
            assert_eq!(payload_bytes(&text).len(), NCRYPTSEC_PAYLOAD_LEN);
            let (opened, got) = decrypt(&text, "correct horse").expect("decrypts");
            assert_eq!(opened, secret);
            assert_eq!(got, security);
            // Whitespace around the string and upper case are accepted.
            let padded = format!("  {}\n", text.to_uppercase());
            assert_eq!(decrypt(&padded, "correct horse").expect("decrypts").0, secret);
            assert_eq!(decrypt(&text, "correct horsE").err(), Some(KeyFileError::WrongPassword));
            assert_eq!(decrypt(&text, "").err(), Some(KeyFileError::WrongPassword));
        }
    }

    #[test]
    fn encrypt_draws_salt_and_nonce_and_enforces_bounds() {
        let mut rng = StdRng::seed_from_u64(1);
        let secret = key(5);
        let a = encrypt(&secret, "pw", MIN_LOG_N, KeySecurity::Secure, &mut rng).expect("encrypts");
        let b = encrypt(&secret, "pw", MIN_LOG_N, KeySecurity::Secure, &mut rng).expect("encrypts");
        assert_ne!(a, b, "fresh salt and nonce each time");
        assert_eq!(decrypt(&a, "pw").expect("decrypts"), (secret.clone(), KeySecurity::Secure));
        assert_eq!(
            encrypt(&secret, "pw", MIN_LOG_N - 1, KeySecurity::Secure, &mut rng).err(),
            Some(KeyFileError::LogNTooSmall { log_n: MIN_LOG_N - 1, min: MIN_LOG_N })
        );
        assert_eq!(
            encrypt(&secret, "pw", MAX_LOG_N + 1, KeySecurity::Secure, &mut rng).err(),
            Some(KeyFileError::LogNTooLarge { log_n: MAX_LOG_N + 1, max: MAX_LOG_N })
        );
        assert_eq!(
            encrypt_with_nonce(&secret, "pw", 0, [0; 16], [0; 24], KeySecurity::Secure).err(),
            Some(KeyFileError::LogNTooSmall { log_n: 0, min: 1 })
        );
        assert_eq!(
            encrypt_with_nonce(&secret, "pw", 200, [0; 16], [0; 24], KeySecurity::Secure).err(),
            Some(KeyFileError::LogNTooLarge { log_n: 200, max: MAX_LOG_N })
        );
    }

    #[test]
    fn every_flipped_payload_bit_fails() {
        let secret = key(7);
        let text = small(&secret, "pw", KeySecurity::Secure);
        let payload = payload_bytes(&text);
        for index in 0..payload.len() {
            for bit in 0..8 {
                let mut damaged = payload.clone();
                damaged[index] ^= 1 << bit;
                let result = decrypt(&encode(&damaged), "pw");
                let error = result.err().unwrap_or_else(|| panic!("flip of byte {index} bit {bit} accepted"));
                match index {
                    0 => assert_eq!(error, KeyFileError::UnsupportedVersion(damaged[0])),
                    1 if damaged[1] > MAX_LOG_N => {
                        assert_eq!(error, KeyFileError::LogNTooLarge { log_n: damaged[1], max: MAX_LOG_N })
                    }
                    42 if damaged[42] > 2 => assert_eq!(error, KeyFileError::InvalidKeySecurity(damaged[42])),
                    _ => assert_eq!(error, KeyFileError::WrongPassword, "byte {index} bit {bit}"),
                }
            }
        }
    }

    #[test]
    fn every_substituted_character_fails() {
        const CHARSET: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
        let text = small(&key(8), "pw", KeySecurity::Unknown);
        let separator = text.rfind('1').expect("separator");
        let chars: Vec<char> = text.chars().collect();
        for position in 0..chars.len() {
            let replacements: Vec<char> = if position > separator {
                CHARSET.chars().filter(|&c| c != chars[position]).collect()
            } else {
                // In the prefix and separator, any other letter changes the string too.
                "abcdefghijklmnopqrstuvwxyz1".chars().filter(|&c| c != chars[position]).collect()
            };
            for replacement in replacements {
                let mut damaged = chars.clone();
                damaged[position] = replacement;
                let damaged: String = damaged.into_iter().collect();
                assert!(decrypt(&damaged, "pw").is_err(), "substitution at {position} accepted");
            }
        }
    }

    #[test]
    fn truncated_and_extended_inputs_fail() {
        let text = small(&key(6), "pw", KeySecurity::Secure);
        // Cut text: the checksum no longer matches (or the string is not bech32 at all).
        for cut in 0..text.len() {
            assert!(decrypt(&text[..cut], "pw").is_err(), "cut at {cut} accepted");
        }
        // Cut or extended payload with a valid checksum: a length error before scrypt.
        let payload = payload_bytes(&text);
        for len in 1..payload.len() {
            assert_eq!(decrypt(&encode(&payload[..len]), "pw").err(), Some(KeyFileError::InvalidLength(len)));
        }
        assert_eq!(decrypt(&encode(&[]), "pw").err(), Some(KeyFileError::InvalidLength(0)));
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decrypt(&encode(&longer), "pw").err(), Some(KeyFileError::InvalidLength(92)));
    }

    #[test]
    fn log_n_above_max_is_refused_without_running_scrypt() {
        let payload = payload_bytes(&small(&key(3), "pw", KeySecurity::Secure));
        // 23 would need 8 GiB and 64 would overflow: if scrypt ran, this test would take
        // minutes or abort on allocation.
        for log_n in [MAX_LOG_N + 1, 40, 64, 255] {
            let mut damaged = payload.clone();
            damaged[1] = log_n;
            let started = Instant::now();
            let error = decrypt(&encode(&damaged), "pw").err();
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(error, Some(KeyFileError::LogNTooLarge { log_n, max: MAX_LOG_N }));
        }
        let message = KeyFileError::LogNTooLarge { log_n: 23, max: 22 }.to_string();
        assert_eq!(message, "scrypt log_n 23 would need 8 GiB of memory; the maximum accepted is 22 (4 GiB)");
        let mut zero = payload.clone();
        zero[1] = 0;
        assert_eq!(
            decrypt(&encode(&zero), "pw").err(),
            Some(KeyFileError::LogNTooSmall { log_n: 0, min: 1 })
        );
    }

    #[test]
    fn structural_errors_are_typed() {
        let text = small(&key(2), "pw", KeySecurity::Secure);
        let payload = payload_bytes(&text);
        // bech32m instead of bech32.
        let bech32m = bech32::encode::<bech32::Bech32m>(Hrp::parse(NCRYPTSEC_HRP).expect("hrp"), &payload)
            .expect("fits");
        assert!(matches!(decrypt(&bech32m, "pw"), Err(KeyFileError::InvalidBech32(_))));
        // Another prefix.
        let nsec = bech32::encode::<Bech32>(Hrp::parse("nsec").expect("hrp"), &payload).expect("fits");
        assert_eq!(decrypt(&nsec, "pw").err(), Some(KeyFileError::WrongPrefix("nsec".to_owned())));
        // Version 1 and a bad security byte.
        let mut v1 = payload.clone();
        v1[0] = 1;
        assert_eq!(decrypt(&encode(&v1), "pw").err(), Some(KeyFileError::UnsupportedVersion(1)));
        let mut bad_security = payload.clone();
        bad_security[42] = 3;
        assert_eq!(decrypt(&encode(&bad_security), "pw").err(), Some(KeyFileError::InvalidKeySecurity(3)));
        // Mixed case and garbage.
        let mixed = format!("N{}", &text[1..]);
        assert!(matches!(decrypt(&mixed, "pw"), Err(KeyFileError::InvalidBech32(_))));
        for garbage in ["", "ncryptsec1", "1", "\u{0}", "ncryptsec1\u{e9}", "nsec1qqqq"] {
            assert!(decrypt(garbage, "pw").is_err(), "{garbage:?} accepted");
        }
    }

    #[test]
    fn invalid_decrypted_scalar_is_reported() {
        for bytes in [[0u8; 32], [0xff; 32]] {
            let text = encrypt_bytes(&bytes, "pw", TEST_LOG_N, [0; 16], [0; 24], KeySecurity::Secure)
                .expect("encrypts");
            assert_eq!(decrypt(&text, "pw").err(), Some(KeyFileError::InvalidSecretKey));
        }
    }

    #[test]
    fn key_file_round_trip_and_json_shape() {
        let secret = key(11);
        let file = KeyFile::seal_with_nonce(&secret, "pw", TEST_LOG_N, [5; 16], [6; 24]).expect("seals");
        let json = file.to_json();
        let expected = format!(
            "{{\"type\":\"PigeonholeKey\",\"v\":1,\"pubkey\":\"{}\",\"ncryptsec\":\"{}\"}}",
            secret.public_key().to_hex(),
            file.ncryptsec
        );
        assert_eq!(json, expected);
        let parsed = KeyFile::from_json(&json).expect("parses");
        assert_eq!(parsed, file);
        assert_eq!(parsed.open("pw").expect("opens"), secret);
        assert_eq!(parsed.open("wrong").err(), Some(KeyFileError::WrongPassword));
        // Whitespace and field order do not matter.
        let reordered = format!(
            "{{ \"ncryptsec\": \"{}\", \"pubkey\": \"{}\", \"v\": 1, \"type\": \"PigeonholeKey\" }}\n",
            file.ncryptsec,
            secret.public_key().to_hex()
        );
        assert_eq!(KeyFile::from_json(&reordered).expect("parses"), file);
    }

    #[test]
    fn key_file_seal_uses_rng() {
        let mut rng = StdRng::seed_from_u64(7);
        let secret = key(12);
        let file = KeyFile::seal(&secret, "pw", MIN_LOG_N, &mut rng).expect("seals");
        assert_eq!(file.pubkey, secret.public_key());
        assert_eq!(file.open("pw").expect("opens"), secret);
        assert_eq!(decrypt(&file.ncryptsec, "pw").expect("decrypts").1, KeySecurity::Unknown);
        assert_eq!(
            KeyFile::seal(&secret, "pw", 10, &mut rng).err(),
            Some(KeyFileError::LogNTooSmall { log_n: 10, min: MIN_LOG_N })
        );
    }

    #[test]
    fn key_file_pubkey_mismatch() {
        let file = KeyFile::seal_with_nonce(&key(13), "pw", TEST_LOG_N, [0; 16], [0; 24]).expect("seals");
        let swapped = KeyFile { pubkey: key(14).public_key(), ncryptsec: file.ncryptsec.clone() };
        assert_eq!(swapped.open("pw").err(), Some(KeyFileError::PubkeyMismatch));
        // The mismatch survives JSON (it can only be detected with the passphrase).
        let reparsed = KeyFile::from_json(&swapped.to_json()).expect("parses");
        assert_eq!(reparsed.open("pw").err(), Some(KeyFileError::PubkeyMismatch));
    }

    #[test]
    fn key_file_json_errors_are_typed() {
        let file = KeyFile::seal_with_nonce(&key(15), "pw", TEST_LOG_N, [0; 16], [0; 24]).expect("seals");
        let pk = file.pubkey.to_hex();
        let ns = &file.ncryptsec;
        let doc = |kind: &str, v: &str, extra: &str| {
            format!("{{\"type\":\"{kind}\",\"v\":{v},\"pubkey\":\"{pk}\",\"ncryptsec\":\"{ns}\"{extra}}}")
        };
        assert_eq!(
            KeyFile::from_json(&doc("NostrKey", "1", "")).err(),
            Some(KeyFileError::WrongFileType("NostrKey".to_owned()))
        );
        assert_eq!(
            KeyFile::from_json(&doc("PigeonholeKey", "2", "")).err(),
            Some(KeyFileError::UnsupportedFileVersion(2))
        );
        // A newer version with new fields still reports the version, not the field.
        assert_eq!(
            KeyFile::from_json(&doc("PigeonholeKey", "2", ",\"kdf\":\"argon2\"")).err(),
            Some(KeyFileError::UnsupportedFileVersion(2))
        );
        for bad in [
            doc("PigeonholeKey", "1", ",\"extra\":1"),
            doc("PigeonholeKey", "\"1\"", ""),
            doc("PigeonholeKey", "-1", ""),
            doc("PigeonholeKey", "1.5", ""),
            doc("PigeonholeKey", "1", ",\"pubkey\":\"00\""),
            format!("{{\"type\":\"PigeonholeKey\",\"v\":1,\"ncryptsec\":\"{ns}\"}}"),
            format!("{{\"type\":\"PigeonholeKey\",\"v\":1,\"pubkey\":\"{pk}\"}}"),
            format!("{{\"type\":\"PigeonholeKey\",\"v\":1,\"pubkey\":\"zz\",\"ncryptsec\":\"{ns}\"}}"),
            format!("{{\"type\":\"PigeonholeKey\",\"v\":1,\"pubkey\":\"{pk}\",\"ncryptsec\":7}}"),
            "[]".to_owned(),
            "".to_owned(),
            "{".to_owned(),
            "null".to_owned(),
        ] {
            assert!(matches!(KeyFile::from_json(&bad), Err(KeyFileError::Json(_))), "{bad}");
        }
        // A damaged ncryptsec is caught when the file is read, before any passphrase.
        let damaged =
            format!("{{\"type\":\"PigeonholeKey\",\"v\":1,\"pubkey\":\"{pk}\",\"ncryptsec\":\"{}x\"}}", ns);
        assert!(matches!(KeyFile::from_json(&damaged), Err(KeyFileError::InvalidBech32(_))));
        let mut payload = payload_bytes(ns);
        payload[1] = 30;
        let heavy = KeyFile { pubkey: file.pubkey, ncryptsec: encode(&payload) }.to_json();
        assert_eq!(
            KeyFile::from_json(&heavy).err(),
            Some(KeyFileError::LogNTooLarge { log_n: 30, max: MAX_LOG_N })
        );
    }

    #[test]
    fn to_json_escapes_arbitrary_ncryptsec_text() {
        let file = KeyFile { pubkey: key(16).public_key(), ncryptsec: "a\"b\\c\n".to_owned() };
        let value: serde_json::Value = serde_json::from_str(&file.to_json()).expect("valid JSON");
        assert_eq!(value["ncryptsec"], "a\"b\\c\n");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn round_trip_any_password(password in "\\PC{0,24}", byte in 1u8..=0xfe, salt: [u8; 16], nonce: [u8; 24]) {
            let secret = key(byte);
            let text = encrypt_with_nonce(&secret, &password, 2, salt, nonce, KeySecurity::Secure)
                .expect("encrypts");
            prop_assert_eq!(decrypt(&text, &password).expect("decrypts").0, secret.clone());
            // Canonically equivalent spellings (NFC, NFD) of the password open it too.
            let nfd: String = password.nfd().collect();
            let nfc: String = password.nfc().collect();
            prop_assert_eq!(decrypt(&text, &nfd).expect("NFD opens").0, secret.clone());
            prop_assert_eq!(decrypt(&text, &nfc).expect("NFC opens").0, secret);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}", password in "\\PC{0,8}") {
            let _ = decrypt(&text, &password);
            let _ = KeyFile::from_json(&text);
        }

        #[test]
        fn arbitrary_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..120)) {
            // Keep log_n cheap: large values are refused anyway, small ones run a tiny scrypt.
            let mut payload = payload;
            if let Some(log_n) = payload.get_mut(1) {
                *log_n %= 8;
            }
            let _ = decrypt(&encode(&payload), "pw");
        }
    }
}
