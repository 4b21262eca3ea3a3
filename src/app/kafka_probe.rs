//! Kafka reachability probe: a metadata request every 2 s in; `health.kafka_ok` (readiness)
//! out, with a log line when it changes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::kafka;

/// Asks the brokers for metadata every 2 s until `stop` is cancelled; readiness fails when
/// they do not answer within 3 s. Blocking: call it on its own thread.
pub fn run(cfg: &Config, health: &Health, stop: &CancellationToken) -> anyhow::Result<()> {
    let mut c = kafka::reader_config(cfg);
    c.set("socket.timeout.ms", "3000");
    let probe: kafka::Reader = c.create_with_context(kafka::ReaderContext)?;
    while !stop.is_cancelled() {
        let ok = probe
            .fetch_metadata(Some(&cfg.topics.usage_events), Duration::from_secs(3))
            .is_ok();
        if ok != health.kafka_ok.swap(ok, Ordering::Relaxed) {
            if ok {
                tracing::info!("kafka reachable");
            } else {
                tracing::warn!(
                    "kafka.brokers = \"{}\" does not answer metadata requests; retrying",
                    cfg.kafka.brokers
                );
            }
        }
        for _ in 0..20 {
            if stop.is_cancelled() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
