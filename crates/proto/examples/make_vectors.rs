//! Writes `spec/vectors/*.json` from fixed keys and nonces.
//!
//! Vectors are append-only: a change to an existing case is a protocol break. Run with
//! `cargo run -p pigeonhole-proto --example make_vectors` and review the diff; the test
//! `tests/vectors.rs` checks every case against the code.

#![allow(clippy::print_stdout, reason = "a developer tool that reports what it wrote")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "fixed inputs; a failure is a bug in the generator"
)]

use std::path::PathBuf;

use pigeonhole_proto::card::CardContent;
use pigeonhole_proto::drops::seal_drop_with_nonce;
use pigeonhole_proto::hash::{tagged_hash, tags};
use pigeonhole_proto::keyfile::{self, KeySecurity};
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::nip44;
use pigeonhole_proto::payload::{AckEntry, Payload, kind};
use pigeonhole_proto::postage::{self, IssueRequest, IssueResponse, PostageKey, Stamp};
use pigeonhole_proto::receipt::{CommitGroup, DropLeaf, PostageKeys, Receipt, ReceiptLeaf, drop_hash};
use pigeonhole_proto::request::{
    Delete, Inventory, Listen, Message, Read, Register, Request, Session, Usage, Write,
};
use pigeonhole_proto::seal::{Letter, seal_with_nonce};
use pigeonhole_proto::tag::{ChainKey, Prefix, Tag};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

fn secret(n: u8) -> SecretKey {
    SecretKey::from_bytes(&[n; 32]).unwrap()
}

fn sk_hex(n: u8) -> String {
    hex::encode([n; 32])
}

fn bytes32(n: u8) -> [u8; 32] {
    [n; 32]
}

fn file(description: &str, valid: Vec<Value>, invalid: Vec<Value>) -> Value {
    json!({ "description": description, "valid": valid, "invalid": invalid })
}

