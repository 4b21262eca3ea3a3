//! The rating pipeline: usage events from the consumer group in; priced lines, debits and
//! dead letters produced out; per-partition rollup snapshots written to the state topic and
//! input offsets committed only after everything before them is durable.
//!
//! Sync core, thin shell: one thread polls the consumer and drives [`Engine`], which owns the
//! per-partition [`PartitionRollup`]s. See docs/design.md for the delivery guarantee.

pub mod state_store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::catalog::CatalogHandle;
use crate::config::Config;
use crate::debit::Debit;
use crate::event::encode_timeout_marker;
use crate::health::{Health, now_ms};
use crate::kafka;
use crate::metrics::METRICS;
use crate::rejection::DeadLetter;
use crate::rollup::{Outcome, Output, PartitionRollup, RollupConfig};
use state_store::{StateLocation, restore_partition, rules_fingerprint, write_snapshot};

/// Errors that stop the pipeline (a restart resumes from the last snapshot).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("state: {0}")]
    State(#[from] state_store::StateError),
    #[error("{0} output messages failed delivery; stopping so a restart replays them")]
    DeliveryFailed(u64),
}

/// Epoch slots tracked at once; an epoch lasts one checkpoint interval.
const EPOCH_SLOTS: usize = 256;
/// Low bits of a delivery opaque: send time in microseconds (wraps after ~12 days).
const STAMP_BITS: u32 = 40;
const STAMP_MASK: usize = (1 << STAMP_BITS) - 1;

/// Producer context: counts unacknowledged messages per checkpoint epoch and failed
/// deliveries, records acknowledgement latency. A checkpoint waits for its epochs to drain
/// instead of blocking the consumer loop on a flush.
pub struct OutputContext {
    started: Instant,
    failed: AtomicU64,
    outstanding: [AtomicU64; EPOCH_SLOTS],
}

impl ClientContext for OutputContext {}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        self.outstanding[opaque >> STAMP_BITS].fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(_) => {
                let now = self.started.elapsed().as_micros() as usize;
                let sent = opaque & STAMP_MASK;
                METRICS
                    .produce_latency
                    .observe((now.wrapping_sub(sent) & STAMP_MASK) as f64 / 1e6);
            }
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                METRICS.produce_errors.inc();
                tracing::error!(error = %e, topic = m.topic(), "output message lost in delivery; the pipeline will stop and replay");
            }
        }
    }
}

