//! ClickHouse sink: the committed output topics (one per table, see [`tables`]) in, as its
//! own consumer group; batched RowBinary inserts out, each row exactly once. A stage on the
//! stage runtime ([`crate::stage`]) under [`Guarantee::StoreThenOffsets`]: ClickHouse is its
//! store (docs/design.md, "The sink and the stage runtime").
//!
//! Exactly once without merges: every row keeps its output-topic partition and offset. When a
//! partition is assigned ([`Processor::resume`], before the runtime assigns it), the sink asks
//! ClickHouse for the highest offset it holds and the ids of recent rows ([`cursor`]); older
//! messages are skipped, and a repeated id (a replay of the rating pipeline) is not inserted
//! again. The runtime commits offsets only after the insert succeeded ([`Processor::flush`];
//! [`insert`]: transient faults retried forever, refused rows dead-lettered).
//!
//! This file is the processor: one generic pass over the tables' [`table::Lane`]s; it never
//! names a table.

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
mod tests_ledger_rows;
#[cfg(test)]
mod tests_line_scan;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::{ClickHouseConfig, Config};
use crate::health::{Health, now_ms};
use crate::metrics::METRICS;
use crate::rejection::{DeadLetter, RejectReason, Rejection};
use crate::stage::{
    Changelog, Guarantee, InputMsg, InputPartitions, Outputs, Positions, Processor, Stage,
    StageSpec,
};
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

/// Runs the sink on the stage runtime until `stop` is cancelled (a thread's body; `rt` runs
/// the ClickHouse client's futures).
pub fn run(
    cfg: &Config,
    health: Arc<Health>,
    rt: Handle,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let sink = Sink::new(cfg, health, rt, stop.clone())?;
    Stage::new(cfg, spec(cfg), sink)?.run(stop)?;
    Ok(())
}

/// The sink's stage: every table's topic, resumed in the tables' order (usage lines and
/// debits first); ClickHouse is the store ([`Guarantee::StoreThenOffsets`]); the ClickHouse
/// ping every 2 s is its punctuation. Not judged by the stall watchdog (no `health`): it
/// waits out a ClickHouse outage by design.
pub fn spec(cfg: &Config) -> StageSpec {
    StageSpec {
        name: STAGE,
        group_id: cfg.kafka.sink_group_id.clone(),
        inputs: tables::lanes(&cfg.topics)
            .iter()
            .map(|l| l.topic().to_string())
            .collect(),
        guarantee: Guarantee::StoreThenOffsets,
        commit_interval: cfg.sink.batch_age,
        max_batch: usize::MAX,
        punctuate_every: Some(PING_EVERY),
        consumer: vec![("queued.max.messages.kbytes", "65536".into())],
        health: None,
    }
}

/// How often the sink asks ClickHouse `SELECT 1` for its readiness.
const PING_EVERY: Duration = Duration::from_secs(2);

/// The sink's processor: one pass over every table's lane; ClickHouse is its state.
pub struct Sink {
    cfg: Config,
    rt: Handle,
    stop: CancellationToken,
    health: Arc<Health>,
    inserter: Inserter,
    lanes: Vec<Box<dyn Lane>>,
    /// Resume cursor per (lane index, output partition), loaded at assignment.
    cursors: HashMap<(usize, i32), Cursor>,
}

/// The sink's name in the stage runtime's metrics (`usage_agg_stage_*{stage="sink"}`).
const STAGE: &str = "sink";