fn keys() -> Value {
    let mut valid = Vec::new();
    for n in [1u8, 2, 3, 0x7f] {
        let sk = secret(n);
        valid.push(json!({
            "op": "public_from_secret",
            "note": format!("secret [{n:#04x}; 32]: x-only public key, its bech32m form and the secret's bech32m form"),
            "secret": sk_hex(n),
            "public": sk.public_key().to_hex(),
            "public_bech32m": sk.public_key().to_bech32m(),
            "secret_bech32m": sk.to_bech32m().as_str(),
        }));
    }
    valid.push(json!({"op": "parse_public", "note": "NIP-19 example npub imports as its hex key",
        "text": "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg",
        "public": "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"}));
    valid.push(json!({"op": "parse_secret", "note": "NIP-19 example nsec imports as its hex key",
        "text": "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5",
        "secret": "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"}));
    let pk1 = secret(1).public_key();
    valid.push(json!({"op": "parse_public", "note": "upper-case hex is accepted",
        "text": pk1.to_hex().to_uppercase(), "public": pk1.to_hex()}));
    valid.push(json!({"op": "parse_public", "note": "surrounding whitespace is ignored",
        "text": format!("  {}\n", pk1.to_bech32m()), "public": pk1.to_hex()}));

    let b32 = pk1.to_bech32m();
    let mut bad_checksum = b32.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'q' { 'p' } else { 'q' });
    let mixed = format!("{}{}", &b32[..10].to_uppercase(), &b32[10..]);
    let npub_m =
        bech32::encode::<bech32::Bech32m>(bech32::Hrp::parse("npub").unwrap(), &pk1.to_bytes()).unwrap();
    let pigeon_plain =
        bech32::encode::<bech32::Bech32>(bech32::Hrp::parse("pigeon").unwrap(), &pk1.to_bytes()).unwrap();
    let short =
        bech32::encode::<bech32::Bech32m>(bech32::Hrp::parse("pigeon").unwrap(), &pk1.to_bytes()[..31])
            .unwrap();
    let wrong_hrp =
        bech32::encode::<bech32::Bech32m>(bech32::Hrp::parse("lnbc").unwrap(), &pk1.to_bytes()).unwrap();
    let mut x5 = [0u8; 32];
    x5[31] = 5;
    let invalid = vec![
        json!({"op": "parse_public", "note": "63 hex characters", "text": &pk1.to_hex()[..63], "error": "InvalidBech32"}),
        json!({"op": "parse_public", "note": "64 characters that are not hex", "text": "g".repeat(64), "error": "InvalidBech32"}),
        json!({"op": "parse_public", "note": "bech32m checksum with its last character changed", "text": bad_checksum, "error": "InvalidBech32"}),
        json!({"op": "parse_public", "note": "mixed case bech32m", "text": mixed, "error": "InvalidBech32"}),
        json!({"op": "parse_public", "note": "npub with a bech32m checksum (NIP-19 uses bech32)", "text": npub_m, "error": "InvalidBech32"}),
        json!({"op": "parse_public", "note": "pigeon key with the old bech32 checksum", "text": pigeon_plain, "error": "InvalidBech32"}),
        json!({"op": "parse_public", "note": "31-byte key in a valid bech32m string", "text": short, "error": "InvalidLength"}),
        json!({"op": "parse_public", "note": "bech32m with a prefix that is not a key", "text": wrong_hrp, "error": "WrongPrefix"}),
        json!({"op": "parse_public", "note": "x = 5 is not on secp256k1", "text": hex::encode(x5), "error": "InvalidPublicKey"}),
        json!({"op": "parse_public", "note": "x >= field size p", "text": "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "error": "InvalidPublicKey"}),
        json!({"op": "parse_secret", "note": "zero is not a secret key", "text": "00".repeat(32), "error": "InvalidSecretKey"}),
        json!({"op": "parse_secret", "note": "the curve order n itself", "text": "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141", "error": "InvalidSecretKey"}),
        json!({"op": "parse_secret", "note": "a public key string is not a secret", "text": pk1.to_bech32m(), "error": "WrongPrefix"}),
    ];
    let mut valid_kf = valid;
    let ncryptsec = keyfile::encrypt_with_nonce(
        &secret(1),
        "correct horse",
        4,
        [0x11; 16],
        [0x22; 24],
        KeySecurity::Secure,
    )
    .unwrap();
    valid_kf.push(
        json!({"op": "ncryptsec", "note": "NIP-49 encryption with log_n = 4 (cheap, for vectors only)",
        "secret": sk_hex(1), "password": "correct horse", "log_n": 4, "salt": hex::encode([0x11; 16]),
        "nonce": hex::encode([0x22; 24]), "key_security": 1, "ncryptsec": ncryptsec}),
    );
    let mut invalid = invalid;
    invalid.push(json!({"op": "ncryptsec_decrypt", "note": "wrong passphrase", "ncryptsec": ncryptsec,
        "password": "Correct horse", "error": "WrongPassword"}));
    invalid.push(json!({"op": "ncryptsec_decrypt", "note": "official NIP-49 string with its checksum broken",
        "ncryptsec": "ncryptsec1qgg9947rlpvqu76pj5ecreduf9jxhselq2nae2kghhvd5g7dgjtcxfqtd67p9m0w57lspw8gsq6yphnm8623nsl8xn9j4jdzz84zm3frztj3z7s35vpzmqf6ksu8r89qk5z2zxfmu5gv8th8wclt0h4q",
        "password": "nostr", "error": "InvalidBech32"}));
    file("Keys: x-only public keys, text forms, Nostr imports, NIP-49 encrypted secrets", valid_kf, invalid)
}

fn signing() -> Value {
    let mut valid = Vec::new();
    for (tag, data) in [(tags::REQUEST, &b""[..]), (tags::LETTER, &b"abc"[..]), (tags::CARD, &[0u8; 64][..])]
    {
        valid.push(json!({"op": "tagged_hash", "note": format!("tagged hash under `{tag}`"), "tag": tag,
            "data": hex::encode(data), "hash": hex::encode(tagged_hash(tag, &[data]))}));
    }
    for (n, aux) in [(1u8, 0u8), (2, 1), (3, 0xff)] {
        let digest = tagged_hash(tags::REQUEST, &[&[n]]);
        let sig = secret(n).sign_with_aux(&digest, &bytes32(aux));
        valid.push(
            json!({"op": "sign", "note": "BIP-340 signature of a 32-byte digest with fixed aux randomness",
            "secret": sk_hex(n), "public": secret(n).public_key().to_hex(), "digest": hex::encode(digest),
            "aux": hex::encode(bytes32(aux)), "sig": sig.to_hex()}),
        );
    }
    let digest = tagged_hash(tags::REQUEST, &[&[1]]);
    let sig = secret(1).sign_with_aux(&digest, &bytes32(0)).to_bytes();
    let pk = secret(1).public_key().to_hex();
    let with = |f: &dyn Fn(&mut [u8; 64])| {
        let mut s = sig;
        f(&mut s);
        hex::encode(s)
    };
    let n_order = hex::decode("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141").unwrap();
    let invalid = vec![
        json!({"op": "verify", "note": "last bit of s flipped", "public": pk, "digest": hex::encode(digest), "sig": with(&|s| s[63] ^= 1), "error": "SignatureError"}),
        json!({"op": "verify", "note": "first bit of r flipped", "public": pk, "digest": hex::encode(digest), "sig": with(&|s| s[0] ^= 0x80), "error": "SignatureError"}),
        json!({"op": "verify", "note": "s replaced by the curve order n (out of range, the 'high-S' case for Schnorr)", "public": pk, "digest": hex::encode(digest), "sig": with(&|s| s[32..].copy_from_slice(&n_order)), "error": "SignatureError"}),
        json!({"op": "verify", "note": "r = p, not a field element", "public": pk, "digest": hex::encode(digest), "sig": with(&|s| s[..32].copy_from_slice(&hex::decode("fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f").unwrap())), "error": "SignatureError"}),
        json!({"op": "verify", "note": "valid signature, other key", "public": secret(2).public_key().to_hex(), "digest": hex::encode(digest), "sig": hex::encode(sig), "error": "SignatureError"}),
        json!({"op": "verify", "note": "valid signature, digest changed", "public": pk, "digest": hex::encode(tagged_hash(tags::REQUEST, &[&[2]])), "sig": hex::encode(sig), "error": "SignatureError"}),
    ];
    file("Signing: BIP-340 tagged hashes and signatures over canonical bytes", valid, invalid)
}

fn letter_json(l: &Letter) -> Value {
    json!({"sender": l.sender.map(|k| k.to_hex()), "recipient": l.recipient.to_hex(), "created_at": l.created_at,
        "record_id": l.record_id, "kind": l.payload.kind(), "body": hex::encode(l.payload.encode_body())})
}

fn sealing() -> Value {
    let alice = secret(1);
    let bob = secret(2);
    let base = Letter {
        sender: Some(alice.public_key()),
        recipient: bob.public_key(),
        created_at: 1_700_000_000_000,
        record_id: "msg-0001".into(),
        payload: Payload::Text("Hello Bob, it's Alice.".into()),
    };
    let mut letters = vec![("signed text letter", base.clone())];
    let mut anon = base.clone();
    anon.sender = None;
    anon.record_id = "anon-1".into();
    letters.push(("anonymous letter: no sender, no signature", anon));
    let mut ack = base.clone();
    ack.record_id = "ack-1".into();
    ack.payload = Payload::Ack(vec![AckEntry {
        record_id: "msg-0001".into(),
        relay: secret(9).public_key(),
        read_at: 1_700_000_100_000,
    }]);
    letters.push(("acknowledgement payload", ack));
    let mut unknown = base.clone();
    unknown.record_id = "x-1".into();
    unknown.payload = Payload::Unknown { kind: 4242, body: vec![1, 2, 3] };
    letters.push(("unknown payload kind is carried as bytes", unknown));
    let mut long = base.clone();
    long.record_id = "long".into();
    long.payload = Payload::Text("x".repeat(1000));
    letters.push(("1000-byte text (padding to 1024)", long));

    let mut valid = Vec::new();
    for (i, (note, l)) in letters.iter().enumerate() {
        let eph = bytes32(0x30 + i as u8);
        let nonce = bytes32(0x40 + i as u8);
        let aux = bytes32(0x50 + i as u8);
        let sender = l.sender.map(|_| &alice);
        let env = seal_with_nonce(l, sender, &eph, &nonce, &aux).unwrap();
        valid.push(json!({"op": "seal", "note": note,
            "sender_secret": l.sender.map(|_| sk_hex(1)), "recipient_secret": sk_hex(2),
            "ephemeral_secret": hex::encode(eph), "nonce": hex::encode(nonce), "aux": hex::encode(aux),
            "letter": letter_json(l), "envelope": hex::encode(env)}));
    }
    let env = seal_with_nonce(&base, Some(&alice), &bytes32(0x30), &bytes32(0x40), &bytes32(0x50)).unwrap();
    let modified = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = env.clone();
        f(&mut e);
        hex::encode(e)
    };
    // A letter signed by Alice for Bob, re-sealed by Bob to Carol.
    let signature = secret(1).sign_with_aux(&base.signing_hash(), &bytes32(0x50));
    let carol = secret(3);
    let ck = nip44::conversation_key(
        &secp256k1::SecretKey::from_slice(&[0x61; 32]).unwrap(),
        &secp256k1::XOnlyPublicKey::from_slice(&carol.public_key().to_bytes()).unwrap(),
    );
    let resealed_payload =
        nip44::encrypt_with_nonce(&ck, &base.encode(Some(&signature)), &bytes32(0x62)).unwrap();
    let mut resealed = vec![1u8];
    resealed.extend_from_slice(&secret(0x61).public_key().to_bytes());
    resealed.extend_from_slice(&resealed_payload);
    // Mallory signs a letter that claims Alice as its sender.
    let forged_sig = secret(4).sign_with_aux(&base.signing_hash(), &bytes32(0));
    let ck_bob = nip44::conversation_key(
        &secp256k1::SecretKey::from_slice(&[0x63; 32]).unwrap(),
        &secp256k1::XOnlyPublicKey::from_slice(&bob.public_key().to_bytes()).unwrap(),
    );
    let forged_payload =
        nip44::encrypt_with_nonce(&ck_bob, &base.encode(Some(&forged_sig)), &bytes32(0x64)).unwrap();
    let mut forged = vec![1u8];
    forged.extend_from_slice(&secret(0x63).public_key().to_bytes());
    forged.extend_from_slice(&forged_payload);
    // A letter whose version byte is 2, validly encrypted.
    let mut v2 = base.encode(Some(&signature));
    v2[0] = 2;
    let v2_payload = nip44::encrypt_with_nonce(&ck_bob, &v2, &bytes32(0x65)).unwrap();
    let mut v2_env = vec![1u8];
    v2_env.extend_from_slice(&secret(0x63).public_key().to_bytes());
    v2_env.extend_from_slice(&v2_payload);
    let invalid = vec![
        json!({"op": "open", "note": "opened by the sender instead of the recipient", "recipient_secret": sk_hex(1), "envelope": hex::encode(&env), "error": "Decrypt"}),
        json!({"op": "open", "note": "opened by a third key", "recipient_secret": sk_hex(3), "envelope": hex::encode(&env), "error": "Decrypt"}),
        json!({"op": "open", "note": "envelope version 2", "recipient_secret": sk_hex(2), "envelope": modified(&|e| e[0] = 2), "error": "UnknownVersion"}),
        json!({"op": "open", "note": "ephemeral key replaced by x = 5 (off the curve)", "recipient_secret": sk_hex(2), "envelope": modified(&|e| { e[1..33].fill(0); e[32] = 5; }), "error": "InvalidPublicKey"}),
        json!({"op": "open", "note": "last MAC byte flipped", "recipient_secret": sk_hex(2), "envelope": modified(&|e| { let n = e.len(); e[n - 1] ^= 1; }), "error": "InvalidMac"}),
        json!({"op": "open", "note": "a ciphertext byte flipped", "recipient_secret": sk_hex(2), "envelope": modified(&|e| e[100] ^= 0x10), "error": "InvalidMac"}),
        json!({"op": "open", "note": "truncated by one byte", "recipient_secret": sk_hex(2), "envelope": modified(&|e| { e.pop(); }), "error": "Decrypt"}),
        json!({"op": "open", "note": "truncated inside the header", "recipient_secret": sk_hex(2), "envelope": hex::encode(&env[..20]), "error": "Truncated"}),
        json!({"op": "open", "note": "empty input", "recipient_secret": sk_hex(2), "envelope": "", "error": "Truncated"}),
        json!({"op": "open", "note": "NIP-44 version byte changed to 1", "recipient_secret": sk_hex(2), "envelope": modified(&|e| e[33] = 1), "error": "UnsupportedVersion"}),
        json!({"op": "open", "note": "letter for Bob re-sealed to Carol: names another recipient", "recipient_secret": sk_hex(3), "envelope": hex::encode(resealed), "error": "WrongRecipient"}),
        json!({"op": "open", "note": "letter claims Alice as sender but Mallory signed it", "recipient_secret": sk_hex(2), "envelope": hex::encode(forged), "error": "BadSignature"}),
        json!({"op": "open", "note": "letter version 2 inside a valid envelope", "recipient_secret": sk_hex(2), "envelope": hex::encode(v2_env), "error": "UnknownVersion"}),
    ];
    let _ = kind::TEXT;
    file(
        "Sealing: NIP-44 v2 envelopes to an ephemeral ECDH key, letters with inner sender signatures",
        valid,
        invalid,
    )
}

