//! Operator experience through the binary, one test per kind of failure: unreachable broker,
//! bad ClickHouse URL or password file, HTTP port taken, relative paths, closed pipes, `rate`
//! for scripts, error text, catalog rules, the topic prefix. Kafka and ClickHouse are the
//! real services (USAGE_AGG_TEST_KAFKA, USAGE_AGG_TEST_CLICKHOUSE).

mod common;
#[path = "support/bin.rs"]
mod support;

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::*;

/// SIGTERM to a `run` started with piped stderr; its exit and everything it wrote to stderr
/// (killed and failed if it has not stopped within 30 s).
fn stop_run(mut child: std::process::Child) -> (std::process::Output, String) {
    Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (wait_or_kill(child, Duration::from_secs(30), &["run"]), err)
}

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

#[test]
fn relative_paths_follow_the_config_file_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(root().join("config/catalog.json"), etc.join("prices.json")).unwrap();
    std::fs::write(
        etc.join("c.toml"),
        "[pricing]\ncatalog_file = \"prices.json\"\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cfg = etc.join("c.toml");
    let out = elsewhere.path().join("ev.jsonl");
    let o = run_bin(
        elsewhere.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "loadgen",
            "--executions",
            "2",
            "--direct-calls",
            "2",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("generated "),
        "final count"
    );
    std::fs::remove_file(etc.join("prices.json")).unwrap();
    let o = run_bin(
        elsewhere.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "loadgen",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&o);
    assert!(
        err.contains("pricing.catalog_file")
            && err.contains(&format!(
                "{}\": cannot read",
                etc.join("prices.json").display()
            )),
        "{err}"
    );
    // Without a config file the default is relative to the current directory: say which.
    let o = run_bin(
        elsewhere.path(),
        &["loadgen", "--output", out.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "pricing.catalog_file = \"config/catalog.json\" (in {}): cannot read",
            elsewhere.path().display()
        )) && err.contains("give --catalog FILE"),
        "{err}"
    );
}

/// Spawns `args` with stdin `input`, reads `keep` bytes of stdout and closes it.
fn closed_stdout(args: &[&str], input: &[u8], keep: usize) -> Output {
    let mut child = Command::new(TestEnv::bin())
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; keep];
    stdout.read_exact(&mut buf).unwrap();
    drop(stdout);
    let out = wait_or_kill(child, Duration::from_secs(60), args);
    feeder.join().unwrap();
    out
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let events: String = (0..20_000)
        .map(|i| {
            format!(
                "{{\"type\":\"tool_call\",\"event_id\":\"e{i}\",\"occurred_at\":\"2026-03-01T10:00:00Z\",\"account_id\":\"a\",\"asset_id\":\"tavily/web-search\",\"quantities\":{{\"requests\":1}}}}\n"
            )
        })
        .collect();
    let o = closed_stdout(
        &["rate", "--catalog", "config/catalog.json"],
        events.as_bytes(),
        10,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );
    let o = closed_stdout(
        &[
            "catalog",
            "check",
            "config/catalog.json",
            "--format",
            "json",
        ],
        b"",
        10,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_closed_stdout_ends_the_ledger_commands_quietly() {
    // `credits history | head -1` panicked (exit 101): the ledger commands printed with
    // println!. 1000 entries with long descriptions overflow the pipe buffer, so the write
    // after the reader is gone must fail and end the command quietly.
    let env = TestEnv::new("pipehist");
    env.cli(&["setup", "--clickhouse-only"]);
    env.ch(&format!(
        "INSERT INTO {{db}}.ledger (entry_id, account_id, seq, occurred_at, kind, reference, description, credit, debit, balance_after, src_partition, src_offset, ingested_at) \
         SELECT toString(number), 'acct-pipe', number + 1, now(), 'topup', toString(number), '{}', 1, 0, number + 1, 0, number, now() FROM numbers(1000)",
        "d".repeat(200)
    ));
    let c = env.config_path.to_str().unwrap();
    for args in [
        vec![
            "--config",
            c,
            "credits",
            "history",
            "acct-pipe",
            "--limit",
            "1000",
        ],
        vec![
            "--config",
            c,
            "credits",
            "history",
            "acct-pipe",
            "--limit",
            "1000",
            "--format",
            "json",
        ],
    ] {
        let o = closed_stdout(&args, b"", 10);
        let err = stderr(&o);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn rate_for_scripts_strict_rejects_file_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let ev = |id: &str| {
        format!(
            "{{\"type\":\"tool_call\",\"event_id\":\"{id}\",\"occurred_at\":\"2026-03-01T10:00:00Z\",\"account_id\":\"a\",\"asset_id\":\"tavily/web-search\",\"quantities\":{{\"requests\":1}}}}"
        )
    };
    let input = [ev("1"), ev("1"), "not json".into(), ev("2")].join("\n");
    let mut child = Command::new(TestEnv::bin())
        .args([
            "rate",
            "--catalog",
            "config/catalog.json",
            "--strict",
            "--rejects",
        ])
        .arg(&rejects)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("rated 4 events: 2 debits, 1 rejected (invalid_json 1), 1 duplicates"),
        "{err}"
    );
    assert!(
        err.contains("error: 1 of 4 events rejected (--strict)"),
        "{err}"
    );
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 2);
    assert!(out.lines().all(|l| l.starts_with("{\"debit\":")), "{out}");
    let rej = std::fs::read_to_string(&rejects).unwrap();
    let r: serde_json::Value = serde_json::from_str(rej.trim()).unwrap();
    assert_eq!(r["reason"], "invalid_json");
    assert_eq!(r["line"], 3);
}

