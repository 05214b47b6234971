//! `sync`: one writer fills an outbox with R records over a pipelined WebSocket session, then
//! the receiver pulls them all with a WebSocket `listen` (pushes of up to 512 records / 1 MiB).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures_util::SinkExt as _;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::request::{Listen, Message, Request};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::calibrate::verify_rate_async;
use crate::client::{
    Answer, Envelope, Errors, Socket, WriteTemplate, as_frame, count, derive_key, envelope_pool, error_kind,
    fresh_ts, http_client, next_text, now_ms, open_session, register, relay_key, run_nonce,
};
use crate::proc::{CpuSnapshot, CpuWindow, RelaySample, round3};
use crate::report::{growth_per, ratio};
use crate::spawn::Relay;
use crate::{CommonArgs, RelayArgs};

/// The longest wait for the next frame before the run is declared stalled.
const STALL: Duration = Duration::from_secs(60);
/// Close code of a listener that fell behind (spec §11.5).
const CLOSE_BEHIND: u16 = 4008;

/// `sync` options.
#[derive(Args, Debug)]
pub(crate) struct SyncArgs {
    /// Records written, then pulled.
    #[arg(long, default_value_t = 10_000, value_name = "R")]
    records: u64,

    /// Bytes of letter text per record (the sealed envelope is a little larger).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    size: usize,

    /// Writes in flight while filling (at most 256, the relay's limit per connection).
    #[arg(long, default_value_t = 128, value_name = "K")]
    pipeline: usize,

    /// Distinct sealed envelopes, reused under fresh record ids.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pool: usize,

    /// TTL of the records, seconds.
    #[arg(long, default_value_t = 86_400, value_name = "SECS")]
    ttl: u32,

    #[command(flatten)]
    relay: RelayArgs,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Deserialize)]
struct WriteAck {
    seq: u64,
}

#[derive(Debug, Serialize)]
struct Fill {
    writes_per_sec: f64,
    seconds: f64,
    errors: Errors,
}

/// Writes `records` records over one session, `pipeline` in flight; returns the fill figures
/// and the lowest sequence number acknowledged.
async fn fill(
    socket: &mut Socket,
    template: &WriteTemplate,
    pool: &[Envelope],
    records: u64,
    pipeline: usize,
) -> Result<(Fill, u64)> {
    let nonce = run_nonce();
    let started = Instant::now();
    let mut pending: HashMap<u64, ()> = HashMap::new();
    let mut errors = Errors::new();
    let (mut n, mut acked, mut failed, mut min_seq) = (0u64, 0u64, 0u64, u64::MAX);
    while acked < records {
        let mut fed = false;
        while pending.len() < pipeline && acked + (pending.len() as u64) < records {
            n += 1;
            let envelope = &pool[(n % pool.len() as u64) as usize];
            let mut frame = String::with_capacity(envelope.b64.len() + 512);
            template.session_frame(&mut frame, n, now_ms(), &format!("{nonce}-s-{n}"), &envelope.b64);
            socket.feed(WsMessage::Text(frame.into())).await.context("sending a write")?;
            pending.insert(n, ());
            fed = true;
        }
        if fed {
            socket.flush().await.context("sending writes")?;
        }
        let text = match tokio::time::timeout(STALL, next_text(socket)).await {
            Ok(Some(Ok(text))) => text,
            Ok(Some(Err(closed))) => bail!("the relay closed the writer's session: {closed:?}"),
            Ok(None) => bail!("the writer's session ended"),
            Err(_) => bail!("no answer to a write for {STALL:?}"),
        };
        let answer: Answer<'_> =
            serde_json::from_str(&text).with_context(|| format!("answer frame {text}"))?;
        if answer.id.and_then(|id| pending.remove(&id)).is_none() {
            count(&mut errors, "unexpected_frame");
            continue;
        }
        let body = answer.body.map_or("", |b| b.get());
        match answer.status {
            Some(200 | 201) => {
                let ack: WriteAck =
                    serde_json::from_str(body).with_context(|| format!("write answer {body}"))?;
                min_seq = min_seq.min(ack.seq);
                acked += 1;
            }
            Some(status) => {
                count(&mut errors, error_kind(status, body));
                failed += 1;
                if failed > records / 10 + 100 {
                    bail!("too many refused writes while filling the outbox: {errors:?}");
                }
            }
            None => bail!("unexpected frame {text}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        Fill { writes_per_sec: (records as f64 / seconds).round(), seconds: round3(seconds), errors },
        min_seq,
    ))
}

#[derive(Deserialize)]
struct Frame<'a> {
    id: Option<u64>,
    status: Option<u16>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(borrow)]
    records: Option<Vec<&'a RawValue>>,
    cursor: Option<u64>,
}

