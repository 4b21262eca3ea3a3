//! The service on a fresh environment with a seeded workload, and the API calls the console
//! tests make beside the browser.

use super::*;

pub(crate) const TOKEN: &str = "console-operator-token-5d1e";
pub(crate) const ACME: &str = "acct-acme";
pub(crate) const GLOBEX: &str = "acct-globex";
pub(crate) const DIRECT_CALLS: usize = 56;

/// GET with an optional bearer token (`common::http_call`): (status, JSON body or the text
/// as a JSON string).
pub(crate) fn api_get(addr: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let a = common::http_call(addr, "GET", path, token, None);
    let body = serde_json::from_str(&a.body).unwrap_or_else(|_| Value::String(a.body.clone()));
    (a.status, body)
}

/// POST a JSON body with the bearer token: (status, JSON body or null).
pub(crate) fn api_post(addr: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let a = common::http_call(addr, "POST", path, Some(token), Some(&body.to_string()));
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    )
}

/// An RFC 3339 time `minutes` before now, to the second.
pub(crate) fn ago(minutes: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A usage event as a platform runtime sends it.
pub(crate) fn call(
    id: &str,
    account: &str,
    exec: Option<&str>,
    at: &str,
    asset: &str,
    q: Value,
    dims: Value,
) -> String {
    let kind = if asset.starts_with("openai/") {
        "model_call"
    } else {
        "tool_call"
    };
    let mut e = json!({
        "type": kind, "event_id": id, "occurred_at": at, "account_id": account,
        "asset_id": asset, "quantities": q,
    });
    if let Some(x) = exec {
        e["execution_id"] = json!(x);
        e["agent_id"] = json!("support-bot");
    }
    if !dims.is_null() {
        e["dimensions"] = dims;
    }
    e.to_string()
}

pub(crate) fn finished(id: &str, account: &str, exec: &str, at: &str, calls: u32) -> String {
    json!({"type": "execution_finished", "event_id": id, "occurred_at": at, "account_id": account,
           "execution_id": exec, "agent_id": "support-bot", "expected_calls": calls})
    .to_string()
}

/// The service (`run --role all`) on a fresh environment, with a workload over the last three
/// days: executions of several assets (with `project` dimensions) and direct calls for acme,
/// two executions for globex, top-ups and an adjustment; returns once the ledger history of
/// both accounts is in ClickHouse.
pub(crate) struct Seeded {
    pub(crate) env: common::TestEnv,
    pub(crate) addr: String,
    pub(crate) acme_entries: usize,
    /// An API key of acme's (`keys create`).
    pub(crate) acme_key: String,
}

pub(crate) fn seed(name: &str) -> Seeded {
    let mut env = common::TestEnv::new(name);
    env.env.push(("USAGE_AGG_API_TOKEN".into(), TOKEN.into()));
    env.env
        .push(("USAGE_AGG__KAFKA__INSTANCE_ID".into(), env.name.clone()));
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("the service's http", Duration::from_secs(60), || {
        common::http_get(&addr, "/healthz").0 == 200
    });
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let send = |key: &str, payload: String| loader.send(&topic, key, payload.as_bytes()).unwrap();
    let day = 24 * 60;
    let execs = [
        (ACME, "exec-apollo-1", 3 * day - 30, "apollo"),
        (ACME, "exec-apollo-2", 2 * day - 10, "apollo"),
        (ACME, "exec-zeus-1", day - 5, "zeus"),
        (GLOBEX, "exec-globex-1", 2 * day, "hermes"),
        (GLOBEX, "exec-globex-2", 60, "hermes"),
    ];
    for (i, (acct, exec, at, project)) in execs.iter().enumerate() {
        let dims =
            json!({"project": project, "team": if i % 2 == 0 { "search" } else { "support" }});
        let t = |m: i64| ago(at - m);
        send(
            exec,
            call(
                &format!("{exec}-c1"),
                acct,
                Some(exec),
                &t(0),
                "openai/gpt-4o-mini",
                json!({"input_tokens": 1200 + i * 100, "output_tokens": 300}),
                dims.clone(),
            ),
        );
        send(
            exec,
            call(
                &format!("{exec}-c2"),
                acct,
                Some(exec),
                &t(1),
                "tavily/web-search",
                json!({"requests": 2}),
                dims.clone(),
            ),
        );
        send(
            exec,
            call(
                &format!("{exec}-c3"),
                acct,
                Some(exec),
                &t(2),
                "platform/database-query",
                json!({"queries": 3 + i}),
                dims.clone(),
            ),
        );
        send(
            exec,
            call(
                &format!("{exec}-c4"),
                acct,
                Some(exec),
                &t(3),
                "openai/gpt-4o",
                json!({"input_tokens": 5000, "output_tokens": 800 + i * 10}),
                dims.clone(),
            ),
        );
        send(exec, finished(&format!("{exec}-end"), acct, exec, &t(4), 4));
    }
    for i in 0..DIRECT_CALLS {
        let at = ago((3 * day - 60) - (i as i64) * 70);
        send(
            &format!("direct-{i}"),
            call(
                &format!("direct-{i}"),
                ACME,
                None,
                &at,
                "openai/gpt-4o-mini",
                json!({"input_tokens": 100 + i, "output_tokens": 20}),
                json!({"project": "apollo"}),
            ),
        );
    }
    loader.flush().unwrap();
    for (acct, amount, reference) in [(ACME, "100", "pay-acme-1"), (GLOBEX, "30", "pay-globex-1")] {
        let (status, body) = api_post(
            &addr,
            &format!("/v1/accounts/{acct}/topups"),
            TOKEN,
            &json!({"amount": amount, "reference": reference}),
        );
        // 201: the ledger's verdict `applied`; 202 only when it did not answer in time.
        assert!(
            status == 201 || status == 202,
            "top-up {acct}: {status} {body}"
        );
    }
    env.cli(&[
        "credits",
        "adjust",
        ACME,
        "-5.25",
        "--reason",
        "refund of a duplicate charge",
        "--reference",
        "adj-acme-1",
    ]);
    let acme_entries = 3 + DIRECT_CALLS + 2;
    for (acct, n) in [(ACME, acme_entries), (GLOBEX, 3)] {
        env.wait_for(
            &format!("{n} ledger entries of {acct}"),
            Duration::from_secs(120),
            || {
                let (s, v) = api_get(
                    &addr,
                    &format!("/v1/accounts/{acct}/transactions?limit=1000"),
                    Some(TOKEN),
                );
                s == 200 && v["transactions"].as_array().map_or(0, Vec::len) == n
            },
        );
    }
    let out = env.cli(&["keys", "create", ACME, "--description", "console test"]);
    let acme_key = out.lines().next().unwrap().trim().to_string();
    assert!(acme_key.starts_with("uak_"), "{out}");
    env.wait_for("the key to be known", Duration::from_secs(30), || {
        api_get(&addr, "/v1/whoami", Some(&acme_key)).0 == 200
    });
    Seeded {
        env,
        addr,
        acme_entries,
        acme_key,
    }
}

/// The ledger's own entries of an account (the `balances` topic), by seq.
pub(crate) fn ledger_entries(
    env: &common::TestEnv,
    account: &str,
) -> std::collections::BTreeMap<u64, usage_aggregator::ledger::core::BalanceEvent> {
    let mut out = std::collections::BTreeMap::new();
    for (_, msgs) in env.read_topic(&env.cfg.topics.balances) {
        for (_, _, payload) in msgs {
            let e: usage_aggregator::ledger::core::BalanceEvent =
                serde_json::from_slice(&payload).unwrap();
            if e.account_id == account {
                out.insert(e.seq, e);
            }
        }
    }
    out
}
