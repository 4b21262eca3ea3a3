//! The console's accessibility basics in headless Chromium against the real service, on every
//! page at desktop and phone width (tests/support/audit.js: labels, names, table headers,
//! headings, unique ids, text contrast); keyboard use (the skip link, the navigation by Tab
//! and Enter, focus moved to the new page's heading, a visible focus outline); the Live page
//! announcing a call and the debit through the polite live region.

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::{Browser, DESKTOP, PHONE};
use common::{OPERATOR_TOKEN as TOKEN, http_call};
use serde_json::{Value, json};

const AUDIT: &str = include_str!("support/audit.js");
const ACCOUNT: &str = "acct-a11y";
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

fn event(id: &str, exec: &str, asset: &str, q: Value) -> String {
    json!({"type": if asset.starts_with("openai/") { "model_call" } else { "tool_call" },
        "event_id": id, "occurred_at": chrono::Utc::now().to_rfc3339(), "account_id": ACCOUNT,
        "execution_id": exec, "agent_id": "a11y-bot", "asset_id": asset, "quantities": q})
    .to_string()
}

fn finished(exec: &str, calls: u32) -> String {
    json!({"type": "execution_finished", "event_id": format!("{exec}-end"),
        "occurred_at": chrono::Utc::now().to_rfc3339(), "account_id": ACCOUNT,
        "execution_id": exec, "agent_id": "a11y-bot", "expected_calls": calls})
    .to_string()
}

async fn audit(b: &Browser, page: &str) {
    for size in [DESKTOP, PHONE] {
        b.size(size).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let problems = b.js(AUDIT, vec![]).await;
        assert_eq!(
            problems,
            json!([]),
            "{page} at {}x{}: accessibility problems",
            size.0,
            size.1
        );
    }
    b.size(DESKTOP).await;
}

/// Types `keys` as a keyboard does (WebDriver key actions: to whatever has the focus).
async fn press(b: &Browser, keys: &str) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let mut a = KeyActions::new("keyboard".into());
    for c in keys.chars() {
        a = a
            .then(KeyAction::Down { value: c })
            .then(KeyAction::Up { value: c });
    }
    b.client.perform_actions(a).await.unwrap();
}