/// What the pull phase saw.
struct Pulled {
    records: u64,
    wire_bytes: u64,
    pushes: u64,
    resumes: u64,
    seconds: f64,
}

/// Listens to `owner`'s outbox as `receiver` from `after_seq` until `records` have arrived,
/// resuming on a new session when the relay closes a listener that fell behind.
async fn pull(
    url: &str,
    relay: PublicKey,
    receiver: &SecretKey,
    owner: PublicKey,
    after_seq: u64,
    records: u64,
) -> Result<Pulled> {
    let mut pulled = Pulled { records: 0, wire_bytes: 0, pushes: 0, resumes: 0, seconds: 0.0 };
    let mut cursor = after_seq;
    let mut started = None;
    'session: loop {
        let mut socket = open_session(url, relay, receiver).await?;
        let listen = Message {
            from: receiver.public_key(),
            to: relay,
            timestamp: fresh_ts(),
            request: Request::Listen(Listen {
                owner,
                receiver: receiver.public_key(),
                after_ts: None,
                after_seq: Some(cursor),
            }),
        };
        let began = *started.get_or_insert_with(Instant::now);
        socket
            .send(WsMessage::Text(as_frame(1, &listen.to_json()).into()))
            .await
            .context("sending listen")?;
        loop {
            let text = match tokio::time::timeout(STALL, next_text(&mut socket)).await {
                Ok(Some(Ok(text))) => text,
                Ok(Some(Err(closed))) if closed.code == Some(CLOSE_BEHIND) => {
                    // "behind; resume after cursor C": everything up to C was delivered (and
                    // without a C, everything up to the last push received).
                    let resume = closed.reason.rsplit(' ').next().and_then(|c| c.parse::<u64>().ok());
                    cursor = resume.unwrap_or(cursor);
                    pulled.resumes += 1;
                    continue 'session;
                }
                Ok(Some(Err(closed))) => bail!("the relay closed the listener: {closed:?}"),
                Ok(None) => bail!("the listener's connection ended"),
                Err(_) => bail!("no push for {STALL:?} after {} records", pulled.records),
            };
            let frame: Frame<'_> =
                serde_json::from_str(&text).with_context(|| "a listener frame".to_owned())?;
            if frame.id.is_some() && frame.status != Some(200) {
                bail!("listen refused: {}", frame.body.map_or("", |b| b.get()));
            }
            if let Some(list) = frame.records {
                pulled.records += list.len() as u64;
                pulled.wire_bytes += text.len() as u64;
                pulled.pushes += 1;
                if let Some(c) = frame.cursor {
                    cursor = c;
                }
                if pulled.records >= records {
                    pulled.seconds = began.elapsed().as_secs_f64();
                    let _ = socket.close(None).await;
                    return Ok(pulled);
                }
            }
        }
    }
}

#[derive(Serialize)]
struct Report {
    command: &'static str,
    relay_url: String,
    records: u64,
    size: usize,
    envelope_bytes: usize,
    /// Records pulled per second (listen sent to last record received).
    records_per_sec: f64,
    /// Envelope (content) megabytes pulled per second (10^6 bytes).
    mb_per_sec: f64,
    /// Frame megabytes per second, JSON and base64 included.
    wire_mb_per_sec: f64,
    pull_seconds: f64,
    pushes: u64,
    /// Times the relay closed a listener that fell behind and the pull resumed.
    resumes: u64,
    /// Mean of the single-core verify rates measured (1 s each) before and after the run.
    verify_per_sec: f64,
    verify_before: f64,
    verify_after: f64,
    /// records_per_sec / verify_per_sec.
    records_per_verify: Option<f64>,
    fill: Fill,
    /// CPU during the pull phase.
    cpu: CpuWindow,
    relay_before: RelaySample,
    relay_after: RelaySample,
    /// Growth of the data directory per record written (and pulled).
    disk_bytes_per_record: Option<f64>,
    pool_secs: f64,
}

