//! ClickHouse unreachable from the start, through the real binary and broker (issues 22, 23):
//! billing goes on; a closed execution's trace is served from the output topics, also to
//! the operator without `account_id`; the reads only ClickHouse answers (a conversation, the
//! listing) are a JSON 503; and the alert rules, fed the service's real `/metrics` scrape
//! (promtool), fire SinkNotReady and SinkInsertRetries and none of the other stages' alerts.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ACCOUNT: &str = "acct-chdown";

fn events() -> Vec<String> {
    let call = |n: u32| {
        format!(
            r#"{{"type":"tool_call","event_id":"c{n}","occurred_at":"2026-03-01T10:00:0{n}Z","account_id":"{ACCOUNT}","execution_id":"exec-chdown","asset_id":"tavily/web-search","quantities":{{"requests":{n}}},"dimensions":{{"conversation_id":"conv-chdown"}}}}"#
        )
    };
    let mut v: Vec<String> = (1..=3).map(call).collect();
    v.push(format!(
        r#"{{"type":"execution_finished","event_id":"fin","occurred_at":"2026-03-01T10:00:09Z","account_id":"{ACCOUNT}","execution_id":"exec-chdown"}}"#
    ));
    v
}

/// `name{labels} value` lines of the metrics named, as (series with labels, value).
fn samples(text: &str, names: &[&str]) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            names
                .iter()
                .any(|n| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} ")))
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The series as Prometheus stores a scrape of job `usage-aggregator`, instance `agg:9464`.
fn scraped(series: &str) -> String {
    let extra = r#"instance="agg:9464",job="usage-aggregator""#;
    match series.split_once('{') {
        Some((name, rest)) if rest != "}" => format!("{name}{{{extra},{rest}"),
        Some((name, _)) => format!("{name}{{{extra}}}"),
        None => format!("{series}{{{extra}}}"),
    }
}

