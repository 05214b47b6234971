#![no_main]
//! Sealed envelopes: `seal::Envelope::parse`, `seal::open` (fixed recipient key),
//! `seal::Letter::decode_and_verify`, the same letter bytes behind a valid NIP-44 MAC, and
//! `payload::Payload::decode_body` (kind from the first two bytes) with re-encode and re-seal.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::nip44::{self, ConversationKey};
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::seal::{self, ENVELOPE_VERSION, Envelope, Letter};

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
}

static SENDER: LazyLock<SecretKey> = LazyLock::new(|| key(1));
static RECIPIENT: LazyLock<SecretKey> = LazyLock::new(|| key(2));
/// Envelope header with a fixed ephemeral key, and its conversation key with the recipient.
static HEADER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut header = vec![ENVELOPE_VERSION];
    header.extend_from_slice(&key(3).public_key().to_bytes());
    header
});
static CONVERSATION: LazyLock<ConversationKey> = LazyLock::new(|| {
    let mut bytes = HEADER.clone();
    bytes.push(0);
    Envelope::parse(&bytes).expect("valid header").conversation_key(&RECIPIENT)
});

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::parse(data) {
        let mut bytes = vec![ENVELOPE_VERSION];
        bytes.extend_from_slice(&env.ephemeral.to_bytes());
        bytes.extend_from_slice(env.payload);
        assert_eq!(bytes, data);
    }
    let _ = seal::open(&RECIPIENT, data);

    let letter = Letter::decode_and_verify(data);
    if let Ok(opened) = &letter {
        assert_eq!(opened.letter.encode(opened.signature.as_ref()), data);
    }
    // The input as the plaintext of an envelope with a valid MAC: `open` must agree with
    // `decode_and_verify` plus the recipient check.
    if let Ok(payload) = nip44::encrypt_with_nonce(&CONVERSATION, data, &[9; 32]) {
        let mut env = HEADER.clone();
        env.extend_from_slice(&payload);
        let opened = seal::open(&RECIPIENT, &env);
        match letter {
            Ok(l) if l.letter.recipient == RECIPIENT.public_key() => assert_eq!(opened, Ok(l)),
            _ => assert!(opened.is_err()),
        }
    }

    if let [a, b, body @ ..] = data {
        let kind = u16::from_be_bytes([*a, *b]);
        if let Ok(payload) = Payload::decode_body(kind, body) {
            assert_eq!(payload.encode_body(), body);
            assert_eq!(payload.kind(), kind);
            let letter = Letter {
                sender: Some(SENDER.public_key()),
                recipient: RECIPIENT.public_key(),
                created_at: 1,
                record_id: "r1".into(),
                payload,
            };
            if letter.validate().is_ok() {
                let env = seal::seal_with_nonce(&letter, Some(&SENDER), &[3; 32], &[4; 32], &[5; 32])
                    .expect("a valid letter seals");
                assert_eq!(seal::open(&RECIPIENT, &env).map(|o| o.letter), Ok(letter));
            }
        }
    }
});