/// `pigeonhole-bench sync`.
pub(crate) async fn run(args: SyncArgs) -> Result<ExitCode> {
    if args.records == 0 || args.pool == 0 {
        bail!("--records and --pool must be at least 1");
    }
    if args.pipeline == 0 || args.pipeline > crate::ingest::MAX_PIPELINE {
        bail!(
            "--pipeline must be between 1 and {} (the relay's limit per connection)",
            crate::ingest::MAX_PIPELINE
        );
    }
    let relay = Relay::resolve(&args.relay).await?;
    let result = sync(&args, &relay).await;
    let stopped = relay.stop().await;
    let report = result?;
    stopped?;
    crate::report::print(args.common.json, "sync", &report)?;
    Ok(ExitCode::SUCCESS)
}

async fn sync(args: &SyncArgs, relay: &Relay) -> Result<Report> {
    let http = http_client()?;
    let relay_pk = relay_key(&http, &relay.url).await?;
    let before = RelaySample::take(relay.pid, relay.data.as_deref());
    let verify = verify_rate_async(1.0).await?;
    let seed = &args.common.seed;
    let writer = derive_key(seed, "sync-writer", 0);
    let receiver = derive_key(seed, "sync-receiver", 0);

    let started = Instant::now();
    let pool = {
        let (seed, writer, size, count) = (seed.clone(), writer.clone(), args.size, args.pool);
        let to = receiver.public_key();
        tokio::task::spawn_blocking(move || envelope_pool(&seed, &writer, to, count, size, now_ms()))
            .await
            .context("the sealing thread")??
    };
    let pool_secs = round3(started.elapsed().as_secs_f64());
    let envelope_bytes = pool.first().map_or(0, |e| e.bytes.len());

    register(&http, &relay.url, relay_pk, &writer).await?;
    let template = WriteTemplate::new(writer.public_key(), receiver.public_key(), args.ttl);
    let mut socket = open_session(&relay.url, relay_pk, &writer).await?;
    let (fill, min_seq) = fill(&mut socket, &template, &pool, args.records, args.pipeline).await?;
    let _ = socket.close(None).await;

    let first = CpuSnapshot::take(relay.pid);
    let pulled =
        pull(&relay.url, relay_pk, &receiver, writer.public_key(), min_seq.saturating_sub(1), args.records)
            .await?;
    let cpu = CpuWindow::between(&first, &CpuSnapshot::take(relay.pid));
    let after = RelaySample::take(relay.pid, relay.data.as_deref());
    let verify_after = verify_rate_async(1.0).await?;
    let verify_per_sec = ((verify.verify_per_sec + verify_after.verify_per_sec) / 2.0).round();

    let records_per_sec = (pulled.records as f64 / pulled.seconds).round();
    let mb = |bytes: f64| round3(bytes / pulled.seconds / 1e6);
    Ok(Report {
        command: "sync",
        relay_url: relay.url.clone(),
        records: pulled.records,
        size: args.size,
        envelope_bytes,
        records_per_sec,
        mb_per_sec: mb(pulled.records as f64 * envelope_bytes as f64),
        wire_mb_per_sec: mb(pulled.wire_bytes as f64),
        pull_seconds: round3(pulled.seconds),
        pushes: pulled.pushes,
        resumes: pulled.resumes,
        verify_per_sec,
        verify_before: verify.verify_per_sec,
        verify_after: verify_after.verify_per_sec,
        records_per_verify: ratio(records_per_sec, verify_per_sec),
        fill,
        cpu,
        relay_before: before,
        relay_after: after,
        disk_bytes_per_record: growth_per(before.disk_bytes, after.disk_bytes, args.records),
        pool_secs,
    })
}
