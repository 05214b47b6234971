//! The group-commit writer. Writes from every connection queue here (a bounded queue: when it
//! is full new writes get 503, never unbounded memory); one thread takes everything waiting,
//! commits it to the store in one durable batch, signs one Merkle root over the batch, and
//! answers each writer with its receipt. A write is acknowledged only after the store has
//! made it durable.

use std::sync::Arc;
use std::thread::JoinHandle;

use pigeonhole_proto::receipt::{CommitGroup, ReceiptLeaf, WriteReceipt};
use pigeonhole_store::{NewRecord, PutOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, random_aux};
use crate::error::{ErrorCode, RelayError};
use crate::notify::Notifier;

/// The answer to an accepted write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The record's sequence number.
    pub seq: u64,
    /// Whether the same write was already stored (nothing changed).
    pub duplicate: bool,
    /// The relay's signed receipt.
    pub receipt: WriteReceipt,
}

struct Job {
    record: NewRecord,
    reply: oneshot::Sender<Result<WriteOutcome, RelayError>>,
}

/// Handle to the commit thread.
pub struct Committer {
    queue: mpsc::Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the commit thread.
    pub fn start(engine: Arc<Engine>, notifier: Arc<Notifier>) -> Self {
        let (queue, jobs) = mpsc::channel(engine.config().limits.commit_queue);
        let thread = std::thread::Builder::new()
            .name("pigeonhole-commit".into())
            .spawn(move || commit_loop(&engine, &notifier, jobs))
            .expect("the OS lets us start one thread at startup");
        Self { queue, thread: Some(thread) }
    }

    /// Queues a write and waits until it is durable (or refused).
    pub async fn submit(&self, record: NewRecord) -> Result<WriteOutcome, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Job { record, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("pigeonhole_rejections_total", "reason" => "commit_queue_full")
                    .increment(1);
                RelayError::new(ErrorCode::Busy, "the relay is busy committing writes; retry shortly")
            }
            mpsc::error::TrySendError::Closed(_) => {
                RelayError::new(ErrorCode::Busy, "the relay is shutting down")
            }
        })?;
        answer.await.map_err(|_| RelayError::new(ErrorCode::Busy, "the relay is shutting down"))?
    }

    /// Stops accepting writes, commits everything already queued, and joins the thread.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        // Replacing the sender with a closed one drops the last sender: the thread drains the
        // queue and exits.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.close();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn commit_loop(engine: &Engine, notifier: &Notifier, mut jobs: mpsc::Receiver<Job>) {
    let max_batch = engine.config().limits.max_commit_batch;
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(engine, notifier, batch);
    }
}

fn commit_batch(engine: &Engine, notifier: &Notifier, batch: Vec<Job>) {
    let started = std::time::Instant::now();
    let (records, replies): (Vec<NewRecord>, Vec<_>) =
        batch.into_iter().map(|job| (job.record, job.reply)).unzip();
    let outcomes = match engine.store().put_batch(&records) {
        Ok(outcomes) => outcomes,
        Err(error) => {
            let error = RelayError::from(error);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
    };
    metrics::histogram!("pigeonhole_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("pigeonhole_commit_batch_size").record(records.len() as f64);

    let relay = engine.public_key();
    let mut group = CommitGroup::new();
    let mut pending = Vec::with_capacity(records.len());
    for ((record, outcome), reply) in records.iter().zip(&outcomes).zip(replies) {
        let (seq, stored_at, expires_at, duplicate) = match *outcome {
            PutOutcome::Stored { seq } => {
                engine.committed(record);
                notifier.notify(&record.owner, &record.receiver);
                (seq, record.stored_at, record.expires_at, false)
            }
            PutOutcome::Duplicate { seq, stored_at, expires_at } => (seq, stored_at, expires_at, true),
            PutOutcome::Conflict => {
                let _ = reply.send(Err(RelayError::new(
                    ErrorCode::Conflict,
                    "a different record already has this path; choose a new record id",
                )));
                continue;
            }
        };
        let leaf = ReceiptLeaf {
            relay,
            owner: record.owner,
            receiver: record.receiver,
            record_id: record.record_id.clone(),
            record_hash: record.record_hash,
            seq,
            stored_at,
            expires_at,
        };
        if group.push(leaf).is_err() {
            // The batch is capped at max_commit_batch <= MAX_GROUP_SIZE by config validation.
            let _ = reply.send(Err(RelayError::new(ErrorCode::Internal, "commit group overflow")));
            continue;
        }
        pending.push((seq, duplicate, reply));
    }
    if pending.is_empty() {
        return;
    }
    match group.sign_with_aux(engine.signing_key(), now_ms(), &random_aux()) {
        Ok(receipts) => {
            for ((seq, duplicate, reply), receipt) in pending.into_iter().zip(receipts) {
                let _ = reply.send(Ok(WriteOutcome { seq, duplicate, receipt }));
            }
        }
        Err(error) => {
            let error = RelayError::internal("signing a commit group failed", &error);
            for (_, _, reply) in pending {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
