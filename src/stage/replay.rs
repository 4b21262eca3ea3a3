//! Restoring a partition's state: changelog partition `p` read to its end into the
//! processor, its positions checked against the group's stable committed offsets (the pure
//! rule is [`super::restore::agree`]); and the check, at start, that the inputs and the
//! changelog exist, with equal partition counts for a transactional stage.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    Agreement, OFFSETS_KEY, Positions, Processor, RESTORE_PATIENCE, Stage, StageError, StageSpec,
    agree,
};
use crate::kafka;
use crate::metrics::METRICS;

impl<P: Processor> Stage<P> {
    /// Reads changelog partition `p` to its end into the processor; returns the input
    /// positions it names once they agree with the group's committed offsets.
    pub(super) fn restore(&mut self, p: i32) -> Result<Positions, StageError> {
        let started = Instant::now();
        let changelog = self.spec.changelog().unwrap_or_default().to_string();
        let err = |why: String| StageError::Restore {
            topic: changelog.clone(),
            partition: p,
            why,
        };
        self.processor.drop_partition(p);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&changelog, p, Offset::Beginning)?;
        self.reader.assign(&tpl)?;
        // Patience runs while nothing is read (a stalled broker) or while the changelog is
        // behind the group's committed offsets; a long changelog read never exhausts it.
        let mut patience = Instant::now() + RESTORE_PATIENCE;
        let mut in_log: Option<Positions> = None;
        let mut records = 0u64;
        let mut at_end = false;
        let positions = loop {
            if Instant::now() > patience {
                let committed = self.committed(p)?;
                return Err(err(format!(
                    "the changelog names offsets {in_log:?} but the group committed {committed:?}; \
                     if the changelog or the group was deleted, delete both to rebuild from the inputs"
                )));
            }
            match self.reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = m.key().unwrap_or_default();
                    if key == OFFSETS_KEY {
                        in_log = Some(
                            serde_json::from_slice(m.payload().unwrap_or_default())
                                .map_err(|e| err(format!("offsets record: {e}")))?,
                        );
                    } else {
                        self.processor
                            .restore(p, key, m.payload())
                            .map_err(|w| err(format!("offset {}: {w}", m.offset())))?;
                    }
                    records += 1;
                    if records.is_multiple_of(4096) && !at_end {
                        patience = Instant::now() + RESTORE_PATIENCE;
                    }
                    continue;
                }
                Some(Err(e)) if kafka::is_partition_eof(&e) => at_end = true,
                Some(Err(e)) => {
                    tracing::warn!(stage = self.spec.name, error = %e, "changelog read error")
                }
                None => {}
            }
            if !at_end {
                continue;
            }
            let committed = self.committed(p)?;
            match agree(in_log.as_ref(), &committed) {
                Agreement::Yes(pos) => break pos,
                Agreement::ChangelogAhead(pos) => {
                    tracing::warn!(stage = self.spec.name, partition = p, ?committed, changelog = ?pos, "group offsets are behind the changelog (reset?); resuming at the changelog's positions");
                    break pos;
                }
                // The last committed transaction's changelog records are not visible yet
                // (its markers are still being written): read on.
                Agreement::ChangelogBehind => at_end = false,
            }
        };
        let _ = self.reader.unassign();
        self.processor
            .restored(p, &positions)
            .map_err(|w| err(format!("at its end: {w}")))?;
        let secs = started.elapsed().as_secs_f64();
        METRICS
            .stage
            .restore_seconds
            .with_label_values(&[self.spec.name])
            .observe(secs);
        tracing::info!(
            stage = self.spec.name,
            partition = p,
            records,
            ms = (secs * 1000.0) as u64,
            ?positions,
            "partition state restored"
        );
        Ok(positions)
    }

    /// The group's committed offsets for partition `p` of every input (stable offsets).
    fn committed(&self, p: i32) -> Result<HashMap<String, Option<i64>>, StageError> {
        let mut tpl = TopicPartitionList::new();
        for t in &self.spec.inputs {
            tpl.add_partition(t, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(30))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.topic().to_string(), o)
            })
            .collect())
    }
}

/// The inputs and the changelog exist (waiting a little right after `setup`) and have the
/// same partition count.
pub(super) fn check_partitions(reader: &kafka::Reader, spec: &StageSpec) -> Result<(), StageError> {
    let mut counts = Vec::new();
    let topics = spec
        .inputs
        .iter()
        .map(String::as_str)
        .chain(spec.changelog());
    for t in topics {
        let deadline = Instant::now() + Duration::from_secs(30);
        let n = loop {
            let n = match reader.fetch_metadata(Some(t), Duration::from_secs(10)) {
                Ok(md) => md
                    .topics()
                    .first()
                    .filter(|m| m.error().is_none())
                    .map(|m| m.partitions().len())
                    .unwrap_or(0),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, topic = %t, "metadata not available yet");
                    0
                }
                Err(e) => return Err(e.into()),
            };
            if n > 0 || Instant::now() >= deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if n == 0 {
            return Err(StageError::Setup(format!(
                "topic {t} does not exist; run `usage-aggregator setup`"
            )));
        }
        counts.push((t.to_string(), n));
    }
    let co_partitioned = spec.changelog().is_some();
    if co_partitioned && counts.iter().any(|(_, n)| *n != counts[0].1) {
        return Err(StageError::Setup(format!(
            "the {} stage needs equal partition counts (co-partitioning), found {counts:?}",
            spec.name
        )));
    }
    Ok(())
}
