//! The stage's transactional producer: configuration in (one `transactional.id` per stage and
//! instance slot), an initialised producer out; the open transaction's state ([`Txn`]: begun
//! lazily, failed on a send error); how a transaction call failed ([`txn_call`]: retry, abort
//! or fatal, after librdkafka's error classes); and the bound on re-initialisations after
//! fencing ([`Reinits`], pure).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::error::StageError;
use crate::config::Config;
use crate::kafka;
use crate::metrics::METRICS;

/// Producer context: acknowledgement latency and failed deliveries of one stage.
pub struct StageProducerContext {
    started: Instant,
    failed: AtomicU64,
    latency: prometheus::Histogram,
    errors: prometheus::IntCounter,
}

impl ClientContext for StageProducerContext {}

impl ProducerContext for StageProducerContext {
    /// Send time in microseconds since the producer started.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        match result {
            Ok(_) => {
                let now = self.started.elapsed().as_micros() as usize;
                let secs = now.saturating_sub(sent_us) as f64 / 1e6;
                self.latency.observe(secs);
            }
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.errors.inc();
                tracing::warn!(error = %e, topic = m.topic(), "output message failed delivery; its transaction aborts");
            }
        }
    }
}

/// A stage's transactional producer.
pub type StageProducer = kafka::polled::PolledProducer<StageProducerContext>;

/// Creates the producer with `transactional.id` = `txn_id` and initialises its transactions:
/// this fences a previous incarnation with the same id and aborts its open transaction, so
/// `read_committed` readers move on at once.
pub fn producer(
    cfg: &Config,
    stage: &'static str,
    txn_id: &str,
) -> Result<StageProducer, StageError> {
    let mut c = kafka::transactional_producer_config(cfg, stage);
    c.set("transactional.id", txn_id);
    let p: StageProducer = c.create_with_context(context(stage))?;
    let started = Instant::now();
    let timeout = cfg
        .pipeline
        .transaction_timeout
        .max(Duration::from_secs(30));
    txn_call(
        "init_transactions",
        started + Duration::from_secs(60),
        || p.init_transactions(timeout),
    )
    .map_err(|f| StageError::Kafka(f.into_error()))?;
    tracing::info!(stage, transactional_id = %txn_id, init_ms = started.elapsed().as_millis() as u64, "transactional producer ready");
    Ok(p)
}

/// The producer of a [`super::Guarantee::StoreThenOffsets`] stage: no transactions, the
/// shared producer settings, the same acknowledgement series.
pub fn plain_producer(cfg: &Config, stage: &'static str) -> Result<StageProducer, StageError> {
    Ok(kafka::producer_config(cfg).create_with_context(context(stage))?)
}

fn context(stage: &'static str) -> StageProducerContext {
    StageProducerContext {
        started: Instant::now(),
        failed: AtomicU64::new(0),
        latency: METRICS.stage.produce_latency.with_label_values(&[stage]),
        errors: METRICS.stage.produce_errors.with_label_values(&[stage]),
    }
}

/// One output message.
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    /// `None` is a tombstone.
    pub payload: Option<&'a [u8]>,
    /// An explicit partition (close markers go back to their input partition); `None`: the
    /// producer's partitioner on the key.
    pub partition: Option<i32>,
    pub headers: Option<OwnedHeaders>,
}

/// The transaction of the current interval.
#[derive(Default)]
pub struct Txn {
    /// `begin_transaction` was called (with the first message after a commit).
    pub open: bool,
    /// A message could not be queued, or the transaction could not begin.
    pub failed: Option<KafkaError>,
    /// When the interval's first input or output came.
    pub since: Option<Instant>,
    /// Input messages handled in it.
    pub inputs: u64,
    /// No Kafka transaction ([`super::Guarantee::StoreThenOffsets`]): messages are sent as
    /// they come, at least once.
    pub plain: bool,
}

