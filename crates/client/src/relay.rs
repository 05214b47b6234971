//! Talking to one relay over HTTP (spec §11): the signed info document, registration, writes
//! with verified receipts, outbox pages through the `listen` long-poll endpoint, and usage
//! reports. Every request is signed (§11.1) with a timestamp that never repeats within the
//! process, and every call has a timeout so that a slow relay cannot hold the others up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::receipt::{RelayDocument, RelayInfo, UsageReport, WriteReceipt};
use pigeonhole_proto::request::{Listen, Message, Register, Request, SignedMessage, Usage};
use rand_core::OsRng;
use serde_json::Value;

use crate::error::RelayError;

/// How long one HTTP call to a relay may take, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix milliseconds from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A request timestamp: the clock, but strictly increasing within the process, so two
/// requests made in the same millisecond never have the same signed bytes (which a relay
/// would refuse as a replay).
pub fn fresh_timestamp() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut previous = LAST.load(Ordering::SeqCst);
    loop {
        let next = now_ms().max(previous + 1);
        match LAST.compare_exchange(previous, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(actual) => previous = actual,
        }
    }
}

/// Checks and normalizes a relay base URL: `http://` or `https://`, a host, no trailing
/// slash, no query or fragment.
pub fn normalize_url(url: &str) -> Result<String, RelayError> {
    let bad = |reason: &str| RelayError::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("it must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    Ok(trimmed.to_owned())
}

/// A relay's verified info document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHello {
    /// The base URL asked.
    pub url: String,
    /// The relay's key (the document verified under it).
    pub relay_key: PublicKey,
    /// When the relay signed the document (unix ms).
    pub timestamp: u64,
    /// The verified info.
    pub info: RelayInfo,
}

/// What a relay answered to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The relay's sequence number for the record.
    pub seq: u64,
    /// The record was already stored (an idempotent replay).
    pub duplicate: bool,
    /// The verified receipt.
    pub receipt: WriteReceipt,
}

/// One record handed over by a relay, its write signature (if any) checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    /// The relay's sequence number.
    pub seq: u64,
    /// The write request as stored (owner = `from`, receiver = `to`).
    pub message: Message,
}

/// A page of an outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The records, in sequence order.
    pub records: Vec<FetchedRecord>,
    /// Continue after this sequence number.
    pub cursor: u64,
}

