//! A partition's spend-alert state as changelog records, and back: each hourly window that
//! changed since the last commit is one record (`~w/<account>\0<hour>` -> its sum and whether
//! it fired; a tombstone once forgotten), and the debit ids counted since the last commit are
//! one chunk record (`~s/<chunk number>`), deleted once all its ids have left the bounded
//! memory. A restore replays the windows and the chunks in order, so the state, and what the
//! next debit decides, is the one before the restart.

use std::collections::{BTreeMap, HashSet, VecDeque};

use rust_decimal::Decimal;

use super::SpendAlerts;
use crate::stage::ChangeSink;

const WINDOW: &[u8] = b"~w/";
const SEEN: &[u8] = b"~s/";

/// What changed since the changelog was last written, and the live chunks of debit ids.
#[derive(Debug, Default)]
pub struct Tracked {
    /// Windows written since the last commit.
    pub(super) changed: HashSet<(String, i64)>,
    /// Windows forgotten since the last commit.
    pub(super) removed: Vec<(String, i64)>,
    /// The ids counted since the last write, as text (the memory keeps digests; the
    /// changelog's chunks keep the ids, as before).
    pub(super) fresh: Vec<String>,
    /// Debit ids pushed into and popped from the memory, ever (this process).
    pub(super) seen_pushed: u64,
    pub(super) seen_popped: u64,
    /// Chunks on the changelog: (chunk number, `seen_pushed` after its last id).
    chunks: VecDeque<(u64, u64)>,
    next_chunk: u64,
    /// While restoring: the chunks read so far.
    restoring: BTreeMap<u64, Vec<String>>,
}

fn window_key(account: &str, hour: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(WINDOW.len() + account.len() + 9);
    k.extend_from_slice(WINDOW);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(&hour.to_be_bytes());
    k
}

fn chunk_key(n: u64) -> Vec<u8> {
    [SEEN, &n.to_be_bytes()].concat()
}

impl SpendAlerts {
    /// Writes what changed since the last call (see the module documentation).
    pub(super) fn write_changes(&mut self, log: &mut impl ChangeSink) {
        let t = &mut self.tracked;
        for (account, hour) in t.removed.drain(..) {
            if !self.hourly.contains_key(&(account.clone(), hour)) {
                log.delete(&window_key(&account, hour));
            }
        }
        for w in t.changed.drain() {
            if let Some((sum, fired)) = self.hourly.get(&w) {
                let v = serde_json::to_vec(&(sum.to_string(), fired)).expect("window serializes");
                log.put(&window_key(&w.0, w.1), &v);
            }
        }
        // Only the ids still in the memory (more than its capacity may have come since).
        let new = t.fresh.len().min(self.seen_order.len());
        if new > 0 {
            let ids = &t.fresh[t.fresh.len() - new..];
            let v = serde_json::to_vec(ids).expect("ids serialize");
            log.put(&chunk_key(t.next_chunk), &v);
            t.chunks.push_back((t.next_chunk, t.seen_pushed));
            t.next_chunk += 1;
        }
        t.fresh.clear();
        while let Some(&(n, end)) = t.chunks.front() {
            if end > t.seen_popped {
                break;
            }
            log.delete(&chunk_key(n));
            t.chunks.pop_front();
        }
    }

    /// Applies one changelog record (restore, in log order).
    pub(super) fn restore_record(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        if let Some(rest) = key.strip_prefix(WINDOW) {
            let (account, hour) = rest
                .len()
                .checked_sub(9)
                .filter(|&i| rest[i] == 0)
                .map(|i| (&rest[..i], &rest[i + 1..]))
                .ok_or("window key without an hour")?;
            let account =
                String::from_utf8(account.to_vec()).map_err(|_| "account is not utf-8")?;
            let hour = i64::from_be_bytes(hour.try_into().expect("8 bytes"));
            match value {
                Some(v) => {
                    let (sum, fired): (String, bool) =
                        serde_json::from_slice(v).map_err(|e| format!("window: {e}"))?;
                    let sum: Decimal = sum.parse().map_err(|e| format!("window sum: {e}"))?;
                    self.hourly.insert((account, hour), (sum, fired));
                }
                None => {
                    self.hourly.remove(&(account, hour));
                }
            }
        } else if let Some(rest) = key.strip_prefix(SEEN) {
            let n = u64::from_be_bytes(rest.try_into().map_err(|_| "chunk key")?);
            match value {
                Some(v) => {
                    let ids: Vec<String> =
                        serde_json::from_slice(v).map_err(|e| format!("debit ids: {e}"))?;
                    self.tracked.restoring.insert(n, ids);
                }
                None => {
                    self.tracked.restoring.remove(&n);
                }
            }
        } else {
            return Err(format!("unknown key {:?}", String::from_utf8_lossy(key)));
        }
        Ok(())
    }

    /// The changelog was read to its end: the debit-id memory is replayed chunk by chunk.
    pub(super) fn restored(&mut self) {
        let t = &mut self.tracked;
        for (n, ids) in std::mem::take(&mut t.restoring) {
            for id in ids {
                let h = super::digest(&id);
                if self.seen.insert(h) {
                    self.seen_order.push_back(h);
                    t.seen_pushed += 1;
                    if self.seen_order.len() > self.seen_capacity
                        && let Some(old) = self.seen_order.pop_front()
                    {
                        self.seen.remove(&old);
                        t.seen_popped += 1;
                    }
                }
            }
            t.chunks.push_back((n, t.seen_pushed));
            t.next_chunk = n + 1;
        }
        t.fresh.clear();
        t.changed.clear();
        t.removed.clear();
        self.newest_hour = self.hourly.keys().map(|(_, h)| *h).max().unwrap_or(0);
    }
}
