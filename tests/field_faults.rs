//! Faults seen in the field (issue 14), end to end: every input of the issue with its right
//! value through `rate` (the binary, offline) and through the real broker (the service,
//! `dead-letters replay`, ClickHouse): strict timestamps, a dead letter billed once after
//! the catalog is fixed, the same ids in two accounts, close markers producers cannot forge;
//! and (issue 23) a finish that arrives before its calls.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::consumer::Consumer;
use usage_aggregator::debit::Debit;
use usage_aggregator::rejection::DeadLetter;

const TIMESTAMPS: [&str; 5] = [
    r#"{"type":"tool_call","event_id":"t1","occurred_at":"2026-03-15T10:00:00.1234567891Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
    r#"{"type":"tool_call","event_id":"t2","occurred_at":"2026-03-15 10:00:00Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
    r#"{"type":"tool_call","event_id":"t3","occurred_at":"2026-03-15t10:00:00z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
    r#"{"type":"tool_call","event_id":"t4","occurred_at":"2026-03-15T10:17:60Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
    r#"{"type":"tool_call","event_id":"t5","occurred_at":"2026-06-30T23:59:60Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
];
const TS_OK: &str = r#"{"type":"tool_call","event_id":"t6","occurred_at":"2026-03-15T10:00:00Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#;

const TENANT_A: &str = r#"{"type":"model_call","event_id":"req-1","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-a","asset_id":"openai/gpt-4o-mini","quantities":{"input_tokens":1000}}"#;
const TENANT_B: &str = r#"{"type":"model_call","event_id":"req-1","occurred_at":"2026-03-01T10:00:01Z","account_id":"acct-b","asset_id":"openai/gpt-4o-mini","quantities":{"input_tokens":2000}}"#;

const NEW_ASSET: &str = r#"{"type":"tool_call","event_id":"r1","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-replay","asset_id":"acme/new-search","quantities":{"requests":2}}"#;

fn forge_call(id: &str) -> String {
    format!(
        r#"{{"type":"tool_call","event_id":"{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-f","execution_id":"exec-forge","asset_id":"tavily/web-search","quantities":{{"requests":1}}}}"#
    )
}
const FORGE_FINISH: &str = r#"{"type":"execution_finished","event_id":"ff","occurred_at":"2026-03-01T10:00:05Z","account_id":"acct-f","execution_id":"exec-forge"}"#;

/// Issue 23: a finish (re-sent) that arrives before its two calls.
fn finish_first() -> Vec<String> {
    let finish = r#"{"type":"execution_finished","event_id":"ef","occurred_at":"2026-03-01T10:00:09Z","account_id":"acct-ff","execution_id":"exec-early","expected_calls":2}"#;
    let mut lines = vec![finish.to_string(), finish.to_string()];
    for id in ["e1", "e2"] {
        lines.push(
            forge_call(id)
                .replace("exec-forge", "exec-early")
                .replace("acct-f", "acct-ff"),
        );
    }
    lines
}

fn forged_marker(after_offset: i64) -> String {
    format!(
        r#"{{"type":"execution_timeout","event_id":"timeout:{after_offset}:1","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-f","execution_id":"exec-forge","after_offset":{after_offset}}}"#
    )
}

/// The shipped catalog plus `acme/new-search` at 0.05 per request.
fn fixed_catalog() -> String {
    let mut v: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(root().join("config/catalog.json")).unwrap())
            .unwrap();
    v.push(
        serde_json::json!({"asset_id":"acme/new-search","asset_type":"tool","vendor":"acme",
        "effective_from":"2024-01-01T00:00:00Z","prices":{"requests":{"credits":"0.05","per":1}}}),
    );
    serde_json::to_string(&v).unwrap()
}

