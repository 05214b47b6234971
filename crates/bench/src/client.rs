//! What every command needs to speak to a relay: keys derived from the run seed, the clock,
//! signed HTTP requests, WebSocket sessions, write frames built from templates (no JSON
//! serializer and no cryptography per write), pools of sealed envelopes made ahead of time,
//! and the acked log.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt as _, StreamExt as _};
use pigeonhole_proto::hash::tagged_hash;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::request::{Message, Register, Request, Session};
use pigeonhole_proto::seal::{Letter, seal_with_nonce};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Domain tag of every key and nonce this tool derives.
const DERIVE_TAG: &str = "pigeonhole-bench/v1/derive";

/// 32 bytes derived from the seed, a role and indexes (length-prefixed, so unambiguous).
pub(crate) fn derive_bytes(seed: &str, role: &str, indexes: &[u64]) -> [u8; 32] {
    let mut parts: Vec<Vec<u8>> = vec![
        (seed.len() as u64).to_be_bytes().to_vec(),
        seed.as_bytes().to_vec(),
        (role.len() as u64).to_be_bytes().to_vec(),
        role.as_bytes().to_vec(),
    ];
    parts.extend(indexes.iter().map(|i| i.to_be_bytes().to_vec()));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    tagged_hash(DERIVE_TAG, &refs)
}

/// The secret key number `index` of `role` under `seed`: `SecretKey::from_bytes` of a hash of
/// (seed, role, index), so the same seed gives the same identities on every run.
pub(crate) fn derive_key(seed: &str, role: &str, index: u64) -> SecretKey {
    let mut attempt = 0u64;
    loop {
        // A hash that is not a valid scalar has a chance of about 2^-128; try the next one.
        if let Ok(key) = SecretKey::from_bytes(&derive_bytes(seed, role, &[index, attempt])) {
            return key;
        }
        attempt += 1;
    }
}

/// The receiver every `ingest` client writes to (and that `check` signs as).
pub(crate) fn ingest_receiver(seed: &str) -> SecretKey {
    derive_key(seed, "receiver", 0)
}

/// Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A timestamp for a signed non-write request: the clock, strictly increasing within this
/// process, so that two requests never share signed bytes (the relay would call it a replay).
pub(crate) fn fresh_ts() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut previous = LAST.load(Ordering::Relaxed);
    loop {
        let next = now_ms().max(previous + 1);
        match LAST.compare_exchange(previous, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => previous = actual,
        }
    }
}

/// A prefix for record ids that no earlier run used: time and process id, base 36.
pub(crate) fn run_nonce() -> String {
    format!("{}{}", base36(now_ms()), base36(u64::from(std::process::id())))
}

fn base36(mut value: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Signs `request` from `key` to `to` with a fresh timestamp; the JSON form `{"msg": {...}}`.
pub(crate) fn signed_json(key: &SecretKey, to: PublicKey, request: Request) -> Result<String> {
    let message = Message { from: key.public_key(), to, timestamp: fresh_ts(), request };
    let aux = derive_bytes("aux", "request", &[message.timestamp, u64::from(std::process::id())]);
    Ok(message.sign_with_aux(key, &aux).context("signing a request")?.to_json())
}

/// `{"msg": {...}}` as a WebSocket frame `{"id": N, "msg": {...}}`.
pub(crate) fn as_frame(id: u64, msg_json: &str) -> String {
    // `to_json` always starts with `{"msg":`; splice the id in front of it.
    format!("{{\"id\":{id},{}", msg_json.strip_prefix('{').unwrap_or(msg_json))
}

/// A refusal's `{"error", "code"}` body.
#[derive(Deserialize)]
struct ErrorBody {
    code: Option<String>,
}

/// `"<status> <code>"` for a refusal, e.g. `429 rate_limited` (the code from the body if any).
pub(crate) fn error_kind(status: u16, body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body).ok().and_then(|b| b.code) {
        Some(code) => format!("{status} {code}"),
        None => format!("{status}"),
    }
}

/// Counts of errors by kind.
pub(crate) type Errors = BTreeMap<String, u64>;

/// Adds one error of `kind`.
pub(crate) fn count(errors: &mut Errors, kind: impl Into<String>) {
    *errors.entry(kind.into()).or_insert(0) += 1;
}

/// An HTTP client for control requests (registration, inventory, health).
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().context("building the HTTP client")
}

#[derive(Deserialize)]
struct Health {
    relay: String,
}

