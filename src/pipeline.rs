//! The rating pipeline: a [`Processor`] on the stage runtime ([`crate::stage`]). Usage
//! events in (group `kafka.group_id`, `read_committed`); priced lines, debits, dead letters
//! and authenticated close markers out, with what changed in each partition's rollup state
//! (topic `topics.state`, see [`crate::rollup`]'s changelog) and the input offsets, in one
//! Kafka transaction per `pipeline.checkpoint_interval`.
//!
//! The processor owns one [`PartitionRollup`] per input partition, shared (under a lock held
//! per event) with the HTTP handlers' [`EngineHandle`]. Restore, commits, aborts, fencing,
//! lag and readiness are the runtime's.

pub mod emit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::debit::Debit;
use crate::event::encode_timeout_marker;
use crate::health::{Health, now_ms};
use crate::marker::{self, MarkerKey, MarkerKeyError};
use crate::metrics::METRICS;
use crate::plans::PlansHandle;
use crate::rating::PricingHandle;
use crate::rollup::{OpenExecutionView, Output, PartitionRollup, RollupConfig};
use crate::stage::{
    ChangeSink, Changelog, Guarantee, InputMsg, Outputs, Positions, Processor, Record, Stage,
    StageError, StageSpec,
};
use emit::Emitter;

/// How often idle executions are looked for (their close markers written).
const MARKER_EVERY: Duration = Duration::from_millis(500);

/// Errors that stop the pipeline (a restart resumes from the last commit).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("marker key: {0}")]
    MarkerKey(#[from] MarkerKeyError),
}

/// Rollup state per owned input partition.
type Parts = Arc<Mutex<HashMap<i32, PartitionRollup>>>;

fn lock(
    parts: &Mutex<HashMap<i32, PartitionRollup>>,
) -> MutexGuard<'_, HashMap<i32, PartitionRollup>> {
    parts.lock().unwrap_or_else(|p| p.into_inner())
}

/// The rating pipeline's processor (see the module documentation).
pub struct PipelineProcessor {
    rules: RollupConfig,
    pricing: PricingHandle,
    /// Authenticates the close markers this pipeline writes and reads back.
    marker_key: MarkerKey,
    idle_timeout_ms: u64,
    parts: Parts,
    emitter: Emitter,
    /// Reused output list of one event.
    out: Vec<Output>,
    progress: Arc<CommitProgress>,
}

/// How far the pipeline's work is committed: input messages handled, and how many of them
/// committed transactions hold. A trace lookup that finds nothing waits until what was
/// handled before it is committed (src/http/executions.rs): a closed execution's debit is
/// in the open transaction until then, however slow the commit.
#[derive(Debug, Default)]
pub struct CommitProgress {
    handled: AtomicU64,
    committed: AtomicU64,
}

impl CommitProgress {
    /// Input messages handled so far: a mark for [`CommitProgress::committed_up_to`].
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Acquire)
    }

    /// True once every message handled when `mark` was taken is in a committed transaction
    /// (after an abort they are handled again, and counted again, before the next commit).
    pub fn committed_up_to(&self, mark: u64) -> bool {
        self.committed.load(Ordering::Acquire) >= mark
    }

    fn handle_one(&self) {
        self.handled.fetch_add(1, Ordering::Release);
    }

    /// A transaction committed: everything handled is in it or an earlier one. Also after
    /// an abort: what was handled is handled again (here after the restore, or by the
    /// partition's next owner after a revocation), so nothing of it stays pending here; a
    /// lookup during the re-handling falls back to its settle time.
    fn commit(&self) {
        let handled = self.handled.load(Ordering::Acquire);
        self.committed.store(handled, Ordering::Release);
    }
}

impl PipelineProcessor {
    pub fn new(cfg: &Config, pricing: PricingHandle) -> Result<Self, PipelineError> {
        Ok(PipelineProcessor {
            rules: cfg.rollup_config(),
            pricing,
            marker_key: MarkerKey::load(&cfg.pipeline)?,
            idle_timeout_ms: cfg.rollup.execution_idle_timeout.as_millis() as u64,
            parts: Arc::default(),
            emitter: Emitter::new(cfg.topics.clone()),
            out: Vec::with_capacity(16),
            progress: Arc::default(),
        })
    }

