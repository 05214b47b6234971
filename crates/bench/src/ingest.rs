//! `ingest`: N clients write sealed records as fast as the relay acknowledges them, over
//! WebSocket sessions (unsigned frames) or, with `--fresh-sessions`, as separately signed
//! HTTP `PUT`s. With `--rate` the load is open loop instead (writes on a fixed schedule,
//! whatever the latency), and `--sample-every` records the relay's memory and disk over the
//! run (the soak test: `scripts/soak.sh`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    AckLog, AckSender, Answer, Envelope, Errors, Socket, Window, WriteTemplate, ack_line, count, derive_key,
    envelope_pools, error_kind, http_client, ingest_receiver, merge_errors, next_text, now_ms, open_session,
    register, relay_key, run_nonce,
};
use crate::proc::{CpuSnapshot, CpuWindow, RelaySample, disk_bytes, memory, round3};
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
/// Writes in flight per WebSocket client under `--rate` unless `--pipeline` says otherwise.
const RATE_PIPELINE: usize = 64;
/// A paced write sent this long after its scheduled moment counts as late.
const LATE: Duration = Duration::from_millis(10);
/// Below this share of `--rate` achieved, the run warns that the relay did not keep up.
const KEPT_UP: f64 = 0.95;

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

    /// Writes in flight per client: 1 (the default) is a closed loop (each client waits for
    /// its ack). With --fresh-sessions, K concurrent HTTP requests (K connections) per client.
    /// With --rate, the most a client keeps in flight while it keeps to its schedule (default
    /// 64 on WebSocket sessions, 1 with --fresh-sessions).
    #[arg(long, value_name = "K")]
    pipeline: Option<usize>,

    /// Open loop: R writes per second in total, spread evenly over the clients (each client
    /// sends on its own clock, phases staggered, whatever the latency). A write due while
    /// its client already has --pipeline in flight waits for a free slot and counts as late;
    /// writes due before the window closes but never sent are reported (`rate.unsent`), and
    /// the report compares the acknowledged rate with R.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,

    /// Sample the relay's RSS and data-directory size every S seconds from the start of the
    /// load (warmup included) to the end of the window: `rss_samples` in the report, and
    /// `rss_growth` (medians of the window's first, second and last quarters, maximum).
    /// Needs the relay's pid (--spawn, or --relay-pid) and, for disk, its data directory.
    #[arg(long, value_name = "S")]
    sample_every: Option<f64>,

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

/// What one client (or one HTTP worker) saw.
struct Outcome {
    latency: Histogram<u64>,
    acked_in_window: u64,
    acked_total: u64,
    sent: u64,
    unanswered: u64,
    signed_inline: u64,
    /// Paced writes sent more than [`LATE`] after their scheduled moment.
    late: u64,
    /// The longest a paced write waited past its scheduled moment, µs.
    max_lag_us: u64,
    /// Paced writes due before the window closed but never sent.
    unsent: u64,
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
            late: 0,
            max_lag_us: 0,
            unsent: 0,
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
        self.late += other.late;
        self.max_lag_us = self.max_lag_us.max(other.max_lag_us);
        self.unsent += other.unsent;
        merge_errors(&mut self.errors, other.errors);
        Ok(())
    }

    fn acked(&mut self, window: &Window, sent_at: Instant, at: Instant) {
        self.acked_total += 1;
        if window.contains(at) {
            self.acked_in_window += 1;
            self.latency.saturating_record(at.duration_since(sent_at).as_micros().max(1) as u64);
        }
    }

    /// Notes how late write `k` of `pace` goes out at `at`.
    fn sent_paced(&mut self, pace: &Pace, k: u64, at: Instant) {
        let lag = at.saturating_duration_since(pace.due_at(k));
        if lag > LATE {
            self.late += 1;
        }
        self.max_lag_us = self.max_lag_us.max(lag.as_micros() as u64);
    }
}

/// An open-loop schedule: write `k` (from 0) of one client is due at
/// `start + (k + phase) / per_sec`.
#[derive(Clone, Copy, Debug)]
struct Pace {
    start: Instant,
    per_sec: f64,
    /// Offset of this client's first write, in periods (0 ≤ phase < 1): clients staggered.
    phase: f64,
}

impl Pace {
    /// When write `k` is due.
    fn due_at(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64((k as f64 + self.phase) / self.per_sec)
    }