/// The relay's public key, from `GET /health` (retried for a few seconds while it starts).
pub(crate) async fn relay_key(http: &reqwest::Client, url: &str) -> Result<PublicKey> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let response = http.get(format!("{url}/health")).send().await?.error_for_status()?;
            response.json::<Health>().await
        };
        match attempt.await {
            Ok(health) => {
                return PublicKey::from_hex(&health.relay)
                    .map_err(|e| anyhow::anyhow!("the relay's /health names no valid key: {e}"));
            }
            Err(error) if Instant::now() >= deadline => {
                return Err(error).with_context(|| format!("GET {url}/health"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sends a signed POST, retrying after `429` as `Retry-After` says for up to `patience`.
/// `body` is called for each attempt (a retried signed request needs a new timestamp).
pub(crate) async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    patience: Duration,
    mut body: impl FnMut() -> Result<String>,
) -> Result<(u16, String)> {
    let deadline = Instant::now() + patience;
    loop {
        let response = http.post(url).body(body()?).send().await.with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        let text = response.text().await.with_context(|| format!("reading the answer to POST {url}"))?;
        if status == 429 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(retry.clamp(1, 10))).await;
            continue;
        }
        return Ok((status, text));
    }
}

/// Registers `key` (POST /v1/accounts): `201` new or `200` existing are both fine.
pub(crate) async fn register(
    http: &reqwest::Client,
    url: &str,
    relay: PublicKey,
    key: &SecretKey,
) -> Result<()> {
    let endpoint = format!("{url}/v1/accounts");
    // No retry on 429: registrations are limited per hour, not per second.
    let (status, body) = post_signed(http, &endpoint, Duration::ZERO, || {
        signed_json(key, relay, Request::Register(Register { invite: None }))
    })
    .await?;
    match status {
        200 | 201 => Ok(()),
        429 => bail!(
            "registration refused: {} (the relay allows few registrations per hour per IP; \
             use --spawn, or raise limits.registrations_per_hour_per_ip on the relay)",
            error_kind(status, &body)
        ),
        _ => bail!("registration refused: {} {body}", error_kind(status, &body)),
    }
}

/// A WebSocket connection to the relay.
pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame of a socket or of its read half, skipping pings; `None` when the
/// connection ended.
pub(crate) async fn next_text<S>(socket: &mut S) -> Option<Result<String, Closed>>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match socket.next().await? {
            Ok(WsMessage::Text(text)) => return Some(Ok(text.as_str().to_owned())),
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => continue,
            Ok(WsMessage::Binary(_)) => {
                return Some(Err(Closed { code: None, reason: "binary frame".into() }));
            }
            Ok(WsMessage::Close(frame)) => {
                return Some(Err(match frame {
                    Some(f) => Closed { code: Some(u16::from(f.code)), reason: f.reason.as_str().to_owned() },
                    None => Closed { code: None, reason: String::new() },
                }));
            }
            Err(error) => return Some(Err(Closed { code: None, reason: error.to_string() })),
        }
    }
}

/// When a run's measured window opens and closes.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    pub(crate) open: Instant,
    pub(crate) close: Instant,
}

impl Window {
    /// Whether `at` falls inside the window.
    pub(crate) fn contains(&self, at: Instant) -> bool {
        at >= self.open && at < self.close
    }
}

/// Why a WebSocket stopped: the close code and reason when the relay sent one.
#[derive(Debug, Clone)]
pub(crate) struct Closed {
    /// The close code, if a close frame arrived.
    pub(crate) code: Option<u16>,
    /// Its reason, or the transport error.
    pub(crate) reason: String,
}

/// An answer frame `{"id", "status", "body"}` (pushes have `sub` instead of `id`).
#[derive(Deserialize)]
pub(crate) struct Answer<'a> {
    /// The request's id.
    pub(crate) id: Option<u64>,
    /// Its HTTP status.
    pub(crate) status: Option<u16>,
    /// The HTTP body, unparsed.
    #[serde(borrow)]
    pub(crate) body: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Challenge {
    challenge: String,
}

