//! The follower's memory of one partition of one output topic: the recent messages (at most
//! `cap`, in offset order), and which execution ids the messages it let go of named.
//!
//! The second part is what lets a stream or trace skip Kafka: the follower has read every
//! message from its start on, so for an offset range it has read and let go of
//! (`[exact_from, covered_from)`) it knows whether an execution had a message there. An
//! execution with none (say one that began after the follower started, or one not begun
//! yet) needs nothing from Kafka; one with some needs only the range from its first evicted
//! message on ([`Ring::kafka_part`]). The ids are kept in [`GENERATIONS`] generations of at
//! most `id_cap / GENERATIONS` ids; when the oldest is dropped, `exact_from` moves up to
//! the next one's start and below it reads go to Kafka as before.
//!
//! An id is kept as its 64-bit hash ([`crate::event::id_hash`], 8 bytes where the string
//! cost ~70 once its message was let go): two ids with one hash only make a lookup read a
//! range from Kafka it did not need, never skip one it needed.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use super::Followed;
use crate::event::id_hash;
use crate::rollup::dedupe::PassThroughHasher;

/// Generations of evicted execution ids kept per ring.
pub const GENERATIONS: usize = 4;

/// The execution ids (their hashes) named by the evicted messages from `from` on (to the
/// next generation's `from`).
#[derive(Debug)]
struct Generation {
    from: i64,
    ids: HashSet<u64, BuildHasherDefault<PassThroughHasher>>,
}

/// The recent messages of one partition of one topic: every committed message from
/// `covered_from` on, and the ids the evicted ones from `exact_from` on named.
#[derive(Debug, Default)]
pub struct Ring {
    pub covered_from: i64,
    pub msgs: VecDeque<Arc<Followed>>,
    exact_from: i64,
    evicted: VecDeque<Generation>,
}

impl Ring {
    /// An empty ring of a follower that reads the partition from offset `start` on.
    pub fn new(start: i64) -> Ring {
        Ring {
            covered_from: start,
            msgs: VecDeque::new(),
            exact_from: start,
            evicted: VecDeque::new(),
        }
    }

    /// The messages at offsets `[start, end)` that `wanted` keeps (the ring is in offset
    /// order: found by bisection, not by a scan of the whole tail).
    pub fn range(
        &self,
        start: i64,
        end: i64,
        wanted: impl Fn(&Followed) -> bool,
    ) -> Vec<Arc<Followed>> {
        let i = self.msgs.partition_point(|m| m.offset < start);
        self.msgs
            .range(i..)
            .take_while(|m| m.offset < end)
            .filter(|m| wanted(m))
            .cloned()
            .collect()
    }

    /// Appends `msg` (the next in offset order) and lets the oldest go beyond `cap`
    /// messages, noting the execution ids they name (at most `id_cap` over all
    /// generations). Returns the messages let go.
    pub fn push(&mut self, msg: Arc<Followed>, cap: usize, id_cap: usize) -> Vec<Arc<Followed>> {
        self.msgs.push_back(msg);
        let mut out = Vec::new();
        let per_generation = (id_cap / GENERATIONS).max(1);
        while self.msgs.len() > cap {
            let Some(old) = self.msgs.pop_front() else {
                break;
            };
            self.covered_from = old.offset + 1;
            for e in old.execution_ids.iter() {
                let e = id_hash(e);
                if self.evicted.back().is_some_and(|g| g.ids.contains(&e)) {
                    continue;
                }
                if self
                    .evicted
                    .back()
                    .is_none_or(|g| g.ids.len() >= per_generation)
                {
                    self.evicted.push_back(Generation {
                        from: old.offset,
                        ids: HashSet::default(),
                    });
                    if self.evicted.len() > GENERATIONS {
                        self.evicted.pop_front();
                        self.exact_from = self.evicted.front().map_or(old.offset, |g| g.from);
                    }
                }
                if let Some(g) = self.evicted.back_mut() {
                    g.ids.insert(e);
                }
            }
            out.push(old);
        }
        out
    }

