//! `deliver`: end-to-end delivery latency. W writers, each on its own WebSocket session, write
//! sealed records **open loop** at a fixed total rate to R receivers; each receiver holds one
//! WebSocket session with a `listen` on the outbox of every writer that writes to it. A
//! record's delivery latency runs from the instant its write frame was sent to the instant the
//! push carrying it arrived at its receiver: writers and receivers live in this one process
//! and share its monotonic clock, and every record id names its writer and its index in that
//! writer's [`Ledger`] of send instants.
//!
//! Open loop means that writes leave on a schedule (one tokio interval per writer, its ticks
//! staggered across writers), not when earlier writes are answered, so the offered load does
//! not fall when the relay slows down. A writer never waits for an ack before its next write;
//! it only refuses to have more than [`MAX_PIPELINE`] writes in flight (the relay's own limit
//! per connection), and counts the writes that cap made it skip.
//!
//! After the window the writers wait for their last acks, then the run waits (up to
//! `--drain`) until every acknowledged record has been pushed to its receiver. An
//! acknowledged record that never arrives is reported `missing`, and the command exits
//! non-zero.

use std::borrow::Cow;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::request::{Listen, Message, Request};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::calibrate::verify_rate_async;
use crate::client::{
    Answer, Closed, Envelope, Errors, Socket, Window, WriteTemplate, as_frame, count, derive_key,
    envelope_pools, error_kind, http_client, merge_errors, next_text, now_ms, open_session, register,
    relay_key, run_nonce,
};
use crate::ingest::MAX_PIPELINE;
use crate::proc::{CpuSnapshot, CpuWindow, RelaySample, round3};
use crate::report::{Latency, growth_per, latency_histogram, ratio};
use crate::spawn::Relay;
use crate::{CommonArgs, RelayArgs};

/// How long writers wait for the answers still in flight after the window closes.
const ACK_DRAIN: Duration = Duration::from_secs(30);
/// How long receivers may take to open their sessions and have every listen answered.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Listens one connection may hold (the relay's `MAX_SUBSCRIPTIONS`).
const MAX_LISTENS: usize = 64;
/// Close code of a listener that fell behind (spec §11.5): resume after the cursor.
const CLOSE_BEHIND: u16 = 4008;
/// How often the drain checks whether every acknowledged record has arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Missing record ids shown in the report, at most.
const MISSING_EXAMPLES: usize = 5;

/// Which receivers a writer writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Pattern {
    /// Writer w's n-th write goes to receiver (w + n) mod R: every receiver listens to every
    /// writer (W listens per receiver, W × R in all; W at most 64).
    RoundRobin,
    /// Writer w writes only to receiver w mod R: each receiver listens to about W / R writers
    /// (R at most W).
    Fixed,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::Fixed => "fixed",
        }
    }

    /// The receivers writer `w` writes to, in the order of its writes.
    fn targets(self, w: usize, receivers: usize) -> Vec<usize> {
        match self {
            Self::RoundRobin => (0..receivers).map(|k| (w + k) % receivers).collect(),
            Self::Fixed => vec![w % receivers],
        }
    }

    /// The writers receiver `r` listens to.
    fn sources(self, r: usize, writers: usize, receivers: usize) -> Vec<usize> {
        match self {
            Self::RoundRobin => (0..writers).collect(),
            Self::Fixed => (0..writers).filter(|w| w % receivers == r).collect(),
        }
    }
}

/// `deliver` options.
#[derive(Args, Debug)]
pub(crate) struct DeliverArgs {
    /// Writes per second asked of all writers together, spread evenly over them (each writer
    /// ticks every WRITERS / N seconds). Open loop: a write leaves at its tick whether or not
    /// earlier ones were answered. Find the relay's maximum with `ingest` first; the target
    /// (delivery p99 under 25 ms) is judged at half of it.
    #[arg(long, value_name = "N")]
    rate: f64,

    /// Writers, each its own identity on its own WebSocket session.
    #[arg(long, default_value_t = 16, value_name = "W")]
    writers: usize,

    /// Receivers, each its own identity on one WebSocket session holding its listens.
    #[arg(long, default_value_t = 16, value_name = "R")]
    receivers: usize,

    /// Which receivers each writer writes to.
    #[arg(long, value_enum, default_value_t = Pattern::RoundRobin)]
    pattern: Pattern,

    /// Seconds measured, after the warmup.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    seconds: f64,

    /// Seconds of load before the measured window (those records are delivered and checked,
    /// but their latencies are not counted).
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    warmup: f64,

    /// Bytes of letter text per record (1024 gives a 1380-byte sealed envelope).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    size: usize,

    /// Longest wait, after the last ack, for acknowledged records still to be pushed; the
    /// run moves on as soon as all have arrived. Those still missing then are reported.
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    drain: f64,

    /// Distinct sealed envelopes per (writer, receiver) pair, reused under fresh record ids.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pool: usize,

