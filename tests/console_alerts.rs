//! Accounts below their thresholds (Operator page) and an account's recent alerts (Credits
//! page) in headless Chromium against the real service and broker, **with ClickHouse down
//! from the start** (a port nothing listens on): both come from the service's memory, fed by
//! Kafka, so they answer; the dead letters (ClickHouse only) say so on the page.
//!
//! - `GET /v1/accounts/below-thresholds` equals the ledger's own answer for each account
//!   (`GET /v1/accounts/{id}/thresholds`: a threshold marked `below`), also after thresholds
//!   changed while the service runs (no alert then: only the changelog says it); operator
//!   token only (none 401, an account key 403), strict query (400 naming `limt`).
//! - `GET /v1/accounts/{id}/alerts` equals the alerts topics (`credit_alerts`, `alerts`) for
//!   the account, newest first: ids, kind, threshold, balance, amount; an account key sees its
//!   own, another account's id is a 404, also for the operator-only kinds; strict query.
//! - The pages show the same, digit for digit; an account key editing the URL to another
//!   account's Credits page sees *Not found* and none of that account's alerts; the Operator
//!   page needs the operator token; with it, the dead-letter section says ClickHouse cannot
//!   answer while the other sections work.
//! - `GET /v1/vouchers` from the voucher list in memory: a voucher is listed right after it
//!   was created, pages, the oldest first; the page shows them.

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use browser::{Browser, DESKTOP, PHONE};
use common::{OPERATOR_TOKEN as TOKEN, http_call};
use serde_json::{Value, json};

const A: &str = "acct-al-a";
const B: &str = "acct-al-b";
const C: &str = "acct-al-c";

fn get(addr: &str, path: &str, cred: Option<&str>) -> (u16, Value) {
    let a = http_call(addr, "GET", path, cred, None);
    let v = serde_json::from_str(&a.body).unwrap_or(Value::String(a.body.clone()));
    (a.status, v)
}

