//! Drop postage and drop admission: the relay's side of spec §7.4 and §11.6. Synchronous and
//! clock-free like the engine: the HTTP adapter passes `now`.
//!
//! - Token keys: one VOPRF key per epoch, derived from the relay key (RFC 9497
//!   DeriveKeyPair), cached for the epochs in use. The current and next epochs' public keys
//!   are published in a signed relay document.
//! - Issuance: an account holder (a signed `postage` request, or one in a session) obtains up
//!   to its daily quota, charged durably before the relay evaluates anything; under the
//!   `open` policy anyone may obtain a few per IP address per day.
//! - Redemption: a drop carries a stamp; the relay recomputes the token's PRF output,
//!   checks the stamp's MAC over this exact drop, and the commit thread records the stamp
//!   spent in the same durable batch that stores the drop.
//!
//! Nothing here sees who posts a drop: the upload carries no key, and the relay never logs
//! or stores the address a drop came from.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use pigeonhole_proto::postage::{
    IssueRequest, IssueResponse, PostageKey, PostageKeys, Stamp, epoch_of, is_redeemable,
};
use pigeonhole_proto::receipt::{RelayDocument, drop_hash};
use pigeonhole_proto::request::Request;
use pigeonhole_proto::seal::Envelope;
use pigeonhole_proto::tag::Tag;
use pigeonhole_store::NewDrop;

use crate::config::IssuePolicy;
use crate::engine::{Engine, Verified, random_aux};
use crate::error::{ErrorCode, RelayError};

const DAY_MS: u64 = 86_400_000;

/// A drop as uploaded, before any check.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropUpload {
    /// 40 hex characters.
    pub tag: String,
    /// The sealed envelope, base64.
    pub drop: String,
    /// Seconds to keep it; 0 or absent = the relay's default; capped by policy.
    #[serde(default)]
    pub ttl: u32,
    /// The postage stamp.
    pub postage: Stamp,
}

/// Postage keys and issuance quotas.
pub struct Postage {
    keys: Mutex<HashMap<u64, Arc<PostageKey>>>,
    ip_issuance: DefaultKeyedRateLimiter<IpAddr>,
}

fn bad(code: ErrorCode, message: impl Into<String>) -> RelayError {
    RelayError::new(code, message)
}

impl Postage {
    /// Postage for `engine`'s configuration.
    pub fn new(engine: &Engine) -> Self {
        let per_day = NonZeroU32::new(engine.config().postage.per_ip_per_day).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs(86_400) / per_day.get();
        let quota =
            Quota::with_period(period).unwrap_or_else(|| Quota::per_hour(per_day)).allow_burst(per_day);
        Self { keys: Mutex::new(HashMap::new()), ip_issuance: RateLimiter::keyed(quota) }
    }

    /// Forgets idle per-IP quota entries (bounded memory).
    pub fn retain_recent(&self) {
        self.ip_issuance.retain_recent();
    }

    /// The epoch at `now` (ms).
    pub fn epoch(engine: &Engine, now: u64) -> u64 {
        epoch_of(now / 1000, engine.config().postage.epoch_secs)
    }

    /// The key of `epoch` (derived once, then cached; old epochs are dropped).
    pub fn key(&self, engine: &Engine, epoch: u64) -> Arc<PostageKey> {
        let mut keys = self.keys.lock();
        if let Some(key) = keys.get(&epoch) {
            return key.clone();
        }
        if keys.len() > 8 {
            let newest = keys.keys().copied().max().unwrap_or(epoch).max(epoch);
            keys.retain(|e, _| e.saturating_add(2) >= newest);
        }
        let key = Arc::new(PostageKey::derive(engine.signing_key(), epoch));
        keys.insert(epoch, key.clone());
        key
    }

    /// The signed document publishing the current and next epochs' keys.
    pub fn keys_document(&self, engine: &Engine, now: u64) -> (PostageKeys, RelayDocument) {
        let config = &engine.config().postage;
        let current = Self::epoch(engine, now);
        let keys = PostageKeys {
            epoch_secs: config.epoch_secs,
            grace_secs: config.grace_secs,
            keys: [current, current + 1].iter().map(|&e| (e, self.key(engine, e).public_key())).collect(),
        };
        let document = keys.sign_with_aux(engine.signing_key(), now, &random_aux());
        (keys, document)
    }

    /// Whether a stamp of `epoch` may be spent at `now`: during its epoch, or within the grace
    /// period on either side of it (clock skew, drops in flight at the rollover).
    fn check_epoch(engine: &Engine, epoch: u64, now: u64) -> Result<(), RelayError> {
        let config = &engine.config().postage;
        if is_redeemable(epoch, now / 1000, config.epoch_secs, config.grace_secs) {
            return Ok(());
        }
        let current = Self::epoch(engine, now);
        Err(bad(
            ErrorCode::PostageExpired,
            if epoch > current {
                format!("postage epoch {epoch} has not begun yet (the current epoch is {current})")
            } else {
                format!(
                    "postage of epoch {epoch} expired; the current epoch is {current}: obtain new tokens (POST /v1/postage)"
                )
            },
        ))
    }

