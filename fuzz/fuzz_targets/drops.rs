#![no_main]
//! Drops: `drops::check_drop` and `drops::open_drop` with a fixed recipient key, the prefix
//! from `tag::Prefix::truncate` over input bytes, and the tag either from the input or (to get
//! past the tag check) computed for the envelope, with the envelope raw or a valid NIP-44
//! payload around input bytes.
//!
//! Input: `mode, prefix bits, prefix value (4 bytes, big-endian), rest`.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::drops::{check_drop, open_drop};
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::nip44;
use pigeonhole_proto::seal::{ENVELOPE_VERSION, Envelope, Letter};
use pigeonhole_proto::tag::{Prefix, Tag, drop_tag};

static RECIPIENT: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::from_bytes(&[2; 32]).expect("valid scalar"));
static EPHEMERAL: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::from_bytes(&[3; 32]).expect("valid scalar"));

fuzz_target!(|data: &[u8]| {
    let [mode, bits, v0, v1, v2, v3, rest @ ..] = data else { return };
    let Ok(prefix) = Prefix::truncate(bits % 33, u32::from_be_bytes([*v0, *v1, *v2, *v3])) else { return };
    match mode % 3 {
        // Tag and envelope straight from the input.
        0 => {
            let Some((tag, envelope)) = rest.split_first_chunk::<20>() else { return };
            let tag = Tag(*tag);
            if let Ok(key) = check_drop(&RECIPIENT, &prefix, &tag, envelope) {
                assert!(prefix.matches(&tag));
                assert_eq!(drop_tag(&prefix, &key), tag);
            }
            let _ = open_drop(&RECIPIENT, &prefix, &tag, envelope);
        }
        // The right tag for an envelope from the input.
        1 => {
            let Ok(parsed) = Envelope::parse(rest) else { return };
            let tag = drop_tag(&prefix, &parsed.conversation_key(&RECIPIENT));
            assert!(prefix.matches(&tag));
            assert!(check_drop(&RECIPIENT, &prefix, &tag, rest).is_ok());
            let _ = open_drop(&RECIPIENT, &prefix, &tag, rest);
        }
        // Input bytes as the letter inside a well-formed envelope with the right tag.
        _ => {
            let mut envelope = vec![ENVELOPE_VERSION];
            envelope.extend_from_slice(&EPHEMERAL.public_key().to_bytes());
            envelope.push(0);
            let key = Envelope::parse(&envelope).expect("valid header").conversation_key(&RECIPIENT);
            let Ok(payload) = nip44::encrypt_with_nonce(&key, rest, &[9; 32]) else { return };
            envelope.pop();
            envelope.extend_from_slice(&payload);
            let tag = drop_tag(&prefix, &key);
            let opened = open_drop(&RECIPIENT, &prefix, &tag, &envelope);
            match Letter::decode_and_verify(rest) {
                Ok(l) if l.letter.recipient == RECIPIENT.public_key() => assert_eq!(opened, Ok(l)),
                _ => assert!(opened.is_err()),
            }
        }
    }
});
