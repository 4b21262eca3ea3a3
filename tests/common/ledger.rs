//! Helpers of the credits ledger tests (tests/ledger.rs, tests/credits_*.rs): an environment
//! whose ledger restarts fast, reading a topic whole, debits like the rating pipeline's.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use usage_aggregator::debit::{BreakdownLine, Debit, DebitKind};
use usage_aggregator::ledger::core::BalanceEvent;

use super::{TestEnv, http_call};

/// Every committed message of a topic (read_committed, to each partition's end).
pub fn read_all(env: &TestEnv, topic: &str) -> Vec<(i32, i64, Vec<u8>, Vec<u8>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.cfg.kafka.brokers)
        .set("group.id", format!("{}-check", env.name))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut done = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.len() < parts.len() {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            _ => {}
        }
    }
    out
}

pub fn balance_events(env: &TestEnv) -> Vec<(i32, BalanceEvent)> {
    read_all(env, &env.cfg.topics.balances)
        .into_iter()
        .map(|(p, _, _, v)| (p, serde_json::from_slice(&v).unwrap()))
        .collect()
}

/// A minimal HTTP/1.0 POST with an optional bearer token: (status, body).
pub fn http_post(addr: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let a = http_call(addr, "POST", path, token, Some(body));
    (a.status, a.body)
}

/// A debit like the rating pipeline's: a 12-decimal cost, an exact markup (18 decimals).
pub fn debit(id: &str, account: &str, cost: Decimal) -> Debit {
    let rate = Decimal::new(123_457, 6);
    let markup = cost * rate;
    let total = cost + markup;
    let at = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    Debit {
        debit_id: id.into(),
        kind: DebitKind::ModelCall,
        account_id: account.into(),
        execution_id: None,
        plan: "default".into(),
        plan_version: None,
        subtotal: cost,
        markup_rate: rate,
        markup,
        total,
        calls: 1,
        first_event_at: at,
        last_event_at: at,
        breakdown: vec![BreakdownLine {
            asset_id: "openai/gpt-4o-mini".into(),
            asset_type: usage_aggregator::catalog::AssetType::Model,
            price_version: String::new(),
            calls: 1,
            quantities: [("input_tokens".to_string(), Decimal::from(1200))].into(),
            cost,
        }],
        components: usage_aggregator::debit::Components {
            models: cost,
            tools: Decimal::ZERO,
            markup,
        },
        correction: None,
    }
}

pub fn ledger_env(name: &str) -> TestEnv {
    let mut env = TestEnv::new(name);
    // Static membership and a stable transactional.id: a restarted ledger takes its
    // partitions back at once and fences (aborts) its predecessor's open transaction.
    env.env
        .push(("USAGE_AGG__KAFKA__INSTANCE_ID".into(), env.name.clone()));
    env.env.push((
        "USAGE_AGG_KAFKA_PROP_SESSION_TIMEOUT_MS".into(),
        "6000".into(),
    ));
    env.write_config();
    env.setup();
    wait_for_leaders(&env);
    env
}

/// Waits until every topic of the environment has a leader for each partition (right after
/// creation the broker may still answer NOT_LEADER_FOR_PARTITION).
pub fn wait_for_leaders(env: &TestEnv) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.cfg.kafka.brokers)
        .create()
        .unwrap();
    let topics: Vec<String> = usage_aggregator::kafka::planned_topics(&env.cfg)
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    env.wait_for("topic leaders", Duration::from_secs(30), || {
        topics.iter().all(|t| {
            c.fetch_metadata(Some(t), Duration::from_secs(5))
                .is_ok_and(|md| {
                    md.topics().first().is_some_and(|m| {
                        m.error().is_none()
                            && !m.partitions().is_empty()
                            && m.partitions()
                                .iter()
                                .all(|p| p.leader() >= 0 && p.error().is_none())
                    })
                })
        })
    });
}
