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

/// Base client configuration: brokers, pass-through properties, secret properties from env.
pub fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    c.set("socket.keepalive.enable", "true");
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
    let mut c = client_config(cfg);
    c.set("group.id", format!("{}-reader", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    c
}

/// A producer configuration: idempotent, ordered, acks from all replicas.
pub fn producer_config(cfg: &Config) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", cfg.pipeline.max_in_flight.to_string())
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000");
    c
}

/// Topics `setup` creates, with partitions and configs.
pub fn planned_topics(cfg: &Config) -> Vec<(String, i32, Vec<(&'static str, &'static str)>)> {
    let t = &cfg.topics;
    let p = t.partitions;
    let o = t.output_partitions;
    vec![
        (t.usage_events.clone(), p, vec![("cleanup.policy", "delete"), ("retention.ms", "604800000")]),
        (t.state.clone(), p, vec![("cleanup.policy", "compact")]),
        (t.price_catalog.clone(), 1, vec![("cleanup.policy", "compact")]),
        (t.debits.clone(), o, vec![("cleanup.policy", "delete"), ("retention.ms", "2592000000")]),
        (t.priced_usage.clone(), o, vec![("cleanup.policy", "delete"), ("retention.ms", "604800000")]),
        (t.dead_letter.clone(), o, vec![("cleanup.policy", "delete"), ("retention.ms", "2592000000")]),
        (t.alerts.clone(), 1, vec![("cleanup.policy", "delete")]),
    ]
}

/// Creates the planned topics; existing ones are left as they are. Returns what was created.
pub async fn create_topics(cfg: &Config) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let plan = planned_topics(cfg);
    let new: Vec<NewTopic<'_>> = plan
        .iter()
        .map(|(name, parts, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *parts, TopicReplication::Fixed(cfg.topics.replication_factor)),
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
