//! Wake-ups for listeners: a waiter subscribes to one outbox and is woken when a commit stores
//! a record there. Only the waiters of that outbox wake; nothing polls.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pigeonhole_proto::keys::PublicKey;
use tokio::sync::Notify;

type OutboxKey = (PublicKey, PublicKey);

/// Per-outbox wake-up registry.
#[derive(Default)]
pub struct Notifier {
    outboxes: Mutex<HashMap<OutboxKey, Arc<Notify>>>,
}

/// A subscription to one outbox; unsubscribes when dropped.
pub struct Subscription {
    notifier: Arc<Notifier>,
    key: OutboxKey,
    notify: Arc<Notify>,
}

impl Subscription {
    /// The notify handle to wait on. Create the `notified()` future (and `enable` it) before
    /// checking the store, so a commit between the check and the wait is not missed.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.notifier.outboxes.lock();
        // Two references remain when this is the last subscriber: the map's and ours.
        if Arc::strong_count(&self.notify) <= 2 {
            map.remove(&self.key);
        }
    }
}

impl Notifier {
    /// Subscribes to the outbox `(owner, receiver)`.
    pub fn subscribe(self: &Arc<Self>, owner: PublicKey, receiver: PublicKey) -> Subscription {
        let key = (owner, receiver);
        let notify = self.outboxes.lock().entry(key).or_default().clone();
        Subscription { notifier: self.clone(), key, notify }
    }

    /// Wakes every current waiter of the outbox.
    pub fn notify(&self, owner: &PublicKey, receiver: &PublicKey) {
        if let Some(notify) = self.outboxes.lock().get(&(*owner, *receiver)) {
            notify.notify_waiters();
        }
    }

    /// Number of outboxes with at least one waiter (for metrics and tests).
    pub fn watched_outboxes(&self) -> usize {
        self.outboxes.lock().len()
    }
}
