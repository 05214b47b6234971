//! `ingest`: N clients write sealed records as fast as the relay acknowledges them, over
//! WebSocket sessions (unsigned frames) or, with `--fresh-sessions`, as separately signed
//! HTTP `PUT`s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures_util::SinkExt as _;
use hdrhistogram::Histogram;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::request::{Message, Request, Write};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::calibrate::verify_rate_async;
use crate::client::{
    AckLog, AckSender, Answer, Envelope, Errors, Socket, WriteTemplate, ack_line, count, derive_key,
    envelope_pools, error_kind, http_client, ingest_receiver, next_text, now_ms, open_session, register,
    relay_key, run_nonce,
};
use crate::proc::{CpuSnapshot, CpuWindow, RelaySample, round3};
use crate::report::{Latency, growth_per, latency_histogram, ratio};
use crate::spawn::Relay;
use crate::{CommonArgs, RelayArgs};

/// Most requests in flight on one WebSocket (the relay's own limit per connection).
pub(crate) const MAX_PIPELINE: usize = 256;
/// How long answers still in flight are awaited after the window closes.
const DRAIN: Duration = Duration::from_secs(30);
/// Pre-signed writes are stamped this far after the signing starts, so they stay inside the
/// relay's ±120 s window from 60 s before to 180 s after.
const PRESIGN_AHEAD_MS: u64 = 60_000;
/// The relay's skew window (its default `limits.max_skew_secs`), with a safety margin.
const USABLE_SKEW_MS: u64 = 110_000;
/// Share of the measured single-core verify rate that the default stock of pre-signed
/// writes covers for the whole run (a relay needs at least one verify per such write).
const PRESIGN_SHARE: f64 = 0.5;

/// `ingest` options.
#[derive(Args, Debug)]
pub(crate) struct IngestArgs {
    /// Concurrent clients, each its own identity on its own connection.
    #[arg(long, default_value_t = 16, value_name = "N")]
    clients: usize,

    /// Seconds measured, after the warmup.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    seconds: f64,

    /// Seconds of load before the measured window (acks and latencies then are not counted).
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    warmup: f64,

    /// Bytes of letter text per record. The sealed envelope is larger: the letter's header and
    /// signature, NIP-44 padding and MAC, the ephemeral key (1024 gives 1380 bytes).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    size: usize,

    /// Writes in flight per client: 1 is a closed loop (each client waits for its ack). With
    /// --fresh-sessions, K concurrent HTTP requests (K connections) per client.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pipeline: usize,

    /// Every write a separately signed HTTP PUT instead of an unsigned frame in a WebSocket
    /// session: one signature check per write on the relay. Pre-signed before the clock starts.
    #[arg(long)]
    fresh_sessions: bool,

    /// Append `owner_hex receiver_hex record_id` for every acknowledged record to FILE, as the
    /// ack arrives (flushed at least every 100 ms and at exit: everything acked before a relay
    /// crash is in the file; only lines acked in the last 100 ms before this process itself
    /// is killed can be lost). Verify with `check`.
    #[arg(long, value_name = "FILE")]
    acked_log: Option<PathBuf>,

    /// Distinct sealed envelopes per client, reused under fresh record ids.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pool: usize,

    /// Pre-signed writes per client for --fresh-sessions (default: enough for 50% of one
    /// core's verify rate, measured at the start, for the whole run).
    #[arg(long, value_name = "N")]
    presign: Option<usize>,

    /// TTL of the records, seconds.
    #[arg(long, default_value_t = 86_400, value_name = "SECS")]
    ttl: u32,

    #[command(flatten)]
    relay: RelayArgs,

    #[command(flatten)]
    common: CommonArgs,
}

/// When the measured window opens and closes.
#[derive(Clone, Copy)]
struct Window {
    open: Instant,
    close: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.open && at < self.close
    }
}

