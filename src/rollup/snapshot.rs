//! A partition's rollup state as a value: [`PartitionRollup`] in, [`PartitionSnapshot`]
//! (bincode bytes) out, and back. Holds all but the duplicate memory, which is rebuilt from
//! the log window with the snapshot's refused offsets.

use serde::{Deserialize, Serialize};

use super::{ClosedExecution, OpenExecution, PartitionRollup, RollupConfig, exec_key, split_key};

/// Serializable state of one partition at `next_offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub next_offset: i64,
    /// (execution_id, state); the account is in the state.
    pub(super) open: Vec<(String, OpenExecution)>,
    /// (hash of the execution key, closed execution), oldest first.
    pub(super) closed: Vec<(u64, ClosedExecution)>,
    /// Offsets of decodable events that were rejected within the dedupe horizon: rebuilding
    /// the duplicate memory from the log leaves them out.
    pub(super) refused: Vec<i64>,
}

/// The snapshot as written before refused offsets existed (read for upgrades).
#[derive(Deserialize)]
struct SnapshotV1 {
    next_offset: i64,
    open: Vec<(String, OpenExecution)>,
    closed: Vec<(u64, ClosedExecution)>,
}

impl PartitionSnapshot {
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Bincode bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, bincode::Error> {
        bincode::serialize(self)
    }

    /// Reads [`Self::to_bytes`], or a snapshot written by an earlier version (no refused
    /// offsets: its window is rebuilt as if every decodable event had been accepted, and
    /// its closed executions were keyed by execution id alone, so a late call to one of
    /// them opens a new execution instead of an adjustment; both bill it once).
    pub fn from_bytes(bytes: &[u8]) -> Result<PartitionSnapshot, bincode::Error> {
        bincode::deserialize::<PartitionSnapshot>(bytes).or_else(|e| {
            bincode::deserialize::<SnapshotV1>(bytes)
                .map(|v| PartitionSnapshot {
                    next_offset: v.next_offset,
                    open: v.open,
                    closed: v.closed,
                    refused: Vec::new(),
                })
                .map_err(|_| e)
        })
    }
}

impl PartitionRollup {
    /// The state to persist with `next_offset` (open executions, closed memory, refused
    /// offsets).
    pub fn snapshot(&self) -> PartitionSnapshot {
        let open: Vec<(String, OpenExecution)> = self
            .open_by_first_offset
            .values()
            .map(|key| (split_key(key).1.to_string(), self.open[key].clone()))
            .collect();
        PartitionSnapshot {
            next_offset: self.next_offset,
            open,
            closed: self
                .closed_order
                .iter()
                .filter_map(|(o, h)| {
                    self.closed
                        .get(h)
                        .filter(|c| c.closed_at == *o)
                        .map(|c| (*h, *c))
                })
                .collect(),
            refused: self.dedupe.refused(),
        }
    }

    /// Rebuilds state from a snapshot; the duplicate memory must then be fed with
    /// [`Self::remember`] for the `dedupe_horizon` offsets before `next_offset`.
    pub fn restore(
        cfg: RollupConfig,
        partition: i32,
        snap: PartitionSnapshot,
        now_ms: u64,
    ) -> Self {
        let mut r = PartitionRollup::new(cfg, partition);
        r.next_offset = snap.next_offset;
        for (id, mut o) in snap.open {
            o.last_seen_ms = now_ms;
            let key = exec_key(&o.account_id, &id);
            r.open_by_first_offset.insert(o.first_offset, key.clone());
            r.open.insert(key, o);
        }
        for (h, c) in snap.closed {
            r.closed.insert(h, c);
            r.closed_order.push_back((c.closed_at, h));
        }
        r.dedupe.set_refused(snap.refused);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_snapshot_of_the_previous_format() {
        #[derive(Serialize)]
        struct V1<'a> {
            next_offset: i64,
            open: &'a [(String, OpenExecution)],
            closed: &'a [(u64, ClosedExecution)],
        }
        let closed = [(
            7u64,
            ClosedExecution {
                account_hash: 9,
                closed_at: 3,
            },
        )];
        let old = bincode::serialize(&V1 {
            next_offset: 42,
            open: &[],
            closed: &closed,
        })
        .unwrap();
        let s = PartitionSnapshot::from_bytes(&old).unwrap();
        assert_eq!(s.next_offset, 42);
        assert_eq!(s.closed, closed);
        assert!(s.refused.is_empty());
        let new = PartitionSnapshot {
            refused: vec![40, 41],
            ..s
        };
        assert_eq!(
            PartitionSnapshot::from_bytes(&new.to_bytes().unwrap()).unwrap(),
            new
        );
        assert!(PartitionSnapshot::from_bytes(b"\x01").is_err());
    }
}
