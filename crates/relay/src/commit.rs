//! The group-commit writer. Writes and drops from every connection queue here (a bounded queue: when it
//! is full new writes get 503, never unbounded memory); one thread takes everything waiting and
//! commits it to the store in one durable batch. It then hands the batch's receipt leaves to a
//! second thread, which signs one Merkle root over them and answers each writer with its
//! receipt, while the commit thread goes on to the next batch: the commit thread is the relay's
//! one serial stage, so it does nothing that can run beside it. A write is acknowledged only
//! after the store has made it durable.

use std::sync::Arc;
use std::time::Duration;

use pigeonhole_proto::receipt::{CommitGroup, DropLeaf, DropReceipt, Receipt, ReceiptLeaf, WriteReceipt};
use pigeonhole_store::{DropOutcome, NewDrop, NewRecord, PutOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, random_aux};
use crate::error::{ErrorCode, RelayError};
use crate::http::now_ms;
use crate::notify::{DropWaiters, Notifier};
use crate::worker::{GroupThread, Linger};

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

/// The answer to an accepted drop.
#[derive(Debug, Clone)]
pub struct DropCommitted {
    /// The drop's sequence number.
    pub seq: u64,
    /// The relay's signed receipt.
    pub receipt: DropReceipt,
}

enum Job {
    Write(NewRecord, oneshot::Sender<Result<WriteOutcome, RelayError>>),
    Drop(NewDrop, oneshot::Sender<Result<DropCommitted, RelayError>>),
}

/// Handle to the commit thread.
pub struct Committer {
    thread: GroupThread<Job>,
    drop_waiters: Arc<DropWaiters>,
}

fn busy() -> RelayError {
    RelayError::new(ErrorCode::Busy, "the relay is shutting down")
}

impl Committer {
    /// Starts the commit thread.
    pub fn start(engine: Arc<Engine>, notifier: Arc<Notifier>) -> Self {
        let drop_waiters = Arc::new(DropWaiters::default());
        let waiters = drop_waiters.clone();
        let limits = &engine.config().limits;
        let (capacity, max_batch) = (limits.commit_queue, limits.max_commit_batch);
        let signer = engine.clone();
        let receipts = GroupThread::start("pigeonhole-receipts", RECEIPT_QUEUE, 1, None, move |groups| {
            for group in groups {
                answer(&signer, group);
            }
        });
        // A stream of writes too slow to fill groups by itself (open-loop load at a fraction of
        // capacity) would otherwise pay an fdatasync per few writes.
        let linger = (limits.commit_linger_us > 0).then(|| Linger {
            wait: Duration::from_micros(u64::from(limits.commit_linger_us)),
            below: limits.commit_linger_below,
        });
        let thread = GroupThread::start("pigeonhole-commit", capacity, max_batch, linger, move |batch| {
            if let Some(committed) = commit_batch(&engine, &notifier, &waiters, batch) {
                // Waits while the receipt thread is RECEIPT_QUEUE batches behind. The queue
                // closes only when this closure is dropped, so the fallback never runs; it
                // answers in place rather than leave writers without their receipts.
                if let Err(closed) = receipts.queue().blocking_send(committed) {
                    answer(&engine, closed.0);
                }
            }
        });
        Self { thread, drop_waiters }
    }

    /// The registry of drop waiters that commits wake.
    pub fn drop_waiters(&self) -> &Arc<DropWaiters> {
        &self.drop_waiters
    }

    fn enqueue(&self, job: Job) -> Result<(), RelayError> {
        self.thread.queue().try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("pigeonhole_rejections_total", "reason" => "commit_queue_full")
                    .increment(1);
                RelayError::new(ErrorCode::Busy, "the relay is busy committing writes; retry shortly")
            }
            mpsc::error::TrySendError::Closed(_) => busy(),
        })
    }

    /// Queues a write and waits until it is durable (or refused).
    pub async fn submit(&self, record: NewRecord) -> Result<WriteOutcome, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Job::Write(record, reply))?;
        answer.await.map_err(|_| busy())?
    }

    /// Queues a drop and waits until it and its spent stamp are durable (or refused).
    pub async fn submit_drop(&self, drop: NewDrop) -> Result<DropCommitted, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Job::Drop(drop, reply))?;
        answer.await.map_err(|_| busy())?
    }

    /// Stops accepting writes, commits everything already queued, and joins the thread.
    pub fn shutdown(self) {
        drop(self);
    }
}

/// Committed batches waiting for their receipts: a few, so that signing keeps pace with
/// committing and a slow signer holds the commit thread back instead of growing a queue.
const RECEIPT_QUEUE: usize = 4;

type WriteReply = oneshot::Sender<Result<WriteOutcome, RelayError>>;
type DropReply = oneshot::Sender<Result<DropCommitted, RelayError>>;

enum Pending {
    Write { seq: u64, duplicate: bool, reply: WriteReply },
    Drop { seq: u64, reply: DropReply },
}

/// A durable batch whose writers wait for their receipts.
struct Committed {
    group: CommitGroup,
    pending: Vec<Pending>,
}