/// What one client (or one HTTP worker) saw.
struct Outcome {
    latency: Histogram<u64>,
    acked_in_window: u64,
    acked_total: u64,
    sent: u64,
    unanswered: u64,
    signed_inline: u64,
    errors: Errors,
}

impl Outcome {
    fn new() -> Result<Self> {
        Ok(Self {
            latency: latency_histogram()?,
            acked_in_window: 0,
            acked_total: 0,
            sent: 0,
            unanswered: 0,
            signed_inline: 0,
            errors: Errors::new(),
        })
    }

    fn merge(&mut self, other: Outcome) -> Result<()> {
        self.latency.add(&other.latency).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        self.acked_in_window += other.acked_in_window;
        self.acked_total += other.acked_total;
        self.sent += other.sent;
        self.unanswered += other.unanswered;
        self.signed_inline += other.signed_inline;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_insert(0) += n;
        }
        Ok(())
    }

    fn acked(&mut self, window: &Window, sent_at: Instant, at: Instant) {
        self.acked_total += 1;
        if window.contains(at) {
            self.acked_in_window += 1;
            self.latency.saturating_record(at.duration_since(sent_at).as_micros().max(1) as u64);
        }
    }
}

/// Everything one client needs to write.
struct Writer {
    template: WriteTemplate,
    pool: Arc<Vec<Envelope>>,
    /// Record ids are `<prefix><n>`: run nonce, client (and worker) index, counter.
    prefix: String,
    log: Option<AckSender>,
}

impl Writer {
    fn record_id(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    fn envelope(&self, n: u64) -> &Envelope {
        &self.pool[(n % self.pool.len() as u64) as usize]
    }

    fn log(&self, n: u64) {
        if let Some(log) = &self.log {
            let _ = log.send(ack_line(
                self.template.owner_hex(),
                self.template.receiver_hex(),
                &self.record_id(n),
            ));
        }
    }
}

/// One client on a WebSocket session: unsigned write frames, `pipeline` in flight.
async fn session_client(
    mut socket: Socket,
    writer: Writer,
    pipeline: usize,
    window: Window,
) -> Result<Outcome> {
    let mut out = Outcome::new()?;
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(pipeline * 2);
    let mut n = 0u64;
    let capacity = writer.envelope(0).b64.len() + 512;
    'run: loop {
        let mut fed = false;
        while pending.len() < pipeline && Instant::now() < window.close {
            n += 1;
            let mut frame = String::with_capacity(capacity);
            writer.template.session_frame(
                &mut frame,
                n,
                now_ms(),
                &writer.record_id(n),
                &writer.envelope(n).b64,
            );
            if socket.feed(WsMessage::Text(frame.into())).await.is_err() {
                count(&mut out.errors, "ws_send_failed");
                out.unanswered += pending.len() as u64;
                break 'run;
            }
            pending.insert(n, Instant::now());
            out.sent += 1;
            fed = true;
        }
        if fed && socket.flush().await.is_err() {
            count(&mut out.errors, "ws_send_failed");
            out.unanswered += pending.len() as u64;
            break;
        }
        if pending.is_empty() {
            break;
        }
        let give_up = tokio::time::Instant::from_std(window.close.max(Instant::now()) + DRAIN);
        let text = match tokio::time::timeout_at(give_up, next_text(&mut socket)).await {
            Ok(Some(Ok(text))) => text,
            outcome => {
                count(
                    &mut out.errors,
                    match outcome {
                        Err(_) => "ws_answer_timeout".to_owned(),
                        Ok(Some(Err(closed))) => match closed.code {
                            Some(code) => format!("ws_closed {code}"),
                            None => "ws_connection_lost".to_owned(),
                        },
                        _ => "ws_connection_lost".to_owned(),
                    },
                );
                out.unanswered += pending.len() as u64;
                break;
            }
        };
        let at = Instant::now();
        let Ok(answer) = serde_json::from_str::<Answer<'_>>(&text) else {
            count(&mut out.errors, "bad_frame");
            continue;
        };
        let Some((id, sent_at)) = answer.id.and_then(|id| pending.remove(&id).map(|s| (id, s))) else {
            count(&mut out.errors, "unexpected_frame");
            continue;
        };
        match answer.status {
            Some(200 | 201) => {
                out.acked(&window, sent_at, at);
                writer.log(id);
            }
            Some(status) => count(&mut out.errors, error_kind(status, answer.body.map_or("", |b| b.get()))),
            None => count(&mut out.errors, "bad_frame"),
        }
    }
    let _ = socket.close(None).await;
    Ok(out)
}