    /// TTL of the records, seconds.
    #[arg(long, default_value_t = 86_400, value_name = "SECS")]
    ttl: u32,

    #[command(flatten)]
    relay: RelayArgs,

    #[command(flatten)]
    common: CommonArgs,
}

// A record belongs to the measured window when its write was sent inside it; its ack and its
// push may come later.

/// The write was acknowledged (200 or 201).
const ACKED: u8 = 1;
/// The write was refused.
const REFUSED: u8 = 2;
/// The record was pushed to its receiver.
const DELIVERED: u8 = 4;

/// One writer's slots, indexed by the write's number.
struct Slots {
    /// Nanoseconds after [`Ledger::base`] at which the write was sent, plus one (0: not sent).
    sent: Vec<AtomicU64>,
    /// [`ACKED`], [`REFUSED`], [`DELIVERED`].
    flags: Vec<AtomicU8>,
}

/// Shared by writers and receivers: when each write was sent and what became of it. Record
/// ids are `<nonce>-<writer>-<n>`, so a receiver finds a record's slot from its id alone.
struct Ledger {
    base: Instant,
    /// `<nonce>-`: ids without it belong to another run.
    prefix: String,
    writers: Vec<Slots>,
    /// The measured window, set when the writers start.
    window: OnceLock<Window>,
}

/// What the ledger holds at the end.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    acked: u64,
    delivered: u64,
    missing: u64,
    /// Delivered although no ack came (unanswered writes that were stored anyway).
    delivered_unacked: u64,
    missing_examples: Vec<String>,
}

impl Ledger {
    fn new(writers: usize, capacity: usize) -> Self {
        let slots = || Slots {
            sent: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            flags: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
        };
        Self {
            base: Instant::now(),
            prefix: format!("{}-", run_nonce()),
            writers: (0..writers).map(|_| slots()).collect(),
            window: OnceLock::new(),
        }
    }

    /// Whether a write sent at `at` belongs to the measured window.
    fn in_window(&self, at: Instant) -> bool {
        self.window.get().is_some_and(|w| w.contains(at))
    }

    fn capacity(&self) -> usize {
        self.writers.first().map_or(0, |s| s.sent.len())
    }

    fn record_id(&self, w: usize, n: usize) -> String {
        format!("{}{w}-{n}", self.prefix)
    }

    /// The writer and write number of a record id of this run, if it is one.
    fn parse(&self, record_id: &str) -> Option<(usize, usize)> {
        let (w, n) = record_id.strip_prefix(&self.prefix)?.split_once('-')?;
        let (w, n) = (w.parse::<usize>().ok()?, n.parse::<usize>().ok()?);
        (w < self.writers.len() && n < self.capacity()).then_some((w, n))
    }

    fn mark_sent(&self, w: usize, n: usize, at: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1);
        if let Some(slot) = self.writers.get(w).and_then(|s| s.sent.get(n)) {
            slot.store(nanos + 1, Ordering::Release);
        }
    }

    fn sent_at(&self, w: usize, n: usize) -> Option<Instant> {
        let nanos = self.writers.get(w)?.sent.get(n)?.load(Ordering::Acquire);
        (nanos > 0).then(|| self.base + Duration::from_nanos(nanos - 1))
    }

    /// Sets `flag` on write `n` of writer `w`; the flags it had before.
    fn flag(&self, w: usize, n: usize, flag: u8) -> u8 {
        self.writers.get(w).and_then(|s| s.flags.get(n)).map_or(0, |f| f.fetch_or(flag, Ordering::AcqRel))
    }

    /// Acknowledged records not delivered yet.
    fn missing(&self) -> u64 {
        self.writers
            .iter()
            .flat_map(|s| s.flags.iter())
            .filter(|f| f.load(Ordering::Acquire) & (ACKED | DELIVERED) == ACKED)
            .count() as u64
    }

    fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for (w, slots) in self.writers.iter().enumerate() {
            for (n, (sent, flags)) in slots.sent.iter().zip(&slots.flags).enumerate() {
                if sent.load(Ordering::Acquire) == 0 {
                    continue;
                }
                let flags = flags.load(Ordering::Acquire);
                tally.sent += 1;
                let (acked, delivered) = (flags & ACKED != 0, flags & DELIVERED != 0);
                tally.acked += u64::from(acked);
                tally.delivered += u64::from(delivered);
                tally.delivered_unacked += u64::from(delivered && !acked);
                if acked && !delivered {
                    tally.missing += 1;
                    if tally.missing_examples.len() < MISSING_EXAMPLES {
                        tally.missing_examples.push(self.record_id(w, n));
                    }
                }
            }
        }
        tally
    }
}

/// Where one writer's writes go: a receiver's write template and envelopes sealed to it.
struct Target {
    template: WriteTemplate,
    pool: Arc<Vec<Envelope>>,
}

