//! This machine's limits, measured in the same run as the figures they divide: single-core
//! BIP-340 verifies per second through libsecp256k1, and null HTTP round trips per second
//! against a relay's `GET /health`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use secp256k1::{Keypair, Secp256k1};
use serde::Serialize;

use crate::client::{Errors, count, http_client};
use crate::proc::{RelaySample, round3};
use crate::spawn::Relay;
use crate::{CommonArgs, RelayArgs};

/// Concurrent closed-loop clients of the HTTP round-trip measurement.
const HTTP_CLIENTS: usize = 16;

/// `calibrate` options.
#[derive(Args, Debug)]
pub(crate) struct CalibrateArgs {
    /// How long each measurement runs, in seconds.
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    seconds: f64,

    #[command(flatten)]
    relay: RelayArgs,

    #[command(flatten)]
    common: CommonArgs,
}

/// Single-core verify rate.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VerifyRate {
    /// BIP-340 verifications per second on one thread.
    pub(crate) verify_per_sec: f64,
    /// Verifications done.
    pub(crate) verifies: u64,
    /// Seconds measured.
    pub(crate) seconds: f64,
}

/// Verifies one fixed BIP-340 signature (fixed key, fixed 32-byte message) in a loop on the
/// calling thread for `seconds`, through a verification-only libsecp256k1 context.
pub(crate) fn verify_rate(seconds: f64) -> Result<VerifyRate> {
    let signer = Secp256k1::signing_only();
    let keypair = Keypair::from_seckey_slice(&signer, &[0x42; 32]).context("calibration key")?;
    let message = [0x5a_u8; 32];
    let signature = signer.sign_schnorr_with_aux_rand(&message, &keypair, &[0x17; 32]);
    let (public, _) = keypair.x_only_public_key();
    let verifier = Secp256k1::verification_only();
    verifier.verify_schnorr(&signature, &message, &public).context("the calibration signature")?;
    let budget = Duration::from_secs_f64(seconds.max(0.01));
    let started = Instant::now();
    let mut verifies = 0u64;
    let elapsed = loop {
        for _ in 0..64 {
            let ok = verifier
                .verify_schnorr(
                    std::hint::black_box(&signature),
                    std::hint::black_box(&message),
                    std::hint::black_box(&public),
                )
                .is_ok();
            std::hint::black_box(ok);
        }
        verifies += 64;
        let elapsed = started.elapsed();
        if elapsed >= budget {
            break elapsed;
        }
    };
    let secs = elapsed.as_secs_f64();
    Ok(VerifyRate { verify_per_sec: (verifies as f64 / secs).round(), verifies, seconds: round3(secs) })
}

/// [`verify_rate`] on a blocking thread (it keeps one core busy for `seconds`).
pub(crate) async fn verify_rate_async(seconds: f64) -> Result<VerifyRate> {
    tokio::task::spawn_blocking(move || verify_rate(seconds)).await.context("the calibration thread")?
}

/// Null HTTP round trips.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HttpRate {
    /// Successful `GET /health` round trips per second.
    pub(crate) http_health_per_sec: f64,
    /// Concurrent closed-loop clients.
    pub(crate) clients: usize,
    /// Successful round trips.
    pub(crate) ok: u64,
    /// Failed ones, by status and code.
    pub(crate) errors: Errors,
    /// Seconds measured.
    pub(crate) seconds: f64,
}

/// `GET /health` in a closed loop from [`HTTP_CLIENTS`] concurrent clients for `seconds`.
pub(crate) async fn http_rate(url: &str, seconds: f64) -> Result<HttpRate> {
    let http = http_client()?;
    let endpoint: Arc<str> = Arc::from(format!("{url}/health"));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds.max(0.01));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..HTTP_CLIENTS {
        let http = http.clone();
        let endpoint = endpoint.clone();
        tasks.spawn(async move {
            let mut ok = 0u64;
            let mut errors = Errors::new();
            while Instant::now() < deadline {
                match http.get(&*endpoint).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body = response.text().await.unwrap_or_default();
                        if status == 200 {
                            ok += 1;
                        } else {
                            count(&mut errors, crate::client::error_kind(status, &body));
                            if status == 429 {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    Err(_) => {
                        count(&mut errors, "connection");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ok, errors)
        });
    }
    let mut ok = 0;
    let mut errors = Errors::new();
    while let Some(done) = tasks.join_next().await {
        let (n, e) = done.context("an HTTP client task")?;
        ok += n;
        for (kind, k) in e {
            *errors.entry(kind).or_insert(0) += k;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(HttpRate {
        http_health_per_sec: (ok as f64 / secs).round(),
        clients: HTTP_CLIENTS,
        ok,
        errors,
        seconds: round3(secs),
    })
}

#[derive(Serialize)]
struct Report {
    command: &'static str,
    verify_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_health_per_sec: Option<f64>,
    verify: VerifyRate,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<HttpRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_before: Option<RelaySample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_after: Option<RelaySample>,
}

/// `pigeonhole-bench calibrate`.
pub(crate) async fn run(args: CalibrateArgs) -> Result<ExitCode> {
    let verify = verify_rate_async(args.seconds).await?;
    let relay = if args.relay.spawn || args.relay.relay.is_some() {
        Some(Relay::resolve(&args.relay).await?)
    } else {
        None
    };
    let mut report = Report {
        command: "calibrate",
        verify_per_sec: verify.verify_per_sec,
        http_health_per_sec: None,
        verify,
        http: None,
        relay_url: None,
        relay_before: None,
        relay_after: None,
    };
    if let Some(relay) = relay {
        let before = RelaySample::take(relay.pid, relay.data.as_deref());
        let http = http_rate(&relay.url, args.seconds).await;
        let after = RelaySample::take(relay.pid, relay.data.as_deref());
        let spawned = relay.is_spawned();
        report.relay_url = Some(relay.url.clone());
        relay.stop().await?;
        let http = http?;
        if http.errors.keys().any(|k| k.starts_with("429")) && !spawned {
            eprintln!(
                "warning: the relay rate-limited this benchmark (429): http_health_per_sec measures its \
                 per-IP limit, not its speed; use --spawn or raise limits.requests_per_sec_per_ip"
            );
        }
        report.http_health_per_sec = Some(http.http_health_per_sec);
        report.http = Some(http);
        report.relay_before = Some(before);
        report.relay_after = Some(after);
    }
    crate::report::print(args.common.json, "calibrate", &report)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_rate_counts_verifies() {
        let rate = verify_rate(0.05).expect("measures");
        assert!(rate.verifies >= 64 && rate.verify_per_sec > 0.0, "{rate:?}");
    }
}
