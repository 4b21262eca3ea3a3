//! The ledger's clock: the next deadline (an expiry or an expiry warning) of each owned
//! ledger partition in (published by the processor after each commit and restore); clock
//! markers out, written to that partition of `credit_grants` once the wall clock reaches the
//! deadline. The ledger reads a marker like any command, so the instant it stands for, and
//! with it every expiry, is a fact of the log: a replay decides the same. A marker carries
//! an HMAC (the pipeline's marker key) over topic, partition and instant, so a producer of
//! grants cannot forge time.
//!
//! Markers are written only when something is due (no idle traffic). A marker still not read
//! back after [`RESEND_AFTER`] (the stage lagging, or the marker's transaction aborted) is
//! written again; a second marker for the same instant changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ledger::command::{clock_marker, clock_signed_bytes};
use crate::marker::MarkerKey;
use crate::metrics::METRICS;

/// How often the clock looks at the deadlines.
pub const TICK: Duration = Duration::from_millis(100);
/// A deadline still pending this long after its marker was written gets another marker.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);

/// The next deadline of each owned partition (shared by the processor and the clock).
#[derive(Debug, Default)]
pub struct Deadlines(Mutex<BTreeMap<i32, DateTime<Utc>>>);

impl Deadlines {
    /// Sets (or, `None`, clears) partition `p`'s next deadline.
    pub fn set(&self, p: i32, next: Option<DateTime<Utc>>) {
        let mut m = self.0.lock().expect("deadlines lock");
        match next {
            Some(t) => m.insert(p, t),
            None => m.remove(&p),
        };
    }

    /// Every partition's next deadline.
    pub fn snapshot(&self) -> BTreeMap<i32, DateTime<Utc>> {
        self.0.lock().expect("deadlines lock").clone()
    }
}

/// The partitions due at `now` that need a marker: due, and not marked for the same
/// deadline within `resend` (`sent`: partition -> (deadline, when marked)). Pure.
pub fn due_partitions(
    deadlines: &BTreeMap<i32, DateTime<Utc>>,
    sent: &HashMap<i32, (DateTime<Utc>, Instant)>,
    now: DateTime<Utc>,
    resend: Duration,
) -> Vec<i32> {
    deadlines
        .iter()
        .filter(|(_, d)| **d <= now)
        .filter(|(p, d)| {
            !sent
                .get(p)
                .is_some_and(|(sd, at)| sd == *d && at.elapsed() < resend)
        })
        .map(|(p, _)| *p)
        .collect()
}

/// Writes clock markers until `stop` (blocking). A failed write is retried at the next tick.
pub fn run(
    cfg: &Config,
    deadlines: &Deadlines,
    key: &MarkerKey,
    stop: &CancellationToken,
) -> Result<(), crate::ledger::stage::StageError> {
    let topic = cfg.topics.credit_grants.clone();
    let mut pc = crate::kafka::client_config(cfg, &[("acks", "all"), ("linger.ms", "0")]);
    for k in [
        "group.instance.id",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "enable.auto.commit",
        "partition.assignment.strategy",
    ] {
        pc.remove(k);
    }
    pc.set("enable.idempotence", "true");
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = pc.create()?;
    let mut sent: HashMap<i32, (DateTime<Utc>, Instant)> = HashMap::new();
    while !stop.is_cancelled() {
        std::thread::sleep(TICK);
        let now = Utc::now();
        let snapshot = deadlines.snapshot();
        for p in due_partitions(&snapshot, &sent, now, RESEND_AFTER) {
            let mac = key.sign(&topic, p, &clock_signed_bytes(now));
            let payload = clock_marker(now, &mac);
            let rec: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&topic).partition(p).payload(&payload);
            match producer.send(rec) {
                Ok(()) => {
                    sent.insert(p, (snapshot[&p], Instant::now()));
                    METRICS.ledger.clock_markers.inc();
                    tracing::debug!(partition = p, at = %now, "clock marker written");
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, partition = p, "clock marker not written; retrying");
                }
            }
        }
        sent.retain(|p, _| snapshot.contains_key(p));
    }
    let _ = producer.flush(Duration::from_secs(5));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_partition_is_marked_once_per_deadline_until_resend() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let later = t0 + chrono::Duration::seconds(60);
        let deadlines: BTreeMap<i32, DateTime<Utc>> = [(0, t0), (1, later)].into();
        let mut sent = HashMap::new();
        assert_eq!(due_partitions(&deadlines, &sent, t0, RESEND_AFTER), [0]);
        sent.insert(0, (t0, Instant::now()));
        assert!(due_partitions(&deadlines, &sent, t0, RESEND_AFTER).is_empty());
        // A new deadline of the same partition is marked again at once.
        let moved: BTreeMap<i32, DateTime<Utc>> = [(0, t0 + chrono::Duration::seconds(1))].into();
        assert_eq!(due_partitions(&moved, &sent, later, RESEND_AFTER), [0]);
        // The same deadline after the resend time: again.
        assert_eq!(
            due_partitions(&deadlines, &sent, later, Duration::ZERO),
            [0, 1]
        );
    }
}
