#![no_main]
//! Keys, signatures and tags from text: `PublicKey::parse`, `SecretKey::parse`,
//! `PublicKey::from_slice`, `Signature::from_hex`/`from_slice`, `Tag::from_hex`/`from_slice`;
//! what parses round-trips through its hex and bech32m forms.

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::keys::{PublicKey, SecretKey, Signature};
use pigeonhole_proto::tag::Tag;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(pk) = PublicKey::parse(&text) {
        assert_eq!(PublicKey::parse(&pk.to_hex()), Ok(pk));
        assert_eq!(PublicKey::parse(&pk.to_bech32m()), Ok(pk));
        assert_eq!(PublicKey::from_bytes(&pk.to_bytes()), Ok(pk));
    }
    if let Ok(sk) = SecretKey::parse(&text) {
        assert_eq!(SecretKey::parse(&sk.to_bech32m()).as_ref(), Ok(&sk));
        assert_eq!(SecretKey::parse(&hex_of(&sk.to_bytes()[..])).as_ref(), Ok(&sk));
        assert_eq!(SecretKey::from_bytes(&sk.to_bytes()).as_ref(), Ok(&sk));
    }
    if let Ok(pk) = PublicKey::from_slice(data) {
        assert_eq!(pk.to_bytes()[..], *data);
    }
    if let Ok(sig) = Signature::from_slice(data) {
        assert_eq!(sig.to_bytes()[..], *data);
    }
    if let Ok(tag) = Tag::from_slice(data) {
        assert_eq!(tag.0[..], *data);
    }
    if let Ok(sig) = Signature::from_hex(&text) {
        assert!(sig.to_hex().eq_ignore_ascii_case(&text));
        assert_eq!(Signature::from_hex(&sig.to_hex()), Ok(sig));
    }
    if let Ok(tag) = Tag::from_hex(&text) {
        assert!(tag.to_hex().eq_ignore_ascii_case(&text));
        assert_eq!(Tag::from_hex(&tag.to_hex()), Ok(tag));
    }
});

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