impl Txn {
    /// Starts the interval's clock at its first input or output.
    pub fn touch(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// Queues one record in the transaction (beginning it if needed), waiting while the
    /// producer queue is full; a failure marks the transaction failed.
    pub fn send(&mut self, producer: &StageProducer, r: Record<'_>) {
        if self.failed.is_some() {
            return;
        }
        self.touch();
        if !self.open && !self.plain {
            if let Err(e) = producer.begin_transaction() {
                tracing::warn!(error = %e, "begin_transaction failed; the transaction is abandoned and the stage resumes from the last commit");
                self.failed = Some(e);
                return;
            }
            self.open = true;
        }
        let sent_us = producer.context().started.elapsed().as_micros() as usize;
        let mut rec = BaseRecord::with_opaque_to(r.topic, sent_us).key(r.key);
        if let Some(p) = r.payload {
            rec = rec.payload(p);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        if let Some(h) = r.headers {
            rec = rec.headers(h);
        }
        if let Err(e) = kafka::send_with_backpressure(producer, rec) {
            tracing::warn!(error = %e, topic = r.topic, "produce failed; the transaction is abandoned and the stage resumes from the last commit");
            self.failed = Some(e);
        }
    }

    /// The interval is over (committed or aborted).
    pub fn reset(&mut self) {
        *self = Txn {
            plain: self.plain,
            ..Txn::default()
        };
    }
}

/// How a transaction call failed.
#[derive(Debug)]
pub enum TxnFailure {
    /// Abort the transaction and resume from the last committed one.
    Abort(KafkaError),
    /// The producer cannot go on (fenced, or an unexpected error): re-create it.
    Fatal(KafkaError),
}

impl TxnFailure {
    pub fn into_error(self) -> KafkaError {
        match self {
            TxnFailure::Abort(e) | TxnFailure::Fatal(e) => e,
        }
    }
}

/// Runs `calls` (a transaction's closing calls on `producer`) on a thread of its own and
/// waits for them at most `limit`.
///
/// Why a thread: librdkafka can block a transaction call without end once the node of the
/// transaction coordinator was SIGKILLed (`send_offsets_to_transaction` waits on a
/// coordinator handle that never comes back: confluentinc/librdkafka#5511; seen in
/// `tests/cluster.rs`), whatever timeout it was given. Past `limit` the producer is taken as
/// failed for good ([`TxnFailure::Fatal`]): the stage re-creates it with the same
/// `transactional.id`, which fences the stuck one and aborts its open transaction; the
/// stuck thread is left behind with the old producer (a late answer is refused as fenced).
pub fn bounded(
    what: &'static str,
    producer: &Arc<StageProducer>,
    limit: Duration,
    calls: impl FnOnce(&StageProducer) -> Result<(), TxnFailure> + Send + 'static,
) -> Result<(), TxnFailure> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let p = Arc::clone(producer);
    std::thread::Builder::new()
        .name("txn-call".into())
        .spawn(move || {
            let _ = tx.send(calls(&p));
        })
        .map_err(|_| TxnFailure::Abort(KafkaError::Global(RDKafkaErrorCode::Fail)))?;
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(
                call = what,
                limit_s = limit.as_secs(),
                "kafka transaction call did not return in time; the producer is re-created (confluentinc/librdkafka#5511)"
            );
            Err(TxnFailure::Fatal(KafkaError::Global(
                RDKafkaErrorCode::OperationTimedOut,
            )))
        }
    }
}

