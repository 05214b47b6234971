//! `pigeonhole-bench`: drives a real relay process over real HTTP and WebSocket connections and
//! reports what it measured as ratios against limits measured on the same machine in the same
//! run (a BIP-340 verify rate, a null HTTP round-trip rate), so that figures from a noisy,
//! shared machine can still be compared.
//!
//! Commands:
//! - `calibrate`: this machine's single-core BIP-340 verify rate and (with a relay) the rate of
//!   `GET /health` round trips;
//! - `ingest`: N writers, each on its own WebSocket session (or, with `--fresh-sessions`, each
//!   write a separately signed HTTP `PUT`), reporting acknowledged writes per second, ack
//!   latency percentiles and errors, and optionally logging every acknowledged record;
//! - `sync`: one outbox filled with R records, then pulled by its receiver over a `listen`;
//! - `deliver`: W writers write open loop at a fixed rate to R listening receivers, reporting
//!   end-to-end delivery latency (write sent to push received) and any acked record missed;
//! - `check`: confirms that every record in an acked log is readable on the relay;
//! - `fill`: puts N records into a relay data directory, then measures disk use and restart;
//! - `drops`: postage issuance, drop uploads per second, the recipient's scan rate, and
//!   long-poll wake-up latency.
//!
//! Every command that talks to a relay can `--spawn` one (`pigeonhole serve` on a temporary
//! data directory with its per-IP limits raised) and samples the relay's memory, disk and CPU.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark's results are its output: a report or one JSON object on stdout, warnings on stderr"
)]

mod calibrate;
mod check;
mod client;
mod deliver;
mod drops;
mod fill;
mod ingest;
mod proc;
mod report;
mod spawn;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

const LONG_ABOUT: &str = "\
Load generator and measurements for a real Pigeonhole relay.

pigeonhole-bench talks to a relay process over HTTP and WebSocket exactly as clients do, and
reports figures next to limits it measures on this machine in the same run: the single-core
BIP-340 verify rate (`verify_per_sec`, through libsecp256k1) and, where asked, the rate of null
HTTP round trips. On a shared or noisy machine the ratios (e.g. `writes_per_sec /
verify_per_sec`) move much less than the raw numbers.

Typical use (build first: cargo build --release -p pigeonhole -p pigeonhole-bench):

  pigeonhole-bench calibrate
  pigeonhole-bench ingest --spawn --clients 64 --seconds 20 --size 1024
  pigeonhole-bench ingest --spawn --clients 64 --seconds 20 --size 1024 --fresh-sessions
  pigeonhole-bench sync --spawn --records 50000 --size 1024
  pigeonhole-bench fill --data /tmp/big --records 1000000   # then: ingest --spawn --spawn-data <copy>
  pigeonhole-bench deliver --spawn --rate 2500   # half the writes_per_sec that ingest reported
  pigeonhole-bench ingest --relay http://127.0.0.1:7070 --acked-log acked.txt ...
  pigeonhole-bench check --relay http://127.0.0.1:7070 --acked-log acked.txt

Keys are derived from --seed, so runs are repeatable and `check` can sign as the receiver
that `ingest` wrote to. Every command takes --json for one JSON object on stdout.";

