//! End-to-end tests of `pigeonhole serve`: a real relay process on a temporary data
//! directory, driven over HTTP with requests signed by `pigeonhole-proto`.
//!
//! Every test starts its own relay(s) (a relay is one process; nothing is shared between
//! tests), and read-only checks within a test share that test's relay. The crash test's round
//! count is `PIGEONHOLE_CRASH_ROUNDS` (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::receipt::{RelayDocument, RelayInfo, UsageReport, WriteReceipt};
use pigeonhole_proto::request::{Request, SignedMessage};
use pigeonhole_proto::seal::open;
use rand_core::{OsRng, RngCore as _};
use serde_json::Value;

/// Settings for relays that take a burst of writes from one address.
const UNLIMITED_RATE: [&str; 4] =
    ["--set", "limits.requests_per_sec_per_ip=100000", "--set", "limits.burst_per_ip=100000"];

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// Parses and verifies a write receipt from a write answer.
#[track_caller]
fn receipt_of(body: &Value, relay: &PublicKey) -> WriteReceipt {
    let receipt = WriteReceipt::from_json(&body["receipt"].to_string()).expect("receipt JSON");
    receipt.verify(relay).expect("the receipt verifies under the relay key");
    receipt
}

/// Decodes a base64 relay document.
fn document(body: &Value) -> RelayDocument {
    RelayDocument::from_bytes(&base64_decode(s(&body["document"]))).expect("document bytes")
}

/// The text of the letter inside a read answer's record, opened with the receiver's key.
fn opened_text(read_body: &Value, receiver: &Person) -> (SignedMessage, String) {
    let record = SignedMessage::from_json(&read_body["record"].to_string())
        .expect("the served record is a signed write that verifies");
    let Request::Write(write) = &record.message().request else { panic!("served record is not a write") };
    let opened = open(&receiver.key, &write.content).expect("the receiver opens the letter");
    assert_eq!(opened.letter.recipient, receiver.pk());
    assert_eq!(opened.letter.sender, Some(record.message().from), "letter signed by the writer");
    let Payload::Text(text) = opened.letter.payload else { panic!("not a text letter") };
    (record, text)
}

fn ids(inventory: &[(String, u64)]) -> Vec<&str> {
    inventory.iter().map(|(id, _)| id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Happy path

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_write_receipt_read_inventory_delete() {
    let relay = Relay::start(&[]).await;
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));

    // The relay's info: a signed document under the key /health names.
    let info = relay.get("/v1/info").await;
    let body = info.ok(200);
    assert_eq!(s(&body["relay"]), relay.relay_key.to_hex());
    let doc = document(body);
    assert_eq!(doc.relay, relay.relay_key);
    assert_eq!(doc.timestamp, u(&body["timestamp"]));
    let signed_info = RelayInfo::from_document(&doc, &relay.relay_key).expect("info document verifies");
    assert!(RelayInfo::from_document(&doc, &random_key()).is_err(), "verifies only under the relay key");
    let json_info: RelayInfo = serde_json::from_value(body["info"].clone()).expect("info JSON");
    assert_eq!(signed_info, json_info, "the JSON info is what the document signs");
    assert_eq!((signed_info.policy, signed_info.pull_limit, signed_info.max_skew_secs), (0, 0, 120));
    assert!(signed_info.software.starts_with("pigeonhole/"));

    // Registration is idempotent: 201 then 200.
    let reg = relay.register(&alice, None).await;
    let account = &reg.ok(201)["account"];
    assert_eq!((s(&account["key"]), s(&account["status"])), (alice.hex().as_str(), "active"));
    relay.register(&alice, None).await.ok(200);

    // Write: 201 with a receipt that verifies and names exactly this record.
    let text = "Hello Bob — it's Alice. 🐦";
    let signed = alice.signed(write_msg(&alice, &bob.pk(), "msg-0001", text));
    let first = relay.put_write(&signed).await;
    let body = first.ok(201);
    assert_eq!(body["duplicate"], false);
    let seq = u(&body["seq"]);
    let receipt = receipt_of(body, &relay.relay_key);
    assert!(receipt.verify(&random_key()).is_err(), "a receipt verifies only under its relay");
    let leaf = &receipt.leaf;
    assert_eq!((leaf.relay, leaf.owner, leaf.receiver), (relay.relay_key, alice.pk(), bob.pk()));
    assert_eq!((leaf.record_id.as_str(), leaf.seq), ("msg-0001", seq));
    assert_eq!(leaf.record_hash, signed.message().record_hash());
    assert_eq!(leaf.expires_at - leaf.stored_at, 3_600_000, "the requested TTL");

    // The same signed write again: 200, duplicate, same seq, the original leaf.
    let again = relay.put_write(&signed).await;
    let body = again.ok(200);
    assert_eq!((body["duplicate"].clone(), u(&body["seq"])), (Value::Bool(true), seq));
    let dup_receipt = receipt_of(body, &relay.relay_key);
    assert_eq!(dup_receipt.leaf, receipt.leaf, "a duplicate's receipt names the original record");

    // Same record id, different content: 409 conflict.
    relay.write(&alice, &bob.pk(), "msg-0001", "something else").await.err(409, "conflict");

    // A record id using every allowed punctuation character.
    let second = relay.write(&alice, &bob.pk(), "A.z_0~9-x", "second").await;
    let seq2 = u(&second.ok(201)["seq"]);
    assert!(seq2 > seq);

    // Bob reads: the exact signed write, whose letter opens to the exact text.
    let read = relay.read(&bob, &alice.pk(), &bob.pk(), "msg-0001").await;
    let body = read.ok(200);
    assert_eq!((s(&body["recordId"]), u(&body["seq"])), ("msg-0001", seq));
    assert_eq!((body["exhausted"].clone(), u(&body["pulls"])), (Value::Bool(false), 1));
    let (record, opened) = opened_text(body, &bob);
    assert_eq!(record, signed, "the relay serves the signed write byte for byte");
    assert_eq!(opened, text);
    let Request::Write(write) = &record.message().request else { unreachable!() };
    assert!(open(&alice.key, &write.content).is_err(), "only Bob can open it");
    let read2 = relay.read(&bob, &alice.pk(), &bob.pk(), "A.z_0~9-x").await;
    assert_eq!(opened_text(read2.ok(200), &bob).1, "second");

    // Inventory lists both, in order, with sizes.
    let page = relay.inventory_page(&bob, &alice.pk(), &bob.pk(), None, 100).await;
    let body = page.ok(200);
    assert_eq!(u(&body["lastSeq"]), seq2);
    assert_eq!(u(&body["records"][0]["size"]), signed.to_bytes().len() as u64);
    let inventory = relay.inventory(&bob, &alice.pk(), &bob.pk()).await;
    assert_eq!(inventory, vec![("msg-0001".to_owned(), seq), ("A.z_0~9-x".to_owned(), seq2)]);

    // Alice deletes; Bob's read is 404; a second delete is 404.
    let deleted = relay.delete(&alice, &bob.pk(), "msg-0001").await;
    assert_eq!(deleted.ok(200)["deleted"], true);
    relay.read(&bob, &alice.pk(), &bob.pk(), "msg-0001").await.err(404, "not_found");
    relay.delete(&alice, &bob.pk(), "msg-0001").await.err(404, "not_found");
    assert_eq!(relay.inventory(&bob, &alice.pk(), &bob.pk()).await, vec![("A.z_0~9-x".to_owned(), seq2)]);

    // Metrics are served and count requests.
    let metrics = relay.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text.contains("pigeonhole_requests_total"), "{}", metrics.text);
    // The allocator's own account of the heap: live allocations, and the pages it holds.
    let gauge = |name: &str| -> f64 {
        metrics
            .text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", metrics.text))
    };
    let (allocated, resident) =
        (gauge("pigeonhole_heap_allocated_bytes"), gauge("pigeonhole_heap_resident_bytes"));
    assert!(allocated > 0.0 && resident >= allocated, "allocated {allocated}, resident {resident}");
    // The store's shape, per keyspace.
    for name in ["pigeonhole_store_tables", "pigeonhole_store_l0_tables", "pigeonhole_store_blob_files"] {
        gauge(&format!("{name}{{keyspace=\"records\"}}"));
    }
}

