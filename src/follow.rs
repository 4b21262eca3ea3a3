//! One follower per process of the committed output topics (`priced_usage`, `debits`,
//! `read_committed`): their messages in, as they commit, whichever instance rated them; out,
//! (1) a bounded in-memory tail of each partition (`traces.follow_buffer` messages per
//! topic), which traces and streams read instead of Kafka, and (2) a fan-out to the streams
//! subscribed to an account (the outputs are keyed by `account_id`, so a stream needs one
//! partition and one key). 200 streams cost one consumer, not 200; each stream has a
//! bounded queue (`traces.stream_buffer`). A stream whose queue is full is never dropped
//! and never allowed to grow memory: the follower stops queueing for it and notes where it
//! stopped ([`Subscription::gap`]); once the stream has taken what was queued it reads the
//! gap from the tail (or Kafka) and is queued again, so no message is missed.
//!
//! Started on first use (the first trace or stream), so an instance nobody asks costs
//! nothing. Reads older than the in-memory tail go to Kafka directly ([`read_range`]).

mod lookup;
mod read;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::partitioner::Partitioner;
pub use read::read_range;

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

/// The recent messages of one partition of one topic: every committed message from
/// `covered_from` on.
#[derive(Debug, Default)]
struct Ring {
    covered_from: i64,
    msgs: VecDeque<Arc<Followed>>,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<Followed>>,
    /// Set when its queue was full: the positions of the first message not queued; nothing
    /// is queued for it until the stream takes the gap ([`Subscription::gap`]).
    paused_from: Option<Positions>,
    lagging: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    partitions: i32,
    per_partition: usize,
    rings: [Vec<Ring>; 2],
    positions: Vec<Positions>,
    /// Per partition, per key: the subscribed streams.
    subscribers: HashMap<i32, HashMap<Box<[u8]>, Vec<Subscriber>>>,
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

/// A handle on the process's follower (cheap to clone).
#[derive(Clone)]
pub struct Follower(Arc<Shared>);

/// A stream's subscription: the messages of its key from `from` on. Dropping it
/// unsubscribes.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Followed>>,
    /// Every message of the key at or after these offsets comes through `rx`, or, after a
    /// lag, through [`Subscription::gap`].
    pub from: Positions,
    /// Set when the queue was full and messages were left out of it: take [`Subscription::gap`]
    /// once `rx` is empty.
    lagging: Arc<AtomicBool>,
    id: u64,
    key: (i32, Box<[u8]>),
    follower: Follower,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut s = self.follower.lock();
        s.streams = s.streams.saturating_sub(1);
        if let Some(keys) = s.subscribers.get_mut(&self.key.0)
            && let Some(list) = keys.get_mut(&self.key.1)
        {
            list.retain(|x| x.id != self.id);
            if list.is_empty() {
                keys.remove(&self.key.1);
            }
        }
        crate::metrics::METRICS.api_streams.set(s.streams as i64);
    }
}

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

    /// Subscribes to the messages of `key` in partition `p` from the follower's position on.
    pub fn subscribe(&self, p: i32, key: &[u8]) -> Result<Subscription, FollowError> {
        let cap = self.0.cfg.traces.stream_buffer.max(1);
        let mut s = self.lock();
        if s.streams >= self.0.cfg.traces.max_streams {
            return Err(FollowError::TooManyStreams(s.streams));
        }
        let (tx, rx) = mpsc::channel(cap);
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let lagging = Arc::new(AtomicBool::new(false));
        let k = (p, Box::<[u8]>::from(key));
        s.subscribers
            .entry(p)
            .or_default()
            .entry(k.1.clone())
            .or_default()
            .push(Subscriber {
                id,
                tx,
                paused_from: None,
                lagging: lagging.clone(),
            });
        s.streams += 1;
        crate::metrics::METRICS.api_streams.set(s.streams as i64);
        let from = s.positions.get(p as usize).copied().unwrap_or_default();
        drop(s);
        Ok(Subscription {
            rx,
            from,
            lagging,
            id,
            key: k,
            follower: self.clone(),
        })
    }

    /// The messages of `key` in `[from, to)` of partition `p`: from memory where it holds
    /// them, else from Kafka.
    pub async fn read(
        &self,
        p: i32,
        key: &[u8],
        from: Positions,
        to: Positions,
    ) -> Result<Tail, FollowError> {
        let mut tail = Tail::default();
        for t in OutputTopic::ALL {
            let (start, end) = (from.get(t), to.get(t));
            if start >= end {
                continue;
            }
            let (covered_from, mut msgs) = {
                let s = self.lock();
                let ring = &s.rings[t as usize][p as usize];
                let msgs: Vec<Arc<Followed>> = ring
                    .msgs
                    .iter()
                    .filter(|m| m.offset >= start && m.offset < end && *m.key == *key)
                    .cloned()
                    .collect();
                (ring.covered_from, msgs)
            };
            if start < covered_from {
                let cfg = self.0.cfg.clone();
                let key = key.to_vec();
                let upto = covered_from.min(end);
                let mut older =
                    tokio::task::spawn_blocking(move || read_range(&cfg, t, p, start, upto, &key))
                        .await
                        .map_err(|e| FollowError::Kafka(e.to_string()))??;
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

    /// The follower thread: assign every partition of both topics at the start of what the
    /// in-memory tail can hold, then keep the tail and feed the subscribers.
    fn run(self) {
        if let Err(e) = self.follow() {
            tracing::warn!(error = %e, "output follower stopped");
            let mut s = self.lock();
            s.failed = Some(e.to_string());
            // Streams end with an error event; the next request starts a new follower.
            s.subscribers.clear();
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
        let mut tpl = TopicPartitionList::new();
        let mut starts = vec![Positions::default(); n as usize];
        let mut highs = starts.clone();
        for t in OutputTopic::ALL {
            for p in 0..n {
                let (low, high) = consumer
                    .fetch_watermarks(t.name(cfg), p, Duration::from_secs(10))
                    .map_err(k)?;
                let start = low.max(high - per_partition as i64);
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
            s.positions = starts.clone();
            for t in OutputTopic::ALL {
                s.rings[t as usize] = starts
                    .iter()
                    .map(|pos| Ring {
                        covered_from: pos.get(t),
                        msgs: VecDeque::new(),
                    })
                    .collect();
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
                    let msg = Arc::new(Followed {
                        topic: t,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().unwrap_or_default().into(),
                        payload: m.payload().unwrap_or_default().into(),
                    });
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
        if let Some(ring) = s.rings[t].get_mut(p) {
            ring.msgs.push_back(msg.clone());
            while ring.msgs.len() > cap {
                if let Some(old) = ring.msgs.pop_front() {
                    ring.covered_from = old.offset + 1;
                }
            }
        }
        let Some(keys) = s.subscribers.get_mut(&msg.partition) else {
            return;
        };
        if let Some(list) = keys.get_mut(&*msg.key) {
            list.retain_mut(|sub| {
                if sub.paused_from.is_some() {
                    return !sub.tx.is_closed();
                }
                match sub.tx.try_send(msg.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Everything from here on (both topics) is read back from the tail.
                        let mut from = before;
                        from.set(msg.topic, before.get(msg.topic).min(msg.offset));
                        sub.paused_from = Some(from);
                        sub.lagging.store(true, Ordering::Release);
                        crate::metrics::METRICS.api_streams_lagged.inc();
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if list.is_empty() {
                keys.remove(&*msg.key);
            }
        }
    }
}

impl Subscription {
    /// True when the queue was full and messages were left out of `rx`.
    pub fn lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    /// After a lag, once `rx` is empty: the messages of the key left out of the queue, from
    /// the tail (or Kafka), each topic in offset order; from then on they come through `rx`
    /// again. `None` when there is no gap.
    pub async fn gap(&mut self) -> Result<Option<Tail>, FollowError> {
        let range = {
            let mut s = self.follower.lock();
            let to = s
                .positions
                .get(self.key.0 as usize)
                .copied()
                .unwrap_or_default();
            let sub = s
                .subscribers
                .get_mut(&self.key.0)
                .and_then(|keys| keys.get_mut(&self.key.1))
                .and_then(|list| list.iter_mut().find(|x| x.id == self.id));
            self.lagging.store(false, Ordering::Release);
            // Unpaused under the lock: every message from `to` on is queued again.
            sub.and_then(|x| x.paused_from.take())
                .map(|from| (from, to))
        };
        let Some((from, to)) = range else {
            return Ok(None);
        };
        self.follower
            .read(self.key.0, &self.key.1, from, to)
            .await
            .map(Some)
    }
}
