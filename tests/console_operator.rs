//! The operator's endpoints and page against the real service, broker and ClickHouse:
//! `GET /v1/accounts` (balances and last activity equal the ledger's), `GET /v1/dead-letters`
//! and `/v1/dead-letters/reasons` (equal to the dead-letter topic: reason, partition, offset),
//! `GET /v1/vouchers` (with state); each needs the operator token (none: 401, an account's
//! key: 403), has a strict query string (an unknown parameter is a 400 naming it) and pages.
//! Then the console's Operator page in headless Chromium shows the same figures.

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use browser::{Browser, DESKTOP, PHONE};
use common::{OPERATOR_TOKEN as TOKEN, http_call};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn get(addr: &str, path: &str, cred: Option<&str>) -> (u16, Value) {
    let a = http_call(addr, "GET", path, cred, None);
    let v = serde_json::from_str(&a.body).unwrap_or(Value::String(a.body.clone()));
    (a.status, v)
}

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let a = http_call(addr, "POST", path, Some(TOKEN), Some(&body.to_string()));
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    )
}

fn d(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

/// Every page of a listing: `path` with `limit` and the page's `offset`/`cursor`.
fn all_pages(addr: &str, path: &str, key: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    let mut at: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut p = format!("{path}{sep}limit={limit}");
        if let Some(a) = &at {
            p.push_str(a);
        }
        let (s, v) = get(addr, &p, Some(TOKEN));
        assert_eq!(s, 200, "{p}: {v}");
        let items = v[key].as_array().unwrap().clone();
        assert!(
            items.len() <= limit as usize,
            "{p}: a page larger than limit"
        );
        pages += 1;
        out.extend(items);
        at = match (&v["next_offset"], &v["next_cursor"]) {
            (Value::Number(n), _) => Some(format!("&offset={n}")),
            (_, Value::String(c)) => Some(format!("&cursor={c}")),
            _ => break,
        };
        assert!(pages < 100, "{path}: paging does not end");
    }
    (out, pages)
}

