//! Tiers and plans through the live pipeline (real Kafka): accounts on three plans with an
//! assignment change mid-window (published with `plans publish` and `accounts assign-plan`),
//! a tiered model imported from LiteLLM, calls on both sides of the 200 000-token boundary;
//! every debit on the topic equals `rate --plans` over the same events, byte for byte.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use usage_aggregator::debit::{Debit, PricedLine};

const START: &str = "2026-07-02T00:00:00Z";
/// The instant acct-3 moves from team to enterprise-acme: inside the workload's event times
/// (one millisecond per event from START).
const SWITCH: &str = "2026-07-02T00:00:01.500Z";

const PLANS: &str = r#"{
  "plans": [
    {"plan_id": "team", "effective_from": "2026-01-01T00:00:00Z", "description": "Team plan",
     "rules": [{"applies_to": {"asset_type": "tool"}, "discount_percent": "10"}]},
    {"plan_id": "enterprise-acme", "effective_from": "2026-01-01T00:00:00Z", "markup_rate": "0.15",
     "rules": [
       {"applies_to": {"vendor": "anthropic"}, "discount_percent": "15"},
       {"applies_to": {"asset_id_prefix": "openai/"}, "discount_percent": "7.5"},
       {"applies_to": {"asset_id": "tavily/web-search"}, "unit_prices": {"requests": {"credits": "0.005", "per": 1}}}
     ]},
    {"plan_id": "partner", "effective_from": "2026-01-01T00:00:00Z", "markup_rate": "0.3",
     "rules": [{"applies_to": {"asset_id": "platform/database-query"}, "unit_prices": {"queries": {"credits": "0.001", "per": 1}}}]}
  ],
  "assignments": [
    {"account_id": "acct-0", "plan_id": "team", "effective_from": "2026-01-01T00:00:00Z"},
    {"account_id": "acct-1", "plan_id": "enterprise-acme", "effective_from": "2026-01-01T00:00:00Z"},
    {"account_id": "acct-2", "plan_id": "partner", "effective_from": "2026-01-01T00:00:00Z"},
    {"account_id": "acct-3", "plan_id": "team", "effective_from": "2026-01-01T00:00:00Z"}
  ]
}"#;

/// The sample catalog plus the tiered Claude Sonnet 4 version imported from the LiteLLM
/// fixture (effective 2026-01-01); returns the file.
fn catalog_with_litellm_tiers(env: &TestEnv) -> std::path::PathBuf {
    let imported = env.dir.path().join("imported.json");
    let out = Command::new(TestEnv::bin())
        .args([
            "catalog",
            "import",
            "--format",
            "litellm",
            "tests/fixtures/litellm/model_prices_and_context_window.json",
            "--provider",
            "anthropic",
            "--effective-from",
            "2026-01-01T00:00:00Z",
            "--output",
        ])
        .arg(&imported)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(root().join("config/catalog.json")).unwrap())
            .unwrap();
    let tiered: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&imported).unwrap()).unwrap();
    all.extend(
        tiered
            .into_iter()
            .filter(|v| v["asset_id"] == "anthropic/claude-sonnet-4-20250514"),
    );
    let file = env.dir.path().join("catalog.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&all).unwrap()).unwrap();
    file
}