/// What has the focus: "tag#id.text" (text cut to 40 characters).
async fn focused(b: &Browser) -> String {
    b.js(
        "const e = document.activeElement; return `${e.tagName.toLowerCase()}#${e.id}.${(e.textContent || '').trim().slice(0, 40)}`",
        vec![],
    )
    .await
    .as_str()
    .unwrap()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_pass_the_accessibility_basics() {
    let mut env = common::TestEnv::new("console-a11y");
    env.setup();
    let addr = env.cfg.http.listen.clone();
    tokio::task::block_in_place(|| {
        env.cli(&["catalog", "publish", "config/catalog.json"]);
        env.spawn("all", "agg.log");
        env.wait_for("the service's http", Duration::from_secs(60), || {
            common::http_get(&addr, "/healthz").0 == 200
        });
        let a = http_call(
            &addr,
            "POST",
            &format!("/v1/accounts/{ACCOUNT}/topups"),
            Some(TOKEN),
            Some(&json!({"amount": "40", "reference": "pay-a11y"}).to_string()),
        );
        assert!(a.status == 201 || a.status == 202, "{}", a.body);
        let loader = env.loader();
        let topic = env.cfg.topics.usage_events.clone();
        for (i, (asset, q)) in [
            (
                "openai/gpt-4o-mini",
                json!({"input_tokens": 1000, "output_tokens": 200}),
            ),
            ("tavily/web-search", json!({"requests": 1})),
        ]
        .into_iter()
        .enumerate()
        {
            let e = event(&format!("a11y-old-{i}"), "exec-a11y-old", asset, q);
            loader.send(&topic, "exec-a11y-old", e.as_bytes()).unwrap();
        }
        loader
            .send(
                &topic,
                "exec-a11y-old",
                finished("exec-a11y-old", 2).as_bytes(),
            )
            .unwrap();
        loader.flush().unwrap();
        env.wait_for("2 ledger entries", Duration::from_secs(90), || {
            let a = http_call(
                &addr,
                "GET",
                &format!("/v1/accounts/{ACCOUNT}/transactions"),
                Some(TOKEN),
                None,
            );
            a.status == 200 && a.json()["transactions"].as_array().map_or(0, Vec::len) == 2
        });
    });

    let b = Browser::start().await;
    let base = format!("http://{addr}/console/");
    b.goto(&base).await;
    b.wait(
        "the sign-in form",
        "!document.getElementById('sign-in').hidden",
        Duration::from_secs(30),
    )
    .await;
    audit(&b, "sign-in").await;
    // The audit finds what it looks for: an unlabelled field, a pale text, a table without
    // headers, a skipped heading level (the colour set through the CSSOM: the console's CSP
    // ignores style attributes).
    b.js(
        "const d = document.createElement('div'); d.id = 'bad'; d.innerHTML = '<h3>x</h3><input name=q><p>pale</p><table><tr><td>1</td></tr></table>'; d.querySelector('p').style.color = '#bbb'; document.getElementById('sign-in').append(d);",
        vec![],
    )
    .await;
    let found = b.js(AUDIT, vec![]).await.to_string();
    for what in [
        "form control without a label",
        "contrast 1.",
        "table without column headers",
        "table without a caption",
        "heading level skipped (h1 then h3)",
    ] {
        assert!(found.contains(what), "the audit misses {what:?}: {found}");
    }
    b.js("document.getElementById('bad').remove()", vec![])
        .await;

    // Keyboard: the first Tab reaches the skip link, Enter moves focus to the content and
    // leaves the page where it is.
    b.js("document.activeElement.blur(); window.focus()", vec![])
        .await;
    press(&b, TAB).await;
    assert!(
        focused(&b).await.starts_with("a#.Skip to content"),
        "{}",
        focused(&b).await
    );
    let outline = b
        .js(
            "const s = getComputedStyle(document.activeElement); return [s.outlineStyle, parseFloat(s.outlineWidth)]",
            vec![],
        )
        .await;
    assert!(
        outline[0] != "none" && outline[1].as_f64().unwrap() >= 2.0,
        "a visible focus outline: {outline}"
    );
    press(&b, ENTER).await;
    assert!(
        focused(&b).await.starts_with("main#main"),
        "{}",
        focused(&b).await
    );
    assert!(
        !b.js("return location.hash", vec![])
            .await
            .as_str()
            .unwrap()
            .contains("main")
    );

    // Sign in by keyboard: type, Tab to the account field, Enter submits.
    b.type_into("#key-input", TOKEN).await;
    press(&b, TAB).await;
    press(&b, ACCOUNT).await;
    press(&b, ENTER).await;
    let mut n = b.ready("transactions", 0).await;
    b.wait(
        "the entries",
        "document.querySelectorAll('#entries tbody tr').length >= 2",
        Duration::from_secs(20),
    )
    .await;
    audit(&b, "transactions").await;

    // The navigation by keyboard: Tab until the Usage link has the focus, Enter: the Usage
    // page is shown and its heading has the focus.
    b.js("document.querySelector('a.skip').focus()", vec![])
        .await;
    let mut steps = 0;
    while !focused(&b).await.starts_with("a#.Usage") {
        press(&b, TAB).await;
        steps += 1;
        assert!(
            steps < 10,
            "Tab never reached the Usage link: {}",
            focused(&b).await
        );
    }
    press(&b, ENTER).await;
    n = b.ready("usage", n).await;
    assert!(
        focused(&b).await.starts_with("h1#.Usage"),
        "{}",
        focused(&b).await
    );
    b.wait(
        "the usage figures",
        "!document.querySelector('#main .loading')",
        Duration::from_secs(20),
    )
    .await;
    audit(&b, "usage").await;

    for page in ["credits", "operator"] {
        b.click(&format!("nav a[data-page={page}]")).await;
        n = b.ready(page, n).await;
        b.wait(
            &format!("{page} loaded"),
            "!document.querySelector('#main .loading')",
            Duration::from_secs(20),
        )
        .await;
        audit(&b, page).await;
    }

    // Live: the polite region says the first call, then the debit.
    b.open(
        &format!("{base}#/live?account={ACCOUNT}&execution=exec-a11y-live"),
        "live",
    )
    .await;
    b.wait(
        "the region says what is followed",
        "document.getElementById('announce').textContent.includes('Following execution exec-a11y-live')",
        Duration::from_secs(30),
    )
    .await;
    audit(&b, "live (waiting)").await;
    tokio::task::block_in_place(|| {
        let loader = env.loader();
        let topic = env.cfg.topics.usage_events.clone();
        let e = event(
            "a11y-live-1",
            "exec-a11y-live",
            "openai/gpt-4o-mini",
            json!({"input_tokens": 500, "output_tokens": 50}),
        );
        loader.send(&topic, "exec-a11y-live", e.as_bytes()).unwrap();
        loader.flush().unwrap();
    });
    let said = b
        .wait(
            "the region to announce the call",
            "(t => t.startsWith('1 call,') ? t : '')(document.getElementById('announce').textContent)",
            Duration::from_secs(30),
        )
        .await;
    let total = b.text("#live-total").await;
    assert!(
        said.as_str()
            .unwrap()
            .contains(&format!("running total {total} credits")),
        "{said} vs total {total}"
    );
    audit(&b, "live").await;
    tokio::task::block_in_place(|| {
        let loader = env.loader();
        let topic = env.cfg.topics.usage_events.clone();
        loader
            .send(
                &topic,
                "exec-a11y-live",
                finished("exec-a11y-live", 1).as_bytes(),
            )
            .unwrap();
        loader.flush().unwrap();
    });
    b.wait(
        "the region to announce the debit",
        "document.getElementById('announce').textContent.startsWith('Debit of ')",
        Duration::from_secs(30),
    )
    .await;
    let shot = b.shot("live-a11y", DESKTOP).await;
    let phone = b.shot("live-a11y", PHONE).await;
    b.close().await;
    eprintln!(
        "screenshot: {}\nscreenshot: {}",
        shot.display(),
        phone.display()
    );
}