/// A write signed ahead of time: record `n` of its worker, stamped `timestamp`.
#[derive(Clone, Copy)]
struct Presigned {
    timestamp: u64,
    sig: [u8; 64],
}

/// Signs write `n` of `writer` as `key` at `timestamp`.
fn sign_write(key: &SecretKey, writer: &Writer, receiver: PublicKey, n: u64, timestamp: u64) -> [u8; 64] {
    let message = Message {
        from: key.public_key(),
        to: receiver,
        timestamp,
        request: Request::Write(Write {
            record_id: writer.record_id(n),
            ttl: writer.template.ttl(),
            tag: None,
            content: writer.envelope(n).bytes.clone(),
        }),
    };
    let mut aux = [0u8; 32];
    aux[..8].copy_from_slice(&n.to_be_bytes());
    key.sign_with_aux(&message.signing_hash(), &aux).to_bytes()
}

/// One HTTP worker of `--fresh-sessions`: each write a signed `PUT`, closed loop.
struct HttpWorker {
    http: reqwest::Client,
    /// `{url}/v1/{owner}/outbox/{receiver}/`
    base: String,
    key: SecretKey,
    receiver: PublicKey,
    writer: Writer,
    stock: Vec<Presigned>,
}

async fn http_worker(worker: HttpWorker, window: Window) -> Result<Outcome> {
    let mut out = Outcome::new()?;
    let writer = &worker.writer;
    let mut body = String::with_capacity(writer.envelope(0).b64.len() + 640);
    let mut n = 0u64;
    while Instant::now() < window.close {
        n += 1;
        let stocked = worker.stock.get((n - 1) as usize).filter(|p| now_ms() < p.timestamp + USABLE_SKEW_MS);
        let (timestamp, sig) = match stocked {
            Some(p) => (p.timestamp, p.sig),
            None => {
                out.signed_inline += 1;
                let timestamp = now_ms();
                (timestamp, sign_write(&worker.key, writer, worker.receiver, n, timestamp))
            }
        };
        let record_id = writer.record_id(n);
        writer.template.signed_body(&mut body, timestamp, &record_id, &writer.envelope(n).b64, &sig);
        let sent_at = Instant::now();
        out.sent += 1;
        let result = worker.http.put(format!("{}{record_id}", worker.base)).body(body.clone()).send().await;
        match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await;
                let at = Instant::now();
                match (status, text) {
                    (200 | 201, Ok(_)) => {
                        out.acked(&window, sent_at, at);
                        writer.log(n);
                    }
                    (200 | 201, Err(_)) => {
                        // Stored, but the answer was cut: not counted as acknowledged.
                        count(&mut out.errors, "answer_cut");
                        out.unanswered += 1;
                    }
                    (status, text) => {
                        count(&mut out.errors, error_kind(status, &text.unwrap_or_default()));
                        let pause = if status == 429 { 100 } else { 10 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
            Err(error) => {
                count(&mut out.errors, if error.is_timeout() { "timeout" } else { "connection" });
                out.unanswered += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(out)
}

/// How the run was prepared (not measured).
#[derive(Debug, Default, Serialize)]
struct Setup {
    /// Seconds spent sealing the envelope pools.
    pool_secs: f64,
    /// Seconds spent registering the clients.
    register_secs: f64,
    /// Seconds spent opening WebSocket sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions_secs: Option<f64>,
    /// Seconds spent pre-signing writes (--fresh-sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    presign_secs: Option<f64>,
    /// Writes pre-signed per client (--fresh-sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    presigned_per_client: Option<usize>,
    /// Writes the generator had to sign during the run (stock used up or stale).
    #[serde(skip_serializing_if = "Option::is_none")]
    signed_inline: Option<u64>,
}

#[derive(Serialize)]
struct AckedLogReport {
    path: String,
    lines: u64,
}

#[derive(Serialize)]
struct Report {
    command: &'static str,
    mode: &'static str,
    relay_url: String,
    clients: usize,
    pipeline: usize,
    seconds: f64,
    warmup: f64,
    size: usize,
    envelope_bytes: usize,
    writes_per_sec: f64,
    /// Mean of the single-core verify rates measured (1 s each) just before and just after
    /// the run: this machine's speed can drift during a run, and both ends are shown.
    verify_per_sec: f64,
    verify_before: f64,
    verify_after: f64,
    /// writes_per_sec / verify_per_sec.
    writes_per_verify: Option<f64>,
    /// Acknowledged writes per second of relay CPU time (all threads) in the window.
    writes_per_relay_cpu_sec: Option<f64>,
    #[serde(flatten)]
    latency: Latency,
    acked_in_window: u64,
    acked_total: u64,
    sent: u64,
    /// Writes whose answer never came (connection lost, timeout): may or may not be stored.
    unanswered: u64,
    errors: Errors,
    cpu: CpuWindow,
    relay_before: RelaySample,
    relay_after: RelaySample,
    /// Growth of the data directory per acknowledged write (journal, tables and indexes).
    disk_bytes_per_write: Option<f64>,
    setup: Setup,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_log: Option<AckedLogReport>,
}

/// `pigeonhole-bench ingest`.
pub(crate) async fn run(args: IngestArgs) -> Result<ExitCode> {
    if args.clients == 0 || args.pool == 0 {
        bail!("--clients and --pool must be at least 1");
    }
    if args.pipeline == 0 || args.pipeline > MAX_PIPELINE {
        bail!("--pipeline must be between 1 and {MAX_PIPELINE} (the relay's limit per connection)");
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 || args.warmup.is_nan() || args.warmup < 0.0 {
        bail!("--seconds must be positive and --warmup not negative");
    }
    let relay = Relay::resolve(&args.relay).await?;
    let result = ingest(&args, &relay).await;
    let stopped = relay.stop().await;
    let report = result?;
    stopped?;
    crate::report::print(args.common.json, "ingest", &report)?;
    Ok(ExitCode::SUCCESS)
}

async fn ingest(args: &IngestArgs, relay: &Relay) -> Result<Report> {
    let http = http_client()?;
    let relay_pk = relay_key(&http, &relay.url).await?;
    let before = RelaySample::take(relay.pid, relay.data.as_deref());
    let verify = verify_rate_async(1.0).await?;
    let seed = args.common.seed.clone();
    let mut setup = Setup::default();

    // Identities and envelopes, all before the clock starts.
    let keys: Vec<SecretKey> = (0..args.clients as u64).map(|i| derive_key(&seed, "client", i)).collect();
    let receiver = ingest_receiver(&seed).public_key();
    let started = Instant::now();
    let pools = {
        let (seed, keys, size, pool) = (seed.clone(), keys.clone(), args.size, args.pool);
        tokio::task::spawn_blocking(move || envelope_pools(&seed, &keys, receiver, pool, size))
            .await
            .context("the sealing threads")??
    };
    setup.pool_secs = round3(started.elapsed().as_secs_f64());
    let envelope_bytes = pools.first().and_then(|p| p.first()).map_or(0, |e| e.bytes.len());
    let pools: Vec<Arc<Vec<Envelope>>> = pools.into_iter().map(Arc::new).collect();

    let started = Instant::now();
    let mut registrations = JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    for key in &keys {
        let (http, url, key, gate) = (http.clone(), relay.url.clone(), key.clone(), gate.clone());
        registrations.spawn(async move {
            let _permit = gate.acquire_owned().await;
            register(&http, &url, relay_pk, &key).await
        });
    }
    while let Some(done) = registrations.join_next().await {
        done.context("a registration task")??;
    }
    setup.register_secs = round3(started.elapsed().as_secs_f64());

    let nonce = run_nonce();
    let log = args.acked_log.as_deref().map(AckLog::open).transpose()?;
    let writer = |i: usize, worker: Option<usize>| Writer {
        template: WriteTemplate::new(keys[i].public_key(), receiver, args.ttl),
        pool: pools[i].clone(),
        prefix: match worker {
            Some(w) => format!("{nonce}-{i}-{w}-"),
            None => format!("{nonce}-{i}-"),
        },
        log: log.as_ref().map(AckLog::sender),
    };

    enum Prepared {
        Sessions(Vec<Socket>),
        Http(Vec<HttpWorker>),
    }
    let prepared = if args.fresh_sessions {
        let per_client = args.presign.unwrap_or_else(|| {
            let budget = verify.verify_per_sec * (args.warmup + args.seconds) * PRESIGN_SHARE;
            (budget / args.clients as f64).ceil() as usize
        });
        let per_worker = per_client.div_ceil(args.pipeline);
        let mut workers = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let client = reqwest::Client::builder()
                .timeout(DRAIN)
                .pool_max_idle_per_host(args.pipeline)
                .build()
                .context("building an HTTP client")?;
            for w in 0..args.pipeline {
                workers.push(HttpWorker {
                    http: client.clone(),
                    base: format!(
                        "{}/v1/{}/outbox/{}/",
                        relay.url,
                        key.public_key().to_hex(),
                        receiver.to_hex()
                    ),
                    key: key.clone(),
                    receiver,
                    writer: writer(i, Some(w)),
                    stock: Vec::new(),
                });
            }
        }
        let started = Instant::now();
        let workers = tokio::task::spawn_blocking(move || presign(workers, per_worker))
            .await
            .context("the signing threads")??;
        setup.presign_secs = Some(round3(started.elapsed().as_secs_f64()));
        setup.presigned_per_client = Some(per_worker * args.pipeline);
        Prepared::Http(workers)
    } else {
        let started = Instant::now();
        let mut opening = JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let (url, key) = (relay.url.clone(), key.clone());
            opening.spawn(async move { (i, open_session(&url, relay_pk, &key).await) });
        }
        let mut sockets: Vec<Option<Socket>> = (0..args.clients).map(|_| None).collect();
        while let Some(done) = opening.join_next().await {
            let (i, socket) = done.context("a session task")?;
            sockets[i] = Some(socket.with_context(|| format!("opening the session of client {i}"))?);
        }
        setup.sessions_secs = Some(round3(started.elapsed().as_secs_f64()));
        Prepared::Sessions(sockets.into_iter().flatten().collect())
    };

    // The run: warmup, then the measured window; CPU sampled at its edges.
    let start = Instant::now();
    let window = Window {
        open: start + Duration::from_secs_f64(args.warmup),
        close: start + Duration::from_secs_f64(args.warmup + args.seconds),
    };
    let pid = relay.pid;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(window.open)).await;
        let first = CpuSnapshot::take(pid);
        tokio::time::sleep_until(tokio::time::Instant::from_std(window.close)).await;
        (first, CpuSnapshot::take(pid))
    });
    let mut tasks = JoinSet::new();
    match prepared {
        Prepared::Sessions(sockets) => {
            for (i, socket) in sockets.into_iter().enumerate() {
                tasks.spawn(session_client(socket, writer(i, None), args.pipeline, window));
            }
        }
        Prepared::Http(workers) => {
            for worker in workers {
                tasks.spawn(http_worker(worker, window));
            }
        }
    }
    let mut total = Outcome::new()?;
    while let Some(done) = tasks.join_next().await {
        total.merge(done.context("a client task")??)?;
    }
    let (first, last) = if Instant::now() >= window.close {
        sampler.await.context("the CPU sampler")?
    } else {
        // Every client stopped early (e.g. the relay died): the window is cut short.
        sampler.abort();
        (CpuSnapshot::take(pid), CpuSnapshot::take(pid))
    };
    let cpu = CpuWindow::between(&first, &last);
    let after = RelaySample::take(relay.pid, relay.data.as_deref());
    let verify_after = verify_rate_async(1.0).await?;
    let verify_per_sec = ((verify.verify_per_sec + verify_after.verify_per_sec) / 2.0).round();
    let acked_log = match (log, &args.acked_log) {
        (Some(log), Some(path)) => {
            Some(AckedLogReport { path: path.display().to_string(), lines: log.finish()? })
        }
        _ => None,
    };

    if total.errors.keys().any(|k| k.starts_with("429")) && !relay.is_spawned() {
        eprintln!(
            "warning: the relay rate-limited this benchmark (429 answers): the figures measure its limits \
             (per IP: limits.requests_per_sec_per_ip / burst_per_ip; per account: \
             limits.writes_per_sec_per_account), not its speed. Use --spawn, or raise them on the relay."
        );
    }
    if total.signed_inline > 0 {
        eprintln!(
            "warning: {} writes were signed during the run (pre-signed stock used up or stale); \
             the generator may have limited the rate: raise --presign",
            total.signed_inline
        );
    }
    let writes_per_sec = (total.acked_in_window as f64 / args.seconds).round();
    let relay_cpu_secs = cpu.relay_cores.map(|c| c * cpu.seconds);
    if args.fresh_sessions {
        setup.signed_inline = Some(total.signed_inline);
    }
    Ok(Report {
        command: "ingest",
        mode: if args.fresh_sessions { "fresh-sessions" } else { "session" },
        relay_url: relay.url.clone(),
        clients: args.clients,
        pipeline: args.pipeline,
        seconds: args.seconds,
        warmup: args.warmup,
        size: args.size,
        envelope_bytes,
        writes_per_sec,
        verify_per_sec,
        verify_before: verify.verify_per_sec,
        verify_after: verify_after.verify_per_sec,
        writes_per_verify: ratio(writes_per_sec, verify_per_sec),
        writes_per_relay_cpu_sec: relay_cpu_secs
            .and_then(|secs| ratio(total.acked_in_window as f64, secs))
            .map(f64::round),
        latency: Latency::of(&total.latency),
        acked_in_window: total.acked_in_window,
        acked_total: total.acked_total,
        sent: total.sent,
        unanswered: total.unanswered,
        errors: total.errors,
        cpu,
        relay_before: before,
        relay_after: after,
        disk_bytes_per_write: growth_per(before.disk_bytes, after.disk_bytes, total.acked_total),
        setup,
        acked_log,
    })
}

/// Fills each worker's stock with `count` signed writes, on every core. All are stamped
/// [`PRESIGN_AHEAD_MS`] after now, which keeps them inside the relay's skew window for
/// the next three minutes; a worker that reaches a stale or missing one signs inline.
fn presign(mut workers: Vec<HttpWorker>, count: usize) -> Result<Vec<HttpWorker>> {
    let timestamp = now_ms() + PRESIGN_AHEAD_MS;
    let threads = std::thread::available_parallelism().map_or(2, usize::from).max(1);
    let chunk = workers.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for group in workers.chunks_mut(chunk) {
            scope.spawn(move || {
                for worker in group {
                    worker.stock = (1..=count as u64)
                        .map(|n| Presigned {
                            timestamp,
                            sig: sign_write(&worker.key, &worker.writer, worker.receiver, n, timestamp),
                        })
                        .collect();
                }
            });
        }
    });
    Ok(workers)
}
