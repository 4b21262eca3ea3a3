//! The stage's contract: what a processor sees (input messages), returns (output records,
//! changelog records) and must do on restore; the spec of a stage and why it stops.

use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::ledger::core::Change;

/// Changelog key of the input positions a partition's state corresponds to.
pub const OFFSETS_KEY: &[u8] = b"~offsets";

/// One input message handed to a processor.
#[derive(Debug, Clone, Copy)]
pub struct InputMsg<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// One output message (partitioned by key with the producer's partitioner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// A stage's logic: deterministic, I/O-free, state per input partition number.
pub trait Processor: Send {
    /// Handles one input message; appends what to send.
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Vec<OutRecord>);
    /// The state of `partition` changed since the last call, as changelog records
    /// (last value per key; `None` deletes). Called just before each commit.
    fn snapshot(&mut self, partition: i32) -> Vec<Change>;
    /// Applies one changelog record of `partition` (restore, in log order).
    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String>;
    /// The changelog of `partition` has been read to its end.
    fn restored(&mut self, partition: i32);
    /// Forgets `partition` (revoked, or about to be restored again).
    fn drop_partition(&mut self, partition: i32);
    /// A transaction committed (telemetry).
    fn committed(&mut self) {}
}

/// What a stage reads and writes.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Short name: `ledger`, `vouchers` (metrics label, `group.instance.id` suffix).
    pub name: &'static str,
    pub group_id: String,
    /// Co-partitioned input topics (same partition count, same keying).
    pub inputs: Vec<String>,
    /// Compacted changelog, as many partitions as the inputs.
    pub changelog: String,
    pub commit_interval: Duration,
    pub max_batch: usize,
}

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Setup(String),
    #[error("restore of {topic} partition {partition}: {why}")]
    Restore {
        topic: String,
        partition: i32,
        why: String,
    },
    #[error("transaction failed for good (fenced by another instance?): {0}")]
    Fatal(KafkaError),
}
