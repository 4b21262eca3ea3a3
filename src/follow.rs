//! One follower per process of the committed output topics (`priced_usage`, `debits`,
//! `read_committed`): their messages in, as they commit, whichever instance rated them; out,
//! (1) a bounded in-memory tail of each partition (`traces.follow_buffer` messages per
//! topic), which traces and streams read instead of Kafka, with an index of the execution
//! ids it names ([`Follower::accounts_of`]), and (2) a fan-out to the streams subscribed to
//! an account or to one of its executions ([`fanout`]: the outputs are keyed by
//! `account_id`, so a stream needs one partition and one key). 200 streams cost one
//! consumer, not 200.
//!
//! Started with the process (`traces.follow_on_start`, else on the first trace or stream),
//! from where the ClickHouse sink stands, so it has read everything a trace or stream reads
//! from the topics. Each partition's [`ring`] keeps the tail and the execution ids of what
//! it let go of: a read of an execution none of whose messages it let go of (one that
//! began after the follower, or has not begun) needs no Kafka; other reads older than the
//! tail go to Kafka directly ([`read_range`]).

mod fanout;
mod lookup;
mod read;
mod ring;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::partitioner::Partitioner;
pub use fanout::{Interest, Subscription, execution_ids};
pub use read::read_range;
use ring::Ring;

/// Which output topic a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputTopic {
    /// `priced_usage`: one priced line per call.
    Lines = 0,
    /// `debits`.
    Debits = 1,
}

impl OutputTopic {
    pub const ALL: [OutputTopic; 2] = [OutputTopic::Lines, OutputTopic::Debits];

    /// The topic's configured name.
    pub fn name(self, cfg: &Config) -> &str {
        match self {
            OutputTopic::Lines => &cfg.topics.priced_usage,
            OutputTopic::Debits => &cfg.topics.debits,
        }
    }
}

/// One committed output message.
#[derive(Debug)]
pub struct Followed {
    pub topic: OutputTopic,
    pub partition: i32,
    pub offset: i64,
    pub key: Box<[u8]>,
    pub payload: Box<[u8]>,
    /// The execution ids the payload names ([`execution_ids`]), read once here.
    pub execution_ids: Box<[Arc<str>]>,
}

impl Followed {
    pub fn new(
        topic: OutputTopic,
        partition: i32,
        offset: i64,
        key: Box<[u8]>,
        payload: Box<[u8]>,
    ) -> Followed {
        Followed {
            topic,
            partition,
            offset,
            execution_ids: execution_ids(&payload).into_boxed_slice(),
            key,
            payload,
        }
    }
}

/// Next offsets in one partition of each output topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Positions {
    pub lines: i64,
    pub debits: i64,
}

impl Positions {
    pub fn get(&self, t: OutputTopic) -> i64 {
        match t {
            OutputTopic::Lines => self.lines,
            OutputTopic::Debits => self.debits,
        }
    }

    fn set(&mut self, t: OutputTopic, v: i64) {
        match t {
            OutputTopic::Lines => self.lines = v,
            OutputTopic::Debits => self.debits = v,
        }
    }
}

/// The messages of one key in `[from, to)` of one partition, each topic in offset order.
#[derive(Debug, Default)]
pub struct Tail {
    pub lines: Vec<Arc<Followed>>,
    pub debits: Vec<Arc<Followed>>,
}

/// Why a follower cannot answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FollowError {
    #[error("the output topics cannot be followed: {0}")]
    Kafka(String),
    #[error("{0}")]
    Partitioner(String),
    #[error(
        "too many streams on this instance ({0}, traces.max_streams); try another instance or later"
    )]
    TooManyStreams(usize),
    #[error("shutting down")]
    Stopped,
}

/// Per execution id in the tail: (account key, messages naming it).
type ExecutionIndex = HashMap<Arc<str>, Vec<(Box<[u8]>, u32)>>;

#[derive(Default)]
struct State {
    partitions: i32,
    per_partition: usize,
    rings: [Vec<Ring>; 2],
    positions: Vec<Positions>,
    /// Per partition, per key: the subscribed streams.
    subscribers: HashMap<i32, HashMap<Box<[u8]>, fanout::KeySubscribers>>,
    /// Per execution id in the tail: its accounts (the outputs' key) and how many tail
    /// messages name it ([`Follower::accounts_of`]).
    executions: ExecutionIndex,
    streams: usize,
    ready: bool,
    failed: Option<String>,
}

