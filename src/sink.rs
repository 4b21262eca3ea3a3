//! ClickHouse sink: the committed output topics (priced_usage, debits, dead_letter) in, as its
//! own consumer group; batched RowBinary inserts out, each row exactly once.
//!
//! Exactly once without merges: every row keeps its output-topic partition and offset. When a
//! partition is first seen, the sink asks ClickHouse for the highest offset it holds and the
//! ids of recent rows; older messages are skipped, and a repeated id (a replay of the rating
//! pipeline) is not inserted again. Offsets are committed only after the insert succeeded.

pub mod migrate;
pub mod rows;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::{ClickHouseConfig, Config};
use crate::health::{Health, now_ms};
use crate::kafka;
use crate::ledger::rows::LedgerRow;
use crate::metrics::METRICS;
use crate::rejection::{DeadLetter, RejectReason, Rejection};
use rows::{DeadLetterRow, DebitRow, Source, TransactionRow};

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

/// How an insert failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Network, timeouts, overload: retry with backoff.
    Transient,
    /// The rows themselves are refused: not retried; isolated and dead-lettered.
    Data,
}

/// Classifies a ClickHouse error by its server code.
pub fn classify(e: &clickhouse::error::Error) -> FailureKind {
    use clickhouse::error::Error as E;
    match e {
        E::BadResponse(msg) => {
            let code = msg
                .split("Code: ")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse::<u32>().ok());
            match code {
                // CANNOT_PARSE_*, TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, INCORRECT_DATA, TOO_LARGE_STRING_SIZE,
                // DECIMAL_OVERFLOW, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
                Some(6 | 27 | 38 | 41 | 53 | 69 | 72 | 117 | 131 | 407 | 321) => FailureKind::Data,
                _ => FailureKind::Transient,
            }
        }
        E::SchemaMismatch(_) | E::Custom(_) => FailureKind::Data,
        _ => FailureKind::Transient,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Transactions,
    Debits,
    DeadLetters,
    /// Credits ledger rows from the balances topic (crate::ledger::rows).
    Ledger,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Transactions => "usage_transactions",
            Table::Debits => "debits",
            Table::DeadLetters => "dead_letters",
            Table::Ledger => "ledger",
        }
    }
    fn id_column(self) -> &'static str {
        match self {
            // PricedLine::line_id: event ids are scoped by account and execution.
            Table::Transactions => "concat(account_id, '\\n', execution_id, '\\n', event_id)",
            Table::Debits => "debit_id",
            Table::DeadLetters => "dead_letter_id",
            Table::Ledger => "entry_id",
        }
    }
}

