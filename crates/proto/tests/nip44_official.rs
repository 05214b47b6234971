//! The official NIP-44 v2 test vectors (`paulmillr/nip44`, `nip44.vectors.json`, pinned by
//! sha256 in `spec/vectors/official/SOURCES.md`), every section, valid and invalid.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pigeonhole_proto::nip44::{
    self, ConversationKey, MAX_PLAINTEXT, Nip44Error, calc_padded_len, conversation_key, decrypt,
    decrypt_base64, encrypt_with_nonce, encrypt_with_nonce_base64, message_keys,
};
use secp256k1::{Secp256k1, SecretKey, XOnlyPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

const VECTORS_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/vectors/official/nip44.vectors.json");

/// The hash the NIP publishes for the vectors file.
const VECTORS_SHA256: &str = "269ed0f69e4c192512cc779e78c555090cebc7c785b609e338a62afc3ce25040";

fn raw_file() -> Vec<u8> {
    std::fs::read(VECTORS_PATH).unwrap_or_else(|e| panic!("cannot read {VECTORS_PATH}: {e}"))
}

fn v2() -> Value {
    let json: Value = serde_json::from_slice(&raw_file()).expect("vectors file is JSON");
    json["v2"].clone()
}

fn array<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value.as_array().unwrap_or_else(|| panic!("{what} is not an array"))
}

fn text<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field].as_str().unwrap_or_else(|| panic!("field {field} missing in {case}"))
}

fn bytes32(case: &Value, field: &str) -> [u8; 32] {
    let raw = hex::decode(text(case, field)).expect("hex field");
    raw.try_into().unwrap_or_else(|_| panic!("{field} is not 32 bytes in {case}"))
}

fn number(value: &Value) -> usize {
    let n = value.as_u64().unwrap_or_else(|| panic!("{value} is not a number"));
    usize::try_from(n).expect("fits usize")
}

fn secret(case: &Value, field: &str) -> SecretKey {
    SecretKey::from_slice(&bytes32(case, field)).expect("valid secret key")
}

