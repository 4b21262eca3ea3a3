//! The exactly-once stage runtime every stage runs on (rating pipeline, spend alerts, credits
//! ledger, vouchers, ClickHouse sink): input topics in (consumer group, `read_committed`); a
//! [`Processor`] per stage; its work made durable as its [`Guarantee`] says. Transactional
//! (every stage but the sink): co-partitioned inputs; the outputs, the changelog records and
//! the input offsets out, all in one Kafka transaction per `commit_interval`. Store then
//! offsets (the sink, [`store`]): the processor writes to its own idempotent store, then the
//! runtime commits the input offsets; on assignment the store says where each partition
//! resumes. Both share the consuming, the rebalance rule, the lag and the metrics below.
//!
//! Kafka Streams' design. A processor sees one record and its [`Outputs`]; the runtime owns
//! consuming (bursts of up to [`BURST`] messages per wake-up), the transaction (begun with
//! the first output after a commit), the changelog and the commit. State lives per input
//! partition number `p`; before each commit the processor writes what changed in `p` since
//! the last one ([`Processor::changes`]: the last value of each key written, tombstones for
//! deleted keys) to partition `p` of a compacted changelog topic, with a record under
//! [`OFFSETS_KEY`] naming the input positions that state corresponds to, and the runtime
//! sends the consumer offsets into the same transaction (`send_offsets_to_transaction`).
//!
//! On assignment the runtime reads changelog partition `p` to its end (`enable.partition.eof`,
//! never "until offset high-1": under `read_committed` transaction markers leave gaps), checks
//! that the positions it found equal the group's committed offsets (fetched stable, so a
//! transaction in flight is waited for), and only then assigns the input partitions at those
//! positions. A transaction that must abort (a stale generation after a rebalance, a failed
//! delivery, a commit that cannot finish within `pipeline.transaction_timeout`) is aborted and
//! every owned partition restored again. A producer that fails for good (fenced) is re-created
//! with the same `transactional.id` (stable per stage and `kafka.instance_id`), at most
//! [`txn::MAX_REINITS_PER_MINUTE`] times a minute; a restarted instance fences its crashed
//! predecessor and aborts its open transaction at once.

mod context;
mod error;
pub mod processor;
mod replay;
pub mod restore;
mod store;
mod txn;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::now_ms;
use crate::kafka;
use crate::metrics::METRICS;

use txn::{Reinits, StageProducer, Txn, TxnFailure, txn_call};

pub use crate::kafka::ReaderContext;
pub use context::StageContext;
pub use error::StageError;
pub use processor::{
    ChangeSink, Changelog, CompactedLog, Guarantee, InputMsg, OFFSETS_KEY, Outputs, Processor,
    StageSpec,
};
pub use restore::{Agreement, Positions, agree};
pub use store::InputPartitions;
pub use txn::Record;

/// Input messages handled per wake-up at most (then the loop commits, punctuates and
/// reports if due, and applies a pending rebalance).
pub const BURST: usize = 2048;
/// How long the changelog may stay behind the group's committed offsets, or deliver nothing
/// while read, before a restore gives up.
const RESTORE_PATIENCE: Duration = Duration::from_secs(60);

/// How long a transaction's closing calls may take before the producer is taken as stuck:
/// each call retries until `transaction_timeout` has passed and the last may itself take
/// that long, so twice that, and 5 s of slack for a loaded box.
fn call_limit(transaction_timeout: Duration) -> Duration {
    transaction_timeout * 2 + Duration::from_secs(5)
}

/// A running stage; [`Stage::run`] drives it on the calling thread.
pub struct Stage<P: Processor> {
    cfg: Config,
    spec: StageSpec,
    processor: P,
    txn_id: String,
    /// Shared with the thread a transaction's closing calls run on ([`txn::bounded`]).
    producer: Arc<StageProducer>,
    consumer: BaseConsumer<StageContext>,
    reader: kafka::Reader,
    /// Owned partition -> next offset per input topic (restored or consumed).
    owned: BTreeMap<i32, Positions>,
    /// Partitions with input since the last commit.
    touched: BTreeSet<i32>,
    txn: Txn,
    reinits: Reinits,
}

