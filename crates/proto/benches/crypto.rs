//! Criterion benchmarks for the protocol's hot paths, with a same-run baseline.
//!
//! `baseline/libsecp256k1_verify` is one raw BIP-340 verification through the `secp256k1`
//! crate, with the signature and key already parsed: the machine's limit for anything that
//! checks a signature. Compare every other figure (elements/s) to it from the same run;
//! absolute numbers move with the machine and its load.
//!
//! All keys and randomness are fixed (`SecretKey::from_bytes(&[n; 32])`, constant nonces and
//! auxiliary bytes), so every run measures the same inputs. Payloads are 1 KiB of text.
//!
//! Run: `cargo bench -p pigeonhole-proto --bench crypto`; quick check that every benchmark
//! runs once: `cargo bench -p pigeonhole-proto --bench crypto -- --test`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use pigeonhole_proto::drops::{self, DropError};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::nip44;
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::postage::{self, PostageKey};
use pigeonhole_proto::receipt::{CommitGroup, ReceiptLeaf, WriteReceipt};
use pigeonhole_proto::request::{Message, Request, SignedMessage, Write};
use pigeonhole_proto::seal::{self, Letter};
use pigeonhole_proto::tag::{ChainKey, Prefix, Tag};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Size of the text and content payloads.
const PAYLOAD_LEN: usize = 1024;
/// Leaves in the commit-group benchmark.
const GROUP_SIZE: usize = 1000;
/// A fixed timestamp (unix ms).
const NOW_MS: u64 = 1_750_000_000_000;

const SENDER: u8 = 1;
const RECIPIENT: u8 = 2;
const OTHER: u8 = 3;
const RELAY: u8 = 4;

const EPHEMERAL: [u8; 32] = [0x11; 32];
const NONCE: [u8; 32] = [0x22; 32];
const AUX: [u8; 32] = [0x33; 32];

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes(&[byte; 32]).expect("a repeated nonzero byte is a valid scalar")
}

/// 1 KiB of printable ASCII.
fn text_1k() -> String {
    (0..PAYLOAD_LEN).map(|i| char::from(b' ' + (i % 95) as u8)).collect()
}

/// 1 KiB of opaque bytes (stands in for a sealed envelope).
fn bytes_1k() -> Vec<u8> {
    (0..PAYLOAD_LEN).map(|i| (i.wrapping_mul(131) % 251) as u8).collect()
}

/// A signed 1 KiB text letter from `sender` to `recipient`.
fn letter(sender: &SecretKey, recipient: PublicKey) -> Letter {
    Letter {
        sender: Some(sender.public_key()),
        recipient,
        created_at: NOW_MS,
        record_id: "rec-0001".to_owned(),
        payload: Payload::Text(text_1k()),
    }
}

/// The bucket every drop in these benchmarks lands in.
fn prefix() -> Prefix {
    Prefix::new(8, 0xab00_0000).expect("8-bit prefix with only its top byte set")
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

fn bench_baseline(c: &mut Criterion) {
    let signer = secp256k1::Secp256k1::signing_only();
    let verifier = secp256k1::Secp256k1::verification_only();
    let secret = secp256k1::SecretKey::from_byte_array(&[SENDER; 32]).expect("valid scalar");
    let keypair = secp256k1::Keypair::from_secret_key(&signer, &secret);
    let (xonly, _parity) = keypair.x_only_public_key();
    let message = [0x5a_u8; 32];
    let sig = signer.sign_schnorr_with_aux_rand(&message, &keypair, &AUX);
    verifier.verify_schnorr(&sig, &message, &xonly).expect("baseline signature verifies");

    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("libsecp256k1_verify", |b| {
        b.iter(|| verifier.verify_schnorr(black_box(&sig), black_box(&message), black_box(&xonly)))
    });
    group.finish();
}

fn bench_keys(c: &mut Criterion) {
    let secret = key(SENDER);
    let public = secret.public_key();
    let digest = [0x5a_u8; 32];
    let sig = secret.sign_with_aux(&digest, &AUX);
    public.verify(&digest, &sig).expect("signature verifies");

    let mut group = c.benchmark_group("keys");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| {
        b.iter(|| black_box(&secret).sign_with_aux(black_box(&digest), black_box(&AUX)))
    });
    group.bench_function("verify", |b| {
        b.iter(|| black_box(&public).verify(black_box(&digest), black_box(&sig)))
    });
    group.finish();
}

fn write_message(from: &SecretKey, to: PublicKey) -> Message {
    Message {
        from: from.public_key(),
        to,
        timestamp: NOW_MS,
        request: Request::Write(Write {
            record_id: "rec-0001".to_owned(),
            ttl: 86_400,
            tag: Some(Tag([0xab; 20])),
            content: bytes_1k(),
        }),
    }
}

