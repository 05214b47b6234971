#![no_main]
//! Requests: `Message::decode`, `SignedMessage::from_bytes`, both JSON forms and a session
//! frame's bare `msg` object; whatever decodes must re-encode to the same bytes, survive the
//! other forms, and verify once signed.

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::request::{Message, SignedMessage};

static SIGNER: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::from_bytes(&[1; 32]).expect("valid scalar"));

/// A valid message round-trips through bytes and JSON, and once signed by its `from`, the
/// signed forms decode and verify.
fn check_message(m: &Message) {
    assert_eq!(Message::decode(&m.signing_bytes()).as_ref(), Ok(m));
    assert_eq!(Message::from_json(&m.to_json()).as_ref(), Ok(m));
    let mut m = m.clone();
    m.from = SIGNER.public_key();
    let signed = m.sign_with_aux(&SIGNER, &[0; 32]).expect("a decoded message signs");
    assert_eq!(SignedMessage::from_bytes(&signed.to_bytes()).as_ref(), Ok(&signed));
    assert_eq!(SignedMessage::from_json(&signed.to_json()).as_ref(), Ok(&signed));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.signing_bytes(), data);
        check_message(&m);
    }
    if let Ok(s) = SignedMessage::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
        check_message(s.message());
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = Message::from_json(&text) {
        check_message(&m);
    }
    // A session frame's `msg` object alone: whatever it accepts, the wrapped form accepts too.
    if let Ok(m) = Message::from_json_msg(&text) {
        assert_eq!(Message::from_json(&format!("{{\"msg\":{text}}}")).as_ref(), Ok(&m));
        check_message(&m);
    }
    if let Ok(s) = SignedMessage::from_json(&text) {
        assert_eq!(SignedMessage::from_bytes(&s.to_bytes()).as_ref(), Ok(&s));
        assert_eq!(SignedMessage::from_json(&s.to_json()).as_ref(), Ok(&s));
        check_message(s.message());
    }
});
