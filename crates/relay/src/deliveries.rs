//! The delivery group: listens and long polls queue the next page of their outbox here (a
//! bounded queue: a full one makes them wait, never unbounded memory), and one thread takes
//! everything waiting and serves it with one store commit ([`Engine::deliver_many`]).
//!
//! A commit wakes every listener of the outboxes it wrote to. Served one by one, each page
//! took the store's write lock, walked its outbox and appended its read counts to the journal
//! on its own blocking thread, queued behind the commit thread's fsync and then ahead of its
//! next batch: with hundreds of listens, pages and commits took turns on the lock. Here the
//! pages woken together are counted together.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::engine::{DeliveredPage, Delivery, Engine};
use crate::error::{ErrorCode, RelayError};
use crate::http::now_ms;
use crate::worker::GroupThread;

/// Pages waiting for the delivery thread before listeners wait to queue theirs.
pub const DELIVERY_QUEUE: usize = 4096;
/// Most pages served in one commit.
pub const MAX_DELIVERY_GROUP: usize = 64;

// A group of full listen pushes fits in one store call, which serves at most MAX_READ_BATCH
// records: no listener's page comes back cut short by the others in its group.
const _: () = assert!(MAX_DELIVERY_GROUP * crate::ws::PUSH_RECORDS <= pigeonhole_store::MAX_READ_BATCH);

struct Job {
    page: Delivery,
    reply: oneshot::Sender<Result<DeliveredPage, RelayError>>,
}

/// Handle to the delivery thread.
pub struct Deliveries {
    thread: GroupThread<Job>,
}

fn stopping() -> RelayError {
    RelayError::new(ErrorCode::Busy, "the relay is shutting down")
}

impl Deliveries {
    /// Starts the delivery thread.
    pub fn start(engine: Arc<Engine>) -> Self {
        let thread = GroupThread::start(
            "pigeonhole-deliver",
            DELIVERY_QUEUE,
            MAX_DELIVERY_GROUP,
            None,
            move |group| {
                deliver_group(&engine, group);
            },
        );
        Self { thread }
    }

    /// Serves one page, grouped with whatever other pages are waiting.
    pub async fn deliver(&self, page: Delivery) -> Result<DeliveredPage, RelayError> {
        self.submit(page).await?.wait().await
    }

    /// Queues one page and returns at once (once it is queued): the page is read while the
    /// caller does other work, such as sending the page before it. Dropping the
    /// [`PendingPage`] before the delivery thread reaches it cancels the read; dropped after,
    /// the records stay counted, as a read whose answer was lost.
    pub async fn submit(&self, page: Delivery) -> Result<PendingPage, RelayError> {
        let (reply, answer) = oneshot::channel();
        self.thread.queue().send(Job { page, reply }).await.map_err(|_| stopping())?;
        Ok(PendingPage(answer))
    }
}

/// A page queued by [`Deliveries::submit`].
pub struct PendingPage(oneshot::Receiver<Result<DeliveredPage, RelayError>>);

impl PendingPage {
    /// Waits for the page.
    pub async fn wait(self) -> Result<DeliveredPage, RelayError> {
        self.0.await.map_err(|_| stopping())?
    }
}

fn deliver_group(engine: &Engine, mut group: Vec<Job>) {
    // A listener that went away while queued needs no page (and no read counted).
    group.retain(|job| !job.reply.is_closed());
    if group.is_empty() {
        return;
    }
    let pages: Vec<Delivery> = group.iter().map(|job| job.page).collect();
    let answers = engine.deliver_many(&pages, now_ms());
    metrics::histogram!("pigeonhole_delivery_group_pages").record(pages.len() as f64);
    for (job, answer) in group.into_iter().zip(answers) {
        // A listener gone since keeps no page: its records were counted, as a read whose
        // answer was lost would be.
        let _ = job.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayConfig;
    use crate::engine::PageSize;
    use pigeonhole_proto::keys::{PublicKey, SecretKey};
    use pigeonhole_store::{MemoryStore, NewRecord, Store};

    fn key(n: u8) -> PublicKey {
        SecretKey::from_bytes(&[n; 32]).expect("valid").public_key()
    }

    fn record(owner: u8, receiver: u8, id: u32, max_pulls: u32) -> NewRecord {
        NewRecord {
            owner: key(owner),
            receiver: key(receiver),
            record_id: format!("r{id}"),
            tag: None,
            stored_at: 1,
            expires_at: u64::MAX,
            max_pulls,
            record_hash: [id as u8; 32],
            bytes: vec![id as u8; 10],
        }
    }

    fn page(reader: u8, owner: u8, receiver: u8) -> Delivery {
        Delivery {
            reader: key(reader),
            owner: key(owner),
            receiver: key(receiver),
            after_seq: 0,
            size: PageSize { records: 100, bytes: 1 << 20 },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_listeners_each_get_their_own_page() {
        let store = Arc::new(MemoryStore::new());
        // Forty outboxes (owner 1 → receivers 10..50) of three records each, the first record
        // of each readable once.
        let mut records = Vec::new();
        for receiver in 10u8..50 {
            for n in 0..3 {
                records.push(record(1, receiver, u32::from(receiver) * 10 + n, u32::from(n == 0)));
            }
        }
        store.put_batch(&records).expect("put");
        let engine = Arc::new(Engine::new(
            store.clone(),
            SecretKey::from_bytes(&[99; 32]).expect("valid"),
            RelayConfig::default(),
        ));
        let deliveries = Arc::new(Deliveries::start(engine));
        let mut tasks = tokio::task::JoinSet::new();
        for receiver in 10u8..50 {
            // Every receiver listens twice (two devices); the owner watches too.
            for reader in [receiver, receiver, 1] {
                let deliveries = deliveries.clone();
                tasks.spawn(async move {
                    let answer = deliveries.deliver(page(reader, 1, receiver)).await;
                    (reader, receiver, answer)
                });
            }
        }
        let mut served = std::collections::HashMap::<u8, usize>::new();
        while let Some(done) = tasks.join_next().await {
            let (reader, receiver, answer) = done.expect("task");
            let DeliveredPage { records, cursor, more } = answer.expect("page");
            assert!(!more, "every page holds its whole outbox");
            assert!(records.iter().all(|r| r.meta.receiver == key(receiver) && r.meta.owner == key(1)));
            assert_eq!(cursor, records.last().map_or(0, |r| r.meta.seq));
            if reader == receiver {
                *served.entry(receiver).or_default() += records.len();
            } else {
                // Not a read; it has the read-once record unless a receiver's page used it up.
                assert!((2..=3).contains(&records.len()), "the owner saw {} records", records.len());
            }
        }
        // Each receiver's two pages counted the read-once record exactly once between them.
        for receiver in 10u8..50 {
            assert_eq!(served[&receiver], 5, "receiver {receiver}: 3 + 2 records");
        }
        assert_eq!(store.owner_usage(&key(1)).expect("usage").records, 80, "the read-once records are gone");
        assert_eq!(
            store.usage(&key(1), None, None, 1000).expect("usage log").len(),
            200,
            "every read logged"
        );
        // Dropping the last handle closes the queue and joins the thread (this returns).
        let deliveries = Arc::into_inner(deliveries).expect("the last handle");
        drop(deliveries);
    }
}
