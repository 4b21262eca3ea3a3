//! Least privilege on Kafka, for real: a private broker with KRaft's `StandardAuthorizer` and
//! one SCRAM user per role (`scripts/services kafka-run` with `USAGE_AGG_KAFKA_AUTHORIZER=1`),
//! the ACLs created by `scripts/kafka-acls` from the service's configuration (twice: the
//! second run changes nothing). Then over SASL_SSL: the runtime principal writes usage events
//! and is refused `debits`, `credit_grants` and the state topics (the error is printed); the
//! reader reads the billing outputs with its own group and is refused writing a debit or
//! reading raw usage; and the service runs as three processes (`run --role pipeline`,
//! `sink`, `ledger`), each as its own principal with exactly its ACLs, billing every event
//! once (debits equal the oracle, ClickHouse exact, the ledger's balances written).

mod common;

use std::time::Duration;

use common::*;
use usage_aggregator::bench::Loader;

#[test]
fn each_role_can_do_what_it_needs_and_is_refused_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let broker = PrivateBroker::start_with_acls(dir.path());
    let mut env = TestEnv::new("acls");
    // The harness (setup, reading back, the oracle) is the super user on the plaintext
    // listener; every principal under test talks SASL_SSL.
    env.cfg.kafka.brokers = broker.addr.clone();
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);

    let acl = broker.secured();
    let first = acl.apply_acls(&env);
    let bindings = acl.acl_list();
    let second = acl.apply_acls(&env);
    assert_eq!(acl.acl_list(), bindings, "a second run changes nothing");
    let count = bindings.matches("(principal=").count();
    eprintln!(
        "scripts/kafka-acls: {count} ACL bindings in {:.1}s, again in {:.1}s",
        first.as_secs_f64(),
        second.as_secs_f64()
    );
    acl.check_matrix(&env);
    let named = acl.check_missing_acl_named(&mut env);
    eprintln!("a missing ACL, named by run and /readyz: {named}");

    // The service: three processes, each its own principal.
    let t = env.cfg.topics.clone();
    let mut procs = Vec::new();
    for role in ["pipeline", "sink", "ledger"] {
        let vars = acl.role_env(role);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        let listen = format!("127.0.0.1:{}", free_port());
        let i = env.spawn_with(role, &format!("{role}.log"), &listen, &vars);
        procs.push((role, i, listen));
    }
    // The events come through the runtime principal.
    let mut runtime = env.cfg.clone();
    runtime.kafka.brokers = acl.secure.clone();
    runtime.kafka.properties.extend(acl.as_role("runtime"));
    let loader = Loader::new(&runtime).unwrap();
    let events = workload(&env);
    for g in &events {
        loader.send(&t.usage_events, &g.key, &g.payload).unwrap();
    }
    loader.flush().unwrap();
    let oracle = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        env.wait_for_oracle(Duration::from_secs(180))
    }))
    .unwrap_or_else(|_| {
        for (role, _, _) in &procs {
            eprintln!("--- {role}.log\n{}", env.log(&format!("{role}.log")));
        }
        panic!("the service did not bill every event with its three principals");
    });
    assert!(oracle.debits.len() > 10);
    let (_, raw) = env.debits_by_id();
    assert_eq!(raw, oracle.debits.len(), "0 repeated debits");
    env.wait_for(
        "clickhouse to hold every debit",
        Duration::from_secs(120),
        || ch_count(&env, "debits") >= oracle.debits.len(),
    );
    assert_clickhouse_exact(&env, &oracle);
    env.wait_for("the ledger's balances", Duration::from_secs(120), || {
        !env.read_topic(&t.balances).is_empty()
    });
    for (role, i, _) in &procs {
        let log = env.log(&format!("{role}.log"));
        assert!(
            !log.contains("Authorization failed") && !log.contains("AUTHORIZATION_FAILED"),
            "{role} was refused something it needs:\n{log}"
        );
        assert!(
            env.children[*i].try_wait().unwrap().is_none(),
            "{role} is still running:\n{log}"
        );
    }
    eprintln!(
        "acls: {} events -> {} debits by usage-pipeline, ClickHouse by usage-sink, balances by usage-ledger",
        events.len(),
        oracle.debits.len()
    );
}

fn workload(env: &TestEnv) -> Vec<usage_aggregator::loadgen::Generated> {
    workload_for(env, 40, 120, 7, 10, "2026-06-01T00:00:00Z")
}
