//! Writes seed inputs made from valid objects into `corpus/<target>/`, so the fuzzers start
//! past the signatures, MACs and checksums they cannot forge: `cargo run --example seeds`.

use std::fs;
use std::path::Path;

use pigeonhole_proto::card::CardContent;
use pigeonhole_proto::keyfile::{self, KeyFile, KeySecurity};
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::nip44::{self, ConversationKey};
use pigeonhole_proto::payload::{AckEntry, Memo, Payload, Payment, PaymentRequest};
use pigeonhole_proto::postage::{self, PostageKey};
use pigeonhole_proto::receipt::{CommitGroup, DropLeaf, PostageKeys, Receipt, ReceiptLeaf, UsageEntry, UsageReport};
use pigeonhole_proto::request::{self, Message, Request};
use pigeonhole_proto::seal::{self, Letter};
use pigeonhole_proto::tag::{Prefix, Tag};
use pigeonhole_proto::drops;

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes(&[byte; 32]).expect("valid scalar")
}

fn write(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn payloads() -> Vec<Payload> {
    vec![
        Payload::Text("hello".into()),
        Payload::Ack(vec![AckEntry { record_id: "r-1".into(), relay: key(5).public_key(), read_at: 7 }]),
        Payload::IdentityUpdate(vec![1, 2, 3]),
        Payload::PaymentRequest(PaymentRequest {
            request_id: "q".into(),
            amount_sat: 1000,
            address: "bc1q".into(),
            memo: "rent".into(),
            expires_at: Some(9),
        }),
        Payload::Payment(Payment {
            request_id: "q".into(),
            transactions: vec![vec![0xde, 0xad]],
            refund_address: Some("bc1r".into()),
            memo: "paid".into(),
        }),
        Payload::Memo(Memo { txid: [6; 32], memo: "note".into() }),
        Payload::Unknown { kind: 999, body: vec![4, 5] },
    ]
}

fn main() {
    let (alice, bob, relay) = (key(1), key(2), key(5));

    // request: the fuzz target signs with key(1) = alice.
    let requests = vec![
        Request::Write(request::Write { record_id: "r1".into(), ttl: 60, tag: Some(Tag([3; 20])), content: vec![1; 40] }),
        Request::Read(request::Read { owner: alice.public_key(), receiver: bob.public_key(), record_id: "r1".into() }),
        Request::Inventory(request::Inventory {
            owner: alice.public_key(),
            receiver: bob.public_key(),
            after_ts: Some(1),
            before_ts: None,
            after_seq: Some(2),
            limit: 10,
        }),
        Request::Listen(request::Listen { owner: alice.public_key(), receiver: bob.public_key(), after_ts: None, after_seq: Some(3) }),
        Request::Delete(request::Delete { receiver: bob.public_key(), record_id: "r1".into() }),
        Request::Usage(request::Usage { after_ts: Some(1), before_ts: Some(2) }),
        Request::Register(request::Register { invite: Some("invite".into()) }),
        Request::Session(request::Session { challenge: [8; 32] }),
    ];
    for (i, request) in requests.into_iter().enumerate() {
        let message = Message { from: alice.public_key(), to: relay.public_key(), timestamp: 1_700_000_000_000, request };
        write("request", &format!("{i}-unsigned"), message.signing_bytes());
        write("request", &format!("{i}-unsigned.json"), message.to_json());
        let signed = message.sign_with_aux(&alice, &[0; 32]).expect("signs");
        write("request", &format!("{i}-signed"), signed.to_bytes());
        write("request", &format!("{i}-signed.json"), signed.to_json());
    }

    // card
    let content = CardContent {
        label: "Alice".into(),
        pubkey: key(4).public_key(),
        relays: vec!["https://relay.example.org".into(), "http://127.0.0.1:7070".into()],
        prefix: Prefix::new(8, 0xa100_0000).expect("valid prefix"),
        updated: 1_700_000_000_000,
    };
    let mut layout = content.signing_bytes();
    layout.remove(0); // the target's content layout has no version byte
    write("card", "content", layout);
    let card = content.sign_with_aux(&key(4), &[0; 32]).expect("signs");
    write("card", "bytes", card.to_bytes());
    write("card", "bech32m", card.to_bech32m());
    write("card", "json", card.to_json());

    // envelope and drops: letters to bob (key 2), signed by alice (key 1) or anonymous.
    for (i, payload) in payloads().into_iter().enumerate() {
        let mut body = payload.kind().to_be_bytes().to_vec();
        body.extend_from_slice(&payload.encode_body());
        write("envelope", &format!("payload-{i}"), body);
        for (sender, name) in [(Some(&alice), "signed"), (None, "anon")] {
            let letter = Letter {
                sender: sender.map(SecretKey::public_key),
                recipient: bob.public_key(),
                created_at: 1,
                record_id: format!("r{i}"),
                payload: payload.clone(),
            };
            let sig = sender.map(|k| k.sign_with_aux(&letter.signing_hash(), &[0; 32]));
            write("envelope", &format!("letter-{i}-{name}"), letter.encode(sig.as_ref()));
            let env = seal::seal_with_nonce(&letter, sender, &[3; 32], &[4; 32], &[5; 32]).expect("seals");
            write("envelope", &format!("sealed-{i}-{name}"), env);
            let prefix = Prefix::new(12, 0xabc0_0000).expect("valid prefix");
            let (tag, env) = drops::seal_drop_with_nonce(&letter, sender, &prefix, &[3; 32], &[4; 32], &[5; 32]).expect("seals");
            let mut input = vec![0, 12, 0xab, 0xc0, 0, 0];
            input.extend_from_slice(&tag.0);
            input.extend_from_slice(&env);
            write("drops", &format!("{i}-{name}"), &input);
        }
    }

    // receipt
    let mut group = CommitGroup::new();
    for i in 0..5u64 {
        group
            .push(ReceiptLeaf {
                relay: relay.public_key(),
                owner: alice.public_key(),
                receiver: bob.public_key(),
                record_id: format!("r{i}"),
                record_hash: [i as u8; 32],
                seq: i,
                stored_at: 10 + i,
                expires_at: 100 + i,
            })
            .expect("fits");
    }
    for (i, receipt) in group.sign_with_aux(&relay, 50, &[0; 32]).expect("signs").iter().enumerate() {
        write("receipt", &format!("receipt-{i}"), receipt.to_bytes());
        write("receipt", &format!("receipt-{i}.json"), receipt.to_json());
    }
    let report = UsageReport {
        account: alice.public_key(),
        after_ts: Some(1),
        before_ts: None,
        reads: vec![UsageEntry { receiver: bob.public_key(), record_id: "r1".into(), bytes: 100, read_at: 5 }],
    };
    write("receipt", "usage-body", report.to_body());
    write("receipt", "usage-document", report.sign_with_aux(&relay, 60, &[0; 32]).to_bytes());

    // postage (relay key [5; 32] as in the target, epoch 20000)
    let postage_key = PostageKey::derive(&relay, 20_000);
    let mut rng = Counter(9);
    let (request, state) = postage::blind(3, 20_000, &mut rng);
    let response = postage_key.evaluate(&request, &mut rng).expect("evaluates");
    let tokens = state.finalize(&response, &postage_key.public_key()).expect("finalizes");
    let tag = Tag([0xab; 20]);
    let stamp = tokens[0].stamp(&tag, b"envelope");
    write("postage", "request", request.to_bytes());
    write("postage", "request.json", request.to_json());
    write("postage", "response", response.to_bytes());
    write("postage", "response.json", response.to_json());
    write("postage", "stamp", stamp.to_bytes());
    write("postage", "stamp.json", stamp.to_json());
    let keys = PostageKeys { epoch_secs: 86_400, grace_secs: 600, keys: vec![(20_000, postage_key.public_key())] };
    write("postage", "keys-body", keys.to_body());
    let mut group = CommitGroup::new();
    group.push_drop(DropLeaf { relay: relay.public_key(), tag, drop_hash: [1; 32], seq: 1, stored_at: 2, expires_at: 3 }).expect("fits");
    group.push_drop(DropLeaf { relay: relay.public_key(), tag, drop_hash: [2; 32], seq: 2, stored_at: 2, expires_at: 3 }).expect("fits");
    for (i, receipt) in group.sign_all_with_aux(&relay, 50, &[0; 32]).expect("signs").iter().enumerate() {
        if let Receipt::Drop(receipt) = receipt {
            write("postage", &format!("drop-receipt-{i}"), receipt.to_bytes());
            write("postage", &format!("drop-receipt-{i}.json"), receipt.to_json());
        }
    }

    // keys
    let pk = alice.public_key();
    write("keys", "pk-hex", pk.to_hex());
    write("keys", "pk-bech32m", pk.to_bech32m());
    write("keys", "npub", bech32_of("npub", &pk.to_bytes()));
    write("keys", "sk-bech32m", alice.to_bech32m().as_bytes());
    write("keys", "sk-hex", hex(&alice.to_bytes()[..]));
    write("keys", "nsec", bech32_of("nsec", &alice.to_bytes()[..]));
    write("keys", "sig", alice.sign_with_aux(&[1; 32], &[0; 32]).to_hex());
    write("keys", "tag", Tag([0xab; 20]).to_hex());
    write("keys", "pk-bytes", pk.to_bytes());

    // nip44 (target key [7; 32])
    let conversation = ConversationKey::from_bytes([7; 32]);
    for (i, len) in [1usize, 32, 33, 300, 5000].into_iter().enumerate() {
        let plaintext = vec![b'a'; len];
        write("nip44", &format!("raw-{i}"), nip44::encrypt_with_nonce(&conversation, &plaintext, &[1; 32]).expect("encrypts"));
        write("nip44", &format!("b64-{i}"), nip44::encrypt_with_nonce_base64(&conversation, &plaintext, &[1; 32]).expect("encrypts"));
        let mut input = vec![1; 32];
        input.extend_from_slice(&plaintext);
        write("nip44", &format!("roundtrip-{i}"), input);
    }

    // keyfile (log_n 4, cheap; mode byte first)
    let file = KeyFile::seal_with_nonce(&alice, "nostr", 4, [1; 16], [2; 24]).expect("seals");
    write("keyfile", "file", [b"\0".as_slice(), file.to_json().as_bytes()].concat());
    write("keyfile", "ncryptsec", [b"\0".as_slice(), file.ncryptsec.as_bytes()].concat());
    let text = keyfile::encrypt_with_nonce(&alice, "nostr", 4, [1; 16], [2; 24], KeySecurity::Secure).expect("encrypts");
    let checked = bech32::primitives::decode::CheckedHrpstring::new::<bech32::Bech32>(&text).expect("bech32");
    let mut structured = vec![1u8];
    structured.extend(checked.byte_iter());
    structured.extend_from_slice(b"nostr");
    write("keyfile", "structured", structured);
    let mut roundtrip = vec![2u8];
    roundtrip.extend_from_slice(&[1; 32]);
    roundtrip.extend_from_slice(&[1; 16]);
    roundtrip.extend_from_slice(&[2; 24]);
    roundtrip.extend_from_slice(&[4, 1]);
    roundtrip.extend_from_slice("pässword".as_bytes());
    write("keyfile", "roundtrip", roundtrip);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Nostr's bech32 (not bech32m) form.
fn bech32_of(hrp: &str, bytes: &[u8]) -> String {
    bech32::encode::<bech32::Bech32>(bech32::Hrp::parse(hrp).expect("valid hrp"), bytes).expect("fits")
}

/// A deterministic RNG for the postage seeds (the same generator as the postage target's).
struct Counter(u64);

impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Counter {}
