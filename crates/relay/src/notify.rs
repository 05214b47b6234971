//! Wake-ups for listeners. A waiter subscribes to one key — an outbox, or a drop prefix — and
//! is woken when a commit stores something under it. Only the waiters of that key wake;
//! nothing polls, and a waiter costs one map entry, not a task.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::tag::{Prefix, Tag};
use tokio::sync::Notify;

type OutboxKey = (PublicKey, PublicKey);

/// Wake-up registry keyed by `K`.
pub struct Registry<K> {
    waiters: Mutex<HashMap<K, Arc<Notify>>>,
}

impl<K> Default for Registry<K> {
    fn default() -> Self {
        Self { waiters: Mutex::new(HashMap::new()) }
    }
}

/// A subscription to one key; unsubscribes when dropped.
pub struct Subscription<K: Eq + Hash + Copy> {
    registry: Arc<Registry<K>>,
    key: K,
    notify: Arc<Notify>,
}

impl<K: Eq + Hash + Copy> Subscription<K> {
    /// The notify handle to wait on. Create the `notified()` future (and `enable` it) before
    /// checking the store, so a commit between the check and the wait is not missed.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl<K: Eq + Hash + Copy> Drop for Subscription<K> {
    fn drop(&mut self) {
        let mut map = self.registry.waiters.lock();
        // Two references remain when this is the last subscriber: the map's and ours.
        if Arc::strong_count(&self.notify) <= 2 {
            map.remove(&self.key);
        }
    }
}

impl<K: Eq + Hash + Copy> Registry<K> {
    /// Subscribes to `key`.
    pub fn subscribe(self: &Arc<Self>, key: K) -> Subscription<K> {
        let notify = self.waiters.lock().entry(key).or_default().clone();
        Subscription { registry: self.clone(), key, notify }
    }

    /// Wakes every current waiter of `key`.
    pub fn wake(&self, key: &K) {
        if let Some(notify) = self.waiters.lock().get(key) {
            notify.notify_waiters();
        }
    }

    /// Number of keys with at least one waiter (for metrics and tests).
    pub fn watched(&self) -> usize {
        self.waiters.lock().len()
    }
}

/// Per-outbox wake-ups.
pub type Notifier = Registry<OutboxKey>;

impl Notifier {
    /// Subscribes to the outbox `(owner, receiver)`.
    pub fn subscribe_outbox(
        self: &Arc<Self>,
        owner: PublicKey,
        receiver: PublicKey,
    ) -> Subscription<OutboxKey> {
        self.subscribe((owner, receiver))
    }

    /// Wakes every current waiter of the outbox.
    pub fn notify(&self, owner: &PublicKey, receiver: &PublicKey) {
        self.wake(&(*owner, *receiver));
    }

    /// Number of outboxes with at least one waiter.
    pub fn watched_outboxes(&self) -> usize {
        self.watched()
    }
}

/// Wake-ups for drop waiters, keyed by prefix `(bits, value)`. A new drop wakes exactly the
/// waiters whose prefix matches its tag: one lookup per prefix length that has waiters at
/// all (at most 33), whatever the number of waiters.
pub struct DropWaiters {
    registry: Arc<Registry<(u8, u32)>>,
    /// Waiters per prefix length, so lengths nobody waits on cost nothing.
    per_length: [AtomicUsize; 33],
    total: AtomicUsize,
}

impl Default for DropWaiters {
    fn default() -> Self {
        Self {
            registry: Arc::default(),
            per_length: std::array::from_fn(|_| AtomicUsize::new(0)),
            total: AtomicUsize::new(0),
        }
    }
}

/// A waiter on one prefix; leaves when dropped.
pub struct DropSubscription {
    inner: Subscription<(u8, u32)>,
    waiters: Arc<DropWaiters>,
    bits: u8,
}

impl DropSubscription {
    /// See [`Subscription::notify`].
    pub fn notify(&self) -> &Notify {
        self.inner.notify()
    }
}

impl Drop for DropSubscription {
    fn drop(&mut self) {
        self.waiters.per_length[usize::from(self.bits)].fetch_sub(1, Ordering::Relaxed);
        self.waiters.total.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("pigeonhole_drop_waiters").decrement(1.0);
    }
}

impl DropWaiters {
    /// Subscribes to `prefix`, unless `max` waiters are already waiting.
    pub fn subscribe(self: &Arc<Self>, prefix: &Prefix, max: usize) -> Option<DropSubscription> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= max {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let bits = prefix.bits();
        self.per_length[usize::from(bits)].fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("pigeonhole_drop_waiters").increment(1.0);
        let inner = self.registry.subscribe((bits, prefix.value()));
        Some(DropSubscription { inner, waiters: self.clone(), bits })
    }

    /// Wakes the waiters whose prefix matches `tag`.
    pub fn wake(&self, tag: &Tag) {
        let head = tag.head();
        for bits in 0..=32u8 {
            if self.per_length[usize::from(bits)].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let value = if bits == 0 { 0 } else { head & (u32::MAX << (32 - u32::from(bits))) };
            self.registry.wake(&(bits, value));
        }
    }

    /// Waiters right now.
    pub fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(head: u32) -> Tag {
        let mut bytes = [0u8; 20];
        bytes[..4].copy_from_slice(&head.to_be_bytes());
        Tag(bytes)
    }

    fn prefix(bits: u8, value: u32) -> Prefix {
        Prefix::new(bits, value).expect("a valid prefix")
    }

    #[tokio::test]
    async fn a_drop_wakes_only_matching_prefixes() {
        let waiters = Arc::new(DropWaiters::default());
        let sub = |bits, value| waiters.subscribe(&prefix(bits, value), 10).expect("room");
        let everything = sub(0, 0);
        let byte_ab = sub(8, 0xab00_0000);
        let byte_cd = sub(8, 0xcd00_0000);
        let exact = sub(32, 0xabcd_ef01);
        assert_eq!(waiters.count(), 4);
        assert!(waiters.subscribe(&prefix(1, 0), 4).is_none(), "the cap holds");

        let mut woken = Vec::new();
        for (name, sub) in [("all", &everything), ("ab", &byte_ab), ("cd", &byte_cd), ("exact", &exact)] {
            let notified = sub.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            waiters.wake(&tag(0xabcd_ef01));
            if tokio::time::timeout(std::time::Duration::from_millis(20), notified).await.is_ok() {
                woken.push(name);
            }
        }
        assert_eq!(woken, ["all", "ab", "exact"]);
        drop((everything, byte_ab, byte_cd, exact));
        assert_eq!(waiters.count(), 0);
        assert_eq!(waiters.registry.watched(), 0, "no entries left behind");
    }
}
