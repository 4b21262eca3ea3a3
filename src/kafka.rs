//! Kafka plumbing shared by every stage: client configuration from [`Config`], topic
//! creation for `setup`, and a few blocking helpers.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;

/// Environment prefix for librdkafka properties that hold secrets:
/// `USAGE_AGG_KAFKA_PROP_SASL_PASSWORD` sets `sasl.password`.
pub const PROP_ENV_PREFIX: &str = "USAGE_AGG_KAFKA_PROP_";

/// Client configuration: brokers, then the stage's own `defaults`, then the pass-through
/// properties of the config file, then secret properties from the environment (later wins).
pub fn client_config(cfg: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    c.set("socket.keepalive.enable", "true");
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    for (k, v) in std::env::vars() {
        if let Some(name) = k.strip_prefix(PROP_ENV_PREFIX) {
            c.set(name.to_ascii_lowercase().replace('_', "."), v);
        }
    }
    c
}

/// A plain consumer configuration (no group semantics used), for readers that assign.
pub fn reader_config(cfg: &Config) -> ClientConfig {
    let group = format!("{}-reader", cfg.kafka.group_id);
    let mut c = client_config(
        cfg,
        &[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("fetch.wait.max.ms", "10"),
        ],
    );
    // Readers assign partitions; they never join a group, so no instance id either.
    c.set("group.id", group);
    c.remove("group.instance.id");
    c
}

/// A producer configuration: acks from all replicas. Not idempotent by default: the
/// delivery guarantee does not need it (outputs are deterministic and deduplicated by id,
/// and no consumer relies on their order), and the test broker answers idempotent produce
/// requests ~15x slower (~150 ms vs ~10 ms). Turn it on with kafka.properties if wanted.
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

/// A consumer-group member's configuration; `group.instance.id` from the properties gets a
/// per-stage suffix so the pipeline, sink and alerts members stay distinct.
pub fn group_config(
    cfg: &Config,
    group: &str,
    stage: &str,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut c = client_config(cfg, defaults);
    c.set("group.id", group);
    if let Some(id) = c.get("group.instance.id").map(str::to_string) {
        c.set("group.instance.id", format!("{id}-{stage}"));
    }
    c
}

/// Topics `setup` creates, with partitions and configs.
/// A topic to create: name, partitions, configs.
pub type TopicPlan = (String, i32, Vec<(&'static str, &'static str)>);

pub fn planned_topics(cfg: &Config) -> Vec<TopicPlan> {
    let t = &cfg.topics;
    let p = t.partitions;
    let o = t.output_partitions;
    vec![
        (
            t.usage_events.clone(),
            p,
            vec![("cleanup.policy", "delete"), ("retention.ms", "604800000")],
        ),
        (t.state.clone(), p, vec![("cleanup.policy", "compact")]),
        (
            t.price_catalog.clone(),
            1,
            vec![("cleanup.policy", "compact")],
        ),
        (
            t.debits.clone(),
            o,
            vec![("cleanup.policy", "delete"), ("retention.ms", "2592000000")],
        ),
        (
            t.priced_usage.clone(),
            o,
            vec![("cleanup.policy", "delete"), ("retention.ms", "604800000")],
        ),
        (
            t.dead_letter.clone(),
            o,
            vec![("cleanup.policy", "delete"), ("retention.ms", "2592000000")],
        ),
        (t.alerts.clone(), 1, vec![("cleanup.policy", "delete")]),
    ]
}

/// Creates the planned topics; existing ones are left as they are. Returns what was created.
pub async fn create_topics(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, &[]).create()?;
    let plan = planned_topics(cfg);
    let new: Vec<NewTopic<'_>> = plan
        .iter()
        .map(|(name, parts, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    name,
                    *parts,
                    TopicReplication::Fixed(cfg.topics.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut created = Vec::new();
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, e)) => anyhow::bail!("cannot create topic {name}: {e}"),
        }
    }
    Ok(created)
}
