//! Shared harness for the end-to-end tests: a relay child process (`pigeonhole serve`), an
//! HTTP client that keeps status and JSON body together, people with keys, and builders for
//! every signed request the relay takes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "test harness: a panic is a failed test, and not every test binary uses every helper"
)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::request::{
    Delete, Inventory, Listen, Message, Read, Register, Request, SignedMessage, Usage, Write,
};
use pigeonhole_proto::seal::{Letter, seal};
use rand_core::OsRng;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a relay may take to print its address.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay binary under test.
pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pigeonhole")
}

// ---------------------------------------------------------------------------------------
// Clock

/// Unix milliseconds from the system clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// A fresh request timestamp: the system clock, but strictly increasing within this process,
/// so that two requests built in the same millisecond never share signed bytes (which the
/// relay would rightly call a replay).
pub(crate) fn fresh_ts() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut prev = LAST.load(Ordering::SeqCst);
    loop {
        let next = now_ms().max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(actual) => prev = actual,
        }
    }
}

// ---------------------------------------------------------------------------------------
// People and requests

/// Someone with a key.
pub(crate) struct Person {
    pub(crate) name: &'static str,
    pub(crate) key: SecretKey,
}

impl Person {
    pub(crate) fn new(name: &'static str) -> Self {
        Self { name, key: SecretKey::generate(&mut OsRng) }
    }

    pub(crate) fn pk(&self) -> PublicKey {
        self.key.public_key()
    }

    pub(crate) fn hex(&self) -> String {
        self.pk().to_hex()
    }

    /// Signs `message` (whose `from` must be this person) and returns its JSON form.
    pub(crate) fn sign(&self, message: Message) -> String {
        self.signed(message).to_json()
    }

    pub(crate) fn signed(&self, message: Message) -> SignedMessage {
        message.sign(&self.key, &mut OsRng).expect("signs")
    }
}

/// A random public key nobody in the test holds.
pub(crate) fn random_key() -> PublicKey {
    SecretKey::generate(&mut OsRng).public_key()
}

/// A text letter from `from` to `to`, sealed so only `to` can open it.
pub(crate) fn sealed_text(from: &Person, to: &PublicKey, record_id: &str, text: &str) -> Vec<u8> {
    let letter = Letter {
        sender: Some(from.pk()),
        recipient: *to,
        created_at: now_ms(),
        record_id: record_id.to_owned(),
        payload: Payload::Text(text.to_owned()),
    };
    seal(&letter, Some(&from.key), &mut OsRng).expect("seals")
}

/// `write` of a sealed text letter (TTL one hour).
pub(crate) fn write_msg(from: &Person, to: &PublicKey, record_id: &str, text: &str) -> Message {
    write_raw(from, to, record_id, 3600, sealed_text(from, to, record_id, text))
}

/// `write` of arbitrary content.
pub(crate) fn write_raw(
    from: &Person,
    to: &PublicKey,
    record_id: &str,
    ttl: u32,
    content: Vec<u8>,
) -> Message {
    Message {
        from: from.pk(),
        to: *to,
        timestamp: fresh_ts(),
        request: Request::Write(Write { record_id: record_id.to_owned(), ttl, tag: None, content }),
    }
}

pub(crate) fn read_msg(
    from: &Person,
    relay: &PublicKey,
    owner: &PublicKey,
    receiver: &PublicKey,
    record_id: &str,
) -> Message {
    Message {
        from: from.pk(),
        to: *relay,
        timestamp: fresh_ts(),
        request: Request::Read(Read { owner: *owner, receiver: *receiver, record_id: record_id.to_owned() }),
    }
}

pub(crate) fn inventory_msg(
    from: &Person,
    relay: &PublicKey,
    owner: &PublicKey,
    receiver: &PublicKey,
    after_seq: Option<u64>,
    limit: u32,
) -> Message {
    Message {
        from: from.pk(),
        to: *relay,
        timestamp: fresh_ts(),
        request: Request::Inventory(Inventory {
            owner: *owner,
            receiver: *receiver,
            after_ts: None,
            before_ts: None,
            after_seq,
            limit,
        }),
    }
}

