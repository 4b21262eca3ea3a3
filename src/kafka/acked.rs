//! Sends awaited until the broker acknowledges them: [`AckedProducer`] and [`send_acked`],
//! for the few messages a caller must know landed (credit requests from the HTTP API and the
//! CLI, catalog and plan publications). rdkafka's `FutureProducer` does the same on a
//! `ThreadedProducer`, whose polling thread spins (see [`super::polled`]); this one runs on a
//! [`PolledProducer`].

use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use tokio::sync::oneshot;

use super::polled::PolledProducer;

/// How often a send retries while the producer's queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);

/// Hands each delivery report to the send waiting for it.
pub struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<()>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let _ = waiting.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// A producer whose sends can be awaited until acknowledged ([`send_acked`]).
pub type AckedProducer = PolledProducer<AckContext>;

/// Queues one message and waits for its acknowledgement: `Ok` once the broker has it (with the
/// producer's `acks`), the delivery error otherwise (after librdkafka's retries, within
/// `message.timeout.ms`). While the producer's queue is full it retries every 10 ms for up to
/// `queue_timeout`, then returns `QueueFull`. A producer dropped before the report comes gives
/// `KafkaError::Canceled`.
pub async fn send_acked(
    producer: &AckedProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    queue_timeout: Duration,
) -> KafkaResult<()> {
    let give_up = Instant::now() + queue_timeout;
    loop {
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(tx))
            .key(key)
            .payload(payload);
        match producer.send(record) {
            Ok(()) => return rx.await.unwrap_or(Err(KafkaError::Canceled)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                if Instant::now() < give_up =>
            {
                tokio::time::sleep(QUEUE_FULL_RETRY).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;

    /// No broker: the send resolves to the delivery error when the message times out, through
    /// the context and the producer's own thread.
    #[tokio::test]
    async fn an_unacknowledged_send_resolves_to_its_delivery_error() {
        let p: AckedProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "200")
            .set("log_level", "0")
            .create_with_context(AckContext)
            .unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            send_acked(&p, "t", b"k", b"v", Duration::from_secs(1)),
        )
        .await
        .expect("the report came");
        assert!(
            matches!(
                r,
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut
                ))
            ),
            "{r:?}"
        );
    }
}
