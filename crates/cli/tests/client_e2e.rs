//! End-to-end tests of the client commands: real `pigeonhole` processes for Alice and Bob
//! (each with its own `--home`) and real relay processes on loopback.
//!
//! Key files use a cheap scrypt cost (`PIGEONHOLE_KEYFILE_LOG_N`) so that the many short
//! commands stay fast; everything else is as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn texts(inbox: &Value) -> Vec<String> {
    inbox
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_bob_with_two_relays_each() {
    let (mut a1, a2, b1, b2, a3) = tokio::join!(
        Relay::start(&[]),
        Relay::start(&[]),
        Relay::start(&[]),
        Relay::start(&[]),
        Relay::start(&[])
    );
    let alice = User::new("alice's passphrase");
    let bob = User::new("bob's passphrase");

    // Identities, relays (each `relay add` registers an account), cards exchanged.
    alice.run(&["id", "new", "--label", "Alice"]);
    bob.run(&["id", "new", "--label", "Bob"]);
    for url in [&a1.url, &a2.url] {
        alice.run(&["relay", "add", url]);
    }
    for url in [&b1.url, &b2.url] {
        bob.run(&["relay", "add", url]);
    }
    let relays = alice.json(&["relay", "list"]);
    assert_eq!(relays.as_array().unwrap().len(), 2);
    assert!(relays.as_array().unwrap().iter().all(|r| r["up"] == true), "{relays}");
    assert_eq!(relays[0]["key"], a1.relay_key.to_hex(), "the info document is verified under the relay key");

    let card_file = alice.dir.path().join("alice.pigeon");
    alice.run(&["id", "export", card_file.to_str().unwrap()]);
    std::fs::copy(&card_file, bob.dir.path().join("alice.pigeon")).unwrap();
    let bob_card = bob.json(&["id", "show"]);
    assert_eq!(bob_card["relays"].as_array().unwrap().len(), 2);
    alice.run(&["contact", "add", bob_card["card"].as_str().unwrap(), "--name", "bob"]);
    bob.run(&["contact", "add", "alice.pigeon"]);
    let contacts = bob.json(&["contact", "list"]);
    assert_eq!(contacts[0]["name"], "Alice", "the name defaults to the card's label");

    // Bob is offline while Alice sends: the letter is stored on both of her relays, with
    // verified receipts.
    let first = "Hello Bob! Ünïcödé, \"quotes\" and a second line\nsurvive exactly.";
    let sent = alice.json(&["send", "bob", first]);
    assert_eq!(sent["stored"], 2, "{sent}");
    for relay in sent["relays"].as_array().unwrap() {
        assert_eq!(relay["ok"], true);
        assert!(relay["receipt"]["sig"].is_string());
    }

    // One of Alice's relays dies; a send still succeeds through the other and says which failed.
    a1.kill9();
    let out = alice.try_run(&["send", "bob", "second, through one relay"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("stored on 1 of 2 relays, 1 failed"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("FAILED on {}", a1.url)), "{}", out.stdout);

    // Bob comes online: both messages arrive through the surviving relay, once each.
    let synced = bob.json(&["sync"]);
    assert_eq!(synced["newMessages"].as_array().unwrap().len(), 2, "{synced}");
    let failed: Vec<&Value> =
        synced["sources"].as_array().unwrap().iter().filter(|s| !s["error"].is_null()).collect();
    assert_eq!(failed.len(), 1, "only the killed relay fails: {synced}");
    assert_eq!(failed[0]["url"], a1.url.as_str());
    assert_eq!(synced["acksSent"], 2);
    let inbox = bob.json(&["inbox"]);
    assert_eq!(texts(&inbox), vec![first.to_owned(), "second, through one relay".to_owned()]);
    let id = inbox[0]["id"].as_i64().unwrap().to_string();
    let read = bob.run(&["read", &id]);
    assert!(read.contains(first), "{read}");
    assert!(read.contains("from: Alice"), "{read}");
    assert!(
        read.lines().any(|l| l.starts_with("written: 20") && l.len() > "written: 2026-01-01 00:00:00".len()),
        "{read}"
    );
    // A second sync finds nothing new (cursors, de-duplication).
    let again = bob.json(&["sync"]);
    assert!(again["newMessages"].as_array().unwrap().is_empty(), "{again}");

    // Bob's acks reach Alice, and her surviving relay's usage report matches them.
    let synced = alice.json(&["sync"]);
    assert_eq!(synced["acksReceived"], 2, "{synced}");
    let usage = alice.json(&["usage"]);
    let audits = usage.as_array().unwrap();
    let dead = audits.iter().find(|a| a["url"] == a1.url.as_str()).unwrap();
    assert_eq!(dead["ok"], false);
    let honest = audits.iter().find(|a| a["url"] == a2.url.as_str()).unwrap();
    assert_eq!(honest["consistent"], true, "{usage}");
    assert_eq!(honest["summary"]["claimedReads"], 2, "{usage}");
    assert_eq!(honest["summary"]["ackedReads"], 2, "{usage}");

    // Alice moves: a new relay, and both old ones dropped. Bob follows without doing anything
    // but sync, and a message stored only on the new relay reaches him.
    alice.run(&["relay", "add", &a3.url]);
    alice.run(&["relay", "remove", &a1.url]);
    alice.run(&["relay", "remove", &a2.url]);
    let card = alice.json(&["id", "show"]);
    assert_eq!(card["relays"], serde_json::json!([a3.url]));
    let third = alice.json(&["send", "bob", "third, only on the new relay"]);
    assert_eq!(third["stored"], 1);
    let synced = bob.json(&["sync"]);
    assert_eq!(synced["cardUpdates"], serde_json::json!(["Alice"]), "{synced}");
    assert_eq!(texts(&synced["newMessages"]), vec!["third, only on the new relay".to_owned()], "{synced}");
    let contacts = bob.json(&["contact", "list"]);
    assert_eq!(contacts[0]["card"]["relays"], serde_json::json!([a3.url]));

    // Listening: a message sent while Bob listens is printed as it arrives.
    let (mut listener, out) = bob.spawn_listen();
    let connected = wait_for(&out, "\"connected\"", Duration::from_secs(15));
    assert!(connected.contains("connected"), "{connected}");
    alice.run(&["send", "bob", "live, over the WebSocket"]);
    let printed = wait_for(&out, "live, over the WebSocket", Duration::from_secs(15));
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(printed.contains("live, over the WebSocket"), "{printed}");
    let inbox = bob.json(&["inbox"]);
    assert_eq!(inbox.as_array().unwrap().len(), 4);
    drop((b1, b2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_reconnects_and_resumes_without_gaps() {
    let mut relay = Relay::start(&[]).await;
    relay.keep_port();
    let alice = User::new("alice");
    let bob = User::new("bob");
    alice.run(&["id", "new", "--label", "Alice"]);
    bob.run(&["id", "new", "--label", "Bob"]);
    alice.run(&["relay", "add", &relay.url]);
    bob.run(&["relay", "add", &relay.url]);
    let alice_card = alice.json(&["id", "show"])["card"].as_str().unwrap().to_owned();
    let bob_card = bob.json(&["id", "show"])["card"].as_str().unwrap().to_owned();
    alice.run(&["contact", "add", &bob_card, "--name", "bob"]);
    bob.run(&["contact", "add", &alice_card, "--name", "alice"]);

    let (mut listener, out) = bob.spawn_listen();
    assert!(wait_for(&out, "\"connected\"", Duration::from_secs(15)).contains("connected"));
    alice.run(&["send", "bob", "before the outage"]);
    assert!(wait_for(&out, "before the outage", Duration::from_secs(15)).contains("before the outage"));

    // The relay dies; while it is down Bob's listen keeps retrying. It comes back on the same
    // address, and a message written before Bob's listen reconnects still reaches it.
    relay.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.restart().await;
    alice.run(&["send", "bob", "during the reconnect"]);
    let printed = wait_for(&out, "during the reconnect", Duration::from_secs(40));
    alice.run(&["send", "bob", "after the reconnect"]);
    let printed_after = wait_for(&out, "after the reconnect", Duration::from_secs(15));
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(printed.contains("during the reconnect"), "{printed}");
    assert!(printed_after.contains("after the reconnect"), "{printed_after}");
    assert_eq!(
        printed_after.matches("before the outage").count(),
        1,
        "nothing printed twice: {printed_after}"
    );
    assert_eq!(texts(&bob.json(&["inbox"])).len(), 3);
}

#[test]
fn errors_say_what_to_do() {
    let alice = User::new("right");
    let stderr = alice.fail(&["inbox"]);
    assert!(stderr.contains("no identity in") && stderr.contains("id new"), "{stderr}");
    alice.run(&["id", "new", "--label", "Alice"]);
    let stderr = alice.fail(&["id", "new", "--label", "Again"]);
    assert!(stderr.contains("already holds an identity"), "{stderr}");

    // Wrong passphrase.
    let wrong = User { dir: tempfile::tempdir().unwrap(), passphrase: "wrong" };
    let home = alice.home();
    let out = run_cli_env(
        &["--home", home.to_str().unwrap(), "relay", "add", "http://127.0.0.1:1"],
        wrong.dir.path(),
        COMMAND_TIMEOUT,
        &wrong.env(),
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("wrong passphrase"), "{}", out.stderr);

    // Unreachable relay.
    let stderr = alice.fail(&["relay", "add", "http://127.0.0.1:1"]);
    assert!(stderr.contains("cannot reach relay http://127.0.0.1:1"), "{stderr}");
    let stderr = alice.fail(&["relay", "add", "ftp://example.org"]);
    assert!(stderr.contains("http:// or https://"), "{stderr}");

    // Bad cards: garbage, and a real card whose label was edited (bad signature).
    let stderr = alice.fail(&["contact", "add", "pigeoncard1qqqqqqqq"]);
    assert!(stderr.contains("invalid card"), "{stderr}");
    let bob = User::new("bob");
    bob.run(&["id", "new", "--label", "Bob"]);
    let card = bob.run(&["id", "export"]);
    let forged = card.replace("\"Bob\"", "\"Mallory\"");
    assert_ne!(card, forged);
    std::fs::write(alice.dir.path().join("forged.pigeon"), &forged).unwrap();
    let stderr = alice.fail(&["contact", "add", "forged.pigeon"]);
    assert!(stderr.contains("signature does not verify"), "{stderr}");
    let stderr = alice.fail(&["contact", "add", "missing.pigeon"]);
    assert!(stderr.contains("neither a card file"), "{stderr}");

    // Unknown contact; then a known one but no relays to send through.
    let stderr = alice.fail(&["send", "nobody", "hello"]);
    assert!(stderr.contains("no contact named `nobody`"), "{stderr}");
    std::fs::write(alice.dir.path().join("bob.pigeon"), &card).unwrap();
    alice.run(&["contact", "add", "bob.pigeon"]);
    let stderr = alice.fail(&["send", "Bob", "hello"]);
    assert!(stderr.contains("no relays yet"), "{stderr}");
    let stderr = alice.fail(&["read", "42"]);
    assert!(stderr.contains("no message with id 42"), "{stderr}");
}
