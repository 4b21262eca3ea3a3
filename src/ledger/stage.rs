//! A small exactly-once Kafka stage: co-partitioned input topics in (consumer group,
//! `read_committed`); a [`Processor`]'s outputs, its state changelog and the input offsets
//! out, all in one Kafka transaction per `commit_interval`.
//!
//! Kafka Streams style. State lives per input partition number `p`; its changes go to
//! partition `p` of a compacted changelog topic inside the same transaction as the outputs
//! and the consumer offsets (`send_offsets_to_transaction`), together with a record under
//! [`OFFSETS_KEY`] naming the input positions the state corresponds to. On assignment the
//! stage reads changelog partition `p` to its end (`enable.partition.eof`, never "until
//! offset high-1": under `read_committed` transaction markers leave gaps), checks that the
//! positions it found equal the group's committed offsets (fetched with `require_stable`,
//! so a transaction in flight is waited for), and only then assigns the input partitions at
//! those positions. A transaction that must abort (fenced member, rebalance, failed
//! delivery) is aborted and every owned partition is restored again from the changelog.
//! One transactional producer per stage instance, `transactional.id` stable per instance
//! slot, so a restarted instance fences its predecessor and aborts its open transaction at
//! once instead of pinning the last stable offset until `transaction.timeout.ms`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka;
use crate::metrics::METRICS;
use tokio_util::sync::CancellationToken;

mod processor;
mod restore;

pub use crate::kafka::ReaderContext;
pub use processor::{InputMsg, OFFSETS_KEY, OutRecord, Processor, StageError, StageSpec};
pub use restore::{Agreement, Positions, agree};

/// Pending rebalance work, recorded by the callback and done by the loop.
#[derive(Default)]
struct RebalanceState {
    assign: Option<TopicPartitionList>,
    revoked: bool,
}

/// Consumer context: an assignment is *not* applied in the callback; the loop restores the
/// state first and then assigns with explicit offsets. A revocation unassigns at once.
struct StageContext {
    pending: Mutex<RebalanceState>,
}

impl ClientContext for StageContext {}

impl ConsumerContext for StageContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut p = self.pending.lock().expect("rebalance lock");
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => p.assign = Some(tpl.clone()),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                p.assign = None;
                p.revoked = true;
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign after revoke failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                p.assign = None;
                p.revoked = true;
                let _ = consumer.unassign();
            }
        }
    }
}

/// The running stage.
pub struct Stage<'a, P: Processor> {
    spec: StageSpec,
    processor: &'a mut P,
    producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    consumer: BaseConsumer<StageContext>,
    reader: BaseConsumer<ReaderContext>,
    /// Owned partition -> next offset per input topic (restored or consumed).
    owned: BTreeMap<i32, Positions>,
    touched: BTreeSet<i32>,
    in_txn: bool,
    txn_failed: bool,
    txn_started: Instant,
    txn_msgs: usize,
    out: Vec<OutRecord>,
}

const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

impl<'a, P: Processor> Stage<'a, P> {
    /// Creates the clients, checks topics and partition counts, and initializes the
    /// transactional producer (fencing a predecessor with the same slot).
    pub fn new(cfg: &Config, spec: StageSpec, processor: &'a mut P) -> Result<Self, StageError> {
        // The project's transactional producer: `transactional.id` =
        // `<kafka.group_id>-<stage>-<kafka.instance_id>` (stable per instance slot, so a
        // restart fences its predecessor and aborts its open transaction at once; random
        // without an instance id), `pipeline.transaction_timeout`.
        let txn_id = kafka::transactional_id(cfg, spec.name);
        let mut pc = kafka::transactional_producer_config(cfg, spec.name);
        pc.set("transactional.id", &txn_id);
        let producer: ThreadedProducer<_> = pc.create()?;

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
        ] {
            cc.set(k, v);
        }
        if cc.get("session.timeout.ms").is_none() {
            cc.set("session.timeout.ms", "10000");
        }
        let consumer: BaseConsumer<StageContext> = cc.create_with_context(StageContext {
            pending: Mutex::new(RebalanceState::default()),
        })?;
        let mut rc = kafka::reader_config(cfg);
        rc.set("enable.partition.eof", "true");
        rc.set("isolation.level", "read_committed");
        let reader: BaseConsumer<ReaderContext> = rc.create_with_context(ReaderContext)?;