/// Load generator and measurements against a real Pigeonhole relay.
#[derive(Parser)]
#[command(name = "pigeonhole-bench", version, about, long_about = LONG_ABOUT)]
struct Cli {
    /// Async worker threads of the load generator (default: one per core). The relay runs on
    /// the same machine: what the generator uses, the relay does not get.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure this machine's limits: single-core BIP-340 verifies per second and, with a
    /// relay, `GET /health` round trips per second (16 concurrent closed-loop clients).
    ///
    /// The verify loop checks one fixed signature over a fixed 32-byte message with a fixed key
    /// through libsecp256k1 (a verification-only context) on one thread. Without --relay or
    /// --spawn the HTTP figure is omitted.
    Calibrate(calibrate::CalibrateArgs),
    /// Write load: N clients write sealed ~BYTES records as fast as the relay acknowledges them.
    ///
    /// Each client is one identity (keys derived from --seed), registered on the relay
    /// (POST /v1/accounts) and, by default, on its own WebSocket session (GET /v1/ws: one
    /// signed session answer, then unsigned write frames). All clients write to one receiver
    /// (derived from --seed too, so `check` can sign as it).
    ///
    /// Records are sealed letters built ahead of time: --pool distinct envelopes per client,
    /// reused under fresh record ids, so the generator spends no cryptography per write (the
    /// relay cannot see that the letter inside names another record id; a receiver would).
    /// Closed loop by default (each client waits for its ack); --pipeline K keeps K in flight.
    ///
    /// With --fresh-sessions every write is a separately signed HTTP PUT (one signature check
    /// on the relay per write). Signatures are made before the clock starts: each client gets
    /// a stock sized from the verify rate measured at the start of the run (--presign to set
    /// it), all stamped 60 s ahead of the signing time so they stay inside the relay's ±120 s
    /// window for 180 s. A client whose stock runs out (or goes stale) signs inline and the
    /// report counts those writes (`signed_inline`): non-zero means the generator may bind.
    ///
    /// Reported: writes_per_sec (acks in the window after --warmup, divided by --seconds), ack
    /// latency percentiles, errors by status and code, writes_per_sec / verify_per_sec (the
    /// mean of 1 s calibrations just before and just after the run), writes per second of relay
    /// CPU, the CPU of the relay (by thread name), of this generator and of everything else on
    /// the machine during the window, the relay's RSS and bytes on disk before and after.
    Ingest(ingest::IngestArgs),
    /// Pull throughput: one writer fills an outbox with R records (pipelined over a WebSocket
    /// session), then the receiver pulls them all with a WebSocket `listen` (pushes of up to
    /// 512 records / 1 MiB); reports records_per_sec and mb_per_sec of the pull phase.
    Sync(sync::SyncArgs),
    /// End-to-end delivery latency: W writers write open loop at a fixed total rate to R
    /// receivers that hold WebSocket listens; the latency of a record runs from the instant its
    /// write was sent to the instant its push reached the receiver.
    ///
    /// Run `ingest` first to find the relay's maximum (its writes_per_sec with the same
    /// --size), then `deliver --rate <half of it>`: the target is delivery p99 under 25 ms at
    /// half the maximum ingest rate.
    ///
    /// Each writer is one identity (keys from --seed) on its own WebSocket session, sending
    /// sealed ~BYTES records as unsigned write frames (envelopes sealed before the clock
    /// starts, --pool per writer and receiver). Open loop: each writer ticks every
    /// WRITERS / RATE seconds (ticks staggered across writers) and sends at every tick without
    /// waiting for earlier acks, so the load does not drop when the relay slows down; a writer
    /// skips a tick only when 256 writes are already in flight on its connection (the relay's
    /// limit), and the report counts those (`skipped`). With --pattern round-robin (default)
    /// writer w's n-th write goes to receiver (w + n) mod R and every receiver listens to
    /// every writer's outbox; with --pattern fixed writer w writes only to receiver w mod R.
    ///
    /// Each receiver opens one session and sends one `listen` per writer it hears from,
    /// starting after the current time (records of earlier runs are skipped); all are
    /// answered before the first write. A receiver that the relay closes for falling behind
    /// (4008) resumes from its cursors. Record ids name the writer and the write's number,
    /// which finds its send instant (one process, one monotonic clock).
    ///
    /// Reported: the rate asked, writes sent, acked and delivered per second (of the writes
    /// sent in the window after --warmup), delivery latency, ack latency and the generator's
    /// own lag behind its schedule (p50/p99/p999/max ms), errors by kind, the relay's CPU
    /// (by thread), RSS and disk, and ratios to the single-core verify rate. After the last
    /// ack the run waits up to --drain seconds for every acknowledged record to be pushed:
    /// any still missing is reported (`missing`, with examples) and the exit status is
    /// non-zero.
    Deliver(deliver::DeliverArgs),
    /// Confirm that every record in an acked log (written by `ingest --acked-log`) is on the
    /// relay: signed inventories as the receiver, paged with afterSeq (inventory does not
    /// count against pull limits the way reads do). Exits non-zero if any is missing.
    Check(check::CheckArgs),
    /// Anonymous drops with postage: token issuance, drops accepted per second (each with a
    /// stamp check and a durable spent record), the recipient's scan rate at L = 0, 8 and 16
    /// bits, and long-poll wake-up latency.
    ///
    /// One account obtains a token per drop (signed `postage` requests of 64 blinded elements,
    /// proofs checked against the relay's published key); the drops are sealed and stamped
    /// before the clock starts and posted by C closed-loop HTTP clients. A share (--to-recipient)
    /// goes to one recipient's 16-bit prefix, the rest to random prefixes. The recipient then
    /// downloads its bucket at 0, 8 and 16 bits and checks every candidate's tag on one core
    /// (one ECDH each). Finally --wake-rounds long polls each wait on a fresh 32-bit prefix
    /// while a matching drop is posted: the latency is from posting to the poll's answer.
    Drops(drops::DropsArgs),
    /// Fill a relay's data directory with N records through the store's batch API (the call
    /// the relay's commit thread makes), then measure what the store costs: bytes on disk
    /// against bytes stored, and the relay's restart time and memory on it.
    ///
    /// For benchmarks against a store that already holds millions of records: fill once, copy
    /// the directory, and pass the copy to `ingest --spawn --spawn-data COPY`. Records are
    /// session writes (a `write` request's canonical bytes, the sealed letter as content) from
    /// --owners writers to --receivers receivers, --pool sealed envelopes reused under fresh
    /// record ids. With --restarts N (default 3) the relay is started on DIR N times: reported
    /// are the time from exec to its first answered `GET /health`, its RSS, and its RSS after
    /// signed inventories of 64 outboxes. No relay may be running on DIR while it fills.
    Fill(fill::FillArgs),
}

