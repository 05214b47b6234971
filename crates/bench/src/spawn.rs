//! The relay under test: a URL given on the command line, or a `pigeonhole serve` child
//! process that this run starts (`--spawn`) and stops with SIGTERM at the end.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::RelayArgs;

/// Settings raised on a spawned relay, so that a benchmark from one address measures the relay
/// rather than its abuse limits. Only the ones the binary knows are passed (checked against
/// `pigeonhole serve --print-config`), so older and newer relays both start.
const RAISED: &[(&str, &str)] = &[
    ("limits.requests_per_sec_per_ip", "1000000"),
    ("limits.burst_per_ip", "1000000"),
    ("limits.registrations_per_hour_per_ip", "1000000"),
    ("limits.writes_per_sec_per_account", "1000000"),
    ("limits.write_burst_per_account", "1000000"),
    ("accounts.max_records_per_day", "1000000000"),
    ("accounts.max_bytes", "1099511627776"),
    ("postage.per_account_per_day", "1000000000"),
];

/// How long a spawned relay may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a spawned relay may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay a command talks to.
pub(crate) struct Relay {
    /// Base URL, without a trailing slash.
    pub(crate) url: String,
    /// Its process id, when known (for memory and CPU samples).
    pub(crate) pid: Option<u32>,
    /// Its data directory, when known (for disk samples).
    pub(crate) data: Option<PathBuf>,
    /// The child process, when this run started it.
    spawned: Option<Spawned>,
}

struct Spawned {
    child: Child,
    /// Holds the log (and, without --spawn-data, the data directory) until the relay stops.
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Relay {
    /// The relay named by `args`, starting one if `--spawn` was given.
    pub(crate) async fn resolve(args: &RelayArgs) -> Result<Self> {
        if args.spawn {
            let binary = match &args.pigeonhole {
                Some(path) => path.clone(),
                None => default_binary()?,
            };
            let data = args.spawn_data.clone();
            let mut relay = tokio::task::spawn_blocking(move || spawn(&binary, data.as_deref()))
                .await
                .context("starting the relay")??;
            if args.relay_pid.is_some() {
                relay.pid = args.relay_pid;
            }
            return Ok(relay);
        }
        let Some(url) = &args.relay else {
            bail!("name a relay with --relay URL, or start one with --spawn");
        };
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            pid: args.relay_pid,
            data: args.relay_data.clone(),
            spawned: None,
        })
    }

    /// Whether this run started the relay (its limits are raised).
    pub(crate) fn is_spawned(&self) -> bool {
        self.spawned.is_some()
    }

    /// Stops a spawned relay (SIGTERM, then SIGKILL after a timeout); nothing for a given one.
    pub(crate) async fn stop(mut self) -> Result<()> {
        let Some(spawned) = self.spawned.take() else { return Ok(()) };
        tokio::task::spawn_blocking(move || spawned.stop()).await.context("stopping the relay")?
    }
}

impl Spawned {
    fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        // `kill` the command: the workspace forbids the unsafe libc call.
        let _ = Command::new("kill").args(["-TERM", &pid]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the relay")? {
                if !status.success() {
                    eprintln!(
                        "warning: the spawned relay exited with {status}; its log: {}",
                        self.log_tail()
                    );
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the spawned relay did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Only reached when a run fails before `stop`: never leave a relay behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `pigeonhole` next to this executable (cargo puts both in `target/<profile>/`).
fn default_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    let binary = dir.join(format!("pigeonhole{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        bail!(
            "no relay binary at {}: build it (cargo build --release -p pigeonhole) or pass --pigeonhole PATH",
            binary.display()
        );
    }
    Ok(binary)
}

/// The `section.key` names a relay binary knows, from its `--print-config`.
fn known_settings(binary: &Path) -> Result<BTreeSet<String>> {
    let output = Command::new(binary)
        .args(["serve", "--print-config"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} serve --print-config", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} serve --print-config failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut known = BTreeSet::new();
    let mut section = String::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            known.insert(if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") });
        }
    }
    Ok(known)
}

/// Starts `pigeonhole serve` on 127.0.0.1 with a free port and waits for its address.
fn spawn(binary: &Path, data: Option<&Path>) -> Result<Relay> {
    let known = known_settings(binary)?;
    let dir =
        tempfile::Builder::new().prefix("pigeonhole-bench-").tempdir().context("creating a temp dir")?;
    let data = data.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
    let log = dir.path().join("relay.log");
    let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(binary);
    command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(&data);
    for (key, value) in RAISED {
        if known.contains(*key) {
            command.arg("--set").arg(format!("{key}={value}"));
        }
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("the relay's stdout")?;
    let (first_line, line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first_line.send(lines.next());
        // Keep draining: a closed pipe must never be what stops the relay.
        for _ in lines {}
    });
    let pid = child.id();
    let mut spawned = Spawned { child, _dir: dir, log };
    let first = match line.recv_timeout(START_TIMEOUT) {
        Ok(Some(Ok(line))) => line,
        _ => {
            let tail = spawned.log_tail();
            let _ = spawned.child.kill();
            bail!(
                "the relay did not print `listening on http://ADDR` within {START_TIMEOUT:?}; its log:\n{tail}"
            );
        }
    };
    let url = first
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line from the relay: {first:?}"))?
        .trim()
        .to_owned();
    Ok(Relay { url, pid: Some(pid), data: Some(data), spawned: Some(spawned) })
}
