//! Fault injection against real services, bounded in time: ClickHouse down for 30 s and
//! refusing inserts (a missing column); the broker frozen and restarted mid-stream; the
//! catalog missing at start. Each asserts the money afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use usage_aggregator::loadgen::Generated;

fn workload(env: &TestEnv, executions: u64, direct: u64, seed: u64) -> Vec<Generated> {
    workload_for(env, executions, direct, seed, 25, "2026-05-01T00:00:00Z")
}

fn ch_count(env: &TestEnv, table: &str) -> usize {
    env.ch(&format!("SELECT count() FROM {{db}}.{table}"))
        .trim()
        .parse()
        .unwrap()
}

fn assert_clickhouse_exact(env: &TestEnv, oracle: &Oracle) {
    let db = &env.cfg.clickhouse.database;
    let n = oracle.debits.len();
    assert_eq!(
        env.ch(&format!(
            "SELECT count(), uniqExact(debit_id) FROM {db}.debits"
        ))
        .trim(),
        format!("{n}\t{n}")
    );
    let l = oracle.lines.len();
    assert_eq!(
        env.ch(&format!(
            "SELECT count(), uniqExact(event_id) FROM {db}.usage_transactions"
        ))
        .trim(),
        format!("{l}\t{l}")
    );
    let sums = parse_tsv_map(&env.ch(&format!(
        "SELECT account_id, toString(sum(total)) FROM {db}.debits GROUP BY account_id"
    )));
    for (account, total) in oracle.totals_per_account() {
        assert_eq!(
            sums[&account]
                .parse::<rust_decimal::Decimal>()
                .unwrap()
                .normalize(),
            total,
            "{account}"
        );
    }
}

