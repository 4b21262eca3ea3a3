//! The rating pipeline: usage events from the consumer group in; priced lines, debits, dead
//! letters and close markers produced out; per-partition rollup snapshots on the state topic
//! and input offsets made durable together with the outputs, by one of two delivery modes
//! (`pipeline.delivery`, see docs/design.md):
//! - `exactly_once`: each checkpoint is one Kafka transaction holding the outputs, the
//!   snapshots and the input offsets (KIP-447);
//! - `at_least_once`: outputs acknowledged, then snapshots, then offsets committed
//!   ([`checkpoint::Coordinator`]); a replay repeats outputs byte for byte.
//!
//! Sync core, thin shell: one thread polls the consumer and drives [`Engine`], which owns the
//! per-partition [`PartitionRollup`]s. State is restored when partitions are assigned, and
//! consumption starts at the snapshot's offset.

pub mod checkpoint;
pub mod output;
pub mod state_store;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::statistics::Statistics;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::catalog::AssetType;
use crate::config::{Config, Delivery};
use crate::debit::Debit;
use crate::event::encode_timeout_marker;
use crate::health::{Health, now_ms};
use crate::kafka;
use crate::marker::{self, MarkerKey, MarkerKeyError};
use crate::metrics::METRICS;
use crate::rating::PricingHandle;
use crate::rejection::DeadLetter;
use crate::rollup::{
    OpenExecutionView, Outcome, Output, PartitionRollup, PartitionSnapshot, RollupConfig,
};
use checkpoint::{Action, Coordinator};
use output::{Destination, OutputContext, OutputProducer, send, send_with_headers};
use state_store::{StateLocation, restore_partition, rules_fingerprint, write_snapshot};

/// Errors that stop the pipeline (a restart resumes from the last checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("state: {0}")]
    State(#[from] state_store::StateError),
    #[error("{0} output messages failed delivery; stopping so a restart replays them")]
    DeliveryFailed(u64),
    #[error("marker key: {0}")]
    MarkerKey(#[from] MarkerKeyError),
    #[error(
        "kafka transaction failed for good ({0}); stopping so a restart resumes from the last committed transaction (if another instance uses the same kafka.instance_id, give each a unique one)"
    )]
    TransactionFatal(KafkaError),
}

/// How a Kafka transaction call failed.
enum TxnFailure {
    /// Abort the transaction and resume from the last committed one.
    Abort(KafkaError),
    /// The producer cannot go on (fenced, or an unexpected error).
    Fatal(KafkaError),
}

