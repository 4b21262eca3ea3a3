//! The stage consumer's context (the ClickHouse sink's too): rebalance events in (recorded for the loop, which restores
//! state before it assigns anything; a revocation unassigns at once) and librdkafka's
//! statistics in (each input partition's high watermark, or "caught up"); the pending
//! rebalance work and the lag of owned partitions out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;

use super::restore::Positions;

/// Pending rebalance work, recorded by the callback and done by the loop.
#[derive(Default)]
pub struct Pending {
    pub assign: Option<TopicPartitionList>,
    pub revoked: bool,
}

/// See the module documentation.
pub struct StageContext {
    pub stage: &'static str,
    pub pending: Mutex<Pending>,
    /// Set with `pending`; checked between messages (cheaper than the lock).
    pub flagged: AtomicBool,
    /// (topic, partition) -> high watermark, or `None` once fetched to the end with nothing
    /// waiting (what lies beyond are transaction markers, never delivered).
    high: Mutex<HashMap<(String, i32), Option<i64>>>,
}

impl StageContext {
    pub fn new(stage: &'static str) -> StageContext {
        StageContext {
            stage,
            pending: Mutex::new(Pending::default()),
            flagged: AtomicBool::new(false),
            high: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the pending rebalance work.
    pub fn take(&self) -> Pending {
        self.flagged.store(false, Ordering::Release);
        std::mem::take(&mut *self.pending.lock().expect("rebalance lock"))
    }

    /// Messages behind the high watermark of partition `p`, summed over the inputs, at
    /// `positions` (0 for an input caught up or not yet seen in the statistics).
    pub fn lag(&self, p: i32, positions: &Positions) -> i64 {
        let high = self.high.lock().expect("statistics lock");
        positions
            .iter()
            .map(|(t, pos)| match high.get(&(t.clone(), p)) {
                Some(Some(h)) => (h - pos).max(0),
                _ => 0,
            })
            .sum()
    }

    /// Messages of `topic`'s partition `p` behind its high watermark at `next`: `None` before
    /// the statistics have seen it, 0 once caught up.
    pub fn topic_lag(&self, topic: &str, p: i32, next: i64) -> Option<i64> {
        let high = self.high.lock().expect("statistics lock");
        match high.get(&(topic.to_string(), p))? {
            Some(h) => Some((h - next).max(0)),
            None => Some(0),
        }
    }

    /// Forgets the statistics (partitions revoked).
    pub fn clear_lag(&self) {
        self.high.lock().expect("statistics lock").clear();
    }
}

impl ClientContext for StageContext {
    fn stats(&self, stats: Statistics) {
        let mut high = self.high.lock().expect("statistics lock");
        for (topic, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    let caught_up = s.fetchq_cnt == 0 && s.next_offset >= s.hi_offset;
                    let v = (!caught_up).then_some(s.hi_offset);
                    high.insert((topic.clone(), *p), v);
                }
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let mut p = self.pending.lock().expect("rebalance lock");
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => p.assign = Some(tpl.clone()),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Lost: this member was evicted (e.g. frozen past its session timeout); its
                // open transaction is aborted either way and the next owner redoes the work.
                let lost = consumer.assignment_lost();
                tracing::info!(stage = self.stage, partitions = ?parts, lost, "partitions revoked");
                p.assign = None;
                p.revoked = true;
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(stage = self.stage, error = %e, "unassign after revoke failed");
                }
            }
            other => {
                tracing::error!(stage = self.stage, error = ?other, "rebalance error; dropping the assignment");
                p.assign = None;
                p.revoked = true;
                let _ = consumer.unassign();
            }
        }
        self.flagged.store(true, Ordering::Release);
    }
}