/// Opens a WebSocket session as `key`: reads the challenge, answers it with a signed
/// `session` request (frame id 0) and waits for the relay's `200`.
pub(crate) async fn open_session(url: &str, relay: PublicKey, key: &SecretKey) -> Result<Socket> {
    let ws_url = format!("{}/v1/ws", url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(ws_url.as_str(), None, true)
        .await
        .with_context(|| format!("connecting to {ws_url}"))?;
    let wait = Duration::from_secs(30);
    let hello = tokio::time::timeout(wait, next_text(&mut socket))
        .await
        .context("no challenge from the relay")?
        .context("the relay closed before its challenge")?
        .map_err(|c| anyhow::anyhow!("the relay closed before its challenge: {c:?}"))?;
    let hello: Challenge =
        serde_json::from_str(&hello).with_context(|| format!("challenge frame {hello}"))?;
    let mut challenge = [0u8; 32];
    hex::decode_to_slice(&hello.challenge, &mut challenge).context("challenge hex")?;
    let answer = signed_json(key, relay, Request::Session(Session { challenge }))?;
    socket.send(WsMessage::Text(as_frame(0, &answer).into())).await.context("sending the session answer")?;
    let reply = tokio::time::timeout(wait, next_text(&mut socket))
        .await
        .context("no answer to the session")?
        .context("the relay closed the session")?
        .map_err(|c| anyhow::anyhow!("the relay refused the session: {c:?}"))?;
    let answer: Answer<'_> =
        serde_json::from_str(&reply).with_context(|| format!("session answer {reply}"))?;
    if answer.status != Some(200) {
        bail!("the relay refused the session: {reply}");
    }
    Ok(socket)
}

/// The fixed parts of one client's write requests, so that each write is a few string
/// appends: `from`, `to` and the TTL never change, the record id and timestamp do, and the
/// content comes base64-encoded from the pool.
#[derive(Debug, Clone)]
pub(crate) struct WriteTemplate {
    from_hex: String,
    to_hex: String,
    ttl: u32,
}

impl WriteTemplate {
    /// Writes from `from` to `to`, kept `ttl` seconds.
    pub(crate) fn new(from: PublicKey, to: PublicKey, ttl: u32) -> Self {
        Self { from_hex: from.to_hex(), to_hex: to.to_hex(), ttl }
    }

    /// The owner's key, hex.
    pub(crate) fn owner_hex(&self) -> &str {
        &self.from_hex
    }

    /// The receiver's key, hex.
    pub(crate) fn receiver_hex(&self) -> &str {
        &self.to_hex
    }

    /// The TTL in seconds.
    pub(crate) fn ttl(&self) -> u32 {
        self.ttl
    }

    fn fields(&self, out: &mut String, timestamp: u64, record_id: &str, content_b64: &str) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "\"v\":1,\"type\":\"write\",\"from\":\"{}\",\"to\":\"{}\",\"timestamp\":{timestamp},\
             \"request\":{{\"recordId\":\"{record_id}\",\"ttl\":{},\"tag\":null,\"content\":\"",
            self.from_hex, self.to_hex, self.ttl
        );
        out.push_str(content_b64);
        out.push_str("\"}");
    }

    /// An unsigned write in a session frame: `{"id":N,"msg":{...}}`.
    pub(crate) fn session_frame(
        &self,
        out: &mut String,
        id: u64,
        timestamp: u64,
        record_id: &str,
        b64: &str,
    ) {
        use std::fmt::Write as _;
        out.clear();
        let _ = write!(out, "{{\"id\":{id},\"msg\":{{");
        self.fields(out, timestamp, record_id, b64);
        out.push_str("}}");
    }

    /// A signed write as an HTTP body: `{"msg":{...,"sig":"..."}}`.
    pub(crate) fn signed_body(
        &self,
        out: &mut String,
        timestamp: u64,
        record_id: &str,
        b64: &str,
        sig: &[u8; 64],
    ) {
        out.clear();
        out.push_str("{\"msg\":{");
        self.fields(out, timestamp, record_id, b64);
        out.push_str(",\"sig\":\"");
        out.push_str(&hex::encode(sig));
        out.push_str("\"}}");
    }
}

/// A sealed envelope: its bytes (what a signature covers) and their base64 (what is sent).
pub(crate) struct Envelope {
    /// The envelope.
    pub(crate) bytes: Vec<u8>,
    /// Standard base64 with padding, as in the JSON form.
    pub(crate) b64: String,
}