fn tags_file() -> Value {
    let mut valid = Vec::new();
    for (bits, value) in
        [(0u8, 0u32), (1, 0x8000_0000), (8, 0xab00_0000), (16, 0x1234_0000), (32, 0xdead_beef)]
    {
        let key = nip44::ConversationKey::from_bytes(bytes32(0x77));
        let prefix = Prefix::new(bits, value).unwrap();
        let tag = pigeonhole_proto::tag::drop_tag(&prefix, &key);
        valid.push(json!({"op": "drop_tag", "note": format!("stranger-path tag with a {bits}-bit prefix"),
            "prefix": {"bits": bits, "value": value}, "conversation_key": hex::encode(bytes32(0x77)), "tag": tag.to_hex()}));
    }
    let (alice, bob) = (secret(1), secret(2));
    let chain = ChainKey::derive(&alice, &bob.public_key(), &alice.public_key(), &bob.public_key());
    for counter in [0u64, 1, 1000] {
        let prefix = Prefix::new(8, 0xab00_0000).unwrap();
        valid.push(json!({"op": "chain_tag", "note": format!("contact-path tag number {counter} from Alice to Bob"),
            "sender_secret": sk_hex(1), "recipient_secret": sk_hex(2), "prefix": {"bits": 8, "value": 0xab00_0000u32},
            "counter": counter, "tag": chain.tag(&prefix, counter).to_hex()}));
    }
    let letter = Letter {
        sender: Some(alice.public_key()),
        recipient: bob.public_key(),
        created_at: 1_700_000_000_000,
        record_id: "drop-1".into(),
        payload: Payload::Text("first contact".into()),
    };
    let prefix = Prefix::new(12, 0xabc0_0000).unwrap();
    let (tag, env) =
        seal_drop_with_nonce(&letter, Some(&alice), &prefix, &bytes32(0x31), &bytes32(0x41), &bytes32(0x51))
            .unwrap();
    valid.push(json!({"op": "seal_drop", "note": "a signed first-contact drop under a 12-bit prefix",
        "sender_secret": sk_hex(1), "recipient_secret": sk_hex(2), "prefix": {"bits": 12, "value": 0xabc0_0000u32},
        "ephemeral_secret": hex::encode(bytes32(0x31)), "nonce": hex::encode(bytes32(0x41)), "aux": hex::encode(bytes32(0x51)),
        "letter": letter_json(&letter), "tag": tag.to_hex(), "envelope": hex::encode(&env)}));
    let mut flipped = tag;
    flipped.0[19] ^= 1;
    let other_prefix = Tag(tag.0);
    let _ = other_prefix;
    let invalid = vec![
        json!({"op": "prefix", "note": "33 prefix bits", "bits": 33, "value": 0, "error": "PrefixTooLong"}),
        json!({"op": "prefix", "note": "value has bits past a 4-bit prefix", "bits": 4, "value": 0x0800_0000u32, "error": "PrefixValueOverflow"}),
        json!({"op": "prefix", "note": "L = 0 with a non-zero value", "bits": 0, "value": 1, "error": "PrefixValueOverflow"}),
        json!({"op": "tag_hex", "note": "39 hex characters", "text": &tag.to_hex()[..39], "error": "InvalidHex"}),
        json!({"op": "tag_hex", "note": "42 hex characters", "text": format!("{}00", tag.to_hex()), "error": "InvalidHex"}),
        json!({"op": "tag_hex", "note": "not hex", "text": "z".repeat(40), "error": "InvalidHex"}),
        json!({"op": "open_drop", "note": "a drop for Bob checked by Carol, same prefix", "recipient_secret": sk_hex(3), "prefix": {"bits": 12, "value": 0xabc0_0000u32}, "tag": tag.to_hex(), "envelope": hex::encode(&env), "error": "NotMine"}),
        json!({"op": "open_drop", "note": "last tag bit flipped", "recipient_secret": sk_hex(2), "prefix": {"bits": 12, "value": 0xabc0_0000u32}, "tag": flipped.to_hex(), "envelope": hex::encode(&env), "error": "NotMine"}),
        json!({"op": "open_drop", "note": "tag outside the recipient's prefix", "recipient_secret": sk_hex(2), "prefix": {"bits": 12, "value": 0xabd0_0000u32}, "tag": tag.to_hex(), "envelope": hex::encode(&env), "error": "NotMine"}),
    ];
    file("Drop tags: prefix bits, stranger-path and contact-path derivations, cheap checks", valid, invalid)
}

