//! `fill`: puts N records into a relay's data directory through the store's own batch API
//! (the call the relay's commit thread makes), so that benchmarks can run against a store that
//! already holds millions of records; then measures what such a store costs: bytes on disk
//! against the bytes stored, and the relay's restart time and memory on it.
//!
//! The records are the bytes a session write stores: a `write` request's canonical bytes with
//! a sealed ~`--size` letter as content, from `--owners` writers to `--receivers` receivers
//! (keys derived from `--seed`), `--pool` distinct envelopes reused under fresh record ids
//! (the relay cannot tell; sealing 10 million letters would take longer than storing them).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::request::{Inventory, Message, Request, Write};
use pigeonhole_store::{NewRecord, PutOutcome, Store as _};
use serde::Serialize;

use crate::calibrate::verify_rate_async;
use crate::client::{
    derive_key, envelope_pool, error_kind, http_client, now_ms, post_signed, relay_key, run_nonce,
    signed_json,
};
use crate::proc::{disk_bytes, memory, round3};
use crate::report::ratio;
use crate::spawn::Relay;
use crate::{CommonArgs, RelayArgs};

/// `fill` options.
#[derive(Args, Debug)]
pub(crate) struct FillArgs {
    /// The relay's data directory (created if missing; the store is `DIR/store`). No relay may
    /// be running on it.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// Records to add.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    records: u64,

    /// Bytes of letter text per record (1024 gives a 1380-byte sealed envelope).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    size: usize,

    /// Writers (outbox owners).
    #[arg(long, default_value_t = 256, value_name = "N")]
    owners: u64,

    /// Receivers; record i goes from owner i mod OWNERS to receiver i mod RECEIVERS.
    #[arg(long, default_value_t = 251, value_name = "N")]
    receivers: u64,

    /// Records per durable batch (one fsync each).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    batch: usize,

    /// Distinct sealed envelopes, reused under fresh record ids.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pool: usize,

    /// TTL of the records, seconds (the default outlives any benchmark session).
    #[arg(long, default_value_t = 30 * 86_400, value_name = "SECS")]
    ttl: u32,

    /// After filling, start the relay on DIR this many times (SIGTERM between starts) and
    /// report the time from exec to serving and its memory; 0 skips it. Needs the
    /// `pigeonhole` binary next to this one, or --pigeonhole.
    #[arg(long, default_value_t = 3, value_name = "N")]
    restarts: usize,

    /// The `pigeonhole` binary for --restarts (default: the one next to this executable).
    #[arg(long, value_name = "PATH")]
    pigeonhole: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,
}

/// What `fill` measured.
#[derive(Debug, Serialize)]
struct FillReport {
    data: String,
    records_added: u64,
    records_in_store: u64,
    seconds: f64,
    records_per_sec: f64,
    /// Sum of the stored record bytes (request header + sealed envelope) of the whole store.
    stored_bytes: u64,
    /// Sum of the sealed envelopes alone (what a user sends) of the records added.
    envelope_bytes_added: u64,
    /// Bytes of every file under DIR, after the store was closed.
    disk_bytes: Option<u64>,
    /// disk_bytes / stored_bytes.
    disk_per_stored_byte: Option<f64>,
    /// disk_bytes / (envelope bytes of every record, estimated from this run's mean).
    disk_per_envelope_byte: Option<f64>,
    restarts: Vec<Restart>,
    /// Median of `restarts[].serving_ms`.
    restart_serving_ms_median: Option<f64>,
    verify_per_sec: f64,
}

/// One start of the relay on the filled directory.
#[derive(Debug, Serialize)]
struct Restart {
    /// From exec to the relay printing its address (the store is open by then).
    listening_ms: f64,
    /// From exec to the first `GET /health` answered 200.
    serving_ms: f64,
    /// Resident memory once serving, KiB.
    rss_kb: Option<u64>,
    /// Resident memory after signed inventories of the first 64 receivers' outboxes (a page
    /// of up to 100 ids each), KiB.
    rss_after_reads_kb: Option<u64>,
    /// Record ids those inventories listed (non-zero: the filled records are served).
    listed: u64,
}

