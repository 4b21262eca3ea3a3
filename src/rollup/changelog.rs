//! A partition's rollup state as changelog records, written incrementally, and back. What
//! changed since the last commit goes out, nothing else:
//! - `o<account>\0<execution>` -> an open execution touched since the last commit (its whole
//!   value, a version byte then bincode); a tombstone once it closed;
//! - `c<chunk>` -> the closed-execution entries added since the last commit, one chunk per
//!   commit; a tombstone once every entry of the chunk left the bounded memory;
//! - `d<chunk>` -> the same for the duplicate memory's entries (accepted events).
//!
//! A commit whose new entries are few rewrites the newest chunk with them added, up to
//! [`MERGE_UP_TO`] entries, instead of starting a chunk of its own: a partition with a trickle
//! of events keeps about `horizon / MERGE_UP_TO` live chunks, not one per commit, and the
//! compacted topic a restore reads stays that small.
//!
//! A restore applies the records in log order, then replays the chunks in order through the
//! same functions that built them, so the memories (and every decision that reads them) are
//! the ones of the last commit. The next offset comes from the runtime's positions. The live
//! trace of an open execution is not written (it decides nothing): calls priced before a
//! restore are counted as omitted.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::open::OpenExecution;
use super::{PartitionRollup, split_key};

const OPEN: u8 = b'o';
const CLOSED: u8 = b'c';
const DEDUPE: u8 = b'd';
/// First byte of an open execution's value (the bincode layout of [`OpenExecution`]).
const OPEN_FORMAT: u8 = 1;
/// A chunk takes the next commits' entries while it holds fewer than this many (a rewrite of
/// at most ~6 KB; a busier partition's commits start chunks of their own).
pub(super) const MERGE_UP_TO: usize = 256;

/// Entries of a FIFO memory written in chunks: the entries added since the last write, and
/// which chunks on the changelog still hold an entry in memory.
#[derive(Debug)]
pub(super) struct Chunks<T> {
    pending: Vec<T>,
    /// Entries added to and removed from the memory (removed oldest first), this process.
    pushed: u64,
    popped: u64,
    /// Chunks on the changelog: (number, `pushed` after its last entry).
    live: VecDeque<(u64, u64)>,
    next: u64,
    /// The entries of the newest live chunk while it is small enough to take more
    /// ([`MERGE_UP_TO`]); empty when the next write starts a chunk.
    tail: Vec<T>,
    /// While restoring: the chunks read so far, by number.
    restoring: BTreeMap<u64, Vec<T>>,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            pending: Vec::new(),
            pushed: 0,
            popped: 0,
            live: VecDeque::new(),
            next: 0,
            tail: Vec::new(),
            restoring: BTreeMap::new(),
        }
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> Chunks<T> {
    pub(super) fn push(&mut self, on: bool, entry: T) {
        self.pushed += 1;
        if on {
            self.pending.push(entry);
        }
    }

    pub(super) fn popped(&mut self, n: u64) {
        self.popped += n;
    }

    fn write(&mut self, tag: u8, put: &mut impl FnMut(&[u8], Option<&[u8]>)) {
        if !self.pending.is_empty() {
            let merge = !self.tail.is_empty()
                && self.live.back().is_some_and(|&(n, _)| n + 1 == self.next)
                && self.tail.len() + self.pending.len() <= MERGE_UP_TO;
            if merge {
                // The newest chunk again, with the new entries after its own.
                self.tail.append(&mut self.pending);
                let v = bincode::serialize(&self.tail).expect("chunk serializes");
                put(&chunk_key(tag, self.next - 1), Some(&v));
                self.live.back_mut().expect("live chunk").1 = self.pushed;
            } else {
                let v = bincode::serialize(&self.pending).expect("chunk serializes");
                put(&chunk_key(tag, self.next), Some(&v));
                self.live.push_back((self.next, self.pushed));
                self.next += 1;
                self.tail.clear();
                if self.pending.len() < MERGE_UP_TO {
                    self.tail.append(&mut self.pending);
                }
                self.pending.clear();
            }
        }
        while let Some(&(n, end)) = self.live.front() {
            if end > self.popped {
                break;
            }
            put(&chunk_key(tag, n), None);
            self.live.pop_front();
        }
        if self.live.is_empty() {
            self.tail.clear();
        }
    }

    fn restore(&mut self, n: u64, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(v) => {
                let entries = bincode::deserialize(v).map_err(|e| format!("chunk {n}: {e}"))?;
                self.restoring.insert(n, entries);
            }
            None => {
                self.restoring.remove(&n);
            }
        }
        Ok(())
    }
}

