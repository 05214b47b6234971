//! Sealed envelopes: a letter (sender, recipient, time, record id, payload and the sender's
//! signature) encrypted so that only the recipient can open it.
//!
//! Construction: a fresh ephemeral secp256k1 key per envelope; the NIP-44 v2 conversation key
//! between the ephemeral key and the recipient's key; the NIP-44 v2 payload format
//! (HKDF-SHA256, ChaCha20, HMAC-SHA256, padded lengths) around the letter bytes. The sender's
//! identity and signature are inside the ciphertext, so the envelope alone says nothing of
//! who sent it. Opening checks the MAC, that the letter names the opener as its recipient
//! (so a letter cannot be re-sealed to someone else and pass), and the sender's signature.

use crate::hash::{tagged_hash, tags};
use crate::keys::{PublicKey, SecretKey, Signature, SignatureError};
use crate::nip44::{self, ConversationKey, Nip44Error};
use crate::payload::{Payload, PayloadError, read_public_key, read_record_id, validate_record_id};
use crate::wire::{DecodeError, Reader, Writer};

/// Version byte of the envelope format.
pub const ENVELOPE_VERSION: u8 = 1;
/// Version byte of the letter format.
pub const LETTER_VERSION: u8 = 1;
/// Bytes before the NIP-44 payload: version and ephemeral public key.
pub const ENVELOPE_HEADER_LEN: usize = 1 + 32;
/// Largest envelope: header plus the largest NIP-44 v2 payload.
pub const MAX_ENVELOPE_LEN: usize = ENVELOPE_HEADER_LEN + 1 + 32 + 2 + 65_536 + 32;

const FLAG_SIGNED: u8 = 0x01;

/// The plaintext of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// The signer, or `None` for an anonymous letter (a drop with no return address).
    pub sender: Option<PublicKey>,
    /// The only key that can open it, named inside so it cannot be re-sealed to another.
    pub recipient: PublicKey,
    /// When the sender wrote it (unix milliseconds).
    pub created_at: u64,
    /// The sender's id for it; equals the outbox record id for outbox records.
    pub record_id: String,
    /// What it carries.
    pub payload: Payload,
}

/// A letter that was opened and, if it names a sender, whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedLetter {
    /// The letter.
    pub letter: Letter,
    /// The sender's verified signature, when the letter is signed.
    pub signature: Option<Signature>,
}

/// Why a letter could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The payload or record id breaks a limit.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// `letter.sender` does not match the signing key given (or one is missing).
    #[error("the letter's sender does not match the signing key")]
    SenderMismatch,
    /// The ephemeral secret is zero or not below the curve order.
    #[error("invalid ephemeral secret")]
    InvalidEphemeral,
    /// The encryption layer refused (plaintext too long).
    #[error(transparent)]
    Encrypt(#[from] Nip44Error),
}

/// Why an envelope could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The envelope header is malformed (length, version, ephemeral key).
    #[error("malformed envelope: {0}")]
    Envelope(DecodeError),
    /// The MAC did not verify or the ciphertext is malformed: not for this key, or tampered.
    #[error("cannot decrypt: {0}")]
    Decrypt(Nip44Error),
    /// The decrypted letter is malformed.
    #[error("malformed letter: {0}")]
    Letter(DecodeError),
    /// The letter names another recipient: it was re-sealed by someone who is not its sender.
    #[error("the letter is addressed to another key")]
    WrongRecipient,
    /// The sender's signature does not verify.
    #[error("the sender's signature does not verify")]
    BadSignature(#[from] SignatureError),
}