/// Runs `fill`.
pub(crate) async fn run(args: FillArgs) -> Result<ExitCode> {
    if args.records == 0 || args.owners == 0 || args.receivers == 0 || args.batch == 0 || args.pool == 0 {
        bail!("--records, --owners, --receivers, --batch and --pool must all be at least 1");
    }
    let verify_per_sec = verify_rate_async(1.0).await?.verify_per_sec;
    let filled = {
        let FillArgs { data, records, size, owners, receivers, batch, pool, ttl, common, .. } = &args;
        let plan = Plan {
            data: data.clone(),
            records: *records,
            size: *size,
            owners: *owners,
            receivers: *receivers,
            batch: *batch,
            pool: *pool,
            ttl: *ttl,
            seed: common.seed.clone(),
            quiet: common.json,
        };
        tokio::task::spawn_blocking(move || fill(&plan)).await.context("the fill thread")??
    };
    let disk = disk_bytes(&args.data);
    let envelope_total =
        filled.envelope_bytes_added as f64 / filled.added as f64 * filled.records_in_store as f64;
    let mut restarts = Vec::new();
    for _ in 0..args.restarts {
        restarts.push(restart(&args).await?);
    }
    let mut serving: Vec<f64> = restarts.iter().map(|r| r.serving_ms).collect();
    serving.sort_by(f64::total_cmp);
    let report = FillReport {
        data: args.data.display().to_string(),
        records_added: filled.added,
        records_in_store: filled.records_in_store,
        seconds: round3(filled.elapsed.as_secs_f64()),
        records_per_sec: round3(filled.added as f64 / filled.elapsed.as_secs_f64().max(1e-9)),
        stored_bytes: filled.stored_bytes,
        envelope_bytes_added: filled.envelope_bytes_added,
        disk_bytes: disk,
        disk_per_stored_byte: disk.and_then(|d| ratio(d as f64, filled.stored_bytes as f64)),
        disk_per_envelope_byte: disk.and_then(|d| ratio(d as f64, envelope_total)),
        restart_serving_ms_median: serving.get(serving.len() / 2).copied(),
        restarts,
        verify_per_sec: round3(verify_per_sec),
    };
    crate::report::print(args.common.json, "fill", &report)?;
    Ok(ExitCode::SUCCESS)
}

struct Plan {
    data: PathBuf,
    records: u64,
    size: usize,
    owners: u64,
    receivers: u64,
    batch: usize,
    pool: usize,
    ttl: u32,
    seed: String,
    quiet: bool,
}

struct Filled {
    added: u64,
    records_in_store: u64,
    stored_bytes: u64,
    envelope_bytes_added: u64,
    elapsed: Duration,
}

fn fill(plan: &Plan) -> Result<Filled> {
    let owners: Vec<PublicKey> =
        (0..plan.owners).map(|i| derive_key(&plan.seed, "fill-owner", i).public_key()).collect();
    let receivers: Vec<PublicKey> =
        (0..plan.receivers).map(|i| derive_key(&plan.seed, "fill-receiver", i).public_key()).collect();
    let sealer = derive_key(&plan.seed, "fill-owner", 0);
    let envelopes = envelope_pool(&plan.seed, &sealer, receivers[0], plan.pool, plan.size, now_ms())?;
    std::fs::create_dir_all(&plan.data).with_context(|| format!("creating {}", plan.data.display()))?;
    let store = pigeonhole_relay::server::open_store(&plan.data, &Default::default()).with_context(|| {
        format!("opening the store in {} (is a relay running on it?)", plan.data.display())
    })?;
    let progress = if plan.quiet { ProgressBar::hidden() } else { ProgressBar::new(plan.records) };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} records, {per_sec}, eta {eta}")
            .context("the progress bar's template")?,
    );
    let nonce = run_nonce();
    let started = Instant::now();
    let mut added = 0u64;
    let mut envelope_bytes_added = 0u64;
    let mut batch = Vec::with_capacity(plan.batch);
    while added < plan.records {
        batch.clear();
        let now = now_ms();
        let expires_at = now + u64::from(plan.ttl) * 1000;
        let take = (plan.records - added).min(plan.batch as u64);
        for i in added..added + take {
            let envelope = &envelopes[(i % plan.pool as u64) as usize];
            let record_id = format!("fill-{nonce}-{i}");
            let message = Message {
                from: owners[(i % plan.owners) as usize],
                to: receivers[(i % plan.receivers) as usize],
                timestamp: now,
                request: Request::Write(Write {
                    record_id: record_id.clone(),
                    ttl: plan.ttl,
                    tag: None,
                    content: envelope.bytes.clone(),
                }),
            };
            envelope_bytes_added += envelope.bytes.len() as u64;
            batch.push(NewRecord {
                owner: message.from,
                receiver: message.to,
                record_id,
                tag: None,
                stored_at: now,
                expires_at,
                max_pulls: 0,
                record_hash: message.record_hash(),
                bytes: message.signing_bytes(),
            });
        }
        let outcomes = store.put_batch(&batch).context("storing a batch")?;
        if let Some(bad) = outcomes.iter().find(|o| !matches!(o, PutOutcome::Stored { .. })) {
            bail!("the store did not take a fresh record: {bad:?}");
        }
        added += take;
        progress.set_position(added);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let totals = store.totals().context("reading the store's totals")?;
    drop(store);
    Ok(Filled {
        added,
        records_in_store: totals.records,
        stored_bytes: totals.bytes,
        envelope_bytes_added,
        elapsed,
    })
}

