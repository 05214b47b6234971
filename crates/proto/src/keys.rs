//! Identities: secp256k1 secret keys, x-only public keys and BIP-340 Schnorr signatures,
//! with their text forms (hex, bech32m, and the Nostr `npub`/`nsec` strings for import).
//!
//! Signing and verification go through libsecp256k1. The protocol only ever signs 32-byte
//! tagged hashes ([`crate::hash`]); [`sign_raw_with_aux`] and [`verify_raw`] take messages of
//! any length so the official BIP-340 vectors can be checked through the same code.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Bech32m, Hrp};
use secp256k1::{Keypair, Secp256k1, XOnlyPublicKey};
use zeroize::Zeroizing;

/// One libsecp256k1 context for the process. Building a context precomputes tables, so it
/// is done once; it holds no secrets.
pub(crate) static SECP: LazyLock<Secp256k1<secp256k1::All>> = LazyLock::new(Secp256k1::new);

/// Human-readable part of a Pigeonhole public key in bech32m (`pigeon1...`).
pub const PUBLIC_KEY_HRP: &str = "pigeon";
/// Human-readable part of a Pigeonhole secret key in bech32m (`pigeonsec1...`).
pub const SECRET_KEY_HRP: &str = "pigeonsec";
/// Nostr's NIP-19 public key prefix, accepted on import.
pub const NOSTR_PUBLIC_HRP: &str = "npub";
/// Nostr's NIP-19 secret key prefix, accepted on import.
pub const NOSTR_SECRET_HRP: &str = "nsec";

/// Why a key or signature did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 (key) or 128 (signature) hex characters, or not hex at all.
    #[error("expected {expected} hex characters")]
    InvalidHex {
        /// The number of hex characters expected.
        expected: usize,
    },
    /// The bytes are not the right length.
    #[error("expected {expected} bytes, got {got}")]
    InvalidLength {
        /// Expected length.
        expected: usize,
        /// Length found.
        got: usize,
    },
    /// The x coordinate is not on the curve (or is not below the field size).
    #[error("not a valid secp256k1 x-only public key")]
    InvalidPublicKey,
    /// Zero, or not below the curve order.
    #[error("not a valid secp256k1 secret key (zero or not below the curve order)")]
    InvalidSecretKey,
    /// A bech32/bech32m string with a bad checksum, bad characters or mixed case.
    #[error("invalid bech32 string: {0}")]
    InvalidBech32(String),
    /// A bech32 string with a prefix that names something else.
    #[error("unexpected prefix `{found}`; expected one of {expected}")]
    WrongPrefix {
        /// The prefix found.
        found: String,
        /// The accepted prefixes.
        expected: &'static str,
    },
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct SignatureError;

/// A secp256k1 secret key. Zeroized on drop; `Debug` never prints it.
pub struct SecretKey {
    keypair: Keypair,
}

impl SecretKey {
    /// Parses 32 bytes. Zero and values not below the curve order are rejected.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let secret = secp256k1::SecretKey::from_slice(bytes).map_err(|_| KeyError::InvalidSecretKey)?;
        Ok(Self { keypair: Keypair::from_secret_key(&SECP, &secret) })
    }

    /// Generates a key from the caller's cryptographically secure RNG.
    pub fn generate<R: rand_core::RngCore + rand_core::CryptoRng>(rng: &mut R) -> Self {
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            // The chance of an invalid scalar is about 2^-128; loop rather than fail.
            if let Ok(key) = Self::from_bytes(&bytes) {
                return key;
            }
        }
    }

    /// The 32 secret bytes, in a buffer that zeroizes itself.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.keypair.secret_bytes())
    }

    /// The x-only public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.keypair.x_only_public_key().0)
    }

    /// Parses a secret key from text: 64 hex characters, a `pigeonsec1...` bech32m string or
    /// a Nostr `nsec1...` string.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if is_hex_key(text) {
            let bytes = Zeroizing::new(decode_hex32(text)?);
            return Self::from_bytes(&bytes);
        }
        let (hrp, bytes) = decode_bech32_any(text)?;
        let bytes = Zeroizing::new(bytes);
        let expected = "`pigeonsec` (bech32m) or `nsec` (bech32)";
        match (hrp.as_str(), bytes.len()) {
            (SECRET_KEY_HRP, _) | (NOSTR_SECRET_HRP, _) => {
                check_checksum_kind(text, hrp.as_str())?;
                let array: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::InvalidLength { expected: 32, got: bytes.len() })?;
                let array = Zeroizing::new(array);
                Self::from_bytes(&array)
            }
            (found, _) => Err(KeyError::WrongPrefix { found: found.to_owned(), expected }),
        }
    }

    /// The secret key as `pigeonsec1...` (bech32m). Handle with care: this is the secret.
    pub fn to_bech32m(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_bech32m(SECRET_KEY_HRP, &self.to_bytes()[..]))
    }

    /// Signs a 32-byte digest with BIP-340 using the given 32 bytes of auxiliary randomness
    /// (the deterministic form used by test vectors).
    pub fn sign_with_aux(&self, digest: &[u8; 32], aux: &[u8; 32]) -> Signature {
        sign_raw_with_aux(self, digest, aux)
    }

    /// Signs a 32-byte digest with BIP-340, drawing the auxiliary randomness from `rng`.
    pub fn sign<R: rand_core::RngCore + rand_core::CryptoRng>(
        &self,
        digest: &[u8; 32],
        rng: &mut R,
    ) -> Signature {
        let mut aux = [0u8; 32];
        rng.fill_bytes(&mut aux);
        self.sign_with_aux(digest, &aux)
    }

    /// The libsecp256k1 secret key, for ECDH inside the crate.
    pub(crate) fn secp_secret(&self) -> secp256k1::SecretKey {
        self.keypair.secret_key()
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        Self { keypair: self.keypair }
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // libsecp256k1's keypair is a plain byte array; overwrite it before the memory is freed.
        self.keypair.non_secure_erase();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.to_bytes().ct_eq(&other.to_bytes()[..]).into()
    }
}

