//! Pipeline features against the real broker: live catalog updates with point-in-time
//! pricing, the bad-input corpus on the dead-letter topic, metrics that match what was sent,
//! spend alerts, and the running-cost API.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use usage_aggregator::debit::Debit;
use usage_aggregator::rejection::DeadLetter;

fn call(id: &str, at: &str, account: &str, asset: &str, exec: Option<&str>, q: &str) -> String {
    let exec = exec.map_or("null".to_string(), |e| format!("\"{e}\""));
    format!(
        r#"{{"type":"tool_call","event_id":"{id}","occurred_at":"{at}","account_id":"{account}","execution_id":{exec},"asset_id":"{asset}","quantities":{q}}}"#
    )
}

fn debits(env: &TestEnv) -> Vec<Debit> {
    env.debits_by_id()
        .0
        .values()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect()
}

#[test]
fn catalog_update_applies_live_and_point_in_time() {
    let mut env = TestEnv::new("catalog_live");
    let file = env.dir.path().join("catalog.json");
    std::fs::write(&file, r#"[{"asset_id":"acme/search","asset_type":"tool","vendor":"acme","effective_from":"2024-01-01T00:00:00Z","prices":{"requests":{"credits":"1","per":1}}}]"#).unwrap();
    env.cfg.pricing.catalog_file = file;
    env.write_config();
    env.setup();
    env.spawn("pipeline", "agg.log");
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    loader
        .send(
            &topic,
            "a",
            call(
                "e1",
                "2026-06-01T00:00:00Z",
                "a",
                "acme/search",
                None,
                r#"{"requests":1}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    loader.flush().unwrap();
    env.wait_for("the first debit", Duration::from_secs(60), || {
        debits(&env).len() == 1
    });

    // A new version effective 2026-07-01 is published while the service runs.
    let v2 = env.dir.path().join("v2.json");
    std::fs::write(&v2, r#"[{"asset_id":"acme/search","asset_type":"tool","vendor":"acme","effective_from":"2026-07-01T00:00:00Z","prices":{"requests":{"credits":"2.5","per":1}}}]"#).unwrap();
    // The date is in the past by now: a deliberate retroactive version for this test.
    env.cli(&[
        "catalog",
        "publish",
        v2.to_str().unwrap(),
        "--allow-retroactive",
    ]);
    env.wait_for("the catalog to update", Duration::from_secs(30), || {
        metric(&env.metrics(), "usage_agg_catalog_versions") == 2.0
    });
    loader
        .send(
            &topic,
            "a",
            call(
                "e2",
                "2026-06-30T23:59:59Z",
                "a",
                "acme/search",
                None,
                r#"{"requests":2}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    loader
        .send(
            &topic,
            "a",
            call(
                "e3",
                "2026-07-01T00:00:00Z",
                "a",
                "acme/search",
                None,
                r#"{"requests":2}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    loader.flush().unwrap();
    env.wait_for("three debits", Duration::from_secs(60), || {
        debits(&env).len() == 3
    });
    let by_time: BTreeMap<String, String> = debits(&env)
        .into_iter()
        .map(|d| (d.first_event_at.to_rfc3339(), d.total.to_string()))
        .collect();
    let totals: Vec<&str> = by_time.values().map(String::as_str).collect();
    assert_eq!(
        totals,
        ["1", "2", "5"],
        "old price before effective_from, new price from it"
    );
}

#[test]
fn every_bad_event_lands_on_the_dead_letter_topic_with_its_reason() {
    let mut env = TestEnv::new("dead_letters");
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("pipeline", "agg.log");
    let fixtures = root().join("tests/fixtures/bad_events");
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let prelude = std::fs::read_to_string(fixtures.join("prelude.jsonl")).unwrap();
    let mut n = 0;
    for l in prelude.lines().filter(|l| !l.is_empty()) {
        loader.send_to(&topic, 0, "ctx", l.as_bytes()).unwrap();
        n += 1;
    }
    let mut expected = BTreeMap::new();
    for line in std::fs::read_to_string(fixtures.join("expected.tsv"))
        .unwrap()
        .lines()
    {
        let (file, reason) = line.split_once('\t').unwrap();
        expected.insert(n as i64, (file.to_string(), reason.trim().to_string()));
        loader
            .send_to(
                &topic,
                0,
                "ctx",
                &std::fs::read(fixtures.join(file)).unwrap(),
            )
            .unwrap();
        n += 1;
    }
    // A good event after all of them: the pipeline kept going.
    loader
        .send_to(
            &topic,
            0,
            "ctx",
            call(
                "after-bad",
                "2026-03-01T11:00:00Z",
                "acct-ctx",
                "tavily/web-search",
                None,
                r#"{"requests":1}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    loader.flush().unwrap();
    env.wait_for(
        "every bad event dead-lettered",
        Duration::from_secs(60),
        || {
            env.read_topic(&env.cfg.topics.dead_letter)
                .values()
                .map(Vec::len)
                .sum::<usize>()
                >= expected.len()
        },
    );
    let mut got = BTreeMap::new();
    for (_, msgs) in env.read_topic(&env.cfg.topics.dead_letter) {
        for (_, _, payload) in msgs {
            let dl: DeadLetter = serde_json::from_slice(&payload).unwrap();
            assert_eq!(dl.source_topic, topic);
            assert!(!dl.message.is_empty());
            assert!(
                dl.payload.is_some() || dl.payload_base64.is_some(),
                "the original payload is kept"
            );
            got.insert(dl.source_offset, dl.reason.as_str().to_string());
        }
    }
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(o, (_, r))| got.get(o) != Some(r))
        .map(|(o, (f, r))| format!("{f}: expected {r}, got {:?}", got.get(o)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(got.len(), expected.len(), "nothing else was rejected");
    env.wait_for(
        "the good event after the bad ones to be billed",
        Duration::from_secs(30),
        || {
            debits(&env).iter().any(|d| {
                d.breakdown[0].asset_id == "tavily/web-search"
                    && d.first_event_at.to_rfc3339().starts_with("2026-03-01T11")
            })
        },
    );
}

#[test]
fn metrics_match_what_was_sent_and_alerts_fire_once_per_crossing() {
    let mut env = TestEnv::new("metrics");
    env.cfg.alerts.account_hourly_credits = Some("0.05".parse().unwrap());
    env.cfg.alerts.execution_credits = Some("0.04".parse().unwrap());
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(60);
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let mut sent = 0;
    // Two direct searches per account in one hour (0.008 each) and one execution that stays open.
    for (i, account) in ["a1", "a2", "a3"].iter().enumerate() {
        for j in 0..8 {
            let id = format!("d{i}-{j}");
            loader
                .send(
                    &topic,
                    account,
                    call(
                        &id,
                        "2026-05-01T10:00:00Z",
                        account,
                        "tavily/web-search",
                        None,
                        r#"{"requests":1}"#,
                    )
                    .as_bytes(),
                )
                .unwrap();
            sent += 1;
        }
    }
    loader.send(&topic, "x", b"{broken").unwrap();
    loader
        .send(
            &topic,
            "x",
            call(
                "x1",
                "2026-05-01T10:00:00Z",
                "a1",
                "serpapi/google-search",
                Some("exec-open"),
                r#"{"requests":3}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    loader
        .send(
            &topic,
            "a1",
            call(
                "d0-0",
                "2026-05-01T10:00:00Z",
                "a1",
                "tavily/web-search",
                None,
                r#"{"requests":1}"#,
            )
            .as_bytes(),
        )
        .unwrap();
    sent += 3;
    loader.flush().unwrap();
    env.wait_for("all events consumed", Duration::from_secs(60), || {
        metric(&env.metrics(), "usage_agg_pipeline_events_consumed_total") >= sent as f64
    });
    std::thread::sleep(Duration::from_secs(2));
    let m = env.metrics();
    assert_eq!(
        metric(&m, "usage_agg_pipeline_events_consumed_total"),
        sent as f64
    );
    assert_eq!(metric(&m, "usage_agg_rating_events_priced_total"), 25.0);
    assert_eq!(metric(&m, "usage_agg_rating_events_duplicate_total"), 1.0);
    assert_eq!(
        metric(
            &m,
            "usage_agg_rating_events_rejected_total{reason=\"invalid_json\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "usage_agg_rating_debits_total{kind=\"tool_call\"}"),
        24.0
    );
    assert_eq!(metric(&m, "usage_agg_rollup_open_executions"), 1.0);
    assert!(metric(&m, "usage_agg_rollup_dedupe_entries") >= 26.0);
    let credits = metric(
        &m,
        "usage_agg_rating_credits_debited_total{kind=\"tool_call\"}",
    );
    assert!((credits - 24.0 * 0.008).abs() < 1e-9, "{credits}");
    assert!(m.contains("usage_agg_stage_produce_latency_seconds_bucket{stage=\"pipeline\""));
    assert!(m.contains("usage_agg_sink_insert_latency_seconds_bucket"));

    // Running cost of the open execution, from memory.
    let (status, body) = api_get(&env.cfg.http.listen, "/v1/executions/exec-open");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "open");
    assert_eq!(v["subtotal"], "0.045");
    assert_eq!(v["total"], "0.054");
    let (status, _) = api_get(&env.cfg.http.listen, "/v1/executions/never-seen");
    assert_eq!(status, 404);

    // Alerts: each account crosses 0.05 credits in the 10:00 hour once (8 x 0.008 = 0.064).
    env.wait_for("three alerts", Duration::from_secs(30), || {
        env.read_topic(&env.cfg.topics.alerts)
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= 3
    });
    std::thread::sleep(Duration::from_secs(1));
    let alerts: Vec<serde_json::Value> = env
        .read_topic(&env.cfg.topics.alerts)
        .into_values()
        .flatten()
        .map(|(_, _, p)| serde_json::from_slice(&p).unwrap())
        .collect();
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    let mut accounts: Vec<&str> = alerts
        .iter()
        .map(|a| a["account_id"].as_str().unwrap())
        .collect();
    accounts.sort();
    assert_eq!(accounts, ["a1", "a2", "a3"]);
    assert!(alerts.iter().all(|a| a["rule"] == "account_hourly_credits"
        && a["threshold"] == "0.05"
        && a["amount"] == "0.056"));
    assert_eq!(
        metric(
            &env.metrics(),
            "usage_agg_alerts_fired_total{rule=\"account_hourly_credits\"}"
        ),
        3.0
    );
    // Issue 23: the log line names the account (the metric never does).
    let log = env.log("agg.log");
    let line = log
        .lines()
        .find(|l| l.contains("spend alert") && l.contains("account_id=a2"))
        .unwrap_or_else(|| panic!("no spend alert line for a2: {log}"));
    assert!(
        line.contains("rule=account_hourly_credits") && line.contains("alert_id=account_hour:a2:"),
        "{line}"
    );
    assert!(
        !env.metrics().contains("\"a2\""),
        "no account in any metric"
    );
    let (status, body) = http_get(&env.cfg.http.listen, "/readyz");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn open_execution_bound_closes_oldest_and_shows_in_metrics() {
    let mut env = TestEnv::new("bounds");
    env.cfg.rollup.max_open_executions = 5;
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(120);
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("pipeline", "agg.log");
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    // 30 executions that never finish, all on partition 0: the bound is 5 per partition.
    for i in 0..30 {
        let exec = format!("x{i:02}");
        loader
            .send_to(
                &topic,
                0,
                &exec,
                call(
                    &format!("b{i}"),
                    "2026-05-01T10:00:00Z",
                    "acct",
                    "tavily/web-search",
                    Some(&exec),
                    r#"{"requests":1}"#,
                )
                .as_bytes(),
            )
            .unwrap();
    }
    loader.flush().unwrap();
    env.wait_for("30 events consumed", Duration::from_secs(60), || {
        metric(&env.metrics(), "usage_agg_pipeline_events_consumed_total") >= 30.0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        metric(&env.metrics(), "usage_agg_rollup_open_executions"),
        5.0
    );
    // The 25 oldest were closed and billed (with markup), in order; nothing crashed.
    let d = debits(&env);
    assert_eq!(d.len(), 25);
    let mut execs: Vec<String> = d.iter().map(|d| d.execution_id.clone().unwrap()).collect();
    execs.sort();
    assert_eq!(execs.first().map(String::as_str), Some("x00"));
    assert_eq!(execs.last().map(String::as_str), Some("x24"));
    assert!(d.iter().all(|d| d.total.to_string() == "0.0096"));
    let (status, _) = http_get(&env.cfg.http.listen, "/healthz");
    assert_eq!(status, 200);
}