/// Starts the relay on the filled directory, waits until it serves, reads, and stops it.
async fn restart(args: &FillArgs) -> Result<Restart> {
    let relay_args = RelayArgs {
        relay: None,
        spawn: true,
        pigeonhole: args.pigeonhole.clone(),
        spawn_data: Some(args.data.clone()),
        relay_pid: None,
        relay_data: None,
    };
    let exec = Instant::now();
    let relay = Relay::resolve(&relay_args).await?;
    let listening_ms = exec.elapsed().as_secs_f64() * 1000.0;
    let http = http_client()?;
    let health = format!("{}/health", relay.url);
    let deadline = exec + Duration::from_secs(60);
    loop {
        match http.get(&health).send().await {
            Ok(answer) if answer.status().is_success() => break,
            _ if Instant::now() > deadline => {
                bail!("the relay on {} did not serve within 60 s", args.data.display())
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let serving_ms = exec.elapsed().as_secs_f64() * 1000.0;
    let rss_kb = relay.pid.and_then(|pid| memory(pid).rss_kb);
    let listed = probe_reads(&http, &relay.url, args).await?;
    if listed == 0 {
        bail!("the relay on {} listed none of the filled records", args.data.display());
    }
    let rss_after_reads_kb = relay.pid.and_then(|pid| memory(pid).rss_kb);
    relay.stop().await?;
    Ok(Restart {
        listening_ms: round3(listening_ms),
        serving_ms: round3(serving_ms),
        rss_kb,
        rss_after_reads_kb,
        listed,
    })
}

/// Signed inventories, as each receiver, of one outbox to each of the first 64 receivers;
/// returns how many record ids they listed.
async fn probe_reads(http: &reqwest::Client, url: &str, args: &FillArgs) -> Result<u64> {
    let relay_pk = relay_key(http, url).await?;
    let mut listed = 0u64;
    for j in 0..args.receivers.min(64) {
        let receiver = derive_key(&args.common.seed, "fill-receiver", j);
        let owner = derive_key(&args.common.seed, "fill-owner", j % args.owners).public_key();
        let endpoint = format!("{url}/v1/{}/outbox/{}", owner.to_hex(), receiver.public_key().to_hex());
        let inventory = Inventory {
            owner,
            receiver: receiver.public_key(),
            after_ts: None,
            before_ts: None,
            after_seq: Some(0),
            limit: 100,
        };
        let (status, body) = post_signed(http, &endpoint, Duration::from_secs(10), || {
            signed_json(&receiver, relay_pk, Request::Inventory(inventory.clone()))
        })
        .await?;
        if status != 200 {
            bail!("inventory refused: {} {body}", error_kind(status, &body));
        }
        let page: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("inventory answer {body}"))?;
        listed += page["records"].as_array().map_or(0, |r| r.len() as u64);
    }
    Ok(listed)
}
