//! ClickHouse sink: the committed output topics (one per table, see [`tables`]) in, as its
//! own consumer group; batched RowBinary inserts out, each row exactly once.
//!
//! Exactly once without merges: every row keeps its output-topic partition and offset. When a
//! partition is assigned (the stage runtime's rule: restore, then assign; see
//! docs/design.md "The sink and the stage runtime"), the sink asks ClickHouse for the highest offset it holds and the
//! ids of recent rows ([`cursor`]); older messages are skipped, and a repeated id (a replay of
//! the rating pipeline) is not inserted again. Offsets are committed only after the insert
//! succeeded ([`insert`]: transient faults retried forever, refused rows dead-lettered).
//!
//! This file is the loop: one generic pass over the tables' [`table::Lane`]s; it never names
//! a table.

pub mod cursor;
pub mod errors;
pub mod insert;
pub mod ledger_rows;
pub mod line_scan;
pub mod migrate;
pub mod rows;
pub mod table;
pub mod tables;
#[cfg(test)]
mod tests_line_scan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{ClickHouseConfig, Config};
use crate::health::{Health, now_ms};
use crate::kafka;
use crate::metrics::METRICS;
use crate::rejection::{DeadLetter, RejectReason, Rejection};
use crate::stage::{Positions, StageContext};
use cursor::{Cursor, Resumed};
use insert::{FIRST_BACKOFF, Inserter, next_backoff};
use rows::Source;
use table::{Accepted, Lane};

/// Creates the sink's labelled series (one per table; the lag one per configured output
/// topic, partition 0; the stage runtime's with `stage="sink"`), so dashboards and alert
/// rules see zeros.
pub fn init_labels(topics: &crate::config::TopicsConfig) {
    let m = &*METRICS;
    for t in tables::NAMES {
        m.sink_rows.with_label_values(&[t]);
        m.sink_retries.with_label_values(&[t]);
        m.sink_duplicates.with_label_values(&[t]);
        m.sink_insert_latency.with_label_values(&[t]);
        m.sink_batch_rows.with_label_values(&[t]);
    }
    for l in tables::lanes(topics) {
        m.sink_lag.with_label_values(&[l.topic(), "0"]);
    }
    // The stage runtime's series the sink feeds (no transactions, changelog or producer).
    let st = &m.stage;
    st.input_messages.with_label_values(&[STAGE]);
    st.commit_seconds.with_label_values(&[STAGE]);
    st.restore_seconds.with_label_values(&[STAGE]);
    st.last_commit.with_label_values(&[STAGE]);
    st.consumer_lag.with_label_values(&[STAGE, "0"]);
}

/// A ClickHouse client from configuration (password from env or file, never logged).
pub fn client(cfg: &ClickHouseConfig) -> anyhow::Result<clickhouse::Client> {
    let mut c = clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_validation(cfg.validation);
    if let Some(p) = cfg.resolved_password()? {
        c = c.with_password(p);
    }
    Ok(c)
}

/// The sink task: one loop over every table's lane.
pub struct Sink {
    cfg: Config,
    consumer: Arc<StreamConsumer<StageContext>>,
    producer: FutureProducer,
    health: Arc<Health>,
    inserter: Inserter,
    lanes: Vec<Box<dyn Lane>>,
    /// Resume cursor per (lane index, output partition), loaded when first seen.
    cursors: HashMap<(usize, i32), Cursor>,
    /// Messages read per lane since its last write (`usage_agg_stage_input_messages_total`).
    read: Vec<u64>,
    /// Assigned partitions whose resume point is not loaded yet (topic, partition).
    unresumed: Vec<(String, i32)>,
}

/// The sink's name in the stage runtime's metrics (`usage_agg_stage_*{stage="sink"}`).
const STAGE: &str = "sink";

