//! What a lookup asks of the follower besides its tail: where the ClickHouse sink stands
//! ([`Follower::sink_positions`]), waiting until everything written before a request is
//! read ([`Follower::sync`]: a just-closed execution's debit, committed a moment after the
//! pipeline's live state let go of it), and which accounts an execution id has in the tail
//! ([`Follower::accounts_of`]: the operator's lookup without `account_id`, ClickHouse up or
//! down).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{FollowError, Follower, OutputTopic, Positions, SINK_POSITIONS_TTL};

impl Follower {
    fn with_consumer<T>(
        &self,
        f: impl FnOnce(&BaseConsumer, &mut super::SinkPositions) -> Result<T, FollowError>,
    ) -> Result<T, FollowError> {
        let cfg = &self.0.cfg;
        let mut sp = self.0.sink.lock().unwrap_or_else(|e| e.into_inner());
        if sp.consumer.is_none() {
            // Only asks the group's committed offsets (OffsetFetch) and watermarks: never
            // joins the group, never commits.
            let mut c = crate::kafka::client_config(cfg, &[("enable.auto.commit", "false")]);
            c.set("group.id", &cfg.kafka.sink_group_id);
            sp.consumer = Some(c.create().map_err(|e| FollowError::Kafka(e.to_string()))?);
        }
        let c = sp.consumer.take().expect("created above");
        let r = f(&c, &mut sp);
        sp.consumer = Some(c);
        r
    }

    /// Where the ClickHouse sink's consumer group has committed partition `p` of each
    /// output topic: every message below is in ClickHouse. `None` when it never committed.
    pub async fn sink_positions(&self, p: i32) -> Result<Option<Positions>, FollowError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sink_positions_blocking(p))
            .await
            .map_err(|e| FollowError::Kafka(e.to_string()))?
    }

    fn sink_positions_blocking(&self, p: i32) -> Result<Option<Positions>, FollowError> {
        let n = self.lock().partitions;
        {
            let sp = self.0.sink.lock().unwrap_or_else(|e| e.into_inner());
            if sp.read_at.is_some_and(|t| t.elapsed() < SINK_POSITIONS_TTL) {
                return Ok(sp.positions.get(p as usize).copied().flatten());
            }
        }
        Ok(self.sink_committed(n)?.get(p as usize).copied().flatten())
    }

    /// Where the sink's group has committed each of the `n` partitions (`None`: never).
    pub(super) fn sink_committed(&self, n: i32) -> Result<Vec<Option<Positions>>, FollowError> {
        let cfg = self.0.cfg.clone();
        self.with_consumer(|consumer, sp| {
            let mut tpl = TopicPartitionList::new();
            for i in 0..n {
                for t in OutputTopic::ALL {
                    tpl.add_partition(t.name(&cfg), i);
                }
            }
            let got = consumer
                .committed_offsets(tpl, Duration::from_secs(5))
                .map_err(|e| FollowError::Kafka(e.to_string()))?;
            let mut positions = vec![Some(Positions::default()); n as usize];
            for e in got.elements() {
                let t = if e.topic() == cfg.topics.priced_usage {
                    OutputTopic::Lines
                } else {
                    OutputTopic::Debits
                };
                let slot = &mut positions[e.partition() as usize];
                match (e.offset(), slot.as_mut()) {
                    (Offset::Offset(o), Some(pos)) => pos.set(t, o),
                    _ => *slot = None,
                }
            }
            sp.positions = positions.clone();
            sp.read_at = Some(Instant::now());
            Ok(positions)
        })
    }

    /// Waits (at most `max`) until the follower has read, in partition `p` (every partition
    /// when `None`), everything written to the output topics before this call: committed
    /// (then it is in the tail) or aborted. True when it got there.
    pub async fn sync(&self, p: Option<i32>, max: Duration) -> Result<bool, FollowError> {
        let deadline = Instant::now() + max;
        let me = self.clone();
        let highs = tokio::task::spawn_blocking(move || me.highs(p))
            .await
            .map_err(|e| FollowError::Kafka(e.to_string()))??;
        loop {
            let done = {
                let s = self.lock();
                highs.iter().all(|(p, h)| {
                    s.positions
                        .get(*p as usize)
                        .is_some_and(|at| OutputTopic::ALL.iter().all(|t| at.get(*t) >= h.get(*t)))
                })
            };
            if done {
                return Ok(true);
            }
            if Instant::now() >= deadline || self.0.stop.is_cancelled() {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The high watermarks of partition `p` (or every partition) of both output topics.
    fn highs(&self, p: Option<i32>) -> Result<Vec<(i32, Positions)>, FollowError> {
        let n = self.lock().partitions;
        let cfg = self.0.cfg.clone();
        let parts: Vec<i32> = p.map_or_else(|| (0..n).collect(), |p| vec![p]);
        self.with_consumer(|consumer, _| {
            let mut out = Vec::new();
            for p in parts {
                let mut h = Positions::default();
                for t in OutputTopic::ALL {
                    let (_, high) = consumer
                        .fetch_watermarks(t.name(&cfg), p, Duration::from_secs(5))
                        .map_err(|e| FollowError::Kafka(e.to_string()))?;
                    h.set(t, high);
                }
                out.push((p, h));
            }
            Ok(out)
        })
    }

    /// The accounts with a priced call or a debit of execution `execution_id` in the
    /// follower's tail (the outputs' key is the account), from the tail's execution index.
    /// The index also counts an id named deeper in a message (a dimension of that name):
    /// when it gives several accounts, the tail's messages are read to keep only those
    /// naming it at the top.
    pub async fn accounts_of(&self, execution_id: &str) -> BTreeSet<String> {
        let candidates: Vec<Box<[u8]>> = {
            let s = self.lock();
            s.executions
                .get(execution_id)
                .map(|a| a.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default()
        };
        let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        if candidates.len() <= 1 {
            return candidates.iter().map(|k| text(k)).collect();
        }
        let msgs: Vec<_> = {
            let s = self.lock();
            s.rings
                .iter()
                .flatten()
                .flat_map(|r| r.msgs.iter())
                .filter(|m| m.execution_ids.iter().any(|e| &**e == execution_id))
                .cloned()
                .collect()
        };
        let id = execution_id.to_string();
        tokio::task::spawn_blocking(move || {
            #[derive(serde::Deserialize)]
            struct Ids {
                execution_id: Option<String>,
                account_id: String,
            }
            msgs.iter()
                .filter_map(|m| serde_json::from_slice::<Ids>(&m.payload).ok())
                .filter(|x| x.execution_id.as_deref() == Some(id.as_str()))
                .map(|x| x.account_id)
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}
