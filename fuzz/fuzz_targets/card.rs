#![no_main]
//! Identity cards: `IdentityCard::from_bytes`, `from_json`, `from_bech32m` and `parse`; every
//! card that decodes (or that the card layout read from the input signs) round-trips through
//! all three forms, and the bytes form re-encodes to the input.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::card::{CardContent, IdentityCard};
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::tag::Prefix;
use pigeonhole_proto::wire::Reader;

static OWNER: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::from_bytes(&[4; 32]).expect("valid scalar"));

fn check(card: &IdentityCard) {
    assert_eq!(IdentityCard::from_bytes(&card.to_bytes()).as_ref(), Ok(card));
    assert_eq!(IdentityCard::parse(&card.to_bech32m()).as_ref(), Ok(card));
    assert_eq!(IdentityCard::parse(&card.to_json()).as_ref(), Ok(card));
}

/// Card content in the card's byte layout (after the version byte, without the signature),
/// owned by the fixed key, so the fuzzer reaches signing without forging a signature.
fn content_from(data: &[u8]) -> Option<CardContent> {
    let mut r = Reader::new(data);
    let label = r.str8(usize::MAX, "label").ok()?.to_owned();
    let count = r.u8("relay count").ok()? % 10;
    let relays = (0..count).map(|_| r.str8(usize::MAX, "relay").map(str::to_owned)).collect::<Result<Vec<_>, _>>().ok()?;
    let prefix = Prefix::truncate(r.u8("bits").ok()? % 33, r.u32("value").ok()?).ok()?;
    let updated = r.u64("updated").ok()?;
    Some(CardContent { label, pubkey: OWNER.public_key(), relays, prefix, updated })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(card) = IdentityCard::from_bytes(data) {
        assert_eq!(card.to_bytes(), data);
        check(&card);
    }
    let text = String::from_utf8_lossy(data);
    for parsed in [IdentityCard::from_json(&text), IdentityCard::from_bech32m(&text), IdentityCard::parse(&text)] {
        if let Ok(card) = parsed {
            check(&card);
        }
    }
    if let Some(content) = content_from(data)
        && let Ok(card) = content.sign_with_aux(&OWNER, &[0; 32])
    {
        check(&card);
    }
});