/// Installs rustls's `ring` provider as the process default (once; a provider already
/// installed by the embedding application is kept). reqwest and tokio-tungstenite use it for
/// `https://` and `wss://` relays.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for relays.
#[derive(Debug, Clone)]
pub struct RelayClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl RelayClient {
    /// A client whose calls each time out after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, RelayError> {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("pigeonhole/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RelayError::Unreachable { url: String::new(), reason: e.to_string() })?;
        Ok(Self { http, timeout })
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) async fn call(
        &self,
        url: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, RelayError> {
        let mut request = self.http.request(method, format!("{url}{path}"));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(url, &e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| self.transport_error(url, &e))?;
        let json: Value = serde_json::from_str(&text).map_err(|_| {
            if (200..300).contains(&status) {
                RelayError::BadAnswer {
                    url: url.to_owned(),
                    reason: format!("status {status} with a non-JSON body"),
                }
            } else {
                RelayError::Refused {
                    url: url.to_owned(),
                    status,
                    code: String::new(),
                    message: text.chars().take(200).collect(),
                }
            }
        })?;
        if !(200..300).contains(&status) {
            return Err(RelayError::Refused {
                url: url.to_owned(),
                status,
                code: json["code"].as_str().unwrap_or_default().to_owned(),
                message: json["error"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(json)
    }

    fn transport_error(&self, url: &str, error: &reqwest::Error) -> RelayError {
        if error.is_timeout() {
            return RelayError::Timeout { url: url.to_owned(), secs: self.timeout.as_secs().max(1) };
        }
        // The innermost cause says the most ("Connection refused").
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            reason = cause.to_string();
            source = cause.source();
        }
        RelayError::Unreachable { url: url.to_owned(), reason }
    }

    pub(crate) fn bad(url: &str, reason: impl Into<String>) -> RelayError {
        RelayError::BadAnswer { url: url.to_owned(), reason: reason.into() }
    }

    /// `GET /v1/info`: the relay's key and its info document, verified under that key.
    pub async fn hello(&self, url: &str) -> Result<RelayHello, RelayError> {
        let json = self.call(url, reqwest::Method::GET, "/v1/info", None).await?;
        let relay_key = json["relay"]
            .as_str()
            .and_then(|k| PublicKey::from_hex(k).ok())
            .ok_or_else(|| Self::bad(url, "no relay key in /v1/info"))?;
        let document = decode_document(url, &json)?;
        let info = RelayInfo::from_document(&document, &relay_key)
            .map_err(|e| Self::bad(url, format!("info document: {e}")))?;
        Ok(RelayHello { url: url.to_owned(), relay_key, timestamp: document.timestamp, info })
    }

    fn sign(secret: &SecretKey, to: PublicKey, request: Request) -> Result<SignedMessage, RelayError> {
        let message = Message { from: secret.public_key(), to, timestamp: fresh_timestamp(), request };
        message
            .sign(secret, &mut OsRng)
            .map_err(|e| RelayError::BadUrl { url: String::new(), reason: e.to_string() })
    }

    /// `POST /v1/accounts` with a signed `register`; returns the account status.
    pub async fn register(
        &self,
        url: &str,
        relay_key: &PublicKey,
        secret: &SecretKey,
        invite: Option<&str>,
    ) -> Result<String, RelayError> {
        let signed = Self::sign(
            secret,
            *relay_key,
            Request::Register(Register { invite: invite.map(str::to_owned) }),
        )?;
        let json = self.call(url, reqwest::Method::POST, "/v1/accounts", Some(signed.to_json())).await?;
        Ok(json["account"]["status"].as_str().unwrap_or("unknown").to_owned())
    }

    /// PUTs a signed write to its path and verifies the receipt: signed by `relay_key`, for
    /// exactly this record (owner, receiver, id, record hash), with a valid inclusion proof.
    pub async fn write(
        &self,
        url: &str,
        relay_key: &PublicKey,
        signed: &SignedMessage,
    ) -> Result<WriteOutcome, RelayError> {
        let message = signed.message();
        let Request::Write(write) = &message.request else {
            return Err(Self::bad(url, "not a write"));
        };
        let path =
            format!("/v1/{}/outbox/{}/{}", message.from.to_hex(), message.to.to_hex(), write.record_id);
        let json = self.call(url, reqwest::Method::PUT, &path, Some(signed.to_json())).await?;
        let receipt: WriteReceipt = serde_json::from_value(json["receipt"].clone())
            .map_err(|e| Self::bad(url, format!("receipt: {e}")))?;
        receipt.verify(relay_key).map_err(|e| Self::bad(url, format!("receipt does not verify: {e}")))?;
        let leaf = &receipt.leaf;
        if leaf.owner != message.from
            || leaf.receiver != message.to
            || leaf.record_id != write.record_id
            || leaf.record_hash != message.record_hash()
        {
            return Err(Self::bad(url, "the receipt is for another record"));
        }
        Ok(WriteOutcome {
            seq: json["seq"].as_u64().unwrap_or(leaf.seq),
            duplicate: json["duplicate"].as_bool().unwrap_or(false),
            receipt,
        })
    }

    /// One page of `owner`'s outbox to the signer, after `after_seq`, through the `listen`
    /// long-poll endpoint with `wait` seconds (0: answer at once). Each record's write is
    /// checked: signed by `owner` if it carries a signature, from `owner` to the signer.
    pub async fn outbox_page(
        &self,
        url: &str,
        relay_key: &PublicKey,
        secret: &SecretKey,
        owner: &PublicKey,
        after_seq: u64,
        wait: u32,
    ) -> Result<Page, RelayError> {
        let me = secret.public_key();
        let signed = Self::sign(
            secret,
            *relay_key,
            Request::Listen(Listen {
                owner: *owner,
                receiver: me,
                after_ts: None,
                after_seq: Some(after_seq),
            }),
        )?;
        let path = format!("/v1/{}/outbox/{}?wait={wait}", owner.to_hex(), me.to_hex());
        let json = self.call(url, reqwest::Method::POST, &path, Some(signed.to_json())).await?;
        parse_page(url, &json, owner, &me, after_seq)
    }

    /// `POST /v1/usage`: the relay's signed report of reads of the signer's outboxes.
    pub async fn usage(
        &self,
        url: &str,
        relay_key: &PublicKey,
        secret: &SecretKey,
    ) -> Result<UsageReport, RelayError> {
        let signed =
            Self::sign(secret, *relay_key, Request::Usage(Usage { after_ts: None, before_ts: None }))?;
        let json = self.call(url, reqwest::Method::POST, "/v1/usage", Some(signed.to_json())).await?;
        let document = decode_document(url, &json)?;
        let report = UsageReport::from_document(&document, relay_key)
            .map_err(|e| Self::bad(url, format!("usage report: {e}")))?;
        if report.account != secret.public_key() {
            return Err(Self::bad(url, "the usage report is about another account"));
        }
        Ok(report)
    }
}

fn decode_document(url: &str, json: &Value) -> Result<RelayDocument, RelayError> {
    let bytes = json["document"]
        .as_str()
        .and_then(|d| BASE64.decode(d).ok())
        .ok_or_else(|| RelayClient::bad(url, "no base64 `document`"))?;
    RelayDocument::from_bytes(&bytes).map_err(|e| RelayClient::bad(url, format!("document: {e}")))
}

/// Parses a `{"records": [...], "cursor"}` answer (long poll or WebSocket push) and checks
/// every record is a write from `owner` to `me`. A record that fails the check is an
/// invalid answer: the whole page is refused, and the cursor does not move.
pub(crate) fn parse_page(
    url: &str,
    json: &Value,
    owner: &PublicKey,
    me: &PublicKey,
    after_seq: u64,
) -> Result<Page, RelayError> {
    let bad = |reason: String| RelayClient::bad(url, reason);
    let list = json["records"].as_array().ok_or_else(|| bad("no `records` list".into()))?;
    let cursor = json["cursor"].as_u64().ok_or_else(|| bad("no `cursor`".into()))?;
    let mut records = Vec::with_capacity(list.len());
    for entry in list {
        let seq = entry["seq"].as_u64().ok_or_else(|| bad("a record without `seq`".into()))?;
        let record = &entry["record"];
        let text = record.to_string();
        let message = if record["msg"].get("sig").is_some_and(|s| !s.is_null()) {
            SignedMessage::from_json(&text).map(SignedMessage::into_message)
        } else {
            Message::from_json(&text)
        }
        .map_err(|e| bad(format!("record {seq}: {e}")))?;
        if message.from != *owner || message.to != *me || !matches!(message.request, Request::Write(_)) {
            return Err(bad(format!("record {seq} is not a write from this outbox's owner to you")));
        }
        records.push(FetchedRecord { seq, message });
    }
    if cursor < after_seq {
        return Err(bad(format!("the cursor went back from {after_seq} to {cursor}")));
    }
    Ok(Page { records, cursor })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn urls_are_normalized_or_refused() {
        let check = |input: &str, expected: Option<&str>| {
            assert_eq!(normalize_url(input).ok().as_deref(), expected, "{input}");
        };
        check("http://127.0.0.1:7070", Some("http://127.0.0.1:7070"));
        check(" http://relay.example.org/ ", Some("http://relay.example.org"));
        check("https://relay.example.org/", Some("https://relay.example.org"));
        check("ftp://relay.example.org", None);
        check("relay.example.org", None);
        check("http://relay.example.org/?x=1", None);
        check("http://", None);
    }

    #[tokio::test]
    async fn https_relays_fail_cleanly_when_unreachable() {
        // TLS is compiled in (ring): an https relay that is not there is an error, not a panic.
        let client = RelayClient::new(Duration::from_secs(5)).expect("client");
        let error = client.hello("https://127.0.0.1:1").await.expect_err("nothing listens there");
        assert!(matches!(error, RelayError::Unreachable { .. }), "{error:?}");
    }

    #[test]
    fn timestamps_never_repeat() {
        let a = fresh_timestamp();
        let b = fresh_timestamp();
        assert!(b > a);
    }
}
