//! The relay's decision logic: turns a request (already parsed from JSON by the caller) into
//! an authorized action on the store, or an error. Synchronous, clock passed in, no sockets:
//! the HTTP adapter and tests drive it the same way.
//!
//! Order of checks for every request, so that nothing is read or written for a request that
//! fails any of them (fail closed): signature (by the parser), addressing (`to` is this relay
//! for everything but writes), freshness, path equality, replay, then authorization.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use pigeonhole_proto::keys::Signature;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::receipt::{RelayDocument, RelayInfo, UsageEntry, UsageReport};
use pigeonhole_proto::request::{Inventory, Listen, Message, Request, SignedMessage};
use pigeonhole_store::{
    Account, AccountStatus, ListQuery, NewRecord, PageRead, ReadOutcome, RecordMeta, ServedPage, Store,
    StoreError, StoredRecord,
};

use crate::config::{AccountPolicy, RelayConfig};
use crate::error::{ErrorCode, RelayError};

/// Most entries the replay cache holds; past this, requests are refused as busy rather than
/// accepted unchecked.
pub const REPLAY_CACHE_CAPACITY: usize = 1 << 20;
/// Most deleted-write hashes remembered.
pub const GONE_CAPACITY: usize = 1 << 18;

const DAY_MS: u64 = 86_400_000;

/// The URL path a request arrived on, to be compared with what it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    /// `{owner}` segment.
    pub owner: PublicKey,
    /// `{receiver}` segment.
    pub receiver: PublicKey,
    /// `{recordId}` segment, for record paths.
    pub record_id: Option<String>,
}

/// A request whose sender is authenticated: by its own signature, or by the session it
/// arrived on (then `sig` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The request.
    pub message: Message,
    /// Its signature, when it was signed on its own.
    pub sig: Option<Signature>,
}

impl Verified {
    /// A signed request (signature already verified by the parser).
    pub fn signed(signed: SignedMessage) -> Self {
        let sig = *signed.signature();
        Self { message: signed.into_message(), sig: Some(sig) }
    }

    /// Bytes stored for a write: the canonical request bytes, then the signature if any.
    pub fn stored_bytes(&self) -> Vec<u8> {
        let mut bytes = self.message.signing_bytes();
        if let Some(sig) = &self.sig {
            bytes.extend_from_slice(&sig.to_bytes());
        }
        bytes
    }

    /// Decodes bytes written by [`Verified::stored_bytes`] (from this relay's own store, so
    /// the signature is not checked again).
    pub fn from_stored_bytes(bytes: &[u8]) -> Result<Self, pigeonhole_proto::request::RequestError> {
        match SignedMessage::from_trusted_bytes(bytes) {
            Ok(signed) => Ok(Self::signed(signed)),
            Err(_) => Ok(Self { message: Message::decode(bytes)?, sig: None }),
        }
    }

    /// The JSON form `{"msg": {...}}`, with `sig` when there is one.
    pub fn to_json(&self) -> String {
        // Cannot fail (strings, numbers and options only); the fallback keeps this panic-free.
        serde_json::to_string(&self.json()).unwrap_or_else(|_| self.message.to_json())
    }

    /// The JSON form to serialize in place inside an answer.
    pub fn json(&self) -> pigeonhole_proto::request::MessageJson<'_> {
        self.message.json(self.sig.as_ref())
    }
}

/// How much one page of a listen may hold.
#[derive(Debug, Clone, Copy)]
pub struct PageSize {
    /// Most records (also capped by `limits.max_inventory`).
    pub records: usize,
    /// Most bytes of stored records after the first record.
    pub bytes: usize,
}

/// One listener's next page: see [`Engine::deliver_many`].
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Who reads: the receiver (counted) or the owner watching its own outbox (not counted).
    pub reader: PublicKey,
    /// Outbox owner.
    pub owner: PublicKey,
    /// Outbox receiver.
    pub receiver: PublicKey,
    /// Deliver records with `seq > after_seq`.
    pub after_seq: u64,
    /// How much the page may hold.
    pub size: PageSize,
}

/// A page delivered to a listener: see [`Engine::deliver_many`].
#[derive(Debug, Clone, Default)]
pub struct DeliveredPage {
    /// The records, oldest first.
    pub records: Vec<StoredRecord>,
    /// The cursor after them: the last record's seq, or the page's `after_seq` if it is empty.
    pub cursor: u64,
    /// Whether the page stopped at one of its bounds, so more records may follow `cursor`
    /// (`false`: every record committed when the page was read is on it or before it).
    pub more: bool,
}

/// What a client gets back for a read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The record.
    pub record: StoredRecord,
    /// Whether this read used up the record's pull limit (it is now deleted).
    pub exhausted: bool,
}