#[test]
fn fault_clickhouse_outage_and_refused_inserts_lose_no_row() {
    let mut env = TestEnv::new("outage");
    let mut ch = PrivateClickHouse::start(env.dir.path());
    env.cfg.clickhouse.url = ch.url.clone();
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let events = workload(&env, 1200, 4000, 21);
    let (first, second) = events.split_at(events.len() / 2);
    let (first, second) = (first.to_vec(), second.to_vec());
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let producer = std::thread::spawn(move || {
        for (i, g) in first.iter().enumerate() {
            loader.send(&topic, &g.key, &g.payload).unwrap();
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        loader.flush().unwrap();
        loader
    });
    env.wait_for("rows in clickhouse", Duration::from_secs(60), || {
        ch_count(&env, "debits") > 0
    });

    // Outage: ClickHouse is gone for 30 s while events flow.
    ch.stop();
    let (before, _) = env.debits_by_id();
    let outage = Instant::now();
    let mut saw_not_ready = false;
    while outage.elapsed() < Duration::from_secs(30) {
        let (s, body) = http_get(&env.cfg.http.listen, "/readyz");
        if s == 503 && body.contains("clickhouse") {
            saw_not_ready = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (during, _) = env.debits_by_id();
    assert!(
        saw_not_ready,
        "/readyz reports clickhouse unreachable during the outage"
    );
    assert!(
        during.len() > before.len() + 100,
        "debits kept flowing during the outage: {} -> {}",
        before.len(),
        during.len()
    );
    ch.resume();
    let loader = producer.join().unwrap();

    // Refused inserts: a column is missing; rows wait and are retried, never dropped.
    let retries_before = metric(
        &env.metrics(),
        "usage_agg_sink_retries_total{table=\"debits\"}",
    );
    env.ch("ALTER TABLE {db}.debits DROP COLUMN calls");
    let topic = env.cfg.topics.usage_events.clone();
    for g in &second {
        loader.send(&topic, &g.key, &g.payload).unwrap();
    }
    loader.flush().unwrap();
    env.wait_for("insert retries", Duration::from_secs(60), || {
        metric(
            &env.metrics(),
            "usage_agg_sink_retries_total{table=\"debits\"}",
        ) > retries_before + 1.0
    });
    env.ch("ALTER TABLE {db}.debits ADD COLUMN calls UInt32 AFTER total");

    let oracle = env.wait_for_oracle(Duration::from_secs(180));
    env.wait_for("clickhouse to catch up", Duration::from_secs(120), || {
        ch_count(&env, "debits") >= oracle.debits.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_clickhouse_exact(&env, &oracle);
    eprintln!(
        "outage: {} debits, {} lines, all once in clickhouse after a 30 s outage and refused inserts",
        oracle.debits.len(),
        oracle.lines.len()
    );
}

#[test]
fn fault_broker_frozen_then_restarted_mid_stream() {
    let mut env = TestEnv::new("broker_restart");
    let mut broker = PrivateBroker::start(env.dir.path());
    env.cfg.kafka.brokers = broker.addr.clone();
    env.write_config();
    env.env.push((
        "USAGE_AGG_KAFKA_PROP_SOCKET_TIMEOUT_MS".into(),
        "3000".into(),
    ));
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let events = workload(&env, 250, 1500, 8);
    let (first, second) = events.split_at(events.len() / 2);
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    for g in first {
        loader.send(&topic, &g.key, &g.payload).unwrap();
    }
    loader.flush().unwrap();
    env.wait_for("the service to be ready", Duration::from_secs(60), || {
        http_get(&env.cfg.http.listen, "/readyz").0 == 200
    });

    // Frozen broker: the service must stop claiming readiness.
    broker.signal("STOP");
    let mut saw_not_ready = false;
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(25) && !saw_not_ready {
        saw_not_ready = http_get(&env.cfg.http.listen, "/readyz").0 == 503;
        std::thread::sleep(Duration::from_millis(250));
    }
    broker.signal("CONT");
    assert!(saw_not_ready, "/readyz failed while the broker was frozen");

    // Crash and restart: SIGKILL mid-stream, the log dir is recovered on restart; the
    // pipeline reconnects and carries on (or, if its transaction was fenced meanwhile, exits
    // and is restarted, as a supervisor would).
    let feeder = {
        let loader = env.loader();
        let topic = topic.clone();
        let second = second.to_vec();
        std::thread::spawn(move || {
            for (i, g) in second.iter().enumerate() {
                // The loader's own retries carry it over the broker's downtime.
                loader.send(&topic, &g.key, &g.payload).unwrap();
                if i % 200 == 199 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            loader.flush().unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    broker.resume();
    feeder.join().unwrap();
    let (oracle, restarts) =
        env.wait_for_oracle_supervised(0, "all", "agg.log", Duration::from_secs(240));
    let (_, raw) = env.debits_by_id();
    assert_eq!(
        raw,
        oracle.debits.len(),
        "a read_committed reader sees each debit once across a broker crash"
    );
    eprintln!("broker restart: the aggregator was restarted {restarts} time(s)");
    env.wait_for("clickhouse to catch up", Duration::from_secs(120), || {
        ch_count(&env, "debits") >= oracle.debits.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_clickhouse_exact(&env, &oracle);
    eprintln!(
        "broker restart: {} debits equal the oracle",
        oracle.debits.len()
    );
}

#[test]
fn fault_empty_catalog_at_start_bills_nothing_and_says_so() {
    let mut env = TestEnv::new("no_catalog");
    env.cfg.pricing.catalog_file = "".into();
    env.write_config();
    env.setup();
    env.spawn("pipeline", "agg.log");
    let loader = env.loader();
    loader
        .send(&env.cfg.topics.usage_events, "a", br#"{"type":"tool_call","event_id":"e1","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","asset_id":"tavily/web-search","quantities":{"requests":1}}"#)
        .unwrap();
    loader.flush().unwrap();
    env.wait_for(
        "the service to say the catalog is empty",
        Duration::from_secs(30),
        || env.log("agg.log").contains("price catalog is empty"),
    );
    let (status, body) = http_get(&env.cfg.http.listen, "/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("catalog"), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        env.debits_by_id().0.is_empty(),
        "nothing billed without a catalog"
    );
    assert!(
        env.read_topic(&env.cfg.topics.dead_letter)
            .values()
            .all(Vec::is_empty),
        "nothing rejected either: events wait"
    );
    // Publishing a catalog releases the waiting events, priced correctly.
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.wait_for(
        "the waiting event to be billed",
        Duration::from_secs(60),
        || env.debits_by_id().0.len() == 1,
    );
    let d: usage_aggregator::debit::Debit =
        serde_json::from_slice(env.debits_by_id().0.values().next().unwrap()).unwrap();
    assert_eq!(d.total.to_string(), "0.008");
}