    /// A query handle on the partitions' state (HTTP).
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            parts: self.parts.clone(),
            plans: self.pricing.plans.clone(),
            progress: self.progress.clone(),
        }
    }

    fn rollup<'a>(
        &self,
        parts: &'a mut HashMap<i32, PartitionRollup>,
        p: i32,
    ) -> &'a mut PartitionRollup {
        parts.entry(p).or_insert_with(|| {
            let mut r = PartitionRollup::new(self.rules.clone(), p);
            r.record_changes();
            r
        })
    }

    fn update_gauges(&self) {
        let parts = lock(&self.parts);
        let open: usize = parts.values().map(PartitionRollup::open_executions).sum();
        let dedupe: usize = parts.values().map(PartitionRollup::dedupe_entries).sum();
        METRICS.open_executions.set(open as i64);
        METRICS.dedupe_entries.set(dedupe as i64);
    }
}

impl Processor for PipelineProcessor {
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        let pricing = self.pricing.load();
        let origin = self
            .marker_key
            .origin(msg.topic, msg.partition, msg.payload, msg.headers);
        let parts = self.parts.clone();
        let mut parts = lock(&parts);
        let rollup = self.rollup(&mut parts, msg.partition);
        let outcome = rollup.process_from(
            origin,
            msg.offset,
            msg.payload,
            pricing.get(),
            now_ms(),
            &mut self.out,
        );
        // Under the lock: a lookup that no longer sees an execution open sees this count.
        self.progress.handle_one();
        drop(parts);
        self.emitter.counts.event(outcome);
        for output in self.out.drain(..) {
            self.emitter.emit(&output, msg, out);
        }
    }

    /// Writes a close marker, authenticated for its partition, for each execution idle past
    /// `rollup.execution_idle_timeout` (once per last offset). The rollup closes it when it
    /// reads the marker back, if nothing came after.
    fn punctuate(&mut self, now_ms: u64, out: &mut Outputs<'_>) {
        let mut idle = Vec::new();
        for (p, r) in lock(&self.parts).iter_mut() {
            let found = r.idle_executions(now_ms, self.idle_timeout_ms);
            idle.extend(found.into_iter().map(|i| (*p, i)));
        }
        let at = chrono::Utc::now();
        let topic = &self.emitter.topics.usage_events;
        for (p, i) in idle {
            let bytes = encode_timeout_marker(&i.execution_id, &i.account_id, i.after_offset, at);
            let mac = self.marker_key.sign(topic, p, &bytes);
            out.send_record(Record {
                topic,
                key: i.execution_id.as_bytes(),
                payload: Some(&bytes),
                partition: Some(p),
                headers: Some(OwnedHeaders::new().insert(Header {
                    key: marker::HEADER,
                    value: Some(&mac),
                })),
            });
            METRICS.markers_written.inc();
        }
    }

    fn changes(&mut self, partition: i32, log: &mut Changelog<'_>) {
        if let Some(r) = lock(&self.parts).get_mut(&partition) {
            r.write_changes(|k, v| match v {
                Some(v) => log.put(k, v),
                None => log.delete(k),
            });
        }
    }

    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let parts = self.parts.clone();
        let mut parts = lock(&parts);
        self.rollup(&mut parts, partition)
            .restore_record(key, value)
    }

    fn restored(&mut self, partition: i32, positions: &Positions) -> Result<(), String> {
        let next = positions
            .get(&self.emitter.topics.usage_events)
            .copied()
            .unwrap_or(0);
        let parts = self.parts.clone();
        let mut parts = lock(&parts);
        let r = self.rollup(&mut parts, partition);
        r.restored(next, now_ms());
        tracing::info!(
            partition,
            next_offset = next,
            open = r.open_executions(),
            dedupe = r.dedupe_entries(),
            "rollup state restored"
        );
        drop(parts);
        self.update_gauges();
        Ok(())
    }

    fn drop_partition(&mut self, partition: i32) {
        lock(&self.parts).remove(&partition);
    }

    fn committed(&mut self) {
        self.progress.commit();
        self.emitter.counts.flush();
        self.update_gauges();
    }

    fn aborted(&mut self) {
        self.progress.commit();
        self.emitter.counts = emit::Counts::default();
    }
}