fn cards() -> Value {
    let alice = secret(1);
    let content = CardContent {
        label: "Alice".into(),
        pubkey: alice.public_key(),
        relays: vec!["https://relay-a.example.org".into(), "http://127.0.0.1:7070".into()],
        prefix: Prefix::new(8, 0xa100_0000).unwrap(),
        updated: 1_700_000_000_000,
    };
    let card = content.clone().sign_with_aux(&alice, &bytes32(0)).unwrap();
    let mut empty = content.clone();
    empty.label = String::new();
    empty.relays.clear();
    empty.prefix = Prefix::EMPTY;
    let card2 = empty.sign_with_aux(&alice, &bytes32(1)).unwrap();
    let valid = [
        ("card with two relays and an 8-bit prefix", &card),
        ("minimal card: no label, no relays, L = 0", &card2),
    ]
    .into_iter()
    .map(|(note, c)| {
        json!({"op": "card", "note": note, "secret": sk_hex(1), "aux": hex::encode(c.signature().to_bytes()),
                "bytes": hex::encode(c.to_bytes()), "bech32m": c.to_bech32m(), "json": c.to_json()})
    })
    .collect::<Vec<_>>();
    let json_text = card.to_json();
    let mut bytes = card.to_bytes();
    bytes[3] ^= 1;
    let mut v2 = card.to_bytes();
    v2[0] = 2;
    let mut b32 = card.to_bech32m();
    b32.replace_range(20..21, if &b32[20..21] == "q" { "p" } else { "q" });
    let invalid = vec![
        json!({"op": "parse_card", "note": "label edited after signing", "text": json_text.replace("Alice", "Mallory"), "error": "BadSignature"}),
        json!({"op": "parse_card", "note": "relay list edited after signing", "text": json_text.replace("relay-a", "relay-m"), "error": "BadSignature"}),
        json!({"op": "parse_card", "note": "type is not Identity", "text": json_text.replace("\"Identity\"", "\"Contact\""), "error": "WrongType"}),
        json!({"op": "parse_card", "note": "version 2", "text": json_text.replace("\"v\": 1", "\"v\": 2"), "error": "UnsupportedVersion"}),
        json!({"op": "parse_card", "note": "unknown field", "text": json_text.replacen('{', "{\"extra\": true,", 1), "error": "Json"}),
        json!({"op": "parse_card", "note": "missing signature", "text": json_text.replace("\"sig\"", "\"gis\""), "error": "Json"}),
        json!({"op": "parse_card", "note": "bech32m string with one character changed", "text": b32, "error": "InvalidBech32"}),
        json!({"op": "parse_card", "note": "prefix value past its bits", "text": json_text.replace("2701131776", "2701131777"), "error": "Json"}),
        json!({"op": "card_bytes", "note": "one bit of the label flipped", "bytes": hex::encode(bytes), "error": "BadSignature"}),
        json!({"op": "card_bytes", "note": "version byte 2", "bytes": hex::encode(v2), "error": "UnsupportedVersion"}),
        json!({"op": "card_bytes", "note": "truncated signature", "bytes": hex::encode(&card.to_bytes()[..card.to_bytes().len() - 1]), "error": "Truncated"}),
        json!({"op": "card_bytes", "note": "trailing byte", "bytes": format!("{}00", hex::encode(card.to_bytes())), "error": "TrailingBytes"}),
    ];
    file("Identity cards: canonical bytes, .pigeon JSON and pigeoncard bech32m strings", valid, invalid)
}