#[test]
fn with_clickhouse_down_traces_come_from_the_topics_reads_say_503_and_the_sink_alerts_fire() {
    let mut env = TestEnv::new("chdown");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    env.write_config();
    env.setup();
    // ClickHouse "down": a port nothing listens on, from the start.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let listen = env.cfg.http.listen.clone();
    env.spawn_with(
        "all",
        "all.log",
        &listen,
        &[("USAGE_AGG__CLICKHOUSE__URL", dead.as_str())],
    );
    env.wait_for("the instance", Duration::from_secs(60), || {
        api_get(&listen, "/v1/whoami").0 == 200
    });
    let loader = env.loader();
    for e in events() {
        loader
            .send(&env.cfg.topics.usage_events, "exec-chdown", e.as_bytes())
            .unwrap();
    }
    loader.flush().unwrap();
    let trace = format!("/v1/executions/exec-chdown?account_id={ACCOUNT}");
    env.wait_for(
        "the closed trace from the topics",
        Duration::from_secs(90),
        || {
            let (s, b) = api_get(&listen, &trace);
            s == 200 && b.contains("\"status\":\"closed\"")
        },
    );
    let t0 = Instant::now();
    let m0 = env.metrics();

    // The operator without account_id: the account is found in the topics' tail.
    let (s, b) = api_get(&listen, "/v1/executions/exec-chdown");
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["account_id"], ACCOUNT, "{v}");
    assert_eq!(
        v["total"], "0.0576",
        "6 requests at 0.008, markup 20 %: {v}"
    );
    // What only ClickHouse answers: a JSON 503 naming it.
    for path in [
        format!("/v1/accounts/{ACCOUNT}/conversations/conv-chdown"),
        format!("/v1/accounts/{ACCOUNT}/executions"),
        format!("/v1/accounts/{ACCOUNT}/usage"),
    ] {
        let (s, b) = api_get(&listen, &path);
        assert_eq!(s, 503, "{path}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: {b}: {e}"));
        let why = v["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(why.contains("clickhouse"), "{path}: {v}");
    }

    // Two scrapes 20 s apart: the counters' rates, the gauges' values.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(t0.elapsed()));
    let m1 = env.metrics();
    let secs = t0.elapsed().as_secs_f64();
    let names = [
        "usage_agg_sink_retries_total",
        "usage_agg_sink_lag_messages",
        "usage_agg_stage_ready",
    ];
    let (s0, s1) = (samples(&m0, &names), samples(&m1, &names));
    let ours: Vec<&String> = vec![&env.cfg.topics.debits, &env.cfg.topics.priced_usage];
    let mut lag = 0.0;
    let mut input = String::new();
    let mut retried = Vec::new();
    for (series, v1) in &s1 {
        let values = if series.starts_with("usage_agg_sink_retries_total") {
            let per_s = (v1 - s0.get(series).copied().unwrap_or(0.0)) / secs;
            // Whole retries per 15 s interval (promtool's annotation prints the increase).
            let per_step = if per_s > 0.0 {
                (per_s * 15.0).round().max(1.0)
            } else {
                0.0
            };
            if per_step > 0.0 {
                let table = series.split("table=\"").nth(1).unwrap().split('"').next();
                retried.push((table.unwrap().to_string(), per_step * 40.0));
            }
            format!("{v1}+{per_step}x60")
        } else {
            if series.starts_with("usage_agg_sink_lag_messages") {
                let topic = series.split("topic=\"").nth(1).unwrap().split('"').next();
                assert!(
                    ours.iter().any(|t| Some(t.as_str()) == topic)
                        || topic.is_some_and(|t| t.starts_with(&env.name)),
                    "a lag series of a topic this deployment does not have: {series}"
                );
                lag += v1;
            }
            format!("{v1}x60")
        };
        input.push_str(&format!(
            "      - series: '{}'\n        values: '{values}'\n",
            scraped(series)
        ));
    }
    eprintln!("the scrape fed to promtool:\n{input}");
    // Rows wait for ClickHouse and the lag says so: while the sink waits for the resume
    // points, every assigned partition still waiting is measured.
    assert!(
        lag > 0.0,
        "the rows waiting for ClickHouse are counted (lag {lag})"
    );
    assert!(
        retried
            .iter()
            .any(|(t, _)| t == "debits" || t == "usage_transactions"),
        "start-up failures to reach ClickHouse count as insert retries: {retried:?}\n{m1}"
    );
    let mut retries = String::new();
    for (table, n) in &retried {
        retries.push_str(&format!(
            "          - exp_labels: {{severity: warning, instance: 'agg:9464', job: usage-aggregator, table: {table}}}\n            exp_annotations:\n              summary: ClickHouse inserts into {table} are being retried\n              description: '{n} insert retries in 10 minutes; is ClickHouse reachable and healthy?'\n"
        ));
    }
    let rules = root().join("deploy/prometheus/rules/usage-aggregator.yml");
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 15s\ntests:\n  - interval: 15s\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: 12m\n        alertname: SinkNotReady\n        exp_alerts:\n          - exp_labels: {{severity: warning, instance: 'agg:9464', job: usage-aggregator, stage: sink}}\n            exp_annotations:\n              summary: The ClickHouse sink of agg:9464 is not ready\n              description: ClickHouse is unreachable, refuses the credentials or inserts (a full disk), or the sink made no progress while rows wait, for 2 minutes; /readyz says which. Billing, the ledger and the API go on; rows wait in Kafka and land once when ClickHouse is back.\n      - eval_time: 12m\n        alertname: SinkInsertRetries\n        exp_alerts:\n{retries}      - eval_time: 12m\n        alertname: SinkLag\n        exp_alerts: []\n      - eval_time: 12m\n        alertname: PipelineNotReady\n        exp_alerts: []\n      - eval_time: 12m\n        alertname: LedgerNotReady\n        exp_alerts: []\n      - eval_time: 12m\n        alertname: ApiNotReady\n        exp_alerts: []\n",
        rules.display()
    );
    let path = env.dir.path().join("scrape.test.yml");
    std::fs::write(&path, &test).unwrap();
    let out = match Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "SKIPPED the promtool part: promtool cannot run ({e}); scripts/services installs it"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "promtool on the real scrape:\n{}\n{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
