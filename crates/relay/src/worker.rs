//! A thread fed by a bounded queue that takes its jobs in groups: the commit thread and the
//! delivery thread are both one.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// A named thread and the bounded queue that feeds it. Dropping it closes the queue, lets the
/// thread finish what was queued, and joins it.
pub(crate) struct GroupThread<J> {
    queue: mpsc::Sender<J>,
    thread: Option<JoinHandle<()>>,
}

/// When a small group waits for more jobs to join it before it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Linger {
    /// How long it waits; also how recent the last group must be for it to wait at all (jobs
    /// arriving in a stream: an isolated job runs at once).
    pub wait: Duration,
    /// Groups of at least this many jobs run at once.
    pub below: usize,
}

impl<J: Send + 'static> GroupThread<J> {
    /// Starts `name`, which calls `run` with every group of up to `max_group` jobs waiting
    /// together (at least one), in queue order, until the queue is closed and empty. With
    /// `linger`, a group smaller than `linger.below` that starts less than `linger.wait` after
    /// the last group ended first waits `linger.wait` for more jobs.
    pub(crate) fn start(
        name: &str,
        capacity: usize,
        max_group: usize,
        linger: Option<Linger>,
        mut run: impl FnMut(Vec<J>) + Send + 'static,
    ) -> Self {
        let (queue, mut jobs) = mpsc::channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut last_end: Option<Instant> = None;
                while let Some(first) = jobs.blocking_recv() {
                    let mut group = vec![first];
                    take_waiting(&mut jobs, &mut group, max_group);
                    if let Some(linger) = linger
                        && group.len() < linger.below.min(max_group)
                        && last_end.is_some_and(|end| end.elapsed() < linger.wait)
                    {
                        std::thread::sleep(linger.wait);
                        take_waiting(&mut jobs, &mut group, max_group);
                    }
                    run(group);
                    last_end = Some(Instant::now());
                }
            })
            .expect("the OS lets us start a thread at startup");
        Self { queue, thread: Some(thread) }
    }
}

/// Moves the jobs waiting in `jobs` into `group`, up to `max_group` in all.
fn take_waiting<J>(jobs: &mut mpsc::Receiver<J>, group: &mut Vec<J>, max_group: usize) {
    while group.len() < max_group {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

impl<J> GroupThread<J> {
    /// The queue (closed once the thread is stopping).
    pub(crate) fn queue(&self) -> &mpsc::Sender<J> {
        &self.queue
    }
}

impl<J> Drop for GroupThread<J> {
    fn drop(&mut self) {
        // Replacing the sender with a closed one drops the last sender: the thread drains the
        // queue and exits.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use super::*;

    /// Starts a group thread that reports each group it runs.
    fn reporting(linger: Option<Linger>) -> (GroupThread<u32>, std_mpsc::Receiver<Vec<u32>>) {
        let (report, groups) = std_mpsc::channel();
        let thread = GroupThread::start("test-group", 64, 8, linger, move |group| {
            let _ = report.send(group);
        });
        (thread, groups)
    }

    fn next_group(groups: &std_mpsc::Receiver<Vec<u32>>) -> Vec<u32> {
        groups.recv_timeout(Duration::from_secs(10)).expect("a group runs")
    }

    #[test]
    fn a_small_group_in_a_stream_waits_for_more_and_an_isolated_job_does_not() {
        let linger = Linger { wait: Duration::from_millis(300), below: 4 };
        let (thread, groups) = reporting(Some(linger));
        let send = |job| thread.queue().try_send(job).expect("room");
        // The first job has no group before it: it runs alone, at once.
        send(1);
        assert_eq!(next_group(&groups), vec![1]);
        // Right after a group: the next job waits, and one sent 30 ms later joins it.
        send(2);
        std::thread::sleep(Duration::from_millis(30));
        send(3);
        assert_eq!(next_group(&groups), vec![2, 3]);
        // Long after the last group: a job runs alone again.
        std::thread::sleep(Duration::from_millis(600));
        send(4);
        assert_eq!(next_group(&groups), vec![4]);
        drop(thread);
    }

    #[test]
    fn without_a_linger_jobs_sent_apart_run_apart_and_stopping_drains_the_queue() {
        // Without a linger, jobs sent apart run apart.
        let (thread, groups) = reporting(None);
        thread.queue().try_send(1).expect("room");
        assert_eq!(next_group(&groups), vec![1]);
        thread.queue().try_send(2).expect("room");
        std::thread::sleep(Duration::from_millis(50));
        thread.queue().try_send(3).expect("room");
        assert_eq!(next_group(&groups), vec![2]);
        assert_eq!(next_group(&groups), vec![3]);
        drop(thread);
        // The queue is drained in order when the thread stops, whatever the linger.
        let linger = Linger { wait: Duration::from_millis(200), below: 2 };
        let (thread, groups) = reporting(Some(linger));
        for job in 0..5 {
            thread.queue().try_send(job).expect("room");
        }
        drop(thread);
        let all: Vec<u32> = groups.try_iter().flatten().collect();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