impl OutputContext {
    fn new() -> Self {
        OutputContext {
            started: Instant::now(),
            failed: AtomicU64::new(0),
            outstanding: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one message of `epoch` as in flight; returns its delivery opaque.
    pub fn sending(&self, epoch: u64) -> usize {
        let slot = (epoch % EPOCH_SLOTS as u64) as usize;
        self.outstanding[slot].fetch_add(1, Ordering::AcqRel);
        (slot << STAMP_BITS) | (self.started.elapsed().as_micros() as usize & STAMP_MASK)
    }

    /// A message counted by [`Self::sending`] was never queued.
    pub fn not_sent(&self, opaque: usize) {
        self.outstanding[opaque >> STAMP_BITS].fetch_sub(1, Ordering::AcqRel);
    }

    fn in_flight(&self, epoch: u64) -> u64 {
        self.outstanding[(epoch % EPOCH_SLOTS as u64) as usize].load(Ordering::Acquire)
    }
}

/// A checkpoint in progress: outputs before `next_offset`s are waited for (epoch
/// `outputs_epoch`), then snapshots are written (epoch `snapshot_epoch`) and waited for,
/// then the offsets are committed.
struct PendingCheckpoint {
    started: Instant,
    outputs_epoch: u64,
    snapshots: Vec<(i32, crate::rollup::PartitionSnapshot)>,
    offsets: Vec<(i32, i64)>,
    snapshot_epoch: Option<u64>,
}

struct PartitionState {
    rollup: PartitionRollup,
    from_snapshot: bool,
    seeking: bool,
    dirty: bool,
}

#[derive(Default)]
struct BatchCounts {
    consumed: u64,
    priced: [u64; 3],
    duplicates: u64,
    rejected: HashMap<&'static str, u64>,
    debits: HashMap<&'static str, (u64, f64)>,
}

impl BatchCounts {
    fn flush(&mut self) {
        METRICS.events_consumed.inc_by(self.consumed);
        for (i, t) in ["model", "tool", "integration"].iter().enumerate() {
            if self.priced[i] > 0 {
                METRICS
                    .events_priced
                    .with_label_values(&[t])
                    .inc_by(self.priced[i]);
            }
        }
        METRICS.events_duplicate.inc_by(self.duplicates);
        for (r, n) in self.rejected.drain() {
            METRICS.events_rejected.with_label_values(&[r]).inc_by(n);
        }
        for (k, (n, credits)) in self.debits.drain() {
            METRICS.debits.with_label_values(&[k]).inc_by(n);
            METRICS
                .credits_debited
                .with_label_values(&[k])
                .inc_by(credits);
        }
        self.consumed = 0;
        self.priced = [0; 3];
        self.duplicates = 0;
    }
}

/// The pipeline's state machine, shared with the rebalance callback and the HTTP server.
pub struct Engine {
    cfg: Config,
    rules: RollupConfig,
    rules_fingerprint: String,
    catalog: CatalogHandle,
    producer: ThreadedProducer<OutputContext>,
    reader: BaseConsumer,
    parts: HashMap<i32, PartitionState>,
    state_partitions: i32,
    failures_seen: u64,
    out: Vec<Output>,
    counts: BatchCounts,
    health: Arc<Health>,
    hi_offsets: Arc<Mutex<HashMap<i32, i64>>>,
    warned_rejects: u64,
    /// Current output epoch; every output is counted in it until acknowledged.
    epoch: u64,
    /// Every epoch below this one is known to be fully acknowledged.
    acked_below: u64,
    pending: std::collections::VecDeque<PendingCheckpoint>,
}

impl Engine {
    fn new(
        cfg: &Config,
        catalog: CatalogHandle,
        health: Arc<Health>,
        hi_offsets: Arc<Mutex<HashMap<i32, i64>>>,
    ) -> Result<Engine, PipelineError> {
        let producer: ThreadedProducer<OutputContext> =
            kafka::producer_config(cfg).create_with_context(OutputContext::new())?;
        let reader: BaseConsumer = kafka::reader_config(cfg).create()?;
        let md = reader.fetch_metadata(Some(&cfg.topics.state), Duration::from_secs(10))?;
        let state_partitions = md
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        if state_partitions == 0 {
            tracing::error!(topic = %cfg.topics.state, "state topic has no partitions; run `usage-aggregator setup`");
        }
        let rules = cfg.rollup_config();
        Ok(Engine {
            cfg: cfg.clone(),
            rules_fingerprint: rules_fingerprint(&rules),
            rules,
            catalog,
            producer,
            reader,
            parts: HashMap::new(),
            state_partitions: state_partitions.max(1),
            failures_seen: 0,
            out: Vec::with_capacity(16),
            counts: BatchCounts::default(),
            health,
            hi_offsets,
            warned_rejects: 0,
            epoch: 0,
            acked_below: 0,
            pending: std::collections::VecDeque::new(),
        })
    }

    fn location(&self, partition: i32) -> StateLocation<'_> {
        StateLocation {
            state_topic: &self.cfg.topics.state,
            state_partitions: self.state_partitions,
            input_topic: &self.cfg.topics.usage_events,
            partition,
        }
    }

    fn ensure_partition(&mut self, partition: i32) -> Result<(), PipelineError> {
        if self.parts.contains_key(&partition) {
            return Ok(());
        }
        let started = Instant::now();
        let restored = restore_partition(
            &self.reader,
            &self.location(partition),
            &self.rules,
            now_ms(),
            self.cfg.pipeline.drain_timeout.max(Duration::from_secs(30)),
        )?;
        let state = match restored {
            Some(rollup) => {
                tracing::info!(
                    partition,
                    next_offset = rollup.next_offset(),
                    open = rollup.open_executions(),
                    dedupe = rollup.dedupe_entries(),
                    ms = started.elapsed().as_millis() as u64,
                    "partition state restored"
                );
                PartitionState {
                    rollup,
                    from_snapshot: true,
                    seeking: false,
                    dirty: false,
                }
            }
            None => {
                tracing::info!(
                    partition,
                    "no state snapshot for partition; starting with empty state"
                );
                PartitionState {
                    rollup: PartitionRollup::new(self.rules.clone(), partition),
                    from_snapshot: false,
                    seeking: false,
                    dirty: false,
                }
            }
        };
        METRICS
            .state_restore_seconds
            .observe(started.elapsed().as_secs_f64());
        self.parts.insert(partition, state);
        Ok(())
    }

    /// Handles one input message.
    fn handle<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        m: &BorrowedMessage<'_>,
    ) -> Result<(), PipelineError> {
        let (p, o) = (m.partition(), m.offset());
        self.ensure_partition(p)?;
        let st = self.parts.get_mut(&p).expect("ensured");
        let next = st.rollup.next_offset();
        if st.from_snapshot && o != next {
            if o < next {
                return Ok(()); // already processed before the snapshot
            }
            if !st.seeking {
                tracing::info!(
                    partition = p,
                    from = o,
                    to = next,
                    "rewinding to the snapshot offset"
                );
                consumer.seek(m.topic(), p, Offset::Offset(next), Duration::from_secs(5))?;
                st.seeking = true;
            }
            return Ok(());
        }
        st.seeking = false;
        st.dirty = true;
        let payload = m.payload().unwrap_or_default();
        let catalog = self.catalog.load();
        let outcome = st
            .rollup
            .process(o, payload, &catalog, now_ms(), &mut self.out);
        self.counts.consumed += 1;
        match outcome {
            Outcome::Priced(t) => self.counts.priced[t as usize] += 1,
            Outcome::Duplicate => self.counts.duplicates += 1,
            Outcome::Rejected(r) => *self.counts.rejected.entry(r.as_str()).or_default() += 1,
            _ => {}
        }
        let outputs = std::mem::take(&mut self.out);
        for output in &outputs {
            self.emit(output, payload, p, o)?;
        }
        self.out = outputs;
        self.out.clear();
        Ok(())
    }

