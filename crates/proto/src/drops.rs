//! Drops: a sealed envelope posted under a 160-bit tag in the recipient's prefix bucket,
//! with nothing on the outside that names the sender. This module joins [`crate::seal`] and
//! [`crate::tag`]: sealing a drop picks its tag, and the recipient checks a candidate's tag
//! cheaply before decrypting it.

use crate::keys::SecretKey;
use crate::nip44::{self, ConversationKey};
use crate::seal::{Envelope, Letter, OpenError, OpenedLetter, SealError, seal_with_key};
use crate::tag::{ChainKey, Prefix, Tag, drop_tag};
use crate::wire::DecodeError;

/// Why a drop candidate was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropError {
    /// The envelope bytes are malformed.
    #[error("malformed envelope: {0}")]
    Envelope(DecodeError),
    /// The tag is not in the recipient's bucket, or was not derived for this recipient:
    /// someone else's drop (the common case when scanning a bucket).
    #[error("not addressed to this key")]
    NotMine,
    /// The tag matched but the envelope does not open: tampered or malformed.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Seals a drop for a recipient the sender does not share a chain with (first contact),
/// with explicit randomness. Returns the tag and the envelope.
pub fn seal_drop_with_nonce(
    letter: &Letter,
    sender_key: Option<&SecretKey>,
    prefix: &Prefix,
    ephemeral_secret: &[u8; 32],
    nonce: &[u8; 32],
    aux: &[u8; 32],
) -> Result<(Tag, Vec<u8>), SealError> {
    let (key, envelope) = seal_envelope(letter, sender_key, ephemeral_secret, nonce, aux)?;
    Ok((drop_tag(prefix, &key), envelope))
}

/// Seals a drop to a known contact: the tag is the `counter`-th tag of the sender's chain
/// key, which the recipient recognises with a table lookup. The envelope is built exactly
/// as for a stranger, so the two look the same from outside.
#[allow(clippy::too_many_arguments)] // each argument is a distinct input of the construction
pub fn seal_contact_drop_with_nonce(
    letter: &Letter,
    sender_key: &SecretKey,
    prefix: &Prefix,
    chain: &ChainKey,
    counter: u64,
    ephemeral_secret: &[u8; 32],
    nonce: &[u8; 32],
    aux: &[u8; 32],
) -> Result<(Tag, Vec<u8>), SealError> {
    let (_, envelope) = seal_envelope(letter, Some(sender_key), ephemeral_secret, nonce, aux)?;
    Ok((chain.tag(prefix, counter), envelope))
}

/// Seals a stranger-path drop with randomness from `rng`.
pub fn seal_drop<R: rand_core::RngCore + rand_core::CryptoRng>(
    letter: &Letter,
    sender_key: Option<&SecretKey>,
    prefix: &Prefix,
    rng: &mut R,
) -> Result<(Tag, Vec<u8>), SealError> {
    let (ephemeral, nonce, aux) = randomness(rng);
    seal_drop_with_nonce(letter, sender_key, prefix, &ephemeral, &nonce, &aux)
}

/// Seals a contact-path drop with randomness from `rng`.
pub fn seal_contact_drop<R: rand_core::RngCore + rand_core::CryptoRng>(
    letter: &Letter,
    sender_key: &SecretKey,
    prefix: &Prefix,
    chain: &ChainKey,
    counter: u64,
    rng: &mut R,
) -> Result<(Tag, Vec<u8>), SealError> {
    let (ephemeral, nonce, aux) = randomness(rng);
    seal_contact_drop_with_nonce(letter, sender_key, prefix, chain, counter, &ephemeral, &nonce, &aux)
}

/// Seals the envelope and returns it with its conversation key (from which a stranger-path
/// tag is derived).
fn seal_envelope(
    letter: &Letter,
    sender_key: Option<&SecretKey>,
    ephemeral_secret: &[u8; 32],
    nonce: &[u8; 32],
    aux: &[u8; 32],
) -> Result<(ConversationKey, Vec<u8>), SealError> {
    let ephemeral = SecretKey::from_bytes(ephemeral_secret).map_err(|_| SealError::InvalidEphemeral)?;
    let key = nip44::conversation_key(&ephemeral.secp_secret(), letter.recipient.secp_xonly());
    let envelope = seal_with_key(letter, sender_key, &ephemeral.public_key(), &key, nonce, aux)?;
    Ok((key, envelope))
}

