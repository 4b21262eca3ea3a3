//! The command line: offline rating (the worked example through the binary), configuration
//! errors naming key and value, and secrets that never reach the logs or HTTP endpoints.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const CATALOG: &str = r#"[
 {"asset_id":"llm","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"calls":{"credits":"0.5","per":1}}},
 {"asset_id":"web-search","asset_type":"tool","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"requests":{"credits":"0.1","per":1}}},
 {"asset_id":"database","asset_type":"tool","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"queries":{"credits":"0.2","per":1}}}
]"#;

fn ev(id: &str, kind: &str, asset: &str, unit: &str) -> String {
    format!(
        r#"{{"type":"{kind}","event_id":"{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct","execution_id":"x1","asset_id":"{asset}","quantities":{{"{unit}":1}}}}"#
    )
}

fn rate(args: &[&str], input: &str) -> (String, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("c.json");
    std::fs::write(&cat, CATALOG).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_usage-aggregator"))
        .args(["rate", "--catalog", cat.to_str().unwrap()])
        .args(args)
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
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

#[test]
fn rate_command_bills_the_worked_example_exactly() {
    let input = [
        ev("c1", "model_call", "llm", "calls"),
        ev("c2", "tool_call", "web-search", "requests"),
        ev("c3", "tool_call", "database", "queries"),
        "not json".to_string(),
    ]
    .join("\n");
    let (out, err, ok) = rate(&["--lines"], &input);
    assert!(ok, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let debit = records
        .iter()
        .find_map(|r| r.get("debit"))
        .expect("a debit at end of input");
    assert_eq!(debit["subtotal"], "0.8");
    assert_eq!(debit["markup"], "0.16");
    assert_eq!(debit["total"], "0.96");
    assert_eq!(debit["kind"], "agent_execution");
    assert_eq!(
        records.iter().filter(|r| r.get("line").is_some()).count(),
        3
    );
    let rejected = records.iter().find_map(|r| r.get("rejected")).unwrap();
    assert_eq!(rejected["reason"], "invalid_json");
    assert_eq!(rejected["line"], 4);
    assert!(
        err.contains("rated 4 events: 1 debits, 1 rejected"),
        "{err}"
    );

    // What-if pricing: another markup rate.
    let (out, _, ok) = rate(&["--markup-rate", "0.5"], &input);
    assert!(ok);
    assert!(out.contains("\"total\":\"1.2\""), "{out}");
    let (_, err, ok) = rate(&["--markup-rate", "abc"], &input);
    assert!(
        !ok && err.contains("--markup-rate") && err.contains("abc"),
        "{err}"
    );
    let (_, err, ok) = rate(&["--markup-rate", "11"], &input);
    assert!(
        !ok && err.contains("rollup.markup_rate = 11: must be between 0 and 10"),
        "{err}"
    );
}

#[test]
fn unknown_config_keys_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[rollup]\nmarkup = \"0.1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_usage-aggregator"))
        .args([
            "--config",
            f.to_str().unwrap(),
            "catalog",
            "check",
            "config/catalog.json",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("markup"), "{err}");
}

#[test]
fn secrets_never_reach_logs_or_http() {
    let mut env = TestEnv::new("secrets");
    env.cfg.log.filter = "debug".into();
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let kafka_secret = "kafka-s3cr3t-value";
    let ch_secret = "ch-s3cr3t-value";
    let listen = env.cfg.http.listen.clone();
    env.spawn_with(
        "pipeline",
        "agg.log",
        &listen,
        &[
            ("USAGE_AGG_KAFKA_PROP_SASL_PASSWORD", kafka_secret),
            ("USAGE_AGG__CLICKHOUSE__PASSWORD", ch_secret),
        ],
    );
    let loader = env.loader();
    loader
        .send(
            &env.cfg.topics.usage_events,
            "a",
            ev("s1", "tool_call", "tavily/web-search", "requests").as_bytes(),
        )
        .unwrap();
    loader.flush().unwrap();
    env.wait_for("the event to be consumed", Duration::from_secs(60), || {
        metric(&env.metrics(), "usage_agg_pipeline_events_consumed_total") >= 1.0
    });
    let _ = api_get(&listen, "/v1/executions/x1");
    let mut seen = env.log("agg.log");
    for path in [
        "/metrics",
        "/readyz",
        "/healthz",
        "/v1/executions/x1",
        "/v1/executions/nope",
    ] {
        seen.push_str(&http_get(&listen, path).1);
        seen.push_str(&api_get(&listen, path).1);
    }
    assert!(seen.len() > 1000, "logs were produced at debug level");
    assert!(!seen.contains(kafka_secret), "kafka secret leaked");
    assert!(!seen.contains(ch_secret), "clickhouse secret leaked");
    assert!(!seen.contains(OPERATOR_TOKEN), "operator token leaked");
}