/// Remembers the hashes of accepted requests until their timestamps leave the skew window.
struct ReplayCache {
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayCache {
    fn new() -> Self {
        Self { seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Whether `hash` is remembered (and not expired at `now`).
    fn contains(&mut self, hash: &[u8; 32], now: u64) -> bool {
        self.purge(now);
        self.seen.contains_key(hash)
    }

    fn purge(&mut self, now: u64) {
        while let Some((old, at)) = self.order.front().copied() {
            if at > now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
            }
        }
    }

    /// Records `hash` until `expires`, forgetting the oldest entry when full.
    fn insert_evicting(&mut self, hash: [u8; 32], expires: u64, now: u64) {
        self.purge(now);
        while self.seen.len() >= GONE_CAPACITY {
            match self.order.pop_front() {
                Some((old, at)) => {
                    if self.seen.get(&old) == Some(&at) {
                        self.seen.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.seen.insert(hash, expires);
        self.order.push_back((hash, expires));
    }

    /// Records `hash` (valid until `expires`); false if it was already there.
    fn insert(&mut self, hash: [u8; 32], expires: u64, now: u64) -> Result<bool, RelayError> {
        self.purge(now);
        if self.seen.contains_key(&hash) {
            return Ok(false);
        }
        if self.seen.len() >= REPLAY_CACHE_CAPACITY {
            return Err(RelayError::new(
                ErrorCode::Busy,
                "too many requests in the replay window; retry shortly",
            ));
        }
        self.seen.insert(hash, expires);
        self.order.push_back((hash, expires));
        Ok(true)
    }
}

/// The relay engine.
pub struct Engine {
    store: Arc<dyn Store>,
    key: SecretKey,
    config: RelayConfig,
    replay: Mutex<ReplayCache>,
    /// Hashes of writes deleted or used up recently, so the same signed bytes cannot store
    /// them again while their timestamp is fresh. Bounded; when full the oldest is forgotten
    /// (this protection is best effort and must never block other requests).
    gone: Mutex<ReplayCache>,
    /// Records accepted per account in the current UTC day (in memory; a restart resets it,
    /// which only ever errs in the user's favour).
    daily: Mutex<HashMap<PublicKey, (u64, u32)>>,
}

impl Engine {
    /// An engine over `store`, signing with `key`.
    pub fn new(store: Arc<dyn Store>, key: SecretKey, config: RelayConfig) -> Self {
        Self {
            store,
            key,
            config,
            replay: Mutex::new(ReplayCache::new()),
            gone: Mutex::new(ReplayCache::new()),
            daily: Mutex::new(HashMap::new()),
        }
    }

    /// The relay's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The relay's signing key (for receipts).
    pub fn signing_key(&self) -> &SecretKey {
        &self.key
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Parses a signed request's JSON, verifying its signature.
    pub fn parse(&self, body: &str) -> Result<Verified, RelayError> {
        SignedMessage::from_json(body).map(Verified::signed).map_err(request_error)
    }

    /// Parses an unsigned request that arrived in a session bound to `session_key`.
    pub fn parse_in_session(&self, body: &str, session_key: &PublicKey) -> Result<Verified, RelayError> {
        in_session(Message::from_json(body).map_err(request_error)?, session_key)
    }

    /// [`Engine::parse_in_session`] of a session frame's `msg` object alone (the JSON form
    /// without its `{"msg": ...}` wrapper), parsed once.
    pub fn parse_session_msg(&self, msg: &str, session_key: &PublicKey) -> Result<Verified, RelayError> {
        in_session(Message::from_json_msg(msg).map_err(request_error)?, session_key)
    }

    /// Checks addressing, freshness and replay for a verified request. Writes are exempt from
    /// the replay cache: a repeated write is idempotent (same record hash at the same path).
    pub fn admit(&self, message: &Message, now: u64) -> Result<(), RelayError> {
        let is_write = matches!(message.request, Request::Write(_));
        if !is_write && message.to != self.public_key() {
            return Err(RelayError::new(
                ErrorCode::WrongRelay,
                format!(
                    "this request is addressed to {}, not to this relay ({})",
                    message.to,
                    self.public_key()
                ),
            ));
        }
        let skew = u64::from(self.config.limits.max_skew_secs) * 1000;
        if !message.is_fresh(now, skew) {
            return Err(RelayError::new(
                ErrorCode::StaleRequest,
                format!(
                    "request timestamp {} is more than {}s from the relay's clock ({now}); check your clock",
                    message.timestamp, self.config.limits.max_skew_secs
                ),
            ));
        }

        Ok(())
    }

    /// Marks a non-write request as used, refusing it if it was used before in the skew
    /// window. Called after the path and authorization checks and before anything is read or
    /// changed, so a request refused for another reason can be corrected and sent again.
    pub fn use_once(&self, verified: &Verified, now: u64) -> Result<(), RelayError> {
        // Requests inside a session are bound to it (the session, not the bytes, authenticates
        // them), so they cannot be replayed elsewhere and need no entry here: a busy session
        // must not fill the cache that protects signed requests.
        if verified.sig.is_none() {
            return Ok(());
        }
        let message = &verified.message;
        let skew = u64::from(self.config.limits.max_skew_secs) * 1000;
        let expires = message.timestamp.saturating_add(skew).saturating_add(1);
        if !self.replay.lock().insert(message.signing_hash(), expires, now)? {
            return Err(RelayError::new(
                ErrorCode::Replay,
                "this signed request was already used; sign a new one",
            ));
        }
        Ok(())
    }

    fn mismatch(what: &str) -> RelayError {
        RelayError::new(
            ErrorCode::PathMismatch,
            format!("the URL path's {what} does not match the signed request"),
        )
    }

    /// Checks that a record path equals the signed `(owner, receiver, record id)`.
    fn check_record_path(
        path: &RequestPath,
        owner: &PublicKey,
        receiver: &PublicKey,
        id: &str,
    ) -> Result<(), RelayError> {
        if path.owner != *owner {
            return Err(Self::mismatch("owner"));
        }
        if path.receiver != *receiver {
            return Err(Self::mismatch("receiver"));
        }
        if path.record_id.as_deref() != Some(id) {
            return Err(Self::mismatch("record id"));
        }
        Ok(())
    }

    /// Validates a write and turns it into a record for the commit thread. Checks the path,
    /// the account, sizes, TTL and quotas; stores nothing.
    pub fn prepare_write(
        &self,
        verified: &Verified,
        path: &RequestPath,
        now: u64,
    ) -> Result<NewRecord, RelayError> {
        let message = &verified.message;
        let Request::Write(write) = &message.request else {
            return Err(RelayError::new(
                ErrorCode::WrongRequestType,
                "only `write` requests may be PUT to a record path",
            ));
        };
        Self::check_record_path(path, &message.from, &message.to, &write.record_id)?;
        let account = self.writable_account(&message.from)?;
        let limits = &self.config.limits;
        if write.content.len() > limits.max_record_bytes as usize {
            return Err(RelayError::new(
                ErrorCode::TooLarge,
                format!(
                    "record content is {} bytes; this relay accepts at most {}",
                    write.content.len(),
                    limits.max_record_bytes
                ),
            ));
        }
        let ttl = if write.ttl == 0 { limits.default_ttl_secs } else { write.ttl.min(limits.max_ttl_secs) };
        let record = NewRecord {
            owner: message.from,
            receiver: message.to,
            record_id: write.record_id.clone(),
            tag: write.tag,
            stored_at: now,
            expires_at: now.saturating_add(u64::from(ttl) * 1000),
            max_pulls: limits.pull_limit,
            record_hash: message.record_hash(),
            bytes: verified.stored_bytes(),
        };
        // The same signed write, stored before and since deleted or used up, may not come
        // back while its timestamp is still fresh.
        if self.gone.lock().contains(&record.record_hash, now) {
            return Err(RelayError::new(
                ErrorCode::Replay,
                "this write was already stored and has since been deleted or used up; sign a new one",
            ));
        }
        // Whether the path is taken is settled by the commit thread, which looks the path up
        // anyway: a retry of a stored write gets its receipt, a rival write a conflict, and
        // neither is charged. Only a write the quota refuses is looked up here, so that a
        // retry or a rival is still told what it is when the account is full.
        if let Err(refused) = self.check_quotas(&account, &record, now) {
            return match self.store.get(&record.owner, &record.receiver, &record.record_id, now)? {
                Some(existing) if existing.meta.record_hash == record.record_hash => Ok(record),
                Some(_) => Err(RelayError::new(
                    ErrorCode::Conflict,
                    "a different record already has this path; choose a new record id",
                )),
                None => Err(refused),
            };
        }
        Ok(record)
    }

    pub(crate) fn writable_account(&self, owner: &PublicKey) -> Result<Account, RelayError> {
        let account = self.store.account(owner)?.ok_or_else(|| {
            RelayError::new(
                ErrorCode::NoAccount,
                "this key has no account on this relay; register first (POST /v1/accounts)",
            )
        })?;
        if account.status != AccountStatus::Active {
            return Err(RelayError::new(
                ErrorCode::AccountSuspended,
                "this account may not write at the moment",
            ));
        }
        Ok(account)
    }

    fn check_quotas(&self, account: &Account, record: &NewRecord, now: u64) -> Result<(), RelayError> {
        let max_bytes =
            if account.max_bytes == 0 { self.config.accounts.max_bytes } else { account.max_bytes };
        let used = self.store.owner_usage(&account.key)?;
        if used.bytes.saturating_add(record.bytes.len() as u64) > max_bytes {
            return Err(RelayError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "storing this would exceed the account's {max_bytes}-byte quota ({} used)",
                    used.bytes
                ),
            ));
        }
        let per_day = if account.max_records_per_day == 0 {
            self.config.accounts.max_records_per_day
        } else {
            account.max_records_per_day
        };
        let daily = self.daily.lock();
        let day = now / DAY_MS;
        let used_today = daily.get(&account.key).filter(|(d, _)| *d == day).map_or(0, |(_, n)| *n);
        if used_today >= per_day {
            return Err(RelayError::new(
                ErrorCode::QuotaExceeded,
                format!("the account's quota of {per_day} records per day is used up"),
            ));
        }
        Ok(())
    }

    /// Called by the commit thread for each write it made durable: charges the daily quota.
    pub fn committed(&self, record: &NewRecord) {
        let day = record.stored_at / DAY_MS;
        {
            let mut daily = self.daily.lock();
            let entry = daily.entry(record.owner).or_insert((day, 0));
            if entry.0 != day {
                *entry = (day, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
    }

    /// Remembers that a stored write is gone (deleted, or its last allowed read served) until
    /// any request signed with its timestamp would be stale.
    fn forget_write(&self, record_hash: [u8; 32], now: u64) {
        let skew = u64::from(self.config.limits.max_skew_secs) * 1000;
        self.gone.lock().insert_evicting(record_hash, now.saturating_add(2 * skew).saturating_add(1), now);
    }

    /// Serves a `read` (only the receiver may read) or performs a `delete` (only the owner).
    pub fn record_op(
        &self,
        verified: &Verified,
        path: &RequestPath,
        now: u64,
    ) -> Result<Option<ReadResult>, RelayError> {
        let message = &verified.message;
        match &message.request {
            Request::Read(read) => {
                Self::check_record_path(path, &read.owner, &read.receiver, &read.record_id)?;
                if message.from != read.receiver {
                    return Err(RelayError::new(ErrorCode::Forbidden, "only the receiver may read a record"));
                }
                self.use_once(verified, now)?;
                let outcome = match self.store.read(&read.owner, &read.receiver, &read.record_id, now) {
                    Err(StoreError::Full) => {
                        // The disk is full: serve the record uncounted rather than refuse it.
                        Self::uncounted_read();
                        match self.store.get(&read.owner, &read.receiver, &read.record_id, now)? {
                            Some(record) => ReadOutcome::Served { record, exhausted: false },
                            None => ReadOutcome::NotFound,
                        }
                    }
                    other => other?,
                };
                match outcome {
                    ReadOutcome::NotFound => Err(RelayError::new(ErrorCode::NotFound, "no such record")),
                    ReadOutcome::Served { record, exhausted } => {
                        if exhausted {
                            self.forget_write(record.meta.record_hash, now);
                        }
                        Ok(Some(ReadResult { record, exhausted }))
                    }
                }
            }
            Request::Delete(delete) => {
                Self::check_record_path(path, &message.from, &delete.receiver, &delete.record_id)?;
                self.use_once(verified, now)?;
                if let Some(existing) =
                    self.store.get(&message.from, &delete.receiver, &delete.record_id, now)?
                {
                    self.forget_write(existing.meta.record_hash, now);
                }
                if self.store.delete(&message.from, &delete.receiver, &delete.record_id)? {
                    Ok(None)
                } else {
                    Err(RelayError::new(ErrorCode::NotFound, "no such record"))
                }
            }
            _ => Err(RelayError::new(
                ErrorCode::WrongRequestType,
                "POST to a record path takes `read` or `delete`",
            )),
        }
    }

    fn check_outbox_reader(
        message: &Message,
        owner: &PublicKey,
        receiver: &PublicKey,
        path: &RequestPath,
    ) -> Result<(), RelayError> {
        if path.owner != *owner || path.receiver != *receiver || path.record_id.is_some() {
            return Err(Self::mismatch("outbox"));
        }
        if message.from != *receiver && message.from != *owner {
            return Err(RelayError::new(
                ErrorCode::Forbidden,
                "only the receiver (or the owner) may list or listen to an outbox",
            ));
        }
        Ok(())
    }

    /// Lists record metadata for an `inventory`.
    pub fn inventory(
        &self,
        verified: &Verified,
        path: &RequestPath,
        now: u64,
    ) -> Result<Vec<RecordMeta>, RelayError> {
        let message = &verified.message;
        let Request::Inventory(Inventory { owner, receiver, after_ts, before_ts, after_seq, limit }) =
            &message.request
        else {
            return Err(RelayError::new(ErrorCode::WrongRequestType, "expected `inventory`"));
        };
        Self::check_outbox_reader(message, owner, receiver, path)?;
        self.use_once(verified, now)?;
        let limit = (*limit).min(self.config.limits.max_inventory) as usize;
        let query = ListQuery {
            owner: *owner,
            receiver: *receiver,
            after_seq: after_seq.unwrap_or(0),
            after_ts: *after_ts,
            before_ts: *before_ts,
            limit,
        };
        Ok(self.store.list(&query, now)?)
    }

    /// Checks a `listen` and returns where it starts: `(owner, receiver, after_seq)`. When the
    /// request gives only `afterTs`, the relay starts at the first record stored after it.
    pub fn listen_start(
        &self,
        verified: &Verified,
        path: &RequestPath,
        now: u64,
    ) -> Result<(PublicKey, PublicKey, u64), RelayError> {
        let message = &verified.message;
        let Request::Listen(Listen { owner, receiver, after_ts, after_seq }) = &message.request else {
            return Err(RelayError::new(ErrorCode::WrongRequestType, "expected `listen`"));
        };
        Self::check_outbox_reader(message, owner, receiver, path)?;
        self.use_once(verified, now)?;
        let start = match (after_seq, after_ts) {
            (Some(seq), _) => *seq,
            (None, Some(ts)) => {
                let first = self.store.list(
                    &ListQuery {
                        owner: *owner,
                        receiver: *receiver,
                        after_seq: 0,
                        after_ts: Some(*ts),
                        before_ts: None,
                        limit: 1,
                    },
                    now,
                )?;
                first.first().map_or(self.store.last_seq(), |meta| meta.seq.saturating_sub(1))
            }
            (None, None) => 0,
        };
        Ok((*owner, *receiver, start))
    }

    /// Delivers a page to each listener, answered in order: its records, the cursor after
    /// them, and whether more may follow. Deliveries to the receiver are reads: they are
    /// counted against each record's pull limit and logged for usage reports, all of them in
    /// one commit
    /// ([`Store::read_after_many`]; the owner watching its own outbox is not a read). After
    /// the first record, a page holds at most `size.bytes` of record bytes.
    pub fn deliver_many(&self, pages: &[Delivery], now: u64) -> Vec<Result<DeliveredPage, RelayError>> {
        let limit = |page: &Delivery| page.size.records.min(self.config.limits.max_inventory as usize);
        // The owner watching its own outbox reads nothing, and a full disk must not stop
        // serving: both get the page uncounted.
        let uncounted = |page: &Delivery| -> Result<DeliveredPage, RelayError> {
            let limit = limit(page);
            let records = self.store.fetch_after(&page.owner, &page.receiver, page.after_seq, limit, now)?;
            let cursor = records.last().map_or(page.after_seq, |r| r.meta.seq);
            let more = limit > 0 && records.len() >= limit;
            Ok(DeliveredPage { records, cursor, more })
        };
        let counted: Vec<PageRead> = pages
            .iter()
            .filter(|page| page.reader == page.receiver)
            .map(|page| PageRead {
                owner: page.owner,
                receiver: page.receiver,
                after_seq: page.after_seq,
                limit: limit(page),
                max_bytes: page.size.bytes,
            })
            .collect();
        let mut served = match self.store.read_after_many(&counted, now) {
            Ok(served) => Ok(served.into_iter()),
            Err(StoreError::Full) => {
                Self::uncounted_read();
                Err(None)
            }
            Err(e) => Err(Some(RelayError::from(e))),
        };
        pages
            .iter()
            .map(|page| {
                if page.reader != page.receiver {
                    return uncounted(page);
                }
                let ServedPage { records, more } = match &mut served {
                    Ok(pages) => pages.next().unwrap_or_default(),
                    Err(None) => return uncounted(page),
                    Err(Some(e)) => return Err(e.clone()),
                };
                let cursor = records.last().map_or(page.after_seq, |(r, _)| r.meta.seq);
                let records = records
                    .into_iter()
                    .map(|(record, exhausted)| {
                        if exhausted {
                            self.forget_write(record.meta.record_hash, now);
                        }
                        record
                    })
                    .collect();
                Ok(DeliveredPage { records, cursor, more })
            })
            .collect()
    }

    /// Reads keep working when the disk is full, but cannot be counted or logged: say so.
    fn uncounted_read() {
        metrics::counter!("pigeonhole_uncounted_reads_total").increment(1);
        tracing::warn!("storage is full: serving a read without counting it against pull limits or usage");
    }

    /// Registers the signer under the account policy. Registering an existing account is
    /// idempotent.
    pub fn register(&self, verified: &Verified, now: u64) -> Result<Account, RelayError> {
        let message = &verified.message;
        let Request::Register(register) = &message.request else {
            return Err(RelayError::new(ErrorCode::WrongRequestType, "expected `register`"));
        };
        self.use_once(verified, now)?;
        if let Some(existing) = self.store.account(&message.from)? {
            return Ok(existing);
        }
        let allowed = match self.config.accounts.policy {
            AccountPolicy::Open => true,
            AccountPolicy::Invite => register
                .invite
                .as_ref()
                .is_some_and(|code| self.config.accounts.invite_codes.iter().any(|c| c == code)),
            AccountPolicy::Contract => false,
        };
        if !allowed {
            return Err(RelayError::new(
                ErrorCode::InviteRequired,
                match self.config.accounts.policy {
                    AccountPolicy::Contract => "this relay sells accounts by contract; ask its operator",
                    _ => {
                        "this relay registers only invited keys: present a valid invite code or ask its operator"
                    }
                },
            ));
        }
        let account = Account {
            key: message.from,
            status: AccountStatus::Active,
            created_at: now,
            max_bytes: 0,
            max_records_per_day: 0,
        };
        self.store.put_account(&account)?;
        Ok(account)
    }

    /// Builds the signed usage report for the signer's own outboxes.
    pub fn usage(&self, verified: &Verified, now: u64) -> Result<RelayDocument, RelayError> {
        let message = &verified.message;
        let Request::Usage(usage) = &message.request else {
            return Err(RelayError::new(ErrorCode::WrongRequestType, "expected `usage`"));
        };
        self.use_once(verified, now)?;
        let rows = self.store.usage(
            &message.from,
            usage.after_ts,
            usage.before_ts,
            pigeonhole_proto::receipt::MAX_USAGE_ENTRIES,
        )?;
        let report = UsageReport {
            account: message.from,
            after_ts: usage.after_ts,
            before_ts: usage.before_ts,
            reads: rows
                .into_iter()
                .map(|row| UsageEntry {
                    receiver: row.receiver,
                    record_id: row.record_id,
                    bytes: row.bytes,
                    read_at: row.read_at,
                })
                .collect(),
        };
        Ok(report.sign_with_aux(&self.key, now, &random_aux()))
    }

    /// The relay's info (unsigned body).
    pub fn info(&self) -> RelayInfo {
        let c = &self.config;
        RelayInfo {
            software: concat!("pigeonhole/", env!("CARGO_PKG_VERSION")).to_owned(),
            policy: c.accounts.policy.as_u8(),
            max_record_bytes: c.limits.max_record_bytes,
            default_ttl_secs: c.limits.default_ttl_secs,
            max_ttl_secs: c.limits.max_ttl_secs,
            pull_limit: c.limits.pull_limit,
            max_skew_secs: c.limits.max_skew_secs,
            max_account_bytes: c.accounts.max_bytes,
            max_records_per_day: c.accounts.max_records_per_day,
            storage_msat_per_gib_day: c.prices.storage_msat_per_gib_day,
            bandwidth_msat_per_gib: c.prices.bandwidth_msat_per_gib,
            account_msat_per_month: c.prices.account_msat_per_month,
        }
    }

    /// The relay's signed info document.
    pub fn info_document(&self, now: u64) -> RelayDocument {
        self.info().sign_with_aux(&self.key, now, &random_aux())
    }
}

/// A request parsed from a session, which must come from the key the session was opened with.
fn in_session(message: Message, session_key: &PublicKey) -> Result<Verified, RelayError> {
    if message.from != *session_key {
        return Err(RelayError::new(
            ErrorCode::Forbidden,
            "`from` is not the key this session was opened with",
        ));
    }
    Ok(Verified { message, sig: None })
}

fn request_error(error: pigeonhole_proto::request::RequestError) -> RelayError {
    match error {
        pigeonhole_proto::request::RequestError::BadSignature => RelayError::new(
            ErrorCode::BadSignature,
            "the signature does not verify for `from` over this request",
        ),
        other => RelayError::new(ErrorCode::BadRequest, other.to_string()),
    }
}

/// 32 bytes of OS randomness for BIP-340 auxiliary input.
pub fn random_aux() -> [u8; 32] {
    use rand_core::RngCore;
    let mut aux = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut aux);
    aux
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccountPolicy;
    use pigeonhole_proto::request::{Delete, Read, Register, Write};
    use pigeonhole_store::MemoryStore;

    const NOW: u64 = 1_800_000_000_000;

    /// A distinct timestamp per request (within the skew window), so test requests are never
    /// replays of each other.
    fn ts() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        NOW + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 60_000
    }

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32]).expect("valid")
    }

    fn engine_with(config: RelayConfig) -> Engine {
        Engine::new(Arc::new(MemoryStore::new()), key(99), config)
    }

    fn engine() -> Engine {
        engine_with(RelayConfig::default())
    }

    fn verified(message: Message) -> Verified {
        Verified { message, sig: None }
    }

    /// A request as if it arrived signed (the engine trusts the parser for the signature).
    fn signed_verified(message: Message) -> Verified {
        Verified { message, sig: Some(pigeonhole_proto::keys::Signature::from_bytes([0; 64])) }
    }

    fn write_msg(from: u8, to: u8, id: &str, size: usize, ttl: u32) -> Message {
        Message {
            from: key(from).public_key(),
            to: key(to).public_key(),
            timestamp: NOW,
            request: Request::Write(Write { record_id: id.into(), ttl, tag: None, content: vec![7; size] }),
        }
    }

    fn path(owner: u8, receiver: u8, id: Option<&str>) -> RequestPath {
        RequestPath {
            owner: key(owner).public_key(),
            receiver: key(receiver).public_key(),
            record_id: id.map(Into::into),
        }
    }

    fn register(engine: &Engine, who: u8, invite: Option<&str>) -> Result<Account, RelayError> {
        let message = Message {
            from: key(who).public_key(),
            to: engine.public_key(),
            timestamp: ts(),
            request: Request::Register(Register { invite: invite.map(Into::into) }),
        };
        engine.register(&signed_verified(message), NOW)
    }

    fn code<T: std::fmt::Debug>(result: Result<T, RelayError>) -> ErrorCode {
        result.expect_err("expected a refusal").code
    }

    #[test]
    fn admission_checks_relay_freshness_and_replay() {
        let e = engine();
        let mut m = Message {
            from: key(2).public_key(),
            to: e.public_key(),
            timestamp: NOW,
            request: Request::Read(Read {
                owner: key(1).public_key(),
                receiver: key(2).public_key(),
                record_id: "r".into(),
            }),
        };
        assert_eq!(e.admit(&m, NOW), Ok(()));
        assert_eq!(e.use_once(&signed_verified(m.clone()), NOW), Ok(()));
        assert_eq!(e.admit(&m, NOW + 1), Ok(()), "admission itself does not consume the request");
        assert_eq!(code(e.use_once(&signed_verified(m.clone()), NOW + 1)), ErrorCode::Replay);
        // The same request inside a session is not a replay: sessions bind their requests.
        assert_eq!(e.use_once(&verified(m.clone()), NOW + 1), Ok(()));
        m.timestamp = NOW - 121_000;
        assert_eq!(code(e.admit(&m, NOW)), ErrorCode::StaleRequest);
        m.timestamp = NOW + 121_000;
        assert_eq!(code(e.admit(&m, NOW)), ErrorCode::StaleRequest);
        m.timestamp = NOW + 1;
        m.to = key(5).public_key();
        assert_eq!(code(e.admit(&m, NOW)), ErrorCode::WrongRelay);
        // Writes are addressed to their receiver and may repeat (idempotent at the store).
        let w = write_msg(1, 2, "a", 10, 0);
        assert_eq!(e.admit(&w, NOW), Ok(()));
        assert_eq!(e.admit(&w, NOW), Ok(()));
        // Replay entries expire with the skew window.
        let mut fresh = m.clone();
        fresh.to = e.public_key();
        fresh.timestamp = NOW;
        let later = NOW + 2 * 121_000;
        fresh.timestamp = later;
        assert_eq!(e.admit(&fresh, later), Ok(()));
        assert_eq!(e.use_once(&signed_verified(fresh), later), Ok(()));
    }

    #[test]
    fn writes_need_an_active_account_and_respect_limits() {
        let mut config = RelayConfig::default();
        config.limits.max_record_bytes = 100;
        config.limits.default_ttl_secs = 60;
        config.limits.max_ttl_secs = 3600;
        config.accounts.max_bytes = 100_000;
        config.accounts.max_records_per_day = 3;
        let e = engine_with(config);
        let good = |id: &str| path(1, 2, Some(id));
        let write = |id: &str, size, ttl| verified(write_msg(1, 2, id, size, ttl));
        assert_eq!(code(e.prepare_write(&write("a", 10, 0), &good("a"), NOW)), ErrorCode::NoAccount);
        register(&e, 1, None).expect("open policy");
        let record = e.prepare_write(&write("a", 10, 0), &good("a"), NOW).expect("ok");
        assert_eq!(record.expires_at, NOW + 60_000, "ttl 0 means the default");
        let capped = e.prepare_write(&write("a", 10, 999_999), &good("a"), NOW).expect("ok");
        assert_eq!(capped.expires_at, NOW + 3_600_000, "ttl is capped");
        assert_eq!(code(e.prepare_write(&write("a", 101, 0), &good("a"), NOW)), ErrorCode::TooLarge);
        // Only committed writes count against the daily quota: three are stored, the fourth
        // distinct write is refused.
        for id in ["d1", "d2", "d3"] {
            let record = e.prepare_write(&write(id, 10, 0), &good(id), NOW).expect("under quota");
            e.store().put_batch(std::slice::from_ref(&record)).expect("stored");
            e.committed(&record);
        }
        assert_eq!(code(e.prepare_write(&write("d4", 10, 0), &good("d4"), NOW)), ErrorCode::QuotaExceeded);
        // A retry of a stored write is still answered (as a duplicate) at the quota.
        assert!(e.prepare_write(&write("d1", 10, 0), &good("d1"), NOW).is_ok());
        // A rival write to a taken path is a conflict, refused before any charge.
        assert_eq!(code(e.prepare_write(&write("d1", 11, 0), &good("d1"), NOW)), ErrorCode::Conflict);
        // A new day resets the count.
        e.prepare_write(&write("d4", 10, 0), &good("d4"), NOW + DAY_MS).expect("next day");
    }

    #[test]
    fn a_deleted_write_cannot_be_replayed_while_fresh() {
        let e = engine();
        register(&e, 1, None).expect("registered");
        let w = verified(write_msg(1, 2, "gone", 5, 0));
        let record = e.prepare_write(&w, &path(1, 2, Some("gone")), NOW).expect("ok");
        e.store().put_batch(std::slice::from_ref(&record)).expect("stored");
        e.committed(&record);
        let delete = Message {
            from: key(1).public_key(),
            to: e.public_key(),
            timestamp: ts(),
            request: Request::Delete(Delete { receiver: key(2).public_key(), record_id: "gone".into() }),
        };
        assert!(
            e.record_op(&signed_verified(delete), &path(1, 2, Some("gone")), NOW).expect("deleted").is_none()
        );
        assert_eq!(code(e.prepare_write(&w, &path(1, 2, Some("gone")), NOW + 1000)), ErrorCode::Replay);
        // Once the timestamp is stale the request is refused at admission anyway, and the cache forgets it.
        assert!(e.prepare_write(&w, &path(1, 2, Some("gone")), NOW + 10 * 121_000).is_ok());
        // Writes that are merely stored are not remembered: a busy relay's memory for this is
        // proportional to deletions, not writes.
        assert_eq!(e.gone.lock().seen.len(), 0, "expired entries are purged on use");
    }

    #[test]
    fn byte_quota_counts_stored_records() {
        // Quotas count the stored bytes (the whole write, 145 bytes here).
        let mut config = RelayConfig::default();
        config.accounts.max_bytes = 250;
        let e = engine_with(config);
        register(&e, 1, None).expect("registered");
        let record =
            e.prepare_write(&verified(write_msg(1, 2, "a", 60, 0)), &path(1, 2, Some("a")), NOW).expect("ok");
        e.store().put_batch(&[record]).expect("stored");
        assert_eq!(
            code(e.prepare_write(&verified(write_msg(1, 2, "b", 60, 0)), &path(1, 2, Some("b")), NOW)),
            ErrorCode::QuotaExceeded
        );
    }

    #[test]
    fn the_path_must_equal_the_signed_fields() {
        let e = engine();
        register(&e, 1, None).expect("registered");
        let w = verified(write_msg(1, 2, "a", 1, 0));
        for bad in [path(3, 2, Some("a")), path(1, 3, Some("a")), path(1, 2, Some("b")), path(1, 2, None)] {
            assert_eq!(code(e.prepare_write(&w, &bad, NOW)), ErrorCode::PathMismatch, "{bad:?}");
        }
        let read = Message {
            from: key(2).public_key(),
            to: e.public_key(),
            timestamp: NOW,
            request: Request::Read(Read {
                owner: key(1).public_key(),
                receiver: key(2).public_key(),
                record_id: "a".into(),
            }),
        };
        assert_eq!(
            code(e.prepare_write(&verified(read), &path(1, 2, Some("a")), NOW)),
            ErrorCode::WrongRequestType
        );
    }

    #[test]
    fn only_the_receiver_reads_and_only_the_owner_deletes() {
        let e = engine();
        register(&e, 1, None).expect("registered");
        let record =
            e.prepare_write(&verified(write_msg(1, 2, "a", 5, 0)), &path(1, 2, Some("a")), NOW).expect("ok");
        e.store().put_batch(&[record]).expect("stored");
        let read_by = |who: u8| Message {
            from: key(who).public_key(),
            to: e.public_key(),
            timestamp: ts(),
            request: Request::Read(Read {
                owner: key(1).public_key(),
                receiver: key(2).public_key(),
                record_id: "a".into(),
            }),
        };
        assert_eq!(
            code(e.record_op(&signed_verified(read_by(1)), &path(1, 2, Some("a")), NOW)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(e.record_op(&signed_verified(read_by(3)), &path(1, 2, Some("a")), NOW)),
            ErrorCode::Forbidden
        );
        assert!(
            e.record_op(&signed_verified(read_by(2)), &path(1, 2, Some("a")), NOW)
                .expect("receiver reads")
                .is_some()
        );
        // Carol's delete names her own outbox, so it cannot touch Alice's record.
        let delete_by = |who: u8| Message {
            from: key(who).public_key(),
            to: e.public_key(),
            timestamp: ts(),
            request: Request::Delete(Delete { receiver: key(2).public_key(), record_id: "a".into() }),
        };
        assert_eq!(
            code(e.record_op(&signed_verified(delete_by(3)), &path(1, 2, Some("a")), NOW)),
            ErrorCode::PathMismatch
        );
        assert_eq!(
            code(e.record_op(&signed_verified(delete_by(3)), &path(3, 2, Some("a")), NOW)),
            ErrorCode::NotFound
        );
        assert!(
            e.record_op(&signed_verified(delete_by(1)), &path(1, 2, Some("a")), NOW)
                .expect("owner deletes")
                .is_none()
        );
        assert_eq!(
            code(e.record_op(&signed_verified(read_by(2)), &path(1, 2, Some("a")), NOW)),
            ErrorCode::NotFound
        );
    }

    #[test]
    fn inventory_is_for_the_receiver_or_the_owner() {
        let e = engine();
        let inventory_by = |who: u8| Message {
            from: key(who).public_key(),
            to: e.public_key(),
            timestamp: ts(),
            request: Request::Inventory(Inventory {
                owner: key(1).public_key(),
                receiver: key(2).public_key(),
                after_ts: None,
                before_ts: None,
                after_seq: None,
                limit: 10,
            }),
        };
        assert!(e.inventory(&signed_verified(inventory_by(1)), &path(1, 2, None), NOW).is_ok());
        assert!(e.inventory(&signed_verified(inventory_by(2)), &path(1, 2, None), NOW).is_ok());
        assert_eq!(
            code(e.inventory(&signed_verified(inventory_by(3)), &path(1, 2, None), NOW)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(e.inventory(&signed_verified(inventory_by(2)), &path(1, 3, None), NOW)),
            ErrorCode::PathMismatch
        );
    }

    #[test]
    fn registration_follows_the_policy() {
        let mut config = RelayConfig::default();
        config.accounts.policy = AccountPolicy::Invite;
        config.accounts.invite_codes = vec!["welcome".into()];
        let e = engine_with(config.clone());
        assert_eq!(code(register(&e, 1, None)), ErrorCode::InviteRequired);
        assert_eq!(code(register(&e, 1, Some("wrong"))), ErrorCode::InviteRequired);
        register(&e, 1, Some("welcome")).expect("invited");
        register(&e, 1, None).expect("existing accounts re-register without a code");
        config.accounts.policy = AccountPolicy::Contract;
        let e = engine_with(config);
        assert_eq!(code(register(&e, 1, Some("welcome"))), ErrorCode::InviteRequired);
    }

    #[test]
    fn session_requests_must_come_from_the_session_key() {
        let e = engine();
        let m = write_msg(1, 2, "a", 1, 0);
        let json = m.to_json();
        assert!(e.parse_in_session(&json, &key(1).public_key()).is_ok());
        assert_eq!(code(e.parse_in_session(&json, &key(3).public_key())), ErrorCode::Forbidden);
        // A signed request is not accepted as an unsigned session request, and vice versa.
        let signed = m.clone().sign_with_aux(&key(1), &[0; 32]).expect("signs").to_json();
        assert_eq!(code(e.parse_in_session(&signed, &key(1).public_key())), ErrorCode::BadRequest);
        assert_eq!(code(e.parse(&json)), ErrorCode::BadRequest);
    }

    #[test]
    fn stored_bytes_round_trip_with_and_without_signature() {
        let m = write_msg(1, 2, "a", 3, 0);
        let unsigned = verified(m.clone());
        assert_eq!(Verified::from_stored_bytes(&unsigned.stored_bytes()).expect("decodes"), unsigned);
        let signed = Verified::signed(m.sign_with_aux(&key(1), &[0; 32]).expect("signs"));
        assert_eq!(Verified::from_stored_bytes(&signed.stored_bytes()).expect("decodes"), signed);
        assert!(signed.to_json().contains("\"sig\""));
        assert!(!unsigned.to_json().contains("\"sig\""));
    }
}
