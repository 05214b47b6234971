//! Sessions end to end, in process: HTTP bearer tokens and the WebSocket transport
//! (challenge, pipelined writes, listen pushes, a listener that falls behind).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::receipt::WriteReceipt;
use pigeonhole_proto::request::{Listen, Message, Register, Request, Session, Write};
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

fn msg(from: &SecretKey, to: PublicKey, request: Request) -> Message {
    Message { from: from.public_key(), to, timestamp: now(), request }
}

fn signed_json(from: &SecretKey, to: PublicKey, request: Request) -> String {
    msg(from, to, request).sign(from, &mut rand_core::OsRng).unwrap().to_json()
}

fn write_request(id: &str, text: &str) -> Request {
    Request::Write(Write { record_id: id.into(), ttl: 3600, tag: None, content: text.as_bytes().to_vec() })
}

async fn register(relay: &TestRelay, who: &SecretKey) {
    let body = signed_json(who, relay.key, Request::Register(Register { invite: None }));
    let status = reqwest::Client::new()
        .post(format!("{}/v1/accounts", relay.url))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
}

/// Unwraps `{"msg": {...}}` to the inner object, for WebSocket frames.
fn inner(json: &str) -> Value {
    serde_json::from_str::<Value>(json).unwrap()["msg"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_session_tokens_bind_a_key() {
    let relay = TestRelay::start().await;
    let (alice, bob) = (person(1), person(2));
    register(&relay, &alice).await;
    let client = reqwest::Client::new();
    let challenge: Value =
        client.get(format!("{}/v1/session", relay.url)).send().await.unwrap().json().await.unwrap();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(challenge["challenge"].as_str().unwrap(), &mut bytes).unwrap();
    let answer = signed_json(&alice, relay.key, Request::Session(Session { challenge: bytes }));
    let opened = client.post(format!("{}/v1/session", relay.url)).body(answer.clone()).send().await.unwrap();
    assert_eq!(opened.status(), 200);
    let token = opened.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    // The same answer again: the challenge is spent (and the request is a replay).
    let again = client.post(format!("{}/v1/session", relay.url)).body(answer).send().await.unwrap();
    assert_eq!(again.status(), 409);

    let path =
        format!("{}/v1/{}/outbox/{}/s1", relay.url, alice.public_key().to_hex(), bob.public_key().to_hex());
    let unsigned = msg(&alice, bob.public_key(), write_request("s1", "in a session")).to_json();
    let ok = client.put(&path).bearer_auth(&token).body(unsigned.clone()).send().await.unwrap();
    assert_eq!(ok.status(), 201);
    // Unsigned without a token: refused.
    let refused = client.put(&path).body(unsigned).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    // A token used for another key's request: refused.
    let path_bob =
        format!("{}/v1/{}/outbox/{}/s2", relay.url, bob.public_key().to_hex(), alice.public_key().to_hex());
    let as_bob = msg(&bob, alice.public_key(), write_request("s2", "not mine")).to_json();
    let forbidden = client.put(&path_bob).bearer_auth(&token).body(as_bob).send().await.unwrap();
    assert_eq!(forbidden.status(), 403);
    assert_eq!(forbidden.json::<Value>().await.unwrap()["code"], "forbidden");
    // A made-up token.
    let unknown = client.put(&path).bearer_auth("00".repeat(32)).body("{}").send().await.unwrap();
    assert_eq!(unknown.status(), 401);
    relay.stop().await;
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap() {
            WsMessage::Text(text) => return serde_json::from_str(&text).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn open_ws(relay: &TestRelay, who: &SecretKey) -> Socket {
    let url = format!("{}/v1/ws", relay.url.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = next_json(&mut socket).await;
    assert_eq!(hello["type"], "challenge");
    let mut challenge = [0u8; 32];
    hex::decode_to_slice(hello["challenge"].as_str().unwrap(), &mut challenge).unwrap();
    let answer = inner(&signed_json(who, relay.key, Request::Session(Session { challenge })));
    socket.send(WsMessage::Text(json!({"id": 0, "msg": answer}).to_string().into())).await.unwrap();
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["body"]["key"], who.public_key().to_hex());
    socket
}

/// The unsigned `listen` of `who` to `owner`'s outbox for `who`, after seq `after`.
fn listen_frame(relay: &TestRelay, who: &SecretKey, owner: PublicKey, after: u64) -> Value {
    let listen = Listen { owner, receiver: who.public_key(), after_ts: None, after_seq: Some(after) };
    inner(&msg(who, relay.key, Request::Listen(listen)).to_json())
}

/// Sends `listen` as request `id` and checks that the relay subscribed it.
async fn subscribe(socket: &mut Socket, listen: Value, id: u64) {
    socket.send(WsMessage::Text(json!({"id": id, "msg": listen}).to_string().into())).await.unwrap();
    let reply = next_json(socket).await;
    assert_eq!(reply["body"]["subscribed"], true, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pipelined_writes_and_listen_pushes() {
    let relay = TestRelay::start().await;
    let (alice, bob) = (person(1), person(2));
    register(&relay, &alice).await;
    let mut writer = open_ws(&relay, &alice).await;
    let mut listener = open_ws(&relay, &bob).await;

    subscribe(&mut listener, listen_frame(&relay, &bob, alice.public_key(), 0), 7).await;

    // 200 writes sent back to back, then all answers collected (out of order is allowed).
    const N: u64 = 200;
    for i in 1..=N {
        let frame = inner(&msg(&alice, bob.public_key(), write_request(&format!("w{i}"), "hi")).to_json());
        writer.send(WsMessage::Text(json!({"id": i, "msg": frame}).to_string().into())).await.unwrap();
    }
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < N as usize {
        let reply = next_json(&mut writer).await;
        assert_eq!(reply["status"], 201, "{reply}");
        let receipt = WriteReceipt::from_json(&reply["body"]["receipt"].to_string()).unwrap();
        receipt.verify(&relay.key).unwrap();
        answered.insert(reply["id"].as_u64().unwrap());
    }
    assert_eq!(answered, (1..=N).collect());

    // The listener receives every record, in sequence order, with no gap.
    let mut seen = Vec::new();
    while seen.len() < N as usize {
        let push = next_json(&mut listener).await;
        assert_eq!(push["sub"], 7, "{push}");
        for record in push["records"].as_array().unwrap() {
            seen.push(record["seq"].as_u64().unwrap());
        }
    }
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "gap in {seen:?}");

    // An unsigned request for another key on Alice's session is refused.
    let foreign = inner(&msg(&bob, alice.public_key(), write_request("x", "x")).to_json());
    writer.send(WsMessage::Text(json!({"id": 999, "msg": foreign}).to_string().into())).await.unwrap();
    let reply = next_json(&mut writer).await;
    assert_eq!((reply["id"].as_u64(), reply["status"].as_u64()), (Some(999), Some(403)));
    relay.stop().await;
}

/// Alice's usage report: the reads of her outboxes, as JSON.
async fn usage_reads(relay: &TestRelay, alice: &SecretKey) -> Vec<Value> {
    let usage = signed_json(
        alice,
        relay.key,
        Request::Usage(pigeonhole_proto::request::Usage { after_ts: None, before_ts: None }),
    );
    let report: Value = reqwest::Client::new()
        .post(format!("{}/v1/usage", relay.url))
        .body(usage)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    report["report"]["reads"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_many_pages_streams_once_and_the_listen_then_follows_new_writes() {
    // More than four full pushes (512 records each) waiting before the listen: the relay reads
    // the next page while it sends the one before, and must still push every record once, in
    // order, count each read once, and then wake for a write made after the backlog.
    let relay = TestRelay::start().await;
    let (alice, bob) = (person(1), person(2));
    register(&relay, &alice).await;
    let mut writer = open_ws(&relay, &alice).await;
    const N: u64 = 2100;
    for batch in (1..=N).collect::<Vec<_>>().chunks(100) {
        for &i in batch {
            let frame =
                inner(&msg(&alice, bob.public_key(), write_request(&format!("b{i}"), "hi")).to_json());
            writer.send(WsMessage::Text(json!({"id": i, "msg": frame}).to_string().into())).await.unwrap();
        }
        for _ in batch {
            let reply = next_json(&mut writer).await;
            assert_eq!(reply["status"], 201, "{reply}");
        }
    }
    let mut listener = open_ws(&relay, &bob).await;
    subscribe(&mut listener, listen_frame(&relay, &bob, alice.public_key(), 0), 3).await;
    let mut seen = Vec::new();
    let mut pushes = 0;
    while seen.len() < N as usize {
        let push = next_json(&mut listener).await;
        assert_eq!(push["sub"], 3, "{push}");
        let records = push["records"].as_array().unwrap();
        assert!(records.len() <= pigeonhole_relay::ws::PUSH_RECORDS, "{} records in a push", records.len());
        assert_eq!(push["cursor"], records.last().unwrap()["seq"], "the cursor is the page's last seq");
        seen.extend(records.iter().map(|r| r["seq"].as_u64().unwrap()));
        pushes += 1;
    }
    assert_eq!(seen, (1..=N).collect::<Vec<_>>(), "every record once, in order");
    assert!(pushes >= 5, "{pushes} pushes");
    // Each delivery was one read, logged once (the counts of listen pages reach the log
    // without waiting for an fsync: give them a moment).
    let mut reads = Vec::new();
    for _ in 0..50 {
        reads = usage_reads(&relay, &alice).await;
        if reads.len() >= N as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reads.len(), N as usize, "one usage entry per delivered record");

    // The backlog is drained: a new write is pushed as it is committed.
    let frame = inner(&msg(&alice, bob.public_key(), write_request("after", "later")).to_json());
    writer.send(WsMessage::Text(json!({"id": N + 1, "msg": frame}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut writer).await["status"], 201);
    let push = next_json(&mut listener).await;
    assert_eq!(push["records"][0]["seq"], N + 1, "{push}");
    assert_eq!(push["records"][0]["recordId"], "after");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refuses_a_bad_session_answer() {
    let relay = TestRelay::start().await;
    let alice = person(1);
    let url = format!("{}/v1/ws", relay.url.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let _hello = next_json(&mut socket).await;
    // Answers a challenge the relay never issued.
    let answer = inner(&signed_json(&alice, relay.key, Request::Session(Session { challenge: [5; 32] })));
    socket.send(WsMessage::Text(json!({"id": 0, "msg": answer}).to_string().into())).await.unwrap();
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["status"], 403, "{reply}");
    match tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap() {
        Some(Ok(WsMessage::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected a close, got {other:?}"),
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_stalls_is_closed_with_a_cursor_and_loses_nothing() {
    // A listener whose pushes find no room for a second is closed (the default is 30 s).
    let relay = TestRelay::start_with(None, |c| c.limits.listener_stall_secs = 1).await;
    let (alice, bob) = (person(1), person(2));
    register(&relay, &alice).await;
    let mut writer = open_ws(&relay, &alice).await;
    let mut listener = open_ws(&relay, &bob).await;
    let listen = |after| listen_frame(&relay, &bob, alice.public_key(), after);
    subscribe(&mut listener, listen(0), 1).await;

    // Bob stops reading while Alice writes ~12 MB: more than the relay's 4 MiB outbound budget
    // plus what the kernel's socket buffers absorb; the relay waits for room, then gives up.
    const N: u64 = 3000;
    let content = "x".repeat(4000);
    let mut answered = 0;
    for i in 1..=N {
        let frame =
            inner(&msg(&alice, bob.public_key(), write_request(&format!("w{i}"), &content)).to_json());
        writer.send(WsMessage::Text(json!({"id": i, "msg": frame}).to_string().into())).await.unwrap();
        if i % 100 == 0 {
            while answered < i {
                assert_eq!(next_json(&mut writer).await["status"], 201);
                answered += 1;
            }
        }
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Now Bob reads: pushes up to some cursor C, then a close 4008 naming C. A client resumes
    // after C on a new connection, where reading as fast as it can is never too slow.
    let mut seen: Vec<u64> = Vec::new();
    let mut closes = 0;
    let mut id = 1;
    loop {
        let cursor = loop {
            match tokio::time::timeout(Duration::from_secs(20), listener.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                WsMessage::Text(text) => {
                    let push: Value = serde_json::from_str(&text).unwrap();
                    if push.get("sub").is_some() {
                        seen.extend(
                            push["records"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()),
                        );
                    }
                    if seen.len() == N as usize {
                        break None;
                    }
                }
                WsMessage::Close(Some(frame)) => {
                    assert_eq!(u16::from(frame.code), pigeonhole_relay::ws::CLOSE_BEHIND);
                    let reason = frame.reason.to_string();
                    break Some(reason.rsplit(' ').next().unwrap().parse::<u64>().unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        let Some(cursor) = cursor else { break };
        closes += 1;
        assert_eq!(seen, (1..=cursor).collect::<Vec<_>>(), "everything up to the cursor arrived, in order");
        id += 1;
        listener = open_ws(&relay, &bob).await;
        listener
            .send(WsMessage::Text(json!({"id": id, "msg": listen(cursor)}).to_string().into()))
            .await
            .unwrap();
    }
    assert_eq!(closes, 1, "the stalled listener is closed once; the reading one is paced, not closed");
    assert_eq!(seen, (1..=N).collect::<Vec<_>>(), "no record skipped or repeated");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_deliveries_are_reads_counted_and_logged() {
    let relay = TestRelay::start_with(None, |c| c.limits.pull_limit = 1).await;
    let (alice, bob) = (person(1), person(2));
    register(&relay, &alice).await;
    let mut writer = open_ws(&relay, &alice).await;
    for i in 1..=3u64 {
        let frame = inner(&msg(&alice, bob.public_key(), write_request(&format!("l{i}"), "hello")).to_json());
        writer.send(WsMessage::Text(json!({"id": i, "msg": frame}).to_string().into())).await.unwrap();
        assert_eq!(next_json(&mut writer).await["status"], 201);
    }
    // Bob's long poll delivers all three: each delivery is a read.
    let listen = signed_json(
        &bob,
        relay.key,
        Request::Listen(Listen {
            owner: alice.public_key(),
            receiver: bob.public_key(),
            after_ts: None,
            after_seq: Some(0),
        }),
    );
    let url =
        format!("{}/v1/{}/outbox/{}", relay.url, alice.public_key().to_hex(), bob.public_key().to_hex());
    let page: Value =
        reqwest::Client::new().post(&url).body(listen).send().await.unwrap().json().await.unwrap();
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{page}");
    assert!(records.iter().all(|r| r["pulls"] == 1 && r["maxPulls"] == 1));
    // With a pull limit of 1 they are gone now, and Alice's usage report lists the three reads.
    let again = signed_json(
        &bob,
        relay.key,
        Request::Listen(Listen {
            owner: alice.public_key(),
            receiver: bob.public_key(),
            after_ts: None,
            after_seq: Some(0),
        }),
    );
    let page: Value =
        reqwest::Client::new().post(&url).body(again).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["records"].as_array().unwrap().len(), 0, "{page}");
    let reads = usage_reads(&relay, &alice).await;
    assert_eq!(reads.len(), 3, "{reads:?}");
    assert!(reads.iter().all(|r| r["receiver"] == bob.public_key().to_hex()));
    relay.stop().await;
}
