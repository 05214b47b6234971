//! `drops`: anonymous drops with postage, end to end against a real relay.
//!
//! 1. **Postage**: one account obtains a token per drop (signed `postage` requests of 64
//!    blinded elements each), finalized and proof-checked against the relay's published key.
//! 2. **Upload**: drops sealed and stamped ahead of time (no cryptography in the timed loop
//!    on this side), posted by C concurrent closed-loop HTTP clients; every acknowledgement
//!    means the relay checked the stamp and made the drop and the spent stamp durable.
//! 3. **Scan**: a recipient with a 16-bit prefix downloads its bucket at L = 0, 8 and 16
//!    bits and checks every candidate's tag (one ECDH each: the stranger path); reported as
//!    candidates checked per second on one core, next to the verify rate.
//! 4. **Wake-up**: a long poll waits on a fresh prefix; a matching drop is posted; the time
//!    from posting to the long poll's answer, over many rounds.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;
use pigeonhole_proto::drops::{check_drop, seal_drop_with_nonce};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::postage::{self, MAX_ISSUE, PostageKeys, Token};
use pigeonhole_proto::receipt::RelayDocument;
use pigeonhole_proto::request::Request;
use pigeonhole_proto::seal::Letter;
use pigeonhole_proto::tag::{Prefix, Tag};
use rand::{RngCore as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::calibrate::verify_rate_async;
use crate::client::{
    Errors, count, derive_bytes, derive_key, error_kind, http_client, merge_errors, register, relay_key,
    signed_json,
};
use crate::proc::{CpuSnapshot, CpuWindow, RelaySample, round3};
use crate::report::{Latency, latency_histogram, ratio};
use crate::spawn::Relay;
use crate::{CommonArgs, RelayArgs};

/// `drops` options.
#[derive(Args, Debug)]
pub(crate) struct DropsArgs {
    /// Drops posted in the upload phase (each needs a token and a sealed envelope made
    /// before the clock starts).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    drops: usize,

    /// Concurrent closed-loop uploaders.
    #[arg(long, default_value_t = 32, value_name = "C")]
    clients: usize,

    /// Bytes of letter text per drop (the sealed envelope is a little larger).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    size: usize,

    /// Share of the drops addressed to the scanning recipient's 16-bit prefix (the rest go to
    /// random prefixes), in percent.
    #[arg(long, default_value_t = 1.0, value_name = "PCT")]
    to_recipient: f64,

    /// Long-poll wake-up rounds.
    #[arg(long, default_value_t = 200, value_name = "N")]
    wake_rounds: usize,

    #[command(flatten)]
    relay: RelayArgs,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Serialize)]
struct Issuance {
    tokens: usize,
    tokens_per_sec: f64,
    requests: usize,
}