/// Ids of the last `cap` rows of one output partition.
struct RecentIds {
    cap: usize,
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl RecentIds {
    fn new(cap: usize) -> Self {
        RecentIds {
            cap,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
    /// True if new (and remembers it).
    fn insert(&mut self, id: &str) -> bool {
        let h = crate::event::id_hash(id);
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

struct Cursor {
    /// Highest offset already in ClickHouse when the partition was first seen.
    held_up_to: i64,
    recent: RecentIds,
    next: i64,
}

struct Pending<R> {
    rows: Vec<R>,
    sources: Vec<(i32, i64)>,
    bytes: usize,
    since: Option<Instant>,
}

impl<R> Default for Pending<R> {
    fn default() -> Self {
        Pending {
            rows: Vec::new(),
            sources: Vec::new(),
            bytes: 0,
            since: None,
        }
    }
}

/// Consumer context: revoked partitions are dropped (their buffered rows too) before they
/// are handed to another member; watermarks feed the lag metric.
struct SinkContext {
    revoked: Mutex<Vec<(String, i32)>>,
    hi: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for SinkContext {
    fn stats(&self, stats: Statistics) {
        let mut hi = self.hi.lock().expect("hi lock");
        for (t, ts) in &stats.topics {
            for (p, s) in &ts.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    hi.insert((t.clone(), *p), s.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let mut rv = self.revoked.lock().expect("revoked lock");
            for e in tpl.elements() {
                rv.push((e.topic().to_string(), e.partition()));
            }
        }
    }
}

/// The sink task.
pub struct Sink {
    cfg: Config,
    ch: clickhouse::Client,
    consumer: Arc<StreamConsumer<SinkContext>>,
    producer: FutureProducer,
    health: Arc<Health>,
    cursors: HashMap<(Table, i32), Cursor>,
    tx: Pending<TransactionRow>,
    debits: Pending<DebitRow>,
    dead: Pending<DeadLetterRow>,
    ledger: Pending<LedgerRow>,
}

impl Sink {
    pub fn new(cfg: &Config, health: Arc<Health>) -> anyhow::Result<Sink> {
        let c = kafka::group_config(
            cfg,
            &cfg.kafka.sink_group_id,
            "sink",
            &[
                ("statistics.interval.ms", "1000"),
                ("queued.max.messages.kbytes", "65536"),
            ],
        );
        let consumer: StreamConsumer<SinkContext> = c.create_with_context(SinkContext {
            revoked: Mutex::new(Vec::new()),
            hi: Mutex::new(HashMap::new()),
        })?;
        let t = &cfg.topics;
        consumer.subscribe(&[&t.priced_usage, &t.debits, &t.dead_letter, &t.balances])?;
        health.sink_enabled.store(true, Ordering::Relaxed);
        Ok(Sink {
            ch: client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database),
            producer: kafka::producer_config(cfg).create()?,
            cfg: cfg.clone(),
            consumer: Arc::new(consumer),
            health,
            cursors: HashMap::new(),
            tx: Pending::default(),
            debits: Pending::default(),
            dead: Pending::default(),
            ledger: Pending::default(),
        })
    }

    fn table_of(&self, topic: &str) -> Option<Table> {
        let t = &self.cfg.topics;
        if topic == t.priced_usage {
            Some(Table::Transactions)
        } else if topic == t.debits {
            Some(Table::Debits)
        } else if topic == t.dead_letter {
            Some(Table::DeadLetters)
        } else if topic == t.balances {
            Some(Table::Ledger)
        } else {
            None
        }
    }

    fn topic_of(&self, table: Table) -> &str {
        let t = &self.cfg.topics;
        match table {
            Table::Transactions => &t.priced_usage,
            Table::Debits => &t.debits,
            Table::DeadLetters => &t.dead_letter,
            Table::Ledger => &t.balances,
        }
    }

    /// Runs until the token is cancelled; flushes and commits on the way out.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
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
                            let (topic, p, o) = (m.topic().to_string(), m.partition(), m.offset());
                            self.apply_revokes();
                            self.accept(&m, &topic, p, o).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "sink consumer error"),
                    }
                }
                _ = tick.tick() => {
                    self.apply_revokes();
                    if last_ping.elapsed() > Duration::from_secs(2) {
                        let ok = self.ch.query("SELECT 1").execute().await.is_ok();
                        self.health.clickhouse_ok.store(ok, Ordering::Relaxed);
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

    fn apply_revokes(&mut self) {
        let revoked: Vec<(String, i32)> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .expect("revoked lock"),
        );
        for (topic, p) in revoked {
            if let Some(t) = self.table_of(&topic) {
                self.cursors.remove(&(t, p));
                // Buffered rows of a revoked partition are dropped: they are not committed,
                // so the next owner reads them again.
                match t {
                    Table::Transactions => drop_partition(&mut self.tx, p),
                    Table::Debits => drop_partition(&mut self.debits, p),
                    Table::DeadLetters => drop_partition(&mut self.dead, p),
                    Table::Ledger => drop_partition(&mut self.ledger, p),
                }
            }
        }
    }

    fn update_lag(&self) {
        let hi = self.consumer.context().hi.lock().expect("hi lock").clone();
        let mut total = 0;
        for ((topic, p), h) in hi {
            let Some(t) = self.table_of(&topic) else {
                continue;
            };
            if let Some(c) = self.cursors.get(&(t, p)) {
                let lag = (h - c.next).max(0);
                total += lag;
                METRICS
                    .sink_lag
                    .with_label_values(&[&topic, &p.to_string()])
                    .set(lag);
            }
        }
        self.health.sink_lag.store(total, Ordering::Relaxed);
    }

    async fn cursor(&mut self, table: Table, p: i32) -> &mut Cursor {
        if !self.cursors.contains_key(&(table, p)) {
            let mut backoff = Duration::from_millis(100);
            let cursor = loop {
                match self.load_cursor(table, p).await {
                    Ok(c) => break c,
                    Err(e) => {
                        self.health.clickhouse_ok.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, table = table.name(), partition = p, "cannot read resume point from clickhouse; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.cfg.sink.max_backoff);
                    }
                }
            };
            tracing::info!(
                table = table.name(),
                partition = p,
                held_up_to = cursor.held_up_to,
                recent = cursor.recent.order.len(),
                "sink partition resumed from clickhouse"
            );
            self.cursors.insert((table, p), cursor);
        }
        self.cursors.get_mut(&(table, p)).expect("inserted")
    }

    async fn load_cursor(&self, table: Table, p: i32) -> Result<Cursor, clickhouse::error::Error> {
        let (max, n): (i64, u64) = self
            .ch
            .query(&format!(
                "SELECT max(src_offset), count() FROM {} WHERE src_partition = ?",
                table.name()
            ))
            .bind(p)
            .fetch_one()
            .await?;
        let held_up_to = if n == 0 { -1 } else { max };
        let window = self.cfg.sink.dedupe_window_rows;
        let ids: Vec<String> = if n == 0 {
            Vec::new()
        } else {
            self.ch
                .query(&format!(
                    "SELECT {} FROM {} WHERE src_partition = ? AND src_offset > ? ORDER BY src_offset",
                    table.id_column(),
                    table.name()
                ))
                .bind(p)
                .bind(held_up_to - window as i64)
                .fetch_all()
                .await?
        };
        let mut recent = RecentIds::new(window);
        for id in &ids {
            recent.insert(id);
        }
        // Offsets never go backwards: a high watermark below what ClickHouse holds means the
        // topic was deleted and recreated. Resume from its start (the recent ids still
        // catch rows that were already stored).
        let topic = self.topic_of(table).to_string();
        let consumer = self.consumer.clone();
        let high = tokio::task::block_in_place(|| {
            consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .map(|(_, h)| h)
        });
        let held_up_to = match high {
            Ok(h) if h <= held_up_to => {
                tracing::error!(
                    topic,
                    partition = p,
                    high_watermark = h,
                    clickhouse_offset = held_up_to,
                    "output topic was recreated (its offsets restarted); resuming from its start"
                );
                -1
            }
            _ => held_up_to,
        };
        Ok(Cursor {
            held_up_to,
            recent,
            next: held_up_to + 1,
        })
    }

    async fn accept(&mut self, m: &BorrowedMessage<'_>, topic: &str, p: i32, o: i64) {
        let Some(table) = self.table_of(topic) else {
            return;
        };
        let cursor = self.cursor(table, p).await;
        cursor.next = cursor.next.max(o + 1);
        if o <= cursor.held_up_to {
            return;
        }
        let bytes = m.payload().unwrap_or_default();
        let src = Source {
            partition: p,
            offset: o,
            ingested_at: (now_ms() / 1000) as u32,
        };
        if table == Table::Ledger {
            match crate::ledger::rows::ledger_row(bytes, src) {
                Ok((id, r)) => {
                    let cursor = self.cursors.get_mut(&(table, p)).expect("cursor loaded");
                    if cursor.recent.insert(&id) {
                        push(&mut self.ledger, r, p, o, bytes.len());
                    } else {
                        METRICS.sink_duplicates.with_label_values(&["ledger"]).inc();
                    }
                }
                Err(e) => self.reject(table, p, o, bytes, &e.to_string()).await,
            }
            return;
        }
        let parsed = match table {
            Table::Transactions => {
                rows::transaction_row(bytes, src).map(|(id, r)| (id, Some(r), None, None))
            }
            Table::Debits => rows::debit_row(bytes, src).map(|(id, r)| (id, None, Some(r), None)),
            Table::DeadLetters => {
                rows::dead_letter_row(bytes, src).map(|(id, r)| (id, None, None, Some(r)))
            }
            Table::Ledger => unreachable!("ledger rows are parsed above"),
        };
        let (id, t, d, dl) = match parsed {
            Ok(x) => x,
            Err(e) => {
                self.reject(table, p, o, bytes, &e.to_string()).await;
                return;
            }
        };
        let cursor = self.cursors.get_mut(&(table, p)).expect("cursor loaded");
        if !cursor.recent.insert(&id) {
            METRICS
                .sink_duplicates
                .with_label_values(&[table.name()])
                .inc();
            return;
        }
        let n = bytes.len();
        if let Some(r) = t {
            push(&mut self.tx, r, p, o, n);
        }
        if let Some(r) = d {
            push(&mut self.debits, r, p, o, n);
        }
        if let Some(r) = dl {
            push(&mut self.dead, r, p, o, n);
        }
    }

    /// Sends an output message the sink cannot store to the dead-letter topic.
    async fn reject(&self, table: Table, p: i32, o: i64, bytes: &[u8], why: &str) {
        METRICS
            .events_rejected
            .with_label_values(&["sink_rejected"])
            .inc();
        tracing::error!(
            table = table.name(),
            partition = p,
            offset = o,
            error = why,
            "row refused by the sink; dead-lettered"
        );
        if table == Table::DeadLetters {
            return; // never loop a dead letter back onto its own topic
        }
        let dl = DeadLetter::new(
            &Rejection::new(RejectReason::SinkRejected, why),
            bytes,
            self.topic_of(table),
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

    async fn flush_due(&mut self, force: bool) -> anyhow::Result<()> {
        let s = self.cfg.sink.clone();
        let due = |since: Option<Instant>, rows: usize, bytes: usize| {
            rows > 0
                && (force
                    || rows >= s.batch_rows
                    || bytes >= s.batch_bytes
                    || since.is_some_and(|t| t.elapsed() >= s.batch_age))
                || (rows == 0 && since.is_some_and(|t| t.elapsed() >= s.batch_age))
        };
        if due(self.tx.since, self.tx.rows.len(), self.tx.bytes) {
            let batch = std::mem::take(&mut self.tx);
            self.write(Table::Transactions, batch).await?;
        }
        if due(self.debits.since, self.debits.rows.len(), self.debits.bytes) {
            let batch = std::mem::take(&mut self.debits);
            self.write(Table::Debits, batch).await?;
        }
        if due(self.dead.since, self.dead.rows.len(), self.dead.bytes) {
            let batch = std::mem::take(&mut self.dead);
            self.write(Table::DeadLetters, batch).await?;
        }
        if due(self.ledger.since, self.ledger.rows.len(), self.ledger.bytes) {
            let batch = std::mem::take(&mut self.ledger);
            self.write(Table::Ledger, batch).await?;
        }
        Ok(())
    }

    async fn write<R>(&mut self, table: Table, batch: Pending<R>) -> anyhow::Result<()>
    where
        R: Serialize + Clone + Send + Sync + 'static,
        for<'a> R: clickhouse::Row<Value<'a> = R>,
    {
        if !batch.rows.is_empty() {
            let started = Instant::now();
            self.insert_all(table, &batch.rows, &batch.sources).await;
            METRICS
                .sink_insert_latency
                .with_label_values(&[table.name()])
                .observe(started.elapsed().as_secs_f64());
            METRICS
                .sink_batch_rows
                .with_label_values(&[table.name()])
                .observe(batch.rows.len() as f64);
            METRICS
                .sink_rows
                .with_label_values(&[table.name()])
                .inc_by(batch.rows.len() as u64);
            METRICS.sink_last_insert.set(now_ms() as f64 / 1000.0);
            self.health
                .sink_last_progress_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        // Commit everything read from this topic so far (inserted or skipped).
        let topic = self.topic_of(table).to_string();
        let mut tpl = TopicPartitionList::new();
        for ((t, p), c) in &self.cursors {
            if *t == table && c.next > 0 {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(c.next))?;
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "sink offset commit failed; resume uses clickhouse offsets");
        }
        if batch.rows.is_empty() {
            self.health
                .sink_last_progress_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Inserts rows, retrying transient failures forever (with backoff) and isolating rows
    /// ClickHouse refuses.
    async fn insert_all<R>(&self, table: Table, rows: &[R], sources: &[(i32, i64)])
    where
        R: Serialize + Clone + Send + Sync + 'static,
        for<'a> R: clickhouse::Row<Value<'a> = R>,
    {
        let mut stack: Vec<(usize, usize)> = vec![(0, rows.len())];
        while let Some((a, b)) = stack.pop() {
            let mut backoff = Duration::from_millis(100);
            loop {
                match insert_rows(&self.ch, table.name(), &rows[a..b]).await {
                    Ok(()) => {
                        self.health.clickhouse_ok.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) if classify(&e) == FailureKind::Data => {
                        if b - a > 1 {
                            let mid = a + (b - a) / 2;
                            stack.push((mid, b));
                            stack.push((a, mid));
                        } else {
                            let (p, o) = sources.get(a).copied().unwrap_or((-1, -1));
                            let row = serde_json::to_vec(&rows[a]).unwrap_or_default();
                            self.reject(table, p, o, &row, &e.to_string()).await;
                        }
                        break;
                    }
                    Err(e) => {
                        self.health.clickhouse_ok.store(false, Ordering::Relaxed);
                        METRICS
                            .sink_retries
                            .with_label_values(&[table.name()])
                            .inc();
                        tracing::warn!(error = %e, table = table.name(), rows = b - a, backoff_ms = backoff.as_millis() as u64, "clickhouse insert failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.cfg.sink.max_backoff);
                    }
                }
            }
        }
    }
}

async fn insert_rows<R>(
    ch: &clickhouse::Client,
    table: &str,
    rows: &[R],
) -> Result<(), clickhouse::error::Error>
where
    R: Serialize + Send + Sync + 'static,
    for<'a> R: clickhouse::Row<Value<'a> = R>,
{
    let mut ins = ch.insert::<R>(table).await?;
    for r in rows {
        ins.write(r).await?;
    }
    ins.end().await
}

fn push<R>(p: &mut Pending<R>, row: R, partition: i32, offset: i64, bytes: usize) {
    p.since.get_or_insert_with(Instant::now);
    p.rows.push(row);
    p.sources.push((partition, offset));
    p.bytes += bytes;
}

fn drop_partition<R>(p: &mut Pending<R>, partition: i32) {
    let keep: Vec<bool> = p.sources.iter().map(|(pp, _)| *pp != partition).collect();
    let mut i = 0;
    p.rows.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
    p.sources.retain(|(pp, _)| *pp != partition);
}
