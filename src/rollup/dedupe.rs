//! Duplicate memory of one input partition: every event *accepted* in the last `horizon`
//! offsets, as (idempotency-key hash, content hash), plus the offsets of decodable events
//! that were refused (a rejected event is not "seen": a replay after the cause is fixed is
//! billed). Given the refused offsets (kept in the partition snapshot) the memory is a pure
//! function of the log window, so a restart rebuilds it exactly by re-reading that window.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use smallvec::SmallVec;

/// A hasher for keys that already are good 64-bit hashes.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type HashKeyed<V> = HashMap<u64, V, BuildHasherDefault<PassThroughHasher>>;

/// Largest bound [`SteadySize`] reserves for; a larger memory grows past it as it fills.
pub const MAX_PRESIZED: usize = 1 << 20;

/// When a churning memory (a hash table of at most `bound` entries plus its expiry queue,
/// one in and one out per message once full) takes its steady size: the table twice the
/// bound, the queue the bound (capped at [`MAX_PRESIZED`]), once the table holds 1/16 of
/// the bound.
///
/// Why twice: Rust's `HashMap` (hashbrown) leaves tombstones on removal and, when they use
/// up its spare room, rehashes in place only while at most half its capacity is in use,
/// else it doubles. A table sized only for `bound` therefore doubles once, some 100 000
/// inserts after it fills (at a debits partition's rate, ~27 minutes into a run); reserved
/// at twice the bound it never grows (docs/design.md, "When a bounded memory reaches its
/// steady size"). Why at 1/16: below that it grows as usual, so a quiet partition or a
/// short run does not write a table of the full size across (reserved at the first entry,
/// the page faults cost the ledger and alerts +0.3-0.9 CPU s per 1M events in a 300k-event
/// cold drain of all stages, docs/performance.md); a memory that got that far is filling,
/// and takes its steady size in one step while it is still small to copy.
#[derive(Debug, Default)]
pub struct SteadySize {
    reserved: bool,
}

impl SteadySize {
    /// The first time the table holds `table_len >= bound / 16` entries: how many entries
    /// to `reserve` beyond the current ones, (table, queue); `None` before and after.
    pub fn due(
        &mut self,
        table_len: usize,
        queue_len: usize,
        bound: usize,
    ) -> Option<(usize, usize)> {
        if self.reserved || table_len < bound / 16 {
            return None;
        }
        self.reserved = true;
        let bound = bound.min(MAX_PRESIZED);
        Some((
            bound.saturating_mul(2).saturating_sub(table_len),
            (bound + 1).saturating_sub(queue_len),
        ))
    }
}

/// What the memory says about an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// Bounded duplicate memory; about 70 bytes per remembered event, 8 per refused one.
#[derive(Debug, Default)]
pub struct DedupeWindow {
    horizon: u64,
    by_id: HashKeyed<SmallVec<[(u64, i64); 1]>>,
    order: VecDeque<(i64, u64, u64)>,
    /// Offsets (ascending) of decodable events that were rejected, within the horizon.
    refused: VecDeque<i64>,
    /// Entries evicted since creation (the changelog's chunks are deleted by this count).
    evicted: u64,
}

impl DedupeWindow {
    pub fn new(horizon: u64) -> Self {
        DedupeWindow {
            horizon,
            ..Default::default()
        }
    }

