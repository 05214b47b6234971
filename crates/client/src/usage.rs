//! Auditing relays: each own relay's signed usage report (every read of this identity's
//! outboxes) against the acks contacts sent back naming that relay. An honest relay's
//! claimed reads equal the acknowledged ones; what differs is flagged.
//!
//! Reads of ack records are listed apart: acks are never acknowledged (that would never end),
//! so nothing can be checked about them.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::payload::kind;
use serde::Serialize;

use crate::client::Client;
use crate::error::{ClientError, RelayError};

/// A record whose claimed reads differ from its acks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Discrepancy {
    /// The reader (hex key).
    pub receiver: String,
    /// The reader's contact name, if known.
    pub receiver_name: Option<String>,
    /// The record id.
    pub record_id: String,
    /// Reads the relay reports.
    pub claimed: u64,
    /// Reads the receiver acknowledged for this relay.
    pub acked: u64,
}

/// The audit of one relay.
#[derive(Debug, Clone)]
pub struct UsageAudit {
    /// The relay.
    pub url: String,
    /// The report's verdict, or why it could not be fetched or verified.
    pub result: Result<UsageSummary, RelayError>,
}

/// A verified usage report compared with acks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSummary {
    /// Reads the relay claims, ack records excluded.
    pub claimed_reads: u64,
    /// Reads the contacts acknowledged for this relay.
    pub acked_reads: u64,
    /// Reads of ack records (never acknowledged, not checked).
    pub ack_record_reads: u64,
    /// Bytes the relay says it served, in total.
    pub bytes_served: u64,
    /// Records whose claimed reads differ from their acks.
    pub discrepancies: Vec<Discrepancy>,
}

impl UsageSummary {
    /// Whether the report agrees with the acks.
    pub fn is_consistent(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

impl Client {
    /// Fetches every own relay's usage report (in parallel) and checks it against the acks.
    pub async fn usage(&self) -> Result<Vec<UsageAudit>, ClientError> {
        let secret = self.secret()?.clone();
        let relays = self.db.own_relays()?;
        let reports = join_all(relays.iter().map(|relay| {
            let secret = &secret;
            async move { self.relays.usage(&relay.url, &relay.relay_key, secret).await }
        }))
        .await;
        let names: BTreeMap<String, String> =
            self.db.contacts()?.into_iter().map(|c| (c.card.content().pubkey.to_hex(), c.name)).collect();
        let mut audits = Vec::new();
        for (relay, report) in relays.iter().zip(reports) {
            let result = match report {
                Err(error) => Err(error),
                Ok(report) => Ok(self.compare(&relay.relay_key, &report, &names)?),
            };
            audits.push(UsageAudit { url: relay.url.clone(), result });
        }
        Ok(audits)
    }

    fn compare(
        &self,
        relay_key: &PublicKey,
        report: &pigeonhole_proto::receipt::UsageReport,
        names: &BTreeMap<String, String>,
    ) -> Result<UsageSummary, ClientError> {
        let mut claimed: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut summary = UsageSummary {
            claimed_reads: 0,
            acked_reads: 0,
            ack_record_reads: 0,
            bytes_served: 0,
            discrepancies: Vec::new(),
        };
        for read in &report.reads {
            summary.bytes_served += u64::from(read.bytes);
            if self.db.sent_kind(&read.receiver, &read.record_id)? == Some(kind::ACK) {
                summary.ack_record_reads += 1;
                continue;
            }
            summary.claimed_reads += 1;
            *claimed.entry((read.receiver.to_hex(), read.record_id.clone())).or_default() += 1;
        }
        let acked = self.db.acks_for_relay(relay_key)?;
        summary.acked_reads = acked.values().sum();
        let mut keys: Vec<&(String, String)> = claimed.keys().chain(acked.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let (c, a) = (claimed.get(key).copied().unwrap_or(0), acked.get(key).copied().unwrap_or(0));
            if c != a {
                summary.discrepancies.push(Discrepancy {
                    receiver: key.0.clone(),
                    receiver_name: names.get(&key.0).cloned(),
                    record_id: key.1.clone(),
                    claimed: c,
                    acked: a,
                });
            }
        }
        Ok(summary)
    }
}
