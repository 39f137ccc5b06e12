//! Space watermarks (PROTOCOL.md §5.5): what a reader of a space may see without ever skipping an entry that
//! commits later.
//!
//! Entries are ordered in a space by timestamp, and a commit's timestamp is fixed before it becomes
//! visible. While a write with timestamp `t` is in flight in a space, nothing at or above `t` may be shown
//! to a space reader, or a cursor taken past `t` would miss that write when it lands. Each in-flight write
//! holds a token with a *fence* (its timestamp); the visible maximum of a space is `min(fences) - 1` over
//! the writes not yet committed.
//!
//! A token lives on after its commit, until its notification is published: later writes of the space
//! publish only after it ([`Watermarks::is_visible_for_peers`]), so subscribers hear of a space's commits
//! in order. But its entries are in storage then, so it no longer holds readers back: a producer's
//! stream ends right after its last status and a read that follows sees what it wrote (Go keeps the
//! fence until the publish is done, so its reads wait for the bus).
//!
//! We assign a chunk's timestamp when its commit is issued (Go takes it when the chunk *starts*), so a
//! fence only exists while storage is committing, and a producer that is slow to send its records never
//! holds back readers of the space.

use alloc::collections::BTreeMap;
use alloc::string::String;

/// Identifies one in-flight write. Tokens are ordered by creation: a lower token began earlier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(u64);

#[derive(Debug)]
struct Write {
    space: String,
    fence: i64,
    /// The write is in storage: its fence no longer bounds readers (it still orders publishes).
    committed: bool,
}

/// The in-flight writes of a node, per space.
#[derive(Debug, Default)]
pub struct Watermarks {
    writes: BTreeMap<Token, Write>,
    /// Per space: fence → number of uncommitted writes with that fence (for a cheap minimum).
    fences: BTreeMap<String, BTreeMap<i64, usize>>,
    next: u64,
}

impl Watermarks {
    /// Registers a write in `space` whose entries will carry `timestamp`.
    pub fn begin(&mut self, space: &str, timestamp: i64) -> Token {
        self.next += 1;
        let token = Token(self.next);
        self.writes.insert(token, Write { space: space.into(), fence: timestamp, committed: false });
        *self.fences.entry(space.into()).or_default().entry(timestamp).or_insert(0) += 1;
        token
    }

    /// Records that a write is in storage with `timestamp`: readers may see it from now on. Its token
    /// keeps ordering later writes' publishes until [`Watermarks::end`]; the fence only ever moves down.
    pub fn note_committed(&mut self, token: Token, timestamp: i64) {
        let Some(write) = self.writes.get_mut(&token) else { return };
        if write.committed {
            write.fence = write.fence.min(timestamp);
            return;
        }
        write.committed = true;
        let (space, fence) = (write.space.clone(), write.fence);
        write.fence = fence.min(timestamp);
        self.remove_fence(&space, fence);
    }

    /// Forgets a write (committed and published, or failed).
    pub fn end(&mut self, token: Token) {
        if let Some(write) = self.writes.remove(&token)
            && !write.committed
        {
            self.remove_fence(&write.space, write.fence);
        }
    }

    fn remove_fence(&mut self, space: &str, fence: i64) {
        if let Some(fences) = self.fences.get_mut(space) {
            if let Some(count) = fences.get_mut(&fence) {
                *count -= 1;
                if *count == 0 {
                    fences.remove(&fence);
                }
            }
            if fences.is_empty() {
                self.fences.remove(space);
            }
        }
    }

    /// The greatest timestamp a reader of `space` may see, or `None` when no uncommitted write is in
    /// flight there.
    pub fn safe_max(&self, space: &str) -> Option<i64> {
        let min = *self.fences.get(space)?.keys().next()?;
        Some(min.saturating_sub(1))
    }

    /// Whether an entry of `space` with `timestamp` is visible to readers.
    pub fn is_visible(&self, space: &str, timestamp: i64) -> bool {
        self.safe_max(space).is_none_or(|max| timestamp <= max)
    }

    /// Whether `timestamp`, written by `token`, is visible with respect to the writes of the same space that
    /// began earlier (Go `WaitUntilVisibleForPeers`): later concurrent writes do not hold it back.
    pub fn is_visible_for_peers(&self, token: Token, timestamp: i64) -> bool {
        let Some(me) = self.writes.get(&token) else { return true };
        self.writes.range(..token).filter(|(_, w)| w.space == me.space).all(|(_, w)| timestamp < w.fence)
    }

    /// Number of writes not ended (uncommitted, or committed and not yet published).
    pub fn in_flight(&self) -> usize {
        self.writes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_max_is_fence_minus_one_until_end() {
        let mut w = Watermarks::default();
        assert_eq!(w.safe_max("s"), None);
        let t = w.begin("s", 100);
        assert_eq!(w.safe_max("s"), Some(99));
        assert_eq!(w.safe_max("other"), None);
        assert!(!w.is_visible("s", 100));
        assert!(w.is_visible("s", 99));
        // Once committed, the write is in storage: readers may see it while its token lives on.
        w.note_committed(t, 100);
        assert_eq!(w.safe_max("s"), None);
        assert!(w.is_visible("s", 100));
        assert_eq!(w.in_flight(), 1);
        w.end(t);
        assert_eq!(w.safe_max("s"), None);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn minimum_over_concurrent_writes() {
        let mut w = Watermarks::default();
        let a = w.begin("s", 100);
        let b = w.begin("s", 100);
        let c = w.begin("s", 200);
        w.end(a);
        assert_eq!(w.safe_max("s"), Some(99));
        w.end(b);
        assert_eq!(w.safe_max("s"), Some(199));
        w.end(c);
        w.end(c);
        assert_eq!(w.safe_max("s"), None);
    }

    #[test]
    fn peers_only_wait_for_earlier_writes() {
        let mut w = Watermarks::default();
        let early = w.begin("s", 100);
        let other_space = w.begin("t", 50);
        let late = w.begin("s", 150);
        let later = w.begin("s", 160);
        assert!(!w.is_visible_for_peers(late, 150));
        // The later concurrent write does not hold back `late`, nor does another space.
        w.end(early);
        assert!(w.is_visible_for_peers(late, 150));
        assert!(!w.is_visible_for_peers(later, 160));
        w.end(other_space);
        w.end(late);
        assert!(w.is_visible_for_peers(later, 160));
    }

    #[test]
    fn a_committed_write_frees_readers_but_still_orders_later_publishes() {
        let mut w = Watermarks::default();
        let early = w.begin("s", 100);
        let late = w.begin("s", 150);
        assert_eq!(w.safe_max("s"), Some(99));
        w.note_committed(early, 100);
        // Readers only wait for the write still committing...
        assert_eq!(w.safe_max("s"), Some(149));
        w.note_committed(late, 150);
        assert_eq!(w.safe_max("s"), None);
        // ...but the later write publishes only once the earlier one has.
        assert!(!w.is_visible_for_peers(late, 150));
        w.end(early);
        assert!(w.is_visible_for_peers(late, 150));
        w.end(late);
        assert_eq!(w.in_flight(), 0);
    }
}