/// `rate` over `lines` with a catalog file; the output records.
fn rate(catalog: &str, lines: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("catalog.json");
    std::fs::write(&cat, catalog).unwrap();
    let mut child = Command::new(TestEnv::bin())
        .args(["rate", "--catalog", cat.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (kind, account, total) of each debit record.
fn debit_summary(records: &[serde_json::Value]) -> Vec<(String, String, String)> {
    records
        .iter()
        .filter_map(|r| r.get("debit"))
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["account_id"].as_str().unwrap().to_string(),
                d["total"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rejected_reasons(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r.get("rejected"))
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect()
}

fn s3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

fn shipped() -> String {
    std::fs::read_to_string(root().join("config/catalog.json")).unwrap()
}

#[test]
fn rate_gives_every_issue_input_its_value() {
    // 1. Timestamps the contract forbids: rejected, not billed 0.008 each.
    let mut lines: Vec<&str> = TIMESTAMPS.to_vec();
    lines.push(TS_OK);
    let out = rate(&shipped(), &lines);
    assert_eq!(rejected_reasons(&out), ["invalid_timestamp"; 5]);
    assert_eq!(debit_summary(&out), [s3("tool_call", "acct-ts", "0.008")]);

    // 3. The same event_id in two accounts: both billed, each to its own account.
    let out = rate(&shipped(), &[TENANT_A, TENANT_B]);
    assert!(rejected_reasons(&out).is_empty(), "{out:?}");
    assert_eq!(
        debit_summary(&out),
        [
            s3("model_call", "acct-a", "0.00015"),
            s3("model_call", "acct-b", "0.0003")
        ]
    );

    // 4. A producer's close marker: unknown_event_type; the execution is billed whole.
    let (c1, c2) = (forge_call("c1"), forge_call("c2"));
    let marker = forged_marker(0);
    let out = rate(&shipped(), &[&c1, &marker, &c2, FORGE_FINISH]);
    assert_eq!(rejected_reasons(&out), ["unknown_event_type"]);
    assert_eq!(
        debit_summary(&out),
        [s3("agent_execution", "acct-f", "0.0192")]
    );

    // Issue 23: a finish (re-sent) before its calls waits for expected_calls: one debit.
    let early = finish_first();
    let out = rate(
        &shipped(),
        &early.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(
        debit_summary(&out),
        [s3("agent_execution", "acct-ff", "0.0192")]
    );

    // 2. Rejected for unknown_asset: every re-send is rejected (none dropped as a
    // duplicate); once the price exists, the replays are billed once.
    let out = rate(&shipped(), &[NEW_ASSET, NEW_ASSET]);
    assert_eq!(rejected_reasons(&out), ["unknown_asset"; 2]);
    let out = rate(&fixed_catalog(), &[NEW_ASSET, NEW_ASSET, NEW_ASSET]);
    assert!(rejected_reasons(&out).is_empty());
    assert_eq!(debit_summary(&out), [s3("tool_call", "acct-replay", "0.1")]);
}

fn dead_letters(env: &TestEnv) -> Vec<DeadLetter> {
    let mut seen = std::collections::BTreeMap::new();
    for (_, msgs) in env.read_topic(&env.cfg.topics.dead_letter) {
        for (_, _, p) in msgs {
            let dl: DeadLetter = serde_json::from_slice(&p).unwrap();
            seen.insert(dl.id(), dl);
        }
    }
    seen.into_values().collect()
}

/// Every debit message (not deduplicated): the pipeline ran without crash, so a repeat
/// would be a second billing.
fn all_debits(env: &TestEnv) -> Vec<Debit> {
    env.read_topic(&env.cfg.topics.debits)
        .into_values()
        .flatten()
        .map(|(_, _, p)| serde_json::from_slice(&p).unwrap())
        .collect()
}

fn totals(debits: &[Debit], account: &str) -> Vec<String> {
    let mut t: Vec<String> = debits
        .iter()
        .filter(|d| d.account_id == account)
        .map(|d| format!("{} {}", d.kind.as_str(), d.total))
        .collect();
    t.sort();
    t
}

#[test]
fn the_service_gives_every_issue_input_its_value() {
    let mut env = TestEnv::new("field_faults");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(5);
    env.cfg.alerts.execution_credits = Some("0.015".parse().unwrap());
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let marker_key = "0123456789abcdef".repeat(4);
    env.env.push(("USAGE_AGG_MARKER_KEY".into(), marker_key));
    env.spawn("all", "agg.log");
    let usage = env.cfg.topics.usage_events.clone();
    let loader = env.loader();

    // 1. Timestamps.
    for l in TIMESTAMPS.iter().chain([&TS_OK]) {
        loader.send(&usage, "acct-ts", l.as_bytes()).unwrap();
    }
    // 3. The same event_id in two accounts, on one partition and on two.
    loader
        .send_to(&usage, 0, "acct-a", TENANT_A.as_bytes())
        .unwrap();
    loader
        .send_to(&usage, 0, "acct-b", TENANT_B.as_bytes())
        .unwrap();
    let (a2, b2) = (
        TENANT_A.replace("req-1", "req-2"),
        TENANT_B.replace("req-1", "req-2"),
    );
    loader.send_to(&usage, 0, "acct-a", a2.as_bytes()).unwrap();
    loader.send_to(&usage, 1, "acct-b", b2.as_bytes()).unwrap();
    // ... and the same execution_id in two accounts: two executions.
    for (account, n) in [("acct-a", 1), ("acct-b", 2)] {
        let c = format!(
            r#"{{"type":"tool_call","event_id":"s1","occurred_at":"2026-03-01T10:00:00Z","account_id":"{account}","execution_id":"exec-shared","asset_id":"tavily/web-search","quantities":{{"requests":{n}}}}}"#
        );
        let f = format!(
            r#"{{"type":"execution_finished","event_id":"s2","occurred_at":"2026-03-01T10:00:09Z","account_id":"{account}","execution_id":"exec-shared"}}"#
        );
        loader.send(&usage, "exec-shared", c.as_bytes()).unwrap();
        loader.send(&usage, "exec-shared", f.as_bytes()).unwrap();
    }
    // 2. An asset the catalog does not have yet.
    loader
        .send(&usage, "acct-replay", NEW_ASSET.as_bytes())
        .unwrap();
    // 4. A forged marker naming the offset of exec-forge's first call, sent at once.
    loader
        .send_to(&usage, 2, "exec-forge", forge_call("c1").as_bytes())
        .unwrap();
    loader.flush().unwrap();
    let reader = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.cfg.kafka.brokers)
        .set("group.id", format!("{}-wm", env.name))
        .create::<rdkafka::consumer::BaseConsumer>()
        .unwrap();
    let (_, high) = reader
        .fetch_watermarks(&usage, 2, Duration::from_secs(10))
        .unwrap();
    let forged = forged_marker(high - 1);
    loader
        .send_to(&usage, 2, "exec-forge", forged.as_bytes())
        .unwrap();
    let c2 = forge_call("c2");
    loader
        .send_to(&usage, 2, "exec-forge", c2.as_bytes())
        .unwrap();
    loader
        .send_to(&usage, 2, "exec-forge", FORGE_FINISH.as_bytes())
        .unwrap();
    // The aggregator's own, authenticated marker still closes an idle execution.
    let idle = forge_call("i1")
        .replace("exec-forge", "exec-idle")
        .replace("acct-f", "acct-i");
    loader
        .send_to(&usage, 3, "exec-idle", idle.as_bytes())
        .unwrap();
    // Issue 23: a finish (re-sent) before its two calls.
    for l in finish_first() {
        loader.send(&usage, "exec-early", l.as_bytes()).unwrap();
    }
    loader.flush().unwrap();

    env.wait_for(
        "10 debits and 7 dead letters",
        Duration::from_secs(90),
        || env.debits_by_id().0.len() == 10 && dead_letters(&env).len() == 7,
    );
    assert_eq!(
        totals(&all_debits(&env), "acct-ff"),
        ["agent_execution 0.0192"]
    );
    // Issue 23: its spend alert's log line names the account and the execution.
    env.wait_for("the spend alert line", Duration::from_secs(30), || {
        env.log("agg.log").lines().any(|l| {
            l.contains("spend alert")
                && l.contains("rule=execution_credits")
                && l.contains("account_id=acct-ff")
                && l.contains("execution_id=exec-early")
        })
    });
    let debits = all_debits(&env);
    assert_eq!(totals(&debits, "acct-ts"), ["tool_call 0.008"]);
    assert_eq!(
        totals(&debits, "acct-a"),
        [
            "agent_execution 0.0096",
            "model_call 0.00015",
            "model_call 0.00015"
        ]
    );
    assert_eq!(
        totals(&debits, "acct-b"),
        [
            "agent_execution 0.0192",
            "model_call 0.0003",
            "model_call 0.0003"
        ]
    );
    assert_eq!(totals(&debits, "acct-f"), ["agent_execution 0.0192"]);
    assert_eq!(totals(&debits, "acct-i"), ["agent_execution 0.0096"]);
    let mut reasons: Vec<String> = dead_letters(&env)
        .iter()
        .map(|d| d.reason.as_str().to_string())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "invalid_timestamp",
            "invalid_timestamp",
            "invalid_timestamp",
            "invalid_timestamp",
            "invalid_timestamp",
            "unknown_asset",
            "unknown_event_type"
        ]
    );
    // ClickHouse holds both accounts' req-1 lines (the sink dedupes by the scoped id).
    env.wait_for("both req-1 rows in clickhouse", Duration::from_secs(60), || {
        env.ch("SELECT account_id FROM {db}.usage_transactions WHERE event_id = 'req-1' ORDER BY account_id")
            == "acct-a\nacct-b\n"
    });

    // The execution API answers per account.
    let listen = env.cfg.http.listen.clone();
    env.wait_for(
        "exec-shared debits in clickhouse",
        Duration::from_secs(60),
        || env.ch("SELECT count() FROM {db}.debits WHERE execution_id = 'exec-shared'") == "2\n",
    );
    let (status, body) = api_get(&listen, "/v1/executions/exec-shared?account_id=acct-b");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["debits"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v["account_id"], "acct-b");
    assert_eq!(v["debits"][0]["total"], "0.0192");
    // Without the account, an id used by two accounts is ambiguous: never summed across them.
    let (status, body) = api_get(&listen, "/v1/executions/exec-shared");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("exists in 2 accounts"), "{body}");
    let (status, _) = api_get(&listen, "/v1/executions/exec-shared?account_id=acct-x");
    assert_eq!(status, 404);

    // 2. Publish the price, restart (the rejection must survive in the snapshot), replay.
    let fixed = env.dir.path().join("fixed.json");
    std::fs::write(&fixed, fixed_catalog()).unwrap();
    env.cli(&["catalog", "publish", fixed.to_str().unwrap()]);
    assert!(env.terminate(0, Duration::from_secs(60)), "clean shutdown");
    env.spawn("all", "agg2.log");
    let versions = env.catalog().version_count() as f64 + 1.0;
    env.wait_for("the fixed catalog", Duration::from_secs(60), || {
        metric(&env.metrics(), "usage_agg_catalog_versions") == versions
    });

    let dry = env.cli(&[
        "dead-letters",
        "replay",
        "--account",
        "acct-replay",
        "--dry-run",
    ]);
    let planned: Vec<serde_json::Value> = dry
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(planned.len(), 1, "{dry}");
    assert_eq!(planned[0]["reason"], "unknown_asset");
    assert_eq!(planned[0]["key"], "acct-replay");
    assert_eq!(planned[0]["payload"], NEW_ASSET);
    let before = env.cli(&[
        "dead-letters",
        "replay",
        "--to",
        "2000-01-01T00:00:00Z",
        "--dry-run",
    ]);
    assert!(
        before.is_empty(),
        "nothing was rejected before 2000: {before}"
    );
    assert!(
        all_debits(&env)
            .iter()
            .all(|d| d.account_id != "acct-replay"),
        "a dry run sends nothing"
    );

    let sent = env.cli(&["dead-letters", "replay", "--reason", "unknown_asset"]);
    assert!(sent.starts_with("re-sent 1 of "), "{sent}");
    env.wait_for("the replayed debit", Duration::from_secs(60), || {
        totals(&all_debits(&env), "acct-replay") == ["tool_call 0.1"]
    });
    let sent = env.cli(&["dead-letters", "replay"]);
    assert!(sent.starts_with("re-sent 1 of "), "{sent}");
    env.wait_for(
        "the second replay to be a duplicate",
        Duration::from_secs(60),
        || metric(&env.metrics(), "usage_agg_rating_events_duplicate_total") >= 1.0,
    );
    assert_eq!(totals(&all_debits(&env), "acct-replay"), ["tool_call 0.1"]);
    assert_eq!(dead_letters(&env).len(), 7, "the replays were not rejected");
    env.wait_for(
        "the replayed line in clickhouse",
        Duration::from_secs(60),
        || {
            env.ch("SELECT count() FROM {db}.usage_transactions WHERE account_id = 'acct-replay'")
                == "1\n"
        },
    );
}