struct Shared {
    cfg: Config,
    partitioner: Result<Partitioner, String>,
    state: Mutex<State>,
    started: AtomicBool,
    next_id: AtomicU64,
    stop: CancellationToken,
    /// The sink's committed offsets, read at most every [`SINK_POSITIONS_TTL`].
    sink: Mutex<SinkPositions>,
}

#[derive(Default)]
struct SinkPositions {
    consumer: Option<BaseConsumer>,
    read_at: Option<Instant>,
    positions: Vec<Option<Positions>>,
}

const SINK_POSITIONS_TTL: Duration = Duration::from_millis(250);

/// How far behind its tail's size a starting follower reads, to reach the sink's position.
const CATCH_UP_TAILS: i64 = 10;

/// A handle on the process's follower (cheap to clone).
#[derive(Clone)]
pub struct Follower(Arc<Shared>);

impl Follower {
    /// A follower for `cfg`'s output topics, not started; it stops with `stop`.
    pub fn new(cfg: &Config, stop: CancellationToken) -> Follower {
        let props = crate::kafka::client_config(cfg, &[]);
        Follower(Arc::new(Shared {
            cfg: cfg.clone(),
            partitioner: Partitioner::from_property(props.get("partitioner")),
            state: Mutex::new(State::default()),
            started: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            stop,
            sink: Mutex::new(SinkPositions::default()),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the follower thread on first use and waits (up to 15 s) until it has its
    /// partitions.
    pub async fn ensure_started(&self) -> Result<(), FollowError> {
        if !self.0.started.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            std::thread::Builder::new()
                .name("follower".into())
                .spawn(move || me.run())
                .map_err(|e| FollowError::Kafka(e.to_string()))?;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            {
                let s = self.lock();
                if let Some(e) = &s.failed {
                    return Err(FollowError::Kafka(e.clone()));
                }
                if s.ready {
                    return Ok(());
                }
            }
            if self.0.stop.is_cancelled() {
                return Err(FollowError::Stopped);
            }
            if Instant::now() > deadline {
                return Err(FollowError::Kafka(
                    "no answer from kafka within 15 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The output partition of `account_id`'s lines and debits.
    pub fn partition_of(&self, account_id: &str) -> Result<i32, FollowError> {
        let p = self
            .0
            .partitioner
            .clone()
            .map_err(FollowError::Partitioner)?;
        let n = self.lock().partitions;
        Ok(p.partition(account_id.as_bytes(), n))
    }

    /// How far the follower has read partition `p`.
    pub fn position(&self, p: i32) -> Positions {
        self.lock()
            .positions
            .get(p as usize)
            .copied()
            .unwrap_or_default()
    }

    /// The messages of `key` in `[from, to)` of partition `p` (those naming `execution`
    /// only, when given): from memory where it holds them or knows there are none
    /// ([`ring`]: an execution none of whose messages it let go of), else from Kafka.
    pub async fn read(
        &self,
        p: i32,
        key: &[u8],
        execution: Option<&str>,
        from: Positions,
        to: Positions,
    ) -> Result<Tail, FollowError> {
        let wanted = |m: &Followed| {
            *m.key == *key && execution.is_none_or(|e| m.execution_ids.iter().any(|x| &**x == e))
        };
        let mut tail = Tail::default();
        for t in OutputTopic::ALL {
            let (start, end) = (from.get(t), to.get(t));
            if start >= end {
                continue;
            }
            let (kafka, mut msgs) = {
                let s = self.lock();
                let ring = &s.rings[t as usize][p as usize];
                (
                    ring.kafka_part(execution, start, end),
                    ring.range(start, end, wanted),
                )
            };
            if let Some((start, upto)) = kafka {
                tracing::debug!(?execution, topic = ?t, partition = p, start, upto, "history older than the follower knows: read from kafka");
                let cfg = self.0.cfg.clone();
                let key = key.to_vec();
                let mut older =
                    tokio::task::spawn_blocking(move || read_range(&cfg, t, p, start, upto, &key))
                        .await
                        .map_err(|e| FollowError::Kafka(e.to_string()))??;
                older.retain(|m| wanted(m));
                older.append(&mut msgs);
                msgs = older;
            }
            match t {
                OutputTopic::Lines => tail.lines = msgs,
                OutputTopic::Debits => tail.debits = msgs,
            }
        }
        Ok(tail)
    }

    /// Like [`Follower::read`] for one execution, from memory only: `None` when the tail no
    /// longer holds `from`.
    pub fn read_in_memory(
        &self,
        p: i32,
        key: &[u8],
        execution: &str,
        from: Positions,
        to: Positions,
    ) -> Option<Tail> {
        let wanted =
            |m: &Followed| *m.key == *key && m.execution_ids.iter().any(|x| &**x == execution);
        let s = self.lock();
        let mut tail = Tail::default();
        for t in OutputTopic::ALL {
            let ring = s.rings[t as usize].get(p as usize)?;
            let (start, end) = (from.get(t), to.get(t));
            if start >= end {
                continue;
            }
            if ring.kafka_part(Some(execution), start, end).is_some() {
                return None;
            }
            let msgs = ring.range(start, end, wanted);
            match t {
                OutputTopic::Lines => tail.lines = msgs,
                OutputTopic::Debits => tail.debits = msgs,
            }
        }
        Some(tail)
    }

    /// The follower thread: assign every partition of both topics at the start of what the
    /// in-memory tail can hold, then keep the tail and feed the subscribers.
    fn run(self) {
        if let Err(e) = self.follow() {
            tracing::warn!(error = %e, "output follower stopped");
            let mut s = self.lock();
            s.failed = Some(e.to_string());
            // Streams end with an error event; the next request starts a new follower.
            s.subscribers.clear();
            s.executions.clear();
            s.ready = false;
            drop(s);
            self.0.started.store(false, Ordering::Release);
        }
    }

    fn follow(&self) -> Result<(), FollowError> {
        let cfg = &self.0.cfg;
        let k = |e: rdkafka::error::KafkaError| FollowError::Kafka(e.to_string());
        let mut c = crate::kafka::reader_config(cfg);
        c.set("enable.partition.eof", "false");
        c.set("group.id", format!("{}-follower", cfg.kafka.group_id));
        let consumer: BaseConsumer = c.create().map_err(k)?;
        let mut counts = Vec::new();
        for t in OutputTopic::ALL {
            let md = consumer
                .fetch_metadata(Some(t.name(cfg)), Duration::from_secs(10))
                .map_err(k)?;
            let n = md.topics().first().map_or(0, |x| x.partitions().len()) as i32;
            if n == 0 {
                return Err(FollowError::Kafka(format!(
                    "topic {} has no partitions (run setup)",
                    t.name(cfg)
                )));
            }
            counts.push(n);
        }
        if counts[0] != counts[1] {
            return Err(FollowError::Kafka(format!(
                "{} has {} partitions and {} has {}: the outputs must be co-partitioned",
                cfg.topics.priced_usage, counts[0], cfg.topics.debits, counts[1]
            )));
        }
        let n = counts[0];
        let per_partition = (cfg.traces.follow_buffer / n as usize).max(1);
        // From where the ClickHouse sink stands (what traces and streams read from the
        // topics), so that the ring knows which executions that range names; at least the
        // last `per_partition`, at most CATCH_UP_TAILS times that.
        let sink = self.sink_committed(n).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "output follower: the sink's offsets are unknown");
            vec![None; n as usize]
        });
        let mut tpl = TopicPartitionList::new();
        let mut starts = vec![Positions::default(); n as usize];
        let mut highs = starts.clone();
        for t in OutputTopic::ALL {
            for p in 0..n {
                let (low, high) =
                    crate::kafka::watermarks(&consumer, t.name(cfg), p, Duration::from_secs(10))
                        .map_err(k)?;
                let keep = per_partition as i64;
                let sink_at = sink[p as usize].map_or(low, |s| s.get(t));
                let start = (high - keep)
                    .min(sink_at)
                    .max(high - keep * CATCH_UP_TAILS)
                    .max(low);
                starts[p as usize].set(t, start);
                highs[p as usize].set(t, high);
                tpl.add_partition_offset(t.name(cfg), p, Offset::Offset(start))
                    .map_err(k)?;
            }
        }
        consumer.assign(&tpl).map_err(k)?;
        {
            let mut s = self.lock();
            s.partitions = n;
            s.per_partition = per_partition;
            s.executions.clear();
            s.positions = starts.clone();
            for t in OutputTopic::ALL {
                s.rings[t as usize] = starts.iter().map(|pos| Ring::new(pos.get(t))).collect();
            }
            s.failed = None;
        }
        tracing::info!(partitions = n, per_partition, "following the output topics");
        let mut ready = false;
        while !self.0.stop.is_cancelled() {
            if !ready {
                ready = self.caught_up(&consumer, &highs);
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let t = if m.topic() == cfg.topics.priced_usage {
                        OutputTopic::Lines
                    } else {
                        OutputTopic::Debits
                    };
                    let msg = Arc::new(Followed::new(
                        t,
                        m.partition(),
                        m.offset(),
                        m.key().unwrap_or_default().into(),
                        m.payload().unwrap_or_default().into(),
                    ));
                    self.take(msg);
                }
                Some(Err(e)) if crate::kafka::is_partition_eof(&e) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "output follower"),
                // Idle: past the transactions' control records, so a position reaches the
                // high watermark ([`Follower::sync`]).
                None if ready => {
                    self.advance(&consumer);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Whether the follower has read up to the high watermarks seen at its start; then its
    /// positions move to the consumer's (past the transactions' control records, which are
    /// never delivered) and it is ready: before, a position would leave out messages that
    /// were committed before the request.
    fn caught_up(&self, consumer: &BaseConsumer, highs: &[Positions]) -> bool {
        let Some(at) = self.consumer_positions(consumer) else {
            return false;
        };
        let done = at
            .iter()
            .zip(highs)
            .all(|(a, h)| OutputTopic::ALL.iter().all(|t| a.get(*t) >= h.get(*t)));
        if done {
            let mut s = self.lock();
            s.positions = at;
            s.ready = true;
        }
        done
    }

    /// The follower's positions moved up to the consumer's (which are past the control
    /// records).
    fn consumer_positions(&self, consumer: &BaseConsumer) -> Option<Vec<Positions>> {
        let tpl = consumer.position().ok()?;
        let mut at = self.lock().positions.clone();
        for e in tpl.elements() {
            let t = if e.topic() == self.0.cfg.topics.priced_usage {
                OutputTopic::Lines
            } else {
                OutputTopic::Debits
            };
            if let (Offset::Offset(o), Some(pos)) = (e.offset(), at.get_mut(e.partition() as usize))
            {
                pos.set(t, pos.get(t).max(o));
            }
        }
        Some(at)
    }

    /// Moves the positions past the control records read so far (idle follower).
    fn advance(&self, consumer: &BaseConsumer) {
        if let Some(at) = self.consumer_positions(consumer) {
            let mut s = self.lock();
            for (pos, new) in s.positions.iter_mut().zip(at) {
                for t in OutputTopic::ALL {
                    pos.set(t, pos.get(t).max(new.get(t)));
                }
            }
        }
    }

    /// One message: into the tail, then to the subscribers of its key. A subscriber whose
    /// queue is full is paused at this message (see [`Subscription::gap`]), never dropped.
    fn take(&self, msg: Arc<Followed>) {
        let mut s = self.lock();
        let (t, p) = (msg.topic as usize, msg.partition as usize);
        let cap = s.per_partition;
        let before = s.positions.get(p).copied().unwrap_or_default();
        if let Some(pos) = s.positions.get_mut(p) {
            pos.set(msg.topic, msg.offset + 1);
        }
        let evicted = match s.rings[t].get_mut(p) {
            // As many evicted execution ids as messages kept (a few thousand at least).
            Some(ring) => ring.push(msg.clone(), cap, cap.max(4096)),
            None => Vec::new(),
        };
        index(&mut s.executions, &msg, 1);
        for old in &evicted {
            index(&mut s.executions, old, -1);
        }
        fanout::deliver(&mut s, &msg, before);
    }
}

/// Counts `msg` in (`+1`) or out of (`-1`) the tail's execution index.
fn index(executions: &mut ExecutionIndex, msg: &Followed, by: i32) {
    for e in msg.execution_ids.iter() {
        if by > 0 {
            let accounts = executions.entry(e.clone()).or_default();
            match accounts.iter_mut().find(|(k, _)| *k == msg.key) {
                Some((_, n)) => *n += 1,
                None => accounts.push((msg.key.clone(), 1)),
            }
        } else if let Some(accounts) = executions.get_mut(&**e) {
            if let Some(i) = accounts.iter().position(|(k, _)| *k == msg.key) {
                accounts[i].1 -= 1;
                if accounts[i].1 == 0 {
                    accounts.swap_remove(i);
                }
            }
            if accounts.is_empty() {
                executions.remove(&**e);
            }
        }
    }
}
