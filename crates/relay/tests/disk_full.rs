//! A relay whose disk fills up answers writes with 507 `storage_full` and keeps serving reads.
//! Needs root to mount a small tmpfs; as any other user the test says so and passes without
//! running (CI runs as root, so it runs there).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a panic is a failed test")]
#![allow(clippy::print_stderr, reason = "the test explains why it did not run")]

use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::request::{Message, Read, Register, Request, Write};
use pigeonhole_relay::config::RelayConfig;
use serde_json::Value;
use tokio::sync::oneshot;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn signed(from: &SecretKey, to: PublicKey, request: Request) -> String {
    Message { from: from.public_key(), to, timestamp: now(), request }
        .sign(from, &mut rand_core::OsRng)
        .unwrap()
        .to_json()
}

/// Random bytes: the store compresses, and a full disk needs data that does not shrink.
fn incompressible(len: usize) -> Vec<u8> {
    use rand_core::RngCore as _;
    let mut bytes = vec![0u8; len];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_507_and_keeps_reads() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "as root, mounting a tmpfs must work");
    let _mount = Mount(dir.path().to_owned());

    let mut config = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().join("data"),
        ..Default::default()
    };
    config.limits.requests_per_sec_per_ip = 100_000;
    config.limits.burst_per_ip = 100_000;
    let (addr_tx, addr_rx) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(pigeonhole_relay::server::serve(
        config,
        move |addr| {
            let _ = addr_tx.send(addr);
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let url = format!("http://{}", addr_rx.await.unwrap());
    // reqwest's rustls has no built-in provider in this workspace: install `ring` first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let health: Value = client.get(format!("{url}/health")).send().await.unwrap().json().await.unwrap();
    let relay = PublicKey::from_hex(health["relay"].as_str().unwrap()).unwrap();
    let (alice, bob) = (SecretKey::from_bytes(&[1; 32]).unwrap(), SecretKey::from_bytes(&[2; 32]).unwrap());
    let register = signed(&alice, relay, Request::Register(Register { invite: None }));
    assert!(
        client.post(format!("{url}/v1/accounts")).body(register).send().await.unwrap().status().is_success()
    );

    let path = |id: &str| {
        format!("{url}/v1/{}/outbox/{}/{id}", alice.public_key().to_hex(), bob.public_key().to_hex())
    };
    let mut stored = Vec::new();
    let mut full = None;
    for i in 0..2000 {
        let id = format!("r{i}");
        let write = Request::Write(Write {
            record_id: id.clone(),
            ttl: 3600,
            tag: None,
            content: incompressible(60_000),
        });
        let response =
            client.put(path(&id)).body(signed(&alice, bob.public_key(), write)).send().await.unwrap();
        match response.status().as_u16() {
            201 => stored.push(id),
            507 => {
                full = Some(response.json::<Value>().await.unwrap());
                break;
            }
            other => panic!("unexpected status {other}: {}", response.text().await.unwrap()),
        }
    }
    let full = full.expect("a 6 MiB disk fills up before 2000 writes of 60 KB");
    assert_eq!(full["code"], "storage_full", "{full}");
    assert!(!stored.is_empty(), "some writes fit before the disk filled");

    // Every acknowledged record still reads back.
    for id in stored.iter().take(20) {
        let read = Request::Read(Read {
            owner: alice.public_key(),
            receiver: bob.public_key(),
            record_id: id.clone(),
        });
        let response = client.post(path(id)).body(signed(&bob, relay, read)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{id}");
    }
    let _ = stop.send(());
    let _ = server.await;
}
