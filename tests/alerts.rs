//! Spend alerts against the real broker: offsets are committed on an interval while debits
//! keep arriving (not only when a poll comes back empty), and everything read is committed
//! on shutdown.

mod common;

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use usage_aggregator::debit::{Debit, DebitKind};

use common::TestEnv;

fn debit(i: u64) -> Debit {
    let at = Utc.timestamp_opt(1_780_000_000 + i as i64, 0).unwrap();
    Debit {
        debit_id: format!("d{i}"),
        kind: DebitKind::ModelCall,
        account_id: format!("acct{}", i % 7),
        execution_id: None,
        plan: "default".into(),
        plan_version: None,
        subtotal: Decimal::new(1, 3),
        markup_rate: Decimal::ZERO,
        markup: Decimal::ZERO,
        total: Decimal::new(1, 3),
        calls: 1,
        first_event_at: at,
        last_event_at: at,
        breakdown: vec![],
        components: Default::default(),
        correction: None,
    }
}

/// Sum over the debits partitions of the alerts group's committed offsets.
fn committed(env: &TestEnv, reader: &BaseConsumer) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..env.cfg.topics.output_partitions {
        tpl.add_partition(&env.cfg.topics.debits, p);
    }
    let got = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[test]
fn alerts_commit_on_an_interval_under_steady_load_and_everything_on_shutdown() {
    let mut env = TestEnv::new("alerts_commit");
    env.cfg.alerts.account_hourly_credits = Some(Decimal::from(1000));
    env.setup();
    let stop = CancellationToken::new();
    let alerts = {
        let (cfg, stop) = (env.cfg.clone(), stop.clone());
        std::thread::spawn(move || usage_aggregator::alerts::run(&cfg, stop))
    };
    // Reads the group's committed offsets; never joins the group.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.cfg.kafka.brokers)
        .set("group.id", &env.cfg.kafka.alerts_group_id)
        .create()
        .unwrap();
    let loader = env.loader();
    // The stage first joins the group and restores its state; how long that takes depends on
    // the machine's load and is not what this test measures. One debit, committed, says the
    // stage is running.
    let mut sent = 0u64;
    let d = debit(sent);
    loader
        .send(&env.cfg.topics.debits, &d.account_id, &d.encode())
        .unwrap();
    loader.flush().unwrap();
    sent += 1;
    let joined = Instant::now();
    while committed(&env, &reader) < 1 {
        assert!(
            joined.elapsed() < Duration::from_secs(60),
            "the alerts stage committed nothing within 60 s of its start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A steady stream (a debit every 5 ms for 8 s, longer on a loaded machine until the
    // offsets have advanced 4 times, 120 s at most): the consumer's polls keep returning
    // messages, so only the interval can make it commit.
    let started = Instant::now();
    let mut last_check = Instant::now();
    let mut progress: Vec<i64> = Vec::new();
    let increases = |p: &[i64]| p.windows(2).filter(|w| w[1] > w[0]).count();
    while started.elapsed() < Duration::from_secs(8)
        || (increases(&progress) < 4 && started.elapsed() < Duration::from_secs(120))
    {
        let d = debit(sent);
        loader
            .send(&env.cfg.topics.debits, &d.account_id, &d.encode())
            .unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(5));
        if last_check.elapsed() >= Duration::from_millis(500) {
            progress.push(committed(&env, &reader));
            last_check = Instant::now();
        }
    }
    loader.flush().unwrap();
    let increases = increases(&progress);
    assert!(
        increases >= 4,
        "committed offsets advanced only {increases} times during the stream: {progress:?}"
    );
    // Everything read ends up committed (when idle, or at the latest on shutdown).
    std::thread::sleep(Duration::from_secs(2));
    stop.cancel();
    alerts.join().unwrap().unwrap();
    assert_eq!(committed(&env, &reader), sent as i64);
}
