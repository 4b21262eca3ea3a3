//! Secured connections, for real: a private Apache Kafka broker with a SASL_SSL listener
//! (SCRAM-SHA-512, certificate from a throwaway CA, both made by `scripts/services kafka-run
//! DIR PORT SECURE_PORT`) and a private ClickHouse with a password user (`usage_writer`). The
//! whole service runs on them with only documented configuration (the shape of
//! config/secure.example.toml, secrets from the environment or files); every misconfiguration
//! fails fast with one line that names the listener and the mechanism, never the secret.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use usage_aggregator::config::Config;
use usage_aggregator::debit::{Debit, DebitKind};
use usage_aggregator::loadgen::Generated;

/// config/secure.example.toml as the service loads it (`Config::load`), with only its
/// secret and CA file paths pointed at files that exist here.
fn secure_example() -> Config {
    let text = std::fs::read_to_string(root().join("config/secure.example.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = text;
    for path in [
        "/etc/ssl/certs/kafka-ca.pem",
        "/run/secrets/clickhouse_password",
        "/run/secrets/marker_key",
    ] {
        assert!(text.contains(path), "the example names {path}");
        let here = dir.path().join(path.rsplit('/').next().unwrap());
        std::fs::write(&here, "0123456789abcdef0123456789abcdef\n").unwrap();
        text = text.replace(path, here.to_str().unwrap());
    }
    let file = dir.path().join("secure.toml");
    std::fs::write(&file, text).unwrap();
    let cfg = Config::load(Some(&file)).unwrap();
    let p = &cfg.kafka.properties;
    assert_eq!(p["security.protocol"], "SASL_SSL");
    assert_eq!(p["sasl.mechanisms"], "SCRAM-SHA-512");
    assert!(
        !p.contains_key("sasl.password"),
        "the example holds no secret"
    );
    cfg
}

/// A test environment whose service and harness talk to the broker's secured listener only,
/// with the example's Kafka settings; the password reaches the service through
/// `USAGE_AGG_KAFKA_PROP_SASL_PASSWORD`, never through the config file.
fn secure_env(name: &str, broker: &PrivateBroker) -> TestEnv {
    let example = secure_example();
    let mut env = TestEnv::new(name);
    env.cfg.kafka.brokers = broker.secure_addr.clone().unwrap();
    env.cfg.kafka.properties = example.kafka.properties.clone();
    env.cfg.kafka.properties.insert(
        "ssl.ca.location".into(),
        broker.ca_file().display().to_string(),
    );
    let pw = broker.password();
    env.env
        .push(("USAGE_AGG_KAFKA_PROP_SASL_PASSWORD".into(), pw.clone()));
    env.client_props.push(("sasl.password".into(), pw));
    env.write_config();
    env
}

fn workload(env: &TestEnv, executions: u64, direct: u64, seed: u64) -> Vec<Generated> {
    workload_for(env, executions, direct, seed, 20, "2026-06-01T00:00:00Z")
}

/// Runs the binary with `config` and `env`; kills it and fails the test if it has not exited
/// within `hang` (a hang guard, not a timing assertion).
fn run_bounded(config: &Path, args: &[&str], env: &[(&str, &str)], hang: Duration) -> Output {
    let mut child = Command::new(TestEnv::bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            eprintln!(
                "{args:?} exited ({}) after {:.1} s",
                out.status,
                started.elapsed().as_secs_f64()
            );
            return out;
        }
        if started.elapsed() > hang {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} hung for {hang:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn secured_kafka_and_clickhouse_carry_the_whole_service() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = PrivateBroker::start_secure(tmp.path());
    // HTTPS with the broker's throwaway CA; the service trusts it through OpenSSL's
    // SSL_CERT_FILE and reaches ClickHouse only over HTTPS (the harness reads over HTTP).
    let ch = PrivateClickHouse::start_https(tmp.path(), &broker.dir.join("tls"));
    let https = ch.https_url.clone().unwrap();
    let example = secure_example();
    assert!(example.clickhouse.url.starts_with("https://"));
    let mut env = secure_env("secure_all", &broker);
    env.cfg.clickhouse.url = ch.url.clone();
    env.env
        .push(("USAGE_AGG__CLICKHOUSE__URL".into(), https.clone()));
    env.env.push((
        "SSL_CERT_FILE".into(),
        broker.ca_file().display().to_string(),
    ));
    env.cfg.clickhouse.user = example.clickhouse.user.clone();
    env.cfg.clickhouse.password_file = Some(ch.password_file());
    env.cfg.alerts.execution_credits = Some("0.02".parse().unwrap());
    env.write_config();
    let config_text = std::fs::read_to_string(&env.config_path).unwrap();
    assert!(!config_text.contains(&broker.password()));
    assert_eq!(env.cfg.clickhouse.user, "usage_writer");

    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let loader = env.loader();
    for g in workload(&env, 300, 1200, 5) {
        loader
            .send(&env.cfg.topics.usage_events, &g.key, &g.payload)
            .unwrap();
    }
    loader.flush().unwrap();

    // Pipeline: the money equals the oracle, each debit once (read_committed).
    let oracle = env.wait_for_oracle(Duration::from_secs(180));
    let (_, raw) = env.debits_by_id();
    assert_eq!(raw, oracle.debits.len(), "each debit once");
    // Sink: every row once in the password-protected ClickHouse.
    env.wait_for("clickhouse to catch up", Duration::from_secs(120), || {
        ch_count(&env, "debits") >= oracle.debits.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_clickhouse_exact(&env, &oracle);

    // Alerts: one per execution debit at or above the threshold (deduplicated by alert_id).
    let threshold: rust_decimal::Decimal = "0.02".parse().unwrap();
    let expected = oracle
        .debits
        .values()
        .map(|b| serde_json::from_slice::<Debit>(b).unwrap())
        .filter(|d| d.kind == DebitKind::AgentExecution && d.total >= threshold)
        .count();
    assert!(expected > 0, "the threshold makes alerts fire");
    env.wait_for("alerts", Duration::from_secs(60), || {
        let ids: std::collections::BTreeSet<String> = env
            .read_topic(&env.cfg.topics.alerts)
            .values()
            .flatten()
            .map(|(_, _, p)| {
                serde_json::from_slice::<serde_json::Value>(p).unwrap()["alert_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        ids.len() == expected
    });

    // Execution API: a closed execution's debit, read from ClickHouse as usage_writer.
    let d = oracle
        .debits
        .values()
        .map(|b| serde_json::from_slice::<Debit>(b).unwrap())
        .find(|d| d.kind == DebitKind::AgentExecution)
        .unwrap();
    let exec = d.execution_id.clone().unwrap();
    let (status, body) = api_get(&env.cfg.http.listen, &format!("/v1/executions/{exec}"));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "closed", "{body}");
    assert_eq!(
        v["debits"][0]["total"]
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        d.total
    );
    let (status, body) = http_get(&env.cfg.http.listen, "/readyz");
    assert_eq!(status, 200, "{body}");

    // Report: with the password from clickhouse.password_file, and from the environment.
    let grand: rust_decimal::Decimal = oracle.totals_per_account().values().sum();
    let from_file = env.cli(&["report", "--format", "json"]);
    let mut no_file = env.cfg.clone();
    no_file.clickhouse.password_file = None;
    let no_file_path = env.dir.path().join("no-password-file.toml");
    std::fs::write(&no_file_path, toml::to_string(&no_file).unwrap()).unwrap();
    let ch_pw = std::fs::read_to_string(ch.password_file()).unwrap();
    let ca = broker.ca_file().display().to_string();
    let over_tls = [
        ("USAGE_AGG__CLICKHOUSE__URL", https.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let from_env = run_bounded(
        &no_file_path,
        &["report", "--format", "json"],
        &[
            over_tls[0],
            over_tls[1],
            ("USAGE_AGG__CLICKHOUSE__PASSWORD", ch_pw.trim()),
        ],
        Duration::from_secs(60),
    );
    assert!(from_env.status.success(), "{}", text(&from_env));
    for out in [from_file, String::from_utf8(from_env.stdout).unwrap()] {
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            r["totals"]["total"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
                .normalize(),
            grand.normalize(),
            "{out}"
        );
    }
    // Without any password, ClickHouse refuses usage_writer.
    let none = run_bounded(
        &no_file_path,
        &["report"],
        &over_tls,
        Duration::from_secs(60),
    );
    assert!(!none.status.success());
    // Without the CA, the server's certificate is refused, and the error names the URL.
    let untrusted = run_bounded(
        &env.config_path,
        &["report"],
        &[over_tls[0]],
        Duration::from_secs(60),
    );
    assert!(!untrusted.status.success());
    assert!(
        text(&untrusted).contains(&format!(
            "clickhouse.url = \"{https}\", clickhouse.user = \"usage_writer\": TLS handshake failed"
        )),
        "{}",
        text(&untrusted)
    );

    assert!(env.terminate(0, Duration::from_secs(30)), "clean exit");
    let log = env.log("agg.log");
    assert!(!log.contains(&broker.password()), "kafka password leaked");
    assert!(!log.contains(ch_pw.trim()), "clickhouse password leaked");
    eprintln!(
        "secure: {} debits, {} lines, {expected} alerts over SASL_SSL/SCRAM-SHA-512 and a password user",
        oracle.debits.len(),
        oracle.lines.len()
    );
}

/// A second CA that signed nothing the broker presents.
fn other_ca(dir: &Path) -> std::path::PathBuf {
    let pem = dir.join("other-ca.pem");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-keyout")
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&pem)
        .args(["-subj", "/CN=some other CA"])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl makes a CA");
    pem
}

#[test]
fn kafka_security_failures_fail_fast_naming_listener_and_mechanism() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = PrivateBroker::start_secure(tmp.path());
    let env = secure_env("secure_fail", &broker);
    let good_pw = broker.password();
    let wrong_pw = "wrong-s3cret-password";
    let secure = broker.secure_addr.clone().unwrap();
    let port = secure.rsplit(':').next().unwrap().to_string();
    let other = other_ca(tmp.path());

    // The good settings work (so each failure below is the one thing changed).
    let ok = run_bounded(
        &env.config_path,
        &["setup", "--kafka-only"],
        &[("USAGE_AGG_KAFKA_PROP_SASL_PASSWORD", &good_pw)],
        Duration::from_secs(60),
    );
    assert!(ok.status.success(), "{}", text(&ok));

    struct Case {
        name: &'static str,
        brokers: String,
        props: Vec<(&'static str, String)>,
        password: String,
        says: &'static str,
        sasl: bool,
    }
    let cases = [
        Case {
            name: "wrong password",
            brokers: secure.clone(),
            props: vec![],
            password: wrong_pw.into(),
            says: "authentication failed: the broker refused user \"usage-aggregator\" with mechanism SCRAM-SHA-512",
            sasl: true,
        },
        Case {
            name: "unknown CA",
            brokers: secure.clone(),
            props: vec![("ssl.ca.location", other.display().to_string())],
            password: good_pw.clone(),
            says: "not signed by a trusted CA",
            sasl: true,
        },
        Case {
            name: "hostname mismatch",
            brokers: format!("localhost:{port}"),
            props: vec![],
            password: good_pw.clone(),
            says: "does not name the host",
            sasl: true,
        },
        Case {
            name: "plaintext client on the TLS port",
            brokers: secure.clone(),
            props: vec![("security.protocol", "PLAINTEXT".into())],
            password: good_pw.clone(),
            says: "this listener expects TLS but security.protocol = PLAINTEXT",
            sasl: false,
        },
    ];
    for case in &cases {
        let mut cfg = env.cfg.clone();
        cfg.kafka.brokers = case.brokers.clone();
        for (k, v) in &case.props {
            cfg.kafka.properties.insert(k.to_string(), v.clone());
        }
        let path = env
            .dir
            .path()
            .join(format!("{}.toml", case.name.replace(' ', "-")));
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        for args in [
            &["setup", "--kafka-only"][..],
            &["catalog", "publish", "config/catalog.json"][..],
        ] {
            let out = run_bounded(
                &path,
                args,
                &[
                    ("USAGE_AGG_KAFKA_PROP_SASL_PASSWORD", &case.password),
                    ("RUST_LOG", "debug"),
                ],
                Duration::from_secs(30),
            );
            let all = text(&out);
            eprintln!("{} / {args:?}:\n{all}", case.name);
            assert!(!out.status.success(), "{}: {args:?} must fail", case.name);
            let listener = format!("kafka.brokers = \"{}\"", case.brokers);
            assert!(
                all.contains(&listener),
                "{}: names the listener: {all}",
                case.name
            );
            let proto = if case.sasl { "SASL_SSL" } else { "PLAINTEXT" };
            assert!(
                all.contains(&format!("security.protocol = {proto}")),
                "{}: names the protocol: {all}",
                case.name
            );
            if case.sasl {
                assert!(
                    all.contains("sasl.mechanisms = SCRAM-SHA-512"),
                    "{}: names the mechanism: {all}",
                    case.name
                );
            }
            assert!(all.contains(case.says), "{}: says why: {all}", case.name);
            assert!(
                !all.contains(&good_pw) && !all.contains(wrong_pw),
                "{}: a password leaked: {all}",
                case.name
            );
            let error_lines = all
                .lines()
                .filter(|l| l.contains(&listener) || l.contains("rdkafka"))
                .count();
            assert!(
                error_lines <= 3,
                "{}: one clear line, not a flood ({error_lines} lines): {all}",
                case.name
            );
        }
    }

    // The service with a wrong password waits for Kafka: one clear line (not a flood),
    // /readyz says why, the password appears nowhere, SIGTERM ends the wait.
    let mut env = env;
    env.cfg.log.filter = "debug".into();
    env.write_config();
    let listen = env.cfg.http.listen.clone();
    env.spawn_with(
        "all",
        "wrong.log",
        &listen,
        &[("USAGE_AGG_KAFKA_PROP_SASL_PASSWORD", wrong_pw)],
    );
    let mut why = String::new();
    env.wait_for("/readyz to say why", Duration::from_secs(30), || {
        let (status, body) = http_get(&listen, "/readyz");
        why = body;
        status == 503 && why.contains("authentication failed")
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        why.contains("waiting for kafka: kafka.brokers = ")
            && why.contains("sasl.mechanisms = SCRAM-SHA-512"),
        "{why}"
    );
    assert!(
        env.terminate(0, Duration::from_secs(60)),
        "SIGTERM ends the wait"
    );
    let log = env.log("wrong.log");
    let said = log.matches("authentication failed").count();
    assert!(
        (1..=2).contains(&said),
        "the reason is logged once per 30 s, not flooded ({said} times): {log}"
    );
    assert!(!log.contains(wrong_pw) && !log.contains(&good_pw), "{log}");
    assert!(!why.contains(wrong_pw), "{why}");
}

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$0\" | sha256sum | cut -d' ' -f1", s])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn clickhouse_wrong_password_is_named_and_the_sink_waits_without_losing_rows() {
    let mut env = TestEnv::new("ch_password");
    let ch = PrivateClickHouse::start(env.dir.path());
    env.cfg.clickhouse.url = ch.url.clone();
    env.cfg.clickhouse.user = "usage_writer".into();
    env.write_config();
    let good = std::fs::read_to_string(ch.password_file())
        .unwrap()
        .trim()
        .to_string();
    let wrong = "wrong-ch-s3cret-pw";

    // The password from the environment works for `setup`.
    env.env
        .push(("USAGE_AGG__CLICKHOUSE__PASSWORD".into(), good.clone()));
    env.setup();
    env.env.clear();

    // One-shot commands with a wrong password: one line naming user and URL, fast.
    let named = format!(
        "clickhouse.url = \"{}\", clickhouse.user = \"usage_writer\": authentication failed",
        ch.url
    );
    for args in [&["setup", "--clickhouse-only"][..], &["report"][..]] {
        let out = run_bounded(
            &env.config_path,
            args,
            &[("USAGE_AGG__CLICKHOUSE__PASSWORD", wrong)],
            Duration::from_secs(30),
        );
        let all = text(&out);
        assert!(!out.status.success(), "{args:?}: {all}");
        assert!(all.contains(&named), "{args:?}: {all}");
        assert!(all.contains("USAGE_AGG__CLICKHOUSE__PASSWORD"), "{all}");
        assert!(!all.contains(wrong), "{args:?}: the password leaked: {all}");
    }

    // The service with a wrong password: debits still flow to Kafka, the sink waits and
    // retries, /readyz names the user and the URL.
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let listen = env.cfg.http.listen.clone();
    env.spawn_with(
        "all",
        "agg.log",
        &listen,
        &[("USAGE_AGG__CLICKHOUSE__PASSWORD", wrong)],
    );
    let loader = env.loader();
    for g in workload(&env, 150, 600, 9) {
        loader
            .send(&env.cfg.topics.usage_events, &g.key, &g.payload)
            .unwrap();
    }
    loader.flush().unwrap();
    let oracle = env.wait_for_oracle(Duration::from_secs(120));
    let mut why = String::new();
    env.wait_for("/readyz to say why", Duration::from_secs(30), || {
        // The sink is not ready; the instance stays in rotation.
        let (status, body) = readyz(&listen);
        why = body.to_string();
        status == 200 && not_ready_detail(&body, "sink").is_some_and(|d| d.contains(&named))
    });
    assert!(!why.contains(wrong), "{why}");
    assert_eq!(ch_count(&env, "debits"), 0, "nothing stored while refused");

    // The operator rotates the server side to the password the service has: the sink's
    // retries get through and every row lands once.
    let users = std::fs::read_to_string(ch.users_file()).unwrap();
    let rotated = users.replace(&sha256_hex(&good), &sha256_hex(wrong));
    assert_ne!(users, rotated);
    std::fs::write(ch.users_file(), rotated).unwrap();
    env.wait_for("clickhouse to catch up", Duration::from_secs(120), || {
        ch_count(&env, "debits") >= oracle.debits.len()
            && ch_count(&env, "usage_transactions") >= oracle.lines.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_clickhouse_exact(&env, &oracle);
    env.wait_for("/readyz 200", Duration::from_secs(30), || {
        http_get(&listen, "/readyz").0 == 200
    });
    assert!(env.terminate(0, Duration::from_secs(30)));
    let log = env.log("agg.log");
    assert!(log.contains(&named), "the log says why too");
    assert!(!log.contains(wrong), "the password leaked into the log");
    eprintln!(
        "clickhouse password: {} debits waited for the rotation and landed once",
        oracle.debits.len()
    );
}
