//! A trial before `setup` (missing topics and database named, then going on), the topic
//! prefix that isolates a trial, and waiting for a price catalog.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

use super::stop_run;

#[test]
fn a_prefix_isolates_a_trial() {
    let env = TestEnv::new("prefix");
    let prefix = format!("{}-", env.name);
    // The ClickHouse database is the trial's own too (a shared one mixed reports and resume
    // points): letters, digits and _ only.
    let database = format!("{}_usage", env.name.replace(['-', '.'], "_"));
    let o = run_bin(
        &root(),
        &["setup"],
        &[
            ("USAGE_AGG__KAFKA__BROKERS", &kafka_addr()),
            ("USAGE_AGG__CLICKHOUSE__URL", &clickhouse_url()),
            ("USAGE_AGG__KAFKA__PREFIX", &prefix),
        ],
        Duration::from_secs(60),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    ch_query(
        &clickhouse_url(),
        &format!("DROP DATABASE IF EXISTS {database}"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains(&format!("(database {database})")), "{out}");
    for t in [
        "usage_events",
        "price_catalog",
        "debits",
        "usage_aggregator_state",
    ] {
        assert!(out.contains(&format!("{prefix}{t}")), "{t} in {out}");
    }
}

#[test]
fn waiting_for_a_catalog_says_so_once_and_a_stop_is_not_a_failure() {
    // It logged the same ERROR every 2 s, and SIGTERM during the wait exited 1 with
    // "error: stopped while waiting for a price catalog".
    let mut env = TestEnv::new("nocatalog");
    env.cfg.pricing.catalog_file = std::path::PathBuf::new();
    env.write_config();
    env.cli(&["setup", "--kafka-only"]);
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(TestEnv::bin())
        .arg("--config")
        .arg(&env.config_path)
        .args(["run", "--role", "pipeline"])
        .env("USAGE_AGG__HTTP__LISTEN", &listen)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&listen, "/readyz").1.contains("catalog") {
        assert!(
            Instant::now() < deadline,
            "never said it waits for a catalog"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let (out, err) = stop_run(child);
    assert!(out.status.success(), "a requested stop: {err}");
    assert_eq!(
        err.matches("price catalog is empty").count(),
        1,
        "said once, not every 2 s: {err}"
    );
    assert!(!err.contains("error:"), "{err}");
}

#[test]
fn ledger_commands_check_their_topics_and_clickhouse_first() {
    // A trial where `setup` never ran: topup waited 30 s for "Unknown topic or partition",
    // `vouchers list` printed "0 vouchers".
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}-", unique("nosetup"));
    let env = [
        ("USAGE_AGG__KAFKA__BROKERS", kafka_addr()),
        ("USAGE_AGG__KAFKA__PREFIX", prefix.clone()),
        ("USAGE_AGG__CLICKHOUSE__URL", clickhouse_url()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (args, key, topic) in [
        (
            vec!["credits", "topup", "acct-1", "20", "--reference", "r-1"],
            "topics.credit_grants",
            "credit_grants",
        ),
        (
            vec!["credits", "redeem", "acct-1", "ABCD-EFGH-IJKL-MNOP"],
            "topics.voucher_requests",
            "voucher_requests",
        ),
        (
            vec!["vouchers", "list"],
            "topics.voucher_state",
            "voucher_state",
        ),
        // The balance is the ledger's own state in Kafka, not ClickHouse.
        (
            vec!["credits", "balance", "acct-1"],
            "topics.ledger_state",
            "ledger_state",
        ),
        (vec!["keys", "list"], "topics.api_keys", "api_keys"),
    ] {
        let o = run_bin(dir.path(), &args, &env, Duration::from_secs(60));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!(
                "error: {key} = \"{prefix}{topic}\": the topic does not exist"
            )),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: nothing listed");
    }
    // A database `setup` never made: said like `report` says it.
    let database = format!("{}usage", prefix.replace('-', "_"));
    {
        let args = ["credits", "history", "acct-1"];
        let o = run_bin(dir.path(), &args, &env, Duration::from_secs(60));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!(
                "error: clickhouse.database = \"{database}\": does not exist"
            )),
            "{args:?}: {err}"
        );
    }
    let closed = format!("http://{}", closed_port());
    {
        let args = ["credits", "history", "acct-1"];
        let o = run_bin(
            dir.path(),
            &args,
            &[("USAGE_AGG__CLICKHOUSE__URL", &closed)],
            Duration::from_secs(60),
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("error: clickhouse.url = \"{closed}\"")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn run_before_setup_names_what_is_missing_and_goes_on_once_the_topics_exist() {
    // It waited silently, blamed the empty catalog on /readyz and exited 1 on SIGTERM with
    // "cannot publish price version ...: UnknownTopicOrPartition"; a missing database was
    // said only on /readyz.
    let prefix = format!("{}-", unique("runfirst"));
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("USAGE_AGG__KAFKA__BROKERS", kafka_addr()),
        ("USAGE_AGG__KAFKA__PREFIX", prefix.clone()),
        ("USAGE_AGG__HTTP__LISTEN", listen.clone()),
        ("USAGE_AGG__CLICKHOUSE__URL", clickhouse_url()),
    ];
    let child = Command::new(TestEnv::bin())
        .args(["run"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let missing =
        format!("topics.usage_events = \"{prefix}usage_events\": the topic does not exist");
    let deadline = Instant::now() + Duration::from_secs(30);
    // /readyz answers JSON (one object per stage): the detail's quotes come escaped.
    while !http_get(&listen, "/readyz")
        .1
        .replace("\\\"", "\"")
        .contains(&missing)
    {
        assert!(
            Instant::now() < deadline,
            "/readyz never named the missing topic"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = run_bin(
        &root(),
        &["setup", "--kafka-only"],
        &env,
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&listen, "/readyz").1.contains("does not exist") {
        assert!(Instant::now() < deadline, "never went on after setup");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (out, err) = stop_run(child);
    assert!(out.status.success(), "{err}");
    let said: Vec<&str> = err.lines().filter(|l| l.contains(&missing)).collect();
    assert_eq!(said.len(), 1, "one line: {err}");
    assert!(
        said[0].contains("run `usage-aggregator setup` first"),
        "{err}"
    );
    assert!(!err.contains("UnknownTopicOrPartition"), "{err}");
    // `setup --kafka-only` made no database: said once at start, with what to do.
    let database = format!("{}usage", prefix.replace('-', "_"));
    assert!(
        err.contains(&format!(
            "clickhouse.database = \"{database}\": does not exist at {}; run `usage-aggregator setup`",
            clickhouse_url()
        )),
        "{err}"
    );
}