/// Where the relay is and what to sample from it.
#[derive(Args, Clone, Debug)]
pub(crate) struct RelayArgs {
    /// Base URL of a running relay, e.g. http://127.0.0.1:7070.
    #[arg(long, value_name = "URL", conflicts_with = "spawn")]
    pub(crate) relay: Option<String>,

    /// Start a relay for this run: `pigeonhole serve --listen 127.0.0.1:0 --data <tempdir>`
    /// with its per-IP request and registration limits, per-account write limit and quotas
    /// raised (a benchmark from 127.0.0.1 would otherwise measure the rate limiter); stopped
    /// with SIGTERM at the end. Fills --relay-pid and --relay-data.
    #[arg(long)]
    pub(crate) spawn: bool,

    /// The `pigeonhole` binary for --spawn (default: the one next to this executable, e.g.
    /// target/release/pigeonhole).
    #[arg(long, value_name = "PATH", requires = "spawn")]
    pub(crate) pigeonhole: Option<PathBuf>,

    /// Data directory for --spawn instead of a fresh temporary one (kept afterwards).
    #[arg(long, value_name = "DIR", requires = "spawn")]
    pub(crate) spawn_data: Option<PathBuf>,

    /// The relay's process id: its RSS (VmRSS, VmHWM) and CPU time are sampled before and
    /// after the run.
    #[arg(long, value_name = "PID")]
    pub(crate) relay_pid: Option<u32>,

    /// The relay's data directory: bytes on disk are summed before and after the run.
    #[arg(long, value_name = "DIR")]
    pub(crate) relay_data: Option<PathBuf>,
}

/// Options every command shares.
#[derive(Args, Clone, Debug)]
pub(crate) struct CommonArgs {
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long)]
    pub(crate) json: bool,

    /// Seed of every key the run derives (writers, receivers): the same seed gives the same
    /// identities, so runs are repeatable and `check` can sign as the receiver.
    #[arg(long, default_value = "pigeonhole-bench", value_name = "TEXT")]
    pub(crate) seed: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // reqwest's rustls has no built-in provider in this workspace (only `ring` is compiled):
    // install it before any client is built. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Calibrate(args) => runtime.block_on(calibrate::run(args)),
        Command::Ingest(args) => runtime.block_on(ingest::run(args)),
        Command::Sync(args) => runtime.block_on(sync::run(args)),
        Command::Deliver(args) => runtime.block_on(deliver::run(args)),
        Command::Check(args) => runtime.block_on(check::run(args)),
        Command::Drops(args) => runtime.block_on(drops::run(args)),
        Command::Fill(args) => runtime.block_on(fill::run(args)),
    }
}