    fn emit(
        &mut self,
        output: &Output,
        payload: &[u8],
        p: i32,
        o: i64,
    ) -> Result<(), PipelineError> {
        let topics = &self.cfg.topics;
        match output {
            Output::Line(l) => {
                let bytes = l.encode();
                send(
                    &self.producer,
                    self.epoch,
                    &topics.priced_usage,
                    l.account_id.as_bytes(),
                    &bytes,
                    None,
                )
            }
            Output::Debit(d) => {
                let e = self.counts.debits.entry(d.kind.as_str()).or_default();
                e.0 += 1;
                e.1 += decimal_f64(d);
                let bytes = d.encode();
                send(
                    &self.producer,
                    self.epoch,
                    &topics.debits,
                    d.account_id.as_bytes(),
                    &bytes,
                    None,
                )
            }
            Output::Rejected(r) => {
                self.warned_rejects += 1;
                if self.warned_rejects.is_power_of_two() {
                    tracing::warn!(reason = %r.reason, partition = p, offset = o, rejected_so_far = self.warned_rejects, "event rejected to dead letter (logged at powers of two)");
                }
                let dl = DeadLetter::new(r, payload, &topics.usage_events, p, o);
                let bytes = serde_json::to_vec(&dl).expect("dead letter serializes");
                send(
                    &self.producer,
                    self.epoch,
                    &topics.dead_letter,
                    dl.id().as_bytes(),
                    &bytes,
                    None,
                )
            }
        }
    }