fn x_only(case: &Value, field: &str) -> XOnlyPublicKey {
    XOnlyPublicKey::from_slice(&bytes32(case, field)).expect("valid x-only public key")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn vectors_file_is_the_published_one() {
    assert_eq!(sha256_hex(&raw_file()), VECTORS_SHA256, "nip44.vectors.json differs from upstream");
}

#[test]
fn valid_get_conversation_key() {
    let cases = array(&v2()["valid"]["get_conversation_key"], "valid.get_conversation_key").clone();
    for case in &cases {
        let key = conversation_key(&secret(case, "sec1"), &x_only(case, "pub2"));
        assert_eq!(hex::encode(key.as_bytes()), text(case, "conversation_key"), "{case}");
    }
    assert_eq!(cases.len(), 35);
}

#[test]
fn valid_get_message_keys() {
    let section = v2()["valid"]["get_message_keys"].clone();
    let key = ConversationKey::from_bytes(bytes32(&section, "conversation_key"));
    let cases = array(&section["keys"], "valid.get_message_keys.keys");
    for case in cases {
        let keys = message_keys(&key, &bytes32(case, "nonce"));
        assert_eq!(hex::encode(keys.chacha_key()), text(case, "chacha_key"), "{case}");
        assert_eq!(hex::encode(keys.chacha_nonce()), text(case, "chacha_nonce"), "{case}");
        assert_eq!(hex::encode(keys.hmac_key()), text(case, "hmac_key"), "{case}");
    }
    assert_eq!(cases.len(), 32);
}

#[test]
fn valid_calc_padded_len() {
    let cases = array(&v2()["valid"]["calc_padded_len"], "valid.calc_padded_len").clone();
    for pair in &cases {
        let pair = array(pair, "calc_padded_len pair");
        let (len, padded) = (number(&pair[0]), number(&pair[1]));
        assert_eq!(calc_padded_len(len), Ok(padded), "calc_padded_len({len})");
    }
    assert_eq!(cases.len(), 24);
}

#[test]
fn valid_encrypt_decrypt() {
    let secp = Secp256k1::new();
    let cases = array(&v2()["valid"]["encrypt_decrypt"], "valid.encrypt_decrypt").clone();
    for case in &cases {
        let (sec1, sec2) = (secret(case, "sec1"), secret(case, "sec2"));
        let (pub1, _) = sec1.x_only_public_key(&secp);
        let (pub2, _) = sec2.x_only_public_key(&secp);
        let key = conversation_key(&sec1, &pub2);
        assert_eq!(hex::encode(key.as_bytes()), text(case, "conversation_key"), "{case}");
        // The conversation key is symmetric.
        assert_eq!(conversation_key(&sec2, &pub1).as_bytes(), key.as_bytes(), "{case}");

        let nonce = bytes32(case, "nonce");
        let plaintext = text(case, "plaintext");
        let payload = text(case, "payload");
        let encrypted = encrypt_with_nonce_base64(&key, plaintext.as_bytes(), &nonce).expect("encrypt");
        assert_eq!(encrypted, payload, "{case}");
        assert_eq!(decrypt_base64(&key, payload).expect("decrypt"), plaintext.as_bytes(), "{case}");

        // The raw forms agree with the base64 forms.
        let raw = BASE64.decode(payload).expect("payload is base64");
        assert_eq!(encrypt_with_nonce(&key, plaintext.as_bytes(), &nonce).expect("encrypt"), raw);
        assert_eq!(decrypt(&key, &raw).expect("decrypt"), plaintext.as_bytes(), "{case}");
    }
    assert_eq!(cases.len(), 10);
}

#[test]
fn valid_encrypt_decrypt_long_msg() {
    let cases = array(&v2()["valid"]["encrypt_decrypt_long_msg"], "valid.encrypt_decrypt_long_msg").clone();
    for case in &cases {
        let key = ConversationKey::from_bytes(bytes32(case, "conversation_key"));
        let nonce = bytes32(case, "nonce");
        let plaintext = text(case, "pattern").repeat(number(&case["repeat"]));
        assert_eq!(sha256_hex(plaintext.as_bytes()), text(case, "plaintext_sha256"), "{case}");

        let payload = encrypt_with_nonce_base64(&key, plaintext.as_bytes(), &nonce).expect("encrypt");
        assert_eq!(sha256_hex(payload.as_bytes()), text(case, "payload_sha256"), "{case}");
        assert_eq!(decrypt_base64(&key, &payload).expect("decrypt"), plaintext.as_bytes(), "{case}");
    }
    assert_eq!(cases.len(), 3);
}

#[test]
fn invalid_encrypt_msg_lengths() {
    let key = ConversationKey::from_bytes([0x11; 32]);
    let nonce = [0x22; 32];
    let cases = array(&v2()["invalid"]["encrypt_msg_lengths"], "invalid.encrypt_msg_lengths").clone();
    for len in cases.iter().map(number) {
        assert!(len == 0 || len > MAX_PLAINTEXT, "vector length {len} is not out of range");
        let plaintext = vec![b'a'; len];
        assert_eq!(encrypt_with_nonce(&key, &plaintext, &nonce), Err(Nip44Error::PlaintextLength(len)));
        assert_eq!(
            encrypt_with_nonce_base64(&key, &plaintext, &nonce),
            Err(Nip44Error::PlaintextLength(len))
        );
    }
    assert_eq!(cases.len(), 4);
}

#[test]
fn invalid_get_conversation_key() {
    let cases = array(&v2()["invalid"]["get_conversation_key"], "invalid.get_conversation_key").clone();
    for case in &cases {
        let note = text(case, "note");
        let sec = SecretKey::from_slice(&bytes32(case, "sec1"));
        let public = XOnlyPublicKey::from_slice(&bytes32(case, "pub2"));
        // The typed API cannot even be called: one of the two inputs must fail to parse,
        // and it must be the one the vector's note blames.
        if note.starts_with("sec1") {
            assert!(sec.is_err(), "secret key accepted: {case}");
        } else if note.starts_with("pub2") {
            assert!(public.is_err(), "public key accepted: {case}");
        } else {
            assert!(sec.is_err() || public.is_err(), "both keys accepted: {case}");
        }
    }
    assert_eq!(cases.len(), 8);
}

#[test]
fn invalid_decrypt() {
    let cases = array(&v2()["invalid"]["decrypt"], "invalid.decrypt").clone();
    for case in &cases {
        let key = ConversationKey::from_bytes(bytes32(case, "conversation_key"));
        let payload = text(case, "payload");
        let note = text(case, "note");
        let err = decrypt_base64(&key, payload).expect_err(note);
        let expected = match note {
            "unknown encryption version" => Some(Nip44Error::UnsupportedEncoding),
            "invalid base64" => Some(Nip44Error::InvalidBase64),
            "invalid MAC" => Some(Nip44Error::InvalidMac),
            "invalid padding" => Some(Nip44Error::InvalidPadding),
            _ => note
                .strip_prefix("unknown encryption version ")
                .map(|v| Nip44Error::UnsupportedVersion(v.parse().expect("version number in note")))
                .or_else(|| {
                    note.strip_prefix("invalid payload length: ")
                        .map(|n| Nip44Error::InvalidBase64Length(n.parse().expect("length in note")))
                }),
        };
        let expected = expected.unwrap_or_else(|| panic!("unrecognised note {note:?}: extend this mapping"));
        assert_eq!(err, expected, "{case}");
    }
    assert_eq!(cases.len(), 12);
}

#[test]
fn module_constants_match_the_nip() {
    assert_eq!(nip44::VERSION, 2);
    assert_eq!(nip44::MIN_PLAINTEXT, 1);
    assert_eq!(nip44::MAX_PLAINTEXT, 65535);
}