    /// The part of `[start, end)` below the ring's messages that must be read from Kafka to
    /// have every message naming `execution` (every message, when `None`): `None` when the
    /// ring knows there is none there.
    pub fn kafka_part(&self, execution: Option<&str>, start: i64, end: i64) -> Option<(i64, i64)> {
        let upto = self.covered_from.min(end);
        if start >= upto {
            return None;
        }
        let Some(e) = execution else {
            return Some((start, upto));
        };
        let e = id_hash(e);
        let first = self
            .evicted
            .iter()
            .find(|g| g.ids.contains(&e))
            .map(|g| g.from);
        let (from, to) = match first {
            // Below `exact_from` the ring knows nothing; above, the execution has a message
            // from its first evicted one on at most.
            Some(f) if start >= self.exact_from => (start.max(f), upto),
            Some(_) => (start, upto),
            None => (start, self.exact_from.min(upto)),
        };
        (from < to).then_some((from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::OutputTopic;

    fn msg(offset: i64, exec: Option<&str>) -> Arc<Followed> {
        let payload = match exec {
            Some(e) => format!(r#"{{"account_id":"a","execution_id":"{e}"}}"#),
            None => r#"{"account_id":"a"}"#.to_string(),
        };
        Arc::new(Followed::new(
            OutputTopic::Lines,
            0,
            offset,
            b"a".as_slice().into(),
            payload.into_bytes().into(),
        ))
    }

    #[test]
    fn an_execution_with_no_evicted_message_needs_no_kafka_read() {
        // The follower started at offset 100; it keeps 3 messages.
        let mut r = Ring::new(100);
        for (o, e) in [
            (100, Some("old")),
            (101, None),
            (102, Some("old")),
            (103, Some("x")),
            (104, None),
            (105, Some("new")),
            (106, Some("new")),
        ] {
            r.push(msg(o, e), 3, 1000);
        }
        assert_eq!(r.covered_from, 104);
        // Before the follower's start nothing is known.
        assert_eq!(r.kafka_part(Some("new"), 50, 107), Some((50, 100)));
        assert_eq!(r.kafka_part(Some("old"), 50, 107), Some((50, 104)));
        // From its start on: only executions with evicted messages, from the first one.
        assert_eq!(r.kafka_part(Some("new"), 100, 107), None);
        assert_eq!(r.kafka_part(Some("never"), 100, 107), None);
        assert_eq!(r.kafka_part(Some("old"), 100, 107), Some((100, 104)));
        assert_eq!(r.kafka_part(Some("x"), 100, 107), Some((100, 104)));
        // The whole key (a conversation, a gap): everything below the ring.
        assert_eq!(r.kafka_part(None, 100, 107), Some((100, 104)));
        assert_eq!(r.kafka_part(None, 104, 107), None);
        assert_eq!(r.range(100, 107, |_| true).len(), 3);
    }

    #[test]
    fn dropping_old_generations_moves_what_is_known_up() {
        // 4 generations of 1 id: each evicted message with an id starts one.
        let mut r = Ring::new(0);
        for o in 0..10 {
            r.push(msg(o, Some(&format!("e{o}"))), 2, GENERATIONS);
        }
        // Evicted 0..8; the generations of e4..e7 are kept, from offset 4 on.
        assert_eq!(r.covered_from, 8);
        assert_eq!(r.exact_from, 4);
        assert_eq!(r.kafka_part(Some("e5"), 4, 10), Some((5, 8)));
        assert_eq!(r.kafka_part(Some("zz"), 4, 10), None);
        // An id evicted again and again takes one place.
        let mut same = Ring::new(0);
        for o in 0..10 {
            same.push(msg(o, Some("one")), 2, GENERATIONS);
        }
        assert_eq!(same.exact_from, 0);
        assert_eq!(same.kafka_part(Some("two"), 0, 10), None);
        assert_eq!(same.kafka_part(Some("one"), 0, 10), Some((0, 8)));
        // e1's generation is gone: from below 4 it is read from Kafka.
        assert_eq!(r.kafka_part(Some("e1"), 0, 10), Some((0, 4)));
        assert_eq!(r.kafka_part(Some("e1"), 4, 10), None);
    }
}
