//! The Kafka side of `rerate`: the committed priced lines and debits in (each topic read
//! `read_committed` to its end, refusing a topic whose start was deleted by retention), the
//! correction debits out in Kafka transactions of a fixed `transactional.id`.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer};
use serde::de::DeserializeOwned;
use usage_aggregator::config::Config;
use usage_aggregator::debit::Debit;
use usage_aggregator::kafka::{self, Reader, ReaderContext};

/// The `transactional.id` of every `rerate` run of a deployment: one at a time. Starting a
/// run fences any earlier one (killed, or still running) and completes its open
/// transaction (aborted) before anything is read, so what is read includes every
/// correction an earlier run committed and nothing it may still commit.
pub fn transactional_id(cfg: &Config) -> String {
    format!("{}-rerate", cfg.kafka.group_id)
}

pub type TxnProducer = kafka::polled::PolledProducer<DefaultProducerContext>;

/// The transactional producer, initialised (fencing earlier runs).
pub fn producer(cfg: &Config) -> anyhow::Result<TxnProducer> {
    let id = transactional_id(cfg);
    let mut c = kafka::transactional_producer_config(cfg, "rerate");
    c.set("transactional.id", &id);
    let p: TxnProducer = c.create().context("cannot create the rerate producer")?;
    let timeout = cfg
        .pipeline
        .transaction_timeout
        .max(Duration::from_secs(30));
    p.init_transactions(timeout)
        .with_context(|| format!("init_transactions of transactional.id {id}"))?;
    Ok(p)
}

/// Writes `debits` to the debits topic, `per_transaction` per Kafka transaction (keyed by
/// account, as the pipeline keys debits), calling `progress(transactions, debits)` after each
/// commit; returns the number of transactions. A crash
/// leaves at most one transaction open: the next run aborts it at `init_transactions`.
pub fn emit(
    cfg: &Config,
    p: &TxnProducer,
    debits: &[Debit],
    per_transaction: usize,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<usize> {
    let timeout = cfg
        .pipeline
        .transaction_timeout
        .max(Duration::from_secs(30));
    let topic = &cfg.topics.debits;
    let mut n = 0;
    let mut done = 0;
    for chunk in debits.chunks(per_transaction.max(1)) {
        p.begin_transaction().context("begin_transaction")?;
        for d in chunk {
            let bytes = d.encode();
            let rec = BaseRecord::<[u8], [u8], ()>::to(topic)
                .key(d.account_id.as_bytes())
                .payload(&bytes);
            kafka::send_with_backpressure(p, rec)
                .with_context(|| format!("topics.debits = \"{topic}\": cannot send"))?;
        }
        kafka::await_in_flight(p, Instant::now() + timeout);
        p.commit_transaction(timeout)
            .with_context(|| format!("topics.debits = \"{topic}\": commit_transaction"))?;
        n += 1;
        done += chunk.len();
        progress(n, done);
    }
    Ok(n)
}

/// Every committed message of `topic` parsed as `T` that `keep` accepts (the others are
/// dropped as they are read: memory holds only what is kept), each partition read from its start to
/// its end (partition EOF: for a `read_committed` reader, the last stable offset). Refuses a
/// partition whose first offset is not 0 (retention deleted its start: what was billed there
/// can no longer be read whole), naming `key`, the topic, partition and offset.
pub fn read_all<T: DeserializeOwned>(
    cfg: &Config,
    key: &str,
    topic: &str,
    timeout: Duration,
    mut keep: impl FnMut(&T) -> bool,
) -> anyhow::Result<Vec<T>> {
    let mut c = kafka::reader_config(cfg);
    c.set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760");
    let consumer: Reader = c.create_with_context(ReaderContext)?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("{key} = \"{topic}\": cannot read its metadata"))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(
        !partitions.is_empty(),
        "{key} = \"{topic}\": the topic does not exist; run `usage-aggregator setup`"
    );
    let mut out = Vec::new();
    kafka::read_to_end(
        &consumer,
        topic,
        &partitions,
        timeout,
        &format!("{key} = \"{topic}\""),
        |p, low, _| {
            if low > 0 {
                return Err(anyhow!(
                    "{key} = \"{topic}\": partition {p} starts at offset {low} (older messages were deleted by retention); rerate reads what was billed from the whole topic and would miss them (re-rating from ClickHouse is not built)"
                ));
            }
            Ok(())
        },
        |m| {
            let Some(bytes) = m.payload() else {
                return Ok(());
            };
            let v: T = serde_json::from_slice(bytes).with_context(|| {
                format!(
                    "{key} = \"{topic}\": partition {} offset {}: not readable",
                    m.partition(),
                    m.offset()
                )
            })?;
            if keep(&v) {
                out.push(v);
            }
            Ok(())
        },
    )?;
    Ok(out)
}