#[derive(Debug, Serialize)]
struct Upload {
    drops_per_sec: f64,
    acked: u64,
    seconds: f64,
    latency: Latency,
    errors: Errors,
    /// Acked drops per second / single-core verify rate.
    ratio_to_verify: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Scan {
    /// Prefix length the recipient downloads and checks.
    bits: u8,
    /// Drops downloaded (every one is checked with an ECDH).
    candidates: usize,
    /// Candidates that checked as the recipient's. Drops to it were sealed for its 16-bit
    /// prefix, so only the 16-bit scan finds them; the others measure the cost alone.
    mine: usize,
    fetch_seconds: f64,
    fetched_per_sec: f64,
    /// Candidate tags checked per second on one core (ECDH + hash each).
    checked_per_sec_per_core: f64,
    ratio_to_verify: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    verify_per_sec: f64,
    drops: usize,
    clients: usize,
    size: usize,
    issuance: Issuance,
    upload: Upload,
    scan: Vec<Scan>,
    wakeup: Latency,
    relay_before: RelaySample,
    relay_after: RelaySample,
    cpu: CpuWindow,
}

/// The relay's published postage keys, verified under its signature.
async fn postage_keys(http: &reqwest::Client, url: &str, relay: &PublicKey) -> Result<PostageKeys> {
    let info: Value = http.get(format!("{url}/v1/info")).send().await?.error_for_status()?.json().await?;
    let document = info["postageDocument"].as_str().context("the relay publishes no postage keys")?;
    let bytes = BASE64.decode(document).context("postageDocument base64")?;
    let document = RelayDocument::from_bytes(&bytes).context("postage document")?;
    PostageKeys::from_document(&document, relay).context("verifying the postage document")
}

/// Obtains `n` tokens for the current epoch, 64 per signed request.
async fn obtain_tokens(
    http: &reqwest::Client,
    url: &str,
    relay: PublicKey,
    account: &SecretKey,
    keys: &PostageKeys,
    n: usize,
) -> Result<(Vec<Token>, Issuance)> {
    let (epoch, public) = *keys.keys.first().context("no postage key published")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(n);
    let mut requests = 0;
    while tokens.len() < n {
        let batch = (n - tokens.len()).min(MAX_ISSUE);
        let (request, state) = postage::blind(batch, epoch, &mut rng);
        let body = signed_json(account, relay, Request::Postage(request))?;
        let response = http.post(format!("{url}/v1/postage")).body(body).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if status != 200 {
            bail!("postage issuance refused: {} {text}", error_kind(status, &text));
        }
        let response = serde_json::from_str(&text).with_context(|| format!("postage answer {text}"))?;
        tokens.extend(state.finalize(&response, &public).context("finalizing tokens")?);
        requests += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((tokens, Issuance { tokens: n, tokens_per_sec: (n as f64 / secs).round(), requests }))
}

/// One drop ready to post: its JSON body.
struct Prepared {
    body: String,
}

fn seal_one(
    recipient: &PublicKey,
    prefix: &Prefix,
    text: &str,
    token: &Token,
    seed: u64,
) -> Result<(Tag, String)> {
    let letter = Letter {
        sender: None,
        recipient: *recipient,
        created_at: crate::client::now_ms(),
        record_id: format!("drop-{seed}"),
        payload: Payload::Text(text.to_owned()),
    };
    let e = derive_bytes("drops", "ephemeral", &[seed]);
    let nonce = derive_bytes("drops", "nonce", &[seed]);
    let aux = derive_bytes("drops", "aux", &[seed]);
    let (tag, envelope) =
        seal_drop_with_nonce(&letter, None, prefix, &e, &nonce, &aux).context("sealing a drop")?;
    let stamp = token.stamp(&tag, &envelope);
    let body = json!({"tag": tag.to_hex(), "drop": BASE64.encode(&envelope), "ttl": 3600, "postage": stamp});
    Ok((tag, body.to_string()))
}

/// Seals and stamps `tokens.len()` drops on every core: a share to `recipient` under
/// `prefix`, the rest to random keys and prefixes.
async fn prepare(
    seed: &str,
    recipient: PublicKey,
    prefix: Prefix,
    tokens: Vec<Token>,
    size: usize,
    to_recipient: f64,
) -> Result<Vec<Prepared>> {
    let text = "x".repeat(size);
    let others: Vec<PublicKey> = (0..64).map(|i| derive_key(seed, "drop-stranger", i).public_key()).collect();
    let tokens = Arc::new(tokens);
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let chunk = tokens.len().div_ceil(threads).max(1);
    let mut handles = Vec::new();
    for start in (0..tokens.len()).step_by(chunk) {
        let (tokens, text, others) = (tokens.clone(), text.clone(), others.clone());
        handles.push(tokio::task::spawn_blocking(move || -> Result<Vec<Prepared>> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(start as u64);
            let mut out = Vec::new();
            for i in start..(start + chunk).min(tokens.len()) {
                let mine = (rng.next_u32() as f64 / f64::from(u32::MAX)) * 100.0 < to_recipient;
                let (to, to_prefix) = if mine {
                    (recipient, prefix)
                } else {
                    let value = rng.next_u32() & 0xffff_0000;
                    (others[i % others.len()], Prefix::new(16, value).context("prefix")?)
                };
                let (_, body) = seal_one(&to, &to_prefix, &text, &tokens[i], i as u64)?;
                out.push(Prepared { body });
            }
            Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(tokens.len());
    for handle in handles {
        all.extend(handle.await.context("sealing thread")??);
    }
    Ok(all)
}

async fn upload(
    http: &reqwest::Client,
    url: &str,
    prepared: Vec<Prepared>,
    clients: usize,
) -> Result<Upload> {
    let prepared = Arc::new(prepared);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, prepared, next) =
            (http.clone(), format!("{url}/v1/drops"), prepared.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = latency_histogram()?;
            let mut errors = Errors::new();
            let mut acked = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(drop) = prepared.get(i) else { break };
                let sent = Instant::now();
                let response = http.post(&url).body(drop.body.clone()).send().await;
                match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let text = response.text().await.unwrap_or_default();
                        if status == 201 {
                            acked += 1;
                            histogram.record(sent.elapsed().as_micros() as u64).ok();
                        } else {
                            count(&mut errors, error_kind(status, &text));
                        }
                    }
                    Err(e) => count(&mut errors, if e.is_timeout() { "timeout" } else { "connection" }),
                }
            }
            anyhow::Ok((histogram, errors, acked))
        }));
    }
    let mut histogram = latency_histogram()?;
    let mut errors = Errors::new();
    let mut acked = 0;
    for task in tasks {
        let (h, e, a) = task.await.context("uploader")??;
        histogram.add(&h).context("merging histograms")?;
        merge_errors(&mut errors, e);
        acked += a;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Upload {
        drops_per_sec: (acked as f64 / seconds).round(),
        acked,
        seconds: round3(seconds),
        latency: Latency::of(&histogram),
        errors,
        ratio_to_verify: None,
    })
}

