//! Rollup state on Kafka: a partition snapshot (with the input offset it is valid at) in,
//! chunked messages on the compacted state topic out; and back: the latest complete
//! snapshot of a partition, plus the duplicate memory rebuilt from the input log window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::output::{Destination, OutputProducer, send};
use crate::kafka::Reader;
use crate::rollup::{PartitionRollup, PartitionSnapshot, RollupConfig};

/// Largest chunk of snapshot bytes in one message.
const CHUNK_BYTES: usize = 512 * 1024;
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("state snapshot of partition {partition} is corrupt: {why}")]
    Corrupt { partition: i32, why: String },
    #[error(
        "state of partition {partition} is behind its committed input offset {committed} (latest snapshot visible: {visible:?}) after waiting; the state topic may have been deleted or compacted away"
    )]
    Behind {
        partition: i32,
        committed: i64,
        visible: Option<i64>,
    },
    #[error("timed out reading {topic} partition {partition} up to offset {target}")]
    Timeout {
        topic: String,
        partition: i32,
        target: i64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    format: u32,
    input_partition: i32,
    next_offset: i64,
    snapshot_id: u64,
    index: u32,
    count: u32,
    rules: String,
    data: Vec<u8>,
}

/// A fingerprint of the rules that decide outputs; a snapshot written under other rules is
/// still loaded, with a warning, since replays after the change will differ.
pub fn rules_fingerprint(cfg: &RollupConfig) -> String {
    // The trace bound decides no output: left out, as the fingerprint was before it existed.
    let RollupConfig {
        markup_rate,
        max_open_executions,
        dedupe_horizon,
        closed_horizon,
        closed_capacity,
        max_event_bytes,
        max_trace_calls: _,
    } = cfg;
    format!(
        "RollupConfig {{ markup_rate: {markup_rate:?}, max_open_executions: {max_open_executions:?}, dedupe_horizon: {dedupe_horizon:?}, closed_horizon: {closed_horizon:?}, closed_capacity: {closed_capacity:?}, max_event_bytes: {max_event_bytes:?} }}"
    )
}

/// Where the state of one input partition lives.
pub struct StateLocation<'a> {
    pub state_topic: &'a str,
    pub state_partitions: i32,
    pub input_topic: &'a str,
    pub partition: i32,
}

impl StateLocation<'_> {
    fn key(&self) -> String {
        format!("{}/{}", self.input_topic, self.partition)
    }
    fn state_partition(&self) -> i32 {
        self.partition % self.state_partitions.max(1)
    }
}

/// Queues a snapshot's chunks on the producer, counted in `epoch` (in the open transaction
/// in `exactly_once`); the caller waits for them.
pub fn write_snapshot(
    producer: &OutputProducer,
    loc: &StateLocation<'_>,
    snap: &PartitionSnapshot,
    rules: &str,
    epoch: u64,
) -> Result<usize, StateError> {
    let data = bincode::serialize(snap).map_err(|e| StateError::Corrupt {
        partition: loc.partition,
        why: e.to_string(),
    })?;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(CHUNK_BYTES).collect()
    };
    let snapshot_id = xxhash_rust::xxh3::xxh3_64(&data) ^ snap.next_offset as u64;
    let key = loc.key();
    for (i, c) in chunks.iter().enumerate() {
        let chunk = Chunk {
            format: FORMAT_VERSION,
            input_partition: loc.partition,
            next_offset: snap.next_offset,
            snapshot_id,
            index: i as u32,
            count: chunks.len() as u32,
            rules: rules.to_string(),
            data: c.to_vec(),
        };
        let bytes = bincode::serialize(&chunk).expect("chunk serializes");
        send(
            producer,
            epoch,
            Destination {
                topic: loc.state_topic,
                key: key.as_bytes(),
                partition: Some(loc.state_partition()),
            },
            &bytes,
        )?;
    }
    Ok(data.len())
}

/// Reads messages of one partition in `[from, to)` and calls `f` for each. `reader` must
/// have `enable.partition.eof` on: offsets have gaps (transaction markers, compaction), so
/// the read ends at the first offset at or past `to`, or at the end of the partition (for a
/// `read_committed` reader: the last stable offset), never by waiting for offset `to - 1`.
pub fn read_range(
    reader: &Reader,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    timeout: Duration,
    mut f: impl FnMut(i64, Option<&[u8]>, Option<&[u8]>),
) -> Result<(), StateError> {
    if from >= to {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    reader.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut next = from;
    while next < to {
        if Instant::now() > deadline {
            let _ = reader.unassign();
            return Err(StateError::Timeout {
                topic: topic.to_string(),
                partition,
                target: to,
            });
        }
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if m.offset() >= next && m.offset() < to {
                    f(m.offset(), m.key(), m.payload());
                }
                next = next.max(m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, topic, partition, "state read error, retrying")
            }
            None => {}
        }
    }
    reader.unassign()?;
    Ok(())
}

