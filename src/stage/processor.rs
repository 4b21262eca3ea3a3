//! The runtime's contract with a stage: what a [`Processor`] sees (one input message), where
//! it sends (its [`Outputs`], inside the open transaction), what it writes to its changelog
//! before each commit ([`Changelog`]) or to its own store ([`Processor::flush`]), and what it
//! must do on restore; the [`StageSpec`] of a stage and its [`Guarantee`].

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::BorrowedHeaders;

use super::restore::Positions;
use super::store::InputPartitions;
use super::txn::{Record, StageProducer, Txn};
use crate::health::Health;

/// Changelog key of the input positions a partition's state corresponds to (written by the
/// runtime; processors never see it).
pub const OFFSETS_KEY: &[u8] = b"~offsets";

/// One input message handed to a processor.
#[derive(Clone, Copy)]
pub struct InputMsg<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Option<&'a BorrowedHeaders>,
}

/// Where a processor sends. Under [`Guarantee::Transactional`] every message goes into the
/// stage's open Kafka transaction (the runtime begins one with the first message after a
/// commit); a message that cannot be queued marks the transaction failed: it is aborted at the
/// next commit and every owned partition is restored, so the processor never handles a send
/// error itself. Under [`Guarantee::StoreThenOffsets`] messages are sent at least once: the
/// runtime waits for their acknowledgements before it commits the input offsets.
pub struct Outputs<'a> {
    pub(super) producer: &'a StageProducer,
    pub(super) txn: &'a mut Txn,
}

impl Outputs<'_> {
    /// Sends `payload` to `topic`, partitioned by `key`.
    pub fn send(&mut self, topic: &str, key: &[u8], payload: &[u8]) {
        self.send_record(Record {
            topic,
            key,
            payload: Some(payload),
            partition: None,
            headers: None,
        });
    }

    /// Sends one record.
    pub fn send_record(&mut self, record: Record<'_>) {
        self.txn.send(self.producer, record);
    }
}

/// The changelog records of one partition, written just before a commit into partition
/// `partition` of the stage's compacted changelog topic, in the same transaction.
pub struct Changelog<'a> {
    pub(super) out: Outputs<'a>,
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) records: u64,
    pub(super) bytes: u64,
}