fn chunk_key(tag: u8, n: u64) -> [u8; 9] {
    let mut k = [tag; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// What changed since the last write, for [`PartitionRollup::write_changes`].
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// Record changes (off in offline rating, which never writes them).
    pub(super) on: bool,
    /// Execution keys opened, changed or closed since the last write.
    touched: HashSet<String>,
    /// Execution keys with a live record on the changelog.
    logged: HashSet<String>,
    /// (execution key hash, account hash, closed at offset).
    pub(super) closed: Chunks<(u64, u64, i64)>,
    /// (offset, idempotency key hash, content hash).
    pub(super) dedupe: Chunks<(i64, u64, u64)>,
}

impl Journal {
    pub(super) fn touch(&mut self, key: &str) {
        if self.on && !self.touched.contains(key) {
            self.touched.insert(key.to_string());
        }
    }
}

impl PartitionRollup {
    /// Starts recording what changes, for [`Self::write_changes`] (the pipeline; offline
    /// rating never writes a changelog).
    pub fn record_changes(&mut self) {
        self.journal.on = true;
    }

    /// Writes what changed since the last call (see the module documentation) through `put`
    /// (`None`: a tombstone).
    pub fn write_changes(&mut self, mut put: impl FnMut(&[u8], Option<&[u8]>)) {
        let j = &mut self.journal;
        let mut key = Vec::new();
        let mut value = Vec::new();
        for k in j.touched.drain() {
            key.clear();
            key.push(OPEN);
            key.extend_from_slice(k.as_bytes());
            match self.open.get(&k) {
                Some(o) => {
                    value.clear();
                    value.push(OPEN_FORMAT);
                    bincode::serialize_into(&mut value, o).expect("open execution serializes");
                    put(&key, Some(&value));
                    j.logged.insert(k);
                }
                None => {
                    if j.logged.remove(&k) {
                        put(&key, None);
                    }
                }
            }
        }
        j.closed.write(CLOSED, &mut put);
        j.dedupe.popped = self.dedupe.evicted();
        j.dedupe.write(DEDUPE, &mut put);
    }

    /// Applies one changelog record (restore, in log order); [`Self::restored`] follows.
    pub fn restore_record(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let (&tag, rest) = key.split_first().ok_or("empty key")?;
        let chunk = || -> Result<u64, String> {
            Ok(u64::from_be_bytes(
                rest.try_into().map_err(|_| "chunk key")?,
            ))
        };
        match tag {
            OPEN => {
                let k = std::str::from_utf8(rest).map_err(|_| "execution key is not utf-8")?;
                if let Some(old) = self.open.remove(k) {
                    self.open_by_first_offset.remove(&old.first_offset);
                }
                self.journal.logged.remove(k);
                if let Some(v) = value {
                    let o = decode_open(v)?;
                    let (account, _) = split_key(k);
                    if o.account_id != account {
                        return Err(format!("execution {k:?} holds account {}", o.account_id));
                    }
                    self.open_by_first_offset
                        .insert(o.first_offset, k.to_string());
                    self.open.insert(k.to_string(), o);
                    self.journal.logged.insert(k.to_string());
                }
                Ok(())
            }
            CLOSED => self.journal.closed.restore(chunk()?, value),
            DEDUPE => self.journal.dedupe.restore(chunk()?, value),
            _ => Err(format!("unknown key {:?}", String::from_utf8_lossy(key))),
        }
    }

    /// The changelog was read to its end: the memories are replayed chunk by chunk, the
    /// partition continues at `next_offset`, and the open executions' idle clocks start at
    /// `now_ms`.
    pub fn restored(&mut self, next_offset: i64, now_ms: u64) {
        self.next_offset = next_offset;
        let on = std::mem::replace(&mut self.journal.on, false);
        for (n, entries) in std::mem::take(&mut self.journal.closed.restoring) {
            for (h, a, o) in entries {
                self.remember_closed(h, a, o);
            }
            let c = &mut self.journal.closed;
            c.live.push_back((n, c.pushed));
            c.next = n + 1;
        }
        for (n, entries) in std::mem::take(&mut self.journal.dedupe.restoring) {
            for (o, id, content) in entries {
                self.dedupe.remember(o, id, content);
                self.journal.dedupe.pushed += 1;
            }
            let d = &mut self.journal.dedupe;
            d.live.push_back((n, d.pushed));
            d.next = n + 1;
        }
        self.journal.dedupe.popped = self.dedupe.evicted();
        self.journal.on = on;
        for o in self.open.values_mut() {
            o.last_seen_ms = now_ms;
        }
    }
}

fn decode_open(v: &[u8]) -> Result<OpenExecution, String> {
    match v.split_first() {
        Some((&OPEN_FORMAT, rest)) => {
            bincode::deserialize(rest).map_err(|e| format!("open execution: {e}"))
        }
        Some((f, _)) => Err(format!("open execution of unknown format {f}")),
        None => Err("empty open execution".into()),
    }
}

#[cfg(test)]
mod tests;
