//! Resume cursor of one output partition: what ClickHouse already holds (its highest
//! `src_offset` and the ids of its most recent rows) and the partition's high watermark in;
//! for every message, "skip, already stored" / "duplicate id" / "new" out.
//!
//! The decisions ([`Cursor::resume`], [`Cursor::admit`], [`Cursor::first_sight`]) are pure;
//! [`held`] is the one ClickHouse read.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;

use crate::rollup::dedupe::{PassThroughHasher, SteadySize};

/// Ids of the last `cap` rows of one output partition (hashed: ~40 B each). The set is keyed
/// by the ids' xxh3 hashes as they are, without hashing them again with SipHash (`insert`
/// was ~12 % of the sink threads' samples in a 20k events/s profile).
pub struct RecentIds {
    cap: usize,
    set: HashSet<u64, BuildHasherDefault<PassThroughHasher>>,
    order: VecDeque<u64>,
    /// When `set` and `order` take their steady size.
    sized: SteadySize,
}

impl RecentIds {
    pub fn new(cap: usize) -> Self {
        RecentIds {
            cap,
            set: HashSet::default(),
            order: VecDeque::new(),
            sized: SteadySize::default(),
        }
    }

    /// True if new (and remembers it, forgetting the oldest beyond `cap`). Once it holds
    /// 1/16 of `cap` it reserves its steady size ([`SteadySize`]) and never grows
    /// after.
    pub fn insert(&mut self, id: &str) -> bool {
        if let Some((table, queue)) = self.sized.due(self.set.len(), self.order.len(), self.cap) {
            self.set.reserve(table);
            self.order.reserve(queue);
        }
        let h = crate::event::id_hash(id);
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Where one output partition stands.
pub struct Cursor {
    /// Highest offset already in ClickHouse when the partition was first seen (-1: none).
    pub held_up_to: i64,
    pub recent: RecentIds,
    /// Next offset to commit: one past the highest offset read (inserted or skipped).
    pub next: i64,
}

/// What ClickHouse holds for one partition of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// `max(src_offset)`, `None` when the table has no row of the partition.
    pub max_offset: Option<i64>,
    /// Ids of the rows within the recent window, in offset order.
    pub recent_ids: Vec<String>,
}

/// How a partition resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// After the highest offset ClickHouse holds (or from the start: it holds none).
    AfterHeld,
    /// The topic's high watermark is at or below what ClickHouse holds: offsets never go
    /// backwards, so the topic was deleted and recreated. Resume from its start; the recent
    /// ids still catch rows that were already stored.
    Recreated { high_watermark: i64, held: i64 },
}

impl Cursor {
    /// The cursor of a partition first seen: `held` from ClickHouse, `high_watermark` of the
    /// output partition if it could be read, `window` ids remembered.
    pub fn resume(held: Held, high_watermark: Option<i64>, window: usize) -> (Cursor, Resumed) {
        let mut recent = RecentIds::new(window);
        for id in &held.recent_ids {
            recent.insert(id);
        }
        let held_up_to = held.max_offset.unwrap_or(-1);
        let (held_up_to, how) = match high_watermark {
            Some(h) if h <= held_up_to => (
                -1,
                Resumed::Recreated {
                    high_watermark: h,
                    held: held_up_to,
                },
            ),
            _ => (held_up_to, Resumed::AfterHeld),
        };
        let cursor = Cursor {
            held_up_to,
            recent,
            next: held_up_to + 1,
        };
        (cursor, how)
    }

    /// Records that `offset` was read; false if ClickHouse already holds it (skip it).
    pub fn admit(&mut self, offset: i64) -> bool {
        self.next = self.next.max(offset + 1);
        offset > self.held_up_to
    }

    /// True the first time an id is seen within the window (false: a replayed row).
    pub fn first_sight(&mut self, id: &str) -> bool {
        self.recent.insert(id)
    }
}

/// Smallest `src_offset` whose id is loaded into the window, given the highest held.
pub fn window_start(max_offset: i64, window: usize) -> i64 {
    max_offset.saturating_sub(i64::try_from(window).unwrap_or(i64::MAX))
}