/// Seals `count` distinct text letters of `size` bytes from `sender` to `recipient`. The
/// randomness (ephemeral key, nonce, signing aux) is derived from the seed, so a run's
/// envelopes are the same every time.
pub(crate) fn envelope_pool(
    seed: &str,
    sender: &SecretKey,
    recipient: PublicKey,
    count: usize,
    size: usize,
    created_at: u64,
) -> Result<Vec<Envelope>> {
    let sender_hex = sender.public_key().to_hex();
    (0..count as u64)
        .map(|j| {
            let text: String = derive_bytes(seed, "text", &[j])
                .iter()
                .cycle()
                .take(size)
                .map(|b| char::from(b'a' + b % 26))
                .collect();
            let letter = Letter {
                sender: Some(sender.public_key()),
                recipient,
                created_at,
                record_id: format!("pool-{j}"),
                payload: Payload::Text(text),
            };
            let mut attempt = 0;
            let bytes = loop {
                let secret = derive_bytes(seed, &format!("ephemeral/{sender_hex}"), &[j, attempt]);
                let nonce = derive_bytes(seed, &format!("nonce/{sender_hex}"), &[j]);
                let aux = derive_bytes(seed, &format!("aux/{sender_hex}"), &[j]);
                match seal_with_nonce(&letter, Some(sender), &secret, &nonce, &aux) {
                    Ok(bytes) => break bytes,
                    Err(pigeonhole_proto::seal::SealError::InvalidEphemeral) if attempt < 8 => attempt += 1,
                    Err(error) => return Err(error).context("sealing a letter"),
                }
            };
            let b64 = BASE64.encode(&bytes);
            Ok(Envelope { bytes, b64 })
        })
        .collect()
}

