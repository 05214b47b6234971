//! Samples of processes and the machine from `/proc` (Linux): a process's RSS and CPU time
//! (also per thread name), the machine's busy CPU time, and the bytes of a directory tree.
//! Every reader returns `None` where the information is not available (another OS, a process
//! that is gone), so a missing sample never fails a run.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`: 100 on every Linux architecture
/// that Rust targets; `getconf CLK_TCK` prints it).
const TICKS_PER_SEC: f64 = 100.0;

/// Memory of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Memory {
    /// Resident set size, KiB (`VmRSS`).
    pub(crate) rss_kb: Option<u64>,
    /// Peak resident set size, KiB (`VmHWM`).
    pub(crate) peak_rss_kb: Option<u64>,
}

/// Reads `VmRSS` and `VmHWM` of process `pid`.
pub(crate) fn memory(pid: u32) -> Memory {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Memory::default() };
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Memory { rss_kb: field("VmRSS:"), peak_rss_kb: field("VmHWM:") }
}

/// User plus system CPU ticks from a `stat` file's text (`/proc/PID/stat` or a task's).
fn stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields restart after the
    // last ')'. utime and stime are fields 14 and 15, i.e. 11 and 12 after it.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by process `pid` (all its threads, living and exited).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks of the living threads of `pid`, summed by thread name.
pub(crate) fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).map(|s| s.trim().to_owned());
        let ticks = std::fs::read_to_string(path.join("stat")).ok().and_then(|t| stat_ticks(&t));
        if let (Ok(name), Some(ticks)) = (name, ticks) {
            *out.entry(name).or_insert(0) += ticks;
        }
    }
    out
}

/// Busy CPU ticks of the whole machine (all cores: everything but idle and iowait).
pub(crate) fn machine_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user already).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle))
}

/// Total bytes of the regular files under `dir` (symlinks are not followed).
pub(crate) fn disk_bytes(dir: &Path) -> Option<u64> {
    fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else if meta.is_file() {
                *total += meta.len();
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(dir, &mut total).ok()?;
    Some(total)
}

/// A point-in-time sample of CPU counters, for windows.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuSnapshot {
    relay: Option<u64>,
    relay_threads: BTreeMap<String, u64>,
    bench: Option<u64>,
    machine: Option<u64>,
    at: Option<std::time::Instant>,
}

impl CpuSnapshot {
    /// Takes a sample (the relay's counters only when its pid is known).
    pub(crate) fn take(relay_pid: Option<u32>) -> Self {
        Self {
            relay: relay_pid.and_then(cpu_ticks),
            relay_threads: relay_pid.map(thread_ticks).unwrap_or_default(),
            bench: cpu_ticks(std::process::id()),
            machine: machine_busy_ticks(),
            at: Some(std::time::Instant::now()),
        }
    }
}

/// CPU used during a window, in cores (1.0 = one core busy the whole window).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct CpuWindow {
    /// Length of the window, seconds.
    pub(crate) seconds: f64,
    /// The relay process.
    pub(crate) relay_cores: Option<f64>,
    /// The relay's threads, by name (threads that exited during the window are missing).
    pub(crate) relay_threads: BTreeMap<String, f64>,
    /// This benchmark process (the load generator).
    pub(crate) bench_cores: Option<f64>,
    /// The whole machine.
    pub(crate) machine_cores: Option<f64>,
    /// Everything else on the machine: machine - relay - bench.
    pub(crate) other_cores: Option<f64>,
    /// Cores the machine has.
    pub(crate) machine_cpus: usize,
}

impl CpuWindow {
    /// The CPU used between two samples.
    pub(crate) fn between(start: &CpuSnapshot, end: &CpuSnapshot) -> Self {
        let seconds = match (start.at, end.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let cores = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if seconds > 0.0 => {
                Some(round3(b.saturating_sub(a) as f64 / TICKS_PER_SEC / seconds))
            }
            _ => None,
        };
        let relay_cores = cores(start.relay, end.relay);
        let bench_cores = cores(start.bench, end.bench);
        let machine_cores = cores(start.machine, end.machine);
        let other_cores = match (machine_cores, relay_cores, bench_cores) {
            (Some(m), Some(r), Some(b)) => Some(round3((m - r - b).max(0.0))),
            _ => None,
        };
        let mut relay_threads = BTreeMap::new();
        if seconds > 0.0 {
            for (name, after) in &end.relay_threads {
                let before = start.relay_threads.get(name).copied().unwrap_or(0);
                let used = after.saturating_sub(before) as f64 / TICKS_PER_SEC / seconds;
                if used >= 0.005 {
                    relay_threads.insert(name.clone(), round3(used));
                }
            }
        }
        Self {
            seconds: round3(seconds),
            relay_cores,
            relay_threads,
            bench_cores,
            machine_cores,
            other_cores,
            machine_cpus: std::thread::available_parallelism().map_or(0, usize::from),
        }
    }
}

/// Rounds to three decimals (for readable JSON).
pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The relay's memory and disk at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct RelaySample {
    /// Resident set size, KiB.
    pub(crate) rss_kb: Option<u64>,
    /// Peak resident set size so far, KiB.
    pub(crate) peak_rss_kb: Option<u64>,
    /// Bytes of the files under the data directory.
    pub(crate) disk_bytes: Option<u64>,
}

impl RelaySample {
    /// Samples what is known: memory when the pid is, disk when the data directory is.
    pub(crate) fn take(pid: Option<u32>, data: Option<&Path>) -> Self {
        let memory = pid.map(memory).unwrap_or_default();
        Self { rss_kb: memory.rss_kb, peak_rss_kb: memory.peak_rss_kb, disk_bytes: data.and_then(disk_bytes) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let text = "1234 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 1 0";
        assert_eq!(stat_ticks(text), Some(333));
    }

    #[test]
    fn this_process_is_visible() {
        if !Path::new("/proc/self/stat").exists() {
            return;
        }
        let me = std::process::id();
        assert!(memory(me).rss_kb.is_some_and(|kb| kb > 0));
        assert!(cpu_ticks(me).is_some());
        assert!(!thread_ticks(me).is_empty());
        assert!(machine_busy_ticks().is_some());
    }

    #[test]
    fn disk_bytes_sums_nested_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), [0u8; 10]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).expect("write");
        assert_eq!(disk_bytes(dir.path()), Some(15));
        assert_eq!(disk_bytes(&dir.path().join("missing")), None);
    }
}