fn rate(env: &TestEnv, catalog: &std::path::Path, plans: &std::path::Path, input: &[u8]) -> String {
    // From a file: a pipe written while `rate` fills its stdout pipe deadlocks.
    let events = env.dir.path().join("rate-input.jsonl");
    std::fs::write(&events, input).unwrap();
    let child = Command::new(TestEnv::bin())
        .args(["rate", "--lines", "--catalog"])
        .arg(catalog)
        .arg("--plans")
        .arg(plans)
        .current_dir(root())
        .stdin(std::fs::File::open(&events).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn boundary_call(id: &str, account: &str, input_tokens: u64) -> String {
    format!(
        r#"{{"type":"model_call","event_id":"{id}","occurred_at":"2026-07-02T00:00:03Z","account_id":"{account}","asset_id":"claude-sonnet-4-20250514","quantities":{{"input_tokens":{input_tokens},"output_tokens":1000}}}}"#
    )
}

#[test]
fn every_debit_equals_rate_with_the_same_plans_file() {
    let mut env = TestEnv::new("plans_live");
    env.cfg.pricing.catalog_file = catalog_with_litellm_tiers(&env);
    env.write_config();
    env.setup();
    let plans = env.dir.path().join("plans.json");
    std::fs::write(&plans, PLANS).unwrap();
    let c = env.config_path.to_str().unwrap().to_string();
    let out = env.cli(&["plans", "check", plans.to_str().unwrap()]);
    assert!(out.contains("3 plan versions, 4 assignments ok"), "{out}");
    let out = env.cli(&["plans", "publish", plans.to_str().unwrap()]);
    assert!(out.contains("published 7 plans records"), "{out}");
    // The mid-window change, as an operator makes it: in the past, so said explicitly.
    let assign = [
        "--config",
        &c,
        "accounts",
        "assign-plan",
        "--account",
        "acct-3",
        "--plan",
        "enterprise-acme",
        "--effective-from",
        SWITCH,
    ];
    let o = Command::new(TestEnv::bin())
        .args(assign)
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--allow-retroactive"),
        "{err}"
    );
    let out = env.cli(&[&assign[2..], &["--allow-retroactive"]].concat());
    assert!(
        out.contains("assigned acct-3 to plan enterprise-acme"),
        "{out}"
    );
    let out = env.cli(&[
        "plans",
        "list",
        "--account",
        "acct-3",
        "--at",
        "2026-07-02T00:00:02Z",
    ]);
    assert!(out.contains("on plan enterprise-acme"), "{out}");
    // The same records as a file, for `rate`.
    let mut file: serde_json::Value = serde_json::from_str(PLANS).unwrap();
    file["assignments"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"account_id": "acct-3", "plan_id": "enterprise-acme", "effective_from": SWITCH}));
    std::fs::write(&plans, serde_json::to_vec(&file).unwrap()).unwrap();

    env.spawn("pipeline", "agg.log");
    let mut events: Vec<(String, Vec<u8>)> = workload_for(&env, 250, 250, 28, 6, START)
        .into_iter()
        .map(|g| (g.key, g.payload))
        .collect();
    for (id, account, tokens) in [
        ("b-at-1", "acct-1", 200_000),
        ("b-above-1", "acct-1", 200_001),
        ("b-at-5", "acct-5", 200_000),
        ("b-above-5", "acct-5", 200_001),
    ] {
        events.push((
            account.into(),
            boundary_call(id, account, tokens).into_bytes(),
        ));
    }
    let loader = env.loader();
    for (key, payload) in &events {
        loader
            .send(&env.cfg.topics.usage_events, key, payload)
            .unwrap();
    }
    loader.flush().unwrap();
    let input: Vec<u8> = events
        .iter()
        .flat_map(|(_, p)| p.iter().copied().chain([b'\n']))
        .collect();
    let offline = rate(&env, &env.cfg.pricing.catalog_file, &plans, &input);
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut lines: BTreeMap<String, PricedLine> = BTreeMap::new();
    for l in offline.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let Some(d) = v.get("debit") {
            let d: Debit = serde_json::from_value(d.clone()).unwrap();
            expected.insert(d.debit_id.clone(), d.encode());
        } else if let Some(x) = v.get("line") {
            let x: PricedLine = serde_json::from_value(x.clone()).unwrap();
            lines.insert(x.event_id.clone(), x);
        }
    }
    env.wait_for("every debit of rate", Duration::from_secs(120), || {
        env.debits_by_id().0.len() >= expected.len()
    });
    let (live, _) = env.debits_by_id();
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (id, bytes) in &live {
        assert_eq!(
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&expected[id]),
            "debit {id}"
        );
    }
    // The plans did apply: each plan prices debits, at its markup, acct-3 on both sides.
    let debits: Vec<Debit> = live
        .values()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let plan_of = |account: &str| -> std::collections::BTreeSet<(String, String)> {
        debits
            .iter()
            .filter(|d| d.account_id == account && d.execution_id.is_some())
            .map(|d| (d.plan.clone(), d.markup_rate.to_string()))
            .collect()
    };
    assert_eq!(plan_of("acct-0"), [("team".into(), "0.2".into())].into());
    assert_eq!(
        plan_of("acct-1"),
        [("enterprise-acme".into(), "0.15".into())].into()
    );
    assert_eq!(plan_of("acct-2"), [("partner".into(), "0.3".into())].into());
    assert_eq!(
        plan_of("acct-3"),
        [
            ("enterprise-acme".into(), "0.15".into()),
            ("team".into(), "0.2".into())
        ]
        .into()
    );
    assert_eq!(plan_of("acct-4"), [("default".into(), "0.2".into())].into());
    // The boundary: the tier prices every unit, the plan's discount on top.
    let cost = |id: &str| (lines[id].cost.to_string(), lines[id].tier.clone().unwrap());
    // 200000 * 3 + 1000 * 15, per million; then 15 % off for acct-1
    assert_eq!(cost("b-at-5"), ("0.615".into(), "default".into()));
    assert_eq!(cost("b-at-1"), ("0.52275".into(), "default".into()));
    // 200001 * 6 + 1000 * 22.5, per million
    assert_eq!(
        cost("b-above-5"),
        ("1.222506".into(), "above_200k_tokens".into())
    );
    assert_eq!(
        cost("b-above-1"),
        ("1.0391301".into(), "above_200k_tokens".into())
    );
    // The live priced lines record the same tier and plan.
    let topic = env.read_topic(&env.cfg.topics.priced_usage);
    let live_lines: BTreeMap<String, PricedLine> = topic
        .values()
        .flatten()
        .map(|(_, _, p)| serde_json::from_slice::<PricedLine>(p).unwrap())
        .filter(|l| l.event_id.starts_with("b-"))
        .map(|l| (l.event_id.clone(), l))
        .collect();
    // (Where the event sat differs: `rate` reads one stream, the pipeline four partitions.)
    let placeless = |l: &PricedLine| PricedLine {
        event_partition: 0,
        event_offset: 0,
        ..l.clone()
    };
    for id in ["b-at-1", "b-above-1", "b-at-5", "b-above-5"] {
        assert_eq!(placeless(&live_lines[id]), placeless(&lines[id]), "{id}");
    }
    assert_eq!(
        live_lines["b-above-1"].plan_rule.as_deref(),
        Some("vendor:anthropic")
    );
}
