//! The Credits page's low-balance thresholds in headless Chromium against the real service:
//! listed as the ledger holds them (`GET /v1/accounts/{id}/thresholds`), one added, one the
//! ledger refuses shown next to the field (with `aria-invalid`), one removed, the defaults
//! restored; after each step the page equals the API's answer.

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::{Browser, DESKTOP, PHONE};
use common::{OPERATOR_TOKEN as TOKEN, http_call};
use serde_json::json;

const ACCOUNT: &str = "acct-thresholds";

/// The account's thresholds as the API gives them: (rule, value, below), and whether custom.
fn api_thresholds(addr: &str) -> (Vec<(String, String, bool)>, bool) {
    let a = http_call(
        addr,
        "GET",
        &format!("/v1/accounts/{ACCOUNT}/thresholds"),
        Some(TOKEN),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    let list = v["account"]["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["rule"].as_str().unwrap().to_string(),
                t["value"].as_str().unwrap().to_string(),
                t["below"].as_bool().unwrap(),
            )
        })
        .collect();
    (list, v["account"]["custom_thresholds"] == true)
}

async fn shown(b: &Browser) -> Vec<(String, String, bool)> {
    let v = b
        .js(
            "return Array.from(document.querySelectorAll('#thresholds tbody tr'), tr => [tr.children[0].textContent.trim(), tr.children[1].textContent.trim(), tr.children[2].textContent.trim() === 'below'])",
            vec![],
        )
        .await;
    serde_json::from_value::<Vec<(String, String, bool)>>(v).unwrap()
}

/// Waits for the page to show `want` rows and checks them against the API.
async fn same_as_api(b: &Browser, addr: &str, rows: usize, custom: bool) {
    b.wait(
        &format!("{rows} thresholds shown"),
        &format!("document.querySelectorAll('#thresholds tbody tr').length === {rows} && !document.querySelector('#thresholds-result .loading')"),
        Duration::from_secs(20),
    )
    .await;
    let (api, api_custom) = tokio::task::block_in_place(|| api_thresholds(addr));
    assert_eq!(
        shown(b).await,
        api,
        "the page shows the ledger's thresholds"
    );
    assert_eq!(api_custom, custom);
    let source = b.text("#thresholds-source").await;
    assert_eq!(source.contains("own thresholds"), custom, "{source}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_page_lists_sets_and_removes_thresholds() {
    let mut env = common::TestEnv::new("console-th");
    env.setup();
    env.spawn("all", "agg.log");
    let addr = env.cfg.http.listen.clone();
    let key = tokio::task::block_in_place(|| {
        env.wait_for("the service's http", Duration::from_secs(60), || {
            common::http_get(&addr, "/healthz").0 == 200
        });
        let a = http_call(
            &addr,
            "POST",
            &format!("/v1/accounts/{ACCOUNT}/topups"),
            Some(TOKEN),
            Some(&json!({"amount": "100", "reference": "pay-th-1"}).to_string()),
        );
        assert!(
            a.status == 201 || a.status == 202,
            "{} {}",
            a.status,
            a.body
        );
        let out = env.cli(&["keys", "create", ACCOUNT, "--description", "thresholds"]);
        let key = out.lines().next().unwrap().trim().to_string();
        env.wait_for("the key and the balance", Duration::from_secs(60), || {
            let a = http_call(
                &addr,
                "GET",
                &format!("/v1/accounts/{ACCOUNT}/balance"),
                Some(&key),
                None,
            );
            a.status == 200
        });
        key
    });

    let b = Browser::start().await;
    b.goto(&format!("http://{addr}/console/")).await;
    b.sign_in(&key, None).await;
    b.ready("transactions", 0).await;
    b.open(
        &format!("http://{addr}/console/#/credits?account={ACCOUNT}"),
        "credits",
    )
    .await;
    // The service's defaults (config: ["10", "0"]).
    same_as_api(&b, &addr, 2, false).await;

    // Add 20: the ledger's list, with its value and side.
    b.type_into("#threshold-form input[name=threshold]", "20")
        .await;
    b.click("#threshold-form button[type=submit]").await;
    same_as_api(&b, &addr, 3, true).await;
    assert!(shown(&b).await.contains(&("20".into(), "20".into(), false)));

    // A share above 100 %: the console lets it through, the ledger refuses it; its words are
    // shown next to the field, which is marked invalid and focused; nothing changes.
    b.type_into("#threshold-form input[name=threshold]", "150%")
        .await;
    b.click("#threshold-form button[type=submit]").await;
    let err = b
        .wait(
            "the ledger's refusal next to the field",
            "(document.querySelector('#threshold-form .field-error') || {}).textContent",
            Duration::from_secs(20),
        )
        .await;
    let err = err.as_str().unwrap().to_string();
    assert!(err.contains("150%") && err.contains("100%"), "{err}");
    let field = b
        .js(
            "const i = document.querySelector('#threshold-form input[name=threshold]'); const e = document.querySelector('#threshold-form .field-error'); return [i.getAttribute('aria-invalid'), (i.getAttribute('aria-describedby') || '').split(' ').includes(e.id), document.activeElement === i, i.closest('.field').contains(e)]",
            vec![],
        )
        .await;
    assert_eq!(field, json!(["true", true, true, true]), "{field}");
    same_as_api(&b, &addr, 3, true).await;
    // Not a number at all: refused in the page, before any request.
    b.type_into("#threshold-form input[name=threshold]", "ten")
        .await;
    b.click("#threshold-form button[type=submit]").await;
    let err = b.text("#threshold-form .field-error").await;
    assert!(err.contains("\"ten\" is not a threshold"), "{err}");

    // A share of the last top-up (100): 5 % is 5 credits.
    b.type_into("#threshold-form input[name=threshold]", "5%")
        .await;
    b.click("#threshold-form button[type=submit]").await;
    same_as_api(&b, &addr, 4, true).await;
    assert!(
        shown(&b).await.iter().any(|(r, v, _)| r == "5%"
            && v.parse::<rust_decimal::Decimal>().unwrap() == rust_decimal::Decimal::from(5)),
        "{:?}",
        shown(&b).await
    );
    assert_eq!(
        b.js(
            "return document.querySelector('#threshold-form .field-error').textContent",
            vec![]
        )
        .await,
        json!(""),
        "the error is cleared"
    );
    let shots = [
        b.shot("credits-thresholds", DESKTOP).await,
        b.shot("credits-thresholds", PHONE).await,
    ];
    b.size(DESKTOP).await;

    // Remove 20 (by keyboard: focus its button, Enter).
    b.js(
        "document.querySelector('#thresholds tr[data-rule=\"20\"] button').focus()",
        vec![],
    )
    .await;
    {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let enter = '\u{E007}';
        let a = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: enter })
            .then(KeyAction::Up { value: enter });
        b.client.perform_actions(a).await.unwrap();
    }
    same_as_api(&b, &addr, 3, true).await;
    assert!(!shown(&b).await.iter().any(|(r, _, _)| r == "20"));

    // Back to the defaults.
    b.click("#thresholds-defaults").await;
    same_as_api(&b, &addr, 2, false).await;
    b.close().await;
    for p in &shots {
        eprintln!("screenshot: {}", p.display());
    }
}