        let mut counts = Vec::new();
        for t in spec.inputs.iter().chain([&spec.changelog]) {
            // Right after `setup` a topic may have no leader yet: retry for a while.
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
            counts.push((t.clone(), n));
        }
        if counts.iter().any(|(_, n)| *n != counts[0].1) {
            return Err(StageError::Setup(format!(
                "the {} stage needs equal partition counts (co-partitioning), found {counts:?}",
                spec.name
            )));
        }
        let started = Instant::now();
        loop {
            match producer.init_transactions(TXN_CALL_TIMEOUT) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && started.elapsed() < Duration::from_secs(120) =>
                {
                    tracing::warn!(error = %e, stage = spec.name, "init_transactions retrying");
                }
                Err(e) => return Err(StageError::Fatal(e)),
            }
        }
        tracing::info!(stage = spec.name, transactional_id = %txn_id, init_ms = started.elapsed().as_millis() as u64, "transactional producer ready");
        let topics: Vec<&str> = spec.inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Stage {
            spec,
            processor,
            producer,
            consumer,
            reader,
            owned: BTreeMap::new(),
            touched: BTreeSet::new(),
            in_txn: false,
            txn_failed: false,
            txn_started: Instant::now(),
            txn_msgs: 0,
            out: Vec::new(),
        })
    }

    /// Runs until `stop` is cancelled; the open transaction is committed on the way out.
    pub fn run(mut self, stop: &CancellationToken) -> Result<(), StageError> {
        loop {
            if stop.is_cancelled() {
                if self.in_txn {
                    self.commit()?;
                }
                tracing::info!(stage = self.spec.name, "stage stopped");
                return Ok(());
            }
            let polled = self.consumer.poll(Duration::from_millis(50));
            let msg = match polled {
                Some(Ok(m)) => Some(m.detach()),
                Some(Err(e)) => {
                    tracing::warn!(stage = self.spec.name, error = %e, "consumer error");
                    None
                }
                None => None,
            };
            self.rebalance()?;
            if let Some(m) = msg {
                self.handle(&m)?;
            }
            if self.in_txn
                && (self.txn_started.elapsed() >= self.spec.commit_interval
                    || self.txn_msgs >= self.spec.max_batch)
            {
                self.commit()?;
            }
        }
    }

    fn handle(&mut self, m: &rdkafka::message::OwnedMessage) -> Result<(), StageError> {
        let (topic, p, offset) = (m.topic(), m.partition(), m.offset());
        let Some(pos) = self.owned.get(&p) else {
            return Ok(()); // not (or no longer) ours
        };
        if offset < pos.get(topic).copied().unwrap_or(0) {
            return Ok(()); // before the restored position
        }
        if !self.in_txn {
            self.producer
                .begin_transaction()
                .map_err(StageError::Fatal)?;
            self.in_txn = true;
            self.txn_failed = false;
            self.txn_started = Instant::now();
            self.txn_msgs = 0;
        }
        let input = InputMsg {
            topic,
            partition: p,
            offset,
            key: m.key(),
            payload: m.payload().unwrap_or_default(),
        };
        let mut out = std::mem::take(&mut self.out);
        self.processor.process(&input, &mut out);
        for r in out.drain(..) {
            self.send(&r.topic, &r.key, Some(&r.payload), None);
        }
        self.out = out;
        let positions = self.owned.get_mut(&p).expect("owned");
        match positions.get_mut(topic) {
            Some(next) => *next = offset + 1,
            None => {
                positions.insert(topic.to_string(), offset + 1);
            }
        }
        self.touched.insert(p);
        // Counted into `input_messages` when the transaction commits (one metric update per
        // transaction instead of a labelled lookup per message).
        self.txn_msgs += 1;
        Ok(())
    }

    /// Queues one message, waiting while the queue is full. A failure marks the
    /// transaction for abort.
    fn send(&mut self, topic: &str, key: &[u8], payload: Option<&[u8]>, partition: Option<i32>) {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key);
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => {
                    tracing::warn!(stage = self.spec.name, error = %e, topic, "produce failed; the transaction will abort");
                    self.txn_failed = true;
                    return;
                }
            }
        }
    }

    /// Writes changed state and positions, sends the offsets and commits.
    fn commit(&mut self) -> Result<(), StageError> {
        let started = Instant::now();
        let touched: Vec<i32> = self.touched.iter().copied().collect();
        for p in &touched {
            for (k, v) in self.processor.snapshot(*p) {
                let changelog = self.spec.changelog.clone();
                self.send(&changelog, &k, v.as_deref(), Some(*p));
            }
            let pos = serde_json::to_vec(&self.owned[p]).expect("positions serialize");
            let changelog = self.spec.changelog.clone();
            self.send(&changelog, OFFSETS_KEY, Some(&pos), Some(*p));
        }
        if self.txn_failed {
            return self.abort_and_restore("a message could not be queued");
        }
        let mut tpl = TopicPartitionList::new();
        for p in &touched {
            for (t, o) in &self.owned[p] {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
            }
        }
        let cgm = self
            .consumer
            .group_metadata()
            .ok_or_else(|| StageError::Setup("no consumer group metadata".into()))?;
        if let Err(e) = retry(|| {
            self.producer
                .send_offsets_to_transaction(&tpl, &cgm, TXN_CALL_TIMEOUT)
        }) {
            return self.on_txn_error(e, "send_offsets_to_transaction");
        }
        kafka::await_in_flight(&self.producer, Instant::now() + TXN_CALL_TIMEOUT);
        if let Err(e) = retry(|| self.producer.commit_transaction(TXN_CALL_TIMEOUT)) {
            return self.on_txn_error(e, "commit_transaction");
        }
        self.in_txn = false;
        self.touched.clear();
        self.processor.committed();
        let name = self.spec.name;
        METRICS
            .ledger
            .input_messages
            .with_label_values(&[name])
            .inc_by(self.txn_msgs as u64);
        METRICS
            .ledger
            .transactions
            .with_label_values(&[name, "committed"])
            .inc();
        METRICS
            .ledger
            .commit_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        METRICS
            .ledger
            .last_commit
            .with_label_values(&[name])
            .set(crate::health::now_ms() as f64 / 1000.0);
        Ok(())
    }

    fn on_txn_error(&mut self, e: KafkaError, call: &str) -> Result<(), StageError> {
        let abortable = match &e {
            KafkaError::Transaction(t) => t.txn_requires_abort(),
            KafkaError::Flush(_) => true,
            _ => false,
        };
        if abortable {
            tracing::warn!(stage = self.spec.name, error = %e, call, "transaction aborted; restoring state");
            self.abort_and_restore(call)
        } else {
            Err(StageError::Fatal(e))
        }
    }

    fn abort_and_restore(&mut self, why: &str) -> Result<(), StageError> {
        if let Err(e) = retry(|| self.producer.abort_transaction(TXN_CALL_TIMEOUT)) {
            return Err(StageError::Fatal(e));
        }
        METRICS
            .ledger
            .transactions
            .with_label_values(&[self.spec.name, "aborted"])
            .inc();
        tracing::info!(stage = self.spec.name, why, "transaction aborted");
        self.in_txn = false;
        self.touched.clear();
        let parts: Vec<i32> = self.owned.keys().copied().collect();
        let mut tpl = TopicPartitionList::new();
        for t in &self.spec.inputs {
            for p in &parts {
                tpl.add_partition(t, *p);
            }
        }
        self.owned.clear();
        self.assign_restored(&tpl)
    }

    fn rebalance(&mut self) -> Result<(), StageError> {
        let (assign, revoked) = {
            let mut p = self
                .consumer
                .context()
                .pending
                .lock()
                .expect("rebalance lock");
            (p.assign.take(), std::mem::take(&mut p.revoked))
        };
        if revoked {
            if self.in_txn {
                // The next owner resumes from the last commit; this work is redone there.
                if let Err(e) = retry(|| self.producer.abort_transaction(TXN_CALL_TIMEOUT)) {
                    return Err(StageError::Fatal(e));
                }
                self.in_txn = false;
                METRICS
                    .ledger
                    .transactions
                    .with_label_values(&[self.spec.name, "aborted"])
                    .inc();
            }
            for p in std::mem::take(&mut self.owned).into_keys() {
                self.processor.drop_partition(p);
            }
            self.touched.clear();
            tracing::info!(stage = self.spec.name, "partitions revoked");
        }
        if let Some(tpl) = assign {
            self.assign_restored(&tpl)?;
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
        METRICS
            .ledger
            .restore_seconds
            .with_label_values(&[self.spec.name])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            stage = self.spec.name,
            partitions = ?parts.keys().collect::<Vec<_>>(),
            restore_ms = started.elapsed().as_millis() as u64,
            "partitions assigned"
        );
        Ok(())
    }

    /// Reads changelog partition `p` to its end into the processor; returns the input
    /// positions it names once they agree with the group's committed offsets.
    fn restore(&mut self, p: i32) -> Result<Positions, StageError> {
        let changelog = self.spec.changelog.clone();
        let err = |why: String| StageError::Restore {
            topic: changelog.clone(),
            partition: p,
            why,
        };
        self.processor.drop_partition(p);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.spec.changelog, p, Offset::Beginning)?;
        self.reader.assign(&tpl)?;
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        let mut in_log: Option<Positions> = None;
        let mut records = 0u64;
        let mut at_end = false;
        let positions = loop {
            if Instant::now() > deadline {
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
                    continue;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => at_end = true,
                Some(Err(e)) => tracing::warn!(error = %e, "changelog read error"),
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
        self.processor.restored(p);
        tracing::debug!(
            stage = self.spec.name,
            partition = p,
            records,
            ?positions,
            "partition restored"
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

/// Retries a transactional call while librdkafka says it is retriable.
fn retry(mut f: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let started = Instant::now();
    loop {
        match f() {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && started.elapsed() < Duration::from_secs(120) =>
            {
                tracing::warn!(error = %e, "transactional call retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
