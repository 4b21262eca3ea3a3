//! A fast producer for preloading events (bench, loadgen, tests): records in, queued on the
//! broker with backpressure on a full queue.

use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer};

use crate::config::Config;
use crate::kafka;

/// A fast producer for preloading events, with backpressure on a full queue.
pub struct Loader {
    producer: crate::kafka::polled::PolledProducer<DefaultProducerContext>,
}

impl Loader {
    pub fn new(cfg: &Config) -> anyhow::Result<Loader> {
        Loader::with_linger(cfg, 20)
    }

    /// A loader whose batches wait at most `linger_ms` (the preload's 20 ms fill batches; a
    /// latency measurement sends as a platform client would, with the clients' default 5 ms:
    /// librdkafka's and, since Kafka 4.0, the Java producer's).
    pub fn with_linger(cfg: &Config, linger_ms: u32) -> anyhow::Result<Loader> {
        let mut c = kafka::producer_config(cfg);
        c.set("linger.ms", linger_ms.to_string())
            .set("batch.num.messages", "10000");
        Ok(Loader {
            producer: c.create()?,
        })
    }

    pub fn send(&self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.send_record(BaseRecord::to(topic).key(key.as_bytes()).payload(payload))
    }

    pub fn send_to(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.send_record(
            BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(payload)
                .partition(partition),
        )
    }

    fn send_record(&self, rec: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
        kafka::send_with_backpressure(&self.producer, rec).map_err(Into::into)
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        self.producer.flush(Duration::from_secs(120))?;
        Ok(())
    }
}
