//! Bench baseline, the exactly-once pass-through copier: the run's usage topic in; its drain
//! rate (events/s) and CPU seconds per million events out. It is the real limit of a
//! read-process-write job on this broker: read `read_committed` in a consumer group, write the
//! same bytes with a transactional producer configured like the service's outputs
//! (`kafka::transactional_producer_config`), [`OUTPUTS_PER_INPUT`] messages per input on
//! average (as the rating pipeline's priced lines, debits and dead letters), and commit the
//! input offsets in the transaction every [`COMMIT_EVERY`] (the default checkpoint interval).
//! The cold-start phase prints the aggregator's figures as a share of it.
//!
//! Every librdkafka baseline sets `fetch.queue.backoff.ms` low ([`FETCH_QUEUE_BACKOFF_MS`]):
//! with the default (1000 ms) librdkafka stops fetching a partition for a whole second
//! whenever its local queue holds `queued.min.messages` (100 000) or
//! `queued.max.messages.kbytes`, so a reader faster than one fetch idles for seconds and
//! measures the trap, not the broker (the copier ran at 123-170k events/s with the default
//! and ~400k with 1-5 ms).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{BenchEnv, BenchReport};
use crate::kafka;

/// `fetch.queue.backoff.ms` of every librdkafka baseline (see the module docs).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "2";
/// How often the copier commits its transaction (offsets included).
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// Outputs per input: one copy of every input, a second one of every fifth.
pub const OUTPUTS_PER_INPUT: f64 = 1.2;

/// What the copier measured.
pub struct Copied {
    pub events_per_s: f64,
    pub cpu_s_per_million: f64,
    pub outputs: u64,
    pub commits: u64,
}

/// Bench phase 2c: the copier drains the usage topic into a topic of its own; a failure is
/// printed as skipped, never a failure of the bench.
pub async fn phase(env: &BenchEnv, events: u64, r: &mut BenchReport) {
    match run(env, events).await {
        Ok(c) => {
            r.copier_events_per_s = Some(c.events_per_s);
            r.copier_cpu_s_per_million_events = Some(c.cpu_s_per_million);
            println!(
                "baseline exactly-once copier (read_committed -> transactional, {:.2} outputs per input, offsets every {} ms): {:.0} events/s, {:.2} CPU s per 1M events ({} outputs, {} commits)",
                c.outputs as f64 / events.max(1) as f64,
                COMMIT_EVERY.as_millis(),
                c.events_per_s,
                c.cpu_s_per_million,
                c.outputs,
                c.commits
            );
        }
        Err(e) => {
            println!("baseline exactly-once copier skipped: {e:#}");
            r.copier_skipped = Some(format!("{e:#}"));
        }
    }
}

async fn run(env: &BenchEnv, events: u64) -> anyhow::Result<Copied> {
    let out = format!("{}.copier_out", env.tag);
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(&env.cfg, &[]).create()?;
    let topic = NewTopic::new(
        &out,
        env.cfg.topics.output_partitions,
        TopicReplication::Fixed(env.cfg.topics.replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for res in admin.create_topics([&topic], &opts).await? {
        res.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
    }
    copy(env, events, &out)
}

/// CPU seconds (user + system) this process has used so far.
fn own_cpu_s() -> f64 {
    super::fleet::proc_cpu_s(std::process::id())
}

fn copy(env: &BenchEnv, events: u64, out: &str) -> anyhow::Result<Copied> {
    let consumer: BaseConsumer = kafka::group_config(
        &env.cfg,
        &format!("{}-copier", env.tag),
        "copier",
        &[
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ("fetch.wait.max.ms", "20"),
        ],
    )
    .create()?;
    let producer: crate::kafka::polled::PolledProducer<DefaultProducerContext> =
        kafka::transactional_producer_config(&env.cfg, "copier").create()?;
    let timeout = env
        .cfg
        .pipeline
        .transaction_timeout
        .max(Duration::from_secs(10));
    producer.init_transactions(timeout)?;
    consumer.subscribe(&[&env.cfg.topics.usage_events])?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut seen, mut outputs, mut commits) = (0u64, 0u64, 0u64);
    let mut first: Option<(Instant, f64)> = None;
    let mut open_since: Option<Instant> = None;
    let commit = |next: &BTreeMap<i32, i64>| -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&env.cfg.topics.usage_events, *p, Offset::Offset(*o))?;
        }
        let cgm = consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("the copier's consumer has no group metadata"))?;
        producer.send_offsets_to_transaction(&tpl, &cgm, timeout)?;
        // As the stages do: the flush inside commit_transaction polls in 100 ms slices.
        kafka::await_in_flight(&producer, Instant::now() + timeout);
        producer.commit_transaction(timeout)?;
        Ok(())
    };
    while seen < events {
        if Instant::now() > deadline {
            anyhow::bail!("copied {seen} of {events} events in 10 minutes");
        }
        let wait = match open_since {
            Some(t) => COMMIT_EVERY.saturating_sub(t.elapsed()),
            None => Duration::from_millis(100),
        };
        if let Some(m) = consumer.poll(wait) {
            let m = m?;
            first.get_or_insert_with(|| (Instant::now(), own_cpu_s()));
            if open_since.is_none() {
                producer.begin_transaction()?;
                open_since = Some(Instant::now());
            }
            let copies = if m.offset() % 5 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                let mut rec = BaseRecord::<[u8], [u8]>::to(out);
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(v) = m.payload() {
                    rec = rec.payload(v);
                }
                kafka::send_with_backpressure(&producer, rec)?;
            }
            outputs += copies;
            next.insert(m.partition(), m.offset() + 1);
            seen += 1;
        }
        if open_since.is_some_and(|t| t.elapsed() >= COMMIT_EVERY)
            || (seen >= events && open_since.is_some())
        {
            commit(&next)?;
            commits += 1;
            open_since = None;
        }
    }
    let (t0, cpu0) = first.unwrap_or((started, 0.0));
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    let cpu = own_cpu_s() - cpu0;
    Ok(Copied {
        events_per_s: seen as f64 / secs,
        cpu_s_per_million: cpu / (seen.max(1) as f64 / 1e6),
        outputs,
        commits,
    })
}
