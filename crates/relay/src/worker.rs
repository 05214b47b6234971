//! A thread fed by a bounded queue that takes its jobs in groups: the commit thread and the
//! delivery thread are both one.

use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// A named thread and the bounded queue that feeds it. Dropping it closes the queue, lets the
/// thread finish what was queued, and joins it.
pub(crate) struct GroupThread<J> {
    queue: mpsc::Sender<J>,
    thread: Option<JoinHandle<()>>,
}

impl<J: Send + 'static> GroupThread<J> {
    /// Starts `name`, which calls `run` with every group of up to `max_group` jobs waiting
    /// together (at least one), in queue order, until the queue is closed and empty.
    pub(crate) fn start(
        name: &str,
        capacity: usize,
        max_group: usize,
        mut run: impl FnMut(Vec<J>) + Send + 'static,
    ) -> Self {
        let (queue, mut jobs) = mpsc::channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Some(first) = jobs.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < max_group {
                        match jobs.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    run(group);
                }
            })
            .expect("the OS lets us start a thread at startup");
        Self { queue, thread: Some(thread) }
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