// ---------------------------------------------------------------------------------------
// 2. Authorization matrix

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Alice, whose outbox it is.
    Owner,
    /// Bob, the outbox's receiver (registered).
    Receiver,
    /// Carol, registered, unrelated.
    Third,
    /// Dave, a key with no account.
    Unregistered,
    /// Mallory signs, then claims to be whoever the operation needs (Alice or Bob).
    Forged,
    /// No request at all: an empty body.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Read,
    Inventory,
    Listen,
    Usage,
    Delete,
}

/// What a cell must answer: a success status, or an error status and code.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Ok(u16),
    Err(u16, &'static str),
}

struct Cast {
    alice: Person,
    bob: Person,
    carol: Person,
    dave: Person,
    mallory: Person,
}

impl Cast {
    fn actor(&self, role: Role) -> &Person {
        match role {
            Role::Owner => &self.alice,
            Role::Receiver => &self.bob,
            Role::Third => &self.carol,
            Role::Unregistered => &self.dave,
            Role::Forged | Role::Empty => &self.mallory,
        }
    }
}

/// The HTTP method, path and body `role` sends for `op` on Alice's outbox for Bob.
fn matrix_request(cast: &Cast, relay: &PublicKey, op: Op, role: Role) -> (reqwest::Method, String, String) {
    let (alice, bob) = (cast.alice.pk(), cast.bob.pk());
    let actor = cast.actor(role);
    let (method, path, message) = match op {
        Op::Write => {
            let id = format!("w-{role:?}");
            (reqwest::Method::PUT, record_path(&alice, &bob, &id), write_msg(actor, &bob, &id, "matrix"))
        }
        Op::Read => (
            reqwest::Method::POST,
            record_path(&alice, &bob, "m1"),
            read_msg(actor, relay, &alice, &bob, "m1"),
        ),
        Op::Inventory => (
            reqwest::Method::POST,
            outbox_path(&alice, &bob),
            inventory_msg(actor, relay, &alice, &bob, None, 100),
        ),
        Op::Listen => (
            reqwest::Method::POST,
            format!("{}?wait=0", outbox_path(&alice, &bob)),
            listen_msg(actor, relay, &alice, &bob, None),
        ),
        Op::Usage => (reqwest::Method::POST, "/v1/usage".to_owned(), usage_msg(actor, relay, None, None)),
        Op::Delete => (
            reqwest::Method::POST,
            record_path(&alice, &bob, "victim"),
            delete_msg(actor, relay, &bob, "victim"),
        ),
    };
    let body = match role {
        Role::Empty => String::new(),
        Role::Forged => {
            // Claim the identity the operation would need; the signature is Mallory's.
            let claimed = match op {
                Op::Read | Op::Inventory | Op::Listen => &cast.bob,
                _ => &cast.alice,
            };
            let json = actor.sign(message);
            let forged = json.replace(
                &format!("\"from\":\"{}\"", actor.hex()),
                &format!("\"from\":\"{}\"", claimed.hex()),
            );
            assert_ne!(forged, json);
            forged
        }
        _ => actor.sign(message),
    };
    (method, path, body)
}

