//! Drops end to end: real relay processes, real `pigeonhole` client processes.
//!
//! - A sender who is not a contact reaches the recipient by drop; the recipient reads the
//!   exact text in its requests list; the relay's data directory and its logs (at debug
//!   level) contain neither the plaintext nor the sender's public key. Once they are contacts,
//!   drops use the contact path and land in the inbox.
//! - Against the relay process directly: a token spent twice is refused, a token is useless
//!   after its epoch, and a long poll returns within milliseconds of a matching drop and not
//!   for a non-matching one.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use pigeonhole_proto::drops::seal_drop;
use pigeonhole_proto::keys::SecretKey;
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::postage::{self, IssueResponse, PostageKeys, Token};
use pigeonhole_proto::receipt::RelayDocument;
use pigeonhole_proto::request::{Message, Request};
use pigeonhole_proto::seal::Letter;
use pigeonhole_proto::tag::Prefix;
use rand_core::OsRng;
use serde_json::{Value, json};

fn texts(list: &Value) -> Vec<String> {
    list.as_array().expect("list").iter().map(|m| m["text"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_reaches_bob_by_drop_and_the_relay_learns_nothing_of_who() {
    let (bob_relay, alice_relay) = tokio::join!(Relay::start(&["--log", "debug"]), Relay::start(&[]));
    let alice = User::new("alice's passphrase");
    let bob = User::new("bob's passphrase");
    alice.run(&["id", "new", "--label", "Alice"]);
    bob.run(&["id", "new", "--label", "Bob"]);
    alice.run(&["relay", "add", &alice_relay.url]);
    bob.run(&["relay", "add", &bob_relay.url]);
    let bob_card = bob.json(&["id", "show"])["card"].as_str().expect("card string").to_owned();
    let alice_key = alice.json(&["id", "show"])["pubkey"].as_str().expect("key").to_owned();

    // Alice does not know Bob as a contact: she drops to his card.
    let secret_text = "first contact: the owl flies at midnight 7f3a9c";
    let sent = alice.json(&["send", "--drop", &bob_card, secret_text]);
    assert_eq!(sent["stored"], 1, "{sent}");
    assert_eq!(sent["signed"], true);
    assert_eq!(sent["contactPath"], false);

    // Bob syncs: the drop is a request (Alice is not his contact), with her key and the text.
    let synced = bob.json(&["sync"]);
    assert_eq!(synced["drops"]["newMessages"].as_array().unwrap().len(), 1, "{synced}");
    let requests = bob.json(&["inbox", "--requests"]);
    assert_eq!(texts(&requests), [secret_text]);
    assert_eq!(requests[0]["peer"].as_str(), Some(alice_key.as_str()));
    assert_eq!(requests[0]["sentVia"], "drop");
    assert!(texts(&bob.json(&["inbox"])).is_empty(), "not in the inbox");
    // A second sync finds nothing new.
    assert!(bob.json(&["sync"])["drops"]["newMessages"].as_array().unwrap().is_empty());

    // An anonymous drop: no sender at all.
    alice.run(&["send", "--drop", "--anonymous", &bob_card, "guess who"]);
    bob.run(&["sync"]);
    let requests = bob.json(&["inbox", "--requests"]);
    let anonymous = requests.as_array().unwrap().iter().find(|m| m["text"] == "guess who").expect("arrived");
    assert!(anonymous["peer"].is_null(), "{anonymous}");

    // Nothing the relay stored or logged names Alice or shows the text.
    let stored = all_bytes(&bob_relay.data_dir());
    let logs = bob_relay.logs();
    assert!(logs.contains("request"), "debug logs were written: {logs}");
    let alice_bytes = hex::decode(&alice_key).unwrap();
    for (what, needle) in [
        ("plaintext", secret_text.as_bytes().to_vec()),
        ("sender key (hex)", alice_key.as_bytes().to_vec()),
        ("sender key (bytes)", alice_bytes.clone()),
    ] {
        assert!(!contains(&stored, &needle), "the relay's data contains the {what}");
        assert!(!contains(logs.as_bytes(), &needle), "the relay's logs contain the {what}");
    }

    // Once they are contacts, drops go by the contact path and land in the inbox.
    let alice_card = alice.json(&["id", "show"])["card"].as_str().unwrap().to_owned();
    bob.run(&["contact", "add", &alice_card, "--name", "alice"]);
    alice.run(&["contact", "add", &bob_card, "--name", "bob"]);
    let sent = alice.json(&["send", "--drop", "bob", "now we know each other"]);
    assert_eq!(sent["contactPath"], true, "{sent}");
    bob.run(&["sync"]);
    assert_eq!(texts(&bob.json(&["inbox"])), ["now we know each other"]);
    // Still not in the relay's data: the contact path hides the sender as well.
    assert!(!contains(&all_bytes(&bob_relay.data_dir()), &alice_bytes));
}

/// The relay's published postage keys, verified.
async fn keys(relay: &Relay) -> PostageKeys {
    let info =
        send(&relay.http, reqwest::Method::GET, &format!("{}/v1/info", relay.url), None).await.unwrap();
    let bytes = base64_decode(info.ok(200)["postageDocument"].as_str().unwrap());
    PostageKeys::from_document(&RelayDocument::from_bytes(&bytes).unwrap(), &relay.relay_key).unwrap()
}

/// `n` tokens of the current epoch for a registered account.
async fn tokens(relay: &Relay, account: &Person, n: usize) -> Vec<Token> {
    let keys = keys(relay).await;
    let (epoch, public) = keys.keys[0];
    let (request, state) = postage::blind(n, epoch, &mut OsRng);
    let message = Message {
        from: account.pk(),
        to: relay.relay_key,
        timestamp: fresh_ts(),
        request: Request::Postage(request),
    };
    let answer = send(
        &relay.http,
        reqwest::Method::POST,
        &format!("{}/v1/postage", relay.url),
        Some(account.sign(message)),
    )
    .await
    .unwrap();
    let response = IssueResponse::from_json(&answer.ok(200).to_string()).unwrap();
    state.finalize(&response, &public).unwrap()
}

fn drop_body(prefix: &Prefix, token: &Token) -> String {
    let to = SecretKey::generate(&mut OsRng).public_key();
    let letter = Letter {
        sender: None,
        recipient: to,
        created_at: now_ms(),
        record_id: "d".into(),
        payload: Payload::Text("x".into()),
    };
    let (tag, envelope) = seal_drop(&letter, None, prefix, &mut OsRng).unwrap();
    let stamp: Value = serde_json::from_str(&token.stamp(&tag, &envelope).to_json()).unwrap();
    use base64::Engine as _;
    json!({"tag": tag.to_hex(), "drop": base64::engine::general_purpose::STANDARD.encode(&envelope), "postage": stamp})
        .to_string()
}

async fn post_drop(relay: &Relay, body: String) -> Resp {
    send(&relay.http, reqwest::Method::POST, &format!("{}/v1/drops", relay.url), Some(body)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_spend_once_and_expire_with_their_epoch_and_long_polls_wake_on_match() {
    let relay = Relay::start(&["--set", "postage.epoch_secs=3", "--set", "postage.grace_secs=0"]).await;
    let account = Person::new("account");
    let register = register_msg(&account, &relay.relay_key, None);
    send(
        &relay.http,
        reqwest::Method::POST,
        &format!("{}/v1/accounts", relay.url),
        Some(account.sign(register)),
    )
    .await
    .unwrap()
    .ok(201);
    // Start just after an epoch boundary, so the epoch outlives the first steps.
    let epoch_ms = 3000;
    tokio::time::sleep(Duration::from_millis(epoch_ms - now_ms() % epoch_ms + 50)).await;
    let tokens = tokens(&relay, &account, 4).await;
    let mine = Prefix::new(20, 0xabcd_e000).unwrap();
    let other = Prefix::new(20, 0x1234_5000).unwrap();

    // Spent twice: the second is refused and nothing more is stored.
    let body = drop_body(&mine, &tokens[0]);
    post_drop(&relay, body.clone()).await.ok(201);
    post_drop(&relay, body).await.err(409, "postage_spent");

    // A long poll on `mine` ignores a drop to `other` and wakes within milliseconds of one to
    // `mine`.
    let url = format!("{}/v1/drops?bits=20&value={}&after=1&wait=10", relay.url, 0xabcd_e000u32);
    let http = relay.http.clone();
    let poll = tokio::spawn(async move {
        let answer = send(&http, reqwest::Method::GET, &url, None).await.unwrap();
        (answer, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    post_drop(&relay, drop_body(&other, &tokens[1])).await.ok(201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "a drop to another prefix woke the long poll");
    let sent = Instant::now();
    post_drop(&relay, drop_body(&mine, &tokens[2])).await.ok(201);
    let (answer, returned) = poll.await.unwrap();
    let found = answer.ok(200)["drops"].as_array().unwrap().clone();
    assert_eq!(found.len(), 1, "{found:?}");
    let latency = returned.saturating_duration_since(sent);
    assert!(latency < Duration::from_millis(500), "the long poll answered {latency:?} after the drop");

    // After the token's epoch is over, the last token is useless.
    let end = (now_ms() / epoch_ms + 1) * epoch_ms;
    tokio::time::sleep(Duration::from_millis(end - now_ms() + 100)).await;
    post_drop(&relay, drop_body(&mine, &tokens[3])).await.err(402, "postage_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_a_drop_as_it_arrives() {
    let relay = Relay::start(&[]).await;
    let bob = User::new("bob");
    let carol = User::new("carol");
    bob.run(&["id", "new", "--label", "Bob"]);
    bob.run(&["relay", "add", &relay.url]);
    carol.run(&["id", "new", "--label", "Carol"]);
    let bob_card = bob.json(&["id", "show"])["card"].as_str().unwrap().to_owned();

    // A drop already waiting is caught up at start; one posted while listening is pushed.
    carol.run(&["send", "--drop", &bob_card, "waiting when you started"]);
    let (mut listener, out) = bob.spawn_listen();
    let first = wait_for(&out, "waiting when you started", Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(500)).await;
    carol.run(&["send", "--drop", &bob_card, "arrived while you listened"]);
    let second = wait_for(&out, "arrived while you listened", Duration::from_secs(15));
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(first.contains("waiting when you started"), "{first}");
    assert!(second.contains("arrived while you listened"), "{second}");
    assert_eq!(second.matches("waiting when you started").count(), 1, "printed once: {second}");
    assert_eq!(texts(&bob.json(&["inbox", "--requests"])).len(), 2);
}