pub(crate) fn listen_msg(
    from: &Person,
    relay: &PublicKey,
    owner: &PublicKey,
    receiver: &PublicKey,
    after_seq: Option<u64>,
) -> Message {
    Message {
        from: from.pk(),
        to: *relay,
        timestamp: fresh_ts(),
        request: Request::Listen(Listen { owner: *owner, receiver: *receiver, after_ts: None, after_seq }),
    }
}

pub(crate) fn delete_msg(from: &Person, relay: &PublicKey, receiver: &PublicKey, record_id: &str) -> Message {
    Message {
        from: from.pk(),
        to: *relay,
        timestamp: fresh_ts(),
        request: Request::Delete(Delete { receiver: *receiver, record_id: record_id.to_owned() }),
    }
}

pub(crate) fn usage_msg(
    from: &Person,
    relay: &PublicKey,
    after_ts: Option<u64>,
    before_ts: Option<u64>,
) -> Message {
    Message {
        from: from.pk(),
        to: *relay,
        timestamp: fresh_ts(),
        request: Request::Usage(Usage { after_ts, before_ts }),
    }
}

pub(crate) fn register_msg(from: &Person, relay: &PublicKey, invite: Option<&str>) -> Message {
    Message {
        from: from.pk(),
        to: *relay,
        timestamp: fresh_ts(),
        request: Request::Register(Register { invite: invite.map(str::to_owned) }),
    }
}

/// `/v1/{owner}/outbox/{receiver}/{recordId}`
pub(crate) fn record_path(owner: &PublicKey, receiver: &PublicKey, record_id: &str) -> String {
    format!("/v1/{}/outbox/{}/{record_id}", owner.to_hex(), receiver.to_hex())
}

/// `/v1/{owner}/outbox/{receiver}`
pub(crate) fn outbox_path(owner: &PublicKey, receiver: &PublicKey) -> String {
    format!("/v1/{}/outbox/{}", owner.to_hex(), receiver.to_hex())
}

/// Standard base64 with padding (the relay's documents); the tests have no base64 crate.
pub(crate) fn base64_decode(text: &str) -> Vec<u8> {
    fn value(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {:?}", other as char),
        }
    }
    let bytes = text.as_bytes();
    assert!(bytes.len().is_multiple_of(4), "base64 length {} is not a multiple of 4", bytes.len());
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | value(c);
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    out
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A response: status, raw text and the JSON body (`Value::Null` if the body is not JSON).
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) text: String,
    pub(crate) json: Value,
    /// Header names in lower case.
    pub(crate) headers: Vec<(String, String)>,
}

impl Resp {
    fn new(status: u16, text: String, headers: Vec<(String, String)>) -> Self {
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self { status, text, json, headers }
    }

    /// The first value of a header.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Asserts a success status and returns the JSON body.
    #[track_caller]
    pub(crate) fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "expected {status}, got {}: {}", self.status, self.text);
        &self.json
    }

    /// Asserts an error answer: the status, and a JSON body `{"error": <non-empty>, "code"}`.
    #[track_caller]
    pub(crate) fn err(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.json["code"].as_str()),
            (status, Some(code)),
            "expected {status} {code}, got: {} {}",
            self.status,
            self.text
        );
        self.assert_error_shape();
    }

    /// Asserts the body is exactly `{"error": "<non-empty text>", "code": "<code>"}`.
    #[track_caller]
    pub(crate) fn assert_error_shape(&self) {
        assert!((400..600).contains(&self.status), "not an error status: {} {}", self.status, self.text);
        let object = self
            .json
            .as_object()
            .unwrap_or_else(|| panic!("error body is not a JSON object: {:?}", self.text));
        assert!(
            object.get("error").and_then(Value::as_str).is_some_and(|e| !e.is_empty()),
            "no `error` message in {}",
            self.text
        );
        assert!(object.get("code").and_then(Value::as_str).is_some(), "no `code` in {}", self.text);
        assert_eq!(object.len(), 2, "error body has extra fields: {}", self.text);
    }
}

/// An HTTP client with a timeout and no proxy.
pub(crate) fn http_client() -> reqwest::Client {
    // The workspace's reqwest has rustls without a built-in provider (the client library's
    // choice, so that only `ring` is compiled): install it before building a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("client builds")
}

/// Sends a request and collects the answer.
pub(crate) async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<String>,
) -> Result<Resp, reqwest::Error> {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).to_string()))
        .collect();
    let text = response.text().await?;
    Ok(Resp::new(status, text, headers))
}

