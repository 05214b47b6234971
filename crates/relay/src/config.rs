//! Relay configuration: a TOML file, with every setting also reachable as a command-line flag
//! or environment variable (the binary merges them; this module only knows the file format).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Who may open an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccountPolicy {
    /// Any key may register (rate-limited per IP). The default for a local relay.
    #[default]
    Open,
    /// Only keys the operator added, or that present one of the configured invite codes.
    Invite,
    /// Paid contracts (not yet available: registration is refused, operator-added keys work).
    Contract,
}

impl AccountPolicy {
    /// The policy's wire number in the info document.
    pub fn as_u8(self) -> u8 {
        match self {
            AccountPolicy::Open => 0,
            AccountPolicy::Invite => 1,
            AccountPolicy::Contract => 2,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Limits the relay enforces on every request and record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest sealed content of one record, in bytes.
    pub max_record_bytes: u32,
    /// Largest HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// TTL applied when a write asks for 0, in seconds.
    pub default_ttl_secs: u32,
    /// Longest TTL granted, in seconds; longer requests are capped.
    pub max_ttl_secs: u32,
    /// Reads allowed per record before it is deleted (0 = unlimited).
    pub pull_limit: u32,
    /// Accepted clock difference between a request's timestamp and the relay, in seconds.
    pub max_skew_secs: u32,
    /// Most ids returned by one inventory.
    pub max_inventory: u32,
    /// Longest long-poll wait, in seconds.
    pub max_wait_secs: u32,
    /// Seconds a WebSocket listener may take no push (its connection's outbound budget full)
    /// before it is closed with 4008 and its cursor; until then a slow reader is paced.
    pub listener_stall_secs: u32,
    /// Largest group of writes committed (and receipted) together.
    pub max_commit_batch: usize,
    /// Writes waiting for the commit thread before new ones are refused with 503.
    pub commit_queue: usize,
    /// Microseconds a small commit group waits for more writes to join it, when writes arrive
    /// in a stream (the last commit ended less than this long ago): fewer, larger commits,
    /// each one `fdatasync`, for up to this much more ack latency. 0 commits at once.
    pub commit_linger_us: u32,
    /// Commit groups of at least this many writes never wait.
    pub commit_linger_below: usize,
    /// Sustained requests per second allowed from one IP address.
    pub requests_per_sec_per_ip: u32,
    /// Burst allowed above the sustained rate, per IP.
    pub burst_per_ip: u32,
    /// Registrations per hour allowed from one IP address (open policy).
    pub registrations_per_hour_per_ip: u32,
    /// Sustained writes per second allowed for one account (over every connection).
    pub writes_per_sec_per_account: u32,
    /// Burst of writes allowed above the sustained rate, per account.
    pub write_burst_per_account: u32,
    /// Concurrent connections served; more wait in the accept queue.
    pub max_connections: usize,
    /// Seconds a client may take to send its request.
    pub request_timeout_secs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: pigeonhole_proto::request::MAX_CONTENT_LEN as u32,
            max_body_bytes: 256 * 1024,
            default_ttl_secs: 30 * 86_400,
            max_ttl_secs: 90 * 86_400,
            pull_limit: 0,
            max_skew_secs: 120,
            max_inventory: 1000,
            max_wait_secs: 60,
            listener_stall_secs: 30,
            max_commit_batch: 1024,
            commit_queue: 8192,
            commit_linger_us: 1_000,
            commit_linger_below: 16,
            requests_per_sec_per_ip: 200,
            burst_per_ip: 400,
            registrations_per_hour_per_ip: 20,
            writes_per_sec_per_account: 2_000,
            write_burst_per_account: 4_000,
            max_connections: 4096,
            request_timeout_secs: 30,
        }
    }
}

/// Account policy and default quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Who may register.
    pub policy: AccountPolicy,
    /// Invite codes accepted under the `invite` policy.
    pub invite_codes: Vec<String>,
    /// Default quota: bytes stored at once per account.
    pub max_bytes: u64,
    /// Default quota: records accepted per account per UTC day.
    pub max_records_per_day: u32,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            policy: AccountPolicy::Open,
            invite_codes: Vec::new(),
            max_bytes: 1 << 30,
            max_records_per_day: 100_000,
        }
    }
}

/// Announced prices (millisatoshi). Informational until contracts exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// Storage, per GiB per day.
    pub storage_msat_per_gib_day: u64,
    /// Bandwidth served, per GiB.
    pub bandwidth_msat_per_gib: u64,
    /// An account, per 30 days.
    pub account_msat_per_month: u64,
}