fn bench_request(c: &mut Criterion) {
    let sender = key(SENDER);
    let message = write_message(&sender, key(RECIPIENT).public_key());
    let signed = message.clone().sign_with_aux(&sender, &AUX).expect("the key is `from`'s");
    let bytes = signed.to_bytes();
    let json = signed.to_json();
    assert_eq!(SignedMessage::from_bytes(&bytes).expect("bytes verify"), signed);
    assert_eq!(SignedMessage::from_json(&json).expect("JSON verifies"), signed);

    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    // The message is cloned outside the timed part: the timing is canonical encoding,
    // validation, the tagged hash and the signature.
    group.bench_function("sign_write", |b| {
        b.iter_batched(
            || message.clone(),
            |m| m.sign_with_aux(black_box(&sender), black_box(&AUX)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("verify_write_bytes", |b| b.iter(|| SignedMessage::from_bytes(black_box(&bytes))));
    group.bench_function("verify_write_json", |b| b.iter(|| SignedMessage::from_json(black_box(&json))));
    group.finish();
}

fn bench_seal(c: &mut Criterion) {
    let sender = key(SENDER);
    let recipient = key(RECIPIENT);
    let letter = letter(&sender, recipient.public_key());
    let envelope =
        seal::seal_with_nonce(&letter, Some(&sender), &EPHEMERAL, &NONCE, &AUX).expect("letter seals");
    let opened = seal::open(&recipient, &envelope).expect("envelope opens");
    assert_eq!(opened.letter, letter);

    let mut group = c.benchmark_group("seal");
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal_1k", |b| {
        b.iter(|| {
            seal::seal_with_nonce(black_box(&letter), Some(black_box(&sender)), &EPHEMERAL, &NONCE, &AUX)
        })
    });
    group.bench_function("open_1k", |b| b.iter(|| seal::open(black_box(&recipient), black_box(&envelope))));
    group.finish();
}

fn bench_drops(c: &mut Criterion) {
    let sender = key(SENDER);
    let me = key(RECIPIENT);
    let other = key(OTHER);
    let prefix = prefix();
    let (my_tag, my_envelope) = drops::seal_drop_with_nonce(
        &letter(&sender, me.public_key()),
        Some(&sender),
        &prefix,
        &EPHEMERAL,
        &NONCE,
        &AUX,
    )
    .expect("drop seals");
    let (other_tag, other_envelope) = drops::seal_drop_with_nonce(
        &letter(&sender, other.public_key()),
        Some(&sender),
        &prefix,
        &EPHEMERAL,
        &NONCE,
        &AUX,
    )
    .expect("drop seals");
    // Both tags are in my bucket, so the not-mine case pays the ECDH, not just the prefix test.
    assert!(prefix.matches(&my_tag) && prefix.matches(&other_tag));
    assert!(drops::check_drop(&me, &prefix, &my_tag, &my_envelope).is_ok());
    assert_eq!(drops::check_drop(&me, &prefix, &other_tag, &other_envelope).err(), Some(DropError::NotMine));

    let chain = ChainKey::derive(&sender, &me.public_key(), &sender.public_key(), &me.public_key());

    let mut group = c.benchmark_group("drops");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_candidate_mine", |b| {
        b.iter(|| {
            drops::check_drop(black_box(&me), black_box(&prefix), black_box(&my_tag), black_box(&my_envelope))
        })
    });
    group.bench_function("check_candidate_not_mine", |b| {
        b.iter(|| {
            drops::check_drop(
                black_box(&me),
                black_box(&prefix),
                black_box(&other_tag),
                black_box(&other_envelope),
            )
        })
    });
    group.bench_function("contact_tag", |b| {
        b.iter(|| black_box(&chain).tag(black_box(&prefix), black_box(42)))
    });
    group.finish();
}

fn receipt_leaves(relay: PublicKey) -> Vec<ReceiptLeaf> {
    let owner = key(SENDER).public_key();
    let receiver = key(RECIPIENT).public_key();
    (0..GROUP_SIZE)
        .map(|i| ReceiptLeaf {
            relay,
            owner,
            receiver,
            record_id: format!("rec-{i:05}"),
            record_hash: [(i % 256) as u8; 32],
            seq: i as u64,
            stored_at: NOW_MS + i as u64,
            expires_at: NOW_MS + i as u64 + 86_400_000,
        })
        .collect()
}

fn commit(relay_key: &SecretKey, leaves: Vec<ReceiptLeaf>) -> Vec<WriteReceipt> {
    let mut group = CommitGroup::new();
    for leaf in leaves {
        group.push(leaf).expect("group below the size limit");
    }
    group.sign_with_aux(relay_key, NOW_MS, &AUX).expect("group of this relay's leaves signs")
}

