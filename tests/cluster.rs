//! Production shape: the service on a 3-broker KRaft cluster (replication factor 3, min ISR 2,
//! `acks=all`), started by `scripts/services cluster-node`. While events flow, the broker that
//! leads the most `usage_events` partitions is SIGKILLed and restarted, then the one that is
//! the transaction coordinator of the pipeline's `transactional.id`. Afterwards a
//! `read_committed` reader sees every debit, priced line and dead letter exactly once, equal
//! to the rating core's result byte for byte, and ClickHouse holds one row per id with sums
//! equal to the last digit. Prints the time from each kill to the next committed debit.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{DebitWatch, PrivateCluster, transaction_state_partition, wall_ms};
use common::*;
use usage_aggregator::loadgen::{Workload, WorkloadSpec};

#[test]
fn java_string_hash_partition_matches_kafka() {
    // "abc".hashCode() = 96354; "polygenelubricants".hashCode() = Integer.MIN_VALUE -> 0.
    assert_eq!(transaction_state_partition("abc", 50), 96354 % 50);
    assert_eq!(transaction_state_partition("polygenelubricants", 4), 0);
    // "Aa" and "BB" collide in Java (2112).
    assert_eq!(
        transaction_state_partition("Aa", 7),
        transaction_state_partition("BB", 7)
    );
}

/// Seconds from `since` (wall time `since_ms`) until a debit produced after it is committed
/// (`None` after `limit`): a debit of a transaction that was committing at the kill does not
/// count. Acts as the aggregator's supervisor meanwhile (it exits on a fatal Kafka error or
/// a stall; a restart resumes from the last commit).
fn until_next_debit(
    env: &mut TestEnv,
    agg: usize,
    watch: &mut DebitWatch,
    (since, since_ms): (Instant, i64),
    limit: Duration,
    restarts: &mut usize,
) -> Option<f64> {
    while since.elapsed() < limit {
        watch.poll(Duration::from_millis(50));
        if watch.newest_ms > since_ms {
            return Some(since.elapsed().as_secs_f64());
        }
        *restarts += env.respawn_if_exited(agg, "all", "aggregator.log");
    }
    let addr = env.cfg.http.listen.clone();
    let (status, body) = http_get(&addr, "/readyz");
    let metrics = http_get(&addr, "/metrics").1;
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.contains("pipeline_transactions")
                    || l.contains("stage_consumer_lag")
                    || l.contains("events_consumed")
                    || l.contains("last_progress"))
        })
        .collect();
    eprintln!(
        "no new debit within {limit:?}: /readyz {status} {body}\n{}",
        lines.join("\n")
    );
    // Post-mortem: every thread's stack (where it waits) and the log, kept outside the
    // temp dir (USAGE_AGG_TEST_KEEP=dir).
    if let Ok(keep) = std::env::var("USAGE_AGG_TEST_KEEP") {
        let pid = env.children[agg].id().to_string();
        let _ = std::fs::create_dir_all(&keep);
        if let Ok(out) = std::process::Command::new("gdb")
            .args(["-p", &pid, "-batch", "-ex", "thread apply all bt"])
            .output()
        {
            let _ = std::fs::write(format!("{keep}/stacks.txt"), out.stdout);
        }
        let _ = std::fs::write(format!("{keep}/aggregator.log"), env.log("aggregator.log"));
        let _ = std::fs::write(format!("{keep}/metrics.txt"), metrics.as_bytes());
    }
    None
}