/// A handle to query the running pipeline's state (HTTP).
#[derive(Clone)]
pub struct EngineHandle {
    parts: Parts,
    plans: PlansHandle,
    progress: Arc<CommitProgress>,
}

impl EngineHandle {
    /// How far this instance's pipeline has committed what it handled.
    pub fn progress(&self) -> &CommitProgress {
        &self.progress
    }

    /// The running cost of an execution open on this instance (see
    /// [`PartitionRollup::running_cost`]).
    pub fn running_cost(&self, execution_id: &str, account_id: Option<&str>) -> Option<Debit> {
        let plans = self.plans.load();
        lock(&self.parts)
            .values()
            .find_map(|r| r.running_cost(execution_id, account_id, &plans))
    }

    /// `account_id`'s execution `execution_id`, if it is open on this instance (its input
    /// partition is owned here): the running totals shaped as its debit (empty `debit_id`,
    /// markup included), its first `rollup.max_trace_calls` priced calls in rating order,
    /// each with event id, `occurred_at`, asset id and type, quantity and unit price
    /// (`credits` per `per`) per unit, price version, cost and the subtotal after it, and
    /// how many priced calls are not listed. Copied under the pipeline's lock (cost: the
    /// listed calls). Calls priced before this instance restored the partition (a restart,
    /// a rebalance) are counted as omitted: the changelog does not carry the list. `None`
    /// once the execution closed (its debit is then on the `debits` topic and in
    /// ClickHouse) or when another instance owns its partition.
    pub fn open_execution(
        &self,
        account_id: &str,
        execution_id: &str,
    ) -> Option<OpenExecutionView> {
        let plans = self.plans.load();
        lock(&self.parts)
            .values()
            .find_map(|r| r.open_execution(account_id, execution_id, &plans))
    }
}

/// The pipeline, built and subscribed; [`Pipeline::run`] drives it on the calling thread.
pub struct Pipeline {
    stage: Stage<PipelineProcessor>,
    handle: EngineHandle,
}

impl Pipeline {
    /// `pricing`: the catalog handle (every account on the `default` plan) or a
    /// [`PricingHandle`] with the plans too.
    pub fn new(
        cfg: &Config,
        pricing: impl Into<PricingHandle>,
        health: Arc<Health>,
    ) -> Result<Pipeline, PipelineError> {
        let processor = PipelineProcessor::new(cfg, pricing.into())?;
        let handle = processor.handle();
        let spec = StageSpec {
            name: "pipeline",
            group_id: cfg.kafka.group_id.clone(),
            inputs: vec![cfg.topics.usage_events.clone()],
            guarantee: Guarantee::Transactional {
                changelog: cfg.topics.state.clone(),
            },
            commit_interval: cfg.pipeline.checkpoint_interval,
            max_batch: usize::MAX,
            punctuate_every: Some(MARKER_EVERY),
            consumer: [
                ("heartbeat.interval.ms", "1000"),
                ("max.poll.interval.ms", "300000"),
                ("queued.max.messages.kbytes", "32768"),
                ("fetch.max.bytes", "16777216"),
                // Low fetch wait: a debit follows its execution_finished within milliseconds.
                ("fetch.wait.max.ms", "20"),
            ]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
            health: Some(health),
        };
        let stage = Stage::new(cfg, spec, processor)?;
        Ok(Pipeline { stage, handle })
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Runs until `stop` is cancelled, then commits what it processed. Blocking: call it
    /// on its own thread.
    pub fn run(self, stop: CancellationToken) -> Result<(), PipelineError> {
        Ok(self.stage.run(&stop)?)
    }
}

#[cfg(test)]
mod tests {
    use super::CommitProgress;

    #[test]
    fn a_mark_is_committed_once_a_commit_follows_it() {
        let p = CommitProgress::default();
        assert!(p.committed_up_to(p.handled()), "nothing handled");
        p.handle_one();
        p.handle_one();
        let mark = p.handled();
        assert!(!p.committed_up_to(mark), "handled, not committed");
        p.commit();
        assert!(p.committed_up_to(mark));
        // Handled, then a later commit: the earlier mark is covered too.
        p.handle_one();
        let mark = p.handled();
        p.handle_one();
        assert!(!p.committed_up_to(mark));
        p.commit();
        assert!(p.committed_up_to(mark));
    }
}