fn matrix_expect(op: Op, role: Role) -> Expect {
    use Expect::{Err, Ok};
    use Role::*;
    const MISMATCH: Expect = Err(400, "path_mismatch");
    const FORBIDDEN: Expect = Err(403, "forbidden");
    match (role, op) {
        (Forged, _) => Err(401, "bad_signature"),
        (Empty, _) => Err(400, "bad_request"),
        (Owner, Op::Write) => Ok(201),
        // Anyone else's write names their own key as the owner: not this path.
        (_, Op::Write) => MISMATCH,
        (Receiver, Op::Read) => Ok(200),
        (_, Op::Read) => FORBIDDEN,
        (Owner | Receiver, Op::Inventory | Op::Listen) => Ok(200),
        (_, Op::Inventory | Op::Listen) => FORBIDDEN,
        (_, Op::Usage) => Ok(200),
        (Owner, Op::Delete) => Ok(200),
        // A delete's owner is its signer: anyone else's delete names another outbox.
        (_, Op::Delete) => MISMATCH,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let relay = Relay::start(&[]).await;
    let cast = Cast {
        alice: Person::new("alice"),
        bob: Person::new("bob"),
        carol: Person::new("carol"),
        dave: Person::new("dave"),
        mallory: Person::new("mallory"),
    };
    let (alice, bob, carol) = (&cast.alice, &cast.bob, &cast.carol);
    for who in [alice, bob, carol] {
        relay.register(who, None).await.ok(201);
    }
    let m1 = u(&relay.write(alice, &bob.pk(), "m1", "for Bob").await.ok(201)["seq"]);
    relay.write(alice, &bob.pk(), "victim", "to be deleted").await.ok(201);
    let c1 = u(&relay.write(carol, &bob.pk(), "c1", "Carol's own").await.ok(201)["seq"]);

    let roles = [Role::Receiver, Role::Third, Role::Unregistered, Role::Forged, Role::Empty, Role::Owner];
    let ops = [Op::Write, Op::Read, Op::Inventory, Op::Listen, Op::Usage, Op::Delete];
    let mut failures = Vec::new();
    for op in ops {
        for role in roles {
            let (method, path, body) = matrix_request(&cast, &relay.relay_key, op, role);
            let resp =
                send(&relay.http, method, &format!("{}{path}", relay.url), Some(body)).await.expect("sends");
            let expected = matrix_expect(op, role);
            let ok = match expected {
                Expect::Ok(status) => resp.status == status,
                Expect::Err(status, code) => resp.status == status && resp.json["code"] == code,
            };
            if !ok {
                failures.push(format!(
                    "{op:?} by {role:?}: expected {expected:?}, got {} {}",
                    resp.status, resp.text
                ));
                continue;
            }
            match expected {
                Expect::Err(..) => resp.assert_error_shape(),
                Expect::Ok(_) => match op {
                    Op::Usage => {
                        // Only the signer's own outboxes. Alice's lists what Bob fetched so
                        // far: his read of m1 and his listen (wait=0, from the start), which
                        // delivered m1, victim and w-Owner. Alice's own listen is no read.
                        let actor = cast.actor(role);
                        let report = UsageReport::from_document(&document(&resp.json), &relay.relay_key)
                            .expect("usage document verifies");
                        assert_eq!(report.account, actor.pk(), "{role:?}");
                        let mut reads: Vec<_> =
                            report.reads.iter().map(|r| (r.receiver, r.record_id.as_str())).collect();
                        reads.sort_unstable_by_key(|(_, id)| *id);
                        let expected_reads = if role == Role::Owner {
                            ["m1", "m1", "victim", "w-Owner"].map(|id| (bob.pk(), id)).to_vec()
                        } else {
                            vec![]
                        };
                        assert_eq!(reads, expected_reads, "usage of {role:?}");
                    }
                    Op::Inventory | Op::Listen => {
                        let n = resp.json["records"].as_array().expect("records").len();
                        assert_eq!(n, 3, "{op:?} by {role:?}: m1, victim, w-Owner");
                    }
                    _ => {}
                },
            }
        }
    }
    assert!(failures.is_empty(), "authorization matrix failures:\n{}", failures.join("\n"));

    // Extra cells: writes into one's own outbox need an account; requests that sign one
    // outbox but are sent to another's path are refused.
    let dave = &cast.dave;
    relay.write(dave, &bob.pk(), "d1", "no account").await.err(403, "no_account");
    let carol_signs_bob_path = carol.sign(read_msg(carol, &relay.relay_key, &alice.pk(), &carol.pk(), "m1"));
    relay
        .post(&record_path(&alice.pk(), &bob.pk(), "m1"), carol_signs_bob_path)
        .await
        .err(400, "path_mismatch");
    let carol_inventory =
        carol.sign(inventory_msg(carol, &relay.relay_key, &alice.pk(), &carol.pk(), None, 10));
    relay.post(&outbox_path(&alice.pk(), &bob.pk()), carol_inventory).await.err(400, "path_mismatch");
    let bob_deletes = bob.sign(delete_msg(bob, &relay.relay_key, &bob.pk(), "m1"));
    relay.post(&record_path(&alice.pk(), &bob.pk(), "m1"), bob_deletes).await.err(400, "path_mismatch");
    let stolen = alice.signed(write_msg(alice, &bob.pk(), "m9", "Alice's"));
    relay.put(&record_path(&alice.pk(), &carol.pk(), "m9"), stolen.to_json()).await.err(400, "path_mismatch");

    // Nothing changed but what the owner did: m1 and her matrix write remain, victim is gone.
    let inventory = relay.inventory(bob, &alice.pk(), &bob.pk()).await;
    assert_eq!(ids(&inventory), ["m1", "w-Owner"]);
    assert_eq!(inventory[0].1, m1);
    assert_eq!(relay.inventory(bob, &carol.pk(), &bob.pk()).await, vec![("c1".to_owned(), c1)]);
    assert!(relay.inventory(bob, &dave.pk(), &bob.pk()).await.is_empty());
    // Bob's and Dave's refused writes did not land in their own outboxes either.
    assert!(relay.inventory(bob, &bob.pk(), &bob.pk()).await.is_empty());
    let read = relay.read(bob, &alice.pk(), &bob.pk(), "m1").await;
    assert_eq!(opened_text(read.ok(200), bob).1, "for Bob");
}

// ---------------------------------------------------------------------------------------
// 3. Bad input

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: String,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case { what, method, path, body: body.into(), status, code }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_json_errors_and_changes_nothing() {
    let relay = Relay::start(&[]).await;
    let rk = relay.relay_key;
    let (alice, bob, carol, mallory) =
        (Person::new("alice"), Person::new("bob"), Person::new("carol"), Person::new("mallory"));
    relay.register(&alice, None).await.ok(201);
    let m1_write = alice.signed(write_msg(&alice, &bob.pk(), "m1", "hello"));
    let m1 = u(&relay.put_write(&m1_write).await.ok(201)["seq"]);
    let (a, b) = (alice.pk(), bob.pk());
    let m1_path = record_path(&a, &b, "m1");
    let outbox = outbox_path(&a, &b);
    let read_m1 = || bob.sign(read_msg(&bob, &rk, &a, &b, "m1"));
    let new_write = |id: &str| alice.sign(write_msg(&alice, &b, id, "bad"));
    let with_ts = |mut message: pigeonhole_proto::request::Message, ts: u64| {
        message.timestamp = ts;
        message
    };
    let hex_a = a.to_hex();
    let hex_b = b.to_hex();

    let mut cases = vec![
        // Bodies that are not a request.
        case("malformed JSON", "PUT", record_path(&a, &b, "x1"), "{\"msg\":", 400, "bad_request"),
        case("not JSON", "POST", m1_path.clone(), "hello", 400, "bad_request"),
        case("empty body", "POST", m1_path.clone(), "", 400, "bad_request"),
        case("JSON array", "POST", "/v1/usage".into(), "[]", 400, "bad_request"),
        case("non-UTF-8 body", "POST", m1_path.clone(), vec![0xff, 0xfe, b'{'], 400, "bad_request"),
        case(
            "unknown field in msg",
            "PUT",
            record_path(&a, &b, "x2"),
            new_write("x2").replacen("\"msg\":{", "\"msg\":{\"extra\":0,", 1),
            400,
            "bad_request",
        ),
        case(
            "unknown field in request",
            "POST",
            m1_path.clone(),
            read_m1().replacen("\"request\":{", "\"request\":{\"extra\":0,", 1),
            400,
            "bad_request",
        ),
        case(
            "unknown top-level field",
            "POST",
            m1_path.clone(),
            {
                let json = read_m1();
                format!("{},\"extra\":1}}", &json[..json.len() - 1])
            },
            400,
            "bad_request",
        ),
        case(
            "missing sig",
            "POST",
            m1_path.clone(),
            {
                let json = read_m1();
                let at = json.find(",\"sig\":").expect("sig");
                format!("{}}}}}", &json[..at])
            },
            400,
            "bad_request",
        ),
        case(
            "unknown version v:2",
            "POST",
            m1_path.clone(),
            read_m1().replace("\"v\":1", "\"v\":2"),
            400,
            "bad_request",
        ),
        case(
            "unknown request type",
            "POST",
            m1_path.clone(),
            read_m1().replace("\"type\":\"read\"", "\"type\":\"nuke\""),
            400,
            "bad_request",
        ),
        // Authentication and freshness.
        case(
            "tampered field (ttl)",
            "PUT",
            record_path(&a, &b, "x3"),
            new_write("x3").replace("\"ttl\":3600", "\"ttl\":3601"),
            401,
            "bad_signature",
        ),
        case(
            "tampered timestamp",
            "POST",
            m1_path.clone(),
            {
                let message = read_msg(&bob, &rk, &a, &b, "m1");
                let ts = message.timestamp;
                bob.sign(message)
                    .replace(&format!("\"timestamp\":{ts}"), &format!("\"timestamp\":{}", ts + 1))
            },
            401,
            "bad_signature",
        ),
        case(
            "signed by another key than `from`",
            "POST",
            m1_path.clone(),
            mallory
                .sign(read_msg(&mallory, &rk, &a, &b, "m1"))
                .replace(&format!("\"from\":\"{}\"", mallory.hex()), &format!("\"from\":\"{hex_b}\"")),
            401,
            "bad_signature",
        ),
        case(
            "stale timestamp (now - 10 min)",
            "POST",
            m1_path.clone(),
            bob.sign(with_ts(read_msg(&bob, &rk, &a, &b, "m1"), now_ms() - 600_000)),
            401,
            "stale_request",
        ),
        case(
            "future timestamp (now + 10 min)",
            "POST",
            m1_path.clone(),
            bob.sign(with_ts(read_msg(&bob, &rk, &a, &b, "m1"), now_ms() + 600_000)),
            401,
            "stale_request",
        ),
        case(
            "stale write",
            "PUT",
            record_path(&a, &b, "x4"),
            alice.sign(with_ts(write_msg(&alice, &b, "x4", "old"), now_ms() - 600_000)),
            401,
            "stale_request",
        ),
        case(
            "read addressed to another relay",
            "POST",
            m1_path.clone(),
            bob.sign(read_msg(&bob, &random_key(), &a, &b, "m1")),
            403,
            "wrong_relay",
        ),
        case(
            "inventory addressed to another relay",
            "POST",
            outbox.clone(),
            bob.sign(inventory_msg(&bob, &random_key(), &a, &b, None, 10)),
            403,
            "wrong_relay",
        ),
        case(
            "register addressed to another relay",
            "POST",
            "/v1/accounts".into(),
            carol.sign(register_msg(&carol, &random_key(), None)),
            403,
            "wrong_relay",
        ),
        // Paths.
        case(
            "non-hex owner",
            "POST",
            format!("/v1/{}/outbox/{hex_b}/m1", "zz".repeat(32)),
            read_m1(),
            400,
            "bad_request",
        ),
        case(
            "63-hex owner",
            "POST",
            format!("/v1/{}/outbox/{hex_b}/m1", &hex_a[1..]),
            read_m1(),
            400,
            "bad_request",
        ),
        case(
            "owner off the curve",
            "POST",
            format!("/v1/{}/outbox/{hex_b}/m1", "ff".repeat(32)),
            read_m1(),
            400,
            "bad_request",
        ),
        case(
            "non-hex receiver (outbox)",
            "POST",
            format!("/v1/{hex_a}/outbox/bob"),
            read_m1(),
            400,
            "bad_request",
        ),
        case("record id ..", "POST", format!("/v1/{hex_a}/outbox/{hex_b}/.."), read_m1(), 400, "bad_request"),
        case(
            "record id %2e%2e",
            "POST",
            format!("/v1/{hex_a}/outbox/{hex_b}/%2e%2e"),
            read_m1(),
            400,
            "bad_request",
        ),
        case("record id .", "POST", format!("/v1/{hex_a}/outbox/{hex_b}/."), read_m1(), 400, "bad_request"),
        case(
            "record id empty (trailing slash)",
            "POST",
            format!("/v1/{hex_a}/outbox/{hex_b}/"),
            read_m1(),
            404,
            "not_found",
        ),
        case(
            "record id of 129 chars",
            "POST",
            record_path(&a, &b, &"a".repeat(129)),
            read_m1(),
            400,
            "bad_request",
        ),
        case(
            "record id a%2Fb",
            "POST",
            format!("/v1/{hex_a}/outbox/{hex_b}/a%2Fb"),
            read_m1(),
            400,
            "bad_request",
        ),
        case(
            "record id with a space",
            "POST",
            format!("/v1/{hex_a}/outbox/{hex_b}/a%20b"),
            read_m1(),
            400,
            "bad_request",
        ),
        case(
            "record id non-ASCII",
            "POST",
            format!("/v1/{hex_a}/outbox/{hex_b}/%C3%A9"),
            read_m1(),
            400,
            "bad_request",
        ),
        case(
            "path record id differs from signed",
            "POST",
            record_path(&a, &b, "m2"),
            read_m1(),
            400,
            "path_mismatch",
        ),
        case(
            "path owner differs from signed",
            "POST",
            record_path(&carol.pk(), &b, "m1"),
            read_m1(),
            400,
            "path_mismatch",
        ),
        case(
            "write to a path naming another receiver",
            "PUT",
            record_path(&a, &carol.pk(), "x5"),
            new_write("x5"),
            400,
            "path_mismatch",
        ),
        // Wrong request type for the endpoint.
        case("PUT a read", "PUT", m1_path.clone(), read_m1(), 400, "wrong_request_type"),
        case(
            "POST a write to a record",
            "POST",
            record_path(&a, &b, "x6"),
            new_write("x6"),
            400,
            "wrong_request_type",
        ),
        case("POST a read to an outbox", "POST", outbox.clone(), read_m1(), 400, "wrong_request_type"),
        case("POST a write to an outbox", "POST", outbox.clone(), new_write("x7"), 400, "wrong_request_type"),
        case(
            "POST a usage to /v1/accounts",
            "POST",
            "/v1/accounts".into(),
            carol.sign(usage_msg(&carol, &rk, None, None)),
            400,
            "wrong_request_type",
        ),
        case(
            "POST a register to /v1/usage",
            "POST",
            "/v1/usage".into(),
            carol.sign(register_msg(&carol, &rk, None)),
            400,
            "wrong_request_type",
        ),
        case(
            "POST an inventory to a record",
            "POST",
            m1_path.clone(),
            bob.sign(inventory_msg(&bob, &rk, &a, &b, None, 10)),
            400,
            "wrong_request_type",
        ),
        // Query strings.
        case(
            "listen wait above the maximum",
            "POST",
            format!("{outbox}?wait=61"),
            bob.sign(listen_msg(&bob, &rk, &a, &b, None)),
            400,
            "bad_request",
        ),
        case(
            "listen wait not a number",
            "POST",
            format!("{outbox}?wait=soon"),
            bob.sign(listen_msg(&bob, &rk, &a, &b, None)),
            400,
            "bad_request",
        ),
        case(
            "unknown query parameter",
            "POST",
            format!("{outbox}?wiat=1"),
            bob.sign(listen_msg(&bob, &rk, &a, &b, None)),
            400,
            "bad_request",
        ),
        // Methods, endpoints, sizes.
        case("GET a record", "GET", m1_path.clone(), "", 405, "bad_request"),
        case("DELETE a record", "DELETE", m1_path.clone(), "", 405, "bad_request"),
        case("unknown endpoint", "GET", "/v1/nope".into(), "", 404, "not_found"),
        case("unknown version prefix", "GET", "/v2/info".into(), "", 404, "not_found"),
        case("oversize body (300 KiB)", "POST", m1_path.clone(), vec![b' '; 300 * 1024], 413, "too_large"),
    ];
    // A body that claims a huge content (beyond the protocol's limit) cannot be signed, so it
    // is edited in: the relay refuses it while decoding, before checking the signature.
    let huge = {
        let json = new_write("x8");
        let start = json.find("\"content\":\"").expect("content") + 11;
        let end = start + json[start..].find('"').expect("end");
        format!("{}{}{}", &json[..start], "A".repeat(90_000), &json[end..])
    };
    cases.push(case(
        "content above the protocol limit",
        "PUT",
        record_path(&a, &b, "x8"),
        huge,
        400,
        "bad_request",
    ));

    let mut failures = Vec::new();
    for case in &cases {
        let resp = raw_http(relay.addr, case.method, &case.path, &case.body).await;
        if resp.status != case.status || resp.json["code"] != case.code {
            failures.push(format!(
                "{}: expected {} {}, got {} {}",
                case.what, case.status, case.code, resp.status, resp.text
            ));
            continue;
        }
        let object = resp.json.as_object();
        if !object.is_some_and(|o| {
            o.len() == 2 && o.get("error").and_then(Value::as_str).is_some_and(|e| !e.is_empty())
        }) {
            failures.push(format!("{}: error body is not {{error, code}}: {}", case.what, resp.text));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Replays: the same signed read, inventory or usage twice is refused the second time; the
    // same signed write twice is idempotent instead.
    let read = read_m1();
    relay.post(&m1_path, read.clone()).await.ok(200);
    relay.post(&m1_path, read).await.err(409, "replay");
    let inventory = bob.sign(inventory_msg(&bob, &rk, &a, &b, None, 10));
    relay.post(&outbox, inventory.clone()).await.ok(200);
    relay.post(&outbox, inventory).await.err(409, "replay");
    let usage = alice.sign(usage_msg(&alice, &rk, None, None));
    relay.post("/v1/usage", usage.clone()).await.ok(200);
    relay.post("/v1/usage", usage).await.err(409, "replay");
    let again = relay.put_write(&m1_write).await;
    assert_eq!((again.ok(200)["duplicate"].clone(), u(&again.json["seq"])), (Value::Bool(true), m1));

    // Upper-case hex in the path is the same key (either case is accepted).
    let upper = format!("/v1/{}/outbox/{}/m1", hex_a.to_uppercase(), hex_b.to_uppercase());
    relay.post(&upper, read_m1()).await.ok(200);

    // Nothing was stored, deleted or registered by any of it.
    assert_eq!(relay.inventory(&bob, &a, &b).await, vec![("m1".to_owned(), m1)]);
    assert!(relay.inventory(&carol, &a, &carol.pk()).await.is_empty());
    relay.write(&carol, &b, "c1", "no account").await.err(403, "no_account");
    assert_eq!(relay.get("/health").await.ok(200)["status"], "ok");
}

// ---------------------------------------------------------------------------------------
// 4. Long poll

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_a_write_and_only_for_its_outbox() {
    let relay = Arc::new(Relay::start(&[]).await);
    let (alice, bob, carol) = (Person::new("alice"), Person::new("bob"), Person::new("carol"));
    relay.register(&alice, None).await.ok(201);
    let first = u(&relay.write(&alice, &bob.pk(), "a1", "first").await.ok(201)["seq"]);

    // Records after the cursor come back at once, even with a long wait.
    let now = Instant::now();
    let resp = relay.listen(&bob, &alice.pk(), &bob.pk(), Some(first - 1), 10).await;
    let body = resp.ok(200);
    assert!(now.elapsed() < Duration::from_millis(1000), "no wait when records are ready");
    assert_eq!((body["records"].as_array().expect("records").len(), u(&body["cursor"])), (1, first));
    assert_eq!(opened_text(&body["records"][0], &bob).1, "first");

    // Bob waits after a1; Carol waits on her own outbox from Alice; Alice writes to Bob.
    let bob_poll = {
        let relay = relay.clone();
        let body = bob.sign(listen_msg(&bob, &relay.relay_key, &alice.pk(), &bob.pk(), Some(first)));
        let path = format!("{}?wait=10", outbox_path(&alice.pk(), &bob.pk()));
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = relay.post(&path, body).await;
            (resp, started, Instant::now())
        })
    };
    let carol_poll = {
        let relay = relay.clone();
        let body = carol.sign(listen_msg(&carol, &relay.relay_key, &alice.pk(), &carol.pk(), None));
        let path = format!("{}?wait=1", outbox_path(&alice.pk(), &carol.pk()));
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = relay.post(&path, body).await;
            (resp, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written_at = Instant::now();
    let write = relay.write(&alice, &bob.pk(), "a2", "second").await;
    let second = u(&write.ok(201)["seq"]);

    let (resp, poll_started, returned) = bob_poll.await.expect("join");
    let body = resp.ok(200);
    let records = body["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{}", resp.text);
    assert_eq!((s(&records[0]["recordId"]), u(&body["cursor"])), ("a2", second));
    assert_eq!(opened_text(&records[0], &bob).1, "second");
    assert!(returned > written_at, "the poll waited for the write ({:?})", returned - poll_started);
    let latency = returned - written_at;
    assert!(latency < Duration::from_millis(1000), "woken {latency:?} after the write");

    let (resp, waited) = carol_poll.await.expect("join");
    let body = resp.ok(200);
    assert_eq!(body["records"], Value::Array(vec![]), "Carol's outbox is empty");
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(2500),
        "Carol's wait=1 poll took {waited:?}"
    );

    // wait=0 on an empty outbox answers at once with the cursor unchanged.
    let resp = relay.listen(&bob, &alice.pk(), &bob.pk(), Some(second), 0).await;
    let body = resp.ok(200);
    assert_eq!((body["records"].as_array().expect("records").len(), u(&body["cursor"])), (0, second));
}
// ---------------------------------------------------------------------------------------
// 5. Durability

/// Writers that write continuously until `stop` or the first failed request, recording every
/// acknowledged (201) record. Non-201 answers are collected as unexpected.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, u64, SignedMessage)>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(relay: &Relay, alice: &Arc<Person>, receiver: PublicKey, prefix: &str, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let unexpected = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..count)
            .map(|w| {
                let (stop, acked, unexpected) = (stop.clone(), acked.clone(), unexpected.clone());
                let (client, url, relay_key, alice) =
                    (relay.http.clone(), relay.url.clone(), relay.relay_key, alice.clone());
                let prefix = format!("{prefix}-w{w}");
                tokio::spawn(async move {
                    for i in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let id = format!("{prefix}-{i}");
                        let signed = alice.signed(write_msg(&alice, &receiver, &id, &id));
                        match put_signed(&client, &url, &signed).await {
                            Ok(resp) if resp.status == 201 => {
                                let receipt = receipt_of(&resp.json, &relay_key);
                                assert_eq!(receipt.leaf.record_hash, signed.message().record_hash());
                                acked.lock().unwrap().push((id, u(&resp.json["seq"]), signed));
                            }
                            Ok(resp) => {
                                unexpected
                                    .lock()
                                    .unwrap()
                                    .push(format!("{id}: {} {}", resp.status, resp.text));
                                return;
                            }
                            // The relay went away.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Self { stop, acked, unexpected, tasks }
    }

    /// Stops the writers and returns what was acknowledged and any unexpected answers.
    async fn finish(self) -> (Vec<(String, u64, SignedMessage)>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("writer ends")
                .expect("writer ok");
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let unexpected = std::mem::take(&mut *self.unexpected.lock().unwrap());
        (acked, unexpected)
    }
}

/// Checks that every acknowledged record is in the receiver's inventory with its seq, and
/// that a sample of them reads back byte for byte.
async fn assert_all_present(
    relay: &Relay,
    alice: &Person,
    bob: &Person,
    acked: &BTreeMap<String, (u64, SignedMessage)>,
    sample: &[String],
    context: &str,
) {
    let inventory: HashMap<String, u64> =
        relay.inventory(bob, &alice.pk(), &bob.pk()).await.into_iter().collect();
    let missing: Vec<String> = acked
        .iter()
        .filter(|(id, (seq, _))| inventory.get(*id) != Some(seq))
        .map(|(id, (seq, _))| format!("{id} (seq {seq}, found {:?})", inventory.get(id)))
        .collect();
    assert!(
        missing.is_empty(),
        "{context}: {} of {} acknowledged records missing or changed: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    for id in sample {
        let read = relay.read(bob, &alice.pk(), &bob.pk(), id).await;
        let (record, text) = opened_text(read.ok(200), bob);
        assert_eq!(&record, &acked[id].1, "{context}: {id} reads back as written");
        assert_eq!(&text, id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_every_acknowledged_write_and_restart_serves_them() {
    let mut relay = Relay::start(&UNLIMITED_RATE).await;
    let (alice, bob) = (Arc::new(Person::new("alice")), Person::new("bob"));
    relay.register(&alice, None).await.ok(201);
    let relay_key = relay.relay_key;

    // 50 concurrent writes, all acknowledged.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let id = format!("g{i:02}");
            let signed = alice.signed(write_msg(&alice, &bob.pk(), &id, &id));
            let (client, url) = (relay.http.clone(), relay.url.clone());
            tokio::spawn(async move { (put_signed(&client, &url, &signed).await.expect("PUT"), id, signed) })
        })
        .collect();
    let mut acked = BTreeMap::new();
    for task in tasks {
        let (resp, id, signed) = task.await.expect("join");
        let body = resp.ok(201);
        receipt_of(body, &relay_key);
        acked.insert(id, (u(&body["seq"]), signed));
    }
    let seqs: BTreeSet<u64> = acked.values().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs.len(), 50, "every write has its own seq");

    let (status, took) = relay.terminate(Duration::from_secs(5)).await.expect("exits within 5 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status:?} (after {took:?})");
    relay.restart().await;
    assert_eq!(relay.relay_key, relay_key, "the relay key survives a restart");
    let all: Vec<String> = acked.keys().cloned().collect();
    assert_all_present(&relay, &alice, &bob, &acked, &all, "after SIGTERM").await;

    // SIGTERM while writers are busy: exit 0, and whatever was acknowledged is there.
    let writers = Writers::start(&relay, &alice, bob.pk(), "busy", 4);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, took) = relay.terminate(Duration::from_secs(5)).await.expect("exits within 5 s of SIGTERM");
    let (busy, unexpected) = writers.finish().await;
    assert!(status.success(), "exit status after SIGTERM under load: {status:?} (after {took:?})");
    // A write that arrives during shutdown may be refused with 503 busy; nothing else.
    for line in &unexpected {
        assert!(line.contains(" 503 ") && line.contains("\"busy\""), "unexpected answer: {line}");
    }
    assert!(!busy.is_empty(), "some writes were acknowledged before SIGTERM");
    let sample: Vec<String> = busy.iter().rev().take(5).map(|(id, _, _)| id.clone()).collect();
    for (id, seq, signed) in busy {
        acked.insert(id, (seq, signed));
    }
    relay.restart().await;
    assert_all_present(&relay, &alice, &bob, &acked, &sample, "after SIGTERM under load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_write() {
    let rounds: usize =
        std::env::var("PIGEONHOLE_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut relay = Relay::start(&UNLIMITED_RATE).await;
    let (alice, bob) = (Arc::new(Person::new("alice")), Person::new("bob"));
    relay.register(&alice, None).await.ok(201);
    let mut acked = BTreeMap::new();
    for round in 0..rounds {
        let writers = Writers::start(&relay, &alice, bob.pk(), &format!("r{round}"), 8);
        let delay = 100 + u64::from(OsRng.next_u32() % 401);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        relay.kill9();
        let (this_round, unexpected) = writers.finish().await;
        assert!(unexpected.is_empty(), "round {round}: answers other than 201: {unexpected:?}");
        assert!(!this_round.is_empty(), "round {round}: nothing acknowledged in {delay} ms");
        let sample: Vec<String> = this_round.iter().rev().take(5).map(|(id, _, _)| id.clone()).collect();
        for (id, seq, signed) in this_round {
            acked.insert(id, (seq, signed));
        }
        relay.restart().await;
        let context = format!("round {round} (killed after {delay} ms)");
        assert_all_present(&relay, &alice, &bob, &acked, &sample, &context).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_up_by_an_open_long_poll() {
    let mut relay = Relay::start(&[]).await;
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));
    let body = bob.sign(listen_msg(&bob, &relay.relay_key, &alice.pk(), &bob.pk(), None));
    let url = format!("{}{}?wait=10", relay.url, outbox_path(&alice.pk(), &bob.pk()));
    let client = relay.http.clone();
    let poll = tokio::spawn(async move { send(&client, reqwest::Method::POST, &url, Some(body)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = relay.terminate(Duration::from_secs(5)).await;
    let _ = poll.await;
    let (status, took) = stopped
        .expect("the relay did not exit within 5 s of SIGTERM while one `listen?wait=10` long poll was open");
    assert!(status.success(), "{status:?} after {took:?}");
}

/// Same as above for a client that sent its headers but is slow with its body: the relay
/// would wait up to `limits.request_timeout_secs` (30 s by default) before exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_up_by_a_slow_upload() {
    let mut relay = Relay::start(&["--set", "limits.request_timeout_secs=10"]).await;
    let _stream = slow_upload(relay.addr, "/v1/usage", b"{\"msg\":").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = relay.terminate(Duration::from_secs(5)).await;
    let (status, took) = stopped
        .expect("the relay did not exit within 5 s of SIGTERM while one client was slowly sending a body");
    assert!(status.success(), "{status:?} after {took:?}");
}

// ---------------------------------------------------------------------------------------
// 6. Policies and limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_policy_operator_accounts_and_invite_codes() {
    let mut relay = Relay::start(&["--policy", "invite"]).await;
    let (alice, bob, carol, dave) =
        (Person::new("alice"), Person::new("bob"), Person::new("carol"), Person::new("dave"));
    let info = relay.get("/v1/info").await;
    assert_eq!(RelayInfo::from_document(&document(info.ok(200)), &relay.relay_key).expect("info").policy, 1);

    relay.register(&alice, None).await.err(403, "invite_required");
    relay.register(&alice, Some("abc")).await.err(403, "invite_required");
    relay.write(&alice, &bob.pk(), "m1", "hi").await.err(403, "no_account");

    // The operator adds Alice (hex) and Carol (pigeon1…, JSON output) with the relay stopped.
    let (status, _) = relay.terminate(Duration::from_secs(5)).await.expect("stops");
    assert!(status.success());
    let data = relay.data_dir();
    let data = data.to_str().expect("utf-8 path");
    let out = run_cli(
        &["serve", "account", "add", &alice.hex(), "--data", data],
        relay.root(),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "account add failed: {out:?}");
    assert!(out.stdout.contains("is active"), "{out:?}");
    let carol_b32 = carol.pk().to_bech32m();
    let out = run_cli(
        &["serve", "account", "add", &carol_b32, "--data", data, "--json"],
        relay.root(),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "account add --json failed: {out:?}");
    let json: Value = serde_json::from_str(out.stdout.trim()).expect("JSON output");
    assert_eq!((s(&json["key"]), s(&json["status"])), (carol.hex().as_str(), "active"));

    relay.restart().await;
    relay.write(&alice, &bob.pk(), "m1", "hi").await.ok(201);
    relay.write(&carol, &bob.pk(), "c1", "hi").await.ok(201);
    relay.register(&alice, None).await.ok(200);
    relay.register(&dave, None).await.err(403, "invite_required");

    // While the relay runs, `account add` refuses to touch its store.
    let out = run_cli(
        &["serve", "account", "add", &dave.hex(), "--data", data],
        relay.root(),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "account add must refuse a store in use: {out:?}");
    assert!(out.stderr.contains("stop the relay"), "{out:?}");

    // With invite codes: the right code registers, a wrong one does not.
    relay.terminate(Duration::from_secs(5)).await.expect("stops");
    relay.set_args(&["--policy", "invite", "--set", r#"accounts.invite_codes=["abc"]"#]);
    relay.restart().await;
    relay.register(&dave, Some("abd")).await.err(403, "invite_required");
    relay.register(&dave, None).await.err(403, "invite_required");
    let reg = relay.register(&dave, Some("abc")).await;
    assert_eq!(s(&reg.ok(201)["account"]["key"]), dave.hex());
    relay.write(&dave, &bob.pk(), "d1", "invited").await.ok(201);
    relay.write(&alice, &bob.pk(), "m2", "still here").await.ok(201);
    let ids_now = relay.inventory(&bob, &alice.pk(), &bob.pk()).await;
    assert_eq!(ids(&ids_now), ["m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_limit_record_size_limit_and_usage_reports() {
    let relay =
        Relay::start(&["--set", "limits.pull_limit=1", "--set", "limits.max_record_bytes=1000"]).await;
    let (alice, bob, carol) = (Person::new("alice"), Person::new("bob"), Person::new("carol"));
    let info = RelayInfo::from_document(&document(relay.get("/v1/info").await.ok(200)), &relay.relay_key)
        .expect("info");
    assert_eq!((info.pull_limit, info.max_record_bytes), (1, 1000));
    relay.register(&alice, None).await.ok(201);

    // Record size limit.
    let too_big = alice.signed(write_raw(&alice, &bob.pk(), "big", 60, vec![7; 1001]));
    relay.put_write(&too_big).await.err(413, "too_large");
    let fits = alice.signed(write_raw(&alice, &bob.pk(), "fits", 60, vec![7; 1000]));
    relay.put_write(&fits).await.ok(201);
    relay.delete(&alice, &bob.pk(), "fits").await.ok(200);

    // Pull limit 1: the first read exhausts the record, the second finds nothing.
    let m1 = alice.signed(write_msg(&alice, &bob.pk(), "m1", "one"));
    let m2 = alice.signed(write_msg(&alice, &bob.pk(), "m2", "two"));
    relay.put_write(&m1).await.ok(201);
    relay.put_write(&m2).await.ok(201);
    let before_reads = now_ms();
    let read = relay.read(&bob, &alice.pk(), &bob.pk(), "m1").await;
    let body = read.ok(200);
    assert_eq!(
        (body["exhausted"].clone(), u(&body["pulls"]), u(&body["maxPulls"])),
        (Value::Bool(true), 1, 1)
    );
    assert_eq!(opened_text(body, &bob).1, "one");
    relay.read(&bob, &alice.pk(), &bob.pk(), "m1").await.err(404, "not_found");
    assert_eq!(ids(&relay.inventory(&bob, &alice.pk(), &bob.pk()).await), ["m2"]);
    assert_eq!(relay.read(&bob, &alice.pk(), &bob.pk(), "m2").await.ok(200)["exhausted"], true);
    assert!(relay.inventory(&bob, &alice.pk(), &bob.pk()).await.is_empty());
    let after_reads = now_ms() + 1;

    // Alice's usage: exactly Bob's two reads, signed by the relay.
    let resp = relay.usage(&alice, None, None).await;
    let body = resp.ok(200);
    let report =
        UsageReport::from_document(&document(body), &relay.relay_key).expect("usage document verifies");
    assert!(UsageReport::from_document(&document(body), &random_key()).is_err());
    let json_report: UsageReport = serde_json::from_value(body["report"].clone()).expect("report JSON");
    assert_eq!(report, json_report, "the JSON report is what the document signs");
    assert_eq!(report.account, alice.pk());
    let reads: Vec<_> = report.reads.iter().map(|r| (r.receiver, r.record_id.as_str(), r.bytes)).collect();
    assert_eq!(
        reads,
        vec![(bob.pk(), "m1", m1.to_bytes().len() as u32), (bob.pk(), "m2", m2.to_bytes().len() as u32)]
    );
    assert!(report.reads.iter().all(|r| (before_reads..after_reads).contains(&r.read_at)));

    // Windows select by read time; other accounts see none of Alice's reads.
    let late = relay.usage(&alice, Some(after_reads), None).await;
    assert_eq!(late.ok(200)["report"]["reads"], Value::Array(vec![]));
    let early = relay.usage(&alice, None, Some(before_reads)).await;
    assert_eq!(early.ok(200)["report"]["reads"], Value::Array(vec![]));
    for who in [&bob, &carol] {
        let resp = relay.usage(who, None, None).await;
        let report = UsageReport::from_document(&document(resp.ok(200)), &relay.relay_key).expect("verifies");
        assert_eq!((report.account, report.reads.len()), (who.pk(), 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_defaults_caps_and_expiry() {
    let relay = Relay::start(&[]).await;
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));
    relay.register(&alice, None).await.ok(201);
    let ttl_ms = |resp: &Resp| {
        let leaf = receipt_of(resp.ok(201), &relay.relay_key).leaf;
        leaf.expires_at - leaf.stored_at
    };
    let zero = relay.put_write(&alice.signed(write_raw(&alice, &bob.pk(), "t0", 0, vec![1]))).await;
    assert_eq!(ttl_ms(&zero), 30 * 86_400_000, "ttl 0 takes the default");
    let long = relay.put_write(&alice.signed(write_raw(&alice, &bob.pk(), "tmax", u32::MAX, vec![1]))).await;
    assert_eq!(ttl_ms(&long), 90 * 86_400_000, "ttl is capped at the maximum");
    let short = relay.put_write(&alice.signed(write_raw(&alice, &bob.pk(), "t1", 1, vec![1]))).await;
    assert_eq!(ttl_ms(&short), 1000);
    // The protocol's largest content is accepted by default.
    let max = pigeonhole_proto::request::MAX_CONTENT_LEN;
    relay.put_write(&alice.signed(write_raw(&alice, &bob.pk(), "huge", 60, vec![9; max]))).await.ok(201);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    relay.read(&bob, &alice.pk(), &bob.pk(), "t1").await.err(404, "not_found");
    assert_eq!(ids(&relay.inventory(&bob, &alice.pk(), &bob.pk()).await), ["t0", "tmax", "huge"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_path_store_one_record() {
    let relay = Arc::new(Relay::start(&UNLIMITED_RATE).await);
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));
    relay.register(&alice, None).await.ok(201);

    // The same signed write 16 times at once: one 201, fifteen duplicates, one seq.
    let same = alice.signed(write_msg(&alice, &bob.pk(), "same", "once"));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (relay, same) = (relay.clone(), same.clone());
            tokio::spawn(async move { relay.put_write(&same).await })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    let mut seqs = BTreeSet::new();
    for task in tasks {
        let resp = task.await.expect("join");
        *statuses.entry(resp.status).or_insert(0) += 1;
        if resp.status < 300 {
            seqs.insert(u(&resp.json["seq"]));
            assert_eq!(resp.json["duplicate"], resp.status == 200, "{}", resp.text);
            receipt_of(&resp.json, &relay.relay_key);
        }
    }
    assert_eq!(statuses, BTreeMap::from([(200, 15), (201, 1)]));
    assert_eq!(seqs.len(), 1);

    // Eight different writes to one record id at once: one wins, seven conflict.
    let rivals: Vec<SignedMessage> =
        (0..8).map(|i| alice.signed(write_msg(&alice, &bob.pk(), "race", &format!("rival {i}")))).collect();
    let tasks: Vec<_> = rivals
        .iter()
        .cloned()
        .map(|signed| {
            let relay = relay.clone();
            tokio::spawn(async move { relay.put_write(&signed).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let resp = task.await.expect("join");
        match resp.status {
            201 => winners.push(i),
            _ => resp.err(409, "conflict"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rival is stored");
    let read = relay.read(&bob, &alice.pk(), &bob.pk(), "race").await;
    let (record, text) = opened_text(read.ok(200), &bob);
    assert_eq!((record, text), (rivals[winners[0]].clone(), format!("rival {}", winners[0])));
}

/// Bug check: the protocol says a repeated write (same record id, same bytes) is idempotent
/// and returns the original receipt (§4.2). A client that lost the answer to an acknowledged
/// write must be able to retry it, whatever the account's quotas; and a refused write (a
/// conflict) must not use up quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_refused_writes_do_not_consume_quota() {
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));
    let mut failures = Vec::new();
    let mut check = |what: &str, resp: Resp, status: u16| {
        if resp.status != status {
            failures.push(format!("{what}: expected {status}, got {} {}", resp.status, resp.text));
        }
    };

    // Records per day: 2.
    let relay = Relay::start(&["--set", "accounts.max_records_per_day=2"]).await;
    relay.register(&alice, None).await.ok(201);
    let m1 = alice.signed(write_msg(&alice, &bob.pk(), "m1", "one"));
    relay.put_write(&m1).await.ok(201);
    check("conflicting write to m1", relay.write(&alice, &bob.pk(), "m1", "other").await, 409);
    check("second distinct record (quota 2/day)", relay.write(&alice, &bob.pk(), "m2", "two").await, 201);
    check("retry of the acknowledged m1 at the daily quota", relay.put_write(&m1).await, 200);
    relay.write(&alice, &bob.pk(), "m3", "three").await.err(403, "quota_exceeded");
    drop(relay);

    // Bytes stored: room for one 600-byte record, not two.
    let relay = Relay::start(&["--set", "accounts.max_bytes=1000"]).await;
    relay.register(&alice, None).await.ok(201);
    let big = alice.signed(write_raw(&alice, &bob.pk(), "big", 60, vec![1; 600]));
    relay.put_write(&big).await.ok(201);
    check("retry of the acknowledged write near the byte quota", relay.put_write(&big).await, 200);
    let second = alice.signed(write_raw(&alice, &bob.pk(), "big2", 60, vec![2; 600]));
    relay.put_write(&second).await.err(403, "quota_exceeded");

    assert!(failures.is_empty(), "quota bugs:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 7. CLI

#[test]
fn cli_print_config_and_refused_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let cwd = dir.path();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data", data];
        args.extend_from_slice(extra);
        run_cli(&args, cwd, Duration::from_secs(20))
    };

    let out = serve(&["--print-config"]);
    assert!(out.status.success(), "{out:?}");
    for needle in ["[limits]", "[accounts]", "[prices]", "pull_limit = 0", "policy = \"open\""] {
        assert!(out.stdout.contains(needle), "--print-config lacks {needle:?}:\n{}", out.stdout);
    }
    assert!(!std::path::Path::new(data).exists(), "--print-config must not create the data directory");

    let out = serve(&["--print-config", "--set", "limits.pull_limit=3", "--policy", "invite"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("pull_limit = 3") && out.stdout.contains("policy = \"invite\""),
        "{}",
        out.stdout
    );

    for (set, needle) in [
        ("nope.x=1", "unknown"),
        ("limits.nope=1", "unknown"),
        ("limits=1", "unknown"),
        ("limits.pull_limit", "KEY=VALUE"),
        ("limits.max_commit_batch=0", "max_commit_batch"),
        ("limits.pull_limit=\"many\"", "pull_limit"),
    ] {
        let out = serve(&["--set", set]);
        assert!(!out.status.success(), "`--set {set}` was accepted: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "`--set {set}`: stderr does not mention {needle:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "`--set {set}` started something: {}", out.stdout);
    }

    let out =
        run_cli(&["serve", "account", "add", "not-a-key", "--data", data], cwd, Duration::from_secs(20));
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("`not-a-key` is not a public key"), "{}", out.stderr);
    assert!(!std::path::Path::new(data).exists(), "a refused key must not create a store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let relay = Relay::start(&[
        "--set",
        "limits.requests_per_sec_per_ip=1",
        "--set",
        "limits.burst_per_ip=5",
        "--set",
        "limits.registrations_per_hour_per_ip=2",
    ])
    .await;
    let (a, b, c) = (Person::new("a"), Person::new("b"), Person::new("c"));
    relay.register(&a, None).await.ok(201);
    relay.register(&b, None).await.ok(201);
    let limited = relay.register(&c, None).await;
    limited.err(429, "rate_limited");
    relay.register(&a, None).await.ok(200);
    // The per-address budget (burst 5, 1/s) runs out: every endpoint is refused, with
    // Retry-After.
    let mut refused = None;
    for _ in 0..20 {
        let resp = relay.get("/health").await;
        if resp.status != 200 {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("20 quick requests stayed under a burst of 5 at 1/s");
    refused.err(429, "rate_limited");
    let retry: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After seconds");
    assert!((1..=5).contains(&retry), "Retry-After: {retry}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(relay.get("/health").await.status, 200, "the budget refills at 1/s");
}

/// Bug check: a `listen` answer carries the records' full content, so it is a read of the
/// outbox. With `pull_limit = 1` the receiver must not be able to fetch a record's content
/// more than once, and every delivery must appear in the owner's usage report (§9.4: "every
/// read of the account's outboxes").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_deliveries_count_as_reads() {
    let relay = Relay::start(&["--set", "limits.pull_limit=1"]).await;
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));
    relay.register(&alice, None).await.ok(201);
    relay.write(&alice, &bob.pk(), "once", "read me once").await.ok(201);

    let mut deliveries = 0;
    for _ in 0..3 {
        let resp = relay.listen(&bob, &alice.pk(), &bob.pk(), Some(0), 0).await;
        let records = resp.ok(200)["records"].as_array().expect("records").clone();
        for record in &records {
            assert_eq!(opened_text(record, &bob).1, "read me once");
            deliveries += 1;
        }
    }
    let report = UsageReport::from_document(
        &document(relay.usage(&alice, None, None).await.ok(200)),
        &relay.relay_key,
    )
    .expect("usage verifies");
    let mut failures = Vec::new();
    if deliveries > 1 {
        failures.push(format!("with pull_limit=1, three listens delivered the content {deliveries} times"));
    }
    if report.reads.len() != deliveries {
        failures.push(format!(
            "{deliveries} deliveries by listen, but Alice's usage report lists {} reads",
            report.reads.len()
        ));
    }
    assert!(failures.is_empty(), "listen bypasses pull limits and usage reports:\n{}", failures.join("\n"));
}

/// A damaged store is refused at start with a message that says so; the relay does not serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_at_start() {
    let mut relay = Relay::start(&[]).await;
    let (alice, bob) = (Person::new("alice"), Person::new("bob"));
    relay.register(&alice, None).await.ok(201);
    for i in 0..20 {
        relay.write(&alice, &bob.pk(), &format!("r{i}"), "keep me").await.ok(201);
    }
    let (status, _) = relay.terminate(Duration::from_secs(10)).await.expect("stops on SIGTERM");
    assert!(status.success());
    // Lose the journal's contents: acknowledged writes would be missing.
    let journal = std::fs::read_dir(relay.data_dir().join("store"))
        .expect("store dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jnl"))
        .expect("a journal file");
    let file = std::fs::OpenOptions::new().write(true).open(&journal).expect("open journal");
    file.set_len(0).expect("truncate");
    drop(file);

    let data = relay.data_dir();
    let out = run_cli(
        &["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().expect("utf-8")],
        relay.root(),
        Duration::from_secs(20),
    );
    assert!(!out.status.success(), "a relay on a damaged store must not start: {out:?}");
    assert!(!out.stdout.contains("listening on"), "{}", out.stdout);
    assert!(out.stderr.contains("corrupted"), "the error says what is wrong: {}", out.stderr);
}