fn requests() -> Value {
    let (alice, bob, relay) = (secret(1), secret(2), secret(9));
    let (a, b, r) = (alice.public_key(), bob.public_key(), relay.public_key());
    let ts = 1_700_000_000_000u64;
    let cases: Vec<(&str, &SecretKey, Message)> = vec![
        (
            "write: Alice stores a record for Bob",
            &alice,
            Message {
                from: a,
                to: b,
                timestamp: ts,
                request: Request::Write(Write {
                    record_id: "msg-0001".into(),
                    ttl: 86_400,
                    tag: Some(Tag([0xab; 20])),
                    content: vec![1, 2, 3, 4],
                }),
            },
        ),
        (
            "write without tag",
            &alice,
            Message {
                from: a,
                to: b,
                timestamp: ts,
                request: Request::Write(Write {
                    record_id: "m2".into(),
                    ttl: 60,
                    tag: None,
                    content: vec![],
                }),
            },
        ),
        (
            "read: Bob reads /alice/outbox/bob/msg-0001",
            &bob,
            Message {
                from: b,
                to: r,
                timestamp: ts,
                request: Request::Read(Read { owner: a, receiver: b, record_id: "msg-0001".into() }),
            },
        ),
        (
            "inventory with every bound",
            &bob,
            Message {
                from: b,
                to: r,
                timestamp: ts,
                request: Request::Inventory(Inventory {
                    owner: a,
                    receiver: b,
                    after_ts: Some(1),
                    before_ts: Some(ts),
                    after_seq: Some(10),
                    limit: 500,
                }),
            },
        ),
        (
            "inventory with no bounds",
            &alice,
            Message {
                from: a,
                to: r,
                timestamp: ts,
                request: Request::Inventory(Inventory {
                    owner: a,
                    receiver: b,
                    after_ts: None,
                    before_ts: None,
                    after_seq: None,
                    limit: 100,
                }),
            },
        ),
        (
            "listen from a sequence number",
            &bob,
            Message {
                from: b,
                to: r,
                timestamp: ts,
                request: Request::Listen(Listen {
                    owner: a,
                    receiver: b,
                    after_ts: None,
                    after_seq: Some(42),
                }),
            },
        ),
        (
            "delete by the owner",
            &alice,
            Message {
                from: a,
                to: r,
                timestamp: ts,
                request: Request::Delete(Delete { receiver: b, record_id: "msg-0001".into() }),
            },
        ),
        (
            "usage (RequestUsage)",
            &alice,
            Message {
                from: a,
                to: r,
                timestamp: ts,
                request: Request::Usage(Usage { after_ts: Some(0), before_ts: None }),
            },
        ),
        (
            "register with an invite code",
            &alice,
            Message {
                from: a,
                to: r,
                timestamp: ts,
                request: Request::Register(Register { invite: Some("welcome-42".into()) }),
            },
        ),
        (
            "session: answer to a relay challenge",
            &bob,
            Message {
                from: b,
                to: r,
                timestamp: ts,
                request: Request::Session(Session { challenge: [0xcc; 32] }),
            },
        ),
    ];
    let mut valid = Vec::new();
    let mut first = None;
    for (i, (note, key, message)) in cases.into_iter().enumerate() {
        let signed = message.sign_with_aux(key, &bytes32(i as u8)).unwrap();
        if first.is_none() {
            first = Some(signed.clone());
        }
        valid.push(json!({"op": "request", "note": note, "secret": hex::encode(*key.to_bytes()), "aux": hex::encode(bytes32(i as u8)),
            "json": signed.to_json(), "bytes": hex::encode(signed.to_bytes()),
            "signing_hash": hex::encode(signed.message().signing_hash()), "record_hash": hex::encode(signed.message().record_hash())}));
    }
    let signed = first.unwrap();
    let json_text = signed.to_json();
    let bytes = signed.to_bytes();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut e = bytes.clone();
        f(&mut e);
        hex::encode(e)
    };
    // Well-formed bytes whose record id is a path traversal, "signed" correctly: rejected by
    // the record-id rule, not by the signature.
    let mut traversal = bytes.clone();
    let pos = 1 + 1 + 32 + 32 + 8;
    traversal[pos + 1..pos + 9].copy_from_slice(b"../../x1");
    let invalid = vec![
        json!({"op": "request_json", "note": "recordId changed after signing", "text": json_text.replace("msg-0001", "msg-0002"), "error": "BadSignature"}),
        json!({"op": "request_json", "note": "timestamp changed after signing", "text": json_text.replace("1700000000000", "1700000000001"), "error": "BadSignature"}),
        json!({"op": "request_json", "note": "from swapped to another key", "text": json_text.replace(&a.to_hex(), &secret(3).public_key().to_hex()), "error": "BadSignature"}),
        json!({"op": "request_json", "note": "version 2", "text": json_text.replace("\"v\":1", "\"v\":2"), "error": "UnknownVersion"}),
        json!({"op": "request_json", "note": "unknown request type", "text": json_text.replace("\"type\":\"write\"", "\"type\":\"purge\""), "error": "Json"}),
        json!({"op": "request_json", "note": "unknown field in msg", "text": json_text.replacen("\"from\"", "\"admin\":true,\"from\"", 1), "error": "Json"}),
        json!({"op": "request_json", "note": "unknown field in request", "text": json_text.replacen("\"recordId\"", "\"path\":\"/\",\"recordId\"", 1), "error": "Json"}),
        json!({"op": "request_json", "note": "signature missing", "text": json_text.replacen(",\"sig\"", ",\"gis\"", 1), "error": "Json"}),
        json!({"op": "request_json", "note": "recordId is a path traversal", "text": json_text.replace("msg-0001", "../../etc"), "error": "InvalidValue"}),
        json!({"op": "request_json", "note": "recordId is empty", "text": json_text.replace("\"msg-0001\"", "\"\""), "error": "InvalidValue"}),
        json!({"op": "request_json", "note": "recordId over 128 bytes", "text": json_text.replace("msg-0001", &"a".repeat(129)), "error": "InvalidValue"}),
        json!({"op": "request_json", "note": "from is not hex", "text": json_text.replacen(&a.to_hex(), &"z".repeat(64), 1), "error": "Json"}),
        json!({"op": "request_json", "note": "content is not base64", "text": json_text.replace("\"AQIDBA==\"", "\"!!!\""), "error": "Json"}),
        json!({"op": "request_json", "note": "not JSON", "text": "{\"msg\":", "error": "Json"}),
        json!({"op": "request_bytes", "note": "a bit of the content flipped", "bytes": edit(&|e| { let n = e.len(); e[n - 65] ^= 1; }), "error": "BadSignature"}),
        json!({"op": "request_bytes", "note": "version byte 2", "bytes": edit(&|e| e[0] = 2), "error": "UnknownVersion"}),
        json!({"op": "request_bytes", "note": "request type 9", "bytes": edit(&|e| e[1] = 9), "error": "UnknownType"}),
        json!({"op": "request_bytes", "note": "truncated", "bytes": hex::encode(&bytes[..bytes.len() - 1]), "error": "Truncated"}),
        json!({"op": "request_bytes", "note": "trailing byte", "bytes": edit(&|e| e.push(0)), "error": "TrailingBytes"}),
        json!({"op": "request_bytes", "note": "tag presence flag 2", "bytes": edit(&|e| { let p = 1 + 1 + 32 + 32 + 8 + 1 + 8 + 4; e[p] = 2; }), "error": "InvalidFlag"}),
        json!({"op": "request_bytes", "note": "record id ../../x1 (path traversal)", "bytes": hex::encode(traversal), "error": "InvalidValue"}),
        json!({"op": "request_bytes", "note": "from is not on the curve", "bytes": edit(&|e| { e[2..34].fill(0); e[33] = 5; }), "error": "InvalidPublicKey"}),
    ];
    file("Requests: the seed's msg objects as canonical bytes and JSON, signed with BIP-340", valid, invalid)
}