impl Eq for SecretKey {}

/// Slots of the cache of lifted public keys (see [`PublicKey::from_bytes`]): about 400 KiB.
pub const LIFT_CACHE_SLOTS: usize = 4096;

/// One slot per possible index: the key's 32 bytes and its lifted point.
type LiftSlot = std::sync::Mutex<Option<([u8; 32], XOnlyPublicKey)>>;

static LIFTED: LazyLock<Box<[LiftSlot]>> =
    LazyLock::new(|| (0..LIFT_CACHE_SLOTS).map(|_| std::sync::Mutex::new(None)).collect());

/// A key's slot: x coordinates are uniformly distributed, so a few of their bytes will do (a
/// key chosen to collide only evicts another from the cache).
fn lift_slot(bytes: &[u8; 32]) -> usize {
    (usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) ^ (usize::from(bytes[31]) << 4)) % LIFT_CACHE_SLOTS
}

/// An x-only secp256k1 public key (BIP-340): a Pigeonhole identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(XOnlyPublicKey);

impl PublicKey {
    /// Parses 32 bytes; rejects x coordinates that are not on the curve.
    ///
    /// Lifting an x coordinate onto the curve takes a field square root (about 5 µs, as much
    /// as a fifth of a signature check), and a relay decodes the same few keys over and over:
    /// every stored record names its owner and receiver, every frame of a session its signer.
    /// Keys that lifted are kept in a small direct-mapped cache ([`LIFT_CACHE_SLOTS`] slots,
    /// looked up by all 32 bytes), so a repeat costs a lock and a compare. The answer is the
    /// same with or without the cache: only successful lifts are stored, and a slot's key is
    /// compared in full before its point is used.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let slot = &LIFTED[lift_slot(bytes)];
        if let Ok(guard) = slot.lock()
            && let Some((x, point)) = guard.as_ref()
            && x == bytes
        {
            return Ok(Self(*point));
        }
        let point = XOnlyPublicKey::from_slice(bytes).map_err(|_| KeyError::InvalidPublicKey)?;
        if let Ok(mut guard) = slot.lock() {
            *guard = Some((*bytes, point));
        }
        Ok(Self(point))
    }

    /// Parses a slice that must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; 32] =
            bytes.try_into().map_err(|_| KeyError::InvalidLength { expected: 32, got: bytes.len() })?;
        Self::from_bytes(&array)
    }

    /// The 32 bytes of the x coordinate.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.serialize()
    }

    /// Lower-case hex of the 32 bytes (the JSON form).
    pub fn to_hex(&self) -> String {
        crate::to_hex(&self.to_bytes())
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        Self::from_bytes(&decode_hex32(text)?)
    }

    /// The `pigeon1...` bech32m form shown to people.
    pub fn to_bech32m(&self) -> String {
        encode_bech32m(PUBLIC_KEY_HRP, &self.to_bytes())
    }

    /// Parses any accepted text form: hex, `pigeon1...` (bech32m) or Nostr `npub1...` (bech32).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if is_hex_key(text) {
            return Self::from_hex(text);
        }
        let (hrp, bytes) = decode_bech32_any(text)?;
        match hrp.as_str() {
            PUBLIC_KEY_HRP | NOSTR_PUBLIC_HRP => {
                check_checksum_kind(text, hrp.as_str())?;
                Self::from_slice(&bytes)
            }
            found => Err(KeyError::WrongPrefix {
                found: found.to_owned(),
                expected: "`pigeon` (bech32m) or `npub` (bech32)",
            }),
        }
    }

    /// Verifies a BIP-340 signature over a 32-byte digest.
    pub fn verify(&self, digest: &[u8; 32], signature: &Signature) -> Result<(), SignatureError> {
        verify_raw(self, digest, signature)
    }

    /// The libsecp256k1 key, for ECDH inside the crate.
    pub(crate) fn secp_xonly(&self) -> &XOnlyPublicKey {
        &self.0
    }

    /// The full point with even Y (the BIP-340 lift), for ECDH.
    pub(crate) fn to_even_point(self) -> secp256k1::PublicKey {
        self.0.public_key(secp256k1::Parity::Even)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    /// Displays the `pigeon1...` bech32m form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_bech32m())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl_text_serde!(PublicKey, to_hex, from_hex);

/// A 64-byte BIP-340 Schnorr signature. Parsing only checks the length; validity (r on the
/// curve, s below the order) is decided by verification.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Wraps 64 bytes.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// Parses a slice that must be exactly 64 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        bytes.try_into().map(Self).map_err(|_| KeyError::InvalidLength { expected: 64, got: bytes.len() })
    }

    /// The 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }

    /// Lower-case hex (the JSON form).
    pub fn to_hex(&self) -> String {
        crate::to_hex(&self.0)
    }

    /// Parses 128 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let mut out = [0u8; 64];
        hex::decode_to_slice(text, &mut out).map_err(|_| KeyError::InvalidHex { expected: 128 })?;
        Ok(Self(out))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl_text_serde!(Signature, to_hex, from_hex);