impl<P: Processor> Stage<P> {
    /// Creates the clients, checks the topics and their partition counts, initialises the
    /// transactional producer (fencing a predecessor of the same slot) and subscribes.
    pub fn new(cfg: &Config, spec: StageSpec, processor: P) -> Result<Self, StageError> {
        let txn_id = kafka::transactional_id(cfg, spec.name);
        let mut cc = kafka::group_config(cfg, &spec.group_id, spec.name, &[]);
        for (k, v) in [
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            // Range keeps partition p of every input on the same member (co-partitioning).
            ("partition.assignment.strategy", "range"),
            ("enable.partition.eof", "false"),
            ("fetch.wait.max.ms", "50"),
            // High watermarks for the lag (StageContext::stats).
            ("statistics.interval.ms", "1000"),
        ] {
            cc.set(k, v);
        }
        for (k, v) in &spec.consumer {
            cc.set(*k, v);
        }
        let consumer: BaseConsumer<StageContext> =
            cc.create_with_context(StageContext::new(spec.name))?;
        let reader: kafka::Reader = kafka::reader_config(cfg).create_with_context(ReaderContext)?;
        replay::check_partitions(&reader, &spec)?;
        let transactional = spec.changelog().is_some();
        let producer = Arc::new(match transactional {
            true => txn::producer(cfg, spec.name, &txn_id)?,
            false => txn::plain_producer(cfg, spec.name)?,
        });
        let topics: Vec<&str> = spec.inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        if let Some(h) = &spec.health {
            h.stage_started(spec.name);
        }
        Ok(Stage {
            cfg: cfg.clone(),
            spec,
            processor,
            txn_id,
            producer,
            consumer,
            reader,
            owned: BTreeMap::new(),
            touched: BTreeSet::new(),
            txn: Txn {
                plain: !transactional,
                ..Txn::default()
            },
            reinits: Reinits::default(),
        })
    }

    /// Runs until `stop` is cancelled; the open transaction is committed (the store
    /// flushed) on the way out.
    pub fn run(mut self, stop: &CancellationToken) -> Result<(), StageError> {
        let mut punctuated = Instant::now();
        let mut reported = Instant::now();
        while !stop.is_cancelled() {
            if let Err(e) = self.rebalance() {
                if !stop.is_cancelled() {
                    return Err(e);
                }
                // A restore or resume given up because the process is stopping.
                tracing::warn!(stage = self.spec.name, error = %e, "assignment abandoned: stopping");
                return Ok(());
            }
            let n = self.consume()?;
            if n > 0
                && let Some(h) = &self.spec.health
            {
                h.stage_progressed(self.spec.name);
            }
            if let Some(every) = self.spec.punctuate_every
                && punctuated.elapsed() >= every
            {
                punctuated = Instant::now();
                let mut out = Outputs {
                    producer: &self.producer,
                    txn: &mut self.txn,
                };
                self.processor.punctuate(now_ms(), &mut out);
            }
            if self.txn.plain {
                self.flush_store(false)?;
            } else if self.commit_due() {
                self.commit()?;
            }
            if reported.elapsed() >= Duration::from_secs(1) {
                reported = Instant::now();
                self.report_lag();
            }
        }
        if self.txn.plain {
            self.flush_store(true)?;
        } else if self.txn.since.is_some() {
            self.commit()?;
        }
        tracing::info!(stage = self.spec.name, "stage stopped");
        Ok(())
    }