fn receipts() -> Value {
    let relay = secret(9);
    let mut group = CommitGroup::new();
    let mut leaves = Vec::new();
    for seq in 0..3u64 {
        let leaf = ReceiptLeaf {
            relay: relay.public_key(),
            owner: secret(1).public_key(),
            receiver: secret(2).public_key(),
            record_id: format!("msg-{seq:04}"),
            record_hash: bytes32(seq as u8 + 1),
            seq: 100 + seq,
            stored_at: 1_700_000_000_000 + seq,
            expires_at: 1_700_086_400_000 + seq,
        };
        leaves.push(serde_json::to_value(&leaf).unwrap());
        group.push(leaf).unwrap();
    }
    let receipts = group.sign_with_aux(&relay, 1_700_000_000_010, &bytes32(7)).unwrap();
    let valid = vec![
        json!({"op": "commit_group", "note": "three writes committed together under one relay signature",
        "relay_secret": sk_hex(9), "committed_at": 1_700_000_000_010u64, "aux": hex::encode(bytes32(7)), "leaves": leaves,
        "receipts": receipts.iter().map(|r| serde_json::from_str::<Value>(&r.to_json()).unwrap()).collect::<Vec<_>>(),
        "receipt_bytes": receipts.iter().map(|r| hex::encode(r.to_bytes())).collect::<Vec<_>>()}),
    ];
    let base = serde_json::from_str::<Value>(&receipts[1].to_json()).unwrap();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v.to_string()
    };
    let relay_hex = relay.public_key().to_hex();
    let invalid = vec![
        json!({"op": "verify_receipt", "note": "seq changed", "relay": relay_hex, "json": edit(&|v| v["leaf"]["seq"] = json!(999)), "error": "BadProof"}),
        json!({"op": "verify_receipt", "note": "index changed", "relay": relay_hex, "json": edit(&|v| v["index"] = json!(2)), "error": "BadProof"}),
        json!({"op": "verify_receipt", "note": "committedAt changed", "relay": relay_hex, "json": edit(&|v| v["commit"]["committedAt"] = json!(1)), "error": "BadSignature"}),
        json!({"op": "verify_receipt", "note": "treeSize changed", "relay": relay_hex, "json": edit(&|v| v["commit"]["treeSize"] = json!(4)), "error": "BadSignature"}),
        json!({"op": "verify_receipt", "note": "checked against another relay", "relay": secret(8).public_key().to_hex(), "json": base.to_string(), "error": "WrongRelay"}),
        json!({"op": "verify_receipt", "note": "a proof hash dropped", "relay": relay_hex, "json": edit(&|v| { v["proof"].as_array_mut().unwrap().pop(); }), "error": "BadProof"}),
        json!({"op": "verify_receipt", "note": "unknown field", "relay": relay_hex, "json": edit(&|v| v["extra"] = json!(1)), "error": "Json"}),
    ];
    file("Write receipts: RFC 6962 Merkle inclusion under one relay-signed commit header", valid, invalid)
}