/// Retries a transaction call while librdkafka says it is retriable (or a flush timed out,
/// e.g. while the broker restarts); classifies anything else (rdkafka's txn error classes).
fn txn_call(
    what: &str,
    deadline: Instant,
    mut f: impl FnMut() -> KafkaResult<()>,
) -> Result<(), TxnFailure> {
    loop {
        let e = match f() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let retriable = match &e {
            KafkaError::Transaction(t) if t.txn_requires_abort() => {
                return Err(TxnFailure::Abort(e));
            }
            KafkaError::Transaction(t) => t.is_retriable() && !t.is_fatal(),
            KafkaError::Flush(_) => true,
            _ => false,
        };
        if !retriable {
            return Err(TxnFailure::Fatal(e));
        }
        if Instant::now() >= deadline {
            return Err(TxnFailure::Abort(e));
        }
        tracing::warn!(error = %e, call = what, "kafka transaction call failed; retrying");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct PartitionState {
    rollup: PartitionRollup,
    /// Changed since the last checkpoint.
    dirty: bool,
}

/// Creates the `exactly_once` producer and initialises its transactions: this fences a
/// previous incarnation with the same `transactional.id` and aborts its open transaction, so
/// `read_committed` readers move on at once.
fn transactional_producer(cfg: &Config) -> Result<OutputProducer, PipelineError> {
    let c = kafka::transactional_producer_config(cfg, "pipeline");
    let id = c.get("transactional.id").unwrap_or_default().to_string();
    let p: OutputProducer = c.create_with_context(OutputContext::default())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    txn_call("init_transactions", deadline, || {
        p.init_transactions(Duration::from_secs(30))
    })
    .map_err(|f| match f {
        TxnFailure::Abort(e) | TxnFailure::Fatal(e) => PipelineError::Kafka(e),
    })?;
    tracing::info!(transactional_id = %id, "transactional producer ready");
    Ok(p)
}

/// Re-initialisations of a fenced producer allowed per minute; beyond, the pipeline stops
/// (two live instances sharing one `kafka.instance_id` would otherwise fence each other
/// forever).
const MAX_REINITS_PER_MINUTE: usize = 3;

/// Queues one output; in `exactly_once`, a failure poisons the transaction instead of
/// stopping the pipeline (the whole transaction is replayed after recovery).
fn send_output(
    producer: &OutputProducer,
    mode: &Mode,
    poisoned: &mut Option<KafkaError>,
    to: Destination<'_>,
    bytes: &[u8],
) -> Result<(), PipelineError> {
    match mode {
        Mode::AtLeastOnce(c) => Ok(send(producer, c.epoch(), to, bytes)?),
        Mode::ExactlyOnce { .. } => {
            if poisoned.is_none()
                && let Err(e) = send(producer, 0, to, bytes)
            {
                tracing::warn!(error = %e, "transactional producer failed; its transaction will be abandoned and the pipeline resumes from the last commit");
                *poisoned = Some(e);
            }
            Ok(())
        }
    }
}

/// Partition snapshots of one checkpoint.
type Snapshots = Vec<(i32, PartitionSnapshot)>;

/// How checkpoints are made durable.
enum Mode {
    AtLeastOnce(Coordinator<PartitionSnapshot>),
    ExactlyOnce {
        /// A transaction is open (begun lazily with the first output after a commit).
        open: bool,
    },
}

#[derive(Default)]
struct BatchCounts {
    consumed: u64,
    priced: [u64; AssetType::ALL.len()],
    duplicates: u64,
    rejected: HashMap<&'static str, u64>,
    debits: HashMap<&'static str, (u64, f64)>,
}

impl BatchCounts {
    fn flush(&mut self) {
        METRICS.events_consumed.inc_by(self.consumed);
        for t in AssetType::ALL {
            let n = self.priced[t as usize];
            if n > 0 {
                METRICS
                    .events_priced
                    .with_label_values(&[t.as_str()])
                    .inc_by(n);
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
        self.priced = [0; AssetType::ALL.len()];
        self.duplicates = 0;
    }
}

/// The pipeline's state machine, shared with the rebalance callback and the HTTP server.
pub struct Engine {
    cfg: Config,
    rules: RollupConfig,
    rules_fingerprint: String,
    pricing: PricingHandle,
    producer: OutputProducer,
    reader: kafka::Reader,
    parts: HashMap<i32, PartitionState>,
    state_partitions: i32,
    failures_seen: u64,
    /// `exactly_once`: the producer hit a fatal error (e.g. fenced after its transaction
    /// outlived the timeout while the broker was away); outputs are dropped until the next
    /// checkpoint re-initialises it and rewinds to the last commit.
    poisoned: Option<KafkaError>,
    reinits: Vec<Instant>,
    out: Vec<Output>,
    /// Reused encoding buffer of one output (no allocation per output).
    enc: Vec<u8>,
    counts: BatchCounts,
    health: Arc<Health>,
    hi_offsets: Arc<Mutex<HashMap<i32, i64>>>,
    warned_rejects: u64,
    mode: Mode,
    /// Authenticates the close markers this pipeline writes and reads back.
    marker_key: MarkerKey,
}

impl Engine {
    fn new(
        cfg: &Config,
        pricing: PricingHandle,
        health: Arc<Health>,
        hi_offsets: Arc<Mutex<HashMap<i32, i64>>>,
    ) -> Result<Engine, PipelineError> {
        let marker_key = MarkerKey::load(&cfg.pipeline)?;
        let (producer, mode) = match cfg.pipeline.delivery {
            Delivery::AtLeastOnce => (
                kafka::producer_config(cfg).create_with_context(OutputContext::default())?,
                Mode::AtLeastOnce(Coordinator::default()),
            ),
            Delivery::ExactlyOnce => (
                transactional_producer(cfg)?,
                Mode::ExactlyOnce { open: false },
            ),
        };
        let reader: kafka::Reader =
            kafka::reader_config(cfg).create_with_context(kafka::ReaderContext)?;
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
            pricing,
            producer,
            reader,
            parts: HashMap::new(),
            state_partitions: state_partitions.max(1),
            failures_seen: 0,
            poisoned: None,
            reinits: Vec::new(),
            out: Vec::with_capacity(16),
            enc: Vec::with_capacity(4096),
            counts: BatchCounts::default(),
            health,
            hi_offsets,
            warned_rejects: 0,
            mode,
            marker_key,
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

    /// Restores a partition's state from its latest committed snapshot (or starts empty);
    /// returns the offset consumption must start at, if a snapshot names one. `committed`
    /// is the group's stable committed offset, which an `exactly_once` snapshot must reach.
    fn restore(
        &mut self,
        partition: i32,
        committed: Option<i64>,
    ) -> Result<Option<i64>, PipelineError> {
        let started = Instant::now();
        let committed = match self.mode {
            Mode::ExactlyOnce { .. } => committed,
            // Snapshots are acknowledged before offsets are committed: never behind.
            Mode::AtLeastOnce(_) => None,
        };
        let restored = restore_partition(
            &self.reader,
            &self.location(partition),
            &self.rules,
            now_ms(),
            self.cfg.pipeline.drain_timeout.max(Duration::from_secs(30)),
            committed,
        )?;
        let (rollup, start) = match restored {
            Some(rollup) => {
                tracing::info!(
                    partition,
                    next_offset = rollup.next_offset(),
                    open = rollup.open_executions(),
                    dedupe = rollup.dedupe_entries(),
                    ms = started.elapsed().as_millis() as u64,
                    "partition state restored"
                );
                let next = rollup.next_offset();
                (rollup, Some(next))
            }
            None => {
                tracing::info!(
                    partition,
                    "no state snapshot for partition; starting with empty state"
                );
                (PartitionRollup::new(self.rules.clone(), partition), None)
            }
        };
        METRICS
            .state_restore_seconds
            .observe(started.elapsed().as_secs_f64());
        self.parts.insert(
            partition,
            PartitionState {
                rollup,
                dirty: false,
            },
        );
        Ok(start)
    }

    /// The epoch outputs are counted in (`at_least_once`; 0 otherwise).
    fn epoch(&self) -> u64 {
        match &self.mode {
            Mode::AtLeastOnce(c) => c.epoch(),
            Mode::ExactlyOnce { .. } => 0,
        }
    }

    /// `exactly_once`: opens a transaction if none is open.
    fn ensure_transaction(&mut self) -> Result<(), PipelineError> {
        if self.poisoned.is_some() {
            return Ok(());
        }
        if let Mode::ExactlyOnce { open } = &mut self.mode
            && !*open
        {
            match self.producer.begin_transaction() {
                Ok(()) => *open = true,
                Err(e) => self.poison(e),
            }
        }
        Ok(())
    }

    /// `exactly_once`: the producer cannot go on; remember why until the next checkpoint.
    fn poison(&mut self, e: KafkaError) {
        if self.poisoned.is_none() {
            tracing::warn!(error = %e, "transactional producer failed; its transaction will be abandoned and the pipeline resumes from the last commit");
        }
        self.poisoned = Some(e);
    }

    /// Handles one input message.
    fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let (p, o) = (m.partition(), m.offset());
        let Some(st) = self.parts.get(&p) else {
            tracing::warn!(
                partition = p,
                offset = o,
                "message of a partition not assigned here; skipped"
            );
            return Ok(());
        };
        if o < st.rollup.next_offset() {
            return Ok(()); // already processed before the snapshot
        }
        self.ensure_transaction()?;
        let st = self.parts.get_mut(&p).expect("checked");
        st.dirty = true;
        let payload = m.payload().unwrap_or_default();
        let pricing = self.pricing.load();
        let origin = self.marker_key.origin(m.topic(), p, payload, m.headers());
        let outcome =
            st.rollup
                .process_from(origin, o, payload, pricing.get(), now_ms(), &mut self.out);
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
        let epoch = self.epoch();
        let topics = &self.cfg.topics;
        let mut buf = std::mem::take(&mut self.enc);
        buf.clear();
        let dead_letter_key;
        let (topic, key): (&str, &[u8]) = match output {
            Output::Line(l) => {
                crate::debit::json::encode_line(&mut buf, l);
                (&topics.priced_usage, l.account_id.as_bytes())
            }
            Output::Debit(d) => {
                let e = self.counts.debits.entry(d.kind.as_str()).or_default();
                e.0 += 1;
                e.1 += decimal_f64(d);
                crate::debit::json::encode_debit(&mut buf, d);
                (&topics.debits, d.account_id.as_bytes())
            }
            Output::Rejected(r) => {
                self.warned_rejects += 1;
                if self.warned_rejects.is_power_of_two() {
                    tracing::warn!(reason = %r.reason, partition = p, offset = o, rejected_so_far = self.warned_rejects, "event rejected to dead letter (logged at powers of two)");
                }
                let dl = DeadLetter::new(r, payload, &topics.usage_events, p, o);
                serde_json::to_writer(&mut buf, &dl).expect("dead letter serializes");
                dead_letter_key = dl.id().into_bytes();
                (&topics.dead_letter, &dead_letter_key)
            }
        };
        let to = Destination {
            topic,
            key,
            partition: None,
        };
        let _ = epoch;
        let sent = send_output(&self.producer, &self.mode, &mut self.poisoned, to, &buf);
        self.enc = buf;
        sent
    }

    /// Snapshots of the partitions changed since the last checkpoint, and their offsets.
    fn take_snapshots(&mut self) -> (Snapshots, Vec<(i32, i64)>) {
        self.counts.flush();
        let mut parts: Vec<i32> = self.parts.keys().copied().collect();
        parts.sort_unstable();
        let mut snapshots = Vec::new();
        let mut offsets = Vec::new();
        for p in parts {
            let st = self.parts.get_mut(&p).expect("listed");
            if st.dirty {
                snapshots.push((p, st.rollup.snapshot()));
                offsets.push((p, st.rollup.next_offset()));
                st.dirty = false;
            }
        }
        (snapshots, offsets)
    }

    fn write_snapshots(
        &self,
        snapshots: &[(i32, PartitionSnapshot)],
        epoch: u64,
    ) -> Result<(), PipelineError> {
        for (p, snap) in snapshots {
            write_snapshot(
                &self.producer,
                &self.location(*p),
                snap,
                &self.rules_fingerprint,
                epoch,
            )?;
        }
        Ok(())
    }

    fn offsets_list(&self, offsets: &[(i32, i64)]) -> KafkaResult<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            if self.parts.contains_key(p) {
                tpl.add_partition_offset(&self.cfg.topics.usage_events, *p, Offset::Offset(*o))?;
            }
        }
        Ok(tpl)
    }

    /// A periodic checkpoint that does not block the loop on acknowledgements
    /// (`at_least_once`), or the commit of the open transaction (`exactly_once`).
    fn checkpoint<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        if let Mode::AtLeastOnce(c) = &self.mode {
            // At most two checkpoints in flight: when the broker acknowledges slowly,
            // checkpoints space out instead of piling up snapshot copies in memory.
            if c.in_progress() < 2 {
                let (snapshots, offsets) = self.take_snapshots();
                let Mode::AtLeastOnce(c) = &mut self.mode else {
                    unreachable!()
                };
                let epoch = c.begin(snapshots, offsets);
                self.free_epoch_slot(epoch);
            }
            self.advance(consumer, CommitMode::Async)
        } else {
            self.commit_transaction(consumer)
        }
    }

    /// `at_least_once`: the counter slot of a new epoch must be free (its previous user
    /// acknowledged) before messages are counted in it.
    fn free_epoch_slot(&self, epoch: u64) {
        if self.producer.context().in_flight(epoch) > 0 {
            kafka::await_in_flight(
                &self.producer,
                Instant::now() + self.cfg.pipeline.drain_timeout,
            );
            let _ = self.producer.flush(self.cfg.pipeline.drain_timeout);
        }
    }

    /// `at_least_once`: carries out what the coordinator allows now.
    fn advance<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mode: CommitMode,
    ) -> Result<(), PipelineError> {
        let failed = self.producer.context().failed();
        if failed > self.failures_seen {
            return Err(PipelineError::DeliveryFailed(failed - self.failures_seen));
        }
        loop {
            let Mode::AtLeastOnce(c) = &mut self.mode else {
                return Ok(());
            };
            let ctx = self.producer.context();
            match c.next_action(|e| ctx.in_flight(e)) {
                None => break,
                Some(Action::WriteSnapshots { snapshots, epoch }) => {
                    self.write_snapshots(&snapshots, epoch)?;
                    let Mode::AtLeastOnce(c) = &self.mode else {
                        unreachable!()
                    };
                    self.free_epoch_slot(c.epoch());
                }
                Some(Action::Commit { offsets, started }) => {
                    let tpl = self.offsets_list(&offsets)?;
                    if tpl.count() > 0 {
                        consumer.commit(&tpl, mode)?;
                    }
                    METRICS
                        .checkpoint_duration
                        .observe(started.elapsed().as_secs_f64());
                }
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// `exactly_once`: commits the open transaction with the changed partitions' snapshots
    /// and input offsets. An abortable failure aborts it and rewinds every partition to its
    /// last committed snapshot; a fatal one stops the pipeline.
    fn commit_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        if let Some(e) = self.poisoned.take() {
            return self.recover(consumer, e);
        }
        let Mode::ExactlyOnce { open: true } = self.mode else {
            self.update_gauges();
            return Ok(());
        };
        let started = Instant::now();
        let (snapshots, offsets) = self.take_snapshots();
        self.write_snapshots(&snapshots, 0)?;
        let tpl = self.offsets_list(&offsets)?;
        let deadline = started + self.cfg.pipeline.transaction_timeout;
        let timeout = self.cfg.pipeline.transaction_timeout;
        let producer = &self.producer;
        let result = (|| {
            if tpl.count() > 0 {
                let cgm =
                    consumer
                        .group_metadata()
                        .ok_or(TxnFailure::Abort(KafkaError::Global(
                            RDKafkaErrorCode::State,
                        )))?;
                txn_call("send_offsets_to_transaction", deadline, || {
                    producer.send_offsets_to_transaction(&tpl, &cgm, timeout)
                })?;
            }
            kafka::await_in_flight(producer, deadline);
            txn_call("commit_transaction", deadline, || {
                producer.commit_transaction(timeout)
            })
        })();
        self.mode = Mode::ExactlyOnce { open: false };
        match result {
            Ok(()) => {
                METRICS.transactions.with_label_values(&["committed"]).inc();
                METRICS
                    .checkpoint_duration
                    .observe(started.elapsed().as_secs_f64());
                self.update_gauges();
                Ok(())
            }
            Err(TxnFailure::Abort(e)) => {
                tracing::warn!(error = %e, "kafka transaction aborted; resuming from the last committed checkpoint");
                self.abort_and_rewind(consumer)
            }
            Err(TxnFailure::Fatal(e)) => self.recover(consumer, e),
        }
    }

    /// `exactly_once`: the producer failed for good (fenced: its transaction outlived
    /// `transaction_timeout`, e.g. while the broker was away, and the broker bumped its
    /// epoch). A new producer with the same `transactional.id` is initialised (which aborts
    /// whatever was open) and every partition rewinds to its last committed snapshot.
    fn recover<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        e: KafkaError,
    ) -> Result<(), PipelineError> {
        let now = Instant::now();
        self.reinits
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if self.reinits.len() >= MAX_REINITS_PER_MINUTE {
            return Err(PipelineError::TransactionFatal(e));
        }
        self.reinits.push(now);
        tracing::warn!(error = %e, "re-initialising the transactional producer; resuming from the last committed checkpoint");
        METRICS.transactions.with_label_values(&["aborted"]).inc();
        self.producer = transactional_producer(&self.cfg)?;
        self.mode = Mode::ExactlyOnce { open: false };
        self.poisoned = None;
        self.rewind(consumer)
    }

    /// `exactly_once`: aborts the open transaction (its outputs never become visible) and
    /// rewinds every owned partition to its last committed snapshot.
    fn abort_and_rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        let deadline = Instant::now() + self.cfg.pipeline.transaction_timeout;
        let producer = &self.producer;
        let timeout = self.cfg.pipeline.transaction_timeout;
        if let Err(TxnFailure::Abort(e) | TxnFailure::Fatal(e)) =
            txn_call("abort_transaction", deadline, || {
                producer.abort_transaction(timeout)
            })
        {
            return self.recover(consumer, e);
        }
        METRICS.transactions.with_label_values(&["aborted"]).inc();
        self.mode = Mode::ExactlyOnce { open: false };
        self.rewind(consumer)
    }

    /// Restores every owned partition from its last committed snapshot and seeks there.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        self.failures_seen = self.producer.context().failed();
        self.counts = BatchCounts::default();
        let parts: Vec<i32> = self.parts.keys().copied().collect();
        let committed = self.committed(consumer, &parts)?;
        for p in parts {
            let start = self
                .restore(p, committed.get(&p).copied())?
                .map_or(Offset::Beginning, Offset::Offset);
            consumer.seek(
                &self.cfg.topics.usage_events,
                p,
                start,
                Duration::from_secs(10),
            )?;
        }
        Ok(())
    }

    /// The group's committed input offsets of `partitions`, fetched stable: a
    /// `read_committed` consumer's offset fetch waits for pending transactions to finish.
    fn committed<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, PipelineError> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.cfg.topics.usage_events, *p);
        }
        let got = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// Makes everything processed so far durable before returning (revoke, shutdown).
    fn checkpoint_now<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), PipelineError> {
        if let Mode::ExactlyOnce { .. } = self.mode {
            return self.commit_transaction(consumer);
        }
        let (snapshots, offsets) = self.take_snapshots();
        let Mode::AtLeastOnce(c) = &mut self.mode else {
            unreachable!()
        };
        let epoch = c.begin(snapshots, offsets);
        self.free_epoch_slot(epoch);
        let deadline = Instant::now() + self.cfg.pipeline.drain_timeout;
        loop {
            let Mode::AtLeastOnce(c) = &self.mode else {
                unreachable!()
            };
            if c.in_progress() == 0 {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PipelineError::Kafka(KafkaError::Flush(
                    RDKafkaErrorCode::OperationTimedOut,
                )));
            }
            kafka::await_in_flight(&self.producer, deadline);
            self.producer.flush(left)?;
            self.advance(consumer, CommitMode::Sync)?;
        }
    }

    /// Partitions are being taken away: make their work durable, or, when the assignment
    /// was lost (this member was evicted, e.g. frozen past its session timeout), discard
    /// it: its transaction is aborted and the new owner resumes from the last commit.
    fn on_revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
        lost: bool,
    ) -> Result<(), PipelineError> {
        let result = match (&self.mode, lost) {
            (Mode::ExactlyOnce { open: true }, true) => {
                tracing::warn!(partitions = ?partitions, "assignment lost; aborting the open transaction");
                self.abort_and_rewind(consumer)
            }
            _ => self.checkpoint_now(consumer),
        };
        for p in partitions {
            self.parts.remove(p);
            METRICS
                .consumer_lag
                .with_label_values(&[&p.to_string()])
                .set(0);
        }
        self.hi_offsets.lock().expect("hi offsets lock").clear();
        result
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

    /// Writes close markers for executions idle past the timeout (in the open transaction).
    fn write_markers(&mut self) -> Result<(), PipelineError> {
        let timeout = self.cfg.rollup.execution_idle_timeout.as_millis() as u64;
        let now = now_ms();
        let at = chrono::Utc::now();
        let mut idle = Vec::new();
        for (p, st) in self.parts.iter_mut() {
            idle.extend(
                st.rollup
                    .idle_executions(now, timeout)
                    .into_iter()
                    .map(|i| (*p, i)),
            );
        }
        if idle.is_empty() {
            return Ok(());
        }
        self.ensure_transaction()?;
        let epoch = self.epoch();
        for (p, idle) in idle {
            let bytes =
                encode_timeout_marker(&idle.execution_id, &idle.account_id, idle.after_offset, at);
            let topic = &self.cfg.topics.usage_events;
            let mac = self.marker_key.sign(topic, p, &bytes);
            let headers = OwnedHeaders::new().insert(Header {
                key: marker::HEADER,
                value: Some(&mac),
            });
            let to = Destination {
                topic,
                key: idle.execution_id.as_bytes(),
                partition: Some(p),
            };
            match (&self.mode, &self.poisoned) {
                (Mode::AtLeastOnce(_), _) => {
                    send_with_headers(&self.producer, epoch, to, &bytes, Some(headers))?
                }
                (Mode::ExactlyOnce { .. }, Some(_)) => continue,
                (Mode::ExactlyOnce { .. }, None) => {
                    if let Err(e) = send_with_headers(&self.producer, 0, to, &bytes, Some(headers))
                    {
                        tracing::warn!(error = %e, "transactional producer failed; its transaction will be abandoned and the pipeline resumes from the last commit");
                        self.poisoned = Some(e);
                        continue;
                    }
                }
            }
            METRICS.markers_written.inc();
        }
        Ok(())
    }

    /// The running cost of an execution open on this instance.
    pub fn running_cost(&self, execution_id: &str, account_id: Option<&str>) -> Option<Debit> {
        let plans = self.pricing.plans.load();
        self.parts
            .values()
            .find_map(|s| s.rollup.running_cost(execution_id, account_id, &plans))
    }

    /// See [`EngineHandle::open_execution`].
    pub fn open_execution(
        &self,
        account_id: &str,
        execution_id: &str,
    ) -> Option<OpenExecutionView> {
        let plans = self.pricing.plans.load();
        self.parts
            .values()
            .find_map(|s| s.rollup.open_execution(account_id, execution_id, &plans))
    }
}