impl Letter {
    /// The letter bytes that the sender's signature covers (everything but the signature).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let body = self.payload.encode_body();
        let mut w = Writer::with_capacity(body.len() + 128);
        w.u8(LETTER_VERSION);
        match &self.sender {
            Some(sender) => w.u8(FLAG_SIGNED).raw(&sender.to_bytes()),
            None => w.u8(0),
        };
        w.raw(&self.recipient.to_bytes())
            .u64(self.created_at)
            .var8(self.record_id.as_bytes())
            .u16(self.payload.kind())
            .var32(&body);
        w.finish()
    }

    /// The tagged hash the sender signs.
    pub fn signing_hash(&self) -> [u8; 32] {
        tagged_hash(tags::LETTER, &[&self.signing_bytes()])
    }

    /// Checks limits so that encoding cannot produce bytes that fail to decode.
    pub fn validate(&self) -> Result<(), PayloadError> {
        validate_record_id(&self.record_id)?;
        self.payload.validate()
    }

    /// Encodes the letter with its signature (signed letters) as the plaintext to seal.
    pub fn encode(&self, signature: Option<&Signature>) -> Vec<u8> {
        let mut bytes = self.signing_bytes();
        if let Some(sig) = signature {
            bytes.extend_from_slice(&sig.to_bytes());
        }
        bytes
    }

    /// Decodes letter bytes and verifies the signature of a signed letter.
    pub fn decode_and_verify(bytes: &[u8]) -> Result<OpenedLetter, OpenError> {
        let mut r = Reader::new(bytes);
        let parsed = (|| {
            let version = r.u8("letter version")?;
            if version != LETTER_VERSION {
                return Err(DecodeError::UnknownVersion(version));
            }
            let flags = r.u8("letter flags")?;
            if flags & !FLAG_SIGNED != 0 {
                return Err(DecodeError::InvalidValue {
                    field: "letter flags",
                    reason: "unknown flag bits set",
                });
            }
            let sender =
                if flags & FLAG_SIGNED != 0 { Some(read_public_key(&mut r, "sender")?) } else { None };
            let recipient = read_public_key(&mut r, "recipient")?;
            let created_at = r.u64("created_at")?;
            let record_id = read_record_id(&mut r)?;
            let kind = r.u16("payload kind")?;
            let body = r.var32(crate::payload::MAX_BODY_LEN, "payload body")?;
            let payload = Payload::decode_body(kind, body)?;
            let signed_len = r.consumed().len();
            let signature =
                if sender.is_some() { Some(Signature::from_bytes(r.array("signature")?)) } else { None };
            Ok((Letter { sender, recipient, created_at, record_id, payload }, signed_len, signature))
        })();
        let (letter, signed_len, signature) = parsed.map_err(OpenError::Letter)?;
        r.finish().map_err(OpenError::Letter)?;
        if let (Some(sender), Some(sig)) = (&letter.sender, &signature) {
            let digest = tagged_hash(tags::LETTER, &[&bytes[..signed_len]]);
            sender.verify(&digest, sig)?;
        }
        Ok(OpenedLetter { letter, signature })
    }
}

/// The parts of an envelope, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The per-envelope ephemeral public key.
    pub ephemeral: PublicKey,
    /// The NIP-44 v2 payload (version byte 2, nonce, ciphertext, MAC).
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Splits envelope bytes into header and payload, checking the version, the ephemeral key
    /// and the size bounds. Does no decryption.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::TooLong { field: "envelope", len: bytes.len(), max: MAX_ENVELOPE_LEN });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("envelope version")?;
        if version != ENVELOPE_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let ephemeral = read_public_key(&mut r, "ephemeral key")?;
        let payload = r.take(r.remaining(), "payload")?;
        if payload.is_empty() {
            return Err(DecodeError::Truncated { field: "payload" });
        }
        Ok(Self { ephemeral, payload })
    }

    /// The NIP-44 conversation key between the recipient's key and this envelope's ephemeral key.
    /// This costs one ECDH; drop tags are checked against it before decrypting.
    pub fn conversation_key(&self, recipient: &SecretKey) -> ConversationKey {
        nip44::conversation_key(&recipient.secp_secret(), self.ephemeral.secp_xonly())
    }

    /// Decrypts with an already derived conversation key and verifies the letter.
    pub fn open_with_key(
        &self,
        recipient: &SecretKey,
        key: &ConversationKey,
    ) -> Result<OpenedLetter, OpenError> {
        let plaintext =
            zeroize::Zeroizing::new(nip44::decrypt(key, self.payload).map_err(OpenError::Decrypt)?);
        let opened = Letter::decode_and_verify(&plaintext)?;
        if opened.letter.recipient != recipient.public_key() {
            return Err(OpenError::WrongRecipient);
        }
        Ok(opened)
    }
}

/// Seals `letter` to its recipient with explicit randomness (for test vectors): the
/// ephemeral secret, the NIP-44 nonce and the BIP-340 auxiliary bytes. A signed letter needs
/// `sender_key`, whose public key must equal `letter.sender`.
pub fn seal_with_nonce(
    letter: &Letter,
    sender_key: Option<&SecretKey>,
    ephemeral_secret: &[u8; 32],
    nonce: &[u8; 32],
    aux: &[u8; 32],
) -> Result<Vec<u8>, SealError> {
    let ephemeral = SecretKey::from_bytes(ephemeral_secret).map_err(|_| SealError::InvalidEphemeral)?;
    let key = nip44::conversation_key(&ephemeral.secp_secret(), letter.recipient.secp_xonly());
    seal_with_key(letter, sender_key, &ephemeral.public_key(), &key, nonce, aux)
}