    /// How many writes are due strictly before `at`.
    fn due_before(&self, at: Instant) -> u64 {
        let periods = at.saturating_duration_since(self.start).as_secs_f64() * self.per_sec - self.phase;
        if periods <= 0.0 { 0 } else { periods.ceil() as u64 }
    }
}

/// Everything one client needs to write.
struct Writer {
    template: WriteTemplate,
    pool: Arc<Vec<Envelope>>,
    /// Record ids are `<prefix><n>`: run nonce, client (and worker) index, counter.
    prefix: String,
    log: Option<AckSender>,
    /// Acknowledged writes of every client so far (read by the sampler).
    acked: Arc<AtomicU64>,
}

impl Writer {
    fn record_id(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    fn envelope(&self, n: u64) -> &Envelope {
        &self.pool[(n % self.pool.len() as u64) as usize]
    }

    /// Counts write `n` acknowledged and logs it.
    fn acked(&self, n: u64) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &self.log {
            let _ = log.send(ack_line(
                self.template.owner_hex(),
                self.template.receiver_hex(),
                &self.record_id(n),
            ));
        }
    }
}

/// One client on a WebSocket session: unsigned write frames, at most `pipeline` in flight;
/// as fast as the answers come (closed loop), or on the schedule of `pace` (open loop).
async fn session_client(
    mut socket: Socket,
    writer: Writer,
    pipeline: usize,
    window: Window,
    pace: Option<Pace>,
) -> Result<Outcome> {
    let mut out = Outcome::new()?;
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(pipeline * 2);
    // Writes sent so far; write k (from 0) has frame id and record number k + 1.
    let mut n = 0u64;
    let capacity = writer.envelope(0).b64.len() + 512;
    'run: loop {
        let now = Instant::now();
        let sending = now < window.close;
        let mut fed = false;
        while sending && pending.len() < pipeline {
            if let Some(pace) = &pace {
                if pace.due_at(n) > now {
                    break;
                }
                out.sent_paced(pace, n, now);
            }
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
        // A paced client with a free slot wakes for its next write (or the window's end).
        let wake = match &pace {
            Some(pace) if sending && pending.len() < pipeline => {
                Some(tokio::time::Instant::from_std(pace.due_at(n).min(window.close)))
            }
            _ => None,
        };
        if pending.is_empty() && wake.is_none() {
            break;
        }
        let give_up = tokio::time::Instant::from_std(window.close.max(Instant::now()) + DRAIN);
        let received = tokio::select! {
            received = tokio::time::timeout_at(give_up, next_text(&mut socket)), if !pending.is_empty() => received,
            () = tokio::time::sleep_until(wake.unwrap_or(give_up)), if wake.is_some() => continue,
            else => break,
        };
        let text = match received {
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
                writer.acked(id);
            }
            Some(status) => count(&mut out.errors, error_kind(status, answer.body.map_or("", |b| b.get()))),
            None => count(&mut out.errors, "bad_frame"),
        }
    }
    if let Some(pace) = &pace {
        out.unsent = pace.due_before(window.close).saturating_sub(n);
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
    /// The worker's schedule under --rate.
    pace: Option<Pace>,
}