/// Seals `count` envelopes of `size` bytes for each `(sender, recipient)` pair, indexes into
/// `senders` and `recipients`, on every core (sealing is the slow part of a run's setup).
pub(crate) fn envelope_pools(
    seed: &str,
    senders: &[SecretKey],
    recipients: &[PublicKey],
    pairs: &[(usize, usize)],
    count: usize,
    size: usize,
) -> Result<Vec<Vec<Envelope>>> {
    let created_at = now_ms();
    let threads = std::thread::available_parallelism().map_or(2, usize::from).max(1);
    let chunk = pairs.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = pairs
            .chunks(chunk)
            .map(|group| {
                scope.spawn(move || {
                    group
                        .iter()
                        .map(|&(s, r)| {
                            envelope_pool(seed, &senders[s], recipients[r], count, size, created_at)
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut pools = Vec::with_capacity(pairs.len());
        for handle in handles {
            pools.extend(handle.join().map_err(|_| anyhow::anyhow!("a sealing thread panicked"))??);
        }
        Ok(pools)
    })
}

/// Adds the error counts of `from` to `into`.
pub(crate) fn merge_errors(into: &mut Errors, from: Errors) {
    for (kind, n) in from {
        *into.entry(kind).or_insert(0) += n;
    }
}

/// The acked log: one line `owner_hex receiver_hex record_id` per acknowledged record,
/// appended by a writer thread when the ack arrives. The thread flushes its buffer at least
/// every [`AckLog::FLUSH_EVERY`] and at the end, so everything acknowledged before a relay
/// crash reaches the file; only lines acked in the last 100 ms before this process itself is
/// killed can be lost.
pub(crate) struct AckLog {
    lines: std::sync::mpsc::Sender<String>,
    thread: std::thread::JoinHandle<std::io::Result<u64>>,
}

/// Where clients send acked lines.
pub(crate) type AckSender = std::sync::mpsc::Sender<String>;

impl AckLog {
    /// The longest a line waits in the buffer.
    pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

    /// Opens (appends to) `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the acked log {}", path.display()))?;
        let (lines, incoming) = std::sync::mpsc::channel::<String>();
        let thread = std::thread::Builder::new()
            .name("acked-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
                let mut written = 0u64;
                let mut last_flush = Instant::now();
                loop {
                    let wait = Self::FLUSH_EVERY.saturating_sub(last_flush.elapsed());
                    match incoming.recv_timeout(wait) {
                        Ok(line) => {
                            out.write_all(line.as_bytes())?;
                            written += 1;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if last_flush.elapsed() >= Self::FLUSH_EVERY {
                        out.flush()?;
                        last_flush = Instant::now();
                    }
                }
                out.flush()?;
                out.get_ref().sync_all()?;
                Ok(written)
            })
            .context("starting the acked-log thread")?;
        Ok(Self { lines, thread })
    }

    /// A sender for one client.
    pub(crate) fn sender(&self) -> AckSender {
        self.lines.clone()
    }

    /// Waits until every line sent so far is written and synced; the number of lines.
    pub(crate) fn finish(self) -> Result<u64> {
        drop(self.lines);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the acked-log thread panicked"))?
            .context("writing the acked log")
    }
}

/// A line of the acked log.
pub(crate) fn ack_line(owner_hex: &str, receiver_hex: &str, record_id: &str) -> String {
    format!("{owner_hex} {receiver_hex} {record_id}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeonhole_proto::request::{SignedMessage, Write};

    #[test]
    fn keys_are_repeatable_and_distinct() {
        assert_eq!(derive_key("s", "client", 1).public_key(), derive_key("s", "client", 1).public_key());
        assert_ne!(derive_key("s", "client", 1).public_key(), derive_key("s", "client", 2).public_key());
        assert_ne!(derive_key("s", "client", 1).public_key(), derive_key("t", "client", 1).public_key());
        assert_ne!(derive_bytes("ab", "c", &[]), derive_bytes("a", "bc", &[]));
    }

    fn envelope() -> (SecretKey, SecretKey, Envelope) {
        let (alice, bob) = (derive_key("t", "a", 0), derive_key("t", "b", 0));
        let mut pool = envelope_pool("t", &alice, bob.public_key(), 2, 100, 1).expect("seals");
        let envelope = pool.pop().expect("two");
        let opened = pigeonhole_proto::seal::open(&bob, &envelope.bytes).expect("opens");
        assert_eq!(opened.letter.sender, Some(alice.public_key()));
        (alice, bob, envelope)
    }

    #[test]
    fn session_frames_are_the_protocol_json() {
        let (alice, bob, envelope) = envelope();
        let template = WriteTemplate::new(alice.public_key(), bob.public_key(), 3600);
        let mut frame = String::new();
        template.session_frame(&mut frame, 42, 1_700_000_000_123, "r-1", &envelope.b64);
        let value: serde_json::Value = serde_json::from_str(&frame).expect("JSON");
        assert_eq!(value["id"], 42);
        let msg = format!("{{\"msg\":{}}}", value["msg"]);
        let parsed = Message::from_json(&msg).expect("an unsigned write");
        let expected = Message {
            from: alice.public_key(),
            to: bob.public_key(),
            timestamp: 1_700_000_000_123,
            request: Request::Write(Write {
                record_id: "r-1".into(),
                ttl: 3600,
                tag: None,
                content: envelope.bytes.clone(),
            }),
        };
        assert_eq!(parsed, expected);
        assert_eq!(frame, as_frame(42, &expected.to_json()), "byte for byte what the library writes");
    }

    #[test]
    fn signed_bodies_verify() {
        let (alice, bob, envelope) = envelope();
        let template = WriteTemplate::new(alice.public_key(), bob.public_key(), 60);
        let message = Message {
            from: alice.public_key(),
            to: bob.public_key(),
            timestamp: 5,
            request: Request::Write(Write {
                record_id: "x".into(),
                ttl: 60,
                tag: None,
                content: envelope.bytes.clone(),
            }),
        };
        let sig = alice.sign_with_aux(&message.signing_hash(), &[7; 32]).to_bytes();
        let mut body = String::new();
        template.signed_body(&mut body, 5, "x", &envelope.b64, &sig);
        let signed = SignedMessage::from_json(&body).expect("verifies");
        assert_eq!(signed.message(), &message);
    }

    #[test]
    fn frames_splice_an_id() {
        assert_eq!(as_frame(3, "{\"msg\":{\"a\":1}}"), "{\"id\":3,\"msg\":{\"a\":1}}");
    }

    #[test]
    fn error_kinds_name_status_and_code() {
        assert_eq!(error_kind(429, r#"{"error":"slow","code":"rate_limited"}"#), "429 rate_limited");
        assert_eq!(error_kind(502, "<html>"), "502");
    }

    #[test]
    fn base36_and_nonce() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert!(pigeonhole_proto::payload::validate_record_id(&format!("{}-1-2", run_nonce())).is_ok());
    }

    #[test]
    fn the_acked_log_appends_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("acked.txt");
        let log = AckLog::open(&path).expect("opens");
        let tx = log.sender();
        tx.send(ack_line("aa", "bb", "r1")).expect("sends");
        drop(tx);
        assert_eq!(log.finish().expect("finishes"), 1);
        assert_eq!(std::fs::read_to_string(&path).expect("reads"), "aa bb r1\n");
    }
}