/// What one writer saw.
struct WriterOutcome {
    /// Send to ack, writes sent in the window.
    ack: Histogram<u64>,
    /// Scheduled tick to actual send, writes sent in the window.
    lag: Histogram<u64>,
    sent_in_window: u64,
    acked_in_window: u64,
    refused: u64,
    unanswered: u64,
    skipped: u64,
    errors: Errors,
}

impl WriterOutcome {
    fn new() -> Result<Self> {
        Ok(Self {
            ack: latency_histogram()?,
            lag: latency_histogram()?,
            sent_in_window: 0,
            acked_in_window: 0,
            refused: 0,
            unanswered: 0,
            skipped: 0,
            errors: Errors::new(),
        })
    }

    fn merge(&mut self, other: Self) -> Result<()> {
        self.ack.add(&other.ack).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        self.lag.add(&other.lag).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        self.sent_in_window += other.sent_in_window;
        self.acked_in_window += other.acked_in_window;
        self.refused += other.refused;
        self.unanswered += other.unanswered;
        self.skipped += other.skipped;
        merge_errors(&mut self.errors, other.errors);
        Ok(())
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The schedule of one writer.
#[derive(Clone, Copy)]
struct Schedule {
    first_tick: Instant,
    period: Duration,
    window: Window,
}

/// One writer: a write frame at every tick until the window closes (never more than
/// [`MAX_PIPELINE`] in flight), answers read as they come, then the last answers awaited.
async fn writer(
    socket: Socket,
    w: usize,
    targets: Vec<Target>,
    ledger: Arc<Ledger>,
    schedule: Schedule,
) -> Result<WriterOutcome> {
    let mut out = WriterOutcome::new()?;
    let window = schedule.window;
    let (mut sink, mut stream): (SplitSink<Socket, WsMessage>, SplitStream<Socket>) = socket.split();
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::from_std(schedule.first_tick), schedule.period);
    // Ticks missed while the generator was busy fire at once: the rate asked is kept.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let give_up = tokio::time::Instant::from_std(window.close + ACK_DRAIN);
    let capacity = ledger.capacity();
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(MAX_PIPELINE * 2);
    let mut n = 0usize;
    let mut sending = true;
    while sending || !pending.is_empty() {
        tokio::select! {
            tick = ticks.tick(), if sending => {
                let scheduled = tick.into_std();
                if scheduled >= window.close || n >= capacity {
                    sending = false;
                    continue;
                }
                if pending.len() >= MAX_PIPELINE {
                    out.skipped += 1;
                    continue;
                }
                let Some(target) = targets.get(n % targets.len().max(1)) else { bail!("writer {w} has no receiver") };
                let envelope = &target.pool[n % target.pool.len()];
                let mut frame = String::with_capacity(envelope.b64.len() + 512);
                let id = n as u64 + 1;
                target.template.session_frame(&mut frame, id, now_ms(), &ledger.record_id(w, n), &envelope.b64);
                let at = Instant::now();
                ledger.mark_sent(w, n, at);
                n += 1;
                if sink.send(WsMessage::Text(frame.into())).await.is_err() {
                    count(&mut out.errors, "ws_send_failed");
                    out.unanswered += pending.len() as u64 + 1;
                    pending.clear();
                    break;
                }
                pending.insert(id, at);
                if window.contains(at) {
                    out.sent_in_window += 1;
                    out.lag.saturating_record(micros(at.saturating_duration_since(scheduled)));
                }
            }
            text = next_text(&mut stream) => {
                let text = match text {
                    Some(Ok(text)) => text,
                    other => {
                        count(&mut out.errors, match other {
                            Some(Err(Closed { code: Some(code), .. })) => format!("ws_closed {code}"),
                            _ => "ws_connection_lost".to_owned(),
                        });
                        out.unanswered += pending.len() as u64;
                        pending.clear();
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
                let slot = (id - 1) as usize;
                match answer.status {
                    Some(200 | 201) => {
                        ledger.flag(w, slot, ACKED);
                        if window.contains(sent_at) {
                            out.acked_in_window += 1;
                            out.ack.saturating_record(micros(at.duration_since(sent_at)));
                        }
                    }
                    Some(status) => {
                        ledger.flag(w, slot, REFUSED);
                        out.refused += 1;
                        count(&mut out.errors, error_kind(status, answer.body.map_or("", |b| b.get())));
                    }
                    None => count(&mut out.errors, "bad_frame"),
                }
            }
            () = tokio::time::sleep_until(give_up), if !sending => {
                count(&mut out.errors, "ws_answer_timeout");
                out.unanswered += pending.len() as u64;
                pending.clear();
            }
        }
    }
    let _ = sink.close().await;
    Ok(out)
}

/// A frame on a receiver's session: an answer (`id`) or a push (`sub`).
#[derive(Deserialize)]
struct Frame<'a> {
    id: Option<u64>,
    status: Option<u16>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    sub: Option<u64>,
    #[serde(borrow)]
    records: Option<Vec<Pushed<'a>>>,
    cursor: Option<u64>,
}

/// The part of a pushed record this command reads.
#[derive(Deserialize)]
struct Pushed<'a> {
    #[serde(rename = "recordId", borrow)]
    record_id: Cow<'a, str>,
}

/// A listen's answer.
#[derive(Deserialize)]
struct Subscribed {
    cursor: u64,
}

/// What one receiver saw.
struct ReceiverOutcome {
    /// Send to push, records sent in the window.
    delivery: Histogram<u64>,
    delivered_in_window: u64,
    duplicates: u64,
    foreign: u64,
    pushes: u64,
    resumes: u64,
    errors: Errors,
}

/// One receiver: its identity and the writers whose outboxes it listens to.
struct ReceiverPlan {
    index: usize,
    key: SecretKey,
    /// (writer index, writer key); the listen for sources[i] has frame id i + 1.
    sources: Vec<(usize, PublicKey)>,
}

/// Opens a session as the receiver and sends one listen per source: after its cursor when
/// one is known (a resume), else after `start_ts` (records stored before the run are skipped).
async fn listen_all(
    url: &str,
    relay: PublicKey,
    plan: &ReceiverPlan,
    cursors: &[Option<u64>],
    start_ts: u64,
) -> Result<Socket> {
    let mut socket = open_session(url, relay, &plan.key).await?;
    for (i, (_, owner)) in plan.sources.iter().enumerate() {
        let after_seq = cursors.get(i).copied().flatten();
        let listen = Message {
            from: plan.key.public_key(),
            to: relay,
            timestamp: crate::client::fresh_ts(),
            request: Request::Listen(Listen {
                owner: *owner,
                receiver: plan.key.public_key(),
                after_ts: after_seq.is_none().then_some(start_ts),
                after_seq,
            }),
        };
        socket
            .feed(WsMessage::Text(as_frame(i as u64 + 1, &listen.to_json()).into()))
            .await
            .context("sending a listen")?;
    }
    socket.flush().await.context("sending the listens")?;
    Ok(socket)
}

/// Everything a receiver task needs besides its plan.
struct ReceiverContext {
    url: String,
    relay: PublicKey,
    ledger: Arc<Ledger>,
    start_ts: u64,
    /// Told once every listen of the first session is answered.
    ready: mpsc::Sender<usize>,
    stop: watch::Receiver<bool>,
}

/// One receiver: listens until told to stop, resuming from its cursors when the relay closes
/// it for falling behind, and marks every record pushed to it delivered.
async fn receiver(plan: ReceiverPlan, mut cx: ReceiverContext) -> Result<ReceiverOutcome> {
    let mut out = ReceiverOutcome {
        delivery: latency_histogram()?,
        delivered_in_window: 0,
        duplicates: 0,
        foreign: 0,
        pushes: 0,
        resumes: 0,
        errors: Errors::new(),
    };
    let mut cursors: Vec<Option<u64>> = vec![None; plan.sources.len()];
    let mut socket = listen_all(&cx.url, cx.relay, &plan, &cursors, cx.start_ts)
        .await
        .with_context(|| format!("receiver {}", plan.index))?;
    let mut unanswered = plan.sources.len();
    let mut ready = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = cx.stop.changed() => break,
            next = next_text(&mut socket) => next,
        };
        let at = Instant::now();
        let text = match next {
            Some(Ok(text)) => text,
            Some(Err(closed)) if closed.code == Some(CLOSE_BEHIND) => {
                // Everything queued before the close was sent: the cursors are exact.
                out.resumes += 1;
                socket = listen_all(&cx.url, cx.relay, &plan, &cursors, cx.start_ts).await?;
                unanswered = plan.sources.len();
                continue;
            }
            other => {
                let kind = match other {
                    Some(Err(Closed { code: Some(code), .. })) => format!("listener closed {code}"),
                    _ => "listener connection lost".to_owned(),
                };
                if !ready {
                    bail!("receiver {}: {kind} before its listens were answered", plan.index);
                }
                count(&mut out.errors, kind);
                break;
            }
        };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
            count(&mut out.errors, "bad_push");
            continue;
        };
        if let Some(id) = frame.id {
            let i = (id as usize).wrapping_sub(1);
            let body = frame.body.map_or("", |b| b.get());
            match (frame.status, cursors.get_mut(i)) {
                (Some(200), Some(cursor)) => {
                    let subscribed: Subscribed =
                        serde_json::from_str(body).with_context(|| format!("listen answer {body}"))?;
                    cursor.get_or_insert(subscribed.cursor);
                    unanswered = unanswered.saturating_sub(1);
                    if unanswered == 0 && !ready {
                        ready = true;
                        let _ = cx.ready.send(plan.index).await;
                    }
                }
                (Some(status), _) if !ready => {
                    bail!("receiver {}: listen refused: {}", plan.index, error_kind(status, body));
                }
                (Some(status), _) => count(&mut out.errors, format!("listen {}", error_kind(status, body))),
                (None, _) => count(&mut out.errors, "bad_push"),
            }
            continue;
        }
        let (Some(sub), Some(records)) = (frame.sub, frame.records) else {
            count(&mut out.errors, "bad_push");
            continue;
        };
        out.pushes += 1;
        if let (Some(cursor), Some(next)) = (cursors.get_mut((sub as usize).wrapping_sub(1)), frame.cursor) {
            *cursor = Some(next);
        }
        for record in records {
            let Some((w, n)) = cx.ledger.parse(&record.record_id) else {
                out.foreign += 1;
                continue;
            };
            if cx.ledger.flag(w, n, DELIVERED) & DELIVERED != 0 {
                out.duplicates += 1;
                continue;
            }
            match cx.ledger.sent_at(w, n) {
                Some(sent) if cx.ledger.in_window(sent) => {
                    out.delivered_in_window += 1;
                    out.delivery.saturating_record(micros(at.saturating_duration_since(sent)));
                }
                Some(_) => {}
                None => count(&mut out.errors, "delivered_before_sent"),
            }
        }
    }
    let _ = socket.close(None).await;
    Ok(out)
}