    /// Forgets events older than `offset - horizon`.
    pub fn evict_before(&mut self, offset: i64) {
        let limit = offset.saturating_sub(self.horizon as i64);
        while self.refused.front().is_some_and(|o| *o <= limit) {
            self.refused.pop_front();
        }
        while let Some(&(o, id, content)) = self.order.front() {
            if o > limit {
                break;
            }
            self.order.pop_front();
            self.evicted += 1;
            if let Some(list) = self.by_id.get_mut(&id) {
                list.retain(|(c, last)| !(*c == content && *last == o));
                if list.is_empty() {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// Classifies an event at `offset` without remembering it.
    pub fn check(&mut self, offset: i64, id: u64, content: u64) -> Seen {
        self.evict_before(offset);
        match self.by_id.get(&id) {
            None => Seen::New,
            Some(list) if list.iter().any(|(c, _)| *c == content) => Seen::Duplicate,
            Some(_) => Seen::Conflict,
        }
    }

    /// Remembers an accepted event (or refreshes a duplicate's last occurrence).
    pub fn remember(&mut self, offset: i64, id: u64, content: u64) {
        self.evict_before(offset);
        let list = self.by_id.entry(id).or_default();
        match list.iter_mut().find(|(c, _)| *c == content) {
            Some(entry) => entry.1 = offset,
            None => list.push((content, offset)),
        }
        self.order.push_back((offset, id, content));
    }

    /// Classifies an event and remembers this occurrence (check, then remember).
    pub fn observe(&mut self, offset: i64, id: u64, content: u64) -> Seen {
        let seen = self.check(offset, id, content);
        self.remember(offset, id, content);
        seen
    }

    /// Records that the decodable event at `offset` was rejected, so that rebuilding from
    /// the log window leaves it out. Offsets must ascend.
    pub fn refuse(&mut self, offset: i64) {
        if self.refused.back().is_none_or(|o| *o < offset) {
            self.refused.push_back(offset);
        }
    }

    /// True if the event at `offset` was rejected (and so is not in the memory).
    pub fn is_refused(&self, offset: i64) -> bool {
        self.refused.binary_search(&offset).is_ok()
    }

    /// The refused offsets still within the horizon, ascending (for the snapshot).
    pub fn refused(&self) -> Vec<i64> {
        self.refused.iter().copied().collect()
    }

    /// Restores the refused offsets of a snapshot.
    pub fn set_refused(&mut self, mut offsets: Vec<i64>) {
        offsets.sort_unstable();
        offsets.dedup();
        self.refused = offsets.into();
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Entries evicted since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn horizon(&self) -> u64 {
        self.horizon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_expires() {
        let mut w = DedupeWindow::new(10);
        assert_eq!(w.observe(0, 1, 100), Seen::New);
        assert_eq!(w.observe(3, 1, 100), Seen::Duplicate);
        assert_eq!(w.observe(4, 1, 200), Seen::Conflict);
        assert_eq!(w.observe(5, 1, 100), Seen::Duplicate);
        // The last occurrence of content 100 was at 5; at 15 it is out of the window.
        assert_eq!(w.observe(14, 1, 100), Seen::Duplicate);
        assert_eq!(w.observe(40, 1, 100), Seen::New);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn refused_events_are_not_seen_and_expire_with_the_horizon() {
        let mut w = DedupeWindow::new(10);
        assert_eq!(w.check(0, 1, 100), Seen::New);
        w.refuse(0);
        assert!(w.is_refused(0));
        // Not remembered: the same event again is new, and is remembered once accepted.
        assert_eq!(w.check(1, 1, 100), Seen::New);
        w.remember(1, 1, 100);
        assert_eq!(w.check(2, 1, 100), Seen::Duplicate);
        assert_eq!(w.check(3, 1, 200), Seen::Conflict);
        w.refuse(3);
        assert_eq!(w.refused(), [0, 3]);
        w.evict_before(12);
        assert_eq!(w.refused(), [3]);
        assert!(!w.is_refused(0));
    }

    #[test]
    fn rebuilding_from_the_window_gives_the_same_answers() {
        // Feed a stream; then rebuild from the last `horizon` offsets only and compare.
        let events: Vec<(i64, u64, u64)> = (0..500)
            .map(|i| (i, (i * 7 % 37) as u64, (i % 3) as u64))
            .collect();
        let mut full = DedupeWindow::new(50);
        for &(o, id, c) in &events[..300] {
            full.observe(o, id, c);
        }
        let mut rebuilt = DedupeWindow::new(50);
        for &(o, id, c) in &events[250..300] {
            rebuilt.observe(o, id, c);
        }
        for &(o, id, c) in &events[300..] {
            assert_eq!(
                full.observe(o, id, c),
                rebuilt.observe(o, id, c),
                "offset {o}"
            );
        }
    }
}
