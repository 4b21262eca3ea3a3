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

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use usage_aggregator::bench::Loader;

/// Client settings of SCRAM user `usage-<role>` on the broker's SASL_SSL listener.
fn as_role(broker: &PrivateBroker, role: &str) -> Vec<(String, String)> {
    vec![
        ("security.protocol".into(), "SASL_SSL".into()),
        ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
        ("sasl.username".into(), format!("usage-{role}")),
        ("sasl.password".into(), broker.role_password(role)),
        (
            "ssl.ca.location".into(),
            broker.ca_file().display().to_string(),
        ),
    ]
}

fn client(broker: &PrivateBroker, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.secure_addr.as_ref().unwrap());
    for (k, v) in as_role(broker, role) {
        c.set(k, v);
    }
    c
}

/// Produces one record as `role`; the delivery result.
fn produce(broker: &PrivateBroker, role: &str, topic: &str) -> Result<(), KafkaError> {
    let p: FutureProducer = client(broker, role)
        .set("message.timeout.ms", "15000")
        .create()
        .unwrap();
    let r = FutureRecord::to(topic).key("acl-test").payload("{}");
    futures::executor::block_on(p.send(r, Duration::ZERO))
        .map(|_| ())
        .map_err(|(e, _)| e)
}

fn refused(r: Result<(), KafkaError>, who: &str, topic: &str) {
    eprintln!("{who} -> {topic}: {r:?}");
    assert!(
        matches!(
            r,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::TopicAuthorizationFailed
            ))
        ),
        "{who} must not write {topic}: {r:?}"
    );
}

/// The ACL bindings the broker holds (AclCommand --list through the super user).
fn acl_list(broker: &PrivateBroker) -> String {
    let out = Command::new(root().join("scripts/services"))
        .args([
            "kafka-tool",
            "org.apache.kafka.tools.AclCommand",
            "--bootstrap-server",
            &broker.addr,
            "--list",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Kafka lists the resources in no fixed order (a CI run listed the same ACLs in another
    // order the second time): one sorted line per (resource, binding).
    let text = String::from_utf8(out.stdout).unwrap();
    let mut resource = "";
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.starts_with("Current ACLs for resource") {
            resource = l;
        } else if !l.trim().is_empty() {
            lines.push(format!("{resource} {}", l.trim()));
        }
    }
    lines.sort();
    lines.join("\n")
}

fn apply_acls(env: &TestEnv, broker: &PrivateBroker) -> Duration {
    let started = Instant::now();
    let out = Command::new(root().join("scripts/kafka-acls"))
        .args(["--bootstrap-server", &broker.addr, "--config"])
        .arg(&env.config_path)
        .env("USAGE_AGG_BIN", TestEnv::bin())
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ACL sets applied"),
        "scripts/kafka-acls failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

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

    let first = apply_acls(&env, &broker);
    let bindings = acl_list(&broker);
    let second = apply_acls(&env, &broker);
    assert_eq!(acl_list(&broker), bindings, "a second run changes nothing");
    let count = bindings.matches("(principal=").count();
    eprintln!(
        "scripts/kafka-acls: {count} ACL bindings in {:.1}s, again in {:.1}s",
        first.as_secs_f64(),
        second.as_secs_f64()
    );

    let t = env.cfg.topics.clone();
    // Platform runtimes: usage events only.
    produce(&broker, "runtime", &t.usage_events).expect("the runtime writes usage events");
    for topic in [&t.debits, &t.credit_grants, &t.state, &t.ledger_state] {
        refused(produce(&broker, "runtime", topic), "runtime", topic);
    }
    // Analysts: read the outputs with their own group, write nothing, never raw usage.
    refused(produce(&broker, "reader", &t.debits), "reader", &t.debits);
    refused(
        produce(&broker, "reader", &t.credit_grants),
        "reader",
        &t.credit_grants,
    );
    // The sink reads, and writes nothing.
    refused(produce(&broker, "sink", &t.debits), "sink", &t.debits);
    let reader: BaseConsumer = client(&broker, "reader")
        .set("group.id", "analytics-acl-test")
        .create()
        .unwrap();
    reader.subscribe(&[&t.debits]).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while reader.assignment().unwrap().count() == 0 {
        if let Some(Err(e)) = reader.poll(Duration::from_millis(200)) {
            panic!("the reader reads debits with its group: {e}");
        }
        assert!(Instant::now() < until, "the reader joined its group");
    }
    let md = client(&broker, "reader")
        .create::<BaseConsumer>()
        .unwrap()
        .fetch_metadata(Some(&t.usage_events), Duration::from_secs(10))
        .unwrap();
    let usage_md = md.topics()[0].error();
    eprintln!("reader describes {}: {usage_md:?}", t.usage_events);
    assert!(usage_md.is_some(), "the reader cannot see raw usage");

    // The service: three processes, each its own principal.
    let secure = broker.secure_addr.clone().unwrap();
    let mut procs = Vec::new();
    for role in ["pipeline", "sink", "ledger"] {
        let mut vars: Vec<(String, String)> =
            vec![("USAGE_AGG__KAFKA__BROKERS".into(), secure.clone())];
        for (k, v) in as_role(&broker, role) {
            vars.push((
                format!(
                    "USAGE_AGG_KAFKA_PROP_{}",
                    k.to_uppercase().replace('.', "_")
                ),
                v,
            ));
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        let listen = format!("127.0.0.1:{}", free_port());
        let i = env.spawn_with(role, &format!("{role}.log"), &listen, &vars);
        procs.push((role, i, listen));
    }
    // The events come through the runtime principal.
    let mut runtime = env.cfg.clone();
    runtime.kafka.brokers = secure.clone();
    runtime.kafka.properties.extend(as_role(&broker, "runtime"));
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