/// How the run was prepared (not measured).
#[derive(Debug, Default, Serialize)]
struct Setup {
    /// Seconds spent sealing the envelope pools.
    pool_secs: f64,
    /// Seconds spent registering the writers.
    register_secs: f64,
    /// Seconds spent opening the writers' sessions.
    sessions_secs: f64,
    /// Seconds from starting the receivers to every listen answered.
    subscribe_secs: f64,
}

#[derive(Serialize)]
struct Report {
    command: &'static str,
    relay_url: String,
    pattern: &'static str,
    writers: usize,
    receivers: usize,
    /// Listens held in all (one per writer a receiver hears from).
    listens: usize,
    seconds: f64,
    warmup: f64,
    size: usize,
    envelope_bytes: usize,
    /// Writes per second asked (--rate).
    rate: f64,
    /// Writes sent per second in the window: below `rate` when writes were skipped at the
    /// in-flight cap.
    sent_per_sec: f64,
    /// Acknowledged writes per second (of the writes sent in the window).
    writes_per_sec: f64,
    /// Records pushed to their receivers per second (of the writes sent in the window).
    delivered_per_sec: f64,
    /// A write's send to its record's push at the receiver, writes sent in the window.
    delivery_latency: Latency,
    /// A write's send to its ack.
    ack_latency: Latency,
    /// A write's scheduled tick to its actual send: the generator's own delay (large values
    /// mean it could not keep the schedule, and latencies from send understate the wait).
    send_lag: Latency,
    /// Writes sent, warmup included.
    written: u64,
    /// Writes acknowledged, warmup included.
    acked: u64,
    /// Records pushed to their receivers, warmup included.
    delivered: u64,
    /// Acknowledged records never pushed to their receiver (after the drain): must be 0.
    missing: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing_examples: Vec<String>,
    /// Writes refused by the relay (see `errors`).
    refused: u64,
    /// Writes whose answer never came (connection lost, timeout).
    unanswered: u64,
    /// Delivered although unanswered (stored before the answer was lost).
    delivered_unacked: u64,
    /// Ticks skipped because MAX_PIPELINE writes were already in flight on the connection.
    skipped: u64,
    /// Records pushed twice.
    duplicates: u64,
    /// Pushed records of another run (same seed, other nonce).
    foreign: u64,
    pushes: u64,
    /// Times a receiver was closed for falling behind and resumed from its cursors.
    resumes: u64,
    /// Seconds waited after the last ack until every acknowledged record had arrived.
    drain_secs: f64,
    errors: Errors,
    /// Mean of the single-core verify rates measured (1 s each) just before and just after
    /// the run.
    verify_per_sec: f64,
    verify_before: f64,
    verify_after: f64,
    /// writes_per_sec / verify_per_sec.
    writes_per_verify: Option<f64>,
    /// delivered_per_sec / verify_per_sec.
    delivered_per_verify: Option<f64>,
    /// Acknowledged writes per second of relay CPU time in the window.
    writes_per_relay_cpu_sec: Option<f64>,
    cpu: CpuWindow,
    relay_before: RelaySample,
    relay_after: RelaySample,
    /// Growth of the data directory per acknowledged write (records, read counts, usage log).
    disk_bytes_per_write: Option<f64>,
    setup: Setup,
}