/// PUTs a signed write to its own path on the relay at `url` (for spawned tasks).
pub(crate) async fn put_signed(
    client: &reqwest::Client,
    url: &str,
    signed: &SignedMessage,
) -> Result<Resp, reqwest::Error> {
    let m = signed.message();
    let Request::Write(w) = &m.request else { panic!("not a write") };
    let path = record_path(&m.from, &m.to, &w.record_id);
    send(client, reqwest::Method::PUT, &format!("{url}{path}"), Some(signed.to_json())).await
}

/// Sends only the head of a request and the first `partial` bytes of a body that claims to
/// be longer, then holds the connection open (a slow client). Returns the open stream.
pub(crate) async fn slow_upload(addr: SocketAddr, path: &str, partial: &[u8]) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        partial.len() + 1000
    );
    stream.write_all(head.as_bytes()).await.expect("writes head");
    stream.write_all(partial).await.expect("writes part of the body");
    stream
}

/// A raw HTTP/1.1 request over TCP, for paths a URL library would normalize (`..`, `%2e%2e`)
/// and bodies a client library would not send. Closes the connection after one answer.
pub(crate) async fn raw_http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Resp {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let (mut reader, mut writer) = stream.into_split();
    // Write and read at once: the relay may answer (and close) before reading a body it
    // refuses, and the answer must be read before a reset could discard it.
    let write = async move {
        let _ = writer.write_all(&request).await;
        writer
    };
    let read = async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return answer,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let joined = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) }).await;
    let (_writer, answer) = joined.unwrap_or_else(|_| panic!("no answer within 10 s for {method} {path}"));
    parse_raw_response(&answer)
}

fn parse_raw_response(answer: &[u8]) -> Resp {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut body = answer[split + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).expect("ascii").trim(), 16)
                    .expect("hex chunk size");
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Resp::new(status, String::from_utf8_lossy(&body).to_string(), headers)
}

// ---------------------------------------------------------------------------------------
// The relay process

/// A `pigeonhole serve` child process on a temporary data directory. Dropping it kills the
/// process, so no relay outlives its test.
pub(crate) struct Relay {
    /// `http://127.0.0.1:PORT`
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    /// The relay's public key, from `/health` (and checked against `/v1/info`).
    pub(crate) relay_key: PublicKey,
    pub(crate) http: reqwest::Client,
    root: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
    starts: u32,
    /// `--listen` of the next start: a free port, or the current one after `keep_port`.
    listen: String,
}

impl Relay {
    /// Starts a relay on a new temporary data directory with extra `serve` arguments.
    pub(crate) async fn start(args: &[&str]) -> Relay {
        let root = tempfile::tempdir().expect("tempdir");
        Self::start_in(root, args).await
    }

    /// Starts a relay on an existing root (data in `root/data`).
    pub(crate) async fn start_in(root: tempfile::TempDir, args: &[&str]) -> Relay {
        let mut relay = Relay {
            url: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            relay_key: random_key(),
            http: http_client(),
            root,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            starts: 0,
            listen: "127.0.0.1:0".to_owned(),
        };
        relay.spawn().await;
        relay
    }

    /// The temporary root: `data/` and the stderr logs.
    pub(crate) fn root(&self) -> &Path {
        self.root.path()
    }