#[derive(Deserialize)]
struct Page {
    drops: Vec<PageDrop>,
    cursor: u64,
}

#[derive(Deserialize)]
struct PageDrop {
    tag: String,
    drop: String,
}

/// Downloads every drop under `prefix`, then checks each candidate on this thread.
async fn scan(
    http: &reqwest::Client,
    url: &str,
    me: &SecretKey,
    prefix: Prefix,
    verify: f64,
) -> Result<Scan> {
    let started = Instant::now();
    let mut cursor = 0;
    let mut candidates = Vec::new();
    loop {
        let page: Page = http
            .get(format!("{url}/v1/drops?bits={}&value={}&after={cursor}", prefix.bits(), prefix.value()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if page.drops.is_empty() {
            break;
        }
        cursor = page.cursor;
        for drop in page.drops {
            let tag = Tag::from_hex(&drop.tag).map_err(|e| anyhow::anyhow!("relay sent a bad tag: {e}"))?;
            candidates.push((tag, BASE64.decode(drop.drop).context("relay sent bad base64")?));
        }
    }
    let fetch_seconds = started.elapsed().as_secs_f64();
    let fetched = candidates.len();
    let me = me.clone();
    let (mine, check_seconds) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mine = candidates
            .iter()
            .filter(|(tag, envelope)| check_drop(&me, &prefix, tag, envelope).is_ok())
            .count();
        (mine, started.elapsed().as_secs_f64())
    })
    .await?;
    let checked_per_sec = if check_seconds > 0.0 { (fetched as f64 / check_seconds).round() } else { 0.0 };
    Ok(Scan {
        bits: prefix.bits(),
        candidates: fetched,
        mine,
        fetch_seconds: round3(fetch_seconds),
        fetched_per_sec: if fetch_seconds > 0.0 { (fetched as f64 / fetch_seconds).round() } else { 0.0 },
        checked_per_sec_per_core: checked_per_sec,
        ratio_to_verify: ratio(checked_per_sec, verify),
    })
}