/// `pigeonhole-bench deliver`.
pub(crate) async fn run(args: DeliverArgs) -> Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of writes per second");
    }
    if args.writers == 0 || args.receivers == 0 || args.pool == 0 {
        bail!("--writers, --receivers and --pool must be at least 1");
    }
    match args.pattern {
        Pattern::RoundRobin if args.writers > MAX_LISTENS => bail!(
            "with --pattern round-robin every receiver listens to every writer, and a connection \
             holds at most {MAX_LISTENS} listens: use at most {MAX_LISTENS} writers, or --pattern fixed"
        ),
        Pattern::Fixed if args.receivers > args.writers => {
            bail!("with --pattern fixed each receiver needs a writer: --receivers must not exceed --writers")
        }
        Pattern::Fixed if args.writers.div_ceil(args.receivers) > MAX_LISTENS => bail!(
            "with --pattern fixed a receiver listens to WRITERS / RECEIVERS writers, at most {MAX_LISTENS}"
        ),
        _ => {}
    }
    if !(args.seconds > 0.0 && args.warmup >= 0.0 && args.drain >= 0.0) {
        bail!("--seconds must be positive, --warmup and --drain not negative");
    }
    let relay = Relay::resolve(&args.relay).await?;
    let result = deliver(&args, &relay).await;
    let stopped = relay.stop().await;
    let report = result?;
    stopped?;
    let title = format!(
        "deliver: written {}, acked {}, delivered {}, missing {}",
        report.written, report.acked, report.delivered, report.missing
    );
    crate::report::print(args.common.json, &title, &report)?;
    if report.missing > 0 {
        eprintln!(
            "error: {} acknowledged records were never pushed to their receiver (within --drain {} s after \
             the last ack), e.g. {:?}",
            report.missing, args.drain, report.missing_examples
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn deliver(args: &DeliverArgs, relay: &Relay) -> Result<Report> {
    let http = http_client()?;
    let relay_pk = relay_key(&http, &relay.url).await?;
    let before = RelaySample::take(relay.pid, relay.data.as_deref());
    let verify = verify_rate_async(1.0).await?;
    let seed = args.common.seed.clone();
    let mut setup = Setup::default();

    // Identities, who writes to whom, and envelopes, all before the clock starts.
    let writer_keys: Vec<SecretKey> =
        (0..args.writers as u64).map(|i| derive_key(&seed, "deliver-writer", i)).collect();
    let receiver_keys: Vec<SecretKey> =
        (0..args.receivers as u64).map(|i| derive_key(&seed, "deliver-receiver", i)).collect();
    let receiver_pks: Vec<PublicKey> = receiver_keys.iter().map(SecretKey::public_key).collect();
    let targets: Vec<Vec<usize>> =
        (0..args.writers).map(|w| args.pattern.targets(w, args.receivers)).collect();
    let pairs: Vec<(usize, usize)> =
        targets.iter().enumerate().flat_map(|(w, rs)| rs.iter().map(move |&r| (w, r))).collect();
    let started = Instant::now();
    let pools = {
        let (seed, keys, pks, pairs) =
            (seed.clone(), writer_keys.clone(), receiver_pks.clone(), pairs.clone());
        let (count, size) = (args.pool, args.size);
        tokio::task::spawn_blocking(move || envelope_pools(&seed, &keys, &pks, &pairs, count, size))
            .await
            .context("the sealing threads")??
    };
    setup.pool_secs = round3(started.elapsed().as_secs_f64());
    let envelope_bytes = pools.first().and_then(|p| p.first()).map_or(0, |e| e.bytes.len());
    let mut pools: HashMap<(usize, usize), Arc<Vec<Envelope>>> =
        pairs.iter().copied().zip(pools.into_iter().map(Arc::new)).collect();

    let started = Instant::now();
    let mut registrations = JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    for key in &writer_keys {
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

    let started = Instant::now();
    let mut opening = JoinSet::new();
    for (w, key) in writer_keys.iter().enumerate() {
        let (url, key) = (relay.url.clone(), key.clone());
        opening.spawn(async move { (w, open_session(&url, relay_pk, &key).await) });
    }
    let mut sockets: Vec<Option<Socket>> = (0..args.writers).map(|_| None).collect();
    while let Some(done) = opening.join_next().await {
        let (w, socket) = done.context("a session task")?;
        sockets[w] = Some(socket.with_context(|| format!("opening the session of writer {w}"))?);
    }
    setup.sessions_secs = round3(started.elapsed().as_secs_f64());

    // Every write of writer w gets a slot: as many as its ticks in warmup + window, and two
    // to spare for rounding.
    let per_writer_rate = args.rate / args.writers as f64;
    let capacity = ((args.warmup + args.seconds) * per_writer_rate).ceil() as usize + 2;
    let ledger = Arc::new(Ledger::new(args.writers, capacity));

    // Receivers: every listen answered before the first write leaves. The listens start after
    // `start_ts` (relay time of storage), which skips what earlier runs left in the outboxes.
    let started = Instant::now();
    let start_ts = now_ms();
    let (ready_tx, mut ready_rx) = mpsc::channel(args.receivers);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut listens = 0;
    let plans: Vec<ReceiverPlan> = receiver_keys
        .iter()
        .enumerate()
        .map(|(r, key)| {
            let sources: Vec<(usize, PublicKey)> = args
                .pattern
                .sources(r, args.writers, args.receivers)
                .into_iter()
                .map(|w| (w, writer_keys[w].public_key()))
                .collect();
            listens += sources.len();
            ReceiverPlan { index: r, key: key.clone(), sources }
        })
        .collect();
    let mut receivers = JoinSet::new();
    for plan in plans {
        let cx = ReceiverContext {
            url: relay.url.clone(),
            relay: relay_pk,
            ledger: ledger.clone(),
            start_ts,
            ready: ready_tx.clone(),
            stop: stop_rx.clone(),
        };
        receivers.spawn(receiver(plan, cx));
    }
    drop(ready_tx);
    let mut answered = 0;
    let setup_deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while answered < args.receivers {
        tokio::select! {
            ready = ready_rx.recv() => match ready {
                Some(_) => answered += 1,
                None => bail!("the receivers stopped before their listens were answered"),
            },
            Some(done) = receivers.join_next() => {
                done.context("a receiver task")??;
                bail!("a receiver stopped before the run started");
            }
            () = tokio::time::sleep_until(setup_deadline) => {
                bail!("the receivers' listens were not all answered within {SETUP_TIMEOUT:?}");
            }
        }
    }
    setup.subscribe_secs = round3(started.elapsed().as_secs_f64());

    // The run: warmup, then the measured window; CPU sampled at its edges.
    let period = Duration::from_secs_f64(1.0 / per_writer_rate).max(Duration::from_micros(1));
    let start = Instant::now() + Duration::from_millis(10);
    let window = Window {
        open: start + Duration::from_secs_f64(args.warmup),
        close: start + Duration::from_secs_f64(args.warmup + args.seconds),
    };
    if ledger.window.set(window).is_err() {
        bail!("the window was set twice");
    }
    let pid = relay.pid;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(window.open)).await;
        let first = CpuSnapshot::take(pid);
        tokio::time::sleep_until(tokio::time::Instant::from_std(window.close)).await;
        (first, CpuSnapshot::take(pid))
    });
    let mut writers = JoinSet::new();
    for (w, socket) in sockets.into_iter().enumerate() {
        let Some(socket) = socket else { bail!("writer {w} has no session") };
        let mut writer_targets = Vec::new();
        for &r in &targets[w] {
            let pool = pools.remove(&(w, r)).context("a pool per (writer, receiver) pair")?;
            let template = WriteTemplate::new(writer_keys[w].public_key(), receiver_pks[r], args.ttl);
            writer_targets.push(Target { template, pool });
        }
        // Ticks staggered across writers, so that the total rate is smooth.
        let first_tick = start + period.mul_f64(w as f64 / args.writers as f64);
        let schedule = Schedule { first_tick, period, window };
        writers.spawn(writer(socket, w, writer_targets, ledger.clone(), schedule));
    }
    let mut written = WriterOutcome::new()?;
    while let Some(done) = writers.join_next().await {
        written.merge(done.context("a writer task")??)?;
    }
    let (first, last) = if Instant::now() >= window.close {
        sampler.await.context("the CPU sampler")?
    } else {
        // Every writer stopped early (e.g. the relay died): the window is cut short.
        sampler.abort();
        (CpuSnapshot::take(pid), CpuSnapshot::take(pid))
    };
    let cpu = CpuWindow::between(&first, &last);

    // Drain: wait until every acknowledged record has been pushed, or --drain has passed.
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs_f64(args.drain);
    while ledger.missing() > 0 && Instant::now() < drain_deadline && !receivers.is_empty() {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drain_secs = round3(drain_started.elapsed().as_secs_f64());
    let _ = stop_tx.send(true);
    let mut delivery = latency_histogram()?;
    let (mut delivered_in_window, mut duplicates, mut foreign, mut pushes, mut resumes) = (0, 0, 0, 0, 0);
    let mut errors = written.errors.clone();
    while let Some(done) = receivers.join_next().await {
        match done.context("a receiver task")? {
            Ok(got) => {
                delivery.add(&got.delivery).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
                delivered_in_window += got.delivered_in_window;
                duplicates += got.duplicates;
                foreign += got.foreign;
                pushes += got.pushes;
                resumes += got.resumes;
                merge_errors(&mut errors, got.errors);
            }
            Err(error) => count(&mut errors, format!("receiver failed: {error:#}")),
        }
    }
    let after = RelaySample::take(relay.pid, relay.data.as_deref());
    let verify_after = verify_rate_async(1.0).await?;
    let verify_per_sec = ((verify.verify_per_sec + verify_after.verify_per_sec) / 2.0).round();
    let tally = ledger.tally();

    if errors.keys().any(|k| k.starts_with("429")) && !relay.is_spawned() {
        eprintln!(
            "warning: the relay rate-limited this benchmark (429 answers): the figures measure its limits \
             (limits.requests_per_sec_per_ip, limits.writes_per_sec_per_account), not its speed. Use \
             --spawn, or raise them on the relay."
        );
    }
    if written.skipped > 0 {
        eprintln!(
            "warning: {} writes were skipped because {MAX_PIPELINE} writes were already in flight on their \
             connection: the relay did not keep up with --rate {}",
            written.skipped, args.rate
        );
    }
    let per_sec = |n: u64| (n as f64 / args.seconds).round();
    let writes_per_sec = per_sec(written.acked_in_window);
    let delivered_per_sec = per_sec(delivered_in_window);
    let relay_cpu_secs = cpu.relay_cores.map(|c| c * cpu.seconds);
    Ok(Report {
        command: "deliver",
        relay_url: relay.url.clone(),
        pattern: args.pattern.name(),
        writers: args.writers,
        receivers: args.receivers,
        listens,
        seconds: args.seconds,
        warmup: args.warmup,
        size: args.size,
        envelope_bytes,
        rate: args.rate,
        sent_per_sec: per_sec(written.sent_in_window),
        writes_per_sec,
        delivered_per_sec,
        delivery_latency: Latency::of(&delivery),
        ack_latency: Latency::of(&written.ack),
        send_lag: Latency::of(&written.lag),
        written: tally.sent,
        acked: tally.acked,
        delivered: tally.delivered,
        missing: tally.missing,
        missing_examples: tally.missing_examples,
        refused: written.refused,
        unanswered: written.unanswered,
        delivered_unacked: tally.delivered_unacked,
        skipped: written.skipped,
        duplicates,
        foreign,
        pushes,
        resumes,
        drain_secs,
        errors,
        verify_per_sec,
        verify_before: verify.verify_per_sec,
        verify_after: verify_after.verify_per_sec,
        writes_per_verify: ratio(writes_per_sec, verify_per_sec),
        delivered_per_verify: ratio(delivered_per_sec, verify_per_sec),
        writes_per_relay_cpu_sec: relay_cpu_secs
            .and_then(|secs| ratio(written.acked_in_window as f64, secs))
            .map(f64::round),
        cpu,
        relay_before: before,
        relay_after: after,
        disk_bytes_per_write: growth_per(before.disk_bytes, after.disk_bytes, tally.acked),
        setup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_pair_writers_and_receivers_both_ways() {
        for pattern in [Pattern::RoundRobin, Pattern::Fixed] {
            let (writers, receivers) = (6, 4);
            for w in 0..writers {
                for r in pattern.targets(w, receivers) {
                    assert!(pattern.sources(r, writers, receivers).contains(&w), "{pattern:?} {w} -> {r}");
                }
            }
            for r in 0..receivers {
                for w in pattern.sources(r, writers, receivers) {
                    assert!(pattern.targets(w, receivers).contains(&r), "{pattern:?} {r} <- {w}");
                }
            }
        }
        assert_eq!(Pattern::RoundRobin.targets(1, 3), vec![1, 2, 0]);
        assert_eq!(Pattern::Fixed.targets(5, 4), vec![1]);
    }

    #[test]
    fn the_ledger_finds_records_by_id_and_counts_the_missing() {
        let ledger = Ledger::new(2, 4);
        let id = ledger.record_id(1, 3);
        assert_eq!(ledger.parse(&id), Some((1, 3)));
        assert_eq!(ledger.parse(&ledger.record_id(2, 0)), None, "no such writer");
        assert_eq!(ledger.parse(&ledger.record_id(0, 4)), None, "beyond the slots");
        assert_eq!(ledger.parse("other-0-1"), None);
        assert!(pigeonhole_proto::payload::validate_record_id(&id).is_ok());

        let at = Instant::now();
        ledger.mark_sent(1, 3, at);
        assert_eq!(ledger.sent_at(1, 3), Some(at));
        assert_eq!(ledger.sent_at(0, 0), None);
        assert_eq!(ledger.flag(1, 3, ACKED), 0);
        assert_eq!(ledger.missing(), 1);
        assert_eq!(ledger.flag(1, 3, DELIVERED), ACKED);
        assert_eq!(ledger.flag(1, 3, DELIVERED) & DELIVERED, DELIVERED, "a second push is a duplicate");
        assert_eq!(ledger.missing(), 0);
        ledger.mark_sent(0, 0, at);
        ledger.flag(0, 0, ACKED);
        let tally = ledger.tally();
        assert_eq!((tally.sent, tally.acked, tally.delivered, tally.missing), (2, 2, 1, 1));
        assert_eq!(tally.missing_examples, vec![ledger.record_id(0, 0)]);
    }
}