    /// Starts a checkpoint at the current offsets without blocking: captures the snapshots
    /// of changed partitions and closes the current output epoch.
    fn checkpoint_begin(&mut self) {
        self.counts.flush();
        let mut parts: Vec<i32> = self.parts.keys().copied().collect();
        parts.sort_unstable();
        let mut cp = PendingCheckpoint {
            started: Instant::now(),
            outputs_epoch: self.epoch,
            snapshots: Vec::new(),
            offsets: Vec::new(),
            snapshot_epoch: None,
        };
        for p in parts {
            let st = self.parts.get_mut(&p).expect("listed");
            if st.dirty {
                cp.snapshots.push((p, st.rollup.snapshot()));
                st.dirty = false;
            }
            cp.offsets.push((p, st.rollup.next_offset()));
        }
        self.next_epoch();
        self.pending.push_back(cp);
    }

    fn next_epoch(&mut self) {
        self.epoch += 1;
        // The slot of the new epoch must be free (its previous user acknowledged).
        if self.producer.context().in_flight(self.epoch) > 0 {
            let _ = self.producer.flush(self.cfg.pipeline.drain_timeout);
        }
    }

    fn acked_through(&mut self, epoch: u64) -> bool {
        while self.acked_below <= epoch {
            if self.acked_below >= self.epoch
                || self.producer.context().in_flight(self.acked_below) > 0
            {
                return false;
            }
            self.acked_below += 1;
        }
        true
    }

    /// Moves pending checkpoints forward: writes snapshots once the outputs before them are
    /// acknowledged, commits offsets once the snapshots are.
    fn checkpoint_advance<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mode: CommitMode,
    ) -> Result<(), PipelineError> {
        self.check_deliveries()?;
        while let Some(cp) = self.pending.front() {
            match cp.snapshot_epoch {
                None => {
                    let e = cp.outputs_epoch;
                    if !self.acked_through(e) {
                        break;
                    }
                    let epoch = self.epoch;
                    let cp = self.pending.front_mut().expect("front");
                    for (p, snap) in &cp.snapshots {
                        let loc = StateLocation {
                            state_topic: &self.cfg.topics.state,
                            state_partitions: self.state_partitions,
                            input_topic: &self.cfg.topics.usage_events,
                            partition: *p,
                        };
                        write_snapshot(&self.producer, &loc, snap, &self.rules_fingerprint, epoch)?;
                    }
                    cp.snapshot_epoch = Some(epoch);
                    self.next_epoch();
                }
                Some(e) => {
                    if !self.acked_through(e) {
                        break;
                    }
                    let cp = self.pending.pop_front().expect("front");
                    let mut tpl = TopicPartitionList::new();
                    for (p, o) in &cp.offsets {
                        if self.parts.contains_key(p) {
                            tpl.add_partition_offset(
                                &self.cfg.topics.usage_events,
                                *p,
                                Offset::Offset(*o),
                            )?;
                        }
                    }
                    if tpl.count() > 0 {
                        consumer.commit(&tpl, mode)?;
                    }
                    METRICS
                        .checkpoint_duration
                        .observe(cp.started.elapsed().as_secs_f64());
                }
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// Makes everything processed so far durable before returning (revoke, shutdown):
    /// outputs acknowledged, snapshots written, offsets committed synchronously.
    fn checkpoint_now<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        self.checkpoint_begin();
        let deadline = Instant::now() + self.cfg.pipeline.drain_timeout;
        while !self.pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PipelineError::Kafka(KafkaError::Flush(
                    RDKafkaErrorCode::OperationTimedOut,
                )));
            }
            self.producer.flush(left)?;
            self.checkpoint_advance(consumer, CommitMode::Sync)?;
        }
        Ok(())
    }

    fn check_deliveries(&mut self) -> Result<(), PipelineError> {
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > self.failures_seen {
            return Err(PipelineError::DeliveryFailed(failed - self.failures_seen));
        }
        Ok(())
    }

    fn update_gauges(&self) {
        let open: usize = self
            .parts
            .values()
            .map(|s| s.rollup.open_executions())
            .sum();
        let dedupe: usize = self.parts.values().map(|s| s.rollup.dedupe_entries()).sum();
        METRICS.open_executions.set(open as i64);
        METRICS.dedupe_entries.set(dedupe as i64);
        let hi = self.hi_offsets.lock().expect("hi offsets lock").clone();
        let mut total = 0;
        for (p, h) in hi {
            let pos = self.parts.get(&p).map(|s| s.rollup.next_offset());
            if let Some(pos) = pos {
                let lag = (h - pos).max(0);
                total += lag;
                METRICS
                    .consumer_lag
                    .with_label_values(&[&p.to_string()])
                    .set(lag);
            }
        }
        self.health.pipeline_lag.store(total, Ordering::Relaxed);
    }

    /// Writes close markers for executions idle past the timeout.
    fn write_markers(&mut self) -> Result<(), PipelineError> {
        let timeout = self.cfg.rollup.execution_idle_timeout.as_millis() as u64;
        let now = now_ms();
        let at = chrono::Utc::now();
        for (p, st) in self.parts.iter_mut() {
            for idle in st.rollup.idle_executions(now, timeout) {
                let bytes = encode_timeout_marker(
                    &idle.execution_id,
                    &idle.account_id,
                    idle.after_offset,
                    at,
                );
                send(
                    &self.producer,
                    self.epoch,
                    &self.cfg.topics.usage_events,
                    idle.execution_id.as_bytes(),
                    &bytes,
                    Some(*p),
                )?;
                METRICS.markers_written.inc();
            }
        }
        Ok(())
    }

    /// The running cost of an execution open on this instance.
    pub fn running_cost(&self, execution_id: &str) -> Option<Debit> {
        self.parts
            .values()
            .find_map(|s| s.rollup.running_cost(execution_id))
    }

    fn drop_partitions(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.parts.remove(p);
            METRICS
                .consumer_lag
                .with_label_values(&[&p.to_string()])
                .set(0);
        }
    }
}

