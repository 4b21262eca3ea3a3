//! Reading a topic back as a `read_committed` consumer sees it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use usage_aggregator::debit::Debit;

use super::TestEnv;

/// One message read back: offset, key, payload.
pub type Record = (i64, Vec<u8>, Vec<u8>);

impl TestEnv {
    fn consumer(&self) -> BaseConsumer {
        let mut c = ClientConfig::new();
        for (k, v) in &self.cfg.kafka.properties {
            c.set(k, v);
        }
        for (k, v) in &self.client_props {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.cfg.kafka.brokers)
            .set("group.id", format!("{}-reader", self.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap()
    }

    /// Every committed message of a topic (what a `read_committed` consumer sees), per
    /// partition in offset order. Reads each partition to its end-of-partition event:
    /// transaction markers leave offset gaps, so "until offset high - 1" would hang.
    pub fn read_topic(&self, topic: &str) -> BTreeMap<i32, Vec<Record>> {
        let c = self.consumer();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut out = BTreeMap::new();
        for p in md.topics()[0].partitions() {
            let p = p.id();
            let (low, high) = watermarks(&c, topic, p);
            let mut msgs = Vec::new();
            if high > low {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .unwrap();
                c.assign(&tpl).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(Instant::now() < deadline, "timed out reading {topic}/{p}");
                    match c.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => msgs.push((
                            m.offset(),
                            m.key().unwrap_or_default().to_vec(),
                            m.payload().unwrap_or_default().to_vec(),
                        )),
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(q))) if q == p => break,
                        _ => {}
                    }
                }
                c.unassign().unwrap();
            }
            out.insert(p, msgs);
        }
        out
    }

    /// The debits topic deduplicated by id; panics if a repeated id has different bytes.
    pub fn debits_by_id(&self) -> (BTreeMap<String, Vec<u8>>, usize) {
        let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut n = 0;
        for (_, msgs) in self.read_topic(&self.cfg.topics.debits) {
            for (_, _, payload) in msgs {
                n += 1;
                let d: Debit = serde_json::from_slice(&payload).unwrap();
                if let Some(prev) = by_id.insert(d.debit_id.clone(), payload.clone()) {
                    assert_eq!(
                        prev, payload,
                        "debit {} repeated with different bytes",
                        d.debit_id
                    );
                }
            }
        }
        (by_id, n)
    }
}

/// A partition's (low, high) watermarks. A leader that moves or a metadata cache that lags
/// (a topic just created, a loaded broker) answers `NotLeaderForPartition` or
/// `UnknownTopicOrPartition` for a moment: retried for up to 30 s, then the last error.
pub fn watermarks(c: &BaseConsumer, topic: &str, partition: i32) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return w,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {topic}[{partition}]: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("watermarks of {topic}[{partition}]: {e}"),
        }
    }
}