    /// Validates an upload and turns it into a drop for the commit thread: tag, envelope,
    /// size, TTL, the stamp's epoch and MAC, and an early spent check. Stores nothing.
    pub fn prepare_drop(&self, engine: &Engine, upload: DropUpload, now: u64) -> Result<NewDrop, RelayError> {
        use base64::Engine as _;
        let config = &engine.config().drops;
        let tag = Tag::from_hex(&upload.tag)
            .map_err(|_| bad(ErrorCode::BadRequest, "`tag` must be 40 hex characters (160 bits)"))?;
        // A base64 string of n characters holds at most 3n/4 bytes: refuse oversize drops
        // before decoding them.
        if upload.drop.len() / 4 * 3 > config.max_drop_bytes as usize + 3 {
            return Err(bad(
                ErrorCode::TooLarge,
                format!("this relay accepts drops of at most {} bytes", config.max_drop_bytes),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(upload.drop.as_bytes())
            .map_err(|_| bad(ErrorCode::BadRequest, "`drop` must be standard base64"))?;
        if bytes.len() > config.max_drop_bytes as usize {
            return Err(bad(
                ErrorCode::TooLarge,
                format!("this relay accepts drops of at most {} bytes", config.max_drop_bytes),
            ));
        }
        Envelope::parse(&bytes)
            .map_err(|e| bad(ErrorCode::BadRequest, format!("`drop` is not a sealed envelope: {e}")))?;
        let stamp = upload.postage;
        Self::check_epoch(engine, stamp.epoch, now)?;
        self.key(engine, stamp.epoch).check_stamp(&stamp, &tag, &bytes).map_err(|_| {
            bad(ErrorCode::PostageInvalid, "the postage stamp is not valid for this drop and epoch")
        })?;
        let stamp_id = stamp.spent_id();
        if engine.store().stamp_spent(stamp.epoch, &stamp_id)? {
            return Err(spent());
        }
        let ttl = if upload.ttl == 0 { config.default_ttl_secs } else { upload.ttl.min(config.max_ttl_secs) };
        Ok(NewDrop {
            tag,
            stamp_epoch: stamp.epoch,
            stamp_id,
            stored_at: now,
            expires_at: now.saturating_add(u64::from(ttl) * 1000),
            drop_hash: drop_hash(&bytes),
            bytes,
        })
    }

    fn check_issue_epoch(engine: &Engine, request: &IssueRequest, now: u64) -> Result<(), RelayError> {
        let current = Self::epoch(engine, now);
        if request.epoch != current && request.epoch != current + 1 {
            return Err(bad(
                ErrorCode::PostageExpired,
                format!("tokens are issued for the current epoch ({current}) or the next one only"),
            ));
        }
        Ok(())
    }

    /// Issues tokens to an account: a verified `postage` request. The quota is charged
    /// durably before anything is evaluated.
    pub fn issue_for_account(
        &self,
        engine: &Engine,
        verified: &Verified,
        now: u64,
    ) -> Result<IssueResponse, RelayError> {
        let message = &verified.message;
        let Request::Postage(request) = &message.request else {
            return Err(bad(ErrorCode::WrongRequestType, "POST /v1/postage takes a `postage` request"));
        };
        Self::check_issue_epoch(engine, request, now)?;
        // Authorization before the replay check, so a refused request is not consumed.
        engine.writable_account(&message.from)?;
        engine.use_once(verified, now)?;
        let count = request.blinded.len() as u32;
        let max = engine.config().postage.per_account_per_day;
        let granted = engine.store().charge_issuance(&message.from.to_bytes(), now / DAY_MS, count, max)?;
        if granted == 0 {
            return Err(bad(
                ErrorCode::QuotaExceeded,
                format!(
                    "this account's daily postage quota ({max} tokens) is used up; wait until tomorrow (UTC)"
                ),
            ));
        }
        // What is left of the quota: the first `granted` elements (the client truncates).
        let granted =
            IssueRequest { epoch: request.epoch, blinded: request.blinded[..granted as usize].to_vec() };
        self.evaluate(engine, &granted)
    }

    /// Issues tokens without an account, under the per-IP daily quota (`issue = "open"`).
    /// `request` must be validated already ([`IssueRequest::from_json`] does): the quota is
    /// charged before evaluation, and a malformed request must not use it up.
    pub fn issue_anonymous(
        &self,
        engine: &Engine,
        request: &IssueRequest,
        peer: IpAddr,
        now: u64,
    ) -> Result<IssueResponse, RelayError> {
        if engine.config().postage.issue != IssuePolicy::Open {
            return Err(bad(
                ErrorCode::NoAccount,
                "this relay issues postage to account holders only: send a signed `postage` request",
            ));
        }
        Self::check_issue_epoch(engine, request, now)?;
        let count = NonZeroU32::new(request.blinded.len() as u32)
            .ok_or_else(|| bad(ErrorCode::BadRequest, "ask for at least one token"))?;
        match self.ip_issuance.check_key_n(&peer, count) {
            Ok(Ok(())) => {}
            _ => {
                return Err(bad(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "asking for {} token(s) would exceed the daily postage quota for this address ({} a day); ask for fewer, wait, or use an account",
                        count.get(),
                        engine.config().postage.per_ip_per_day
                    ),
                ));
            }
        }
        self.evaluate(engine, request)
    }

    fn evaluate(&self, engine: &Engine, request: &IssueRequest) -> Result<IssueResponse, RelayError> {
        let response = self
            .key(engine, request.epoch)
            .evaluate(request, &mut rand_core::OsRng)
            .map_err(|e| bad(ErrorCode::BadRequest, format!("cannot evaluate the blinded elements: {e}")))?;
        metrics::counter!("pigeonhole_postage_issued_total").increment(request.blinded.len() as u64);
        Ok(response)
    }
}

/// The answer for a stamp already spent.
pub fn spent() -> RelayError {
    bad(ErrorCode::PostageSpent, "this postage stamp was already spent; use a fresh token")
}