fn randomness<R: rand_core::RngCore + rand_core::CryptoRng>(
    rng: &mut R,
) -> (zeroize::Zeroizing<[u8; 32]>, [u8; 32], [u8; 32]) {
    let ephemeral = SecretKey::generate(rng).to_bytes();
    let mut nonce = [0u8; 32];
    let mut aux = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    rng.fill_bytes(&mut aux);
    (ephemeral, nonce, aux)
}

/// The cheap check: is this stranger-path candidate addressed to `recipient`? Costs one ECDH
/// and two hashes, no decryption. Returns the conversation key to open it with.
pub fn check_drop(
    recipient: &SecretKey,
    prefix: &Prefix,
    tag: &Tag,
    envelope: &[u8],
) -> Result<ConversationKey, DropError> {
    if !prefix.matches(tag) {
        return Err(DropError::NotMine);
    }
    let parsed = Envelope::parse(envelope).map_err(DropError::Envelope)?;
    let key = parsed.conversation_key(recipient);
    if drop_tag(prefix, &key) != *tag {
        return Err(DropError::NotMine);
    }
    Ok(key)
}

/// Checks and opens a stranger-path candidate.
pub fn open_drop(
    recipient: &SecretKey,
    prefix: &Prefix,
    tag: &Tag,
    envelope: &[u8],
) -> Result<OpenedLetter, DropError> {
    let key = check_drop(recipient, prefix, tag, envelope)?;
    let parsed = Envelope::parse(envelope).map_err(DropError::Envelope)?;
    Ok(parsed.open_with_key(recipient, &key)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;
    use crate::payload::Payload;
    use proptest::prelude::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
    }

    fn letter(sender: Option<PublicKey>) -> Letter {
        Letter {
            sender,
            recipient: key(2).public_key(),
            created_at: 1,
            record_id: "d1".into(),
            payload: Payload::Text("psst".into()),
        }
    }

    #[test]
    fn stranger_drop_is_found_and_opened() {
        let prefix = Prefix::new(12, 0xabc0_0000).expect("ok");
        let l = letter(Some(key(1).public_key()));
        let (tag, env) =
            seal_drop_with_nonce(&l, Some(&key(1)), &prefix, &[3; 32], &[4; 32], &[5; 32]).expect("seals");
        assert!(prefix.matches(&tag));
        assert_eq!(open_drop(&key(2), &prefix, &tag, &env).expect("opens").letter, l);
        // Another recipient with the same prefix: the cheap check says no.
        assert_eq!(check_drop(&key(9), &prefix, &tag, &env).err(), Some(DropError::NotMine));
    }

    #[test]
    fn contact_drop_uses_chain_tag() {
        let prefix = Prefix::new(4, 0x3000_0000).expect("ok");
        let (alice, bob) = (key(1), key(2));
        let chain = ChainKey::derive(&alice, &bob.public_key(), &alice.public_key(), &bob.public_key());
        let l = letter(Some(alice.public_key()));
        let (tag, env) =
            seal_contact_drop_with_nonce(&l, &alice, &prefix, &chain, 5, &[3; 32], &[4; 32], &[5; 32])
                .expect("seals");
        let at_bob = ChainKey::derive(&bob, &alice.public_key(), &alice.public_key(), &bob.public_key());
        assert_eq!(at_bob.tag(&prefix, 5), tag);
        // Not a stranger-path tag, but the envelope itself opens normally.
        assert_eq!(check_drop(&bob, &prefix, &tag, &env).err(), Some(DropError::NotMine));
        assert_eq!(crate::seal::open(&bob, &env).expect("opens").letter, l);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn flipped_tag_or_envelope_bits_never_open(bit in 0usize..(8 * 200)) {
            let prefix = Prefix::new(8, 0x7700_0000).expect("ok");
            let (tag, env) = seal_drop_with_nonce(&letter(None), None, &prefix, &[3; 32], &[4; 32], &[5; 32]).expect("seals");
            let mut bad_tag = tag;
            bad_tag.0[(bit / 8) % 20] ^= 1 << (bit % 8);
            prop_assert!(open_drop(&key(2), &prefix, &bad_tag, &env).is_err());
            let mut bad_env = env.clone();
            let i = (bit / 8) % bad_env.len();
            bad_env[i] ^= 1 << (bit % 8);
            prop_assert!(open_drop(&key(2), &prefix, &tag, &bad_env).is_err());
        }
    }
}
