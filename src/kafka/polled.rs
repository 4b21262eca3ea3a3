//! A producer whose events (delivery reports, errors, logs) are served by its own thread
//! without spinning: [`PolledProducer`], used wherever rdkafka's `ThreadedProducer` was.
//!
//! Why not `ThreadedProducer`: its thread calls `BaseProducer::poll(100 ms)`, which loops
//! until its deadline, passing the time left to librdkafka in whole milliseconds. Whenever an
//! event arrives inside a window, or librdkafka's wait ends a fraction of a millisecond before
//! Rust's deadline, the last sub-millisecond is passed as 0 and the loop spins on the clock
//! until the deadline. Measured (rdkafka 0.39, release, docs/performance.md "The producers'
//! polling threads"): ~1 % of a core per idle producer, and the producers' polling threads
//! 1.1-1.2 CPU s per million events in a cold drain of all stages, against 0.2 with the spin
//! removed.
//!
//! How this one waits: its thread calls `poll` with a one-second window ([`WINDOW`]), so the
//! same sub-millisecond tail costs at most a millisecond a second (0.1 % of a core), while a
//! delivery report is still served the moment librdkafka queues it (the wait inside `poll`
//! ends on an event). The crate forbids `unsafe`, so librdkafka's queue IO event, which would
//! remove the tail altogether, is out of reach. The price: dropping the producer does not wait
//! for the thread; it finishes its window (at most [`WINDOW`]) and then drops the last
//! reference to the `BaseProducer`, which purges and flushes as it always did. Every user
//! commits, flushes or awaits its acknowledgements before dropping, so nothing waits on that.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::config::{ClientConfig, FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, DefaultProducerContext, ProducerContext};

/// The serving thread's `poll` window: how often it checks whether the producer was dropped.
pub const WINDOW: Duration = Duration::from_secs(1);

/// A [`BaseProducer`] with a thread that serves its events as they come. Dereferences to the
/// `BaseProducer`: `send`, `flush`, the transaction calls and `in_flight_count` are its own.
pub struct PolledProducer<C: ProducerContext + 'static = DefaultProducerContext> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl FromClientConfig for PolledProducer<DefaultProducerContext> {
    fn from_config(config: &ClientConfig) -> KafkaResult<Self> {
        PolledProducer::from_config_and_context(config, DefaultProducerContext)
    }
}

impl<C: ProducerContext + 'static> FromClientConfigAndContext<C> for PolledProducer<C> {
    fn from_config_and_context(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("producer events".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(WINDOW);
                    }
                })
                .map_err(|e| KafkaError::ClientCreation(format!("producer event thread: {e}")))?;
        }
        Ok(PolledProducer { producer, stop })
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::{BaseRecord, Producer};

    /// Without a broker every message fails delivery when its timeout ends: the failure must
    /// still reach the context through the serving thread (nobody else polls), and the
    /// producer must drop cleanly afterwards.
    #[test]
    fn delivery_reports_reach_the_context_without_a_caller_polling() {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl rdkafka::ClientContext for Count {}
        impl ProducerContext for Count {
            type DeliveryOpaque = ();
            fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
                if r.is_err() {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p: PolledProducer<Count> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "200")
            .set("log_level", "0")
            .create_with_context(Count(Arc::clone(&seen)))
            .unwrap();
        for i in 0..3u8 {
            p.send(BaseRecord::<[u8], [u8]>::to("t").payload(&[i][..]))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while seen.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert_eq!(p.in_flight_count(), 0);
    }
}