    /// Polls and handles up to [`BURST`] messages: the first poll waits (at most until the
    /// open transaction is due), the others take what is already fetched.
    /// A fatal consumer error (e.g. `FencedInstanceId`, seen after a group coordinator's node
    /// was SIGKILLed on the 3-broker cluster) ends the stage: that consumer never delivers
    /// again, and the process's supervisor restarts it from the last commit.
    fn consume(&mut self) -> Result<usize, StageError> {
        let mut wait = Duration::from_millis(100);
        if !self.txn.plain
            && let Some(since) = self.txn.since
        {
            wait = wait
                .min((since + self.spec.commit_interval).saturating_duration_since(Instant::now()));
        }
        let mut n = 0;
        while n < BURST {
            let m = match self.consumer.poll(wait) {
                Some(Ok(m)) => m,
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(StageError::Kafka(e));
                }
                Some(Err(e)) => {
                    tracing::warn!(stage = self.spec.name, error = %e, "consumer error");
                    break;
                }
                None => break,
            };
            wait = Duration::ZERO;
            let (topic, p, offset) = (m.topic(), m.partition(), m.offset());
            let Some(pos) = self.owned.get_mut(&p) else {
                continue; // not (or no longer) ours
            };
            match pos.get_mut(topic) {
                Some(next) if offset < *next => continue, // before the restored position
                Some(next) => *next = offset + 1,
                None => {
                    pos.insert(topic.to_string(), offset + 1);
                }
            }
            let input = InputMsg {
                topic,
                partition: p,
                offset,
                key: m.key(),
                payload: m.payload().unwrap_or_default(),
                headers: m.headers(),
            };
            self.txn.touch();
            self.txn.inputs += 1;
            self.touched.insert(p);
            let mut out = Outputs {
                producer: &self.producer,
                txn: &mut self.txn,
            };
            self.processor.process(&input, &mut out);
            n += 1;
            if self.consumer.context().flagged.load(Ordering::Acquire)
                || (!self.txn.plain && self.commit_due())
            {
                break;
            }
        }
        Ok(n)
    }

    fn commit_due(&self) -> bool {
        self.txn.inputs >= self.spec.max_batch as u64
            || self
                .txn
                .since
                .is_some_and(|s| s.elapsed() >= self.spec.commit_interval)
    }

    /// [`Stage::commit_now`], reported to [`crate::health::Health`] as a Kafka call in
    /// progress while it runs: its transaction calls can block without end on a lost
    /// coordinator, and the stall watchdog must see that whatever the last lag said.
    fn commit(&mut self) -> Result<(), StageError> {
        self.in_call(Some("commit"));
        let r = self.commit_now();
        self.in_call(None);
        r
    }

    fn in_call(&self, call: Option<&'static str>) {
        if let Some(h) = &self.spec.health {
            h.stage_in_call(self.spec.name, call);
        }
    }

    /// Writes the changed state and positions of the touched partitions, sends the offsets
    /// and commits. An abortable failure aborts and restores; a fatal one re-creates the
    /// producer.
    fn commit_now(&mut self) -> Result<(), StageError> {
        let started = Instant::now();
        let touched = std::mem::take(&mut self.touched);
        let (mut records, mut bytes) = (0, 0);
        for p in &touched {
            let mut log = Changelog {
                out: Outputs {
                    producer: &self.producer,
                    txn: &mut self.txn,
                },
                topic: self.spec.changelog().unwrap_or_default(),
                partition: *p,
                records: 0,
                bytes: 0,
            };
            self.processor.changes(*p, &mut log);
            let pos = serde_json::to_vec(&self.owned[p]).expect("positions serialize");
            log.put(OFFSETS_KEY, &pos);
            records += log.records;
            bytes += log.bytes;
        }
        if let Some(e) = self.txn.failed.take() {
            return self.recover(e);
        }
        if !self.txn.open {
            self.txn.reset();
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in &touched {
            for (t, o) in &self.owned[p] {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
            }
        }
        let timeout = self.cfg.pipeline.transaction_timeout;
        let deadline = started + timeout;
        let cgm = match tpl.count() {
            0 => Ok(None),
            _ => self
                .consumer
                .group_metadata()
                .map(Some)
                .ok_or(TxnFailure::Abort(KafkaError::Global(
                    RDKafkaErrorCode::State,
                ))),
        };
        let result = cgm.and_then(|cgm| {
            txn::bounded(
                "commit",
                &self.producer,
                call_limit(timeout),
                move |producer| {
                    if let Some(cgm) = cgm {
                        txn_call("send_offsets_to_transaction", deadline, || {
                            producer.send_offsets_to_transaction(&tpl, &cgm, timeout)
                        })?;
                    }
                    kafka::await_in_flight(producer, deadline);
                    txn_call("commit_transaction", deadline, || {
                        producer.commit_transaction(timeout)
                    })
                },
            )
        });
        match result {
            Ok(()) => {
                let m = &METRICS.stage;
                let stage = [self.spec.name];
                m.changelog_records
                    .with_label_values(&stage)
                    .inc_by(records);
                m.changelog_bytes.with_label_values(&stage).inc_by(bytes);
                m.transactions
                    .with_label_values(&[self.spec.name, "committed"])
                    .inc();
                self.record_commit(started);
                Ok(())
            }
            Err(TxnFailure::Abort(e)) => {
                tracing::warn!(stage = self.spec.name, error = %e, "kafka transaction cannot commit: it is aborted and the stage resumes from the last commit");
                self.abort_and_restore("commit failed")
            }
            Err(TxnFailure::Fatal(e)) => self.recover(e),
        }
    }

    /// A commit (either guarantee's) that began at `started` succeeded: its input messages,
    /// its duration and its time into the stage's series; the interval starts over.
    fn record_commit(&mut self, started: Instant) {
        let m = &METRICS.stage;
        let stage = [self.spec.name];
        m.input_messages
            .with_label_values(&stage)
            .inc_by(self.txn.inputs);
        m.commit_seconds
            .with_label_values(&stage)
            .observe(started.elapsed().as_secs_f64());
        m.last_commit
            .with_label_values(&stage)
            .set(now_ms() as f64 / 1000.0);
        self.txn.reset();
        self.processor.committed();
    }

    /// Aborts the open transaction (its outputs never become visible) and restores every
    /// owned partition from its changelog.
    fn abort_and_restore(&mut self, why: &str) -> Result<(), StageError> {
        if self.txn.open
            && let Err(f) = self.abort_transaction()
        {
            return self.recover(f.into_error());
        }
        self.count_abort();
        tracing::info!(
            stage = self.spec.name,
            why,
            "transaction aborted; restoring state"
        );
        self.restore_owned()
    }

    /// Aborts the open transaction, retried while retriable for `transaction_timeout`, on a
    /// thread bounded by [`call_limit`].
    fn abort_transaction(&self) -> Result<(), TxnFailure> {
        let timeout = self.cfg.pipeline.transaction_timeout;
        let deadline = Instant::now() + timeout;
        txn::bounded("abort", &self.producer, call_limit(timeout), move |p| {
            txn_call("abort_transaction", deadline, || {
                p.abort_transaction(timeout)
            })
        })
    }

    /// The producer failed for good (fenced: e.g. its transaction outlived the transaction
    /// timeout while the broker was away). A new one with the same `transactional.id` is
    /// initialised (which aborts whatever was open) and every owned partition restored.
    fn recover(&mut self, e: KafkaError) -> Result<(), StageError> {
        self.reinit(e)?;
        self.count_abort();
        self.restore_owned()
    }

    /// Re-creates the producer with the same `transactional.id`, unless that happened
    /// [`txn::MAX_REINITS_PER_MINUTE`] times in the last minute already.
    fn reinit(&mut self, e: KafkaError) -> Result<(), StageError> {
        if !self.reinits.allow(Instant::now()) {
            return Err(StageError::TransactionFatal(e));
        }
        tracing::warn!(stage = self.spec.name, error = %e, "re-initialising the transactional producer; resuming from the last commit");
        METRICS
            .stage
            .producer_reinits
            .with_label_values(&[self.spec.name])
            .inc();
        let new = txn::producer(&self.cfg, self.spec.name, &self.txn_id)?;
        let old = std::mem::replace(&mut self.producer, Arc::new(new));
        // Destroying a client can wait on a request to a broker that is gone; the stage
        // goes on with the new producer meanwhile.
        let _ = std::thread::Builder::new()
            .name(format!("{}-old-producer", self.spec.name))
            .spawn(move || drop(old));
        Ok(())
    }

    fn count_abort(&mut self) {
        if !self.txn.plain {
            METRICS
                .stage
                .transactions
                .with_label_values(&[self.spec.name, "aborted"])
                .inc();
        }
        self.txn.reset();
        self.touched.clear();
        self.processor.aborted();
    }

    /// Restores every owned partition again and assigns it at the restored positions.
    fn restore_owned(&mut self) -> Result<(), StageError> {
        let mut tpl = TopicPartitionList::new();
        for t in &self.spec.inputs {
            for p in self.owned.keys() {
                tpl.add_partition(t, *p);
            }
        }
        self.owned.clear();
        self.assign_restored(&tpl)
    }

    /// Applies what the rebalance callback recorded: a revocation aborts the open
    /// transaction (the next owner redoes that work from the last commit) and forgets the
    /// partitions; an assignment is restored, then assigned.
    fn rebalance(&mut self) -> Result<(), StageError> {
        if !self.consumer.context().flagged.load(Ordering::Acquire) {
            return Ok(());
        }
        let pending = self.consumer.context().take();
        if pending.revoked {
            let owned = std::mem::take(&mut self.owned);
            if self.txn.open {
                self.in_call(Some("abort_transaction"));
                let aborted = self.abort_transaction();
                self.in_call(None);
                if let Err(f) = aborted {
                    // Fenced meanwhile: a new producer (its init aborts what was open).
                    self.reinit(f.into_error())?;
                }
                tracing::info!(
                    stage = self.spec.name,
                    "open transaction aborted: partitions revoked"
                );
            }
            if self.txn.since.is_some() {
                self.count_abort();
            }
            for p in owned.into_keys() {
                self.processor.drop_partition(p);
                METRICS
                    .stage
                    .consumer_lag
                    .with_label_values(&[self.spec.name, &p.to_string()])
                    .set(0);
            }
            self.consumer.context().clear_lag();
            if let Some(h) = &self.spec.health {
                h.stage_lag(self.spec.name, 0);
            }
        }
        match pending.assign {
            Some(tpl) if self.txn.plain => self.assign_resumed(&tpl)?,
            Some(tpl) => self.assign_restored(&tpl)?,
            None => {}
        }
        Ok(())
    }

    /// Restores every partition number of `tpl`, then assigns it at the restored positions.
    fn assign_restored(&mut self, tpl: &TopicPartitionList) -> Result<(), StageError> {
        let mut parts: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        for e in tpl.elements() {
            parts
                .entry(e.partition())
                .or_default()
                .insert(e.topic().to_string());
        }
        for (p, topics) in &parts {
            if topics.len() != self.spec.inputs.len() {
                return Err(StageError::Setup(format!(
                    "partition {p} assigned for {topics:?} only; the {} stage needs every input's partition {p} (co-partitioning, range assignor)",
                    self.spec.name
                )));
            }
        }
        let started = Instant::now();
        for p in parts.keys() {
            let pos = self.restore(*p)?;
            self.owned.insert(*p, pos);
        }
        let mut with_offsets = TopicPartitionList::new();
        for (p, topics) in &parts {
            for t in topics {
                let o = self.owned[p]
                    .get(t)
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                with_offsets.add_partition_offset(t, *p, o)?;
            }
        }
        self.consumer.assign(&with_offsets)?;
        tracing::info!(
            stage = self.spec.name,
            partitions = ?parts.keys().collect::<Vec<_>>(),
            restore_ms = started.elapsed().as_millis() as u64,
            "partitions assigned"
        );
        Ok(())
    }

    /// Lag per owned partition into the metrics, their sum into [`crate::health::Health`],
    /// each input partition's to the processor.
    fn report_lag(&mut self) {
        let ctx = self.consumer.context();
        let per_topic: Vec<(&str, i32, Option<i64>)> = self
            .owned
            .iter()
            .flat_map(|(p, pos)| pos.iter().map(|(t, next)| (t.as_str(), *p, *next)))
            .map(|(t, p, next)| (t, p, ctx.topic_lag(t, p, next)))
            .collect();
        self.processor.lag(&per_topic);
        let mut total = 0;
        for (p, pos) in &self.owned {
            let lag = self.consumer.context().lag(*p, pos);
            total += lag;
            METRICS
                .stage
                .consumer_lag
                .with_label_values(&[self.spec.name, &p.to_string()])
                .set(lag);
        }
        if let Some(h) = &self.spec.health {
            h.stage_lag(self.spec.name, total);
        }
    }
}
