//! A compacted topic of reference data followed into a swappable value: messages in (read
//! fully at start, then live), a whole new `T` swapped into the shared handle per update out.
//! One writer, lock-free readers (arc-swap). The price catalog and the plan book use it;
//! each says how a message applies and which metrics it moves ([`FeedState`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka;
use crate::kafka::acked::{AckContext, AckedProducer, send_acked};

/// Reference data built from a compacted topic's messages.
pub trait FeedState: Clone + Default + Send + Sync + 'static {
    /// What the data is called in logs (`price version`, `plans record`).
    const WHAT: &'static str;
    /// Applies one message; `Ok(true)` when the value changed. `Err` is logged at ERROR and
    /// must leave the value as it was (check, then change).
    fn apply(&mut self, payload: &[u8]) -> Result<bool, String>;
    /// Records the wall time of an update (age metrics).
    fn touch(&mut self, now: chrono::DateTime<chrono::Utc>);
    fn updated_at(&self) -> Option<chrono::DateTime<chrono::Utc>>;
    /// Records in the value (the count returned by `load_initial`).
    fn count(&self) -> usize;
    /// Metrics: an update applied (with the new value), a message refused, the age.
    fn on_update(&self) {}
    fn on_refused() {}
    fn on_age(_seconds: f64) {}
    /// Once following (after the initial load, which its caller sums up in one line): the
    /// topic key of a message and what accepting it does, logged at INFO when it is applied.
    fn accepted_text(&self, _payload: &[u8]) -> Option<(String, String)> {
        None
    }
}

/// Sends `(key, payload)` messages to `topic`, each acknowledged; returns how many.
pub async fn publish(
    cfg: &Config,
    topic: &str,
    records: &[(String, Vec<u8>)],
) -> anyhow::Result<usize> {
    let producer: AckedProducer = kafka::producer_config(cfg).create_with_context(AckContext)?;
    for (key, payload) in records {
        send_acked(
            &producer,
            topic,
            key.as_bytes(),
            payload,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot publish {key} to {topic}: {e}"))?;
    }
    Ok(records.len())
}

/// The shared handle of a feed's value.
pub type FeedHandle<T> = Arc<ArcSwap<T>>;

/// A feed and its handle, as [`TopicFeed::open`] returns them.
pub type Opened<T> = (TopicFeed<T>, FeedHandle<T>);

/// Follows a compacted topic in a thread, applying messages to the handle.
pub struct TopicFeed<T: FeedState> {
    consumer: kafka::Reader,
    handle: Arc<ArcSwap<T>>,
    topic: String,
}

impl<T: FeedState> TopicFeed<T> {
    /// A feed of `topic` (read with its own group id suffix, never committed) and the handle
    /// it keeps current, starting from `T::default()`.
    pub fn open(cfg: &Config, topic: &str, group_suffix: &str) -> anyhow::Result<Opened<T>> {
        let mut c = kafka::reader_config(cfg);
        c.set("group.id", format!("{}-{group_suffix}", cfg.kafka.group_id));
        let consumer: kafka::Reader = c.create_with_context(kafka::ReaderContext)?;
        let handle = Arc::new(ArcSwap::from_pointee(T::default()));
        Ok((
            TopicFeed {
                consumer,
                handle: handle.clone(),
                topic: topic.to_string(),
            },
            handle,
        ))
    }

    /// Assigns every partition from the beginning and reads up to the current end (the
    /// end-of-partition event: a compacted topic has offset gaps). Returns the record count.
    pub fn load_initial(&self, timeout: Duration) -> anyhow::Result<usize> {
        let md = self.consumer.fetch_metadata(Some(&self.topic), timeout)?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut pending = std::collections::HashSet::new();
        for p in &parts {
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
            let (low, high) = kafka::watermarks(&self.consumer, &self.topic, *p, timeout)?;
            if high > low {
                pending.insert(*p);
            }
        }
        self.consumer.assign(&tpl)?;
        // One working copy for the whole initial read (not one clone per message).
        let mut work = None;
        let mut changed = false;
        let deadline = Instant::now() + timeout;
        while !pending.is_empty() && Instant::now() < deadline {
            let (eof, c) = self.poll_once(Duration::from_millis(200), &mut work, false);
            changed |= c;
            if let Some(p) = eof {
                pending.remove(&p);
            }
        }
        if let (true, Some(w)) = (changed, work) {
            self.store(w);
        }
        Ok(self.handle.load().count())
    }

    fn store(&self, mut next: T) {
        next.touch(chrono::Utc::now());
        next.on_update();
        self.handle.store(Arc::new(next));
    }

    /// Applies at most one message to `work` (a copy of the current value, made at the first
    /// message); returns the partition that reached its end, if any, and whether `work`
    /// changed.
    fn poll_once(
        &self,
        wait: Duration,
        work: &mut Option<T>,
        following: bool,
    ) -> (Option<i32>, bool) {
        match self.consumer.poll(wait) {
            Some(Ok(m)) => {
                let Some(payload) = m.payload() else {
                    return (None, false);
                };
                let work = work.get_or_insert_with(|| T::clone(&self.handle.load()));
                let said = following.then(|| work.accepted_text(payload)).flatten();
                match work.apply(payload) {
                    Ok(changed) => {
                        if let (true, Some((key, what))) = (changed, said) {
                            tracing::info!(key = %key, topic = %self.topic, offset = m.offset(), "{} accepted: {what}", T::WHAT);
                        }
                        (None, changed)
                    }
                    Err(e) => {
                        T::on_refused();
                        tracing::error!(error = %e, topic = %self.topic, offset = m.offset(), "{} refused", T::WHAT);
                        (None, false)
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => (Some(p), false),
            Some(Err(e)) => {
                tracing::warn!(error = %e, topic = %self.topic, "read error");
                (None, false)
            }
            None => (None, false),
        }
    }

    /// Follows the topic until `stop` is cancelled. Blocking: call it on its own thread.
    pub fn follow(self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            let mut work = None;
            if let (_, true) = self.poll_once(Duration::from_millis(250), &mut work, true)
                && let Some(w) = work
            {
                self.store(w);
            }
            if let Some(t) = self.handle.load().updated_at() {
                T::on_age((chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0);
            }
        }
    }
}