fn seed(env: &mut common::TestEnv) -> (String, String) {
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("the service's http", Duration::from_secs(60), || {
        common::http_get(&addr, "/healthz").0 == 200
    });
    for (acct, amount) in [
        ("acct-op-a", "50"),
        ("acct-op-b", "12.50"),
        ("acct-op-c", "100.000001"),
        ("acct-op-d", "10"),
        ("acct-op-e", "75.25"),
    ] {
        let (s, v) = post(
            &addr,
            &format!("/v1/accounts/{acct}/topups"),
            &json!({"amount": amount, "reference": format!("pay-{acct}")}),
        );
        assert!(s == 201 || s == 202, "top-up {acct}: {s} {v}");
    }
    // Three events the pipeline dead-letters: two of an unknown asset, one that is not JSON.
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    for i in 0..2 {
        let e = json!({"type": "tool_call", "event_id": format!("bad-asset-{i}"),
            "occurred_at": chrono::Utc::now().to_rfc3339(), "account_id": "acct-op-a",
            "asset_id": "nobody/unknown-tool", "quantities": {"requests": 1}});
        loader
            .send(&topic, "acct-op-a", e.to_string().as_bytes())
            .unwrap();
    }
    loader.send(&topic, "acct-op-b", b"{not json").unwrap();
    loader.flush().unwrap();
    // Vouchers: one active, one revoked, one not valid yet.
    let (s, v) = post(
        &addr,
        "/v1/vouchers",
        &json!({"credits": "15", "description": "spring", "max_redemptions": 3}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&addr, "/v1/vouchers", &json!({"credits": "2.50"}));
    assert_eq!(s, 200, "{v}");
    let (s, list) = get(&addr, "/v1/vouchers", Some(TOKEN));
    assert_eq!(s, 200, "{list}");
    let revoke = list["vouchers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["credits"] == "2.5" || x["credits"] == "2.50")
        .unwrap_or_else(|| panic!("{list}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = post(
        &addr,
        &format!("/v1/vouchers/{revoke}/revoke"),
        &json!({"reason": "test"}),
    );
    assert_eq!(s, 200, "{v}");
    let later = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let (s, v) = post(
        &addr,
        "/v1/vouchers",
        &json!({"credits": "7", "valid_from": later}),
    );
    assert_eq!(s, 200, "{v}");
    let out = env.cli(&["keys", "create", "acct-op-a", "--description", "op test"]);
    let key = out.lines().next().unwrap().trim().to_string();
    env.wait_for("the key to be known", Duration::from_secs(30), || {
        get(&addr, "/v1/whoami", Some(&key)).0 == 200
    });
    (addr, key)
}

/// The dead letters on the topic: id -> (reason, source partition, source offset).
fn topic_dead_letters(env: &common::TestEnv) -> BTreeMap<String, (String, i64, i64)> {
    let mut out = BTreeMap::new();
    for (_, msgs) in env.read_topic(&env.cfg.topics.dead_letter) {
        for (_, _, payload) in msgs {
            let v: Value = serde_json::from_slice(&payload).unwrap();
            let id = format!(
                "{}/{}/{}",
                v["source_topic"].as_str().unwrap(),
                v["source_partition"],
                v["source_offset"]
            );
            out.insert(
                id,
                (
                    v["reason"].as_str().unwrap().to_string(),
                    v["source_partition"].as_i64().unwrap(),
                    v["source_offset"].as_i64().unwrap(),
                ),
            );
        }
    }
    out
}

fn check_api(env: &common::TestEnv, addr: &str, key: &str) {
    // Credentials: none 401, an account's key 403, for each endpoint.
    for path in [
        "/v1/accounts",
        "/v1/dead-letters",
        "/v1/dead-letters/reasons",
        "/v1/vouchers",
    ] {
        assert_eq!(get(addr, path, None).0, 401, "{path} without a credential");
        let (s, v) = get(addr, path, Some(key));
        assert_eq!(s, 403, "{path} with an account key: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("operator token"),
            "{v}"
        );
        // Strict query strings.
        let (s, v) = get(addr, &format!("{path}?limt=5"), Some(TOKEN));
        assert_eq!(s, 400, "{path}?limt=5: {v}");
        assert_eq!(v["parameter"], "limt", "{v}");
        assert!(v["error"].as_str().unwrap().contains("limt"), "{v}");
    }
    for (path, param) in [
        ("/v1/accounts?below=1e3", "below"),
        ("/v1/accounts?order=richest", "order"),
        ("/v1/accounts?limit=0", "limit"),
        ("/v1/dead-letters?reason=bad_luck", "reason"),
        ("/v1/dead-letters?cursor=xyz", "cursor"),
        ("/v1/dead-letters/reasons?from=yesterday", "from"),
        ("/v1/vouchers?state=sleeping", "state"),
        ("/v1/vouchers?offset=-1", "offset"),
    ] {
        let (s, v) = get(addr, path, Some(TOKEN));
        assert_eq!(
            (s, v["parameter"].as_str()),
            (400, Some(param)),
            "{path}: {v}"
        );
    }

    // Accounts: every account of the ledger, balances equal to its balance answer, lowest
    // first, across pages of 2.
    let (rows, pages) = all_pages(addr, "/v1/accounts", "accounts", 2);
    assert!(pages >= 3, "5 accounts in pages of 2");
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "acct-op-d",
            "acct-op-b",
            "acct-op-a",
            "acct-op-e",
            "acct-op-c"
        ]
    );
    for r in &rows {
        let id = r["account_id"].as_str().unwrap();
        let (_, b) = get(addr, &format!("/v1/accounts/{id}/balance"), Some(TOKEN));
        assert_eq!(r["balance"], b["balance"], "{id}");
        assert!(r["balance"].is_string(), "money as a decimal string: {r}");
        assert_eq!(r["entries"], b["entries"], "{id}");
        assert_eq!(r["last_activity_at"], b["last_entry_at"], "{id}");
    }
    assert_eq!(d(&rows[4]["balance"]), "100.000001".parse().unwrap());
    let (_, low) = get(addr, "/v1/accounts?below=50", Some(TOKEN));
    assert_eq!(low["total"], 2, "{low}");
    let (_, recent) = get(
        addr,
        "/v1/accounts?order=last_activity&limit=1",
        Some(TOKEN),
    );
    assert_eq!(recent["accounts"][0]["account_id"], "acct-op-e", "{recent}");

    // Dead letters: the topic's, newest first, across pages of 1.
    let topic = topic_dead_letters(env);
    assert_eq!(topic.len(), 3, "{topic:?}");
    env.wait_for(
        "3 dead letters in clickhouse",
        Duration::from_secs(60),
        || {
            let (s, v) = get(addr, "/v1/dead-letters", Some(TOKEN));
            s == 200 && v["dead_letters"].as_array().is_some_and(|a| a.len() == 3)
        },
    );
    let (listed, pages) = all_pages(addr, "/v1/dead-letters", "dead_letters", 1);
    assert_eq!(pages, 3);
    let mut seen = BTreeMap::new();
    let mut last = String::from("9999");
    for x in &listed {
        let id = x["dead_letter_id"].as_str().unwrap().to_string();
        let at = x["dead_lettered_at"].as_str().unwrap().to_string();
        assert!(at <= last, "newest first: {listed:?}");
        last = at;
        assert!(!x["message"].as_str().unwrap().is_empty());
        seen.insert(
            id,
            (
                x["reason"].as_str().unwrap().to_string(),
                x["source_partition"].as_i64().unwrap(),
                x["source_offset"].as_i64().unwrap(),
            ),
        );
    }
    assert_eq!(seen, topic, "the API's dead letters are the topic's");
    let (_, only) = get(addr, "/v1/dead-letters?reason=invalid_json", Some(TOKEN));
    assert_eq!(only["dead_letters"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["dead_letters"][0]["payload"], "{not json");
    let (s, r) = get(addr, "/v1/dead-letters/reasons", Some(TOKEN));
    assert_eq!(s, 200, "{r}");
    let counts: Vec<(String, u64)> = r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["reason"].as_str().unwrap().to_string(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("unknown_asset".to_string(), 2),
            ("invalid_json".to_string(), 1)
        ]
    );
    assert_eq!(r["reasons"][0]["sample"]["reason"], "unknown_asset");

    // Vouchers with their state, in pages of 2.
    let (vs, pages) = all_pages(addr, "/v1/vouchers", "vouchers", 2);
    assert_eq!(pages, 2);
    let mut states: Vec<(String, String)> = vs
        .iter()
        .map(|v| {
            assert!(v["credits"].is_string(), "{v}");
            (
                v["credits"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    let want: Vec<(String, String)> = [
        ("15", "active"),
        ("2.50", "revoked"),
        ("7", "not_yet_valid"),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string()))
    .collect();
    assert_eq!(
        states
            .iter()
            .map(|(c, s)| (c.parse::<Decimal>().unwrap(), s.clone()))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(c, s)| (c.parse::<Decimal>().unwrap(), s.clone()))
            .collect::<Vec<_>>()
    );
    let (_, active) = get(addr, "/v1/vouchers?state=active", Some(TOKEN));
    assert_eq!(active["total"], 1, "{active}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_and_page_show_accounts_dead_letters_and_vouchers() {
    let mut env = common::TestEnv::new("console-op");
    env.setup();
    let (addr, key) = tokio::task::block_in_place(|| seed(&mut env));
    tokio::task::block_in_place(|| check_api(&env, &addr, &key));

    let b = Browser::start().await;
    let base = format!("http://{addr}");
    b.goto(&format!("{base}/console/")).await;
    b.sign_in(TOKEN, None).await;
    b.ready("operator", 0).await;
    b.wait(
        "the operator tables",
        "document.querySelectorAll('#low-balances tbody tr').length === 5 && document.querySelector('#dead-letters') && document.querySelectorAll('#recent-dead-letters tbody tr').length === 3 && document.querySelectorAll('#vouchers tbody tr').length === 3",
        Duration::from_secs(20),
    )
    .await;
    // Accounts as the API lists them, digit for digit.
    let (_, api) = get(&addr, "/v1/accounts", Some(TOKEN));
    let shown = b
        .js(
            "return Array.from(document.querySelectorAll('#low-balances tbody tr'), tr => Array.from(tr.children, c => c.textContent.trim()))",
            vec![],
        )
        .await;
    let shown: Vec<Vec<String>> = serde_json::from_value(shown).unwrap();
    for (row, a) in shown.iter().zip(api["accounts"].as_array().unwrap()) {
        assert_eq!(row[0], a["account_id"].as_str().unwrap());
        assert_eq!(row[1], a["balance"].as_str().unwrap());
        assert_eq!(row[3], a["entries"].to_string());
    }
    // Dead letters by reason, with their counts; vouchers with their state.
    let reasons = b
        .js(
            "return Array.from(document.querySelectorAll('#dead-letters tbody tr'), tr => [tr.children[0].textContent.trim(), tr.children[1].textContent.trim()])",
            vec![],
        )
        .await;
    assert_eq!(
        reasons,
        json!([["unknown_asset", "2"], ["invalid_json", "1"]])
    );
    let mut states: Vec<String> = serde_json::from_value(
        b.js(
            "return Array.from(document.querySelectorAll('#vouchers td.state'), td => td.dataset.state)",
            vec![],
        )
        .await,
    )
    .unwrap();
    states.sort();
    assert_eq!(states, ["active", "not_yet_valid", "revoked"]);
    // The filter: balances below 50, the API's strict answer shown next to a bad value.
    b.type_into("#accounts-form input[name=below]", "50").await;
    b.click("#accounts-form button[type=submit]").await;
    b.wait(
        "two accounts below 50",
        "document.querySelectorAll('#low-balances tbody tr').length === 2",
        Duration::from_secs(30),
    )
    .await;
    let shots = [
        b.shot("operator-lists", DESKTOP).await,
        b.shot("operator-lists", PHONE).await,
    ];
    b.size(DESKTOP).await;
    b.type_into("#accounts-form input[name=below]", "1e3").await;
    b.click("#accounts-form button[type=submit]").await;
    let err = b
        .wait(
            "the refusal of 1e3",
            "(document.querySelector('#accounts-out [role=alert]') || {}).textContent",
            Duration::from_secs(30),
        )
        .await;
    assert!(err.as_str().unwrap().contains("below"), "{err}");
    b.close().await;
    for p in &shots {
        eprintln!("screenshot: {}", p.display());
    }
}