fn postage_file() -> Value {
    let relay = secret(9);
    let epoch = 20_000u64;
    let key = PostageKey::derive(&relay, epoch);
    let next = PostageKey::derive(&relay, epoch + 1);
    let mut valid = Vec::new();
    for k in [&key, &next] {
        valid.push(json!({"op": "derive_key", "note": format!("postage key of epoch {} derived from the relay's secret key (RFC 9497 DeriveKeyPair)", k.epoch()),
            "relay_secret": sk_hex(9), "epoch": k.epoch(), "public_key": hex::encode(k.public_key())}));
    }
    // One ChaCha20 stream: blind draws (input, blind) per token, then evaluate draws the proof scalar.
    let seed = bytes32(0x5e);
    let mut rng = ChaCha20Rng::from_seed(seed);
    let (request, state) = postage::blind(3, epoch, &mut rng);
    let response = key.evaluate(&request, &mut rng).unwrap();
    let tokens = state.finalize(&response, &key.public_key()).unwrap();
    valid.push(json!({"op": "issue", "note": "three tokens: blind, evaluate with one batched proof, finalize; all randomness from ChaCha20 seeded with `rng_seed`",
        "relay_secret": sk_hex(9), "epoch": epoch, "count": 3, "rng_seed": hex::encode(seed), "public_key": hex::encode(key.public_key()),
        "request_bytes": hex::encode(request.to_bytes()), "request_json": request.to_json(),
        "response_bytes": hex::encode(response.to_bytes()), "response_json": response.to_json(),
        "tokens": tokens.iter().map(|t| t.to_json()).collect::<Vec<_>>()}));
    let tag = Tag::from_hex("ab00000000000000000000000000000000000001").unwrap();
    let envelope = b"stand-in for a sealed envelope".to_vec();
    let stamp = tokens[0].stamp(&tag, &envelope);
    valid.push(json!({"op": "stamp", "note": "the first token stamped on a drop: HMAC-SHA256 keyed by the PRF output over the tag and SHA-256(envelope)",
        "relay_secret": sk_hex(9), "token": tokens[0].to_json(), "tag": tag.to_hex(), "envelope": hex::encode(&envelope),
        "drop_hash": hex::encode(drop_hash(&envelope)), "stamp_bytes": hex::encode(stamp.to_bytes()), "stamp_json": stamp.to_json(),
        "spent_id": hex::encode(stamp.spent_id())}));
    let leaf = DropLeaf {
        relay: relay.public_key(),
        tag,
        drop_hash: drop_hash(&envelope),
        seq: 500,
        stored_at: 1_728_000_000_000,
        expires_at: 1_728_086_400_000,
    };
    let write_leaf = ReceiptLeaf {
        relay: relay.public_key(),
        owner: secret(1).public_key(),
        receiver: secret(2).public_key(),
        record_id: "msg-0500".into(),
        record_hash: bytes32(0x44),
        seq: 499,
        stored_at: 1_728_000_000_000,
        expires_at: 1_728_086_400_000,
    };
    let mut group = CommitGroup::new();
    group.push(write_leaf.clone()).unwrap();
    group.push_drop(leaf.clone()).unwrap();
    let receipts = group.sign_all_with_aux(&relay, 1_728_000_000_010, &bytes32(7)).unwrap();
    let receipt_json = |r: &Receipt| match r {
        Receipt::Write(r) => serde_json::from_str::<Value>(&r.to_json()).unwrap(),
        Receipt::Drop(r) => serde_json::from_str::<Value>(&r.to_json()).unwrap(),
    };
    let receipt_bytes = |r: &Receipt| match r {
        Receipt::Write(r) => hex::encode(r.to_bytes()),
        Receipt::Drop(r) => hex::encode(r.to_bytes()),
    };
    valid.push(json!({"op": "commit_group_mixed", "note": "a write and a drop committed together under one relay signature; the drop leaf starts with 0x02",
        "relay_secret": sk_hex(9), "committed_at": 1_728_000_000_010u64, "aux": hex::encode(bytes32(7)),
        "write_leaf": serde_json::to_value(&write_leaf).unwrap(), "drop_leaf": serde_json::to_value(&leaf).unwrap(),
        "drop_leaf_bytes": hex::encode(leaf.to_bytes()),
        "receipts": receipts.iter().map(receipt_json).collect::<Vec<_>>(),
        "receipt_bytes": receipts.iter().map(receipt_bytes).collect::<Vec<_>>()}));
    let keys = PostageKeys {
        epoch_secs: 86_400,
        grace_secs: 3600,
        keys: vec![(epoch, key.public_key()), (epoch + 1, next.public_key())],
    };
    let document = keys.sign_with_aux(&relay, 1_728_000_000_000, &bytes32(8));
    valid.push(json!({"op": "postage_keys", "note": "relay document kind 3: the current and next epoch keys",
        "relay_secret": sk_hex(9), "timestamp": 1_728_000_000_000u64, "aux": hex::encode(bytes32(8)),
        "keys": serde_json::to_value(&keys).unwrap(), "body": hex::encode(keys.to_body()), "document": hex::encode(document.to_bytes())}));
    let message = Message {
        from: secret(1).public_key(),
        to: relay.public_key(),
        timestamp: 1_728_000_000_000,
        request: Request::Postage(request.clone()),
    };
    let signed = message.sign_with_aux(&secret(1), &bytes32(3)).unwrap();
    valid.push(json!({"op": "request", "note": "signed `postage` request (type 9): an account asks for the three blinded elements above",
        "secret": sk_hex(1), "aux": hex::encode(bytes32(3)), "json": signed.to_json(), "bytes": hex::encode(signed.to_bytes())}));

    let request_bytes = request.to_bytes();
    let with_request = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = request_bytes.clone();
        f(&mut b);
        hex::encode(b)
    };
    let mut tampered_proof = response.clone();
    tampered_proof.proof[0] ^= 1;
    let mut swapped = response.clone();
    swapped.evaluated.swap(0, 1);
    let rogue = PostageKey::derive(&secret(8), epoch)
        .evaluate(&request, &mut ChaCha20Rng::from_seed(bytes32(1)))
        .unwrap();
    let finalize_case = |note: &str, response: &IssueResponse, public_key: [u8; 32], error: &str| {
        json!({"op": "finalize", "note": note, "epoch": epoch, "count": 3, "rng_seed": hex::encode(seed),
            "response_json": response.to_json(), "public_key": hex::encode(public_key), "error": error})
    };
    let mut bad_mac = stamp.clone();
    bad_mac.mac[31] ^= 1;
    let stamp_case = |note: &str, key_epoch: u64, stamp: &Stamp, tag: &Tag, envelope: &[u8], error: &str| {
        json!({"op": "check_stamp", "note": note, "relay_secret": sk_hex(9), "epoch": key_epoch, "stamp_json": stamp.to_json(),
            "tag": tag.to_hex(), "envelope": hex::encode(envelope), "error": error})
    };
    let mut type10 = signed.to_bytes();
    type10[1] = 10;
    let mut stamp_v2 = stamp.to_bytes();
    stamp_v2[0] = 2;
    let _ = IssueRequest::from_bytes(&request_bytes).unwrap();
    let invalid = vec![
        json!({"op": "issue_request_bytes", "note": "second blinded element is not a ristretto255 encoding", "bytes": with_request(&|b| b[9 + 32..9 + 64].fill(0xff)), "error": "InvalidElement"}),
        json!({"op": "issue_request_bytes", "note": "the identity (32 zero bytes) as an element", "bytes": with_request(&|b| b[9..9 + 32].fill(0)), "error": "InvalidElement"}),
        json!({"op": "issue_request_bytes", "note": "count 0", "bytes": hex::encode([&request_bytes[..8], &[0u8][..]].concat()), "error": "Count"}),
        json!({"op": "issue_request_bytes", "note": "count 65 (more than MAX_ISSUE)", "bytes": hex::encode([&request_bytes[..8], &[65u8][..], &request_bytes[9..41].repeat(65)].concat()), "error": "Count"}),
        json!({"op": "issue_request_bytes", "note": "truncated inside the last element", "bytes": hex::encode(&request_bytes[..request_bytes.len() - 1]), "error": "Truncated"}),
        json!({"op": "issue_request_json", "note": "unknown field", "text": request.to_json().replacen("\"epoch\"", "\"account\":1,\"epoch\"", 1), "error": "Json"}),
        finalize_case("a bit of the proof flipped", &tampered_proof, key.public_key(), "BadProof"),
        finalize_case("evaluated elements swapped", &swapped, key.public_key(), "BadProof"),
        finalize_case(
            "valid response checked against the next epoch's key",
            &response,
            next.public_key(),
            "BadProof",
        ),
        finalize_case(
            "evaluated under another key (a per-account key) for the same epoch",
            &rogue,
            key.public_key(),
            "BadProof",
        ),
        stamp_case("last MAC bit flipped", epoch, &bad_mac, &tag, &envelope, "BadStamp"),
        stamp_case(
            "stamp moved to another tag",
            epoch,
            &stamp,
            &Tag::from_hex("ab00000000000000000000000000000000000002").unwrap(),
            &envelope,
            "BadStamp",
        ),
        stamp_case("stamp moved to another envelope", epoch, &stamp, &tag, b"another envelope", "BadStamp"),
        stamp_case("checked with the next epoch's key", epoch + 1, &stamp, &tag, &envelope, "WrongEpoch"),
        json!({"op": "stamp_bytes", "note": "stamp version 2", "bytes": hex::encode(stamp_v2), "error": "UnknownVersion"}),
        json!({"op": "request_bytes", "note": "request type 10 (unknown since type 9 is postage)", "bytes": hex::encode(type10), "error": "UnknownType"}),
    ];
    file(
        "Drop postage: RFC 9497 VOPRF tokens (ristretto255-SHA512), stamps, spent ids, drop receipts and the postage-keys document",
        valid,
        invalid,
    )
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec/vectors");
    let files = [
        ("keys.json", keys()),
        ("signing.json", signing()),
        ("sealing.json", sealing()),
        ("tags.json", tags_file()),
        ("cards.json", cards()),
        ("requests.json", requests()),
        ("receipts.json", receipts()),
        ("postage.json", postage_file()),
    ];
    let mut total = 0;
    for (name, value) in files {
        let count = value["valid"].as_array().unwrap().len() + value["invalid"].as_array().unwrap().len();
        total += count;
        std::fs::write(dir.join(name), serde_json::to_string_pretty(&value).unwrap() + "\n").unwrap();
        println!("{name}: {count} cases");
    }
    println!("total: {total} cases");
}
