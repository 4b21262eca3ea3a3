//! Crash tests (pipeline + sink): a realistic workload of 100k+ events flows while the
//! aggregator is killed with SIGKILL at random instants and restarted. Afterwards:
//! - `exactly_once` (50 kills): a `read_committed` reader sees every debit, priced line and
//!   dead letter exactly once (zero repeats), equal to the rating core's result byte for byte;
//!   the time from each restart to its first new debit is measured;
//! - ClickHouse holds every row exactly once with equal sums.
//!
//! (`at_least_once` and its 12-kill case were removed: docs/design.md, "Why there is no
//! at-least-once mode".)

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use usage_aggregator::loadgen::{Workload, WorkloadSpec};

#[test]
fn crash_kill9_fifty_times_exactly_once_no_repeats_on_any_topic() {
    crash_run("crash_eos", "exactly_once", 50);
}

/// Committed debits on the topic now (sum of the partitions' last stable offsets).
fn debits_end(env: &TestEnv, c: &rdkafka::consumer::BaseConsumer) -> i64 {
    use rdkafka::consumer::Consumer;
    (0..env.cfg.topics.output_partitions)
        .map(|p| {
            c.fetch_watermarks(&env.cfg.topics.debits, p, Duration::from_secs(10))
                .map_or(0, |(_, h)| h)
        })
        .sum()
}

fn crash_run(name: &str, delivery: &str, kill_count: usize) {
    let mut env = TestEnv::new(name);
    env.env
        .push(("USAGE_AGG__PIPELINE__DELIVERY".into(), delivery.to_string()));
    let exactly_once = delivery == "exactly_once";
    // Static membership: a restarted member takes its partitions back without waiting for
    // the dead one's session to expire.
    env.env
        .push(("USAGE_AGG__KAFKA__INSTANCE_ID".into(), env.name.clone()));
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
    // Paced so that the kills land while events flow (~2.5 s per kill).
    let per_100ms = (total / (kill_count * 25)).max(50);
    let producer = std::thread::spawn(move || {
        for (i, g) in events.iter().enumerate() {
            loader.send(&topic, &g.key, &g.payload).unwrap();
            if i % per_100ms == per_100ms - 1 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        loader.flush().unwrap();
    });

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut kills = 0;
    let mut assigned_before = 0;
    let watermarks: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.cfg.kafka.brokers)
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    // Seconds from each restart to the first debit it commits (while input still flows).
    let mut recoveries: Vec<f64> = Vec::new();
    let mut restarted_at = (Instant::now(), debits_end(&env, &watermarks));
    while kills < kill_count {
        // Kill only once the new process is consuming, at a random instant after that.
        let wait = Instant::now();
        while env.assignments("aggregator.log") <= assigned_before
            && wait.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !producer.is_finished() {
            while restarted_at.0.elapsed() < Duration::from_secs(30) {
                if debits_end(&env, &watermarks) > restarted_at.1 {
                    recoveries.push(restarted_at.0.elapsed().as_secs_f64());
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
        env.kill9(child);
        kills += 1;
        assigned_before = env.assignments("aggregator.log");
        restarted_at = (Instant::now(), debits_end(&env, &watermarks));
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
    let repeats = raw - oracle.debits.len();
    let line_msgs: usize = env
        .read_topic(&env.cfg.topics.priced_usage)
        .values()
        .map(Vec::len)
        .sum();
    let dead_msgs: usize = env
        .read_topic(&env.cfg.topics.dead_letter)
        .values()
        .map(Vec::len)
        .sum();
    if exactly_once {
        assert_eq!(repeats, 0, "read_committed sees each debit exactly once");
        assert_eq!(
            line_msgs,
            oracle.lines.len(),
            "read_committed sees each priced line exactly once"
        );
        assert_eq!(
            dead_msgs, oracle.rejected,
            "read_committed sees each dead letter exactly once"
        );
    }
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
    recoveries.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        recoveries
            .get(((recoveries.len() as f64 * q) as usize).min(recoveries.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    eprintln!(
        "crash test ({delivery}): restart -> first new debit over {} restarts: p50 {:.2}s, p90 {:.2}s, max {:.2}s",
        recoveries.len(),
        pct(0.5),
        pct(0.9),
        recoveries.last().copied().unwrap_or(f64::NAN)
    );
    eprintln!(
        "crash test ({delivery}): {total} events, {kills} SIGKILLs, {} debits ({raw} messages on the topic, {repeats} repeats; priced_usage {line_msgs} messages for {} lines; dead_letter {dead_msgs} for {}), produced in {:.1}s, settled in {:.1}s, {:.0} events/s overall, {} partition restores averaging {mean_restore:.0} ms",
        oracle.debits.len(),
        oracle.lines.len(),
        oracle.rejected,
        produced_in.as_secs_f64(),
        settled_in.as_secs_f64(),
        total as f64 / settled_in.as_secs_f64(),
        restores.len()
    );
}