async fn http_worker(worker: HttpWorker, window: Window) -> Result<Outcome> {
    let mut out = Outcome::new()?;
    let writer = &worker.writer;
    let mut body = String::with_capacity(writer.envelope(0).b64.len() + 640);
    let mut n = 0u64;
    while Instant::now() < window.close {
        if let Some(pace) = &worker.pace {
            let due = pace.due_at(n);
            if due >= window.close {
                break;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            out.sent_paced(pace, n, Instant::now());
        }
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
                        writer.acked(n);
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
    if let Some(pace) = &worker.pace {
        out.unsent = pace.due_before(window.close).saturating_sub(n);
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

/// The open-loop schedule (`--rate`) and how well it was kept.
#[derive(Debug, Serialize)]
struct RateReport {
    /// Acknowledged writes per second asked for (`--rate`).
    target_per_sec: f64,
    /// Acknowledged writes per second in the window (= `writes_per_sec`).
    achieved_per_sec: f64,
    /// achieved / target.
    achieved_share: Option<f64>,
    /// Most writes in flight per client (per client and HTTP worker with --fresh-sessions).
    in_flight_cap: usize,
    /// Writes sent more than 10 ms after their scheduled moment (every slot of their client
    /// was taken, or the generator was short of CPU): the relay, or this generator, fell
    /// behind the schedule.
    late: u64,
    /// The longest a write waited past its scheduled moment, ms.
    max_lag_ms: f64,
    /// Writes due before the window closed that were never sent.
    unsent: u64,
}

/// The relay's memory and disk at one moment of the run.
#[derive(Debug, Clone, Copy, Serialize)]
struct RssSample {
    /// Seconds since the load started (the warmup included).
    t_s: f64,
    /// Resident set size (`VmRSS`), bytes.
    rss_bytes: Option<u64>,
    /// Bytes of the files under the relay's data directory.
    disk_bytes: Option<u64>,
    /// Live heap allocations as the relay reports them (`pigeonhole_heap_allocated_bytes` on
    /// its /metrics, refreshed every 5 s), bytes: what RSS holds beyond it is allocator slack.
    heap_allocated_bytes: Option<u64>,
    /// Writes acknowledged so far (warmup included).
    acked: u64,
}

/// Whether the relay's RSS grew over the window: medians of the samples in its quarters.
#[derive(Debug, Default, Serialize)]
struct RssGrowth {
    /// Samples in the measured window (after the warmup), which the quarters divide.
    samples: usize,
    /// Median RSS of the window's first quarter, bytes.
    q1_median_bytes: Option<u64>,
    /// Median RSS of the second quarter, bytes (the soak's baseline: caches filled).
    q2_median_bytes: Option<u64>,
    /// Median RSS of the last quarter, bytes.
    q4_median_bytes: Option<u64>,
    /// The largest RSS sampled in the window, bytes.
    max_bytes: Option<u64>,
    /// Median live heap (`heap_allocated_bytes`) of the second quarter, bytes.
    heap_q2_median_bytes: Option<u64>,
    /// Median live heap of the last quarter, bytes.
    heap_q4_median_bytes: Option<u64>,
    /// q4 median − q1 median, bytes.
    growth_q1_q4_bytes: Option<i64>,
    /// q4 median − q2 median, bytes.
    growth_q2_q4_bytes: Option<i64>,
    /// (q4 median − q2 median) / q2 median, percent.
    growth_q2_q4_pct: Option<f64>,
    /// Growth of the data directory over the window, bytes.
    disk_growth_bytes: Option<i64>,
}

impl RssGrowth {
    /// The quarters of the window `[warmup, warmup + seconds]` over `samples`.
    fn of(samples: &[RssSample], warmup: f64, seconds: f64) -> Self {
        let window: Vec<&RssSample> =
            samples.iter().filter(|s| s.t_s >= warmup - 1e-6 && s.t_s <= warmup + seconds + 1e-6).collect();
        let quarter = |q: usize, value: fn(&RssSample) -> Option<u64>| -> Option<u64> {
            median(
                window
                    .iter()
                    .filter(|s| (((s.t_s - warmup) / seconds * 4.0).floor().max(0.0) as usize).min(3) == q)
                    .filter_map(|s| value(s))
                    .collect(),
            )
        };
        let rss = |s: &RssSample| s.rss_bytes;
        let heap = |s: &RssSample| s.heap_allocated_bytes;
        let (q1, q2, q4) = (quarter(0, rss), quarter(1, rss), quarter(3, rss));
        let diff = |a: Option<u64>, b: Option<u64>| Some(a? as i64 - b? as i64);
        let disks: Vec<u64> = window.iter().filter_map(|s| s.disk_bytes).collect();
        Self {
            samples: window.len(),
            q1_median_bytes: q1,
            q2_median_bytes: q2,
            q4_median_bytes: q4,
            max_bytes: window.iter().filter_map(|s| s.rss_bytes).max(),
            heap_q2_median_bytes: quarter(1, heap),
            heap_q4_median_bytes: quarter(3, heap),
            growth_q1_q4_bytes: diff(q4, q1),
            growth_q2_q4_bytes: diff(q4, q2),
            growth_q2_q4_pct: match (diff(q4, q2), q2) {
                (Some(growth), Some(base)) if base > 0 => Some(round3(growth as f64 / base as f64 * 100.0)),
                _ => None,
            },
            disk_growth_bytes: diff(disks.last().copied(), disks.first().copied()),
        }
    }
}

/// The median (the lower middle of an even count), or `None` for no values.
fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len().checked_sub(1)? / 2).copied()
}

/// Where the relay's figures come from: its process, its data directory, its /metrics page.
struct RelayProbe {
    pid: Option<u32>,
    data: Option<PathBuf>,
    http: reqwest::Client,
    metrics_url: String,
}

/// Samples the relay every `every` from `start` until `close` (one last sample at `close`),
/// or until `stop` fires (one last sample then: the clients are done).
async fn sample_relay(
    probe: RelayProbe,
    acked: Arc<AtomicU64>,
    start: Instant,
    close: Instant,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<RssSample> {
    let mut samples = Vec::new();
    for k in 0u32.. {
        let mut at = (start + every * k).min(close);
        let stopped = tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => false,
            _ = &mut stop => true,
        };
        if stopped {
            at = Instant::now().min(close);
        }
        let rss_bytes = probe.pid.and_then(|pid| memory(pid).rss_kb).map(|kb| kb * 1024);
        let disk_bytes = match probe.data.clone() {
            Some(dir) => tokio::task::spawn_blocking(move || disk_bytes(&dir)).await.ok().flatten(),
            None => None,
        };
        let heap_allocated_bytes = heap_allocated(&probe.http, &probe.metrics_url).await;
        samples.push(RssSample {
            t_s: round3(at.duration_since(start).as_secs_f64()),
            rss_bytes,
            disk_bytes,
            heap_allocated_bytes,
            acked: acked.load(Ordering::Relaxed),
        });
        if stopped || at >= close {
            break;
        }
    }
    samples
}

/// The relay's live heap from its Prometheus page, if it reports one.
async fn heap_allocated(http: &reqwest::Client, metrics_url: &str) -> Option<u64> {
    let page = http.get(metrics_url).timeout(Duration::from_secs(5)).send().await.ok()?.text().await.ok()?;
    prometheus_value(&page, "pigeonhole_heap_allocated_bytes").map(|v| v as u64)
}

/// The value of an unlabelled sample `name` on a Prometheus text page.
fn prometheus_value(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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
    /// The open-loop schedule, with --rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<RateReport>,
    /// RSS over the window, with --sample-every.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_growth: Option<RssGrowth>,
    /// The samples, with --sample-every (in the human report, a table after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_samples: Option<Vec<RssSample>>,
}

/// `pigeonhole-bench ingest`.
pub(crate) async fn run(args: IngestArgs) -> Result<ExitCode> {
    if args.clients == 0 || args.pool == 0 {
        bail!("--clients and --pool must be at least 1");
    }
    let pipeline = pipeline(&args);
    if pipeline == 0 || pipeline > MAX_PIPELINE {
        bail!("--pipeline must be between 1 and {MAX_PIPELINE} (the relay's limit per connection)");
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 || args.warmup.is_nan() || args.warmup < 0.0 {
        bail!("--seconds must be positive and --warmup not negative");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of writes per second");
    }
    if args.sample_every.is_some_and(|s| !(s.is_finite() && s >= 0.05)) {
        bail!("--sample-every must be at least 0.05 seconds");
    }
    let relay = Relay::resolve(&args.relay).await?;
    if args.sample_every.is_some() && relay.pid.is_none() {
        eprintln!("warning: --sample-every without the relay's pid (--spawn or --relay-pid): no RSS samples");
    }
    let result = ingest(&args, &relay).await;
    let stopped = relay.stop().await;
    let mut report = result?;
    stopped?;
    let samples = if args.common.json { None } else { report.rss_samples.take() };
    crate::report::print(args.common.json, "ingest", &report)?;
    if let Some(samples) = samples {
        print_samples(&samples);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes in flight per client (or HTTP workers per client): --pipeline, else the default
/// of the mode.
fn pipeline(args: &IngestArgs) -> usize {
    args.pipeline.unwrap_or(if args.rate.is_some() && !args.fresh_sessions { RATE_PIPELINE } else { 1 })
}

/// The samples as a table, for people.
fn print_samples(samples: &[RssSample]) {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", v as f64 / MIB));
    println!("rss samples");
    println!("  {:>9}  {:>9}  {:>10}  {:>12}", "t_s", "rss_mib", "disk_mib", "acked");
    for s in samples {
        println!("  {:>9.1}  {:>9}  {:>10}  {:>12}", s.t_s, mib(s.rss_bytes), mib(s.disk_bytes), s.acked);
    }
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
        let pairs: Vec<(usize, usize)> = (0..keys.len()).map(|i| (i, 0)).collect();
        tokio::task::spawn_blocking(move || envelope_pools(&seed, &keys, &[receiver], &pairs, pool, size))
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
    let pipeline = pipeline(args);
    let log = args.acked_log.as_deref().map(AckLog::open).transpose()?;
    let acked = Arc::new(AtomicU64::new(0));
    let writer = |i: usize, worker: Option<usize>| Writer {
        template: WriteTemplate::new(keys[i].public_key(), receiver, args.ttl),
        pool: pools[i].clone(),
        prefix: match worker {
            Some(w) => format!("{nonce}-{i}-{w}-"),
            None => format!("{nonce}-{i}-"),
        },
        log: log.as_ref().map(AckLog::sender),
        acked: acked.clone(),
    };
    // Under --rate, each of `lanes` senders (clients, or HTTP workers) keeps `rate / lanes`
    // per second, lane `l` offset by `l / lanes` of a period; `start` is set when the run does.
    let lanes = if args.fresh_sessions { args.clients * pipeline } else { args.clients };
    let pace = |start: Instant, lane: usize| {
        args.rate.map(|rate| Pace { start, per_sec: rate / lanes as f64, phase: lane as f64 / lanes as f64 })
    };

    enum Prepared {
        Sessions(Vec<Socket>),
        Http(Vec<HttpWorker>),
    }
    let prepared = if args.fresh_sessions {
        let per_client = args.presign.unwrap_or_else(|| {
            let mut budget = verify.verify_per_sec * (args.warmup + args.seconds) * PRESIGN_SHARE;
            if let Some(rate) = args.rate {
                budget = budget.min(rate * (args.warmup + args.seconds) * 1.05 + pipeline as f64);
            }
            (budget / args.clients as f64).ceil() as usize
        });
        let per_worker = per_client.div_ceil(pipeline);
        let mut workers = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let client = reqwest::Client::builder()
                .timeout(DRAIN)
                .pool_max_idle_per_host(pipeline)
                .build()
                .context("building an HTTP client")?;
            for w in 0..pipeline {
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
                    pace: None,
                });
            }
        }
        let started = Instant::now();
        let workers = tokio::task::spawn_blocking(move || presign(workers, per_worker))
            .await
            .context("the signing threads")??;
        setup.presign_secs = Some(round3(started.elapsed().as_secs_f64()));
        setup.presigned_per_client = Some(per_worker * pipeline);
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
    let (stop_sampling, stop) = tokio::sync::oneshot::channel();
    let samples = args.sample_every.map(|every| {
        let probe = RelayProbe {
            pid,
            data: relay.data.clone(),
            http: http.clone(),
            metrics_url: format!("{}/metrics", relay.url),
        };
        tokio::spawn(sample_relay(
            probe,
            acked.clone(),
            start,
            window.close,
            Duration::from_secs_f64(every),
            stop,
        ))
    });
    let mut tasks = JoinSet::new();
    match prepared {
        Prepared::Sessions(sockets) => {
            for (i, socket) in sockets.into_iter().enumerate() {
                tasks.spawn(session_client(socket, writer(i, None), pipeline, window, pace(start, i)));
            }
        }
        Prepared::Http(workers) => {
            for (lane, mut worker) in workers.into_iter().enumerate() {
                worker.pace = pace(start, lane);
                tasks.spawn(http_worker(worker, window));
            }
        }
    }
    let mut total = Outcome::new()?;
    while let Some(done) = tasks.join_next().await {
        total.merge(done.context("a client task")??)?;
    }
    // Every client is done: at the window's end, or earlier if the relay went away.
    let _ = stop_sampling.send(());
    let rss_samples = match samples {
        Some(task) => Some(task.await.context("the relay sampler")?),
        None => None,
    };
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
    let rate = args.rate.map(|target| RateReport {
        target_per_sec: target,
        achieved_per_sec: writes_per_sec,
        achieved_share: ratio(writes_per_sec, target),
        in_flight_cap: pipeline,
        late: total.late,
        max_lag_ms: round3(total.max_lag_us as f64 / 1000.0),
        unsent: total.unsent,
    });
    if let Some(rate) = &rate
        && rate.achieved_share.is_some_and(|share| share < KEPT_UP)
    {
        eprintln!(
            "warning: the schedule was not kept: {} acknowledged writes/s of the {} asked for ({} writes \
             sent late, {} never sent); see cpu.relay_cores and cpu.bench_cores for which side was short",
            rate.achieved_per_sec, rate.target_per_sec, rate.late, rate.unsent
        );
    }
    let relay_cpu_secs = cpu.relay_cores.map(|c| c * cpu.seconds);
    if args.fresh_sessions {
        setup.signed_inline = Some(total.signed_inline);
    }
    Ok(Report {
        command: "ingest",
        mode: if args.fresh_sessions { "fresh-sessions" } else { "session" },
        relay_url: relay.url.clone(),
        clients: args.clients,
        pipeline,
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
        rate,
        rss_growth: rss_samples.as_deref().map(|s| RssGrowth::of(s, args.warmup, args.seconds)),
        rss_samples,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_spreads_writes_evenly_from_its_phase() {
        let start = Instant::now();
        let pace = Pace { start, per_sec: 100.0, phase: 0.5 };
        assert_eq!(pace.due_at(0), start + Duration::from_millis(5));
        assert_eq!(pace.due_at(10), start + Duration::from_millis(105));
        assert_eq!(pace.due_before(start), 0);
        assert_eq!(pace.due_before(start + Duration::from_millis(5)), 0, "due at 5 ms: not before it");
        assert_eq!(pace.due_before(start + Duration::from_millis(6)), 1);
        assert_eq!(pace.due_before(start + Duration::from_secs(1)), 100);
    }

    #[test]
    fn medians_take_the_lower_middle() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![7]), Some(7));
        assert_eq!(median(vec![9, 1, 5]), Some(5));
        assert_eq!(median(vec![4, 1, 3, 2]), Some(2));
    }

    #[test]
    fn prometheus_values_are_found_by_exact_name() {
        let page = "# TYPE pigeonhole_heap_allocated_bytes gauge\npigeonhole_heap_allocated_bytes_x 1\n\
                    pigeonhole_heap_allocated_bytes 4.2e7\npigeonhole_connections 3\n";
        assert_eq!(prometheus_value(page, "pigeonhole_heap_allocated_bytes"), Some(4.2e7));
        assert_eq!(prometheus_value(page, "pigeonhole_connections"), Some(3.0));
        assert_eq!(prometheus_value(page, "pigeonhole_heap_resident_bytes"), None);
    }

    #[test]
    fn rss_growth_compares_the_quarters_of_the_window() {
        // Warmup 10 s, window 40 s, a sample every 5 s: quarters of 10 s from t = 10.
        let samples: Vec<RssSample> = (0..=10u32)
            .map(|k| RssSample {
                t_s: f64::from(k) * 5.0,
                rss_bytes: Some(1000 + u64::from(k) * 10),
                disk_bytes: Some(u64::from(k) * 100),
                heap_allocated_bytes: (k % 2 == 0).then(|| u64::from(k) * 3),
                acked: u64::from(k),
            })
            .collect();
        let growth = RssGrowth::of(&samples, 10.0, 40.0);
        assert_eq!(growth.samples, 9, "t = 10 … 50");
        assert_eq!(growth.q1_median_bytes, Some(1020), "t = 10, 15");
        assert_eq!(growth.q2_median_bytes, Some(1040), "t = 20, 25");
        assert_eq!(growth.q4_median_bytes, Some(1090), "t = 40, 45, 50");
        assert_eq!(growth.max_bytes, Some(1100));
        assert_eq!(growth.growth_q1_q4_bytes, Some(70));
        assert_eq!(growth.growth_q2_q4_bytes, Some(50));
        assert_eq!(growth.growth_q2_q4_pct, Some(4.808));
        assert_eq!(growth.disk_growth_bytes, Some(800));
        assert_eq!(growth.heap_q2_median_bytes, Some(12), "only t = 20 reported a heap");
        assert_eq!(growth.heap_q4_median_bytes, Some(24), "t = 40, 50");
        let none = RssGrowth::of(&[], 10.0, 40.0);
        assert_eq!(none.heap_q4_median_bytes, None);
        assert_eq!((none.samples, none.q2_median_bytes, none.growth_q2_q4_pct), (0, None, None));
    }
}
