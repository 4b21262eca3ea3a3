//! Reading a range of one output partition straight from Kafka (`read_committed`), for what
//! the follower's in-memory tail no longer holds: a key and `[from, to)` in, that key's
//! messages out, in offset order. Bounded: it gives up past [`MAX_SCANNED`] messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{FollowError, Followed, OutputTopic};
use crate::config::Config;
use crate::kafka::{ReaderContext, is_partition_eof, reader_config};

/// Messages one read may scan (all keys of the partition) before it gives up.
pub const MAX_SCANNED: u64 = 5_000_000;

/// The messages of `key` at offsets `[from, to)` of partition `p` of topic `t`.
pub fn read_range(
    cfg: &Config,
    t: OutputTopic,
    p: i32,
    from: i64,
    to: i64,
    key: &[u8],
) -> Result<Vec<Arc<Followed>>, FollowError> {
    let k = |e: rdkafka::error::KafkaError| FollowError::Kafka(e.to_string());
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let topic = t.name(cfg);
    crate::metrics::METRICS.api_follow_kafka_reads.inc();
    let consumer: BaseConsumer<ReaderContext> = reader_config(cfg)
        .create_with_context(ReaderContext)
        .map_err(k)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(from))
        .map_err(k)?;
    consumer.assign(&tpl).map_err(k)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut scanned = 0u64;
    loop {
        if Instant::now() > deadline {
            return Err(FollowError::Kafka(format!(
                "reading {topic}/{p} from offset {from} to {to} took over 60 s"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if m.offset() >= to {
                    break;
                }
                scanned += 1;
                crate::metrics::METRICS.api_follow_kafka_scanned.inc();
                if scanned > MAX_SCANNED {
                    return Err(FollowError::Kafka(format!(
                        "{topic}/{p} from offset {from} to {to} is more than {MAX_SCANNED} messages to scan"
                    )));
                }
                if m.key() == Some(key) {
                    out.push(Arc::new(Followed::new(
                        t,
                        p,
                        m.offset(),
                        key.into(),
                        m.payload().unwrap_or_default().into(),
                    )));
                }
                if m.offset() + 1 >= to {
                    break;
                }
            }
            Some(Err(e)) if is_partition_eof(&e) => break,
            Some(Err(e)) => return Err(k(e)),
            None => {}
        }
    }
    Ok(out)
}
