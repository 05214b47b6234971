//! The newest sequence numbers of each outbox written to, kept in memory.
//!
//! A live listener's next page is the records stored in its outbox after its cursor, usually
//! one or two written a moment ago. Walking the outbox index for them searches every table of
//! the index, because pair ids are random and every table spans the whole key range: in a
//! profile of deliveries at 6,500 writes/s on a 1 M-record store that walk was half of the
//! delivery thread's time. The store instead remembers, for each outbox written to, the
//! sequence numbers of its last few records, and a read after a cursor those cover loads them
//! by sequence number (a point lookup in `records`, usually in a memtable).
//!
//! The list is a hint checked against the store: a listed record since deleted, used up or
//! expired is not found or is skipped, exactly as the walk would skip it. What must hold is
//! the converse, that no record is missed. The invariant: every record stored in outbox `P`
//! with `seq > complete_after(P)` is listed under `P`, where `complete_after(P)` is the entry's
//! own bound, or `floor` for an outbox with no entry. Records are listed after their batch is
//! committed and under the store's write lock, which reads hold too, so a reader sees exactly
//! the committed records.

use std::collections::{HashMap, VecDeque};

use crate::codec::PAIR_LEN;

/// Outboxes remembered by default before the list starts over (about 150 bytes each).
pub(crate) const DEFAULT_OUTBOXES: usize = 32_768;
/// Sequence numbers remembered per outbox by default.
pub(crate) const DEFAULT_PER_OUTBOX: usize = 8;

/// The newest sequence numbers of each outbox written to since the store was opened (or since
/// the list last started over), within bounds.
#[derive(Debug)]
pub(crate) struct Recent {
    /// Every record stored after `floor` in an outbox without an entry is listed: there is none.
    floor: u64,
    outboxes: HashMap<[u8; PAIR_LEN], Entry>,
    max_outboxes: usize,
    per_outbox: usize,
    /// Set after a failed commit, whose records may be partly visible: every read walks.
    disabled: bool,
}

#[derive(Debug)]
struct Entry {
    /// The outbox's records stored after `complete_after`, ascending.
    seqs: VecDeque<u64>,
    complete_after: u64,
}

impl Recent {
    /// An empty list for a store whose last stored sequence number is `last_seq`. A bound of 0
    /// turns the list off: every read walks the index.
    pub(crate) fn new(last_seq: u64, max_outboxes: usize, per_outbox: usize) -> Self {
        Self {
            floor: last_seq,
            outboxes: HashMap::new(),
            max_outboxes,
            per_outbox,
            disabled: max_outboxes == 0 || per_outbox == 0,
        }
    }

    /// Lists `seq`, just committed in outbox `pair`. Calls come in increasing `seq` order.
    pub(crate) fn stored(&mut self, pair: &[u8; PAIR_LEN], seq: u64) {
        if self.disabled {
            return;
        }
        if let Some(entry) = self.outboxes.get_mut(pair) {
            if entry.seqs.len() >= self.per_outbox
                && let Some(oldest) = entry.seqs.pop_front()
            {
                entry.complete_after = oldest;
            }
            entry.seqs.push_back(seq);
            return;
        }
        if self.outboxes.len() >= self.max_outboxes {
            // Start over: every record stored so far (below `seq`) is now unlisted.
            self.outboxes.clear();
            self.floor = seq.saturating_sub(1);
        }
        let mut seqs = VecDeque::with_capacity(self.per_outbox);
        seqs.push_back(seq);
        // No record of this outbox was stored after the floor (it would have an entry).
        self.outboxes.insert(*pair, Entry { seqs, complete_after: self.floor });
    }

    /// The sequence numbers of outbox `pair` above `after_seq`, ascending, when the list holds
    /// all of them; `None` when the index must be walked.
    pub(crate) fn after(&self, pair: &[u8; PAIR_LEN], after_seq: u64) -> Option<Vec<u64>> {
        if self.disabled {
            return None;
        }
        match self.outboxes.get(pair) {
            Some(entry) if after_seq >= entry.complete_after => {
                Some(entry.seqs.iter().copied().filter(|&seq| seq > after_seq).collect())
            }
            Some(_) => None,
            None if after_seq >= self.floor => Some(Vec::new()),
            None => None,
        }
    }

    /// Stops using the list (after a failed commit: what became visible is unknown).
    pub(crate) fn disable(&mut self) {
        self.disabled = true;
        self.outboxes = HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: [u8; PAIR_LEN] = [1; PAIR_LEN];
    const Q: [u8; PAIR_LEN] = [2; PAIR_LEN];
    const R: [u8; PAIR_LEN] = [3; PAIR_LEN];

    #[test]
    fn lists_what_was_stored_since_open() {
        let mut recent = Recent::new(100, 4, 3);
        // Nothing stored yet: a cursor at or past the floor has nothing new, one below walks.
        assert_eq!(recent.after(&P, 100), Some(vec![]));
        assert_eq!(recent.after(&P, 99), None);
        recent.stored(&P, 101);
        recent.stored(&Q, 102);
        recent.stored(&P, 103);
        assert_eq!(recent.after(&P, 100), Some(vec![101, 103]));
        assert_eq!(recent.after(&P, 101), Some(vec![103]));
        assert_eq!(recent.after(&P, 103), Some(vec![]));
        assert_eq!(recent.after(&P, 50), None);
        assert_eq!(recent.after(&Q, 100), Some(vec![102]));
        assert_eq!(recent.after(&R, 100), Some(vec![]));
    }

    #[test]
    fn a_full_outbox_forgets_its_oldest_and_walks_below_it() {
        let mut recent = Recent::new(0, 4, 3);
        for seq in 1..=5 {
            recent.stored(&P, seq);
        }
        // 1 and 2 were dropped: a cursor below 2 could miss 2.
        assert_eq!(recent.after(&P, 1), None);
        assert_eq!(recent.after(&P, 2), Some(vec![3, 4, 5]));
        assert_eq!(recent.after(&P, 4), Some(vec![5]));
    }

    #[test]
    fn too_many_outboxes_start_the_list_over() {
        let mut recent = Recent::new(0, 2, 3);
        recent.stored(&P, 1);
        recent.stored(&Q, 2);
        recent.stored(&R, 3);
        // P and Q were forgotten with everything up to 2.
        assert_eq!(recent.after(&P, 0), None);
        assert_eq!(recent.after(&P, 2), Some(vec![]));
        assert_eq!(recent.after(&Q, 1), None);
        // R's entry is complete only above the new floor: records of R up to 2 are unknown.
        assert_eq!(recent.after(&R, 0), None);
        assert_eq!(recent.after(&R, 2), Some(vec![3]));
        recent.stored(&P, 4);
        assert_eq!(recent.after(&P, 2), Some(vec![4]));
    }

    #[test]
    fn off_or_disabled_always_walks() {
        let mut off = Recent::new(0, 0, 8);
        off.stored(&P, 1);
        assert_eq!(off.after(&P, 1), None);
        let mut recent = Recent::new(0, 4, 3);
        recent.stored(&P, 1);
        recent.disable();
        recent.stored(&P, 2);
        assert_eq!(recent.after(&P, 1), None);
        assert_eq!(recent.after(&Q, 5), None);
    }
}
