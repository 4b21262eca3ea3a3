//! The written contracts hold for what the service really emits: every message of the
//! output topics (`debits`, `priced_usage`, `balances`, `credit_alerts`, `alerts`) and every
//! HTTP API answer (2xx and errors) of a run on the real broker and ClickHouse validates
//! against its JSON Schema in `schema/`; and the README's worked example (LLM 0.5 + web
//! search 0.1 + database 0.2 = 0.8, markup 0.16, total 0.96) is billed so with the shipped
//! sample catalog (`config/catalog.json`), offline and through the pipeline.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    let s: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Panics naming the schema, the instance and every violation.
fn valid(name: &str, v: &Value) {
    let errors: Vec<String> = schema(name)
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {v}\n{}", errors.join("\n"));
}

/// The README's worked example (`examples/worked-example.jsonl`), events of the shipped
/// sample catalog's assets: `openai/gpt-4o` 100,000 input + 25,000 output tokens = 0.25 +
/// 0.25 = 0.5; web search: `tavily/web-search` 5 requests (0.04) and
/// `serpapi/google-search` 4 requests (0.06) = 0.1; `platform/database-query` 100 queries =
/// 0.2; then the finish. Account and execution renamed as asked.
fn worked_example(account: &str, execution: &str) -> Vec<String> {
    std::fs::read_to_string(root().join("examples/worked-example.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            l.replace("\"acct-readme\"", &format!("\"{account}\""))
                .replace("\"exec-readme\"", &format!("\"{execution}\""))
        })
        .collect()
}

fn components(debit: &Value) -> (rust_decimal::Decimal, rust_decimal::Decimal) {
    let mut models = rust_decimal::Decimal::ZERO;
    let mut tools = rust_decimal::Decimal::ZERO;
    for b in debit["breakdown"].as_array().unwrap() {
        let cost: rust_decimal::Decimal = b["cost"].as_str().unwrap().parse().unwrap();
        match b["asset_type"].as_str().unwrap() {
            "model" => models += cost,
            _ => tools += cost,
        }
    }
    (models.normalize(), tools.normalize())
}

