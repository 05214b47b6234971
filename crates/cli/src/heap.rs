//! The binary's allocator: jemalloc, and its own account of the heap as Prometheus gauges.
//!
//! With glibc's allocator the relay's resident memory climbed under a steady write load
//! (its per-thread arenas keep what the commit thread, the storage engine's flush workers and
//! the request tasks free) while the live heap stayed near 40–60 MB; jemalloc hands freed
//! pages back after a few seconds (`dirty_decay_ms`). The gauges tell the two apart for an
//! operator watching memory: `pigeonhole_heap_allocated_bytes` (live allocations) and
//! `pigeonhole_heap_resident_bytes` (pages the allocator holds).

use std::time::Duration;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How often the heap gauges are refreshed.
const REFRESH: Duration = Duration::from_secs(5);

/// Starts a thread that refreshes the heap gauges every few seconds for the life of the
/// process (a relay runs until it exits). Does nothing where jemalloc is not the allocator.
pub(crate) fn report_heap_metrics() {
    #[cfg(not(target_env = "msvc"))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        let started = std::thread::Builder::new().name("heap-metrics".into()).spawn(|| {
            let (Ok(epoch_mib), Ok(allocated), Ok(resident)) =
                (epoch::mib(), stats::allocated::mib(), stats::resident::mib())
            else {
                tracing::warn!("jemalloc statistics are unavailable: no heap gauges");
                return;
            };
            loop {
                // Statistics are cached by jemalloc until the epoch advances.
                if epoch_mib.advance().is_ok()
                    && let (Ok(allocated), Ok(resident)) = (allocated.read(), resident.read())
                {
                    metrics::gauge!("pigeonhole_heap_allocated_bytes").set(allocated as f64);
                    metrics::gauge!("pigeonhole_heap_resident_bytes").set(resident as f64);
                }
                std::thread::sleep(REFRESH);
            }
        });
        if let Err(e) = started {
            tracing::warn!("cannot start the heap-metrics thread: {e}");
        }
    }
}
