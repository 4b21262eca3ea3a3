//! Production shape, several instances: one private 3-node KRaft cluster (replication factor
//! 3, min ISR 2) with KRaft's StandardAuthorizer and the ACLs of `scripts/kafka-acls`, shared
//! by two checks to pay for one cluster start:
//! 1. the access matrix on the cluster (as tests/acls.rs on the single secured broker): the
//!    runtime principal is refused `debits`, `credit_grants` and the state topics, the reader
//!    and the sink write nothing, a missing ACL is named by `run` and /readyz;
//! 2. under a paced load written by the runtime principal, rating instances (`run --role
//!    pipeline` as `usage-pipeline`, each its own `kafka.instance_id`) are scaled 1 -> 3, the
//!    three restarted one after the other (SIGTERM, SIGKILL, SIGTERM), then scaled to 2; a
//!    sink (`usage-sink`) and a ledger (`usage-ledger`) run beside them. Afterwards: debits
//!    equal the oracle byte for byte, a `read_committed` reader sees 0 repeats on every
//!    output topic, ClickHouse holds one row per id with exact sums. Prints, per stop or
//!    scale step, the time until every usage_events partition has a new committed debit.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::acls::Secured;
use common::cluster::{DebitWatch, PrivateCluster, wall_ms};
use common::*;
use usage_aggregator::bench::Loader;
use usage_aggregator::loadgen::{Workload, WorkloadSpec};

/// A process of the service under test, restarted (same id, port and log) by [`Fleet::supervise`]
/// while it should run.
struct Proc {
    role: &'static str,
    id: String,
    listen: String,
    child: Option<usize>,
    restarts: usize,
}

struct Fleet {
    procs: Vec<Proc>,
    acl: Secured,
}

impl Fleet {
    fn log_name(&self, k: usize) -> String {
        format!("{}.log", self.procs[k].id)
    }