    /// The data directory (`--data`).
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.root.path().join(format!("relay-{n}.stderr.log"))
    }

    /// Every stderr log this relay wrote so far, oldest start first.
    pub(crate) fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("--- start {n} ---\n{text}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("relay running").id()
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "relay already running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let data = self.data_dir();
        let mut command = Command::new(binary());
        command
            .args(["serve", "--listen", &self.listen, "--data"])
            .arg(&data)
            .args(&self.args)
            .env("PIGEONHOLE_LOG", "info,fjall=warn,lsm_tree=warn")
            .env_remove("PIGEONHOLE_SET")
            .env_remove("PIGEONHOLE_CONFIG")
            .env_remove("PIGEONHOLE_POLICY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command.spawn().expect("spawns the relay");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Reads the first line, then keeps draining stdout so the relay never blocks on it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        self.child = Some(child);
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT)).await.expect("join");
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "relay did not print its address ({e}); exit status {status:?}; logs:\n{}",
                    self.logs()
                )
            }
        };
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"))
            .to_owned();
        self.addr = url.strip_prefix("http://").and_then(|a| a.parse().ok()).expect("an address");
        self.url = url;
        let health = self.get("/health").await;
        assert_eq!(health.json["status"], "ok", "{}", health.text);
        self.relay_key =
            PublicKey::from_hex(health.json["relay"].as_str().expect("relay key")).expect("relay key");
    }

    /// Makes later restarts listen on the address the relay has now, so URLs on cards stay
    /// valid across a restart.
    pub(crate) fn keep_port(&mut self) {
        self.listen = self.addr.to_string();
    }

    /// Replaces the extra `serve` arguments used by the next `restart`.
    pub(crate) fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Starts the relay again on the same data directory (after `kill9` or `terminate`; kills
    /// it first if it still runs).
    pub(crate) async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.spawn().await;
    }

    /// SIGKILL, and reap the process.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `within` for the process to exit. Returns its exit status and
    /// how long it took, or `None` if it is still running (it is then killed).
    pub(crate) async fn terminate(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let pid = self.pid().to_string();
        let started = Instant::now();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("runs kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some((status, started.elapsed()));
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // --- HTTP helpers ---

    pub(crate) async fn get(&self, path: &str) -> Resp {
        send(&self.http, reqwest::Method::GET, &format!("{}{path}", self.url), None).await.expect("GET")
    }

    pub(crate) async fn post(&self, path: &str, body: impl Into<String>) -> Resp {
        send(&self.http, reqwest::Method::POST, &format!("{}{path}", self.url), Some(body.into()))
            .await
            .expect("POST")
    }

    pub(crate) async fn put(&self, path: &str, body: impl Into<String>) -> Resp {
        send(&self.http, reqwest::Method::PUT, &format!("{}{path}", self.url), Some(body.into()))
            .await
            .expect("PUT")
    }

    /// `POST /v1/accounts` with a signed `register`.
    pub(crate) async fn register(&self, who: &Person, invite: Option<&str>) -> Resp {
        self.post("/v1/accounts", who.sign(register_msg(who, &self.relay_key, invite))).await
    }

    /// PUTs an already signed write to its own path.
    pub(crate) async fn put_write(&self, signed: &SignedMessage) -> Resp {
        put_signed(&self.http, &self.url, signed).await.expect("PUT write")
    }

    /// `from` writes a sealed text letter to `to`.
    pub(crate) async fn write(&self, from: &Person, to: &PublicKey, record_id: &str, text: &str) -> Resp {
        self.put_write(&from.signed(write_msg(from, to, record_id, text))).await
    }

    /// `who` reads `/owner/outbox/receiver/record_id`.
    pub(crate) async fn read(
        &self,
        who: &Person,
        owner: &PublicKey,
        receiver: &PublicKey,
        record_id: &str,
    ) -> Resp {
        let body = who.sign(read_msg(who, &self.relay_key, owner, receiver, record_id));
        self.post(&record_path(owner, receiver, record_id), body).await
    }

    /// `owner` deletes its record for `receiver`.
    pub(crate) async fn delete(&self, owner: &Person, receiver: &PublicKey, record_id: &str) -> Resp {
        let body = owner.sign(delete_msg(owner, &self.relay_key, receiver, record_id));
        self.post(&record_path(&owner.pk(), receiver, record_id), body).await
    }

    /// One inventory page.
    pub(crate) async fn inventory_page(
        &self,
        who: &Person,
        owner: &PublicKey,
        receiver: &PublicKey,
        after_seq: Option<u64>,
        limit: u32,
    ) -> Resp {
        let body = who.sign(inventory_msg(who, &self.relay_key, owner, receiver, after_seq, limit));
        self.post(&outbox_path(owner, receiver), body).await
    }

    /// The whole inventory of an outbox as `(recordId, seq)`, paging with `afterSeq`.
    pub(crate) async fn inventory(
        &self,
        who: &Person,
        owner: &PublicKey,
        receiver: &PublicKey,
    ) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.inventory_page(who, owner, receiver, after, 1000).await;
            let body = page.ok(200);
            let records = body["records"].as_array().expect("records").clone();
            for record in &records {
                out.push((
                    record["recordId"].as_str().expect("recordId").to_owned(),
                    record["seq"].as_u64().expect("seq"),
                ));
            }
            if records.is_empty() {
                return out;
            }
            after = Some(out.last().expect("non-empty").1);
        }
    }

    /// `who` listens on an outbox with a long-poll wait.
    pub(crate) async fn listen(
        &self,
        who: &Person,
        owner: &PublicKey,
        receiver: &PublicKey,
        after_seq: Option<u64>,
        wait: u32,
    ) -> Resp {
        let body = who.sign(listen_msg(who, &self.relay_key, owner, receiver, after_seq));
        self.post(&format!("{}?wait={wait}", outbox_path(owner, receiver)), body).await
    }

    /// `who` asks for its usage report.
    pub(crate) async fn usage(&self, who: &Person, after_ts: Option<u64>, before_ts: Option<u64>) -> Resp {
        self.post("/v1/usage", who.sign(usage_msg(who, &self.relay_key, after_ts, before_ts))).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            #[allow(clippy::print_stderr, reason = "show the relay's log when a test fails")]
            {
                eprintln!("relay logs ({}):\n{}", self.root.path().display(), tail(&self.logs(), 60));
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Running the CLI

/// The result of a finished CLI command.
#[derive(Debug)]
pub(crate) struct CliOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `pigeonhole ARGS` to completion (killed after `timeout`, which fails the test).
pub(crate) fn run_cli(args: &[&str], cwd: &Path, timeout: Duration) -> CliOutput {
    run_cli_env(args, cwd, timeout, &[])
}

/// [`run_cli`] with extra environment variables.
pub(crate) fn run_cli_env(args: &[&str], cwd: &Path, timeout: Duration, env: &[(&str, &str)]) -> CliOutput {
    let out_path = cwd.join(".cli-stdout");
    let err_path = cwd.join(".cli-stderr");
    let mut child = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("PIGEONHOLE_HOME")
        .current_dir(cwd)
        .env_remove("PIGEONHOLE_SET")
        .env_remove("PIGEONHOLE_CONFIG")
        .env_remove("PIGEONHOLE_DATA")
        .env_remove("PIGEONHOLE_POLICY")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawns the CLI");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`pigeonhole {}` still running after {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CliOutput {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// People using the client commands.

pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Someone using the CLI with a home directory of their own.
pub(crate) struct User {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) passphrase: &'static str,
}

impl User {
    pub(crate) fn new(passphrase: &'static str) -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir"), passphrase }
    }

    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub(crate) fn env(&self) -> [(&'static str, &str); 2] {
        [("PIGEONHOLE_PASSPHRASE", self.passphrase), ("PIGEONHOLE_KEYFILE_LOG_N", "4")]
    }

    /// Runs `pigeonhole --home HOME ARGS` and returns its output, whatever the exit status.
    pub(crate) fn try_run(&self, args: &[&str]) -> CliOutput {
        let home = self.home();
        let mut all = vec!["--home", home.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run_cli_env(&all, self.dir.path(), COMMAND_TIMEOUT, &self.env())
    }

    /// Runs a command that must succeed; returns stdout.
    pub(crate) fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "`{}` failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Runs a command with `--json` that must succeed; returns the parsed output.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let stdout = self.run(&all);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("`{}`: not JSON ({e}): {stdout}", args.join(" ")))
    }

    /// Runs a command that must fail; returns stderr.
    pub(crate) fn fail(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(!out.status.success(), "`{}` should fail:\nstdout: {}", args.join(" "), out.stdout);
        out.stderr
    }

    /// Starts `pigeonhole listen --json` in the background, stdout to a file.
    pub(crate) fn spawn_listen(&self) -> (Child, PathBuf) {
        let out = self.dir.path().join("listen.stdout");
        let home = self.home();
        let child = Command::new(binary())
            .args(["--home", home.to_str().expect("utf-8"), "--json", "listen"])
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("file"))
            .stderr(std::fs::File::create(self.dir.path().join("listen.stderr")).expect("file"))
            .spawn()
            .expect("spawns listen");
        (child, out)
    }
}

/// Waits until the file at `path` contains `needle` (or `within` passes); returns its text.
pub(crate) fn wait_for(path: &Path, needle: &str, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || started.elapsed() > within {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