/// Reads what `table` holds for output partition `partition`: its highest `src_offset`, and
/// the ids (`id_sql`) of rows above `max - window`.
pub async fn held(
    ch: &clickhouse::Client,
    table: &str,
    id_sql: &str,
    partition: i32,
    window: usize,
) -> Result<Held, clickhouse::error::Error> {
    let (max, n): (i64, u64) = ch
        .query(&format!(
            "SELECT max(src_offset), count() FROM {table} WHERE src_partition = ?"
        ))
        .bind(partition)
        .fetch_one()
        .await?;
    if n == 0 {
        return Ok(Held::default());
    }
    let recent_ids = ch
        .query(&format!(
            "SELECT {id_sql} FROM {table} WHERE src_partition = ? AND src_offset > ? ORDER BY src_offset"
        ))
        .bind(partition)
        .bind(window_start(max, window))
        .fetch_all()
        .await?;
    Ok(Held {
        max_offset: Some(max),
        recent_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(max: i64, ids: &[&str]) -> Held {
        Held {
            max_offset: Some(max),
            recent_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_table_resumes_from_the_start() {
        let (mut c, how) = Cursor::resume(Held::default(), Some(10), 5);
        assert_eq!(how, Resumed::AfterHeld);
        assert_eq!((c.held_up_to, c.next), (-1, 0));
        assert!(c.admit(0));
        assert_eq!(c.next, 1);
    }

    #[test]
    fn offsets_at_or_below_what_clickhouse_holds_are_skipped() {
        let (mut c, how) = Cursor::resume(held(41, &["a", "b"]), Some(100), 5);
        assert_eq!(how, Resumed::AfterHeld);
        assert_eq!(c.next, 42);
        assert!(!c.admit(3));
        assert!(!c.admit(41));
        assert_eq!(
            c.next, 42,
            "skipped offsets never move the commit point back"
        );
        assert!(c.admit(42));
        assert_eq!(c.next, 43);
        // Out-of-order reads (after a rebalance seek) never lower the commit point.
        assert!(c.admit(50));
        assert!(c.admit(45));
        assert_eq!(c.next, 51);
    }

    #[test]
    fn a_replayed_id_is_caught_by_the_recent_window() {
        let (mut c, _) = Cursor::resume(held(9, &["a", "b"]), None, 3);
        assert!(!c.first_sight("a"), "held in clickhouse");
        assert!(c.first_sight("c"));
        assert!(!c.first_sight("c"), "seen in this run");
        assert!(c.first_sight("d"));
        // A window of 3: "a", the oldest, was forgotten when "d" came.
        assert!(c.first_sight("a"));
        assert!(!c.first_sight("d"));
        assert_eq!(c.recent.len(), 3);
    }

    #[test]
    fn a_high_watermark_at_or_below_the_held_offset_means_a_recreated_topic() {
        let (mut c, how) = Cursor::resume(held(500, &["x"]), Some(500), 5);
        assert_eq!(
            how,
            Resumed::Recreated {
                high_watermark: 500,
                held: 500
            }
        );
        assert_eq!((c.held_up_to, c.next), (-1, 0));
        assert!(
            c.admit(0),
            "the new topic's offsets are read from its start"
        );
        assert!(!c.first_sight("x"), "rows stored before are still caught");
        let (_, how) = Cursor::resume(held(500, &[]), Some(501), 5);
        assert_eq!(
            how,
            Resumed::AfterHeld,
            "one past the held offset is normal"
        );
        let (c, how) = Cursor::resume(held(500, &[]), None, 5);
        assert_eq!(
            how,
            Resumed::AfterHeld,
            "unknown watermark: trust clickhouse"
        );
        assert_eq!(c.held_up_to, 500);
    }

    #[test]
    fn the_recent_ids_never_grow_while_they_churn() {
        let mut r = RecentIds::new(2_000);
        for i in 0..125 {
            assert!(r.insert(&format!("id-{i}")));
        }
        assert!(r.set.capacity() < 1_000, "small while it is small");
        for i in 125..2_000 {
            assert!(r.insert(&format!("id-{i}")));
        }
        let sized = (r.set.capacity(), r.order.capacity());
        assert!(sized.0 >= 4_000, "{sized:?}");
        for i in 2_000..40_000 {
            assert!(r.insert(&format!("id-{i}")));
        }
        assert_eq!(r.len(), 2_000);
        // `capacity()` is entries + spare room: tombstones lower it until an in-place
        // rehash; a grown table would show more.
        assert!(
            r.set.capacity() <= sized.0 && r.order.capacity() == sized.1,
            "sized once: {sized:?}, now ({}, {})",
            r.set.capacity(),
            r.order.capacity()
        );
    }

    #[test]
    fn the_window_starts_window_offsets_below_the_held_one() {
        assert_eq!(window_start(1000, 100), 900);
        assert_eq!(window_start(5, 100), -95);
        assert_eq!(window_start(i64::MIN + 1, usize::MAX), i64::MIN);
    }
}