    fn start(&mut self, env: &mut TestEnv, k: usize) {
        let p = &self.procs[k];
        let mut vars = self.acl.role_env(p.role);
        if p.role == "pipeline" {
            vars.push(("USAGE_AGG__KAFKA__INSTANCE_ID".into(), p.id.clone()));
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        let i = env.spawn_with(p.role, &self.log_name(k), &p.listen, &vars);
        self.procs[k].child = Some(i);
    }

    /// Restarts any process that should run and has exited, as a supervisor would.
    fn supervise(&mut self, env: &mut TestEnv) {
        for k in 0..self.procs.len() {
            let Some(i) = self.procs[k].child else {
                continue;
            };
            if let Ok(Some(status)) = env.children[i].try_wait() {
                eprintln!("{} exited ({status}); restarting it", self.procs[k].id);
                self.procs[k].restarts += 1;
                self.start(env, k);
            }
        }
    }

    /// Stops process `k` (SIGTERM, or SIGKILL when `kill`); the moment it was gone.
    fn stop(&mut self, env: &mut TestEnv, k: usize, kill: bool) -> (Instant, i64) {
        let i = self.procs[k].child.take().expect("a running process");
        if kill {
            env.kill9(i);
        } else {
            let clean = env.terminate(i, Duration::from_secs(40));
            eprintln!("{} stopped (clean exit: {clean})", self.procs[k].id);
        }
        (Instant::now(), wall_ms())
    }

    fn assignments(&self, env: &TestEnv, k: usize) -> usize {
        env.assignments(&self.log_name(k))
    }
}

/// Waits (supervising, polling the watch) until `f` holds; panics after `limit`.
fn wait_supervised(
    env: &mut TestEnv,
    fleet: &mut Fleet,
    watch: &mut DebitWatch,
    what: &str,
    limit: Duration,
    mut f: impl FnMut(&TestEnv, &Fleet, &DebitWatch) -> bool,
) {
    let until = Instant::now() + limit;
    while !f(env, fleet, watch) {
        watch.poll(Duration::from_millis(100));
        fleet.supervise(env);
        if Instant::now() > until {
            for k in 0..fleet.procs.len() {
                let log = env.log(&fleet.log_name(k));
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- {}:\n{}", fleet.procs[k].id, tail.join("\n"));
            }
            panic!("timed out after {limit:?} waiting for {what}");
        }
    }
}

/// Produces paced chunks of a workload (about 100 events/s) as the runtime principal until
/// `stop`; a chunk is always finished, so no execution is left open. Returns the count.
fn paced_load(
    env: &TestEnv,
    loader: Loader,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let catalog = env.catalog();
    let topic = env.cfg.topics.usage_events.clone();
    let name = env.name.clone();
    std::thread::spawn(move || {
        let mut sent = 0;
        let mut k = 0;
        while !stop.load(Ordering::Relaxed) {
            let spec = WorkloadSpec {
                executions: 25,
                direct_calls: 75,
                duplicates: 0.01,
                bad: 0.005,
                accounts: 20,
                seed: 300 + k,
                start: chrono::DateTime::parse_from_rfc3339("2026-05-01T00:00:00Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc)
                    + chrono::Duration::hours(k as i64),
                run_id: format!("{name}-{k}"),
                ..Default::default()
            };
            for (i, g) in Workload::new(spec, &catalog).enumerate() {
                loader.send(&topic, &g.key, &g.payload).unwrap();
                sent += 1;
                if i % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            k += 1;
        }
        loader.flush().unwrap();
        sent
    })
}

/// Seconds from `at_ms` until every usage_events partition had a debit produced after it
/// committed (read by the watch), or None if one has none.
fn recovery(
    received: &[(String, i64, i64)],
    source: &BTreeMap<String, i32>,
    partitions: i32,
    at_ms: i64,
) -> Option<f64> {
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for (id, produced, got) in received {
        if *produced > at_ms
            && let Some(p) = source.get(id)
        {
            let e = first.entry(*p).or_insert(*got);
            *e = (*e).min(*got);
        }
    }
    (first.len() == partitions as usize)
        .then(|| (*first.values().max().unwrap() - at_ms) as f64 / 1000.0)
}

#[test]
fn cluster_acls_then_instances_scale_and_rolling_restart_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let cluster = PrivateCluster::start_with_acls(dir.path());
    let cluster_up = started.elapsed();
    let acl = cluster.secured();
    let mut env = TestEnv::new("cluster_instances");
    // The harness (setup, reading back, the oracle) is the super user on PLAINTEXT; every
    // process under test talks SASL_SSL as its principal.
    env.cfg.kafka.brokers = cluster.bootstrap();
    env.cfg.topics.replication_factor = 3;
    env.cfg.topics.min_insync_replicas = 2;
    env.cfg.pipeline.stall_exit_after = Duration::from_secs(30);
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);

    // 1. ACLs on the cluster.
    let acls_took = acl.apply_acls(&env);
    let bindings = acl.acl_list().matches("(principal=").count();
    acl.check_matrix(&env);
    let named = acl.check_missing_acl_named(&mut env);
    eprintln!(
        "cluster ACLs: {bindings} bindings by scripts/kafka-acls in {:.1}s; missing ACL named: {named}",
        acls_took.as_secs_f64()
    );

    // 2. Instances under load.
    let partitions = env.cfg.topics.partitions;
    let mut fleet = Fleet {
        procs: Vec::new(),
        acl,
    };
    for (role, id) in [
        ("pipeline", "inst-a"),
        ("pipeline", "inst-b"),
        ("pipeline", "inst-c"),
        ("sink", "sink"),
        ("ledger", "ledger"),
    ] {
        fleet.procs.push(Proc {
            role,
            id: id.into(),
            listen: format!("127.0.0.1:{}", free_port()),
            child: None,
            restarts: 0,
        });
    }
    for k in [0, 3, 4] {
        fleet.start(&mut env, k);
    }
    let mut watch = DebitWatch::new(&env);
    wait_supervised(
        &mut env,
        &mut fleet,
        &mut watch,
        "inst-a's assignment",
        Duration::from_secs(120),
        |env, fleet, _| fleet.assignments(env, 0) > 0,
    );
    let mut runtime = env.cfg.clone();
    runtime.kafka.brokers = fleet.acl.secure.clone();
    runtime
        .kafka
        .properties
        .extend(fleet.acl.as_role("runtime"));
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = paced_load(&env, Loader::new(&runtime).unwrap(), stop_load.clone());
    wait_supervised(
        &mut env,
        &mut fleet,
        &mut watch,
        "a debit from one instance",
        Duration::from_secs(120),
        |_, _, w| w.seen > 0,
    );
    // Every step: (what, wall ms at the step). A step is done when every partition had a
    // debit produced after it (checked at the end against the oracle's partition of each
    // debit); meanwhile the test waits for the instance(s) it started to be assigned and
    // for some debits produced after the step.
    let mut steps: Vec<(String, i64)> = Vec::new();
    let settle = |env: &mut TestEnv, fleet: &mut Fleet, watch: &mut DebitWatch, at_ms: i64| {
        wait_supervised(
            env,
            fleet,
            watch,
            "debits on every debits partition after the step",
            Duration::from_secs(150),
            |_, _, w| {
                w.newest_per_partition.len() == partitions as usize
                    && w.newest_per_partition.values().all(|t| *t > at_ms + 2_000)
            },
        );
    };

    // Scale 1 -> 3.
    let before: Vec<usize> = (0..3).map(|k| fleet.assignments(&env, k)).collect();
    let at_ms = wall_ms();
    fleet.start(&mut env, 1);
    fleet.start(&mut env, 2);
    steps.push(("scale 1 -> 3 (2 instances started)".into(), at_ms));
    wait_supervised(
        &mut env,
        &mut fleet,
        &mut watch,
        "three assigned instances",
        Duration::from_secs(150),
        |env, fleet, _| (0..3).all(|k| fleet.assignments(env, k) > before[k]),
    );
    settle(&mut env, &mut fleet, &mut watch, at_ms);

    // Rolling restart: each instance stopped and started again (the second one crashes).
    for (k, kill) in [(0, false), (1, true), (2, false)] {
        let before = fleet.assignments(&env, k);
        let (_, at_ms) = fleet.stop(&mut env, k, kill);
        let how = if kill { "SIGKILL" } else { "SIGTERM" };
        steps.push((
            format!("rolling restart: {how} {}", fleet.procs[k].id),
            at_ms,
        ));
        fleet.start(&mut env, k);
        wait_supervised(
            &mut env,
            &mut fleet,
            &mut watch,
            "the restarted instance's assignment",
            Duration::from_secs(150),
            |env, fleet, _| fleet.assignments(env, k) > before,
        );
        settle(&mut env, &mut fleet, &mut watch, at_ms);
    }

    // Scale 3 -> 2: inst-c's partitions move once its static membership expires
    // (kafka.session_timeout).
    let before: Vec<usize> = (0..2).map(|k| fleet.assignments(&env, k)).collect();
    let (_, at_ms) = fleet.stop(&mut env, 2, false);
    steps.push(("scale 3 -> 2 (SIGTERM inst-c, not restarted)".into(), at_ms));
    wait_supervised(
        &mut env,
        &mut fleet,
        &mut watch,
        "the two instances' new assignment",
        Duration::from_secs(150),
        |env, fleet, _| (0..2).all(|k| fleet.assignments(env, k) > before[k]),
    );
    settle(&mut env, &mut fleet, &mut watch, at_ms);

    stop_load.store(true, Ordering::Relaxed);
    let sent = loop {
        if load.is_finished() {
            break load.join().unwrap();
        }
        watch.poll(Duration::from_millis(100));
        fleet.supervise(&mut env);
    };
    let mut oracle = None;
    let until = Instant::now() + Duration::from_secs(240);
    while oracle.is_none() {
        fleet.supervise(&mut env);
        watch.poll(Duration::from_millis(100));
        oracle = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            env.wait_for_oracle(Duration::from_secs(3))
        }))
        .ok();
        assert!(
            oracle.is_some() || Instant::now() < until,
            "the two instances bill every event within 240 s"
        );
    }
    let oracle = oracle.unwrap();
    let settled = started.elapsed();
    wait_supervised(
        &mut env,
        &mut fleet,
        &mut watch,
        "clickhouse to hold every debit",
        Duration::from_secs(180),
        |env, _, _| ch_count(env, "debits") >= oracle.debits.len(),
    );
    std::thread::sleep(Duration::from_secs(1));
    watch.poll(Duration::from_secs(2));

    assert!(oracle.events >= sent, "no event lost from the input");
    assert_outputs_exactly_once(&env, &oracle);
    env.wait_for("the ledger's balances", Duration::from_secs(120), || {
        !env.read_topic(&env.cfg.topics.balances).is_empty()
    });
    // The ledger's output too: each entry once (read_committed), each debit entry a real debit.
    let entries = common::ledger::balance_events(&env);
    let ids: std::collections::BTreeSet<&str> =
        entries.iter().map(|(_, e)| e.entry_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        entries.len(),
        "read_committed: each balance entry once"
    );
    for (_, e) in &entries {
        if matches!(e.kind, usage_aggregator::ledger::core::EntryKind::Debit) {
            assert!(
                oracle.debits.contains_key(&e.reference),
                "entry of debit {}",
                e.reference
            );
        }
    }
    let mut fenced = 0;
    for k in 0..fleet.procs.len() {
        let log = env.log(&fleet.log_name(k));
        assert!(
            !log.contains("Authorization failed") && !log.contains("AUTHORIZATION_FAILED"),
            "{} was refused something it needs:\n{log}",
            fleet.procs[k].id
        );
        fenced += log.matches("FencedInstanceId").count();
    }

    let mut took = Vec::new();
    for (what, at_ms) in &steps {
        let t = recovery(&watch.received, &oracle.source, partitions, *at_ms);
        eprintln!(
            "  {what}: every usage_events partition's first new committed debit after {}",
            t.map_or("(none)".into(), |t| format!("{t:.2}s"))
        );
        took.push(t.expect("every partition billed again after each step"));
    }
    let mut sorted = took.clone();
    sorted.sort_by(f64::total_cmp);
    let restarts: Vec<String> = fleet
        .procs
        .iter()
        .map(|p| format!("{} {}", p.id, p.restarts))
        .collect();
    eprintln!(
        "cluster instances: 3 nodes with ACLs up in {:.1}s; {sent} events paced at ~100/s ({} debits, {} lines, {} dead letters, {} balance entries); \
         steps -> every partition billed again: p50 {:.2}s, max {:.2}s over {} steps; \
         unplanned restarts (exits on a fatal Kafka error): {}; FencedInstanceId lines: {fenced}; settled in {:.1}s",
        cluster_up.as_secs_f64(),
        oracle.debits.len(),
        oracle.lines.len(),
        oracle.rejected,
        entries.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted.len(),
        restarts.join(", "),
        settled.as_secs_f64()
    );
}