fn bench_receipt(c: &mut Criterion) {
    let relay_key = key(RELAY);
    let relay = relay_key.public_key();
    let leaves = receipt_leaves(relay);
    let receipts = commit(&relay_key, leaves.clone());
    assert_eq!(receipts.len(), GROUP_SIZE);
    let receipt = &receipts[GROUP_SIZE / 2];
    receipt.verify(&relay).expect("receipt verifies");

    let mut group = c.benchmark_group("receipt");
    // Per-leaf throughput: one iteration builds, signs and proves a whole group.
    group.throughput(Throughput::Elements(GROUP_SIZE as u64));
    // Timed: pushing the 1000 leaves (leaf encoding and tree hashing), the root, one
    // signature and the 1000 inclusion proofs. The leaves are cloned outside the timing.
    group.bench_function("commit_group_1000", |b| {
        b.iter_batched(
            || leaves.clone(),
            |leaves| commit(black_box(&relay_key), leaves),
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_one", |b| b.iter(|| black_box(receipt).verify(black_box(&relay))));
    group.finish();
}

fn bench_nip44(c: &mut Criterion) {
    let secret = secp256k1::SecretKey::from_byte_array(&[SENDER; 32]).expect("valid scalar");
    let public = secp256k1::XOnlyPublicKey::from_byte_array(&key(RECIPIENT).public_key().to_bytes())
        .expect("valid x-only key");
    // The conversation key (one ECDH) is derived once: these time the symmetric part only.
    let conversation = nip44::conversation_key(&secret, &public);
    let plaintext = text_1k().into_bytes();
    let payload = nip44::encrypt_with_nonce(&conversation, &plaintext, &NONCE).expect("1 KiB encrypts");
    assert_eq!(nip44::decrypt(&conversation, &payload).expect("payload decrypts"), plaintext);

    let mut group = c.benchmark_group("nip44");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt_1k", |b| {
        b.iter(|| {
            nip44::encrypt_with_nonce(black_box(&conversation), black_box(&plaintext), black_box(&NONCE))
        })
    });
    group.bench_function("decrypt_1k", |b| {
        b.iter(|| nip44::decrypt(black_box(&conversation), black_box(&payload)))
    });
    group.finish();
}

/// Postage (RFC 9497 VOPRF, ristretto255-SHA512): the relay's issuance and redemption costs
/// and the client's finalize. Randomness is a ChaCha20 stream with a fixed seed.
fn bench_postage(c: &mut Criterion) {
    const EPOCH: u64 = 20_000;
    let key = PostageKey::derive(&key(RELAY), EPOCH);
    let public_key = key.public_key();
    let mut rng = ChaCha20Rng::from_seed([0x44; 32]);
    let (request_1, _) = postage::blind(1, EPOCH, &mut rng);
    let (request_64, state_64) = postage::blind(postage::MAX_ISSUE, EPOCH, &mut rng);
    let response_64 = key.evaluate(&request_64, &mut rng).expect("evaluates");
    let tokens = state_64.finalize(&response_64, &public_key).expect("finalizes");
    let tag = Tag([0xab; 20]);
    let envelope = bytes_1k();
    let stamp = tokens[0].stamp(&tag, &envelope);
    key.check_stamp(&stamp, &tag, &envelope).expect("stamp verifies");

    let mut group = c.benchmark_group("postage");
    group.throughput(Throughput::Elements(1));
    group.bench_function("evaluate_1", |b| b.iter(|| key.evaluate(black_box(&request_1), &mut rng)));
    group.bench_function("check_stamp_1k", |b| {
        b.iter(|| key.check_stamp(black_box(&stamp), black_box(&tag), black_box(&envelope)))
    });
    // Per-token throughput: one iteration handles a whole batch of 64.
    group.throughput(Throughput::Elements(postage::MAX_ISSUE as u64));
    group.bench_function("evaluate_64", |b| b.iter(|| key.evaluate(black_box(&request_64), &mut rng)));
    // The client state is rebuilt from the same seed outside the timing: the timing is the
    // batched proof check and 64 unblinds and hashes.
    group.bench_function("finalize_64", |b| {
        b.iter_batched(
            || {
                let mut replay = ChaCha20Rng::from_seed([0x44; 32]);
                let _ = postage::blind(1, EPOCH, &mut replay);
                postage::blind(postage::MAX_ISSUE, EPOCH, &mut replay).1
            },
            |state| state.finalize(black_box(&response_64), black_box(&public_key)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_baseline, bench_keys, bench_request, bench_seal, bench_drops, bench_receipt, bench_nip44,
        bench_postage
}
criterion_main!(benches);