fn decimal_f64(d: &Debit) -> f64 {
    use rust_decimal::prelude::ToPrimitive;
    d.total.to_f64().unwrap_or(0.0)
}

/// Sends one message, waiting (backpressure) while the producer queue is full.
fn send(
    producer: &ThreadedProducer<OutputContext>,
    epoch: u64,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    partition: Option<i32>,
) -> Result<(), PipelineError> {
    let opaque = producer.context().sending(epoch);
    let mut rec = BaseRecord::with_opaque_to(topic, opaque)
        .key(key)
        .payload(payload);
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    let mut paused = false;
    loop {
        match producer.send(rec) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                if !paused {
                    METRICS.backpressure_paused.set(1);
                    paused = true;
                }
                rec = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => {
                producer.context().not_sent(opaque);
                return Err(e.into());
            }
        }
    }
    if paused {
        METRICS.backpressure_paused.set(0);
    }
    Ok(())
}

/// Consumer context: checkpoints revoked partitions, records high watermarks.
pub struct InputContext {
    engine: Arc<Mutex<Engine>>,
    hi_offsets: Arc<Mutex<HashMap<i32, i64>>>,
    topic: String,
    fatal: Mutex<Option<PipelineError>>,
}

impl ClientContext for InputContext {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            let mut hi = self.hi_offsets.lock().expect("hi offsets lock");
            for (p, s) in &t.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    hi.insert(*p, s.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for InputContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let mut engine = lock(&self.engine);
            tracing::info!(partitions = ?parts, "partitions revoked; checkpointing them");
            if let Err(e) = engine.checkpoint_now(consumer) {
                tracing::error!(error = %e, "checkpoint on revoke failed; the next owner replays from the last snapshot");
                *self.fatal.lock().expect("fatal lock") = Some(e);
            }
            engine.drop_partitions(&parts);
            self.hi_offsets.lock().expect("hi offsets lock").clear();
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
            // Restore now, not on the first message: open executions of an idle partition
            // must still time out, and the running-cost API must see them.
            let mut engine = lock(&self.engine);
            for p in parts {
                if let Err(e) = engine.ensure_partition(p) {
                    tracing::error!(error = %e, partition = p, "cannot restore partition state");
                    *self.fatal.lock().expect("fatal lock") = Some(e);
                    break;
                }
            }
        }
    }
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle to query the running engine (HTTP).
#[derive(Clone)]
pub struct EngineHandle(Arc<Mutex<Engine>>);

