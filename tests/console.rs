//! The web console in a real headless Chromium (Debian's chromium + chromedriver, driven over
//! WebDriver): the browser's exact decimal arithmetic against rust_decimal; the pages against
//! the real service, broker and ClickHouse with a seeded workload (every figure equals the
//! API's and the ledger's, refusals shown, one account never sees another, operator pages need
//! the operator token); screenshots of each page at desktop and phone width.
//!
//! One binary, one file a job under tests/console/: decimal.rs (the browser's arithmetic),
//! seed.rs (the seeded service and the API calls), page.rs (reading pages in the browser);
//! the pages test itself is below.

#[path = "support/browser.rs"]
mod browser;
mod common;
#[path = "console/decimal.rs"]
mod decimal;
#[path = "console/page.rs"]
mod page;
#[path = "console/seed.rs"]
mod seed;

use std::str::FromStr;
use std::time::Duration;

use browser::{Browser, DESKTOP, PHONE};
use decimal::{api, d};
use page::*;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use seed::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_show_the_api_and_the_ledger_figures() {
    let s = tokio::task::block_in_place(|| seed("console_pages"));
    let base = format!("http://{}", s.addr);
    let b = Browser::start().await;
    b.goto(&format!("{base}/console/")).await;
    let mut shots = both(&b, "sign-in").await;
    b.sign_in(&s.acme_key, Some("")).await;
    let r = b.ready("transactions", 0).await;
    assert_eq!(
        b.text("#who-text").await,
        format!("Account {ACME}"),
        "whoami gave the key's account"
    );

    // Transactions, first page: every cell equals the API's entry and the ledger's.
    let (status, page1) = api_get(
        &s.addr,
        &format!("/v1/accounts/{ACME}/transactions?limit=50"),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{page1}");
    let entries = page1["transactions"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 50);
    let rows = shown_rows(&b).await;
    let want: Vec<Vec<String>> = entries.iter().map(expected_row).collect();
    assert_eq!(rows, want, "the table equals the API's entries");
    let ledger = tokio::task::block_in_place(|| ledger_entries(&s.env, ACME));
    assert_eq!(
        ledger.len(),
        s.acme_entries,
        "the ledger's entries of {ACME}"
    );
    for row in &rows {
        let e = &ledger[&row[0].parse::<u64>().unwrap()];
        assert_eq!(d(&row[7]), e.balance_after, "balance after seq {}", e.seq);
        assert_eq!(d(&row[6]), e.amount, "amount of seq {}", e.seq);
    }
    let last = ledger.values().next_back().unwrap();
    let (_, bal) = api_get(
        &s.addr,
        &format!("/v1/accounts/{ACME}/balance"),
        Some(TOKEN),
    );
    assert_eq!(b.text("#balance").await, bal["balance"].as_str().unwrap());
    assert_eq!(
        d(&b.text("#balance").await),
        last.balance_after,
        "the balance equals the ledger's"
    );
    // The page's exact sums of what it shows.
    let sum = |k: &str| {
        entries
            .iter()
            .map(|e| d(e[k].as_str().unwrap()))
            .sum::<Decimal>()
    };
    assert_eq!(d(&b.text("#sum-credits").await), sum("credit"));
    assert_eq!(d(&b.text("#sum-debits").await), -sum("debit"));
    assert_eq!(d(&b.text("#sum-net").await), sum("credit") - sum("debit"));
    assert!(
        b.text("#summary")
            .await
            .contains(&format!("of {}", s.acme_entries))
    );

    // CSV of exactly what is shown.
    b.click("#export-csv").await;
    let csv = downloaded_csv(&b).await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let got: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    assert_eq!(got, want, "the CSV equals the rows shown");

    // A debit's breakdown per asset (keyboard: Enter on the focused button).
    let exec_seq = entries
        .iter()
        .find(|e| {
            e["description"]
                .as_str()
                .unwrap_or_default()
                .starts_with("agent_execution")
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .expect("an execution debit on the first page");
    b.js(
        &format!("document.querySelector('tr[data-seq=\"{exec_seq}\"] button.expand').focus()"),
        vec![],
    )
    .await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    b.wait("the breakdown", &format!("document.querySelector('tr[data-seq=\"{exec_seq}\"] + tr.detail:not([hidden]) table.sub')"), Duration::from_secs(30)).await;
    let sub: Vec<Vec<String>> = serde_json::from_value(b.js(&format!(
        "return Array.from(document.querySelectorAll('tr[data-seq=\"{exec_seq}\"] + tr.detail table.sub tbody tr'), tr => Array.from(tr.cells, c => c.textContent.trim()))"), vec![]).await).unwrap();
    let e = entries
        .iter()
        .find(|e| e["seq"] == json!(exec_seq))
        .unwrap();
    let want_sub: Vec<Vec<String>> = e["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            vec![
                a["asset_id"].as_str().unwrap().to_string(),
                a["calls"].to_string(),
                quantity_text(&a["quantities"]),
                a["cost"].as_str().unwrap().to_string(),
            ]
        })
        .collect();
    assert_eq!(sub, want_sub, "per-asset breakdown of seq {exec_seq}");
    let traces = has_traces_api(&s.addr);
    if traces {
        // Its calls (the trace API's per-call list): each call's volume, unit prices and cost.
        let exec_id = e["description"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        b.click(&format!(
            "tr[data-seq=\"{exec_seq}\"] + tr.detail button.secondary"
        ))
        .await;
        b.wait(
        "the calls",
        &format!(
            "document.querySelector('tr[data-seq=\"{exec_seq}\"] + tr.detail table.calls-table')"
        ),
        Duration::from_secs(30),
    )
    .await;
        let shown_calls: Vec<Vec<String>> = serde_json::from_value(b.js(&format!(
        "return Array.from(document.querySelectorAll('tr[data-seq=\"{exec_seq}\"] + tr.detail table.calls-table tbody tr'), tr => [tr.dataset.event, tr.querySelector('[data-col=volume]').textContent, tr.querySelector('[data-col=prices]').textContent, tr.querySelector('[data-col=cost]').textContent])"), vec![]).await).unwrap();
        let (_, trace) = api_get(
            &s.addr,
            &format!("/v1/executions/{exec_id}?account_id={ACME}"),
            Some(TOKEN),
        );
        let want_calls: Vec<Vec<String>> = trace["calls"]
            .as_array()
            .unwrap_or_else(|| panic!("{trace}"))
            .iter()
            .map(|c| {
                let units = c["units"].as_array().unwrap();
                let each = |f: &dyn Fn(&Value) -> String| {
                    units.iter().map(f).collect::<Vec<_>>().join(", ")
                };
                vec![
                    c["event_id"].as_str().unwrap().to_string(),
                    each(&|u| {
                        format!(
                            "{} {}",
                            u["quantity"].as_str().unwrap(),
                            u["unit"].as_str().unwrap().replace('_', " ")
                        )
                    }),
                    each(&|u| {
                        format!(
                            "{} per {} {}",
                            u["unit_price"].as_str().unwrap(),
                            u["per"],
                            u["unit"].as_str().unwrap().replace('_', " ")
                        )
                    }),
                    c["cost"].as_str().unwrap().to_string(),
                ]
            })
            .collect();
        assert_eq!(want_calls.len(), 4, "{trace}");
        assert_eq!(shown_calls, want_calls, "the calls of {exec_id}");
    }
    shots.extend(both(&b, "transactions").await);

    // Older: the second page equals the API's second page.
    b.click("#older").await;
    let r = b.ready("transactions", r).await;
    let (_, page2) = api_get(
        &s.addr,
        &format!(
            "/v1/accounts/{ACME}/transactions?limit=50&before_seq={}",
            page1["next_before_seq"]
        ),
        Some(TOKEN),
    );
    let want2: Vec<Vec<String>> = page2["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(expected_row)
        .collect();
    assert_eq!(shown_rows(&b).await, want2, "page 2");
    b.click("#newer").await;
    let _ = b.ready("transactions", r).await;
    assert_eq!(shown_rows(&b).await, want, "back to page 1");

    if traces {
        // Usage (last 30 UTC days): every figure equals the API's /usage and executions listing,
        // and the total equals the ledger's debits.
        b.click("nav a[data-page=usage]").await;
        let _ = b.ready("usage", 0).await;
        let from = (chrono::Utc::now().date_naive() - chrono::Days::new(29))
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let usage = |group: &str| {
            let (st, v) = api_get(
                &s.addr,
                &format!("/v1/accounts/{ACME}/usage?from={from}&group_by={group}"),
                Some(TOKEN),
            );
            assert_eq!(st, 200, "{v}");
            v
        };
        let by_asset = usage("asset");
        for (id, k) in [
            ("#usage-subtotal", "subtotal"),
            ("#usage-markup", "markup"),
            ("#usage-total", "total"),
        ] {
            assert_eq!(b.text(id).await, by_asset[k].as_str().unwrap(), "{id}");
        }
        assert_eq!(b.text("#usage-calls").await, by_asset["calls"].to_string());
        let ledger_debits: Decimal = ledger
            .values()
            .filter(|e| matches!(e.kind, usage_aggregator::ledger::core::EntryKind::Debit))
            .map(|e| -e.amount)
            .sum();
        assert_eq!(
            d(by_asset["total"].as_str().unwrap()),
            ledger_debits,
            "usage total equals the ledger's debits"
        );
        let want_groups = |v: &Value| -> Vec<Vec<String>> {
            v["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| {
                    vec![
                        g["key"].as_str().unwrap().to_string(),
                        g["calls"].to_string(),
                        g["amount"].as_str().unwrap().to_string(),
                    ]
                })
                .collect()
        };
        assert_eq!(
            usage_groups(&b, "usage-by-asset").await,
            want_groups(&by_asset),
            "by asset"
        );
        assert_eq!(
            usage_groups(&b, "usage-by-day").await,
            want_groups(&usage("day")),
            "by day"
        );
        assert_eq!(
            usage_groups(&b, "usage-by-component").await,
            want_groups(&usage("component")),
            "by component"
        );
        assert_eq!(
            usage_groups(&b, "usage-by-dimension").await,
            want_groups(&usage("dimension:project")),
            "by project"
        );
        // The stacked chart by day and asset: each bar segment is that day's credits of that
        // asset as the API answers for the day (fewer than 8 assets: each has its own series).
        let segments: Vec<(String, String, String)> = serde_json::from_value(b.js("return Array.from(document.querySelectorAll('#main svg rect[data-series]'), r => [r.dataset.category, r.dataset.series, r.dataset.value])", vec![]).await).unwrap();
        let mut want_segments = Vec::new();
        for g in usage("day")["groups"].as_array().unwrap() {
            let day = g["key"].as_str().unwrap();
            let next = (chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap()
                + chrono::Days::new(1))
            .format("%Y-%m-%d");
            let (_, u) = api_get(
                &s.addr,
                &format!(
                    "/v1/accounts/{ACME}/usage?from={day}T00:00:00Z&to={next}T00:00:00Z&group_by=asset"
                ),
                Some(TOKEN),
            );
            let order: Vec<&str> = by_asset["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["key"].as_str().unwrap())
                .collect();
            let mut day_groups: Vec<(String, String, String)> = u["groups"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|g| d(g["amount"].as_str().unwrap()) != Decimal::ZERO)
                .map(|g| {
                    (
                        day.to_string(),
                        g["key"].as_str().unwrap().to_string(),
                        g["amount"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            day_groups.sort_by_key(|(_, a, _)| order.iter().position(|o| o == a));
            want_segments.extend(day_groups);
        }
        want_segments.sort_by(|a, b| a.0.cmp(&b.0)); // days in calendar order, stable
        assert!(want_segments.len() > 3, "{want_segments:?}");
        assert_eq!(
            segments, want_segments,
            "the stacked chart by day and asset"
        );
        let (_, execs) = api_get(
            &s.addr,
            &format!("/v1/accounts/{ACME}/executions?from={from}&limit=500"),
            Some(TOKEN),
        );
        let mut want_top: Vec<(String, String)> = execs["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["execution_id"].as_str().unwrap().to_string(),
                    x["total"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        want_top.sort_by(|a, b| d(&b.1).cmp(&d(&a.1)).then(a.0.cmp(&b.0)));
        assert_eq!(want_top.len(), 3, "{execs}");
        let top: Vec<(String, String)> = serde_json::from_value(b.js("return Array.from(document.querySelectorAll('#usage-top tbody tr'), tr => [tr.dataset.execution, tr.querySelector('[data-col=total]').textContent.trim()])", vec![]).await).unwrap();
        assert_eq!(top, want_top, "the most expensive executions");
        shots.extend(both(&b, "usage").await);
    }

    // One account never sees another: globex in the URL answers what a missing account does.
    let (_, globex) = api_get(
        &s.addr,
        &format!("/v1/accounts/{GLOBEX}/balance"),
        Some(TOKEN),
    );
    let globex_balance = globex["balance"].as_str().unwrap().to_string();
    for page in ["transactions", "usage", "live", "credits"] {
        b.open(
            &format!("{base}/console/#/{page}?account={GLOBEX}&execution=exec-globex-1"),
            page,
        )
        .await;
        b.wait("the page's answer", "!document.querySelector('#main .loading') && (document.querySelector('#main [role=alert]') || document.querySelector('#entries'))", Duration::from_secs(30)).await;
        let text = b
            .js("return document.getElementById('main').innerText", vec![])
            .await;
        let text = text.as_str().unwrap();
        assert!(
            !text.contains(&globex_balance) && !text.contains("exec-globex-2"),
            "{page} shows globex data: {text}"
        );
        assert!(
            b.texts("#entries tbody tr").await.is_empty(),
            "{page}: rows of globex"
        );
        assert!(
            text.contains("Not found"),
            "{page} with globex in the URL: {text}"
        );
    }
    // The operator page needs the operator token.
    b.open(&format!("{base}/console/#/operator"), "operator")
        .await;
    assert!(b.text("#main").await.contains("need the operator token"));
    assert!(
        b.js(
            "return document.querySelector('[data-operator]').hidden",
            vec![]
        )
        .await
            == json!(true),
        "no Operator link for a key"
    );

    // Credits with the key: no top-up (a payment), a voucher redeemed.
    b.open(&format!("{base}/console/#/credits"), "credits")
        .await;
    assert!(b.texts("#topup-form").await.is_empty() && !b.texts("#topup-note").await.is_empty());
    tokio::task::block_in_place(|| {
        s.env.cli(&[
            "vouchers",
            "create",
            "CONSOLE-TEST-2026",
            "--credits",
            "15",
            "--max-redemptions",
            "5",
            "--valid-for",
            "1h",
        ])
    });
    b.type_into("#redeem-form input[name=code]", "console-test-2026")
        .await;
    b.click("#redeem-form button[type=submit]").await;
    let ok = b.wait("the redemption", "(document.querySelector('#redeem-result .ok, #redeem-result [role=alert]') || {}).textContent", Duration::from_secs(20)).await;
    assert!(
        ok.as_str().unwrap().starts_with("Redeemed: 15 credits"),
        "{ok}"
    );
    shots.extend(both(&b, "credits-account-key").await);

    // Sign out; the operator: a top-up of 5 shows the ledger's refusal, 25.50 moves the balance.
    b.click("#sign-out").await;
    assert_eq!(
        b.js("return sessionStorage.length", vec![]).await,
        json!(0),
        "the key is gone"
    );
    b.sign_in(TOKEN, Some(ACME)).await;
    let n = b.ready("transactions", 0).await;
    b.click("nav a[data-page=credits]").await;
    let _ = b.ready("credits", n).await;
    b.type_into("#topup-form input[name=amount]", "5").await;
    b.click("#topup-form button[type=submit]").await;
    let refusal = b
        .wait(
            "the refusal",
            "(document.querySelector('#topup-result [role=alert]') || {}).textContent",
            Duration::from_secs(15),
        )
        .await;
    let refusal = refusal.as_str().unwrap();
    assert!(
        refusal.contains("topup_below_minimum") && refusal.contains("10"),
        "{refusal}"
    );
    shots.extend(both(&b, "credits").await);
    let before = d(&b.text("#balance").await);
    b.type_into("#topup-form input[name=amount]", "25.50").await;
    b.click("#topup-form button[type=submit]").await;
    let ok = b
        .wait(
            "the top-up answer",
            "(document.querySelector('#topup-result .ok') || {}).textContent",
            Duration::from_secs(15),
        )
        .await;
    assert!(!ok.as_str().unwrap().is_empty());
    b.wait("the new balance", &format!("document.getElementById('balance') && document.getElementById('balance').textContent !== '{before}'"), Duration::from_secs(15)).await;
    assert_eq!(
        d(&b.text("#balance").await),
        before + d("25.50"),
        "the balance after the top-up"
    );

    b.click("nav a[data-page=operator]").await;
    let _ = b.ready("operator", 0).await;
    b.wait(
        "the pipeline's health",
        "document.getElementById('main').innerText.includes('Pipeline consumer lag')",
        Duration::from_secs(15),
    )
    .await;
    shots.extend(both(&b, "operator").await);

    assert_no_browser_errors(&b).await;
    b.close().await;
    for p in &shots {
        eprintln!("screenshot: {}", p.display());
    }
}