/// Seals with a conversation key already derived from the ephemeral key (used by drops,
/// which derive their tag from the same key).
pub(crate) fn seal_with_key(
    letter: &Letter,
    sender_key: Option<&SecretKey>,
    ephemeral: &PublicKey,
    key: &ConversationKey,
    nonce: &[u8; 32],
    aux: &[u8; 32],
) -> Result<Vec<u8>, SealError> {
    letter.validate()?;
    let signature = match (sender_key, &letter.sender) {
        (Some(secret), Some(sender)) if secret.public_key() == *sender => {
            Some(secret.sign_with_aux(&letter.signing_hash(), aux))
        }
        (None, None) => None,
        _ => return Err(SealError::SenderMismatch),
    };
    let plaintext = zeroize::Zeroizing::new(letter.encode(signature.as_ref()));
    let payload = nip44::encrypt_with_nonce(key, &plaintext, nonce)?;
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + payload.len());
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&ephemeral.to_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Seals `letter`, drawing the ephemeral key, nonce and signing randomness from `rng`.
pub fn seal<R: rand_core::RngCore + rand_core::CryptoRng>(
    letter: &Letter,
    sender_key: Option<&SecretKey>,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let ephemeral = SecretKey::generate(rng);
    let mut nonce = [0u8; 32];
    let mut aux = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    rng.fill_bytes(&mut aux);
    seal_with_nonce(letter, sender_key, &ephemeral.to_bytes(), &nonce, &aux)
}

/// Opens an envelope with the recipient's key: decrypts, decodes, checks the recipient and
/// verifies the sender's signature.
pub fn open(recipient: &SecretKey, envelope: &[u8]) -> Result<OpenedLetter, OpenError> {
    let envelope = Envelope::parse(envelope).map_err(OpenError::Envelope)?;
    let key = envelope.conversation_key(recipient);
    envelope.open_with_key(recipient, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
    }

    fn letter(text: &str) -> Letter {
        Letter {
            sender: Some(key(1).public_key()),
            recipient: key(2).public_key(),
            created_at: 1_700_000_000_000,
            record_id: "r1".into(),
            payload: Payload::Text(text.into()),
        }
    }

    fn sealed(l: &Letter) -> Vec<u8> {
        seal_with_nonce(l, Some(&key(1)), &[3; 32], &[4; 32], &[5; 32]).expect("seals")
    }

    #[test]
    fn seal_open_round_trip() {
        let l = letter("hello bob");
        let opened = open(&key(2), &sealed(&l)).expect("opens");
        assert_eq!(opened.letter, l);
        assert!(opened.signature.is_some());
    }

    #[test]
    fn only_the_recipient_can_open() {
        let env = sealed(&letter("x"));
        assert!(matches!(open(&key(1), &env), Err(OpenError::Decrypt(_))));
        assert!(matches!(open(&key(9), &env), Err(OpenError::Decrypt(_))));
    }

    #[test]
    fn resealed_letter_is_rejected() {
        // Bob opens Alice's letter and re-seals the same signed bytes to Carol.
        let l = letter("for bob only");
        let opened = open(&key(2), &sealed(&l)).expect("opens");
        let plaintext = l.encode(opened.signature.as_ref());
        let carol = key(7);
        let ck = nip44::conversation_key(&key(8).secp_secret(), carol.public_key().secp_xonly());
        let payload = nip44::encrypt_with_nonce(&ck, &plaintext, &[1; 32]).expect("encrypts");
        let mut env = vec![ENVELOPE_VERSION];
        env.extend_from_slice(&key(8).public_key().to_bytes());
        env.extend_from_slice(&payload);
        assert_eq!(open(&carol, &env), Err(OpenError::WrongRecipient));
    }

    #[test]
    fn anonymous_letters_open_without_signature() {
        let mut l = letter("anon");
        l.sender = None;
        let env = seal_with_nonce(&l, None, &[3; 32], &[4; 32], &[5; 32]).expect("seals");
        let opened = open(&key(2), &env).expect("opens");
        assert_eq!(opened.signature, None);
        assert_eq!(opened.letter, l);
    }

    #[test]
    fn sender_mismatch_is_refused() {
        let l = letter("x");
        assert_eq!(
            seal_with_nonce(&l, Some(&key(5)), &[3; 32], &[4; 32], &[5; 32]),
            Err(SealError::SenderMismatch)
        );
        assert_eq!(seal_with_nonce(&l, None, &[3; 32], &[4; 32], &[5; 32]), Err(SealError::SenderMismatch));
    }

    #[test]
    fn forged_signature_is_rejected() {
        // A letter claiming Alice as sender but signed by Mallory.
        let l = letter("forged");
        let sig = key(6).sign_with_aux(&l.signing_hash(), &[0; 32]);
        assert!(matches!(Letter::decode_and_verify(&l.encode(Some(&sig))), Err(OpenError::BadSignature(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_text_round_trips(text in ".{0,300}", created_at: u64) {
            let mut l = letter(&text);
            l.created_at = created_at;
            let opened = open(&key(2), &sealed(&l)).expect("opens");
            prop_assert_eq!(opened.letter, l);
        }

        #[test]
        fn any_flipped_bit_fails(bit in 0usize..(8 * 400)) {
            let env = sealed(&letter("a message long enough to flip bits in"));
            let bit = bit % (env.len() * 8);
            let mut bad = env.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open(&key(2), &bad).is_err());
        }
    }
}