/// Sends `body` (idempotent: the same reference is applied once), again while the service
/// gives no answer (it may still be starting its ledger followers).
fn send(addr: &str, method: &str, path: &str, body: Value) {
    let mut a = http_call(addr, method, path, Some(TOKEN), Some(&body.to_string()));
    for _ in 0..5 {
        if a.status != 0 {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        a = http_call(addr, method, path, Some(TOKEN), Some(&body.to_string()));
    }
    assert!(
        (200..300).contains(&a.status),
        "{method} {path}: {} {}",
        a.status,
        a.body
    );
}

/// The accounts the ledger itself says are below a threshold: account -> rules below.
fn ledger_below(addr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for acct in [A, B, C] {
        let (s, v) = get(
            addr,
            &format!("/v1/accounts/{acct}/thresholds"),
            Some(TOKEN),
        );
        assert_eq!(s, 200, "{v}");
        let below: Vec<String> = v["account"]["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["below"] == true)
            .map(|t| t["rule"].as_str().unwrap().to_string())
            .collect();
        if !below.is_empty() {
            out.push((acct.to_string(), below));
        }
    }
    out
}

/// The list's accounts of this test: account -> thresholds below, as listed.
fn listed_below(addr: &str) -> Vec<(String, Vec<String>)> {
    let (s, v) = get(addr, "/v1/accounts/below-thresholds", Some(TOKEN));
    assert_eq!(s, 200, "{v}");
    let mut out: Vec<(String, Vec<String>)> = v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let rules = x["below"].as_array().unwrap().iter();
            (
                x["account_id"].as_str().unwrap().to_string(),
                rules
                    .map(|b| b["threshold"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The account's alerts on the two topics, newest first: (id, kind, threshold, balance,
/// amount), as the API writes them (decimal strings, null when absent).
fn topic_alerts(env: &common::TestEnv, account: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for topic in [&env.cfg.topics.credit_alerts, &env.cfg.topics.alerts] {
        for (_, _, payload) in env.read_topic(topic).into_values().flatten() {
            let v: Value = serde_json::from_slice(&payload).unwrap();
            if v["account_id"] != account {
                continue;
            }
            let kind = v["alert"]
                .as_str()
                .or(v["rule"].as_str())
                .unwrap()
                .to_string();
            out.insert((v["alert_id"].as_str().unwrap().to_string(), kind));
        }
    }
    out
}

fn seed(env: &mut common::TestEnv) -> (String, String) {
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let addr = env.cfg.http.listen.clone();
    env.spawn_with(
        "all",
        "all.log",
        &addr,
        &[("USAGE_AGG__CLICKHOUSE__URL", dead.as_str())],
    );
    env.wait_for("the service's http", Duration::from_secs(60), || {
        get(&addr, "/v1/whoami", Some(TOKEN)).0 == 200
    });
    // A: top-up 30 (recovers 10 and 0), an execution of 0.96 (a spend alert), then -25:
    // 4.04, below 10. B: top-up 20 (recovers both). C: top-up 100.
    for (acct, amount) in [(A, "30"), (B, "20"), (C, "100")] {
        send(
            &addr,
            "POST",
            &format!("/v1/accounts/{acct}/topups"),
            json!({"amount": amount, "reference": format!("pay-{acct}")}),
        );
    }
    let loader = env.loader();
    let example = std::fs::read_to_string(common::root().join("examples/worked-example.jsonl"))
        .unwrap()
        .replace("\"acct-readme\"", &format!("\"{A}\""))
        .replace("\"exec-readme\"", "\"exec-al\"");
    for e in example.lines() {
        loader
            .send(&env.cfg.topics.usage_events, A, e.as_bytes())
            .unwrap();
    }
    loader.flush().unwrap();
    env.wait_for("the execution's debit", Duration::from_secs(60), || {
        get(&addr, &format!("/v1/accounts/{A}/balance"), Some(TOKEN)).1["balance"] == "29.04"
    });
    send(
        &addr,
        "POST",
        &format!("/v1/accounts/{A}/adjustments"),
        json!({"amount": "-25", "reason": "test", "reference": "adj-al-1"}),
    );
    let out = env.cli(&["keys", "create", A, "--description", "alerts test"]);
    let key = out.lines().next().unwrap().trim().to_string();
    env.wait_for(
        "A at 4.04 and its key known",
        Duration::from_secs(60),
        || get(&addr, &format!("/v1/accounts/{A}/balance"), Some(&key)).1["balance"] == "4.04",
    );
    (addr, key)
}

fn check_api(env: &common::TestEnv, addr: &str, key: &str) {
    // Vouchers from the list in memory: each one listed as soon as it is created (the list
    // waits for what was committed before the request), paged, with ClickHouse down.
    for (i, credits) in ["5", "6.5", "7"].iter().enumerate() {
        send(
            addr,
            "POST",
            "/v1/vouchers",
            json!({"credits": credits, "description": format!("al-{i}")}),
        );
        let (s, v) = get(addr, "/v1/vouchers", Some(TOKEN));
        assert_eq!((s, &v["total"]), (200, &json!(i + 1)), "{v}");
    }
    let (_, p1) = get(addr, "/v1/vouchers?limit=2", Some(TOKEN));
    let (_, p2) = get(addr, "/v1/vouchers?limit=2&offset=2", Some(TOKEN));
    assert_eq!(
        (p1["next_offset"].clone(), p2["next_offset"].clone()),
        (json!(2), Value::Null)
    );
    let descs: Vec<&str> = p1["vouchers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["vouchers"].as_array().unwrap())
        .map(|v| v["description"].as_str().unwrap())
        .collect();
    assert_eq!(descs, ["al-0", "al-1", "al-2"], "oldest first");
    // Below thresholds: only A (4.04 < 10), as the ledger says.
    env.wait_for("A listed below 10", Duration::from_secs(20), || {
        listed_below(addr).iter().any(|(a, _)| a == A)
    });
    let mine = |l: Vec<(String, Vec<String>)>| -> Vec<(String, Vec<String>)> {
        l.into_iter()
            .filter(|(a, _)| a.starts_with("acct-al-"))
            .collect()
    };
    assert_eq!(mine(listed_below(addr)), ledger_below(addr));
    assert_eq!(
        mine(listed_below(addr)),
        [(A.to_string(), vec!["10".to_string()])]
    );
    // B sets its own threshold of 50 (balance 20): below it, with no alert; only the
    // ledger's changelog says so, and the list follows it while running.
    send(
        addr,
        "PUT",
        &format!("/v1/accounts/{B}/thresholds"),
        json!({"thresholds": ["50", "0"]}),
    );
    env.wait_for("B listed below 50", Duration::from_secs(20), || {
        listed_below(addr).iter().any(|(a, _)| a == B)
    });
    assert_eq!(mine(listed_below(addr)), ledger_below(addr));
    let (_, v) = get(addr, "/v1/accounts/below-thresholds?limit=1", Some(TOKEN));
    assert_eq!(v["accounts"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        v["accounts"][0]["account_id"], A,
        "the lowest balance first: {v}"
    );
    assert_eq!(
        v["accounts"][0]["below"],
        json!([{"threshold": "10", "value": "10"}])
    );
    assert_eq!(v["next_offset"], 1, "{v}");
    // Operator only, strict query.
    assert_eq!(get(addr, "/v1/accounts/below-thresholds", None).0, 401);
    assert_eq!(get(addr, "/v1/accounts/below-thresholds", Some(key)).0, 403);
    let (s, v) = get(addr, "/v1/accounts/below-thresholds?limt=1", Some(TOKEN));
    assert_eq!((s, &v["parameter"]), (400, &json!("limt")), "{v}");

    // Alerts: A's equal the topics' (ids and kinds), newest first.
    let want = topic_alerts(env, A);
    let kinds: BTreeSet<&str> = want.iter().map(|(_, k)| k.as_str()).collect();
    assert!(
        kinds.contains("low_balance") && kinds.contains("execution_credits"),
        "{want:?}"
    );
    env.wait_for("A's alerts listed", Duration::from_secs(20), || {
        let (s, v) = get(addr, &format!("/v1/accounts/{A}/alerts"), Some(key));
        s == 200 && v["alerts"].as_array().unwrap().len() == want.len()
    });
    let (_, v) = get(addr, &format!("/v1/accounts/{A}/alerts"), Some(key));
    let rows = v["alerts"].as_array().unwrap();
    let got: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["alert_id"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let times: Vec<&str> = rows.iter().map(|r| r["at"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    // The newest: the adjustment took A below 10, at 4.04.
    assert_eq!(
        (
            &rows[0]["kind"],
            &rows[0]["crossing"],
            &rows[0]["threshold"],
            &rows[0]["balance"]
        ),
        (
            &json!("low_balance"),
            &json!("below"),
            &json!("10"),
            &json!("4.04")
        ),
        "{v}"
    );
    let spend = rows
        .iter()
        .find(|r| r["kind"] == "execution_credits")
        .unwrap();
    assert_eq!(
        (&spend["amount"], &spend["execution_id"]),
        (&json!("0.96"), &json!("exec-al"))
    );
    let (_, only) = get(
        addr,
        &format!("/v1/accounts/{A}/alerts?kind=execution_credits&limit=5"),
        Some(key),
    );
    assert!(
        only["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["kind"] == "execution_credits")
    );
    // Another account's alerts: the 404 of an unknown account, for an account key.
    let (s, v) = get(addr, &format!("/v1/accounts/{B}/alerts"), Some(key));
    assert_eq!(s, 404, "{v}");
    assert!(!v.to_string().contains("alert_id"), "{v}");
    let (s, v) = get(addr, &format!("/v1/accounts/{B}/alerts"), Some(TOKEN));
    assert_eq!(s, 200, "{v}");
    assert_eq!(get(addr, &format!("/v1/accounts/{A}/alerts"), None).0, 401);
    for (q, name) in [
        ("limt=1", "limt"),
        ("limit=0", "limit"),
        ("limit=51", "limit"),
        ("kind=nope", "kind"),
        ("limit=1&limit=2", "limit"),
    ] {
        let (s, v) = get(addr, &format!("/v1/accounts/{A}/alerts?{q}"), Some(key));
        assert_eq!((s, &v["parameter"]), (400, &json!(name)), "{q}: {v}");
    }
}

/// The Credits page's alert rows: (id, time, kind, threshold, balance) as shown.
async fn shown_alerts(b: &Browser) -> Vec<Vec<String>> {
    let v = b
        .js(
            "return Array.from(document.querySelectorAll('#alerts tbody tr'), tr => [tr.dataset.alertId, tr.dataset.kind, ...Array.from(tr.children, c => c.textContent.trim())])",
            vec![],
        )
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_thresholds_and_recent_alerts_without_clickhouse() {
    let mut env = common::TestEnv::new("console-al");
    env.cfg.alerts.execution_credits = Some("0.5".parse().unwrap());
    env.write_config();
    env.setup();
    let (addr, key) = tokio::task::block_in_place(|| seed(&mut env));
    tokio::task::block_in_place(|| check_api(&env, &addr, &key));

    // Credits page with A's key: the alerts equal the API's, cell for cell.
    let b = Browser::start().await;
    let base = format!("http://{addr}/console/");
    b.goto(&base).await;
    b.sign_in(&key, None).await;
    b.ready("transactions", 0).await;
    b.open(&format!("{base}#/credits?account={A}"), "credits")
        .await;
    b.wait(
        "the alerts table",
        "document.querySelectorAll('#alerts tbody tr').length > 0",
        Duration::from_secs(20),
    )
    .await;
    let (_, api) = tokio::task::block_in_place(|| {
        get(
            &addr,
            &format!("/v1/accounts/{A}/alerts?limit=20"),
            Some(&key),
        )
    });
    let shown = shown_alerts(&b).await;
    let rows = api["alerts"].as_array().unwrap();
    assert_eq!(shown.len(), rows.len(), "{shown:?}");
    for (s, a) in shown.iter().zip(rows) {
        assert_eq!(s[0], a["alert_id"].as_str().unwrap());
        assert_eq!(s[1], a["kind"].as_str().unwrap());
        let at = a["at"].as_str().unwrap();
        assert_eq!(s[2], format!("{} {}", &at[..10], &at[11..19]), "{s:?}");
        let dash = |v: &Value| v.as_str().unwrap_or("—").to_string();
        assert!(s[4].starts_with(&dash(&a["threshold"])), "{s:?} {a}");
        assert_eq!(s[5], dash(&a["balance"]), "{s:?}");
        if let Some(amount) = a["amount"].as_str() {
            assert!(
                s[6].starts_with(&format!("{amount} credits spent")),
                "{s:?}"
            );
        }
    }
    assert_eq!(shown[0][3], "Balance below a threshold");
    let shots = [
        b.shot("credits-alerts", DESKTOP).await,
        b.shot("credits-alerts", PHONE).await,
    ];
    b.size(DESKTOP).await;

    // The URL edited to B's Credits page: Not found, and none of B's alerts.
    let b_ids: Vec<String> = tokio::task::block_in_place(|| topic_alerts(&env, B))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(!b_ids.is_empty(), "B has alerts of its own (its top-up)");
    b.open(&format!("{base}#/credits?account={B}"), "credits")
        .await;
    let err = b
        .wait(
            "Not found for B's alerts",
            "(document.querySelector('#alerts-list [role=alert]') || {}).textContent",
            Duration::from_secs(30),
        )
        .await;
    assert!(err.as_str().unwrap().starts_with("Not found"), "{err}");
    let html = b.js("return document.body.innerHTML", vec![]).await;
    for id in &b_ids {
        assert!(
            !html.as_str().unwrap().contains(id.as_str()),
            "{id} shown to A's key"
        );
    }
    // The Operator page needs the operator token.
    b.open(&format!("{base}#/operator"), "operator").await;
    let msg = b
        .js(
            "return Array.from(document.querySelectorAll('main [role=alert]'), e => e.textContent).join(' ')",
            vec![],
        )
        .await;
    let msg = msg.as_str().unwrap();
    assert!(msg.contains("operator token"), "{msg}");
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#below-thresholds').length",
            vec![]
        )
        .await,
        json!(0)
    );

    // As the operator: the accounts below a threshold as the API lists them; dead letters
    // say ClickHouse cannot answer; the other sections still work.
    b.click("#sign-out").await;
    b.sign_in(TOKEN, None).await;
    b.ready("operator", 0).await;
    b.wait(
        "the operator sections",
        "document.querySelector('#below-thresholds tbody tr') && document.querySelector('#dead-letters-unavailable') && document.querySelector('#low-balances tbody tr') && document.querySelectorAll('#vouchers tbody tr').length === 3",
        Duration::from_secs(30),
    )
    .await;
    let (_, api) =
        tokio::task::block_in_place(|| get(&addr, "/v1/accounts/below-thresholds", Some(TOKEN)));
    let shown: Vec<Vec<String>> = serde_json::from_value(
        b.js("return Array.from(document.querySelectorAll('#below-thresholds tbody tr'), tr => Array.from(tr.children, c => c.textContent.trim()))", vec![])
            .await,
    )
    .unwrap();
    let rows = api["accounts"].as_array().unwrap();
    assert_eq!(shown.len(), rows.len().min(20));
    assert_eq!(
        b.text("#below-total").await.split(' ').next().unwrap(),
        api["total"].to_string()
    );
    for (s, a) in shown.iter().zip(rows) {
        assert_eq!(s[0], a["account_id"].as_str().unwrap());
        assert_eq!(s[1], a["balance"].as_str().unwrap());
        let below: Vec<String> = a["below"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                let (t, v) = (
                    x["threshold"].as_str().unwrap(),
                    x["value"].as_str().unwrap(),
                );
                if t == v {
                    v.to_string()
                } else {
                    format!("{t} ({v})")
                }
            })
            .collect();
        assert_eq!(s[2], below.join(", "));
        assert_eq!(s[3], a["entries"].to_string());
    }
    let down = b.text("#dead-letters-unavailable").await;
    assert!(
        down.contains("Dead letters cannot be listed right now") && down.contains("clickhouse"),
        "{down}"
    );
    let shots2 = [
        b.shot("operator-clickhouse-down", DESKTOP).await,
        b.shot("operator-clickhouse-down", PHONE).await,
    ];
    b.close().await;
    for p in shots.iter().chain(&shots2) {
        eprintln!("screenshot: {}", p.display());
    }
}