/// The latest complete snapshot of a partition, if any.
pub fn load_snapshot(
    reader: &Reader,
    loc: &StateLocation<'_>,
    rules: &str,
    timeout: Duration,
) -> Result<Option<PartitionSnapshot>, StateError> {
    let sp = loc.state_partition();
    let (low, high) = crate::kafka::watermarks(reader, loc.state_topic, sp, timeout)?;
    let key = loc.key();
    let mut window = 64i64;
    loop {
        let from = (high - window).max(low);
        let mut partial: HashMap<u64, Vec<Option<Vec<u8>>>> = HashMap::new();
        let mut latest: Option<(Vec<u8>, i64)> = None;
        let mut rules_seen = String::new();
        read_range(
            reader,
            loc.state_topic,
            sp,
            from,
            high,
            timeout,
            |_, k, v| {
                if k != Some(key.as_bytes()) {
                    return;
                }
                let Some(Ok(c)) = v.map(bincode::deserialize::<Chunk>) else {
                    return;
                };
                if c.format != FORMAT_VERSION || c.count == 0 || c.index >= c.count {
                    return;
                }
                let slots = partial
                    .entry(c.snapshot_id)
                    .or_insert_with(|| vec![None; c.count as usize]);
                if slots.len() != c.count as usize {
                    return;
                }
                slots[c.index as usize] = Some(c.data);
                // Chunks may arrive in any order (producer retries); every complete snapshot
                // is valid at its own offset, and the furthest one replays the least.
                let furthest = latest.as_ref().is_none_or(|(_, at)| c.next_offset >= *at);
                if furthest && slots.iter().all(Option::is_some) {
                    let bytes: Vec<u8> = slots.iter().flatten().flatten().copied().collect();
                    latest = Some((bytes, c.next_offset));
                    rules_seen = c.rules;
                }
            },
        )?;
        if let Some((bytes, _)) = latest {
            if rules_seen != rules {
                tracing::warn!(
                    partition = loc.partition,
                    "state snapshot was written under other rollup rules; outputs replayed from it may differ"
                );
            }
            let snap = PartitionSnapshot::from_bytes(&bytes).map_err(|e| StateError::Corrupt {
                partition: loc.partition,
                why: e.to_string(),
            })?;
            return Ok(Some(snap));
        }
        if from <= low {
            return Ok(None);
        }
        window *= 8;
    }
}

/// Restores a partition: snapshot (or empty) plus duplicate memory from the input window.
///
/// `committed` is the group's committed input offset, fetched stable (after any pending
/// transaction completed). The snapshot must reach it: a transaction's commit returns before
/// its markers are written everywhere, so right after a rebalance the state partition can
/// still show an older snapshot (or none); starting from it would process events twice or
/// lose open executions. The read is retried until the snapshot catches up, up to `timeout`.
pub fn restore_partition(
    reader: &Reader,
    loc: &StateLocation<'_>,
    cfg: &RollupConfig,
    now_ms: u64,
    timeout: Duration,
    committed: Option<i64>,
) -> Result<Option<PartitionRollup>, StateError> {
    let rules = rules_fingerprint(cfg);
    let deadline = Instant::now() + timeout;
    let snap = loop {
        let snap = load_snapshot(reader, loc, &rules, timeout)?;
        let visible = snap.as_ref().map(|s| s.next_offset);
        match committed {
            Some(c) if visible.is_none_or(|v| v < c) => {
                if Instant::now() >= deadline {
                    return Err(StateError::Behind {
                        partition: loc.partition,
                        committed: c,
                        visible,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => break snap,
        }
    };
    let Some(snap) = snap else {
        return Ok(None);
    };
    let next = snap.next_offset;
    let mut rollup = PartitionRollup::restore(cfg.clone(), loc.partition, snap, now_ms);
    let (low, _) = crate::kafka::watermarks(reader, loc.input_topic, loc.partition, timeout)?;
    let from = (next - cfg.dedupe_horizon as i64).max(low);
    read_range(
        reader,
        loc.input_topic,
        loc.partition,
        from,
        next,
        timeout,
        |o, _, v| {
            rollup.remember(o, v.unwrap_or_default());
        },
    )?;
    Ok(Some(rollup))
}
