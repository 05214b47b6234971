//! A walk through the protocol core with two people, Alice and Bob: identities, cards, an
//! outbox write, sealing, a first-contact drop found by scanning a bucket, a contact-path drop,
//! a batched write receipt and an encrypted key file. Everything here is what the relay and
//! the client do, minus the network.
//!
//! Run: `cargo run -p pigeonhole-proto --example walkthrough`

#![allow(clippy::print_stdout, reason = "an example that explains itself on stdout")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "an example: failures are bugs to show loudly")]

use pigeonhole_proto::card::{CardContent, IdentityCard};
use pigeonhole_proto::drops::{check_drop, seal_contact_drop, seal_drop};
use pigeonhole_proto::keyfile::KeyFile;
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::receipt::{CommitGroup, ReceiptLeaf};
use pigeonhole_proto::request::{Message, Request, SignedMessage, Write};
use pigeonhole_proto::seal::{Letter, open, seal};
use pigeonhole_proto::tag::{ChainKey, Prefix};
use rand::rngs::OsRng;

fn main() {
    let mut rng = OsRng;
    // The clock is an input to the protocol core; the example reads it once here.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    let alice = SecretKey::generate(&mut rng);
    let bob = SecretKey::generate(&mut rng);
    let relay = SecretKey::generate(&mut rng);
    println!("Alice is {}", alice.public_key());
    println!("Bob   is {}", bob.public_key());

    // Bob publishes a card: his relays and an 8-bit drop prefix (his anonymity set is 1/256
    // of all drops).
    let bob_card = CardContent {
        label: "Bob".into(),
        pubkey: bob.public_key(),
        relays: vec!["http://127.0.0.1:7070".into()],
        prefix: Prefix::truncate(8, 0x5c00_0000).unwrap(),
        updated: now,
    }
    .sign(&bob, &mut rng)
    .unwrap();
    let card_string = bob_card.to_bech32m();
    println!("\nBob's card ({} characters): {card_string}", card_string.len());
    let bob_card = IdentityCard::parse(&card_string).expect("a card Bob signed verifies");

    // Outbox delivery: Alice seals a letter to Bob and signs a write to her own outbox.
    let letter = Letter {
        sender: Some(alice.public_key()),
        recipient: bob.public_key(),
        created_at: now,
        record_id: "msg-0001".into(),
        payload: Payload::Text("Hi Bob! Lunch on Friday?".into()),
    };
    let envelope = seal(&letter, Some(&alice), &mut rng).unwrap();
    let write = Message {
        from: alice.public_key(),
        to: bob.public_key(),
        timestamp: now,
        request: Request::Write(Write {
            record_id: "msg-0001".into(),
            ttl: 7 * 86_400,
            tag: None,
            content: envelope,
        }),
    }
    .sign(&alice, &mut rng)
    .unwrap();
    let json = write.to_json();
    println!(
        "\nAlice's signed write, as sent over HTTP ({} bytes of JSON):\n{}...",
        json.len(),
        &json[..200]
    );

    // The relay verifies the signature over the canonical bytes the JSON maps to.
    let at_relay = SignedMessage::from_json(&json).expect("signature verifies");
    // The relay commits a group of writes and signs one Merkle root for all of them.
    let mut group = CommitGroup::new();
    group
        .push(ReceiptLeaf {
            relay: relay.public_key(),
            owner: alice.public_key(),
            receiver: bob.public_key(),
            record_id: "msg-0001".into(),
            record_hash: at_relay.message().record_hash(),
            seq: 1,
            stored_at: now,
            expires_at: now + 7 * 86_400_000,
        })
        .unwrap();
    let receipt = group.sign(&relay, now, &mut rng).unwrap().remove(0);
    receipt.verify(&relay.public_key()).expect("receipt verifies");
    println!(
        "\nRelay receipt verified: seq {} under root {}",
        receipt.leaf.seq,
        hex::encode(receipt.commit.root)
    );

    // Bob reads the record and opens it: only his key can, and the inner signature proves Alice.
    let Request::Write(stored) = &at_relay.message().request else { unreachable!() };
    let opened = open(&bob, &stored.content).expect("Bob opens it");
    let Payload::Text(text) = &opened.letter.payload else { unreachable!() };
    println!("Bob reads from {}: {text:?}", opened.letter.sender.unwrap());

    // Drop delivery, first contact: Carol has only Bob's card. Her drop's tag starts with
    // Bob's 8 prefix bits; nothing outside the ciphertext names Carol.
    let carol = SecretKey::generate(&mut rng);
    let drop_letter = Letter {
        sender: Some(carol.public_key()),
        recipient: bob.public_key(),
        created_at: now,
        record_id: "hello-bob".into(),
        payload: Payload::Text("Hi Bob, Carol here, we met at the meetup.".into()),
    };
    let prefix = bob_card.content().prefix;
    let (tag, drop_envelope) = seal_drop(&drop_letter, Some(&carol), &prefix, &mut rng).unwrap();
    println!("\nCarol's drop under tag {} (bucket {prefix})", tag.to_hex());

    // Bob scans his bucket: 200 strangers' drops to other people with the same prefix, and Carol's.
    let mut bucket = Vec::new();
    for _ in 0..200 {
        let someone = SecretKey::generate(&mut rng);
        let other = Letter { recipient: someone.public_key(), ..drop_letter.clone() };
        bucket.push(seal_drop(&other, Some(&carol), &prefix, &mut rng).unwrap());
    }
    bucket.insert(137, (tag, drop_envelope));
    let started = std::time::Instant::now();
    let mine: Vec<_> =
        bucket.iter().filter(|(tag, env)| check_drop(&bob, &prefix, tag, env).is_ok()).collect();
    println!(
        "Bob checked {} candidates in {:?}; {} addressed to him",
        bucket.len(),
        started.elapsed(),
        mine.len()
    );

    // Contact path: once they know each other, Alice's drops to Bob use tags from a shared
    // chain key, which Bob recognises with a table lookup instead of an ECDH per candidate.
    let chain = ChainKey::derive(&alice, &bob.public_key(), &alice.public_key(), &bob.public_key());
    let (contact_tag, _) = seal_contact_drop(&letter, &alice, &prefix, &chain, 0, &mut rng).unwrap();
    let bob_side = ChainKey::derive(&bob, &alice.public_key(), &alice.public_key(), &bob.public_key());
    let expected: std::collections::HashSet<_> = (0..64).map(|i| bob_side.tag(&prefix, i)).collect();
    println!("Alice's contact drop recognised by lookup: {}", expected.contains(&contact_tag));

    // Bob's secret key at rest: NIP-49 (scrypt + XChaCha20-Poly1305) inside a small JSON file.
    let key_file = KeyFile::seal(&bob, "correct horse battery staple", 16, &mut rng).unwrap();
    println!("\nBob's key file:\n{}", key_file.to_json());
    let reopened = key_file.open("correct horse battery staple").unwrap();
    assert_eq!(reopened.public_key(), bob.public_key());
    println!(
        "Key file reopened with the passphrase; a wrong one gives: {}",
        key_file.open("wrong").unwrap_err()
    );
}