impl Sink {
    pub fn new(
        cfg: &Config,
        health: Arc<Health>,
        rt: Handle,
        stop: CancellationToken,
    ) -> anyhow::Result<Sink> {
        health.sink_enabled.store(true, Ordering::Relaxed);
        Ok(Sink {
            inserter: Inserter {
                ch: client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database),
                clickhouse: cfg.clickhouse.clone(),
                health: health.clone(),
                max_backoff: cfg.sink.max_backoff,
            },
            cfg: cfg.clone(),
            rt,
            stop,
            health,
            lanes: tables::lanes(&cfg.topics),
            cursors: HashMap::new(),
        })
    }

    fn lane_of(&self, topic: &str) -> Option<usize> {
        self.lanes.iter().position(|l| l.topic() == topic)
    }

    fn until_stopped<F: Future>(&self, fut: F) -> Option<F::Output> {
        until_stopped(&self.rt, &self.stop, self.cfg.pipeline.drain_timeout, fut)
    }

    /// Reads what ClickHouse holds of partition `p` of lane `lane` (retried while it is
    /// down, the waiting lag reported between tries) into the partition's cursor.
    fn load_cursor(
        &self,
        lane: usize,
        p: i32,
        inputs: &InputPartitions<'_>,
    ) -> Result<Cursor, String> {
        let l = &self.lanes[lane];
        let window = self.cfg.sink.dedupe_window_rows;
        let mut backoff = FIRST_BACKOFF;
        let held = loop {
            let read = cursor::held(&self.inserter.ch, l.name(), l.id_sql(), p, window);
            let e = match self.until_stopped(read) {
                Some(Ok(h)) => break h,
                Some(Err(e)) => e,
                None => return Err("stopping while ClickHouse was read".into()),
            };
            let why = errors::describe(&self.cfg.clickhouse, &e);
            tracing::warn!(
                table = l.name(),
                partition = p,
                "cannot read resume point from clickhouse; retrying: {why}"
            );
            self.health.clickhouse(Err(why));
            // Counted and measured here too: while the resume point cannot be read, nothing
            // is inserted, and the rows wait in Kafka (SinkInsertRetries, SinkLag).
            METRICS.sink_retries.with_label_values(&[l.name()]).inc();
            let mut total = 0;
            for (topic, q, lag) in inputs.waiting() {
                total += lag;
                METRICS
                    .sink_lag
                    .with_label_values(&[&topic, &q.to_string()])
                    .set(lag);
            }
            self.health.sink_lag.store(total, Ordering::Relaxed);
            if self.stop.is_cancelled() {
                return Err("stopping while ClickHouse was unreachable".into());
            }
            std::thread::sleep(backoff);
            backoff = next_backoff(backoff, self.cfg.sink.max_backoff);
        };
        let topic = l.topic();
        let (cursor, resumed) = Cursor::resume(held, inputs.high_watermark(topic, p), window);
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
        Ok(cursor)
    }

    /// Sends an output message the sink cannot store to the dead-letter topic.
    fn reject(&self, lane: usize, p: i32, o: i64, bytes: &[u8], why: &str, out: &mut Outputs) {
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
        out.send(&self.cfg.topics.dead_letter, dl.id().as_bytes(), &payload);
    }

    /// Inserts a table's batch (dead-lettering what ClickHouse refused); false if the
    /// process stopped first (nothing of it is committed).
    fn write(&mut self, lane: usize, out: &mut Outputs) -> bool {
        let grace = self.cfg.pipeline.drain_timeout;
        let write = self.lanes[lane].write(&self.inserter);
        let Some(written) = until_stopped(&self.rt, &self.stop, grace, write) else {
            return false;
        };
        let name = self.lanes[lane].name();
        if let Some(w) = written {
            for r in &w.refused {
                self.reject(lane, r.partition, r.offset, &r.row, &r.error, out);
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
        true
    }
}

impl Processor for Sink {
    /// Offers one message to its table: skipped if ClickHouse holds it, dropped if its id
    /// was seen, dead-lettered if it cannot become a row, else buffered.
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        let Some(lane) = self.lane_of(msg.topic) else {
            return;
        };
        let (p, o) = (msg.partition, msg.offset);
        let Some(cursor) = self.cursors.get_mut(&(lane, p)) else {
            return; // not resumed: the process is stopping
        };
        if !cursor.admit(o) {
            return;
        }
        let src = Source {
            partition: p,
            offset: o,
            ingested_at: (now_ms() / 1000) as u32,
        };
        match self.lanes[lane].accept(cursor, msg.payload, src, Instant::now()) {
            Ok(Accepted::Buffered) => {}
            Ok(Accepted::Duplicate) => {
                METRICS
                    .sink_duplicates
                    .with_label_values(&[self.lanes[lane].name()])
                    .inc();
            }
            Err(e) => self.reject(lane, p, o, msg.payload, &e.to_string(), out),
        }
    }

    /// ClickHouse's readiness (`SELECT 1`).
    fn punctuate(&mut self, _now_ms: u64, _out: &mut Outputs<'_>) {
        let ping = self.inserter.ch.query("SELECT 1").execute();
        if let Some(r) = self.until_stopped(ping) {
            let r = r.map_err(|e| errors::describe(&self.cfg.clickhouse, &e));
            self.health.clickhouse(r);
        }
    }

    /// Never called: the state is ClickHouse's, not a changelog.
    fn changes(&mut self, _partition: i32, _log: &mut Changelog<'_>) {}

    fn restore(&mut self, _: i32, _: &[u8], _: Option<&[u8]>) -> Result<(), String> {
        Err("the ClickHouse sink has no changelog".into())
    }

    fn restored(&mut self, _: i32, _: &Positions) -> Result<(), String> {
        Err("the ClickHouse sink has no changelog".into())
    }

    /// A revocation forgets the partition's cursors and buffered rows (not committed, so the
    /// next owner reads them again).
    fn drop_partition(&mut self, partition: i32) {
        for l in &mut self.lanes {
            l.drop_partition(partition);
        }
        self.cursors.retain(|(_, p), _| *p != partition);
    }

    /// The partition's cursor, loaded from ClickHouse (retried until ClickHouse answers).
    fn resume(
        &mut self,
        topic: &str,
        partition: i32,
        inputs: &InputPartitions<'_>,
    ) -> Result<i64, String> {
        let lane = self
            .lane_of(topic)
            .ok_or_else(|| format!("no table is written from topic {topic}"))?;
        let cursor = self.load_cursor(lane, partition, inputs)?;
        let next = cursor.next;
        self.cursors.insert((lane, partition), cursor);
        Ok(next)
    }

    /// Writes every table whose batch is due (all of them when `force`); names every offset
    /// read from a written table's topic so far (inserted or skipped).
    fn flush(&mut self, force: bool, out: &mut Outputs<'_>) -> Vec<(String, i32, i64)> {
        let now = Instant::now();
        let mut stored = Vec::new();
        for lane in 0..self.lanes.len() {
            if !self.lanes[lane].is_due(&self.cfg.sink, now, force) {
                continue;
            }
            if !self.write(lane, out) {
                break;
            }
            let topic = self.lanes[lane].topic();
            for ((l, p), c) in &self.cursors {
                if *l == lane && c.next > 0 {
                    stored.push((topic.to_string(), *p, c.next));
                }
            }
            self.health
                .sink_last_progress_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        stored
    }

    /// Lag per (topic, partition) under the sink's names, in all into [`Health`].
    fn lag(&mut self, lags: &[(&str, i32, Option<i64>)]) {
        let mut total = 0;
        for (topic, p, lag) in lags {
            if let Some(lag) = lag {
                total += lag;
                METRICS
                    .sink_lag
                    .with_label_values(&[*topic, &p.to_string()])
                    .set(*lag);
            }
        }
        self.health.sink_lag.store(total, Ordering::Relaxed);
    }
}

/// Runs `fut` on `rt` to its end, or, once `stop` is cancelled, for at most `grace` more
/// (`None`: given up; what it had not written is read again on restart).
fn until_stopped<F: Future>(
    rt: &Handle,
    stop: &CancellationToken,
    grace: Duration,
    fut: F,
) -> Option<F::Output> {
    rt.block_on(async move {
        tokio::select! {
            out = fut => Some(out),
            _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => None,
        }
    })
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
}