fn decimal_f64(d: &Debit) -> f64 {
    use rust_decimal::prelude::ToPrimitive;
    d.total.to_f64().unwrap_or(0.0)
}

/// Consumer context: restores state on assignment (consumption starts at the snapshot's
/// offset), checkpoints or discards on revoke, records high watermarks.
pub struct InputContext {
    engine: Arc<Mutex<Engine>>,
    hi_offsets: Arc<Mutex<HashMap<i32, i64>>>,
    topic: String,
    fatal: Mutex<Option<PipelineError>>,
}

impl InputContext {
    fn fail(&self, e: PipelineError) {
        tracing::error!(error = %e, "pipeline cannot go on");
        *self.fatal.lock().expect("fatal lock") = Some(e);
    }
}

impl ClientContext for InputContext {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            let mut hi = self.hi_offsets.lock().expect("hi offsets lock");
            for (p, s) in &t.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    // Fetched to the end with nothing waiting in the fetch queue: caught up
                    // (-1 makes the lag 0). What lies between the last message and the high
                    // watermark are transaction markers (close markers are written to this
                    // topic in transactions), which are never delivered.
                    let caught_up = s.fetchq_cnt == 0 && s.next_offset >= s.hi_offset;
                    hi.insert(*p, if caught_up { -1 } else { s.hi_offset });
                }
            }
        }
    }
}

