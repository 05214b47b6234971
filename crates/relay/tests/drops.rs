//! Drops and postage in process: issuance, upload with a stamp, fetch by prefix, the long poll
//! and the WebSocket subscription, spent/forged/expired stamps, bucket caps and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt as _, StreamExt as _};
use pigeonhole_proto::drops::{open_drop, seal_drop};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::postage::{self, IssueResponse, PostageKeys, Token};
use pigeonhole_proto::receipt::{DropReceipt, RelayDocument};
use pigeonhole_proto::request::{Message, Register, Request};
use pigeonhole_proto::seal::Letter;
use pigeonhole_proto::tag::{Prefix, Tag};
use pigeonhole_relay::config::{IssuePolicy, RelayConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

mod common;
use common::TestRelay;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn person(n: u8) -> SecretKey {
    SecretKey::from_bytes(&[n; 32]).unwrap()
}

fn signed_json(from: &SecretKey, to: PublicKey, request: Request) -> String {
    let message = Message { from: from.public_key(), to, timestamp: now(), request };
    message.sign(from, &mut rand_core::OsRng).unwrap().to_json()
}

async fn post(url: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new().post(url).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register(relay: &TestRelay, who: &SecretKey) {
    let body = signed_json(who, relay.key, Request::Register(Register { invite: None }));
    let (status, _) = post(&format!("{}/v1/accounts", relay.url), body).await;
    assert!(status == 201 || status == 200, "registration: {status}");
}

/// The relay's published postage keys, verified.
async fn postage_keys(relay: &TestRelay) -> PostageKeys {
    let (_, info) = get(&format!("{}/v1/info", relay.url)).await;
    let bytes = BASE64.decode(info["postageDocument"].as_str().unwrap()).unwrap();
    PostageKeys::from_document(&RelayDocument::from_bytes(&bytes).unwrap(), &relay.key).unwrap()
}

/// Obtains `n` (≤ 64) tokens for `epoch` as `account`.
async fn tokens_for(
    relay: &TestRelay,
    account: &SecretKey,
    n: usize,
    epoch: u64,
) -> Result<Vec<Token>, Value> {
    let keys = postage_keys(relay).await;
    // An epoch the relay does not publish is refused before any key is needed.
    let public = keys.keys.iter().find(|(e, _)| *e == epoch).unwrap_or(&keys.keys[0]).1;
    let (request, mut state) = postage::blind(n, epoch, &mut rand_core::OsRng);
    let body = signed_json(account, relay.key, Request::Postage(request));
    let (status, answer) = post(&format!("{}/v1/postage", relay.url), body).await;
    if status != 200 {
        return Err(answer);
    }
    let response = IssueResponse::from_json(&answer.to_string()).unwrap();
    state.truncate(response.evaluated.len());
    Ok(state.finalize(&response, &public).expect("the proof verifies under the published key"))
}

async fn tokens(relay: &TestRelay, account: &SecretKey, n: usize) -> Vec<Token> {
    let epoch = postage_keys(relay).await.keys[0].0;
    tokens_for(relay, account, n, epoch).await.unwrap()
}

fn letter(to: &SecretKey, text: &str) -> Letter {
    Letter {
        sender: None,
        recipient: to.public_key(),
        created_at: now(),
        record_id: "d1".into(),
        payload: Payload::Text(text.into()),
    }
}

/// A sealed drop to `to` under `prefix` and its upload body.
fn drop_body(to: &SecretKey, prefix: &Prefix, text: &str, token: &Token) -> (Tag, Vec<u8>, String) {
    let (tag, envelope) = seal_drop(&letter(to, text), None, prefix, &mut rand_core::OsRng).unwrap();
    let stamp = token.stamp(&tag, &envelope);
    let body = json!({"tag": tag.to_hex(), "drop": BASE64.encode(&envelope), "ttl": 0, "postage": serde_json::from_str::<Value>(&stamp.to_json()).unwrap()});
    (tag, envelope, body.to_string())
}

async fn fetch(relay: &TestRelay, prefix: &Prefix, after: u64) -> Vec<Value> {
    let url = format!("{}/v1/drops?bits={}&value={}&after={after}", relay.url, prefix.bits(), prefix.value());
    let (status, body) = get(&url).await;
    assert_eq!(status, 200, "{body}");
    body["drops"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_reaches_a_recipient_by_drop_and_each_stamp_spends_once() {
    let relay = TestRelay::start().await;
    let account = person(1);
    register(&relay, &account).await;
    let bob = person(2);
    let prefix = Prefix::new(12, 0xabc0_0000).unwrap();
    let mut tokens = tokens(&relay, &account, 3).await;

    let (tag, envelope, body) = drop_body(&bob, &prefix, "hello from nobody", &tokens[0]);
    let (status, answer) = post(&format!("{}/v1/drops", relay.url), body.clone()).await;
    assert_eq!(status, 201, "{answer}");
    let receipt = DropReceipt::from_json(&answer["receipt"].to_string()).unwrap();
    receipt.verify(&relay.key).unwrap();
    assert_eq!(receipt.leaf.tag, tag);
    assert_eq!(receipt.leaf.drop_hash, pigeonhole_proto::receipt::drop_hash(&envelope));

    // Bob finds it in his bucket (and in the wider one), opens it, reads the exact text.
    let found = fetch(&relay, &prefix, 0).await;
    assert_eq!(found.len(), 1);
    let bytes = BASE64.decode(found[0]["drop"].as_str().unwrap()).unwrap();
    let got_tag = Tag::from_hex(found[0]["tag"].as_str().unwrap()).unwrap();
    let opened = open_drop(&bob, &prefix, &got_tag, &bytes).unwrap();
    assert_eq!(opened.letter.payload, Payload::Text("hello from nobody".into()));
    assert_eq!(fetch(&relay, &Prefix::new(4, 0xa000_0000).unwrap(), 0).await.len(), 1);
    assert!(fetch(&relay, &Prefix::new(12, 0xabd0_0000).unwrap(), 0).await.is_empty());
    assert!(fetch(&relay, &prefix, found[0]["seq"].as_u64().unwrap()).await.is_empty(), "cursor");

    // The same stamp again: refused. The token on another drop (a fresh MAC from the same
    // token): refused as spent too. Nothing stored either time.
    let (status, answer) = post(&format!("{}/v1/drops", relay.url), body).await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("postage_spent")), "{answer}");
    let (_, _, other) = drop_body(&bob, &prefix, "again", &tokens[0]);
    let (status, answer) = post(&format!("{}/v1/drops", relay.url), other).await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("postage_spent")), "{answer}");

    // A forged token (right epoch, made-up output) is refused.
    let mut forged = tokens.pop().unwrap();
    forged.output = [7; 64];
    let (_, _, body) = drop_body(&bob, &prefix, "forged", &forged);
    let (status, answer) = post(&format!("{}/v1/drops", relay.url), body).await;
    assert_eq!((status, answer["code"].as_str()), (402, Some("postage_invalid")), "{answer}");
    assert_eq!(fetch(&relay, &Prefix::new(0, 0).unwrap(), 0).await.len(), 1, "nothing else stored");

    // Two concurrent uploads of one stamp on one drop: exactly one is stored.
    let (_, _, body) = drop_body(&bob, &prefix, "race", &tokens[1]);
    let url = format!("{}/v1/drops", relay.url);
    let (a, b) = tokio::join!(post(&url, body.clone()), post(&url, body));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_queries_are_refused_and_store_nothing() {
    let relay = TestRelay::start_with(None, |c: &mut RelayConfig| c.drops.max_drop_bytes = 2000).await;
    let account = person(3);
    register(&relay, &account).await;
    let bob = person(4);
    let prefix = Prefix::new(8, 0x5500_0000).unwrap();
    let tokens = tokens(&relay, &account, 2).await;
    let (tag, envelope, good) = drop_body(&bob, &prefix, "ok", &tokens[0]);
    let good: Value = serde_json::from_str(&good).unwrap();
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body.to_string()
    };
    let (_, _, big) = drop_body(&bob, &prefix, &"x".repeat(3000), &tokens[1]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not json", "{".into(), 400, "bad_request"),
        ("unknown field", with("extra", json!(1)), 400, "bad_request"),
        ("short tag", with("tag", json!("abcd")), 400, "bad_request"),
        ("tag not hex", with("tag", json!("zz".repeat(20))), 400, "bad_request"),
        ("bad base64", with("drop", json!("***")), 400, "bad_request"),
        ("not an envelope", with("drop", json!(BASE64.encode([9u8; 80]))), 400, "bad_request"),
        ("oversize", big, 413, "too_large"),
        (
            "no postage",
            {
                let mut b = good.clone();
                b.as_object_mut().unwrap().remove("postage");
                b.to_string()
            },
            400,
            "bad_request",
        ),
        ("stamp for another tag", with("tag", json!(Tag([1; 20]).to_hex())), 402, "postage_invalid"),
        (
            "stamp of an old epoch",
            {
                let mut b = good.clone();
                b["postage"]["epoch"] = json!(1);
                b.to_string()
            },
            402,
            "postage_expired",
        ),
        (
            "stamp of a future epoch",
            {
                let mut b = good.clone();
                b["postage"]["epoch"] = json!(u64::MAX / 2);
                b.to_string()
            },
            402,
            "postage_expired",
        ),
        (
            "stamp mac not hex",
            {
                let mut b = good.clone();
                b["postage"]["mac"] = json!("nope");
                b.to_string()
            },
            400,
            "bad_request",
        ),
    ];
    for (name, body, status, code) in cases {
        let (got, answer) = post(&format!("{}/v1/drops", relay.url), body).await;
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{name}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{name}");
    }
    assert!(fetch(&relay, &Prefix::new(0, 0).unwrap(), 0).await.is_empty(), "nothing stored");

    for query in [
        "bits=33",
        "bits=8&value=1",
        "bits=x",
        "value=0",
        "bits=8&after=-1",
        "bits=8&wait=61",
        "bits=8&foo=1",
    ] {
        let (status, answer) = get(&format!("{}/v1/drops?{query}", relay.url)).await;
        assert_eq!((status, answer["code"].as_str()), (400, Some("bad_request")), "{query}: {answer}");
    }
    // The good drop still goes through: nothing above spent its stamp.
    let (status, _) = post(&format!("{}/v1/drops", relay.url), good.to_string()).await;
    assert_eq!(status, 201);
    let _ = (tag, envelope);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_subscriptions_wake_only_for_matching_drops() {
    let relay = TestRelay::start().await;
    let account = person(5);
    register(&relay, &account).await;
    let bob = person(6);
    let mine = Prefix::new(16, 0x1234_0000).unwrap();
    let other = Prefix::new(16, 0x4321_0000).unwrap();
    let tokens = tokens(&relay, &account, 3).await;

    // A WebSocket subscriber on Bob's prefix.
    let ws_url = format!("{}/v1/drops/ws", relay.url.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    socket
        .send(WsMessage::Text(json!({"bits": 16, "value": 0x1234_0000u32, "after": 0}).to_string().into()))
        .await
        .unwrap();
    let first: Value = match socket.next().await.unwrap().unwrap() {
        WsMessage::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(first["subscribed"], true);

    // A long poll on Bob's prefix does not return for a drop to another prefix...
    let poll_url = format!("{}/v1/drops?bits=16&value={}&after=0&wait=10", relay.url, 0x1234_0000u32);
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let (status, body) = get(&poll_url).await;
        (status, body, Instant::now(), started)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, _, body) = drop_body(&bob, &other, "not for you", &tokens[0]);
    assert_eq!(post(&format!("{}/v1/drops", relay.url), body).await.0, 201);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "a non-matching drop woke the long poll");

    // ...and returns within milliseconds of a matching one.
    let (_, _, body) = drop_body(&bob, &mine, "for you", &tokens[1]);
    let sent = Instant::now();
    assert_eq!(post(&format!("{}/v1/drops", relay.url), body).await.0, 201);
    let (status, answer, returned, _) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(answer["drops"].as_array().unwrap().len(), 1);
    let latency = returned.saturating_duration_since(sent);
    assert!(latency < Duration::from_secs(2), "woke after {latency:?}");

    // The subscriber got exactly the matching drop.
    let push: Value =
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap() {
            WsMessage::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("{other:?}"),
        };
    let drops = push["drops"].as_array().unwrap();
    assert_eq!(drops.len(), 1);
    let tag = Tag::from_hex(drops[0]["tag"].as_str().unwrap()).unwrap();
    assert!(mine.matches(&tag));

    // A long poll with nothing to wake it returns empty after its wait.
    let started = Instant::now();
    let cursor = answer["cursor"].as_u64().unwrap();
    let (status, empty) =
        get(&format!("{}/v1/drops?bits=16&value={}&after={cursor}&wait=1", relay.url, 0x1234_0000u32)).await;
    assert_eq!(status, 200);
    assert!(empty["drops"].as_array().unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_useless_after_their_epoch() {
    let relay = TestRelay::start_with(None, |c: &mut RelayConfig| {
        c.postage.epoch_secs = 2;
        c.postage.grace_secs = 0;
    })
    .await;
    let account = person(7);
    register(&relay, &account).await;
    let bob = person(8);
    let prefix = Prefix::new(8, 0x7700_0000).unwrap();
    // Start right after an epoch boundary, so the token is fresh.
    let keys = postage_keys(&relay).await;
    assert_eq!(keys.epoch_secs, 2);
    let epoch = keys.keys[0].0;
    let tokens = tokens_for(&relay, &account, 2, epoch).await.unwrap();
    let (_, _, ok) = drop_body(&bob, &prefix, "in time", &tokens[0]);
    let (_, _, late) = drop_body(&bob, &prefix, "too late", &tokens[1]);
    let (status, answer) = post(&format!("{}/v1/drops", relay.url), ok).await;
    assert!(status == 201 || answer["code"] == "postage_expired", "{answer}");
    // Wait until the token's epoch is over.
    let end_ms = (epoch + 1) * 2000;
    tokio::time::sleep(Duration::from_millis(end_ms.saturating_sub(now()) + 50)).await;
    let (status, answer) = post(&format!("{}/v1/drops", relay.url), late).await;
    assert_eq!((status, answer["code"].as_str()), (402, Some("postage_expired")), "{answer}");
    // Tokens are issued only for the current and next epochs.
    let old = tokens_for(&relay, &account, 1, epoch.saturating_sub(5)).await;
    assert!(old.is_err());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_follows_policy_and_quota() {
    let relay = TestRelay::start_with(None, |c: &mut RelayConfig| {
        c.postage.per_account_per_day = 5;
        c.postage.per_ip_per_day = 3;
        c.postage.issue = IssuePolicy::Open;
    })
    .await;
    let account = person(9);
    let stranger = person(10);
    let epoch = postage_keys(&relay).await.keys[0].0;

    // No account: a signed request is refused; the anonymous form works under the IP quota.
    let refused = tokens_for(&relay, &stranger, 1, epoch).await.unwrap_err();
    assert_eq!(refused["code"], "no_account");
    let (request, _) = postage::blind(2, epoch, &mut rand_core::OsRng);
    let (status, answer) = post(&format!("{}/v1/postage", relay.url), request.to_json()).await;
    assert_eq!(status, 200, "{answer}");
    let (request, _) = postage::blind(2, epoch, &mut rand_core::OsRng);
    let (status, answer) = post(&format!("{}/v1/postage", relay.url), request.to_json()).await;
    assert_eq!((status, answer["code"].as_str()), (403, Some("quota_exceeded")), "{answer}");

    // An account gets what is left of its daily quota, then nothing.
    register(&relay, &account).await;
    assert_eq!(tokens_for(&relay, &account, 4, epoch).await.unwrap().len(), 4);
    let rest = tokens_for(&relay, &account, 4, epoch).await.unwrap();
    assert_eq!(rest.len(), 1, "the rest of the quota");
    let none = tokens_for(&relay, &account, 1, epoch).await.unwrap_err();
    assert_eq!(none["code"], "quota_exceeded");

    // The quota is per day, whatever the epoch.
    let next = tokens_for(&relay, &account, 1, epoch + 1).await.unwrap_err();
    assert_eq!(next["code"], "quota_exceeded");
    relay.stop().await;

    // Under the `accounts` policy the anonymous form is refused.
    let relay =
        TestRelay::start_with(None, |c: &mut RelayConfig| c.postage.issue = IssuePolicy::Accounts).await;
    let (request, _) = postage::blind(1, epoch, &mut rand_core::OsRng);
    let (status, answer) = post(&format!("{}/v1/postage", relay.url), request.to_json()).await;
    assert_eq!((status, answer["code"].as_str()), (403, Some("no_account")), "{answer}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bucket_does_not_spend_the_stamp() {
    let relay = TestRelay::start_with(None, |c: &mut RelayConfig| c.drops.bucket_cap = 1).await;
    let account = person(12);
    register(&relay, &account).await;
    let bob = person(13);
    let prefix = Prefix::new(16, 0x0202_0000).unwrap();
    let tokens = tokens(&relay, &account, 2).await;
    let (_, _, first) = drop_body(&bob, &prefix, "one", &tokens[0]);
    assert_eq!(post(&format!("{}/v1/drops", relay.url), first).await.0, 201);
    let (_, _, second) = drop_body(&bob, &prefix, "two", &tokens[1]);
    for _ in 0..2 {
        // Refused as full both times: a spent stamp would answer 409 the second time.
        let (status, answer) = post(&format!("{}/v1/drops", relay.url), second.clone()).await;
        assert_eq!((status, answer["code"].as_str()), (507, Some("bucket_full")), "{answer}");
    }
    relay.stop().await;
}