/// Long-poll wake-up latency: a poll waits on a fresh 32-bit prefix, a drop to it is posted,
/// and the time from posting to the poll's answer is recorded.
async fn wakeups(http: &reqwest::Client, url: &str, seed: &str, tokens: Vec<Token>) -> Result<Latency> {
    let mut histogram = latency_histogram()?;
    let recipient = derive_key(seed, "wake-recipient", 0).public_key();
    for (round, token) in tokens.iter().enumerate() {
        let value = u32::from_be_bytes(derive_bytes(seed, "wake-prefix", &[round as u64])[..4].try_into()?);
        let prefix = Prefix::new(32, value).context("prefix")?;
        let (_, body) = seal_one(&recipient, &prefix, "wake up", token, 1_000_000 + round as u64)?;
        let poll_url = format!("{url}/v1/drops?bits=32&value={value}&after=0&wait=10");
        let poll = tokio::spawn({
            let http = http.clone();
            async move {
                let response = http.get(poll_url).send().await?;
                let arrived = Instant::now();
                let page: Page = response.error_for_status()?.json().await?;
                anyhow::Ok((arrived, page.drops.len()))
            }
        });
        // Let the poll reach the relay and subscribe before posting.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = Instant::now();
        let response = http.post(format!("{url}/v1/drops")).body(body).send().await?;
        if response.status().as_u16() != 201 {
            let status = response.status().as_u16();
            bail!("wake-up drop refused: {}", error_kind(status, &response.text().await.unwrap_or_default()));
        }
        let (arrived, n) = poll.await.context("poll task")??;
        if n == 0 {
            bail!("the long poll returned empty in round {round}");
        }
        histogram.record(arrived.saturating_duration_since(sent).as_micros() as u64).ok();
    }
    Ok(Latency::of(&histogram))
}

pub(crate) async fn run(args: DropsArgs) -> Result<ExitCode> {
    let relay = Relay::resolve(&args.relay).await?;
    let http = http_client()?;
    let url = relay.url.clone();
    let relay_pub = relay_key(&http, &url).await?;
    let calibration = verify_rate_async(1.0).await?;
    let verify = calibration.verify_per_sec;
    let seed = &args.common.seed;
    let account = derive_key(seed, "drop-account", 0);
    register(&http, &url, relay_pub, &account).await?;
    let keys = postage_keys(&http, &url, &relay_pub).await?;

    let (tokens, issuance) =
        obtain_tokens(&http, &url, relay_pub, &account, &keys, args.drops + args.wake_rounds).await?;
    let mut tokens = tokens;
    let wake_tokens = tokens.split_off(args.drops);

    let recipient = derive_key(seed, "drop-recipient", 0);
    let value =
        u32::from_be_bytes(derive_bytes(seed, "drop-recipient-prefix", &[])[..4].try_into()?) & 0xffff_0000;
    let prefix16 = Prefix::new(16, value).context("prefix")?;
    let prepared =
        prepare(seed, recipient.public_key(), prefix16, tokens, args.size, args.to_recipient).await?;

    let before = RelaySample::take(relay.pid, relay.data.as_deref());
    let cpu_start = CpuSnapshot::take(relay.pid);
    let mut upload = upload(&http, &url, prepared, args.clients).await?;
    let cpu = CpuWindow::between(&cpu_start, &CpuSnapshot::take(relay.pid));
    let after = RelaySample::take(relay.pid, relay.data.as_deref());
    upload.ratio_to_verify = ratio(upload.drops_per_sec, verify);

    let mut scans = Vec::new();
    for bits in [0u8, 8, 16] {
        let prefix = Prefix::truncate(bits, value).context("prefix")?;
        scans.push(scan(&http, &url, &recipient, prefix, verify).await?);
    }
    let wakeup = wakeups(&http, &url, seed, wake_tokens).await?;
    let report = Report {
        verify_per_sec: verify,
        drops: args.drops,
        clients: args.clients,
        size: args.size,
        issuance,
        upload,
        scan: scans,
        wakeup,
        relay_before: before,
        relay_after: after,
        cpu,
    };
    relay.stop().await?;
    crate::report::print(args.common.json, "drops", &report)?;
    Ok(ExitCode::SUCCESS)
}