impl EngineHandle {
    pub fn running_cost(&self, execution_id: &str) -> Option<Debit> {
        lock(&self.0).running_cost(execution_id)
    }
}

/// The pipeline, built and subscribed; [`Pipeline::run`] drives it on the calling thread.
pub struct Pipeline {
    engine: Arc<Mutex<Engine>>,
    consumer: BaseConsumer<InputContext>,
    cfg: Config,
    health: Arc<Health>,
}

impl Pipeline {
    pub fn new(
        cfg: &Config,
        catalog: CatalogHandle,
        health: Arc<Health>,
    ) -> Result<Pipeline, PipelineError> {
        let hi = Arc::new(Mutex::new(HashMap::new()));
        let engine = Arc::new(Mutex::new(Engine::new(
            cfg,
            catalog,
            health.clone(),
            hi.clone(),
        )?));
        let c = kafka::group_config(
            cfg,
            &cfg.kafka.group_id,
            "pipeline",
            &[
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("max.poll.interval.ms", "300000"),
                ("statistics.interval.ms", "1000"),
                ("queued.max.messages.kbytes", "32768"),
                ("fetch.max.bytes", "16777216"),
                // Low fetch wait: a debit follows its execution_finished within milliseconds.
                ("fetch.wait.max.ms", "20"),
            ],
        );
        let consumer: BaseConsumer<InputContext> = c.create_with_context(InputContext {
            engine: engine.clone(),
            hi_offsets: hi,
            topic: cfg.topics.usage_events.clone(),
            fatal: Mutex::new(None),
        })?;
        consumer.subscribe(&[&cfg.topics.usage_events])?;
        health.pipeline_enabled.store(true, Ordering::Relaxed);
        Ok(Pipeline {
            engine,
            consumer,
            cfg: cfg.clone(),
            health,
        })
    }

    pub fn handle(&self) -> EngineHandle {
        EngineHandle(self.engine.clone())
    }

    /// Runs until `stop` is set, then drains: final checkpoint within the drain timeout.
    pub fn run(self, stop: Arc<AtomicBool>) -> Result<(), PipelineError> {
        let interval = self.cfg.pipeline.checkpoint_interval;
        let mut last_checkpoint = Instant::now();
        let mut last_markers = Instant::now();
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            if let Some(e) = self
                .consumer
                .context()
                .fatal
                .lock()
                .expect("fatal lock")
                .take()
            {
                break Err(e);
            }
            let mut n = 0u32;
            let mut wait = Duration::from_millis(100);
            let step: Result<(), PipelineError> = loop {
                match self.consumer.poll(wait) {
                    Some(Ok(m)) => {
                        if let Err(e) = lock(&self.engine).handle(&self.consumer, &m) {
                            break Err(e);
                        }
                        n += 1;
                        wait = Duration::ZERO;
                        if n >= 2048 {
                            break Ok(());
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error");
                        break Ok(());
                    }
                    None => break Ok(()),
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
            if n > 0 {
                METRICS.batch_events.observe(f64::from(n));
                self.health.progressed();
            }
            if last_markers.elapsed() >= Duration::from_millis(500) {
                if let Err(e) = lock(&self.engine).write_markers() {
                    break Err(e);
                }
                last_markers = Instant::now();
            }
            {
                let mut engine = lock(&self.engine);
                // At most two checkpoints in flight: when the broker acknowledges slowly,
                // checkpoints space out instead of piling up snapshot copies in memory.
                if last_checkpoint.elapsed() >= interval && engine.pending.len() < 2 {
                    engine.checkpoint_begin();
                    last_checkpoint = Instant::now();
                }
                if let Err(e) = engine.checkpoint_advance(&self.consumer, CommitMode::Async) {
                    break Err(e);
                }
            }
        };
        if result.is_ok() {
            tracing::info!("draining: final checkpoint");
            lock(&self.engine).checkpoint_now(&self.consumer)?;
        }
        self.consumer.unsubscribe();
        result
    }
}