/// Where a state writes its changed keys: the stage's [`Changelog`], or in unit tests a
/// [`CompactedLog`].
pub trait ChangeSink {
    /// The latest value of `key` (replaces what the changelog held).
    fn put(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key` (a tombstone; compaction drops the key).
    fn delete(&mut self, key: &[u8]);
}

impl ChangeSink for Changelog<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.write(key, Some(value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.write(key, None);
    }
}

/// A changelog in memory, as compaction leaves it (the last value of each key; deleted keys
/// gone), in the order keys were first written: what a restore would read. For tests of
/// states that write to a [`ChangeSink`].
#[derive(Debug, Default, Clone)]
pub struct CompactedLog {
    order: Vec<Vec<u8>>,
    values: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    /// Records written, tombstones included.
    pub records: usize,
}

impl CompactedLog {
    /// The live records, oldest key first.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.order
            .iter()
            .filter_map(|k| self.values.get(k).map(|v| (k.as_slice(), v.as_slice())))
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl ChangeSink for CompactedLog {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.records += 1;
        if self.values.insert(key.to_vec(), value.to_vec()).is_none() {
            self.order.retain(|k| k != key);
            self.order.push(key.to_vec());
        }
    }

    fn delete(&mut self, key: &[u8]) {
        self.records += 1;
        self.values.remove(key);
    }
}

impl Changelog<'_> {
    fn write(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.records += 1;
        self.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        let (topic, partition) = (self.topic, self.partition);
        self.out.send_record(Record {
            topic,
            key,
            payload: value,
            partition: Some(partition),
            headers: None,
        });
    }
}

/// A stage's logic: deterministic given its inputs, state per input partition number.
///
/// Under [`Guarantee::Transactional`] the runtime calls, in order: [`Processor::restore`] for
/// every changelog record of an assigned partition, then [`Processor::restored`];
/// [`Processor::process`] for each input message at or after the restored positions;
/// [`Processor::punctuate`] between batches; [`Processor::changes`] for each partition that
/// had input, right before a commit; then [`Processor::committed`], or
/// [`Processor::aborted`] followed by a restore of every owned partition.
///
/// Under [`Guarantee::StoreThenOffsets`] the state is the processor's own store:
/// [`Processor::resume`] for every assigned input partition (instead of a changelog read);
/// [`Processor::process`] and [`Processor::punctuate`] as above; [`Processor::flush`] after
/// every batch (the processor writes what is due and names the input positions now
/// stored), then [`Processor::committed`] once those offsets are committed;
/// [`Processor::changes`], [`Processor::restore`] and [`Processor::restored`] are never
/// called.
pub trait Processor: Send {
    /// Handles one input message; what it sends goes into the open transaction.
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Outputs<'_>);
    /// Time-driven work between messages, every [`StageSpec::punctuate_every`] (wall time
    /// `now_ms`): e.g. the rating pipeline's idle close markers.
    fn punctuate(&mut self, _now_ms: u64, _out: &mut Outputs<'_>) {}
    /// Writes what changed in `partition` since the last call (the last value of each key
    /// written since; deleted keys as tombstones), and no more: a commit costs what changed.
    fn changes(&mut self, partition: i32, log: &mut Changelog<'_>);
    /// Applies one changelog record of `partition` (restore, in log order).
    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String>;
    /// The changelog of `partition` has been read to its end; consumption resumes at
    /// `positions` (next offset per input topic; empty for a fresh partition).
    fn restored(&mut self, partition: i32, positions: &Positions) -> Result<(), String>;
    /// Forgets `partition` (revoked, or about to be restored again).
    fn drop_partition(&mut self, partition: i32);
    /// A transaction committed: its outputs are visible (telemetry, gauges).
    fn committed(&mut self) {}
    /// The open transaction was aborted; every owned partition is restored next (drop
    /// anything counted since the last commit).
    fn aborted(&mut self) {}
    /// [`Guarantee::StoreThenOffsets`]: where input `topic`'s `partition` resumes, read from
    /// the stage's own store when the partition is assigned, before it is. It may wait for
    /// the store (`inputs` measures the lag of what waits meanwhile); an error ends the
    /// stage. Returns the next offset to process: older messages are skipped.
    fn resume(
        &mut self,
        topic: &str,
        partition: i32,
        _inputs: &InputPartitions<'_>,
    ) -> Result<i64, String> {
        Err(format!(
            "{topic}/{partition}: this stage has no store of its own to resume from"
        ))
    }
    /// [`Guarantee::StoreThenOffsets`]: writes to the store what is due (everything when
    /// `force`) and returns the input positions it now holds, as (topic, partition, next
    /// offset): the runtime commits them once the outputs sent are acknowledged. Called after
    /// every batch; an empty answer commits nothing.
    fn flush(&mut self, _force: bool, _out: &mut Outputs<'_>) -> Vec<(String, i32, i64)> {
        Vec::new()
    }
    /// Once a second: the lag of each owned input partition as (topic, partition, messages
    /// behind its high watermark; `None` before librdkafka's statistics have seen it).
    fn lag(&mut self, _lags: &[(&str, i32, Option<i64>)]) {}
}

/// How a stage makes its work durable: what its "exactly once" rests on.
#[derive(Debug, Clone)]
pub enum Guarantee {
    /// Kafka Streams' exactly-once (EOS v2): the outputs, the changelog of what changed and
    /// the input offsets in one Kafka transaction per `commit_interval`; inputs
    /// co-partitioned; the state restored from `changelog` (compacted, as many partitions as
    /// the inputs) on assignment.
    Transactional { changelog: String },
    /// Kafka Connect's sink contract: the processor writes to a store of its own when its
    /// batches are due ([`Processor::flush`], idempotent: the store knows what it holds), then
    /// the runtime commits the input offsets it names (a failed commit is harmless: the
    /// resume point is the store's, [`Processor::resume`]). Inputs need not be
    /// co-partitioned; no transaction, no changelog.
    StoreThenOffsets,
}

/// What a stage reads and writes, and how often it commits.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Short name: `pipeline`, `alerts`, `ledger`, `vouchers`, `sink`: the `stage` label of the
    /// `usage_agg_stage_*` metrics, the suffix of `group.instance.id` and of
    /// `transactional.id`.
    pub name: &'static str,
    pub group_id: String,
    /// Input topics: co-partitioned (same partition count, same keying) under
    /// [`Guarantee::Transactional`]; any under [`Guarantee::StoreThenOffsets`], where they are
    /// resumed in this order at assignment.
    pub inputs: Vec<String>,
    pub guarantee: Guarantee,
    /// A transaction commits this long after it began (its first message), or earlier at
    /// `max_batch` input messages ([`Guarantee::Transactional`]; a store decides itself).
    pub commit_interval: Duration,
    pub max_batch: usize,
    /// [`Processor::punctuate`] runs this often; `None`: never.
    pub punctuate_every: Option<Duration>,
    /// Consumer properties of this stage over the shared group settings (fetch tuning).
    pub consumer: Vec<(&'static str, String)>,
    /// Progress and lag are reported here (readiness), when given.
    pub health: Option<Arc<Health>>,
}

impl StageSpec {
    /// The changelog topic of a [`Guarantee::Transactional`] stage.
    pub fn changelog(&self) -> Option<&str> {
        match &self.guarantee {
            Guarantee::Transactional { changelog } => Some(changelog),
            Guarantee::StoreThenOffsets => None,
        }
    }
}