/// Retries a transaction call while librdkafka says it is retriable (or a flush timed out,
/// e.g. while the broker restarts) until `deadline`; classifies anything else.
pub fn txn_call(
    what: &str,
    deadline: Instant,
    mut f: impl FnMut() -> KafkaResult<()>,
) -> Result<(), TxnFailure> {
    loop {
        let e = match f() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match classify(&e) {
            Class::Abort => return Err(TxnFailure::Abort(e)),
            Class::Fatal => return Err(TxnFailure::Fatal(e)),
            Class::Retry if Instant::now() >= deadline => return Err(TxnFailure::Abort(e)),
            Class::Retry => {}
        }
        tracing::warn!(error = %e, call = what, "kafka transaction call failed; retrying");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Retry,
    Abort,
    Fatal,
}

fn classify(e: &KafkaError) -> Class {
    match e {
        KafkaError::Transaction(t) => txn_class(
            t.code(),
            t.txn_requires_abort(),
            t.is_retriable(),
            t.is_fatal(),
        ),
        KafkaError::Flush(_) => Class::Retry,
        _ => Class::Fatal,
    }
}

/// A transaction API error's class from librdkafka's flags.
fn txn_class(code: RDKafkaErrorCode, requires_abort: bool, retriable: bool, fatal: bool) -> Class {
    match code {
        // An earlier call (send_offsets_to_transaction, commit_transaction) timed out and
        // still runs inside librdkafka: retriable in name, but it may wait on a coordinator
        // that is gone for good (a broker handle decommissioned after a SIGKILL,
        // confluentinc/librdkafka#5511); a new producer with the same transactional.id
        // fences it and aborts its transaction at once.
        RDKafkaErrorCode::Conflict | RDKafkaErrorCode::PreviousInProgress => Class::Fatal,
        _ if requires_abort => Class::Abort,
        _ if retriable && !fatal => Class::Retry,
        _ => Class::Fatal,
    }
}

/// Re-initialisations of a fenced producer allowed per minute; beyond, the stage stops (two
/// live instances sharing one `kafka.instance_id` would otherwise fence each other forever).
pub const MAX_REINITS_PER_MINUTE: usize = 3;

/// The re-initialisations of the last minute.
#[derive(Debug, Default)]
pub struct Reinits(Vec<Instant>);

impl Reinits {
    /// Whether one more is allowed at `now` (and records it if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        self.0
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if self.0.len() >= MAX_REINITS_PER_MINUTE {
            return false;
        }
        self.0.push(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer that never connects (no broker behind the address): enough to hold.
    fn idle_producer() -> Arc<StageProducer> {
        let ctx = StageProducerContext {
            started: Instant::now(),
            failed: AtomicU64::new(0),
            latency: METRICS.stage.produce_latency.with_label_values(&["test"]),
            errors: METRICS.stage.produce_errors.with_label_values(&["test"]),
        };
        let p: StageProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create_with_context(ctx)
            .unwrap();
        Arc::new(p)
    }

    #[test]
    fn a_call_that_does_not_return_in_time_is_fatal_for_the_producer() {
        let p = idle_producer();
        let r = bounded("commit", &p, Duration::from_millis(100), |_| {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        });
        match r {
            Err(TxnFailure::Fatal(e)) => assert_eq!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::OperationTimedOut)
            ),
            other => panic!("expected fatal, got {other:?}"),
        }
        // Answers within the limit come back as they are.
        assert!(bounded("commit", &p, Duration::from_secs(5), |_| Ok(())).is_ok());
        let aborted = bounded("commit", &p, Duration::from_secs(5), |_| {
            Err(TxnFailure::Abort(KafkaError::Global(
                RDKafkaErrorCode::State,
            )))
        });
        assert!(matches!(aborted, Err(TxnFailure::Abort(_))));
    }

    #[test]
    fn three_reinits_a_minute_then_stop() {
        let mut r = Reinits::default();
        let t = Instant::now();
        assert!(r.allow(t));
        assert!(r.allow(t + Duration::from_secs(10)));
        assert!(r.allow(t + Duration::from_secs(20)));
        assert!(
            !r.allow(t + Duration::from_secs(30)),
            "a fourth within the minute"
        );
        // A minute after the first, one more is allowed.
        assert!(r.allow(t + Duration::from_secs(61)));
        assert!(!r.allow(t + Duration::from_secs(62)));
    }

    #[test]
    fn flush_timeouts_are_retried_other_errors_are_fatal() {
        assert_eq!(
            classify(&KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
            Class::Retry
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(RDKafkaErrorCode::Fenced)),
            Class::Fatal
        );
        // A producer whose earlier call still runs cannot abort: a new one is needed.
        for code in [
            RDKafkaErrorCode::Conflict,
            RDKafkaErrorCode::PreviousInProgress,
        ] {
            assert_eq!(
                txn_class(code, false, true, false),
                Class::Fatal,
                "{code:?}"
            );
        }
        assert_eq!(
            txn_class(RDKafkaErrorCode::OperationTimedOut, false, true, false),
            Class::Retry
        );
        assert_eq!(
            txn_class(RDKafkaErrorCode::InvalidProducerEpoch, true, false, false),
            Class::Abort
        );
        assert_eq!(
            txn_class(RDKafkaErrorCode::Fenced, false, false, true),
            Class::Fatal
        );
        let mut calls = 0;
        let past = Instant::now();
        // Retriable past the deadline: abort, after one try.
        let r = txn_call("x", past, || {
            calls += 1;
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
        });
        assert!(matches!(r, Err(TxnFailure::Abort(_))) && calls == 1);
    }
}
