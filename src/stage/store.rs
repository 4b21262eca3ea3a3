//! The runtime's [`Guarantee::StoreThenOffsets`] side, Kafka Connect's sink contract: on
//! assignment each input partition resumes where the processor's own store says
//! ([`Processor::resume`], in the order of `StageSpec::inputs`), and is assigned only then;
//! after every batch the processor writes what is due ([`Processor::flush`]) and the runtime
//! commits the input offsets it names, once the messages sent meanwhile are acknowledged.
//! Used by the ClickHouse sink (docs/design.md, "The sink and the stage runtime").
//!
//! [`Guarantee::StoreThenOffsets`]: super::Guarantee::StoreThenOffsets

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Outputs, Processor, Stage, StageContext, StageError};
use crate::kafka;
use crate::metrics::METRICS;

/// How long the messages a batch sent (dead letters) may take to be acknowledged before the
/// input offsets are committed anyway (the producer's own `message.timeout.ms`).
const ACK_PATIENCE: Duration = Duration::from_secs(120);

/// What the stage's consumer knows of its input partitions, for a processor resuming one.
pub struct InputPartitions<'a> {
    consumer: &'a BaseConsumer<StageContext>,
    /// Assigned, not resumed yet (this one included).
    waiting: &'a [(String, i32)],
}

impl InputPartitions<'_> {
    /// The high watermark of `topic`'s `partition`, if the broker answers within 10 s.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .ok()
            .map(|(_, hi)| hi)
    }

    /// Messages waiting in each assigned partition not resumed yet, as (topic, partition,
    /// messages): its high watermark minus the group's committed offset (its low watermark
    /// when nothing is committed). A partition the broker does not answer for is left out.
    pub fn waiting(&self) -> Vec<(String, i32, i64)> {
        let t = Duration::from_secs(5);
        let c = self.consumer;
        self.waiting
            .iter()
            .filter_map(|(topic, p)| {
                let (lo, hi) = c.fetch_watermarks(topic, *p, t).ok()?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, *p);
                let committed = c.committed_offsets(tpl, t).ok()?;
                let from = match committed.find_partition(topic, *p)?.offset() {
                    Offset::Offset(o) => o,
                    _ => lo,
                };
                Some((topic.clone(), *p, waiting(hi, from)))
            })
            .collect()
    }
}

/// Messages waiting in a partition read from `from` up to the high watermark `hi`.
fn waiting(hi: i64, from: i64) -> i64 {
    (hi - from).max(0)
}

impl<P: Processor> Stage<P> {
    /// Resumes every partition of `tpl` from the processor's store, inputs in the spec's
    /// order, then assigns them at the group's committed offsets (older messages than the
    /// store holds are skipped by position).
    pub(super) fn assign_resumed(&mut self, tpl: &TopicPartitionList) -> Result<(), StageError> {
        let order = |t: &str| self.spec.inputs.iter().position(|i| i == t);
        let mut parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        parts.sort_by_key(|(t, p)| (order(t).unwrap_or(usize::MAX), *p));
        let mut waiting = parts.clone();
        for (topic, p) in &parts {
            let started = Instant::now();
            let inputs = InputPartitions {
                consumer: &self.consumer,
                waiting: &waiting,
            };
            let next =
                self.processor
                    .resume(topic, *p, &inputs)
                    .map_err(|why| StageError::Restore {
                        topic: topic.clone(),
                        partition: *p,
                        why,
                    })?;
            waiting.retain(|(t, q)| (t, q) != (topic, p));
            self.owned
                .entry(*p)
                .or_default()
                .insert(topic.clone(), next);
            METRICS
                .stage
                .restore_seconds
                .with_label_values(&[self.spec.name])
                .observe(started.elapsed().as_secs_f64());
        }
        let mut assign = TopicPartitionList::new();
        for (topic, p) in &parts {
            assign.add_partition_offset(topic, *p, Offset::Stored)?;
        }
        self.consumer.assign(&assign)?;
        tracing::info!(
            stage = self.spec.name,
            partitions = parts.len(),
            resumed_from = "store",
            "partitions assigned"
        );
        Ok(())
    }

    /// Lets the processor write what is due; commits the input offsets it now holds once
    /// the messages sent so far are acknowledged. A failed offset commit is only logged: the
    /// resume point is the store's.
    ///
    /// Writes nothing while a rebalance is recorded but not yet applied (`Stage::rebalance`
    /// drops the revoked partitions' rows first): once the callback has run, librdkafka lets
    /// the group move on, so another member may already have read its resume points from
    /// the store, and rows written now would land after that read and be stored twice (seen
    /// in tests/sink_rebalance.rs: 692 priced lines twice when an insert followed a
    /// revocation by a few milliseconds). The next owner reads those rows again.
    pub(super) fn flush_store(&mut self, force: bool) -> Result<(), StageError> {
        if self.consumer.context().flagged.load(Ordering::Acquire) {
            return Ok(());
        }
        let started = Instant::now();
        let mut out = Outputs {
            producer: &self.producer,
            txn: &mut self.txn,
        };
        let stored = self.processor.flush(force, &mut out);
        if stored.is_empty() {
            return Ok(());
        }
        if !kafka::await_in_flight(&self.producer, started + ACK_PATIENCE) {
            tracing::error!(
                stage = self.spec.name,
                "messages sent were not acknowledged within {ACK_PATIENCE:?}; committing the input offsets anyway"
            );
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, p, next) in &stored {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*next))?;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(stage = self.spec.name, error = %e, "offset commit failed; the store's resume point stands");
        }
        self.record_commit(started);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_messages_count_from_the_committed_offset() {
        assert_eq!(waiting(1200, 200), 1000);
        assert_eq!(waiting(5, 7), 0);
    }
}