#[test]
fn error_text_names_keys_as_written_once_with_hints() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[kafka]\nbroker = \"x:1\"\n").unwrap();
    let check = |args: &[&str], env: &[(&str, &str)], code: i32, want: &str| {
        let o = run_bin(dir.path(), args, env, Duration::from_secs(30));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err} should contain {want}");
        err
    };
    let c = cfg.to_str().unwrap();
    check(
        &["--config", c, "catalog", "check", "x"],
        &[],
        2,
        "unknown key kafka.broker (in ",
    );
    check(
        &["--config", c, "catalog", "check", "x"],
        &[],
        2,
        "did you mean kafka.brokers?",
    );
    check(
        &["catalog", "check", "x"],
        &[("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "5")],
        2,
        "USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT: invalid duration \"5\"",
    );
    check(
        &["catalog", "check", "x"],
        &[("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "0s")],
        2,
        "rollup.execution_idle_timeout = 0s: must be at least 100ms",
    );
    let err = check(
        &["--log-json", "catalog", "check", "x"],
        &[("USAGE_AGG__KAFKA__BROKR", "x:1")],
        2,
        "did you mean USAGE_AGG__KAFKA__BROKERS?",
    );
    let v: serde_json::Value =
        serde_json::from_str(err.trim()).expect("--log-json errors are JSON");
    assert_eq!(v["level"], "ERROR");
    // Usage errors too (they were clap's text whatever --log-json said).
    for (args, want) in [
        (
            vec!["--log-json", "report", "--since", "1x"],
            "invalid value '1x' for '--since <DURATION>': invalid duration",
        ),
        (
            vec!["report", "--log-json", "--top", "x"],
            "invalid value 'x' for '--top <TOP>'",
        ),
        (
            vec!["--log-json", "bogus"],
            "unrecognized subcommand 'bogus'",
        ),
    ] {
        let err = check(&args, &[], 2, want);
        let v: serde_json::Value = serde_json::from_str(err.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON object ({e}): {err}"));
        assert_eq!(v["level"], "ERROR", "{err}");
        assert!(v["message"].as_str().unwrap().starts_with(want), "{err}");
    }
    let o = run_bin(
        dir.path(),
        &["--log-json", "report", "--help"],
        &[],
        Duration::from_secs(30),
    );
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--from"));
    // Bad argument values are usage errors (exit 2), said as written, durations with an
    // example, whichever command takes them.
    check(
        &["report", "--from", "yesterday"],
        &[],
        2,
        "\"yesterday\" is neither a date",
    );
    check(
        &["report", "--from", "2026-11-30", "--to", "2026-11-01"],
        &[],
        2,
        "--from 2026-11-30 is not before --to 2026-11-01",
    );
    for args in [
        vec!["report", "--since", "1x"],
        vec!["vouchers", "create", "--credits", "10", "--valid-for", "1x"],
        vec!["dead-letters", "replay", "--timeout", "1x"],
    ] {
        check(&args, &[], 2, "invalid duration \"1x\"");
        check(&args, &[], 2, "e.g. \"30s\"");
    }
    for args in [
        vec![
            "catalog",
            "import",
            "--format",
            "litellm",
            "x.json",
            "--effective-from",
            "2030-01-01",
        ],
        vec![
            "vouchers",
            "create",
            "--credits",
            "10",
            "--valid-from",
            "2030-01-01",
        ],
        vec![
            "vouchers",
            "create",
            "--credits",
            "10",
            "--valid-until",
            "2030-01-01",
        ],
    ] {
        check(
            &args,
            &[],
            2,
            "\"2030-01-01\" is not an RFC 3339 instant (premature end of input); write it like 2026-07-01T00:00:00Z",
        );
    }
    // A catalog: every problem, with its path and the fix.
    let cat = dir.path().join("cat.json");
    std::fs::write(
        &cat,
        r#"[{"asset_id":"a","asset_type":"model","vendor":"v","effective_from":"2024-01-01","prices":{"t":{"credits":"1","per":1}}},
           {"asset_id":"b","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":0.5,"per":1}}},
           {"asset_id":"c","asset_type":"modle","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":0.5,"per":1},"u":{"credits":0.7,"per":1}},"colour":"red"}]"#,
    )
    .unwrap();
    // Every problem of a version, not only its first (serde stops at the first field).
    let err = check(
        &["catalog", "check", cat.to_str().unwrap()],
        &[],
        1,
        "6 problem(s)",
    );
    for want in [
        "[2] c: asset_type = \"modle\": unknown variant",
        "[2] c: colour = \"red\": unknown field `colour`",
        "[2] c: prices.t.credits = 0.5",
        "[2] c: prices.u.credits = 0.7",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
    // And every rule a well-formed version breaks.
    std::fs::write(
        &cat,
        r#"[{"asset_id":"d","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":"-1","per":0},"u":{"credits":"0.1234567890123","per":1}}}]"#,
    )
    .unwrap();
    let rules = check(
        &["catalog", "check", cat.to_str().unwrap()],
        &[],
        1,
        "3 problem(s)",
    );
    for want in [
        "[0] d: prices.t.per: must be at least 1",
        "[0] d: prices.t.credits: must not be negative, got -1",
        "[0] d: prices.u.credits: has more than 12 decimals",
    ] {
        assert!(rules.contains(want), "{want} in {rules}");
    }
    assert!(
        err.contains("[0] a: effective_from = \"2024-01-01\"")
            && err.contains("e.g. \"2024-01-01T00:00:00Z\""),
        "{err}"
    );
    assert!(
        err.contains("[1] b: prices.t.credits = 0.5") && err.contains("write it as a string"),
        "{err}"
    );
    std::fs::write(&cat, "[]").unwrap();
    check(
        &["catalog", "check", cat.to_str().unwrap()],
        &[],
        1,
        "the catalog is empty",
    );
}

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
fn a_successful_catalog_command_writes_no_log_line() {
    // Reading the catalog topic to its end is how publish and check finish: it must not
    // surface as a log line (it was `ERROR ... Global error: PartitionEOF` on every run).
    let env = TestEnv::new("quietcat");
    env.cli(&["setup", "--kafka-only"]);
    let c = env.config_path.to_str().unwrap();
    for args in [
        vec!["--config", c, "catalog", "publish", "config/catalog.json"],
        vec!["--config", c, "catalog", "publish", "config/catalog.json"],
        vec![
            "--config",
            c,
            "catalog",
            "check",
            "config/catalog.json",
            "--against-topic",
        ],
    ] {
        let o = run_bin(&root(), &args, &[], Duration::from_secs(60));
        let err = stderr(&o);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            !err.contains("ERROR") && !err.contains("WARN") && !err.contains("PartitionEOF"),
            "{args:?}: {err}"
        );
    }
    // A retroactive version is not "ok" in the listing when the comparison refuses it.
    let retro = env.dir.path().join("retro.json");
    std::fs::write(
        &retro,
        r#"[{"asset_id":"openai/gpt-4o-mini","asset_type":"model","vendor":"openai","effective_from":"2025-01-01T00:00:00Z","prices":{"input_tokens":{"credits":"0.2","per":1000000}}}]"#,
    )
    .unwrap();
    let o = run_bin(
        &root(),
        &[
            "--config",
            c,
            "catalog",
            "check",
            retro.to_str().unwrap(),
            "--against-topic",
        ],
        &[],
        Duration::from_secs(60),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        out.contains("1 versions of 1 assets well-formed, but refused against the topic"),
        "{out}"
    );
    assert!(stderr(&o).contains("would reprice past events"));
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