impl ConsumerContext for InputContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(partitions = ?parts, "partitions assigned");
                // Restore before consuming (open executions of an idle partition must still
                // time out, and the running-cost API must see them), and start each
                // partition at its snapshot's offset rather than seeking later.
                let mut engine = lock(&self.engine);
                let committed = match engine.committed(consumer, &parts) {
                    Ok(c) => c,
                    Err(e) => {
                        self.fail(e);
                        HashMap::new()
                    }
                };
                for p in &parts {
                    match engine.restore(*p, committed.get(p).copied()) {
                        Ok(Some(next)) => {
                            if let Err(e) =
                                tpl.set_partition_offset(&self.topic, *p, Offset::Offset(next))
                            {
                                self.fail(e.into());
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            self.fail(e);
                            break;
                        }
                    }
                }
                drop(engine);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?parts, lost, "partitions revoked");
                if let Err(e) = lock(&self.engine).on_revoke(consumer, &parts, lost) {
                    self.fail(e);
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            self.fail(e.into());
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
    pub fn running_cost(&self, execution_id: &str, account_id: Option<&str>) -> Option<Debit> {
        lock(&self.0).running_cost(execution_id, account_id)
    }

    /// `account_id`'s execution `execution_id`, if it is open on this instance (its input
    /// partition is owned here): the running totals shaped as its debit (empty `debit_id`,
    /// markup included), its first `rollup.max_trace_calls` priced calls in rating order,
    /// each with event id, `occurred_at`, asset id and type, quantity and unit price
    /// (`credits` per `per`) per unit, price version, cost and the subtotal after it, and
    /// how many priced calls are not listed. Copied under the pipeline's lock (cost: the
    /// listed calls). Calls priced before this instance restored the partition (a restart,
    /// a rebalance) are counted as omitted: the snapshot does not carry the list. `None` once
    /// the execution closed (its debit is then on the `debits`
    /// topic and in ClickHouse) or when another instance owns its partition.
    pub fn open_execution(
        &self,
        account_id: &str,
        execution_id: &str,
    ) -> Option<OpenExecutionView> {
        lock(&self.0).open_execution(account_id, execution_id)
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
    /// `pricing`: the catalog handle (every account on the `default` plan) or a
    /// [`PricingHandle`] with the plans too.
    pub fn new(
        cfg: &Config,
        pricing: impl Into<PricingHandle>,
        health: Arc<Health>,
    ) -> Result<Pipeline, PipelineError> {
        let hi = Arc::new(Mutex::new(HashMap::new()));
        let engine = Arc::new(Mutex::new(Engine::new(
            cfg,
            pricing.into(),
            health.clone(),
            hi.clone(),
        )?));
        let c = kafka::group_config(
            cfg,
            &cfg.kafka.group_id,
            "pipeline",
            &[
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

    /// Runs until `stop` is cancelled, then drains: a final checkpoint within the drain
    /// timeout. Blocking: call it on its own thread.
    pub fn run(self, stop: CancellationToken) -> Result<(), PipelineError> {
        let interval = self.cfg.pipeline.checkpoint_interval;
        let mut last_checkpoint = Instant::now();
        let mut last_markers = Instant::now();
        let result = loop {
            if stop.is_cancelled() {
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
                        if let Err(e) = lock(&self.engine).handle(&m) {
                            break Err(e);
                        }
                        n += 1;
                        wait = Duration::ZERO;
                        if n >= 2048 || last_checkpoint.elapsed() >= interval {
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
            let mut engine = lock(&self.engine);
            let due = last_checkpoint.elapsed() >= interval;
            let r = if due {
                last_checkpoint = Instant::now();
                engine.checkpoint(&self.consumer)
            } else if let Mode::AtLeastOnce(_) = engine.mode {
                engine.advance(&self.consumer, CommitMode::Async)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                break Err(e);
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
