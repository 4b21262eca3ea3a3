//! The pipeline's producer side: delivery reports in, per-epoch counts of unacknowledged
//! messages and a failure count out (read by the checkpoint coordinator), plus the one send
//! function every pipeline output goes through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::kafka::send_with_backpressure;
use crate::metrics::METRICS;

/// Epoch slots tracked at once; an epoch lasts about one checkpoint interval.
pub const EPOCH_SLOTS: usize = 256;
/// Low bits of a delivery opaque: send time in microseconds (wraps after ~12 days).
const STAMP_BITS: u32 = 40;
const STAMP_MASK: usize = (1 << STAMP_BITS) - 1;

/// Producer context: counts unacknowledged messages per checkpoint epoch and failed
/// deliveries, records acknowledgement latency. A checkpoint waits for its epochs to drain
/// instead of blocking the consumer loop on a flush.
pub struct OutputContext {
    started: Instant,
    failed: AtomicU64,
    outstanding: [AtomicU64; EPOCH_SLOTS],
}

impl ClientContext for OutputContext {}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        self.outstanding[opaque >> STAMP_BITS].fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(_) => {
                let now = self.started.elapsed().as_micros() as usize;
                let sent = opaque & STAMP_MASK;
                METRICS
                    .produce_latency
                    .observe((now.wrapping_sub(sent) & STAMP_MASK) as f64 / 1e6);
            }
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                METRICS.produce_errors.inc();
                tracing::error!(error = %e, topic = m.topic(), "output message lost in delivery; the pipeline will stop and replay");
            }
        }
    }
}

impl Default for OutputContext {
    fn default() -> Self {
        OutputContext {
            started: Instant::now(),
            failed: AtomicU64::new(0),
            outstanding: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl OutputContext {
    /// Counts one message of `epoch` as in flight; returns its delivery opaque.
    fn sending(&self, epoch: u64) -> usize {
        let slot = (epoch % EPOCH_SLOTS as u64) as usize;
        self.outstanding[slot].fetch_add(1, Ordering::AcqRel);
        (slot << STAMP_BITS) | (self.started.elapsed().as_micros() as usize & STAMP_MASK)
    }

    /// A message counted by [`Self::sending`] was never queued.
    fn not_sent(&self, opaque: usize) {
        self.outstanding[opaque >> STAMP_BITS].fetch_sub(1, Ordering::AcqRel);
    }

    /// Messages of `epoch` not yet acknowledged (or failed).
    pub fn in_flight(&self, epoch: u64) -> u64 {
        self.outstanding[(epoch % EPOCH_SLOTS as u64) as usize].load(Ordering::Acquire)
    }

    /// Deliveries that failed for good since start.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The pipeline's producer (transactional in `exactly_once`).
pub type OutputProducer = ThreadedProducer<OutputContext>;

/// Where one output goes.
pub struct Destination<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    /// Explicit partition (close markers, snapshots); `None` = the key's partition.
    pub partition: Option<i32>,
}

/// Queues one output counted in `epoch`, waiting while the producer queue is full.
pub fn send(
    producer: &OutputProducer,
    epoch: u64,
    to: Destination<'_>,
    payload: &[u8],
) -> Result<(), KafkaError> {
    send_with_headers(producer, epoch, to, payload, None)
}

/// [`send`] with Kafka headers (the close markers' authentication).
pub fn send_with_headers(
    producer: &OutputProducer,
    epoch: u64,
    to: Destination<'_>,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<(), KafkaError> {
    let opaque = producer.context().sending(epoch);
    let mut rec = BaseRecord::with_opaque_to(to.topic, opaque)
        .key(to.key)
        .payload(payload);
    if let Some(p) = to.partition {
        rec = rec.partition(p);
    }
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    send_with_backpressure(producer, rec).inspect_err(|_| producer.context().not_sent(opaque))
}