impl Sink {
    pub fn new(cfg: &Config, health: Arc<Health>) -> anyhow::Result<Sink> {
        let mut c = kafka::group_config(
            cfg,
            &cfg.kafka.sink_group_id,
            "sink",
            &[
                ("statistics.interval.ms", "1000"),
                ("queued.max.messages.kbytes", "65536"),
            ],
        );
        // Eager assignors only: `StageContext` revokes everything, then assigns whole.
        c.set("partition.assignment.strategy", "range,roundrobin");
        let consumer: StreamConsumer<StageContext> =
            c.create_with_context(StageContext::new(STAGE))?;
        let lanes = tables::lanes(&cfg.topics);
        let lanes_len = lanes.len();
        let topics: Vec<&str> = lanes.iter().map(|l| l.topic()).collect();
        consumer.subscribe(&topics)?;
        health.sink_enabled.store(true, Ordering::Relaxed);
        Ok(Sink {
            inserter: Inserter {
                ch: client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database),
                clickhouse: cfg.clickhouse.clone(),
                health: health.clone(),
                max_backoff: cfg.sink.max_backoff,
            },
            producer: kafka::producer_config(cfg).create()?,
            cfg: cfg.clone(),
            consumer: Arc::new(consumer),
            health,
            lanes,
            cursors: HashMap::new(),
            read: vec![0; lanes_len],
            unresumed: Vec::new(),
        })
    }

    fn lane_of(&self, topic: &str) -> Option<usize> {
        self.lanes.iter().position(|l| l.topic() == topic)
    }

    /// Runs until the token is cancelled; flushes and commits on the way out.
    pub async fn run(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_ping = Instant::now() - Duration::from_secs(60);
        let consumer = self.consumer.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                m = consumer.recv() => {
                    match m {
                        Ok(m) => {
                            self.rebalance().await?;
                            self.accept(&m).await;
                        }
                        // Fatal (e.g. `FencedInstanceId` after the group coordinator's node
                        // was SIGKILLed): this consumer never delivers again; the process
                        // exits and its supervisor restarts it from the committed offsets.
                        Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_)) => {
                            anyhow::bail!("sink consumer failed for good: {e}")
                        }
                        Err(e) => tracing::warn!(error = %e, "sink consumer error"),
                    }
                }
                _ = tick.tick() => {
                    self.rebalance().await?;
                    if last_ping.elapsed() > Duration::from_secs(2) {
                        let r = self.inserter.ch.query("SELECT 1").execute().await;
                        self.health.clickhouse(
                            r.map_err(|e| errors::describe(&self.cfg.clickhouse, &e)),
                        );
                        last_ping = Instant::now();
                        self.update_lag();
                    }
                }
            }
            self.flush_due(false).await?;
        }
        self.flush_due(true).await?;
        Ok(())
    }

    /// The stage runtime's rebalance rule (`crate::stage`), with ClickHouse as the state: a
    /// revocation forgets every cursor and buffered row (not committed, so the next owner
    /// reads them again); an assignment first loads each partition's resume point from
    /// ClickHouse (retried while it is down), then assigns at the group's committed offsets.
    async fn rebalance(&mut self) -> anyhow::Result<()> {
        if !self.consumer.context().flagged.load(Ordering::Acquire) {
            return Ok(());
        }
        let pending = self.consumer.context().take();
        if pending.revoked {
            for ((lane, p), _) in std::mem::take(&mut self.cursors) {
                self.lanes[lane].drop_partition(p);
                METRICS
                    .stage
                    .consumer_lag
                    .with_label_values(&[STAGE, &p.to_string()])
                    .set(0);
            }
            self.read.iter_mut().for_each(|n| *n = 0);
            self.consumer.context().clear_lag();
        }
        let assigned: Option<Vec<(String, i32)>> = pending.assign.map(|tpl| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        });
        if let Some(mut parts) = assigned {
            // In the tables' order (usage lines and debits first), partition by partition.
            parts.sort_by_key(|(t, p)| (self.lane_of(t).unwrap_or(usize::MAX), *p));
            self.unresumed = parts.clone();
            for (topic, p) in &parts {
                if let Some(lane) = self.lane_of(topic) {
                    let started = Instant::now();
                    self.cursor(lane, *p).await;
                    self.unresumed.retain(|(t, q)| (t, q) != (topic, p));
                    METRICS
                        .stage
                        .restore_seconds
                        .with_label_values(&[STAGE])
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            let mut tpl = TopicPartitionList::new();
            for (topic, p) in &parts {
                tpl.add_partition(topic, *p);
            }
            self.consumer.assign(&tpl)?;
            tracing::info!(
                stage = STAGE,
                partitions = tpl.count(),
                "partitions assigned"
            );
        }
        Ok(())
    }

    /// Lag per (topic, partition) under the sink's names, per partition number (summed
    /// over the topics) under the stage runtime's, and in all into [`Health`].
    fn update_lag(&self) {
        let ctx = self.consumer.context();
        let mut total = 0;
        let mut owned: BTreeMap<i32, Positions> = BTreeMap::new();
        for ((lane, p), c) in &self.cursors {
            let topic = self.lanes[*lane].topic();
            owned
                .entry(*p)
                .or_default()
                .insert(topic.to_string(), c.next);
            if let Some(lag) = ctx.topic_lag(topic, *p, c.next) {
                total += lag;
                METRICS
                    .sink_lag
                    .with_label_values(&[topic, &p.to_string()])
                    .set(lag);
            }
        }
        for (p, pos) in &owned {
            METRICS
                .stage
                .consumer_lag
                .with_label_values(&[STAGE, &p.to_string()])
                .set(ctx.lag(*p, pos));
        }
        self.health.sink_lag.store(total, Ordering::Relaxed);
    }

    /// The lag of the partitions whose resume point is not known yet (assigned, waiting for
    /// ClickHouse): each one's high watermark minus the group's committed offset (or its low
    /// watermark when nothing is committed), per partition and summed into [`Health`].
    fn waiting_lag(&self) {
        let c = &self.consumer;
        let t = Duration::from_secs(5);
        let mut total = 0;
        for (topic, p) in &self.unresumed {
            let lag = tokio::task::block_in_place(|| {
                let (lo, hi) = c.fetch_watermarks(topic, *p, t).ok()?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, *p);
                let committed = c.committed_offsets(tpl, t).ok()?;
                let from = match committed.find_partition(topic, *p)?.offset() {
                    Offset::Offset(o) => o,
                    _ => lo,
                };
                Some(waiting(hi, from))
            });
            if let Some(lag) = lag {
                total += lag;
                METRICS
                    .sink_lag
                    .with_label_values(&[topic, &p.to_string()])
                    .set(lag);
            }
        }
        self.health.sink_lag.store(total, Ordering::Relaxed);
    }

    /// The partition's cursor, loaded from ClickHouse when first seen (retried until
    /// ClickHouse answers).
    async fn cursor(&mut self, lane: usize, p: i32) -> &mut Cursor {
        if !self.cursors.contains_key(&(lane, p)) {
            let cursor = self.load_cursor(lane, p).await;
            self.cursors.insert((lane, p), cursor);
        }
        self.cursors.get_mut(&(lane, p)).expect("inserted")
    }

    async fn load_cursor(&self, lane: usize, p: i32) -> Cursor {
        let l = &self.lanes[lane];
        let window = self.cfg.sink.dedupe_window_rows;
        let mut backoff = FIRST_BACKOFF;
        let held = loop {
            match cursor::held(&self.inserter.ch, l.name(), l.id_sql(), p, window).await {
                Ok(h) => break h,
                Err(e) => {
                    let why = errors::describe(&self.cfg.clickhouse, &e);
                    tracing::warn!(
                        table = l.name(),
                        partition = p,
                        "cannot read resume point from clickhouse; retrying: {why}"
                    );
                    self.health.clickhouse(Err(why));
                    // Counted and measured here too: while the resume point cannot be read,
                    // nothing is inserted, and the rows wait in Kafka (SinkInsertRetries,
                    // SinkLag).
                    METRICS.sink_retries.with_label_values(&[l.name()]).inc();
                    self.waiting_lag();
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff, self.cfg.sink.max_backoff);
                }
            }
        };
        let topic = l.topic().to_string();
        let consumer = self.consumer.clone();
        let high = tokio::task::block_in_place(|| {
            consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .map(|(_, h)| h)
        })
        .ok();
        let (cursor, resumed) = Cursor::resume(held, high, window);
        if let Resumed::Recreated {
            high_watermark,
            held,
        } = resumed
        {
            tracing::error!(
                topic,
                partition = p,
                high_watermark,
                clickhouse_offset = held,
                "output topic was recreated (its offsets restarted); resuming from its start"
            );
        }
        tracing::info!(
            table = l.name(),
            partition = p,
            held_up_to = cursor.held_up_to,
            recent = cursor.recent.len(),
            "sink partition resumed from clickhouse"
        );
        cursor
    }

    /// Offers one message to its table: skipped if ClickHouse holds it, dropped if its id
    /// was seen, dead-lettered if it cannot become a row, else buffered.
    async fn accept(&mut self, m: &BorrowedMessage<'_>) {
        let Some(lane) = self.lane_of(m.topic()) else {
            return;
        };
        let (p, o) = (m.partition(), m.offset());
        if !self.cursor(lane, p).await.admit(o) {
            return;
        }
        let payload = m.payload().unwrap_or_default();
        let src = Source {
            partition: p,
            offset: o,
            ingested_at: (now_ms() / 1000) as u32,
        };
        self.read[lane] += 1;
        let cursor = self.cursors.get_mut(&(lane, p)).expect("cursor loaded");
        match self.lanes[lane].accept(cursor, payload, src, Instant::now()) {
            Ok(Accepted::Buffered) => {}
            Ok(Accepted::Duplicate) => {
                METRICS
                    .sink_duplicates
                    .with_label_values(&[self.lanes[lane].name()])
                    .inc();
            }
            Err(e) => self.reject(lane, p, o, payload, &e.to_string()).await,
        }
    }

    /// Sends an output message the sink cannot store to the dead-letter topic.
    async fn reject(&self, lane: usize, p: i32, o: i64, bytes: &[u8], why: &str) {
        let l = &self.lanes[lane];
        METRICS
            .events_rejected
            .with_label_values(&["sink_rejected"])
            .inc();
        tracing::error!(
            table = l.name(),
            partition = p,
            offset = o,
            error = why,
            "row refused by the sink; dead-lettered"
        );
        if !l.dead_letter_refused() {
            return; // never loop a dead letter back onto its own topic
        }
        let dl = DeadLetter::new(
            &Rejection::new(RejectReason::SinkRejected, why),
            bytes,
            l.topic(),
            p,
            o,
        );
        let payload = serde_json::to_vec(&dl).expect("dead letter serializes");
        let key = dl.id();
        if let Err((e, _)) = self
            .producer
            .send(
                FutureRecord::to(&self.cfg.topics.dead_letter)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
        {
            tracing::error!(error = %e, "cannot dead-letter a refused row");
        }
    }

    /// Writes every table whose batch is due (all of them when `force`).
    async fn flush_due(&mut self, force: bool) -> anyhow::Result<()> {
        let now = Instant::now();
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].is_due(&self.cfg.sink, now, force) {
                self.write(lane).await?;
            }
        }
        Ok(())
    }

    /// Inserts a table's batch, dead-letters what ClickHouse refused, then commits every
    /// offset read from the table's topic so far (inserted or skipped).
    async fn write(&mut self, lane: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        let written = self.lanes[lane].write(&self.inserter).await;
        let name = self.lanes[lane].name();
        if let Some(w) = written {
            for r in &w.refused {
                self.reject(lane, r.partition, r.offset, &r.row, &r.error)
                    .await;
            }
            METRICS
                .sink_insert_latency
                .with_label_values(&[name])
                .observe(w.latency.as_secs_f64());
            METRICS
                .sink_batch_rows
                .with_label_values(&[name])
                .observe(w.rows as f64);
            METRICS
                .sink_rows
                .with_label_values(&[name])
                .inc_by(w.rows as u64);
            METRICS.sink_last_insert.set(now_ms() as f64 / 1000.0);
        }
        let topic = self.lanes[lane].topic();
        let mut tpl = TopicPartitionList::new();
        for ((l, p), c) in &self.cursors {
            if *l == lane && c.next > 0 {
                tpl.add_partition_offset(topic, *p, Offset::Offset(c.next))?;
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "sink offset commit failed; resume uses clickhouse offsets");
        }
        self.health
            .sink_last_progress_ms
            .store(now_ms(), Ordering::Relaxed);
        let m = &METRICS.stage;
        m.input_messages
            .with_label_values(&[STAGE])
            .inc_by(std::mem::take(&mut self.read[lane]));
        m.commit_seconds
            .with_label_values(&[STAGE])
            .observe(started.elapsed().as_secs_f64());
        m.last_commit
            .with_label_values(&[STAGE])
            .set(now_ms() as f64 / 1000.0);
        Ok(())
    }
}

/// Messages waiting in a partition read from `from` up to the high watermark `hi`.
fn waiting(hi: i64, from: i64) -> i64 {
    (hi - from).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_series_carry_the_configured_topics() {
        let mut cfg = Config::default();
        cfg.prefix_names("lagtest-");
        init_labels(&cfg.topics);
        let topics: Vec<String> = METRICS
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "usage_agg_sink_lag_messages")
            .flat_map(|f| f.get_metric().to_vec())
            .flat_map(|m| {
                m.get_label()
                    .iter()
                    .filter(|l| l.name() == "topic")
                    .map(|l| l.value().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(topics.contains(&"lagtest-debits".to_string()), "{topics:?}");
        assert!(
            topics.contains(&"lagtest-priced_usage".to_string()),
            "{topics:?}"
        );
        // No unprefixed series (this test process never configures unprefixed topics).
        assert!(!topics.contains(&"debits".to_string()), "{topics:?}");
    }

    #[test]
    fn waiting_rows_count_from_the_committed_offset() {
        assert_eq!(waiting(1200, 200), 1000);
        assert_eq!(waiting(5, 7), 0);
    }
}