/// Commits one batch: the writes in one durable store batch, the drops (with their spent
/// stamps) in another. Writers refused or failed are answered here; the rest are returned
/// with the receipt leaves of what they stored, for [`answer`] (`None` when there are none).
fn commit_batch(
    engine: &Engine,
    notifier: &Notifier,
    waiters: &DropWaiters,
    batch: Vec<Job>,
) -> Option<Committed> {
    let started = std::time::Instant::now();
    let mut records = Vec::new();
    let mut write_replies = Vec::new();
    let mut drops = Vec::new();
    let mut drop_replies = Vec::new();
    for job in batch {
        match job {
            Job::Write(record, reply) => {
                records.push(record);
                write_replies.push(reply);
            }
            Job::Drop(drop, reply) => {
                drops.push(drop);
                drop_replies.push(reply);
            }
        }
    }
    let relay = engine.public_key();
    let mut group = CommitGroup::new();
    let mut pending = Vec::with_capacity(records.len() + drops.len());

    if !records.is_empty() {
        match engine.store().put_batch(&records) {
            Ok(outcomes) => {
                for ((record, outcome), reply) in records.iter().zip(&outcomes).zip(write_replies) {
                    let (seq, stored_at, expires_at, duplicate) = match *outcome {
                        PutOutcome::Stored { seq } => {
                            engine.committed(record);
                            notifier.notify(&record.owner, &record.receiver);
                            (seq, record.stored_at, record.expires_at, false)
                        }
                        PutOutcome::Duplicate { seq, stored_at, expires_at } => {
                            (seq, stored_at, expires_at, true)
                        }
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
                        // Batches are capped at max_commit_batch <= MAX_GROUP_SIZE by config.
                        let _ =
                            reply.send(Err(RelayError::new(ErrorCode::Internal, "commit group overflow")));
                        continue;
                    }
                    pending.push(Pending::Write { seq, duplicate, reply });
                }
            }
            Err(error) => {
                let error = RelayError::from(error);
                for reply in write_replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    if !drops.is_empty() {
        match engine.store().put_drops(&drops, engine.config().drops.bucket_cap) {
            Ok(outcomes) => {
                for ((drop, outcome), reply) in drops.iter().zip(&outcomes).zip(drop_replies) {
                    let seq = match *outcome {
                        DropOutcome::Stored { seq } => seq,
                        DropOutcome::Spent => {
                            metrics::counter!("pigeonhole_drops_total", "result" => "spent").increment(1);
                            let _ = reply.send(Err(crate::postage::spent()));
                            continue;
                        }
                        DropOutcome::BucketFull => {
                            metrics::counter!("pigeonhole_drops_total", "result" => "bucket_full")
                                .increment(1);
                            let _ = reply.send(Err(RelayError::new(
                                ErrorCode::BucketFull,
                                "this tag's bucket is full until some of its drops expire; your postage was not spent",
                            )));
                            continue;
                        }
                    };
                    waiters.wake(&drop.tag);
                    let leaf = DropLeaf {
                        relay,
                        tag: drop.tag,
                        drop_hash: drop.drop_hash,
                        seq,
                        stored_at: drop.stored_at,
                        expires_at: drop.expires_at,
                    };
                    if group.push_drop(leaf).is_err() {
                        let _ =
                            reply.send(Err(RelayError::new(ErrorCode::Internal, "commit group overflow")));
                        continue;
                    }
                    pending.push(Pending::Drop { seq, reply });
                }
            }
            Err(error) => {
                let error = RelayError::from(error);
                for reply in drop_replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
    metrics::histogram!("pigeonhole_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("pigeonhole_commit_batch_size").record((records.len() + drops.len()) as f64);
    (!pending.is_empty()).then_some(Committed { group, pending })
}

/// Signs one Merkle root over a committed batch and answers each writer with its receipt.
fn answer(engine: &Engine, Committed { group, pending }: Committed) {
    match group.sign_all_with_aux(engine.signing_key(), now_ms(), &random_aux()) {
        Ok(receipts) => {
            for (pending, receipt) in pending.into_iter().zip(receipts) {
                match (pending, receipt) {
                    (Pending::Write { seq, duplicate, reply }, Receipt::Write(receipt)) => {
                        let _ = reply.send(Ok(WriteOutcome { seq, duplicate, receipt }));
                    }
                    (Pending::Drop { seq, reply }, Receipt::Drop(receipt)) => {
                        let _ = reply.send(Ok(DropCommitted { seq, receipt }));
                    }
                    (Pending::Write { reply, .. }, _) => {
                        let _ =
                            reply.send(Err(RelayError::new(ErrorCode::Internal, "receipt kind mismatch")));
                    }
                    (Pending::Drop { reply, .. }, _) => {
                        let _ =
                            reply.send(Err(RelayError::new(ErrorCode::Internal, "receipt kind mismatch")));
                    }
                }
            }
        }
        Err(error) => {
            let error = RelayError::internal("signing a commit group failed", &error);
            for pending in pending {
                match pending {
                    Pending::Write { reply, .. } => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Pending::Drop { reply, .. } => {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}
