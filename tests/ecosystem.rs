//! Issue 16 end to end, against the real broker and ClickHouse: a LiteLLM import published
//! with `catalog import --publish`, SDK model names priced through catalog aliases, contract
//! v1.1 dimensions carried to `priced_usage`, ClickHouse rows and the daily dimension
//! rollup, `report --group-by dimension:project`, and the execution API.

mod common;

use std::time::Duration;

use common::*;

fn call(id: &str, kind: &str, exec: Option<&str>, asset: &str, q: &str, dims: &str) -> String {
    let exec = exec.map_or("null".to_string(), |e| format!("\"{e}\""));
    let dims = if dims.is_empty() {
        String::new()
    } else {
        format!(",\"dimensions\":{dims}")
    };
    format!(
        r#"{{"type":"{kind}","event_id":"{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-eco","execution_id":{exec},"asset_id":"{asset}","quantities":{q}{dims}}}"#
    )
}

#[test]
fn aliases_import_and_dimensions_through_pipeline_clickhouse_report_and_api() {
    let mut env = TestEnv::new("ecosystem");
    // The oracle prices with the same catalog the service reads from the topic: the sample
    // catalog plus the imported DeepSeek versions.
    let imported = env.dir.path().join("imported.json");
    env.setup();
    let fixture = root().join("tests/fixtures/litellm/model_prices_and_context_window.json");
    env.cli(&[
        "catalog",
        "import",
        "--format",
        "litellm",
        fixture.to_str().unwrap(),
        "--effective-from",
        "2026-01-01T00:00:00Z",
        "--provider",
        "deepseek",
        "--with-catalog",
        "config/catalog.json",
        "--output",
        imported.to_str().unwrap(),
        "--publish",
    ]);
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let mut all: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(root().join("config/catalog.json")).unwrap())
            .unwrap();
    all.extend(
        serde_json::from_slice::<Vec<serde_json::Value>>(&std::fs::read(&imported).unwrap())
            .unwrap(),
    );
    let merged = env.dir.path().join("merged.json");
    std::fs::write(&merged, serde_json::to_vec(&all).unwrap()).unwrap();
    env.cfg.pricing.catalog_file = merged;
    env.write_config();
    env.spawn("all", "agg.log");

    let x = Some("exec-eco-1");
    let events: Vec<(&str, String)> = vec![
        (
            "exec-eco-1",
            call(
                "e1",
                "model_call",
                x,
                "gpt-4o-mini-2024-07-18",
                r#"{"input_tokens":1000,"output_tokens":200}"#,
                r#"{"project":"apollo","end_user":"u1"}"#,
            ),
        ),
        (
            "exec-eco-1",
            call(
                "e2",
                "model_call",
                x,
                "claude-3-5-sonnet-20241022",
                r#"{"input_tokens":2000,"output_tokens":100}"#,
                r#"{"project":"apollo","feature":"summarize"}"#,
            ),
        ),
        (
            "exec-eco-1",
            call(
                "e3",
                "model_call",
                x,
                "models/gemini-1.5-flash-002",
                r#"{"input_tokens":10000,"output_tokens":1000}"#,
                r#"{"project":"zeus"}"#,
            ),
        ),
        (
            "exec-eco-1",
            call(
                "e4",
                "model_call",
                x,
                "openai/gpt-4o-mini-2024-07-18",
                r#"{"input_tokens":100}"#,
                "",
            ),
        ),
        // A retry of e1 with its dimensions in another order: a duplicate, billed once.
        (
            "exec-eco-1",
            call(
                "e1",
                "model_call",
                x,
                "gpt-4o-mini-2024-07-18",
                r#"{"output_tokens":200,"input_tokens":1000}"#,
                r#"{"end_user":"u1","project":"apollo"}"#,
            ),
        ),
        // e1 again with other dimensions: a conflicting duplicate.
        (
            "exec-eco-1",
            call(
                "e1",
                "model_call",
                x,
                "gpt-4o-mini-2024-07-18",
                r#"{"input_tokens":1000,"output_tokens":200}"#,
                r#"{"project":"zeus","end_user":"u1"}"#,
            ),
        ),
        (
            "exec-eco-1",
            r#"{"type":"execution_finished","event_id":"f1","occurred_at":"2026-03-01T10:01:00Z","account_id":"acct-eco","execution_id":"exec-eco-1","expected_calls":4}"#.to_string(),
        ),
        (
            "acct-eco",
            call(
                "d1",
                "tool_call",
                None,
                "tavily/web-search",
                r#"{"requests":2}"#,
                r#"{"project":"zeus"}"#,
            ),
        ),
        (
            "acct-eco",
            call(
                "d2",
                "model_call",
                None,
                "deepseek/deepseek-chat",
                r#"{"input_tokens":1000,"cached_input_tokens":1000}"#,
                r#"{"project":"apollo"}"#,
            ),
        ),
        (
            "acct-eco",
            call(
                "bad1",
                "model_call",
                None,
                "openai/gpt-4o-mini",
                r#"{"input_tokens":1}"#,
                r#"{"Project":"apollo"}"#,
            ),
        ),
        (
            "acct-eco",
            call(
                "bad2",
                "model_call",
                None,
                "gpt-4o-mini-2024-07",
                r#"{"input_tokens":1}"#,
                "",
            ),
        ),
    ];
    let loader = env.loader();
    for (key, payload) in &events {
        loader
            .send(&env.cfg.topics.usage_events, key, payload.as_bytes())
            .unwrap();
    }
    loader.flush().unwrap();

    // Debits equal the rating core's on the same log and catalog.
    let oracle = env.wait_for_oracle(Duration::from_secs(120));
    assert_eq!(oracle.lines.len(), 6);
    assert_eq!(oracle.rejected, 3);
    let totals = oracle.totals_per_account();
    // exec-eco-1: (0.00027 + 0.0075 + 0.00105 + 0.000015) x 1.2 = 0.010602; direct 0.016 + 0.00034
    assert_eq!(totals["acct-eco"].to_string(), "0.026942");

    env.wait_for("rows in clickhouse", Duration::from_secs(90), || {
        env.ch("SELECT count() FROM {db}.usage_transactions").trim() == "6"
            && env.ch("SELECT count() FROM {db}.dead_letters").trim() == "3"
            && env.ch("SELECT count() FROM {db}.debits").trim() == "3"
    });
    let rows = env.ch(
        "SELECT event_id, asset_id, asset_name_sent, dimension_keys, dimension_values, cost FROM {db}.usage_transactions ORDER BY event_id",
    );
    let expect = [
        "d1\ttavily/web-search\ttavily/web-search\t['project']\t['zeus']\t0.016000000000",
        "d2\tdeepseek/deepseek-chat\tdeepseek/deepseek-chat\t['project']\t['apollo']\t0.000340000000",
        "e1\topenai/gpt-4o-mini\tgpt-4o-mini-2024-07-18\t['end_user','project']\t['u1','apollo']\t0.000270000000",
        "e2\tanthropic/claude-3-5-sonnet\tclaude-3-5-sonnet-20241022\t['feature','project']\t['summarize','apollo']\t0.007500000000",
        "e3\tgoogle/gemini-1.5-flash\tmodels/gemini-1.5-flash-002\t['project']\t['zeus']\t0.001050000000",
        "e4\topenai/gpt-4o-mini\topenai/gpt-4o-mini-2024-07-18\t[]\t[]\t0.000015000000",
    ];
    let got: Vec<&str> = rows.lines().collect();
    // Current releases print decimals without trailing zeros; compare values, not text.
    assert_eq!(got.len(), expect.len(), "{rows}");
    for (g, e) in got.iter().zip(expect) {
        let (g, e): (Vec<&str>, Vec<&str>) = (g.split('\t').collect(), e.split('\t').collect());
        assert_eq!(g[..5], e[..5], "{rows}");
        assert_eq!(
            rust_decimal::Decimal::from_str_exact(g[5]).unwrap(),
            rust_decimal::Decimal::from_str_exact(e[5]).unwrap()
        );
    }
    let reasons = env.ch("SELECT reason FROM {db}.dead_letters ORDER BY reason");
    assert_eq!(
        reasons.lines().collect::<Vec<_>>(),
        [
            "conflicting_duplicate",
            "invalid_dimension",
            "unknown_asset"
        ]
    );
    // The debit's breakdown is by canonical asset.
    let assets =
        env.ch("SELECT breakdown_assets FROM {db}.debits WHERE execution_id = 'exec-eco-1'");
    assert_eq!(
        assets.trim(),
        "['anthropic/claude-3-5-sonnet','google/gemini-1.5-flash','openai/gpt-4o-mini']"
    );

    // The daily dimension rollup equals the base table, per key and value.
    let rollup = env.ch(
        "SELECT dimension_key, dimension_value, sum(calls), toString(sum(cost)) FROM {db}.daily_dimension_spend GROUP BY dimension_key, dimension_value ORDER BY dimension_key, dimension_value",
    );
    let base = env.ch(
        "SELECT k, v, count(), toString(sum(cost)) FROM {db}.usage_transactions ARRAY JOIN dimension_keys AS k, dimension_values AS v GROUP BY k, v ORDER BY k, v",
    );
    assert_eq!(rollup, base);
    assert_eq!(rollup.lines().count(), 4, "{rollup}");

    // report --group-by dimension:project: the values, and the (none) row, add up.
    let out = env.cli(&[
        "report",
        "--group-by",
        "dimension:project",
        "--format",
        "json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let g = &r["groups"][0];
    assert_eq!(g["dimension"], "project");
    let values: Vec<(serde_json::Value, u64, String)> = g["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["value"].clone(),
                v["calls"].as_u64().unwrap(),
                v["cost"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        values,
        [
            (serde_json::json!("zeus"), 2, "0.01705".to_string()),
            (serde_json::json!("apollo"), 3, "0.00811".to_string()),
            (serde_json::Value::Null, 1, "0.000015".to_string()),
        ]
    );
    assert_eq!(g["cost"], "0.025175");
    let text = env.cli(&["report", "--group-by", "dimension:feature"]);
    assert!(
        text.contains("Spend by dimension feature") && text.contains("summarize"),
        "{text}"
    );

    // The execution API: the closed execution with its spend per dimension.
    let (status, body) = api_get(&env.cfg.http.listen, "/v1/executions/exec-eco-1");
    assert_eq!(status, 200, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b["status"], "closed");
    assert_eq!(b["debits"][0]["total"], "0.010602");
    // Spend per dimension value, then the markup line (docs/credits.md, How amounts add up).
    let by = |key: &str| -> Vec<serde_json::Value> {
        b["breakdown"]["by_dimension"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {b}"))
            .iter()
            .filter(|i| i["line"] == "dimension" && i["value"] != "")
            .map(|i| serde_json::json!({"value": i["value"], "calls": i["calls"], "cost": i["amount"]}))
            .collect()
    };
    assert_eq!(
        by("project"),
        vec![
            serde_json::json!({"value": "apollo", "calls": 2, "cost": "0.00777"}),
            serde_json::json!({"value": "zeus", "calls": 1, "cost": "0.00105"}),
        ]
    );
    assert_eq!(by("end_user")[0]["value"], "u1");
    assert!(by("feature").iter().any(|f| f["cost"] == "0.0075"), "{b}");
}
