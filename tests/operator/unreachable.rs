//! What the binary says when a broker, ClickHouse or its HTTP port is not there.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

use super::stop_run;

#[test]
fn unreachable_broker_one_line_naming_the_key_for_every_one_shot_command() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = closed_port();
    let catalog = root().join("config/catalog.json");
    let catalog = catalog.to_str().unwrap();
    for args in [
        vec!["setup", "--kafka-only"],
        vec!["catalog", "publish", catalog],
        vec!["catalog", "check", catalog, "--against-topic"],
        vec!["loadgen", "--executions", "1", "--catalog", catalog],
        vec!["dead-letters", "replay", "--dry-run"],
        // The credits ledger's commands (topup hung for minutes, the others waited 10-30 s
        // for librdkafka's "Meta data fetch error" naming no key).
        vec!["credits", "topup", "acct-1", "20", "--reference", "r-1"],
        vec!["credits", "adjust", "acct-1", "-1", "--reason", "test"],
        vec!["credits", "redeem", "acct-1", "ABCD-EFGH-IJKL-MNOP"],
        vec!["vouchers", "create", "--credits", "10"],
        vec!["vouchers", "list"],
    ] {
        let o = run_bin(
            dir.path(),
            &args,
            &[("USAGE_AGG__KAFKA__BROKERS", &brokers)],
            Duration::from_secs(60),
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err.lines().count(),
            1,
            "{args:?}: one line, no flood: {err}"
        );
        assert!(
            err.starts_with(&format!(
                "error: kafka.brokers = \"{brokers}\": no broker is reachable"
            )) && err.contains("Connection refused"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_service_waits_for_kafka_with_one_clear_line_and_logs_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = closed_port();
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(TestEnv::bin())
        .args(["run"])
        .current_dir(dir.path())
        .env("USAGE_AGG__KAFKA__BROKERS", &brokers)
        .env("USAGE_AGG__HTTP__LISTEN", &listen)
        .env("USAGE_AGG__CLICKHOUSE__PASSWORD", "pw-never-logged")
        .env("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "1500ms")
        .env("USAGE_AGG_KAFKA_PROP_CLIENT_ID", "client-id-not-shown")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Up and answering while it waits: /healthz is served, /readyz is not ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&listen, "/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "http never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(5));
    let (out, err) = stop_run(child);
    assert!(
        out.status.success(),
        "a requested stop is not a failure: {err}"
    );
    let waits: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(&format!("kafka.brokers = \"{brokers}\"")))
        .collect();
    assert_eq!(waits.len(), 1, "one rate-limited line: {err}");
    assert!(waits[0].contains("retrying"), "{err}");
    assert!(!err.contains("librdkafka"), "no librdkafka flood: {err}");
    let settings = err
        .lines()
        .find(|l| l.contains("effective settings"))
        .expect("settings logged");
    for want in [
        "topics.usage_events=usage_events",
        "kafka.group_id=",
        "ledger.group_id=",
        "ledger.voucher_group_id=",
        // A duration as written, one token (it was "1s 500ms", splitting the list).
        " rollup.execution_idle_timeout=1500ms ",
        // Properties from the environment: named with their source, never their value.
        "kafka.properties.\"client.id\"=(from USAGE_AGG_KAFKA_PROP_CLIENT_ID)",
        "clickhouse.database=usage",
        &format!("http.listen={listen}"),
    ] {
        assert!(settings.contains(want), "{want} in {settings}");
    }
    assert!(!err.contains("pw-never-logged"));
    assert!(!err.contains("client-id-not-shown"));
    // The bootstrap catalog file is missing here (relative default, other directory): said.
    assert!(
        err.contains("pricing.catalog_file = \"config/catalog.json\" does not exist"),
        "{err}"
    );
}

#[test]
fn http_port_taken_fails_at_start_naming_the_key() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = holder.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = run_bin(
        dir.path(),
        &["run"],
        &[
            ("USAGE_AGG__HTTP__LISTEN", &listen),
            ("USAGE_AGG__KAFKA__BROKERS", &closed_port()),
        ],
        Duration::from_secs(30),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("http.listen = {listen}: Address already in use")),
        "{err}"
    );
}

#[test]
fn clickhouse_url_and_password_file_errors_name_key_and_value_before_any_change() {
    let env = TestEnv::new("chbad");
    let run = |extra: &[(&str, &str)]| {
        let o = run_bin(
            &root(),
            &["--config", env.config_path.to_str().unwrap(), "setup"],
            extra,
            Duration::from_secs(60),
        );
        (o.status.code(), stderr(&o))
    };
    let (code, err) = run(&[("USAGE_AGG__CLICKHOUSE__URL", "htp:/x")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("clickhouse.url = \"htp:/x\": scheme \"htp\""),
        "{err}"
    );
    let (code, err) = run(&[("USAGE_AGG__CLICKHOUSE__URL", "127.0.0.1:18123")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("clickhouse.url = \"127.0.0.1:18123\""),
        "{err}"
    );
    let (code, err) = run(&[("USAGE_AGG__CLICKHOUSE__PASSWORD_FILE", "missing-pw")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("clickhouse.password_file = \"missing-pw\": cannot be read"),
        "{err}"
    );
    let url = format!("http://{}", closed_port());
    let (code, err) = run(&[("USAGE_AGG__CLICKHOUSE__URL", &url)]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("clickhouse.url = \"{url}\": cannot connect")),
        "{err}"
    );
    assert_eq!(
        err.matches("Connection refused").count(),
        1,
        "cause once: {err}"
    );
    // Nothing was created on the broker before the failure.
    let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()
        .unwrap();
    let md =
        rdkafka::consumer::Consumer::fetch_metadata(&c, None, Duration::from_secs(10)).unwrap();
    assert!(
        !md.topics()
            .iter()
            .any(|t| t.name() == env.cfg.topics.usage_events),
        "setup created topics before failing"
    );
    let (code, err) = run(&[("USAGE_AGG__CLICKHOUSE__PASSWORD", "wrong")]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("clickhouse.user = \"default\": authentication failed"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "never the password: {err}");
}
