//! Kafka plumbing shared by every stage: client configuration from [`Config`], topic
//! creation for `setup`, and a few blocking helpers.

pub mod acked;
pub mod acls;
pub mod partitioner;
pub mod polled;

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::config::Config;

pub use crate::config::PROP_ENV_PREFIX;

/// Client configuration: brokers, then the stage's own `defaults`, then the pass-through
/// properties of the config file, then secret properties from the environment (later wins).
pub fn client_config(cfg: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    c.set("socket.keepalive.enable", "true");
    c.set(
        "socket.connection.setup.timeout.ms",
        cfg.kafka.connect_timeout.as_millis().to_string(),
    );
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    for (_, property, v) in crate::config::kafka_env_properties() {
        c.set(property, v);
    }
    c
}

/// Whether `error` only says a read reached the end of a partition. librdkafka reports it
/// as `PartitionEOF(partition)` from the consumer queue and as `Global(PartitionEOF)`
/// through the client's error callback: for a reader with `enable.partition.eof` both are
/// how a read finishes, never an error.
pub fn is_partition_eof(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// Context of the readers that assign partitions and read to the partition end (catalog,
/// state, changelogs): the end of a partition is how their reads finish, not a log line;
/// any other client error is a WARN (librdkafka retries it; the reader's own call reports
/// what fails for good).
pub struct ReaderContext;

impl rdkafka::client::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_eof(&error) {
            tracing::warn!(error = %error, reason, "kafka reader error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// A reader: assigns partitions, never joins a group, ends reads at partition EOF.
pub type Reader = rdkafka::consumer::BaseConsumer<ReaderContext>;

/// The partition ids of `topic`, asking the brokers every 2 s until it exists; `None` when
/// `stop` is cancelled first. `missing` runs after each answer without the topic (to log once
/// and say so in a readiness answer, say). The followers' start (ledger view, vouchers, alerts).
pub fn wait_for_partitions(
    reader: &Reader,
    topic: &str,
    stop: &tokio_util::sync::CancellationToken,
    mut missing: impl FnMut(),
) -> Option<Vec<i32>> {
    use rdkafka::consumer::Consumer;
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let parts: Vec<i32> = reader
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|md| {
                md.topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            })
            .unwrap_or_default();
        if !parts.is_empty() {
            return Some(parts);
        }
        missing();
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A plain consumer configuration (no group semantics used), for readers that assign;
/// create it with `create_with_context(ReaderContext)`.
pub fn reader_config(cfg: &Config) -> ClientConfig {
    let group = format!("{}-reader", cfg.kafka.group_id);
    let mut c = client_config(
        cfg,
        &[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // Reads end at the partition end, not at "offset high - 1": offsets have gaps.
            ("enable.partition.eof", "true"),
            ("fetch.wait.max.ms", "10"),
            // Only committed transactions (librdkafka's default, said out loud): outputs of
            // an aborted or still-open transaction are never read back.
            ("isolation.level", "read_committed"),
        ],
    );
    // Readers assign partitions; they never join a group, so no instance id either.
    c.set("group.id", group);
    c.remove("group.instance.id");
    c
}

/// A producer configuration for non-transactional outputs and one-shot tools: acks from all
/// replicas. Not idempotent by default: that guarantee does not need it (outputs are
/// deterministic and deduplicated by id, and no consumer relies on their order). Turn it on
/// with kafka.properties if wanted.
pub fn producer_config(cfg: &Config) -> ClientConfig {
    let max = cfg.pipeline.max_in_flight.to_string();
    let mut c = client_config(
        cfg,
        &[
            ("enable.idempotence", "false"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("queue.buffering.max.messages", &max),
            ("queue.buffering.max.kbytes", "262144"),
            ("message.timeout.ms", "120000"),
        ],
    );
    for k in CONSUMER_ONLY {
        c.remove(k);
    }
    c
}

/// The `transactional.id` of one stage of this instance: stable per instance slot
/// (`kafka.instance_id`), so a restarted instance fences its crashed predecessor and aborts
/// its open transaction at `init_transactions`; random when no instance id is configured.
pub fn transactional_id(cfg: &Config, stage: &str) -> String {
    match instance_id(cfg) {
        Some(id) => format!("{}-{stage}-{id}", cfg.kafka.group_id),
        None => format!(
            "{}-{stage}-{:016x}",
            cfg.kafka.group_id,
            rand::random::<u64>()
        ),
    }
}

/// A transactional producer's configuration (`exactly_once`): idempotent (required by
/// librdkafka for transactions), message timeout within the transaction timeout.
pub fn transactional_producer_config(cfg: &Config, stage: &str) -> ClientConfig {
    let mut c = producer_config(cfg);
    let txn_ms = cfg.pipeline.transaction_timeout.as_millis().max(1000);
    c.set("enable.idempotence", "true")
        .set("transactional.id", transactional_id(cfg, stage))
        .set("transaction.timeout.ms", txn_ms.to_string())
        .set("message.timeout.ms", txn_ms.to_string());
    // Right after a commit the coordinator answers the next transaction's AddOffsetsToTxn /
    // AddPartitionsToTxn with CONCURRENT_TRANSACTIONS until the previous markers are written
    // (about a millisecond here); librdkafka retries after `retry.backoff.ms`, 100 ms by
    // default, so every `send_offsets_to_transaction` took ~100 ms and a checkpoint could not
    // be shorter (measured with librdkafka against Apache Kafka 4.1.1: send_offsets p50
    // 100.7 ms at the default, 8.0 ms at 5, 0.9 ms at 2; a 100 ms checkpoint interval drained
    // 3.3k events/s before). The backoff grows exponentially to `retry.backoff.max.ms` for
    // real failures. A pass-through property (config file or environment) wins.
    if c.get("retry.backoff.ms").is_none() {
        c.set("retry.backoff.ms", "2");
    }
    // A pass-through `enable.idempotence=false` would be refused with transactions.
    if c.get("enable.idempotence") != Some("true") {
        c.set("enable.idempotence", "true");
    }
    c
}

/// Waits until every message queued on a producer is acknowledged (a
/// [`polled::PolledProducer`]'s thread serves the delivery reports), or until `deadline`;
/// true when none is in flight.
///
/// Call it before `commit_transaction` or `flush`: rdkafka's `flush` (which
/// `commit_transaction` starts with) polls in slices of up to 100 ms that last their whole
/// length, and the reports go to the producer's event thread, so any flush
/// with a message in flight took at least 100 ms. Measured on the pipeline: every
/// `exactly_once` checkpoint took ~100 ms whatever its interval, which bounded debit latency
/// and stalled a 100 ms checkpoint interval.
pub fn await_in_flight<C: ProducerContext + 'static>(
    producer: &BaseProducer<C>,
    deadline: Instant,
) -> bool {
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// This instance's stable id: `kafka.instance_id`, else a `group.instance.id` given as a
/// pass-through property (older configurations).
pub fn instance_id(cfg: &Config) -> Option<String> {
    cfg.kafka
        .instance_id
        .clone()
        .or_else(|| {
            client_config(cfg, &[])
                .get("group.instance.id")
                .map(str::to_string)
        })
        .filter(|s| !s.trim().is_empty())
}

/// Sends one record, waiting while the producer queue is full (backpressure: the caller's
/// loop, and so consumption, pauses). Any other error is returned (the record was not queued).
pub fn send_with_backpressure<C: ProducerContext>(
    producer: &BaseProducer<C>,
    mut rec: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> Result<(), KafkaError> {
    let mut paused = false;
    let result = loop {
        match producer.send(rec) {
            Ok(()) => break Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                if !paused {
                    crate::metrics::METRICS.backpressure_paused.set(1);
                    paused = true;
                }
                rec = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => break Err(e),
        }
    };
    if paused {
        crate::metrics::METRICS.backpressure_paused.set(0);
    }
    result
}

/// Properties a producer rejects with a warning when they come from shared pass-through.
const CONSUMER_ONLY: [&str; 7] = [
    "group.instance.id",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "partition.assignment.strategy",
];

/// A consumer-group member's configuration: the group semantics every stage shares (manual
/// commit of explicitly stored offsets, from the earliest offset, `kafka.session_timeout`,
/// only committed transactions), then the stage's own tuning `defaults`. The instance id
/// ([`instance_id`]) becomes a static `group.instance.id` with a per-stage suffix so the
/// pipeline, sink and alerts members stay distinct.
pub fn group_config(
    cfg: &Config,
    group: &str,
    stage: &str,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let session = cfg.kafka.session_timeout.as_millis().to_string();
    let mut all = vec![
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("session.timeout.ms", session.as_str()),
    ];
    all.extend_from_slice(defaults);
    let mut c = client_config(cfg, &all);
    c.set("group.id", group);
    if c.get("isolation.level").is_none() {
        c.set("isolation.level", "read_committed");
    }
    if let Some(id) = instance_id(cfg) {
        c.set("group.instance.id", format!("{id}-{stage}"));
    }
    c
}

/// A topic to create: name, partitions, configs.
pub type TopicPlan = (String, i32, Vec<(&'static str, &'static str)>);

/// Every topic `setup` creates, with partitions and configs. The rating pipeline's input and
/// its changelog get `topics.partitions`; its outputs `topics.output_partitions`, and so do
/// the credits ledger's inputs, outputs and changelogs: an account's debits and grants must
/// meet in the same partition number (co-partitioning).
pub fn planned_topics(cfg: &Config) -> Vec<TopicPlan> {
    let t = &cfg.topics;
    let p = t.partitions;
    let o = t.output_partitions;
    let week = ("retention.ms", "604800000");
    let month = ("retention.ms", "2592000000");
    let delete = ("cleanup.policy", "delete");
    let compact = ("cleanup.policy", "compact");
    vec![
        (t.usage_events.clone(), p, vec![delete, week]),
        (t.state.clone(), p, vec![compact]),
        (t.price_catalog.clone(), 1, vec![compact]),
        (t.plans.clone(), 1, vec![compact]),
        (t.debits.clone(), o, vec![delete, month]),
        (t.priced_usage.clone(), o, vec![delete, week]),
        (t.dead_letter.clone(), o, vec![delete, month]),
        (t.alerts.clone(), 1, vec![delete]),
        (t.alerts_state.clone(), o, vec![compact]),
        (t.credit_grants.clone(), o, vec![delete, month]),
        (t.balances.clone(), o, vec![delete, month]),
        (t.credit_alerts.clone(), o, vec![delete, month]),
        (t.ledger_state.clone(), o, vec![compact]),
        (t.ledger_results.clone(), o, vec![delete, week]),
        (t.topup_requests.clone(), o, vec![delete, month]),
        (t.voucher_requests.clone(), o, vec![delete, month]),
        (t.voucher_results.clone(), o, vec![delete, week]),
        (t.voucher_state.clone(), o, vec![compact]),
        // Small and read whole by every instance: one partition, compacted.
        (t.api_keys.clone(), 1, vec![compact]),
    ]
}

/// Refuses a replication factor the cluster cannot place: each copy of a partition needs its
/// own broker, and Kafka would only answer `INVALID_REPLICATION_FACTOR` for the first topic.
pub fn check_replication_factor(cfg: &Config, brokers: usize) -> anyhow::Result<()> {
    let rf = cfg.topics.replication_factor;
    if usize::try_from(rf).is_ok_and(|rf| rf > brokers) {
        anyhow::bail!(
            "topics.replication_factor = {rf}: larger than the {brokers} broker(s) of the cluster \
             at kafka.brokers = \"{}\"; lower it (1 for a single broker) or add brokers",
            cfg.kafka.brokers
        );
    }
    Ok(())
}

/// How long `create_topics` retries a topic the controller refuses with
/// InvalidReplicationFactor although the metadata lists enough brokers: the state of a
/// cluster whose brokers are registered but not unfenced yet (starting, or fenced for a late
/// heartbeat under load).
const FENCED_BROKERS_WAIT: Duration = Duration::from_secs(60);

/// Creates the planned topics with `topics.replication_factor` copies and
/// `topics.min_insync_replicas`; existing ones are left as they are. Returns what was
/// created. Fails before creating anything when the factor exceeds the live brokers; a
/// refusal of the factor by a cluster whose brokers are not unfenced yet is retried for
/// [`FENCED_BROKERS_WAIT`].
pub async fn create_topics(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, &[]).create()?;
    let brokers = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))?
        .brokers()
        .len();
    check_replication_factor(cfg, brokers)?;
    let plan = planned_topics(cfg);
    let min_isr = cfg.topics.min_insync_replicas.to_string();
    let new: Vec<NewTopic<'_>> = plan
        .iter()
        .map(|(name, parts, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    name,
                    *parts,
                    TopicReplication::Fixed(cfg.topics.replication_factor),
                )
                .set("min.insync.replicas", &min_isr),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(45)));
    let mut created = Vec::new();
    let mut pending = new;
    let started = Instant::now();
    while !pending.is_empty() {
        let mut retry = Vec::new();
        for r in admin.create_topics(&pending, &opts).await? {
            match r {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // The brokers are in the metadata (checked above) but none is unfenced yet
                // (starting, or fenced a moment for a late heartbeat): retried for a minute.
                Err((name, RDKafkaErrorCode::InvalidReplicationFactor))
                    if started.elapsed() < FENCED_BROKERS_WAIT =>
                {
                    retry.push(name)
                }
                Err((name, e)) => anyhow::bail!("cannot create topic {name}: {e}"),
            }
        }
        if !retry.is_empty() {
            tracing::warn!(
                topics = retry.len(),
                "the cluster refused the replication factor for now (no unfenced broker?); retrying"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        pending.retain(|t| retry.iter().any(|r| r == t.name));
    }
    wait_for_leaders(cfg, &plan, Duration::from_secs(30))?;
    Ok(created)
}

/// Waits until every partition of the planned topics has a leader: right after creation a
/// partition can answer `NotLeaderForPartition` for a moment, which would fail a service
/// started at once.
fn wait_for_leaders(cfg: &Config, plan: &[TopicPlan], timeout: Duration) -> anyhow::Result<()> {
    use rdkafka::consumer::Consumer;
    let reader: Reader = reader_config(cfg).create_with_context(ReaderContext)?;
    let deadline = Instant::now() + timeout;
    loop {
        let md = reader.fetch_metadata(None, Duration::from_secs(10))?;
        let missing: Vec<String> = plan
            .iter()
            .filter(|(name, parts, _)| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .is_none_or(|t| {
                        t.error().is_some()
                            || t.partitions().len() < *parts as usize
                            || t.partitions()
                                .iter()
                                .any(|p| p.leader() < 0 || p.error().is_some())
                    })
            })
            .map(|(name, _, _)| name.clone())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("topics without a partition leader after {timeout:?}: {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `partitions` of `topic` from their first to their last offset (the high watermark
/// when this is called; the consumer needs `enable.partition.eof = true`), calling
/// `on_message` for each message in partition order. `check(partition, low, high)` may
/// refuse a partition before anything is read (e.g. one whose start was deleted by
/// retention). Fails naming `what` when a partition has not reached its end within
/// `timeout`; read errors are logged and retried. The one "read a topic whole" loop of the
/// CLI commands (`replay`, `rerate`).
pub fn read_to_end<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(i32, i64, i64) -> anyhow::Result<()>,
    mut on_message: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use rdkafka::consumer::Consumer;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut pending = std::collections::HashSet::new();
    for &p in partitions {
        let (low, high) = watermarks(consumer, topic, p, timeout)?;
        check(p, low, high)?;
        if high > low {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
            pending.insert(p);
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while !pending.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: partitions {pending:?} did not reach their end within {timeout:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => on_message(&m)?,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(error = %e, topic, "read error, retrying"),
            None => {}
        }
    }
    Ok(())
}

/// `fetch_watermarks` that rides out the moments after a topic's creation or a leader
/// change (`NotLeaderForPartition`, `LeaderNotAvailable`, `UnknownTopicOrPartition`), up to
/// `timeout`.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    use rdkafka::consumer::Consumer;
    let deadline = Instant::now() + timeout;
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition,
            )) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn transactional_producers_retry_concurrent_transactions_fast_unless_overridden() {
        let mut cfg = Config::default();
        let c = transactional_producer_config(&cfg, "pipeline");
        assert_eq!(c.get("retry.backoff.ms"), Some("2"));
        cfg.kafka
            .properties
            .insert("retry.backoff.ms".into(), "50".into());
        let c = transactional_producer_config(&cfg, "pipeline");
        assert_eq!(c.get("retry.backoff.ms"), Some("50"));
    }

    #[test]
    fn setup_refuses_a_replication_factor_above_the_broker_count() {
        let mut cfg = Config::default();
        cfg.kafka.brokers = "127.0.0.1:19092".into();
        cfg.topics.replication_factor = 3;
        let e = check_replication_factor(&cfg, 1).unwrap_err().to_string();
        assert!(
            e.starts_with("topics.replication_factor = 3: larger than the 1 broker(s)"),
            "{e}"
        );
        assert!(e.contains("127.0.0.1:19092"), "{e}");
        check_replication_factor(&cfg, 3).unwrap();
        cfg.topics.replication_factor = 1;
        check_replication_factor(&cfg, 1).unwrap();
    }

    #[test]
    fn both_shapes_of_partition_eof_are_the_end_of_a_read() {
        assert!(is_partition_eof(&KafkaError::PartitionEOF(3)));
        assert!(is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_partition_eof(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
