//! Crash test (pipeline + sink): a realistic workload of 100k+ events flows while the
//! aggregator is killed with SIGKILL at random instants 20+ times and restarted. Afterwards
//! the debits topic, deduplicated by debit_id, equals the rating core's result on the same
//! input, and ClickHouse holds every row exactly once with equal sums.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use usage_aggregator::loadgen::{Workload, WorkloadSpec};

#[test]
fn crash_kill9_twenty_times_loses_nothing_and_counts_nothing_twice() {
    let mut env = TestEnv::new("crash");
    // Static membership: a restarted member takes its partitions back without waiting for
    // the dead one's session to expire.
    env.env.push((
        "USAGE_AGG_KAFKA_PROP_GROUP_INSTANCE_ID".into(),
        env.name.clone(),
    ));
    env.env.push((
        "USAGE_AGG_KAFKA_PROP_SESSION_TIMEOUT_MS".into(),
        "6000".into(),
    ));
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let spec = WorkloadSpec {
        executions: 3_600,
        direct_calls: 8_000,
        duplicates: 0.01,
        bad: 0.005,
        late: 0.003,
        accounts: 40,
        seed: 11,
        start: chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
        run_id: env.name.clone(),
        ..Default::default()
    };
    let events: Vec<_> = Workload::new(spec, &env.catalog()).collect();
    assert!(events.len() >= 100_000, "{} events", events.len());
    let total = events.len();

    let mut child = env.spawn("all", "aggregator.log");
    let topic = env.cfg.topics.usage_events.clone();
    let loader = env.loader();
    let started = Instant::now();
    let producer = std::thread::spawn(move || {
        // ~8k events/s so that kills land while events flow.
        for (i, g) in events.iter().enumerate() {
            loader.send(&topic, &g.key, &g.payload).unwrap();
            if i % 800 == 799 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        loader.flush().unwrap();
    });

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut kills = 0;
    let mut assigned_before = 0;
    while kills < 22 {
        // Kill only once the new process is consuming, at a random instant after that.
        let wait = Instant::now();
        while env.assignments("aggregator.log") <= assigned_before
            && wait.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        env.kill9(child);
        kills += 1;
        assigned_before = env.assignments("aggregator.log");
        child = env.spawn("all", "aggregator.log");
    }
    producer.join().unwrap();
    let produced_in = started.elapsed();

    // Let it finish: every execution closed (idle markers) and its debit on the topic.
    let oracle = env.wait_for_oracle(Duration::from_secs(300));
    let settled_in = started.elapsed();
    let expected_rows = oracle.debits.len();
    env.wait_for(
        "clickhouse to hold every debit",
        Duration::from_secs(120),
        || {
            env.ch("SELECT count() FROM {db}.debits")
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
                >= expected_rows
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        oracle.events >= total,
        "markers are added to the input, never events lost"
    );
    let (topic_debits, raw) = env.debits_by_id();
    let missing: Vec<_> = oracle
        .debits
        .keys()
        .filter(|k| !topic_debits.contains_key(*k))
        .collect();
    let extra: Vec<_> = topic_debits
        .keys()
        .filter(|k| !oracle.debits.contains_key(*k))
        .take(5)
        .collect();
    if let Some(id) = missing.first() {
        let d: usage_aggregator::debit::Debit =
            serde_json::from_slice(&oracle.debits[*id]).unwrap();
        let same_exec: Vec<String> = topic_debits
            .values()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .filter(|s| {
                d.execution_id
                    .as_ref()
                    .is_some_and(|x| s.contains(&format!("\"{x}\"")))
            })
            .collect();
        panic!(
            "{} missing (e.g. {}), {} extra {extra:?}; topic has for that execution: {same_exec:#?}",
            missing.len(),
            String::from_utf8_lossy(&oracle.debits[*id]),
            extra.len()
        );
    }
    assert!(extra.is_empty(), "extra {extra:?}");
    for (id, bytes) in &oracle.debits {
        assert_eq!(
            &topic_debits[id], bytes,
            "debit {id} differs from the oracle"
        );
    }
    assert_eq!(
        totals_per_account(topic_debits.values()),
        oracle.totals_per_account()
    );

    // ClickHouse: one row per debit / priced line / dead letter, sums equal to the last digit.
    let db = &env.cfg.clickhouse.database;
    let rows = env.ch(&format!(
        "SELECT count(), uniqExact(debit_id) FROM {db}.debits"
    ));
    assert_eq!(
        rows.trim(),
        format!("{}\t{}", oracle.debits.len(), oracle.debits.len())
    );
    let lines = env.ch(&format!(
        "SELECT count(), uniqExact(event_id) FROM {db}.usage_transactions"
    ));
    assert_eq!(
        lines.trim(),
        format!("{}\t{}", oracle.lines.len(), oracle.lines.len())
    );
    let dead = env.ch(&format!(
        "SELECT count(), uniqExact(dead_letter_id) FROM {db}.dead_letters"
    ));
    assert_eq!(
        dead.trim(),
        format!("{}\t{}", oracle.rejected, oracle.rejected)
    );
    let sums = parse_tsv_map(&env.ch(&format!(
        "SELECT account_id, toString(sum(total)) FROM {db}.debits GROUP BY account_id"
    )));
    for (account, total) in oracle.totals_per_account() {
        let got: rust_decimal::Decimal = sums[&account].parse().unwrap();
        assert_eq!(got.normalize(), total, "account {account}");
    }
    // The daily rollups equal the base tables.
    let diff = env.ch(&format!(
        "SELECT count() FROM (SELECT account_id, sum(total) AS t FROM {db}.debits GROUP BY account_id) a \
         ANY FULL OUTER JOIN (SELECT account_id, sum(total) AS t FROM {db}.daily_account_spend GROUP BY account_id) b USING account_id WHERE a.t != b.t"
    ));
    assert_eq!(diff.trim(), "0");
    let diff = env.ch(&format!(
        "SELECT count() FROM (SELECT asset_id, sum(cost) AS c FROM {db}.usage_transactions GROUP BY asset_id) a \
         ANY FULL OUTER JOIN (SELECT asset_id, sum(cost) AS c FROM {db}.daily_asset_spend GROUP BY asset_id) b USING asset_id WHERE a.c != b.c"
    ));
    assert_eq!(diff.trim(), "0");

    let log = env.log("aggregator.log");
    let restores: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("partition state restored"))
        .filter_map(|l| {
            l.split("ms=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let mean_restore = restores.iter().sum::<f64>() / restores.len().max(1) as f64;
    eprintln!(
        "crash test: {total} events, {kills} SIGKILLs, {} debits ({raw} messages on the topic, {} repeats), produced in {:.1}s, settled in {:.1}s, {:.0} events/s overall, {} partition restores averaging {mean_restore:.0} ms",
        oracle.debits.len(),
        raw - oracle.debits.len(),
        produced_in.as_secs_f64(),
        settled_in.as_secs_f64(),
        total as f64 / settled_in.as_secs_f64(),
        restores.len()
    );
}