/// Anonymous drops (spec §7, §11.6): retention and buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropsConfig {
    /// Whether the relay accepts and serves drops at all.
    pub enabled: bool,
    /// Largest sealed envelope of one drop, in bytes.
    pub max_drop_bytes: u32,
    /// TTL applied when a drop asks for 0, in seconds.
    pub default_ttl_secs: u32,
    /// Longest TTL granted, in seconds; longer requests are capped.
    pub max_ttl_secs: u32,
    /// Most live drops in one 16-bit bucket (the first 16 bits of the tag); 0 = no cap.
    /// A full bucket refuses new drops (without spending their postage) until some expire.
    pub bucket_cap: u32,
    /// Most drops returned by one fetch.
    pub max_page: u32,
    /// Most long polls and WebSocket subscriptions waiting at once, over all buckets.
    pub max_waiters: usize,
}

impl Default for DropsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_drop_bytes: pigeonhole_proto::request::MAX_CONTENT_LEN as u32,
            default_ttl_secs: 7 * 86_400,
            max_ttl_secs: 30 * 86_400,
            bucket_cap: 100_000,
            max_page: 500,
            max_waiters: 50_000,
        }
    }
}

/// Who may obtain postage tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IssuePolicy {
    /// Account holders only, with a request signed by the account key, up to a daily quota.
    Accounts,
    /// Account holders as above, and anyone else under a per-IP daily quota: what lets a
    /// stranger post a first-contact drop to a relay it has no account on. The default.
    #[default]
    Open,
}

/// Drop postage: blind tokens (RFC 9497 VOPRF), one spent per drop (spec §7.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostageConfig {
    /// Length of a token epoch, in seconds: each epoch has its own key, and tokens are
    /// accepted only during their epoch (plus `grace_secs`).
    pub epoch_secs: u32,
    /// Seconds after an epoch ends during which its tokens are still accepted (clock skew,
    /// drops in flight at the rollover).
    pub grace_secs: u32,
    /// Who may obtain tokens.
    pub issue: IssuePolicy,
    /// Tokens an account may obtain per UTC day.
    pub per_account_per_day: u32,
    /// Tokens one IP address may obtain per day without an account (`issue = "open"`).
    pub per_ip_per_day: u32,
}

impl Default for PostageConfig {
    fn default() -> Self {
        Self {
            epoch_secs: 86_400,
            grace_secs: 300,
            issue: IssuePolicy::Open,
            per_account_per_day: 1_000,
            per_ip_per_day: 20,
        }
    }
}

/// The embedded store's memory and background work. What the relay's memory comes to under
/// load is about `cache_mib + journal_mib` plus a few tens of MiB for connections and
/// compaction buffers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Block cache, in MiB: the data, index and filter blocks kept in memory after a read.
    pub cache_mib: u32,
    /// Journal kept before the oldest memtables are flushed, in MiB (at least 64): a bound on
    /// the memory all memtables hold together, and on what a restart replays.
    pub journal_mib: u32,
    /// Flush and compaction threads; 0 means one per core, at most 4.
    pub workers: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let store = pigeonhole_store::FjallConfig::default();
        let mib = |bytes: u64| u32::try_from(bytes >> 20).unwrap_or(u32::MAX);
        Self {
            cache_mib: mib(store.cache_bytes),
            journal_mib: mib(store.journal_bytes),
            workers: u32::try_from(store.worker_threads).unwrap_or(0),
        }
    }
}

impl StorageConfig {
    /// The store's tuning for these settings.
    pub fn fjall(&self) -> pigeonhole_store::FjallConfig {
        const MIB: u64 = 1024 * 1024;
        pigeonhole_store::FjallConfig {
            cache_bytes: u64::from(self.cache_mib) * MIB,
            journal_bytes: u64::from(self.journal_mib) * MIB,
            worker_threads: self.workers as usize,
            ..Default::default()
        }
    }
}

/// The whole relay configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (store, relay key).
    pub data: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Request and record limits.
    pub limits: Limits,
    /// Account policy and quotas.
    pub accounts: AccountsConfig,
    /// Announced prices.
    pub prices: Prices,
    /// Anonymous drops.
    pub drops: DropsConfig,
    /// Drop postage.
    pub postage: PostageConfig,
    /// The embedded store's memory and background threads.
    pub storage: StorageConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data: PathBuf::from("pigeonhole-relay"),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            accounts: AccountsConfig::default(),
            prices: Prices::default(),
            drops: DropsConfig::default(),
            postage: PostageConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting `{field}`: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// The rule broken.
        reason: &'static str,
    },
}