/// Sends 40 direct calls of a fresh run id: something to bill after a kill even when the
/// paced input has all been billed already (a loaded box).
fn more_input(env: &TestEnv, tag: &str) {
    let spec = WorkloadSpec {
        executions: 0,
        direct_calls: 40,
        accounts: 20,
        seed: 2929,
        start: chrono::DateTime::parse_from_rfc3339("2026-04-02T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
        run_id: format!("{}-{tag}", env.name),
        ..Default::default()
    };
    let loader = env.loader();
    for g in Workload::new(spec, &env.catalog()) {
        loader
            .send(&env.cfg.topics.usage_events, &g.key, &g.payload)
            .unwrap();
    }
    loader.flush().unwrap();
}

/// Seconds from `since` until no partition of `topic` is led by `node` (at most 60 s).
fn until_leadership_moved(cluster: &PrivateCluster, topic: &str, node: i32, since: Instant) -> f64 {
    loop {
        let leaders = cluster.leaders(topic);
        if leaders.values().all(|l| *l != node && *l > 0) {
            return since.elapsed().as_secs_f64();
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "leadership of {topic} still on node {node} or none: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// Was ignored after the final CI run of 2026-12-03, where the aggregator neither exited nor
// progressed for 90 s after the coordinator's node was SIGKILLed. Now a stage runtime
// producer whose earlier transaction call still runs is re-created at once, and a process with
// a stage stuck for `pipeline.stall_exit_after` (30 s here) exits for its supervisor (this
// test) to restart it (docs/design.md, "A client stuck after a broker loss").
#[test]
fn cluster_sigkill_partition_leader_then_transaction_coordinator_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut cluster = PrivateCluster::start(dir.path());
    let cluster_up = started.elapsed();
    let mut env = TestEnv::new("cluster_failover");
    env.cfg.kafka.brokers = cluster.bootstrap();
    env.cfg.topics.replication_factor = 3;
    env.cfg.topics.min_insync_replicas = 2;
    // A stable transactional id, so the test can find its coordinator (and a restarted
    // process fences the crashed one's transaction at once).
    env.cfg.kafka.instance_id = Some(env.name.clone());
    // A client stuck after a kill (no error, no progress) ends the process within this; the
    // test restarts it as a supervisor would.
    env.cfg.pipeline.stall_exit_after = Duration::from_secs(30);
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let usage = env.cfg.topics.usage_events.clone();
    let leaders = cluster.leaders(&usage);
    assert_eq!(leaders.len(), env.cfg.topics.partitions as usize);

    let spec = WorkloadSpec {
        executions: 500,
        direct_calls: 1_500,
        duplicates: 0.01,
        bad: 0.005,
        late: 0.003,
        accounts: 20,
        seed: 29,
        start: chrono::DateTime::parse_from_rfc3339("2026-04-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
        run_id: env.name.clone(),
        ..Default::default()
    };
    let events: Vec<_> = Workload::new(spec, &env.catalog()).collect();
    let total = events.len();
    let agg = env.spawn("all", "aggregator.log");
    // Input starts once the pipeline consumes, so both kills land while events flow.
    env.wait_for(
        "the pipeline's assignment",
        Duration::from_secs(120),
        || env.assignments("aggregator.log") > 0,
    );
    let loader = env.loader();
    // Paced over ~60 s.
    let per_100ms = (total / 600).max(10);
    let producer = std::thread::spawn(move || {
        for (i, g) in events.iter().enumerate() {
            loader.send(&usage, &g.key, &g.payload).unwrap();
            if i % per_100ms == per_100ms - 1 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        loader.flush().unwrap();
    });
    let mut watch = DebitWatch::new(&env);
    let mut restarts = 0;
    let first = Instant::now();
    assert!(
        until_next_debit(
            &mut env,
            agg,
            &mut watch,
            (first, 0),
            Duration::from_secs(120),
            &mut restarts
        )
        .is_some(),
        "the first debit"
    );

    // 1. The broker that leads the most usage_events partitions.
    let topic = env.cfg.topics.usage_events.clone();
    let victim = cluster.leader_of_most(&topic);
    let led = cluster
        .leaders(&topic)
        .values()
        .filter(|l| **l == victim)
        .count();
    watch.poll(Duration::from_millis(100));
    let killed = (Instant::now(), wall_ms());
    cluster.kill(victim);
    more_input(&env, "after-leader-kill");
    let leader_moved = until_leadership_moved(&cluster, &topic, victim, killed.0);
    let leader_recovery = until_next_debit(
        &mut env,
        agg,
        &mut watch,
        killed,
        Duration::from_secs(90),
        &mut restarts,
    )
    .expect("a debit committed while the leader's node is down");
    cluster.resume(victim);

    // 2. The transaction coordinator of the pipeline's transactional id.
    let txn_id = format!("{}-pipeline-{}", env.cfg.kafka.group_id, env.name);
    let coordinator = cluster.transaction_coordinator(&txn_id);
    watch.poll(Duration::from_millis(100));
    let still_producing = !producer.is_finished();
    let killed = (Instant::now(), wall_ms());
    cluster.kill(coordinator);
    more_input(&env, "after-coordinator-kill");
    let coordinator_recovery = until_next_debit(
        &mut env,
        agg,
        &mut watch,
        killed,
        Duration::from_secs(90),
        &mut restarts,
    )
    .expect("a debit committed while the coordinator's node is down");
    let moved_to = loop {
        let now = cluster.transaction_coordinator(&txn_id);
        if now != coordinator && now > 0 {
            break now;
        }
        assert!(
            killed.0.elapsed() < Duration::from_secs(120),
            "the transaction coordinator of {txn_id} is still node {now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    cluster.resume(coordinator);
    producer.join().unwrap();

    let (oracle, more_restarts) =
        env.wait_for_oracle_supervised(agg, "all", "aggregator.log", Duration::from_secs(240));
    let settled = started.elapsed();
    restarts += more_restarts;
    // Still supervised: a stage that failed for good (e.g. a fenced static consumer) exits
    // the process and is restarted.
    let until = Instant::now() + Duration::from_secs(180);
    while ch_count(&env, "debits") < oracle.debits.len() {
        restarts += env.respawn_if_exited(agg, "all", "aggregator.log");
        assert!(
            Instant::now() < until,
            "clickhouse holds every debit within 180 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1));

    assert!(oracle.events >= total + 80, "no event lost from the input");
    assert_outputs_exactly_once(&env, &oracle);

    eprintln!(
        "cluster failover: 3 nodes up in {:.1}s; {total} events ({} debits, {} lines, {} dead letters); \
         SIGKILL node {victim} (led {led}/{} usage_events partitions) -> leaders moved {leader_moved:.2}s, next committed debit {leader_recovery:.2}s; \
         SIGKILL node {coordinator} (transaction coordinator of {txn_id}, moved to node {moved_to}) -> next committed debit {coordinator_recovery:.2}s; \
         input still flowing at the second kill: {still_producing}; aggregator restarts (exits on a fatal Kafka error, restarted as a supervisor would): {restarts}; settled in {:.1}s",
        cluster_up.as_secs_f64(),
        oracle.debits.len(),
        oracle.lines.len(),
        oracle.rejected,
        env.cfg.topics.partitions,
        settled.as_secs_f64()
    );
}