#[test]
fn worked_example_with_the_shipped_catalog_offline() {
    let mut child = Command::new(TestEnv::bin())
        .args(["rate", "--catalog", "config/catalog.json", "--lines"])
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
        .write_all(
            worked_example("acct-readme", "exec-readme")
                .join("\n")
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let records: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let debits: Vec<&Value> = records.iter().filter_map(|r| r.get("debit")).collect();
    assert_eq!(debits.len(), 1, "{records:?}");
    let d = debits[0];
    assert_eq!(
        (&d["subtotal"], &d["markup"], &d["total"], &d["kind"]),
        (
            &Value::from("0.8"),
            &Value::from("0.16"),
            &Value::from("0.96"),
            &Value::from("agent_execution")
        ),
        "{d}"
    );
    assert_eq!(
        components(d),
        ("0.5".parse().unwrap(), "0.3".parse().unwrap())
    );
    valid("debit.v1.json", d);
    // The schema can fail: money as a JSON number, an unknown field, a kind not in the list.
    for (field, bad) in [
        ("total", serde_json::json!(0.96)),
        ("surprise", serde_json::json!("x")),
        ("kind", serde_json::json!("refund")),
    ] {
        let mut d = d.clone();
        d[field] = bad;
        assert!(!schema("debit.v1.json").is_valid(&d), "{field}: {d}");
    }
    let lines: Vec<&Value> = records.iter().filter_map(|r| r.get("line")).collect();
    assert_eq!(lines.len(), 4);
    let costs: Vec<&str> = lines.iter().map(|l| l["cost"].as_str().unwrap()).collect();
    for (cost, want) in costs.iter().zip(["0.5", "0.04", "0.06", "0.2"]) {
        assert_eq!(
            cost.parse::<rust_decimal::Decimal>().unwrap(),
            want.parse::<rust_decimal::Decimal>().unwrap(),
            "{costs:?}"
        );
    }
    for l in lines {
        valid("priced-line.v1.json", l);
    }
}

#[test]
fn every_output_message_and_api_answer_follows_its_schema() {
    let mut env = TestEnv::new("contracts");
    // Low thresholds so the run also emits spend alerts of both rules.
    env.cfg.alerts.execution_credits = Some("0.5".parse().unwrap());
    env.cfg.alerts.account_hourly_credits = Some("0.9".parse().unwrap());
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let a = format!("{}-a", env.name);
    let b = format!("{}-b", env.name);
    let key_out = env.cli(&["keys", "create", &a, "--format", "json"]);
    let key_a = serde_json::from_str::<Value>(&key_out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    env.spawn("all", "agg.log");
    let listen = env.cfg.http.listen.clone();
    let call = |method: &str, path: &str, cred: Option<&str>, body: Option<&str>| {
        http_call(&listen, method, path, cred, body)
    };
    env.wait_for("the API to be ready", Duration::from_secs(60), || {
        readyz(&listen).0 == 200
    });

    // A top-up (the first one recovers the 10-credit threshold: a credit alert), the worked
    // example as an execution, and a direct call.
    let r = call(
        "POST",
        &format!("/v1/accounts/{a}/topups"),
        Some(OPERATOR_TOKEN),
        Some(r#"{"amount":"25","reference":"pay-contracts-1"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["verdict"], "applied", "{}", r.body);
    valid("api/grant-answer.json", &r.json());
    let loader = env.loader();
    for e in worked_example(&a, "exec-readme") {
        // In a conversation too (the documented dimension), for the conversation answers.
        let e = e.replace(
            "\"quantities\"",
            "\"dimensions\":{\"conversation_id\":\"conv-readme\"},\"quantities\"",
        );
        loader
            .send(&env.cfg.topics.usage_events, "exec-readme", e.as_bytes())
            .unwrap();
    }
    let direct = format!(
        r#"{{"type":"model_call","event_id":"direct-1","occurred_at":"2026-03-01T10:00:05Z","account_id":"{b}","asset_id":"gpt-4o-mini","quantities":{{"input_tokens":1200,"output_tokens":300}}}}"#
    );
    loader
        .send(&env.cfg.topics.usage_events, &b, direct.as_bytes())
        .unwrap();
    loader.flush().unwrap();

    let exec_path = format!("/v1/executions/exec-readme?account_id={a}");
    env.wait_for(
        "the execution billed and in clickhouse",
        Duration::from_secs(90),
        || {
            let r = call("GET", &exec_path, Some(OPERATOR_TOKEN), None);
            r.status == 200 && r.json()["status"] == "closed"
        },
    );
    env.wait_for(
        "both debits on a's balance",
        Duration::from_secs(60),
        || {
            let r = call(
                "GET",
                &format!("/v1/accounts/{a}/balance"),
                Some(&key_a),
                None,
            );
            r.status == 200 && r.json()["entries"] == 2
        },
    );

    // Output topics: every message of each validates.
    let mut seen = std::collections::BTreeMap::new();
    for (topic, name) in [
        (&env.cfg.topics.debits, "debit.v1.json"),
        (&env.cfg.topics.priced_usage, "priced-line.v1.json"),
        (&env.cfg.topics.balances, "balance-entry.v1.json"),
        (&env.cfg.topics.credit_alerts, "credit-alert.v1.json"),
        (&env.cfg.topics.alerts, "spend-alert.v1.json"),
    ] {
        let mut n = 0;
        for (_, _, payload) in env.read_topic(topic).into_values().flatten() {
            let v: Value = serde_json::from_slice(&payload).unwrap();
            valid(name, &v);
            n += 1;
        }
        seen.insert(name, n);
    }
    eprintln!("validated output messages: {seen:?}");
    assert_eq!(seen["debit.v1.json"], 2, "{seen:?}");
    assert_eq!(seen["priced-line.v1.json"], 5, "{seen:?}");
    assert_eq!(seen["balance-entry.v1.json"], 3, "{seen:?}");
    assert!(seen["credit-alert.v1.json"] >= 1, "{seen:?}");
    assert!(seen["spend-alert.v1.json"] >= 2, "{seen:?}");
    // The worked example's debit, as the ledger applied it.
    let (debits, _) = env.debits_by_id();
    let readme: Vec<Value> = debits
        .values()
        .map(|v| serde_json::from_slice::<Value>(v).unwrap())
        .filter(|d| d["execution_id"] == "exec-readme")
        .collect();
    assert_eq!(
        (
            &readme[0]["subtotal"],
            &readme[0]["markup"],
            &readme[0]["total"]
        ),
        (
            &Value::from("0.8"),
            &Value::from("0.16"),
            &Value::from("0.96")
        )
    );

    // API answers, as an account key and as the operator.
    let ok = |path: &str, cred: &str, name: &str| {
        let r = call("GET", path, Some(cred), None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        valid(name, &v);
        v
    };
    ok("/v1/whoami", &key_a, "api/whoami.json");
    ok("/v1/whoami", OPERATOR_TOKEN, "api/whoami.json");
    let bal = ok(
        &format!("/v1/accounts/{a}/balance"),
        &key_a,
        "api/balance.json",
    );
    assert_eq!(bal["balance"], "24.04", "25 - 0.96: {bal}");
    let t = ok(
        &format!("/v1/accounts/{a}/transactions?limit=1"),
        &key_a,
        "api/transactions.json",
    );
    assert_eq!(t["transactions"][0]["debit"], "0.96", "{t}");
    ok(
        &format!("/v1/accounts/{a}/transactions"),
        OPERATOR_TOKEN,
        "api/transactions.json",
    );
    let x = ok(&exec_path, &key_a, "api/execution.json");
    assert_eq!(x["total"], "0.96", "{x}");
    let l = ok(
        &format!("/v1/accounts/{a}/executions"),
        &key_a,
        "api/executions.json",
    );
    assert_eq!(l["executions"][0]["total"], "0.96", "{l}");
    for group in ["asset", "day", "component", "dimension:conversation_id"] {
        let u = ok(
            &format!("/v1/accounts/{a}/usage?group_by={group}"),
            &key_a,
            "api/usage.json",
        );
        assert_eq!(u["total"], "0.96", "{u}");
    }
    let c = ok(
        &format!("/v1/accounts/{a}/conversations/conv-readme"),
        &key_a,
        "api/conversation.json",
    );
    assert_eq!(c["total"], "0.96", "{c}");
    // The stream's events: the history (4 calls, the debit), open, end.
    let mut events = Vec::new();
    let mut s = common::sse::SseStream::open(
        &listen,
        &format!("/v1/executions/exec-readme/events?account_id={a}"),
        None,
    )
    .expect("the stream");
    while let Some(e) = s.next(Duration::from_secs(30)) {
        valid(
            "api/stream-event.json",
            &serde_json::json!({"event": e.event, "data": e.data}),
        );
        let end = e.event == "end";
        events.push(e.event);
        if end {
            break;
        }
    }
    assert_eq!(
        events,
        ["call", "call", "call", "call", "debit", "open", "end"],
        "every event of the stream validated"
    );
    // The schema can fail: money as a number.
    let bad = serde_json::json!({"event": "end", "data": {"reason": "billed", "running": {"calls": 4, "subtotal": 0.8, "markup": "0.16", "total": "0.96", "billed": "0.96"}}});
    assert!(!schema("api/stream-event.json").is_valid(&bad));
    let (status, ready) = readyz(&listen);
    assert_eq!(status, 200);
    valid("api/readyz.json", &ready);
    // Recent alerts (the alerts view): the top-up's recovery and both spend rules.
    let alerts_path = format!("/v1/accounts/{a}/alerts");
    env.wait_for("a's alerts listed", Duration::from_secs(30), || {
        let r = call("GET", &alerts_path, Some(&key_a), None);
        if r.status != 200 {
            return false;
        }
        let kinds: Vec<Value> = r.json()["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|x| x["kind"].clone())
            .collect();
        ["low_balance", "execution_credits", "account_hourly_credits"]
            .iter()
            .all(|k| kinds.contains(&Value::from(*k)))
    });
    let al = ok(&alerts_path, &key_a, "api/alerts.json");
    let low = al["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "low_balance")
        .unwrap();
    assert_eq!(
        (&low["crossing"], &low["balance"]),
        (&Value::from("recovered"), &Value::from("25")),
        "{al}"
    );
    ok(&alerts_path, OPERATOR_TOKEN, "api/alerts.json");
    // Accounts below a threshold: b (a direct call, no top-up) below 10 and 0; a is not.
    let below = ok(
        "/v1/accounts/below-thresholds",
        OPERATOR_TOKEN,
        "api/accounts-below-thresholds.json",
    );
    let listed: Vec<&Value> = below["accounts"].as_array().unwrap().iter().collect();
    assert!(
        listed.iter().all(|x| x["account_id"] != a.as_str()),
        "{below}"
    );
    let b_row = listed
        .iter()
        .find(|x| x["account_id"] == b.as_str())
        .unwrap();
    assert_eq!(b_row["below"][0]["threshold"], "10", "{below}");
    // A refused redemption (422) is the voucher stage's answer with the error field.
    let r = call(
        "POST",
        &format!("/v1/accounts/{a}/redemptions"),
        Some(&key_a),
        Some(r#"{"code":"NO-SUCH-CODE-1"}"#),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    valid("api/redemption.json", &r.json());
    valid("api/error.json", &r.json());

    // Errors: each status the API gives, each in the one error shape.
    let other = format!("/v1/accounts/{b}/balance");
    for (method, path, cred, body, status) in [
        ("GET", other.as_str(), None, None, 401),
        ("GET", other.as_str(), Some("wrong-credential"), None, 401),
        ("GET", other.as_str(), Some(key_a.as_str()), None, 404),
        (
            "POST",
            &format!("/v1/accounts/{a}/topups") as &str,
            Some(key_a.as_str()),
            Some(r#"{"amount":"25","reference":"x"}"#),
            403,
        ),
        (
            "GET",
            &format!("/v1/accounts/{a}/transactions?limit=abc") as &str,
            Some(OPERATOR_TOKEN),
            None,
            400,
        ),
        (
            "POST",
            &format!("/v1/accounts/{a}/topups") as &str,
            Some(OPERATOR_TOKEN),
            Some(r#"{"amount":"1","reference":"too-small"}"#),
            422,
        ),
        (
            "GET",
            &format!("/v1/accounts/{b}/alerts") as &str,
            Some(key_a.as_str()),
            None,
            404,
        ),
        (
            "GET",
            &format!("/v1/accounts/{a}/alerts?limt=1") as &str,
            Some(key_a.as_str()),
            None,
            400,
        ),
        (
            "GET",
            "/v1/accounts/below-thresholds",
            Some(key_a.as_str()),
            None,
            403,
        ),
        ("GET", "/v1/nowhere", Some(OPERATOR_TOKEN), None, 404),
        ("DELETE", "/v1/whoami", Some(OPERATOR_TOKEN), None, 405),
    ] {
        let r = call(method, path, cred, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        valid("api/error.json", &r.json());
    }
}