impl RelayConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }

    /// Checks ranges that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let invalid = |field, reason| Err(ConfigError::Invalid { field, reason });
        if l.max_record_bytes as usize > pigeonhole_proto::request::MAX_CONTENT_LEN {
            return invalid("limits.max_record_bytes", "above the protocol's largest envelope (65636)");
        }
        if l.max_body_bytes < 1024 {
            return invalid("limits.max_body_bytes", "must be at least 1024");
        }
        if l.max_ttl_secs == 0 || l.default_ttl_secs == 0 || l.default_ttl_secs > l.max_ttl_secs {
            return invalid("limits.default_ttl_secs", "TTLs must be positive and default <= max");
        }
        if l.max_commit_batch == 0 || l.max_commit_batch > pigeonhole_proto::receipt::MAX_GROUP_SIZE as usize
        {
            return invalid("limits.max_commit_batch", "must be between 1 and 65536");
        }
        if l.commit_linger_us > 100_000 {
            return invalid("limits.commit_linger_us", "at most 100000 (0.1 s)");
        }
        if l.commit_queue == 0 || l.max_inventory == 0 || l.max_connections == 0 {
            return invalid("limits", "queue, inventory and connection limits must be positive");
        }
        if l.max_wait_secs > 300 {
            return invalid("limits.max_wait_secs", "at most 300");
        }
        if !(1..=600).contains(&l.listener_stall_secs) {
            return invalid("limits.listener_stall_secs", "between 1 and 600");
        }
        if l.requests_per_sec_per_ip == 0
            || l.burst_per_ip == 0
            || l.writes_per_sec_per_account == 0
            || l.write_burst_per_account == 0
        {
            return invalid("limits.requests_per_sec_per_ip", "rate limits must be positive");
        }
        let d = &self.drops;
        if d.max_drop_bytes as usize > pigeonhole_proto::request::MAX_CONTENT_LEN || d.max_drop_bytes < 100 {
            return invalid(
                "drops.max_drop_bytes",
                "between 100 and the protocol's largest envelope (65636)",
            );
        }
        if d.max_ttl_secs == 0 || d.default_ttl_secs == 0 || d.default_ttl_secs > d.max_ttl_secs {
            return invalid("drops.default_ttl_secs", "TTLs must be positive and default <= max");
        }
        if d.max_page == 0 || d.max_waiters == 0 {
            return invalid("drops.max_page", "page size and waiter limit must be positive");
        }
        let p = &self.postage;
        if p.epoch_secs < 1 {
            return invalid("postage.epoch_secs", "must be at least 1");
        }
        if p.grace_secs > p.epoch_secs {
            return invalid("postage.grace_secs", "at most one epoch");
        }
        let st = &self.storage;
        if !(1..=1_048_576).contains(&st.cache_mib) {
            return invalid("storage.cache_mib", "between 1 and 1048576 (1 TiB)");
        }
        if !(64..=1_048_576).contains(&st.journal_mib) {
            return invalid("storage.journal_mib", "between 64 (the storage engine's minimum) and 1048576");
        }
        if st.workers > 64 {
            return invalid("storage.workers", "at most 64 (0 = one per core, at most 4)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let config = RelayConfig::default();
        config.validate().expect("defaults valid");
        let text = toml::to_string(&config).expect("serializes");
        assert_eq!(RelayConfig::from_toml(&text, std::path::Path::new("x.toml")).expect("parses"), config);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let path = std::path::Path::new("relay.toml");
        let err = RelayConfig::from_toml("listen = \"127.0.0.1:1\"\nlisten_port = 3\n", path)
            .expect_err("unknown key");
        assert!(err.to_string().contains("listen_port"), "{err}");
        let err = RelayConfig::from_toml("[limits]\nmax_commit_batch = 0\n", path).expect_err("bad value");
        assert!(err.to_string().contains("max_commit_batch"), "{err}");
        let err =
            RelayConfig::from_toml("[limits]\ncommit_linger_us = 100001\n", path).expect_err("too long");
        assert!(err.to_string().contains("commit_linger_us"), "{err}");
        let off = RelayConfig::from_toml("[limits]\ncommit_linger_us = 0\n", path).expect("0 turns it off");
        assert_eq!(off.limits.commit_linger_us, 0);
        let ok = RelayConfig::from_toml("[accounts]\npolicy = \"invite\"\ninvite_codes = [\"a\"]\n", path)
            .expect("ok");
        assert_eq!(ok.accounts.policy, AccountPolicy::Invite);
        for bad in ["cache_mib = 0", "journal_mib = 32", "workers = 65"] {
            let err = RelayConfig::from_toml(&format!("[storage]\n{bad}\n"), path).expect_err(bad);
            let field = bad.split(' ').next().expect("field");
            assert!(err.to_string().contains(&format!("storage.{field}")), "{err}");
        }
        let ok = RelayConfig::from_toml("[storage]\ncache_mib = 256\nworkers = 2\n", path).expect("ok");
        let fjall = ok.storage.fjall();
        assert_eq!((fjall.cache_bytes, fjall.journal_bytes, fjall.worker_threads), (256 << 20, 128 << 20, 2));
    }
}