/// BIP-340 signature over a message of any length with explicit auxiliary randomness.
pub fn sign_raw_with_aux(key: &SecretKey, message: &[u8], aux: &[u8; 32]) -> Signature {
    let sig = SECP.sign_schnorr_with_aux_rand(message, &key.keypair, aux);
    Signature(sig.to_byte_array())
}

/// BIP-340 verification of a message of any length.
pub fn verify_raw(key: &PublicKey, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
    let sig = secp256k1::schnorr::Signature::from_slice(&signature.0).map_err(|_| SignatureError)?;
    SECP.verify_schnorr(&sig, message, key.secp_xonly()).map_err(|_| SignatureError)
}

fn is_hex_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn decode_hex32(text: &str) -> Result<[u8; 32], KeyError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| KeyError::InvalidHex { expected: 64 })?;
    Ok(out)
}

pub(crate) fn encode_bech32m(hrp: &str, data: &[u8]) -> String {
    // Our prefixes are valid constants and every caller keeps data under the bech32m code
    // length, so encoding cannot fail.
    let hrp = Hrp::parse_unchecked(hrp);
    bech32::encode::<Bech32m>(hrp, data).expect("hrp is a constant and data fits the code length")
}

/// Decodes a bech32 or bech32m string, returning its prefix and bytes. Which checksum is
/// allowed for which prefix is checked by [`check_checksum_kind`].
fn decode_bech32_any(text: &str) -> Result<(Hrp, Vec<u8>), KeyError> {
    bech32::decode(text).map_err(|e| KeyError::InvalidBech32(e.to_string()))
}

/// Nostr's `npub`/`nsec` use the original bech32 checksum; Pigeonhole's own strings use
/// bech32m. A string that carries the other checksum is rejected, so each text has one form.
fn check_checksum_kind(text: &str, hrp: &str) -> Result<(), KeyError> {
    let result = if hrp == NOSTR_PUBLIC_HRP || hrp == NOSTR_SECRET_HRP {
        CheckedHrpstring::new::<Bech32>(text).map(|_| ())
    } else {
        CheckedHrpstring::new::<Bech32m>(text).map(|_| ())
    };
    result.map_err(|e| KeyError::InvalidBech32(e.to_string()))
}

