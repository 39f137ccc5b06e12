//! Tombstones (PROTOCOL.md §2.9): channel ids whose late frames are dropped instead of opening a new stream.
//!
//! Created for streams the application rejects and streams the session aborts (the peer may still have
//! frames in flight for them); a released stream leaves none, so its channel id is free at once. Pruned by age first, then oldest-first over capacity; an expired
//! tombstone behaves as absent. Time never goes backwards inside a session, so insertion order is age
//! order and one ordered index serves both prunings.

use alloc::collections::BTreeMap;
use uuid::Uuid;

use crate::time::Millis;

#[derive(Debug)]
pub(crate) struct Tombstones {
    capacity: usize,
    ttl: Millis,
    /// channel -> (created, insertion sequence)
    by_channel: BTreeMap<Uuid, (Millis, u64)>,
    /// insertion sequence -> channel, oldest first
    by_age: BTreeMap<u64, Uuid>,
    next_seq: u64,
}

impl Tombstones {
    pub(crate) fn new(capacity: usize, ttl: Millis) -> Self {
        Self { capacity, ttl, by_channel: BTreeMap::new(), by_age: BTreeMap::new(), next_seq: 0 }
    }

    fn expired(&self, created: Millis, now: Millis) -> bool {
        now.saturating_since(created) > self.ttl
    }

    /// Tombstones `channel` as of `now` (refreshing an existing tombstone), then prunes.
    pub(crate) fn insert(&mut self, channel: Uuid, now: Millis) {
        self.remove(&channel);
        if self.capacity == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_channel.insert(channel, (now, seq));
        self.by_age.insert(seq, channel);
        self.prune(now);
    }

    /// Whether `channel` has a live tombstone.
    pub(crate) fn contains(&self, channel: &Uuid, now: Millis) -> bool {
        self.by_channel.get(channel).is_some_and(|&(created, _)| !self.expired(created, now))
    }

    /// Forgets the tombstone of `channel`, if any.
    pub(crate) fn remove(&mut self, channel: &Uuid) {
        if let Some((_, seq)) = self.by_channel.remove(channel) {
            self.by_age.remove(&seq);
        }
    }

    /// Drops expired tombstones, then the oldest ones over capacity.
    pub(crate) fn prune(&mut self, now: Millis) {
        while let Some((&seq, &channel)) = self.by_age.first_key_value() {
            let over_capacity = self.by_age.len() > self.capacity;
            let expired =
                self.by_channel.get(&channel).is_none_or(|&(created, _)| self.expired(created, now));
            if !(over_capacity || expired) {
                break;
            }
            self.by_age.remove(&seq);
            self.by_channel.remove(&channel);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.by_channel.clear();
        self.by_age.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.by_channel.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn capacity_keeps_the_newest() {
        let mut t = Tombstones::new(3, Millis::from_secs(60));
        for n in 1..=5 {
            t.insert(id(n), Millis(n as u64));
        }
        assert_eq!(t.len(), 3);
        assert!(!t.contains(&id(1), Millis(5)));
        assert!(!t.contains(&id(2), Millis(5)));
        assert!((3..=5).all(|n| t.contains(&id(n), Millis(5))));
    }

    #[test]
    fn age_expires_and_prunes() {
        let mut t = Tombstones::new(10, Millis(10));
        t.insert(id(1), Millis(100));
        assert!(t.contains(&id(1), Millis(110)));
        assert!(!t.contains(&id(1), Millis(111)));
        t.insert(id(2), Millis(111));
        assert_eq!(t.len(), 1, "the expired tombstone is pruned on insert");
        t.prune(Millis(200));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn reinsert_refreshes_and_remove_forgets() {
        let mut t = Tombstones::new(2, Millis(10));
        t.insert(id(1), Millis(0));
        t.insert(id(2), Millis(5));
        t.insert(id(1), Millis(8));
        t.insert(id(3), Millis(9));
        assert!(t.contains(&id(1), Millis(9)), "refreshed id 1 is newer than id 2");
        assert!(!t.contains(&id(2), Millis(9)));
        t.remove(&id(1));
        assert!(!t.contains(&id(1), Millis(9)));
        assert_eq!(t.len(), 1);
        let mut none = Tombstones::new(0, Millis(10));
        none.insert(id(1), Millis(0));
        assert_eq!(none.len(), 0);
    }
}
