//! Duplicate memory of one input partition: every decodable event seen in the last
//! `horizon` offsets, as (id hash, content hash). It is a pure function of the log window,
//! so a restart rebuilds it exactly by re-reading that window.

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

/// What the memory says about an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// Bounded duplicate memory; about 70 bytes per remembered event.
#[derive(Debug, Default)]
pub struct DedupeWindow {
    horizon: u64,
    by_id: HashKeyed<SmallVec<[(u64, i64); 1]>>,
    order: VecDeque<(i64, u64, u64)>,
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
        while let Some(&(o, id, content)) = self.order.front() {
            if o > limit {
                break;
            }
            self.order.pop_front();
            if let Some(list) = self.by_id.get_mut(&id) {
                list.retain(|(c, last)| !(*c == content && *last == o));
                if list.is_empty() {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// Classifies an event and remembers this occurrence.
    pub fn observe(&mut self, offset: i64, id: u64, content: u64) -> Seen {
        self.evict_before(offset);
        let list = self.by_id.entry(id).or_default();
        let seen = if list.is_empty() {
            Seen::New
        } else if list.iter().any(|(c, _)| *c == content) {
            Seen::Duplicate
        } else {
            Seen::Conflict
        };
        match list.iter_mut().find(|(c, _)| *c == content) {
            Some(entry) => entry.1 = offset,
            None => list.push((content, offset)),
        }
        self.order.push_back((offset, id, content));
        seen
    }

    pub fn len(&self) -> usize {
        self.order.len()
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