/// Decodes a bech32m string with the expected prefix, checking zero padding.
pub(crate) fn decode_bech32m(text: &str, expected_hrp: &'static str) -> Result<Vec<u8>, KeyError> {
    let checked =
        CheckedHrpstring::new::<Bech32m>(text).map_err(|e| KeyError::InvalidBech32(e.to_string()))?;
    if checked.hrp().as_str() != expected_hrp {
        return Err(KeyError::WrongPrefix { found: checked.hrp().to_string(), expected: expected_hrp });
    }
    checked.validate_segwit_padding().map_err(|e| KeyError::InvalidBech32(e.to_string()))?;
    Ok(checked.byte_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let secret = key(7);
        let shown = format!("{secret:?}");
        assert_eq!(shown, "SecretKey(..)");
        assert!(!shown.contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn the_lift_cache_answers_exactly_as_lifting_does() {
        // Keys that share a cache slot evict each other and still parse to themselves.
        let mut by_slot: std::collections::HashMap<usize, Vec<[u8; 32]>> = std::collections::HashMap::new();
        let mut scalar = [0u8; 32];
        for i in 1..=20_000u32 {
            scalar[28..].copy_from_slice(&i.to_be_bytes());
            let public = SecretKey::from_bytes(&scalar).expect("small scalar").public_key().to_bytes();
            by_slot.entry(lift_slot(&public)).or_default().push(public);
        }
        let (_, keys) = by_slot.into_iter().find(|(_, keys)| keys.len() >= 3).expect("a shared slot");
        for _ in 0..3 {
            for bytes in &keys {
                let key = PublicKey::from_bytes(bytes).expect("a valid key");
                assert_eq!(&key.to_bytes(), bytes);
                assert_eq!(key.0, XOnlyPublicKey::from_slice(bytes).expect("lifts"));
            }
        }
        // An x coordinate not on the curve is refused every time, before and after its slot
        // holds a valid key.
        let mut off_curve = keys[0];
        loop {
            off_curve[31] = off_curve[31].wrapping_add(1);
            if XOnlyPublicKey::from_slice(&off_curve).is_err() {
                break;
            }
        }
        for _ in 0..2 {
            assert_eq!(PublicKey::from_bytes(&off_curve), Err(KeyError::InvalidPublicKey));
            PublicKey::from_bytes(&keys[0]).expect("valid");
        }
    }

    #[test]
    fn text_forms_round_trip() {
        let secret = key(3);
        let public = secret.public_key();
        assert_eq!(PublicKey::parse(&public.to_hex()), Ok(public));
        assert_eq!(PublicKey::parse(&public.to_hex().to_uppercase()), Ok(public));
        assert_eq!(PublicKey::parse(&public.to_bech32m()), Ok(public));
        assert!(public.to_bech32m().starts_with("pigeon1"));
        assert_eq!(SecretKey::parse(&secret.to_bech32m()), Ok(secret.clone()));
        assert_eq!(SecretKey::parse(&hex::encode(*secret.to_bytes())), Ok(secret));
    }

    #[test]
    fn nostr_nip19_vectors_import() {
        // From NIP-19: the example npub and nsec with their hex forms.
        let npub = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
        let pk_hex = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
        assert_eq!(PublicKey::parse(npub), PublicKey::from_hex(pk_hex));
        let nsec = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5";
        let sk_hex = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa";
        assert_eq!(SecretKey::parse(nsec), SecretKey::parse(sk_hex));
    }

    #[test]
    fn wrong_checksum_kind_is_rejected() {
        let public = key(5).public_key();
        // A pigeon key with the old bech32 checksum, and an npub with bech32m.
        let bech32_pigeon =
            bech32::encode::<Bech32>(Hrp::parse_unchecked("pigeon"), &public.to_bytes()).expect("fits");
        assert!(matches!(PublicKey::parse(&bech32_pigeon), Err(KeyError::InvalidBech32(_))));
        let bech32m_npub =
            bech32::encode::<Bech32m>(Hrp::parse_unchecked("npub"), &public.to_bytes()).expect("fits");
        assert!(matches!(PublicKey::parse(&bech32m_npub), Err(KeyError::InvalidBech32(_))));
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert_eq!(SecretKey::from_bytes(&[0; 32]), Err(KeyError::InvalidSecretKey));
        assert_eq!(SecretKey::from_bytes(&[0xff; 32]), Err(KeyError::InvalidSecretKey));
        // x = 5 is not on secp256k1 (5^3 + 7 = 132 is not a square mod p).
        let mut off_curve = [0u8; 32];
        off_curve[31] = 5;
        assert_eq!(PublicKey::from_bytes(&off_curve), Err(KeyError::InvalidPublicKey));
        assert_eq!(PublicKey::from_bytes(&[0xff; 32]), Err(KeyError::InvalidPublicKey));
        assert!(PublicKey::parse("zz").is_err());
        assert!(PublicKey::from_hex("abc").is_err());
        assert!(PublicKey::from_slice(&[1; 31]).is_err());
    }

    #[test]
    fn sign_and_verify() {
        let secret = key(9);
        let digest = [42u8; 32];
        let sig = secret.sign_with_aux(&digest, &[0; 32]);
        assert_eq!(secret.public_key().verify(&digest, &sig), Ok(()));
        let mut other = digest;
        other[0] ^= 1;
        assert_eq!(secret.public_key().verify(&other, &sig), Err(SignatureError));
        assert_eq!(key(10).public_key().verify(&digest, &sig), Err(SignatureError));
    }
}
