//! `check`: confirms that every record of an acked log is on the relay, with signed
//! inventories as the receiver (inventories do not count against pull limits; reads would).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::request::{Inventory, Request};
use serde::{Deserialize, Serialize};

use crate::client::{error_kind, http_client, ingest_receiver, post_signed, relay_key, signed_json};
use crate::proc::RelaySample;
use crate::spawn::Relay;
use crate::{CommonArgs, RelayArgs};

/// Records asked for per inventory page.
const PAGE: u32 = 1000;
/// How long inventories keep retrying while the relay answers 429 (its per-IP limit).
const RATE_LIMIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// Missing record ids listed in the report.
const SAMPLE: usize = 20;

/// `check` options.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The acked log written by `ingest --acked-log` (`owner_hex receiver_hex record_id` lines).
    #[arg(long, value_name = "FILE")]
    acked_log: PathBuf,

    #[command(flatten)]
    relay: RelayArgs,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    record_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    records: Vec<Meta>,
    last_seq: u64,
}

/// The acked log, grouped by outbox.
struct Acked {
    groups: BTreeMap<(String, String), HashSet<String>>,
    /// Lines that are not three fields (e.g. a line cut by a crash of the writer).
    malformed: u64,
}

fn read_log(path: &std::path::Path) -> Result<Acked> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut acked = Acked { groups: BTreeMap::new(), malformed: 0 };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            [owner, receiver, record_id] if owner.len() == 64 && receiver.len() == 64 => {
                acked
                    .groups
                    .entry((owner.to_ascii_lowercase(), receiver.to_ascii_lowercase()))
                    .or_default()
                    .insert((*record_id).to_owned());
            }
            _ => acked.malformed += 1,
        }
    }
    Ok(acked)
}

#[derive(Serialize)]
struct Report {
    command: &'static str,
    relay_url: String,
    acked: u64,
    found: u64,
    missing: u64,
    /// Records on the relay in the same outboxes that the log does not name (e.g. writes
    /// stored whose ack never reached the client before a crash).
    unlogged: u64,
    outboxes: usize,
    malformed_lines: u64,
    missing_sample: Vec<String>,
    relay_before: RelaySample,
    relay_after: RelaySample,
}

/// `pigeonhole-bench check`.
pub(crate) async fn run(args: CheckArgs) -> Result<ExitCode> {
    let relay = Relay::resolve(&args.relay).await?;
    let result = check(&args, &relay).await;
    let stopped = relay.stop().await;
    let report = result?;
    stopped?;
    let title = format!("check: acked {}, found {}, missing {}", report.acked, report.found, report.missing);
    crate::report::print(args.common.json, &title, &report)?;
    Ok(if report.missing > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn check(args: &CheckArgs, relay: &Relay) -> Result<Report> {
    let acked = read_log(&args.acked_log)?;
    let http = http_client()?;
    let relay_pk = relay_key(&http, &relay.url).await?;
    let before = RelaySample::take(relay.pid, relay.data.as_deref());
    let receiver = ingest_receiver(&args.common.seed);
    let receiver_hex = receiver.public_key().to_hex();

    let mut report = Report {
        command: "check",
        relay_url: relay.url.clone(),
        acked: 0,
        found: 0,
        missing: 0,
        unlogged: 0,
        outboxes: acked.groups.len(),
        malformed_lines: acked.malformed,
        missing_sample: Vec::new(),
        relay_before: before,
        relay_after: before,
    };
    for ((owner_hex, to_hex), ids) in &acked.groups {
        if *to_hex != receiver_hex {
            bail!(
                "the log names receiver {to_hex}, which is not the receiver of seed {:?} ({receiver_hex}): \
                 pass the --seed that ingest used",
                args.common.seed
            );
        }
        let owner =
            PublicKey::from_hex(owner_hex).with_context(|| format!("owner {owner_hex} in the log"))?;
        let endpoint = format!("{}/v1/{owner_hex}/outbox/{to_hex}", relay.url);
        let mut listed = HashSet::new();
        let mut after = 0u64;
        loop {
            let inventory = Inventory {
                owner,
                receiver: receiver.public_key(),
                after_ts: None,
                before_ts: None,
                after_seq: Some(after),
                limit: PAGE,
            };
            let (status, body) = post_signed(&http, &endpoint, RATE_LIMIT_PATIENCE, || {
                signed_json(&receiver, relay_pk, Request::Inventory(inventory.clone()))
            })
            .await?;
            if status != 200 {
                bail!("inventory of {owner_hex} refused: {} {body}", error_kind(status, &body));
            }
            let page: Page =
                serde_json::from_str(&body).with_context(|| format!("inventory answer {body}"))?;
            if page.records.is_empty() || page.last_seq <= after {
                break;
            }
            listed.extend(page.records.into_iter().map(|m| m.record_id));
            after = page.last_seq;
        }
        report.acked += ids.len() as u64;
        for id in ids {
            if listed.contains(id) {
                report.found += 1;
            } else {
                report.missing += 1;
                if report.missing_sample.len() < SAMPLE {
                    report.missing_sample.push(format!("{owner_hex} {to_hex} {id}"));
                }
            }
        }
        report.unlogged += listed.iter().filter(|id| !ids.contains(*id)).count() as u64;
    }
    report.relay_after = RelaySample::take(relay.pid, relay.data.as_deref());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_groups_by_outbox_and_counts_cut_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("acked.txt");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        std::fs::write(&path, format!("{a} {b} r1\n{a} {b} r2\n{a} {b} r1\n\n{b} {a} r3\n{a} {b}"))
            .expect("write");
        let acked = read_log(&path).expect("reads");
        assert_eq!(acked.groups.len(), 2);
        assert_eq!(acked.groups[&(a.clone(), b.clone())].len(), 2, "duplicates count once");
        assert_eq!(acked.malformed, 1, "the cut last line");
    }
}
