//! The credits queries of docs/analytics.md, read from the page itself and run against the
//! real ClickHouse, on a ledger the binary filled (ledger + sink) with known grants, debits
//! and one expiry: promotional credits consumed this month, credits that expired, and the
//! liability (unexpired paid and promotional credits) per account.

mod common;

use std::time::Duration;

use common::ledger::*;
use common::*;
use rust_decimal::Decimal;

/// The first SQL block after the heading `### {title}` in docs/analytics.md, on database
/// `{db}` instead of the page's `usage`.
fn doc_query(title: &str) -> String {
    let page = std::fs::read_to_string(root().join("docs/analytics.md")).unwrap();
    let at = page
        .find(&format!("### {title}\n"))
        .unwrap_or_else(|| panic!("docs/analytics.md has no section {title:?}"));
    let rest = &page[at..];
    let start = rest.find("```sql\n").unwrap() + "```sql\n".len();
    let end = start + rest[start..].find("```").unwrap();
    rest[start..end].replace("usage.", "{db}.")
}

/// Rows of a query (TSV), with decimals normalized (18.16 writes trailing zeros, 26.9 none).
fn rows(env: &TestEnv, sql: &str) -> Vec<Vec<String>> {
    env.ch(&format!("{} FORMAT TSV", sql.trim().trim_end_matches(';')))
        .lines()
        .map(|l| {
            l.split('\t')
                .map(|c| match c.parse::<Decimal>() {
                    Ok(d) if c.contains('.') => d.normalize().to_string(),
                    _ => c.to_string(),
                })
                .collect()
        })
        .collect()
}

fn post(addr: &str, path: &str, body: &str) {
    let (s, b) = http_post(addr, path, Some(OPERATOR_TOKEN), body);
    assert_eq!(s, 201, "{path} {body}: {b}");
}

#[test]
fn the_credits_queries_of_the_analytics_page_answer_the_known_figures() {
    let mut env = ledger_env("canalytics");
    env.spawn("ledger", "ledger.log");
    let sink_listen = format!("127.0.0.1:{}", free_port());
    env.spawn_with("sink", "sink.log", &sink_listen, &[]);
    let addr = env.cfg.http.listen.clone();
    env.wait_for("http", Duration::from_secs(60), || {
        http_get(&addr, "/healthz").0 == 200
    });
    let (a, b) = (format!("{}-a", env.name), format!("{}-b", env.name));
    // A: paid 100; promotional 20 (priority 10, drawn first); promotional 5 drawn last that
    // expires 20 s after it is granted (time enough on a loaded machine: a grant that has
    // expired when the ledger reads it is refused). B: paid 50 and promotional 8
    // (promotional drawn first at equal terms).
    post(
        &addr,
        &format!("/v1/accounts/{a}/topups"),
        r#"{"amount":"100","reference":"pay-a"}"#,
    );
    post(
        &addr,
        &format!("/v1/accounts/{a}/adjustments"),
        r#"{"amount":"20","reason":"welcome","reference":"adj-a1","category":"promotional","priority":10}"#,
    );
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(20)).to_rfc3339();
    post(
        &addr,
        &format!("/v1/accounts/{a}/adjustments"),
        &format!(
            r#"{{"amount":"5","reason":"trial","reference":"adj-a2","category":"promotional","priority":90,"expires_at":"{soon}"}}"#
        ),
    );
    post(
        &addr,
        &format!("/v1/accounts/{b}/topups"),
        r#"{"amount":"50","reference":"pay-b"}"#,
    );
    post(
        &addr,
        &format!("/v1/accounts/{b}/adjustments"),
        r#"{"amount":"8","reason":"goodwill","reference":"adj-b1","category":"promotional"}"#,
    );
    // Usage now (this month): A 30 (20 promotional, 10 paid), B 3 (promotional).
    let loader = env.loader();
    for (id, account, total) in [("dc-a", &a, 30), ("dc-b", &b, 3)] {
        let mut d = debit(&format!("{id}-{}", env.name), account, Decimal::from(total));
        d.markup_rate = Decimal::ZERO;
        d.markup = Decimal::ZERO;
        d.total = Decimal::from(total);
        d.components.markup = Decimal::ZERO;
        let now = chrono::Utc::now();
        (d.first_event_at, d.last_event_at) = (now, now);
        loader
            .send(&env.cfg.topics.debits, account, &d.encode())
            .unwrap();
    }
    loader.flush().unwrap();
    // A's promotional 5 expires (one `expiry` entry); all 8 rows reach ClickHouse.
    env.wait_for("8 ledger rows", Duration::from_secs(90), || {
        env.ch("SELECT count() FROM {db}.ledger")
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
            == 8
    });
    let expiry = rows(
        &env,
        "SELECT account_id, reference, toString(debit) FROM {db}.ledger WHERE kind = 'expiry'",
    );
    assert_eq!(expiry, [[a.clone(), "adj-a2".into(), "5".into()]]);

    let consumed = rows(
        &env,
        &doc_query("Promotional credits consumed per account this month"),
    );
    assert_eq!(
        consumed,
        [
            vec![a.clone(), "20".to_string(), "1".to_string()],
            vec![b.clone(), "3".to_string(), "1".to_string()]
        ]
    );
    let month = env.ch("SELECT toString(toStartOfMonth(now())) FORMAT TSV");
    let expired = rows(&env, &doc_query("Credits that expired"));
    assert_eq!(
        expired,
        [vec![
            month.trim().to_string(),
            "promotional".to_string(),
            "1".to_string(),
            "5".to_string()
        ]]
    );
    let liability = rows(
        &env,
        &doc_query("Liability: unexpired paid and promotional credits per account"),
    );
    assert_eq!(
        liability,
        [
            vec![a.clone(), "paid".into(), "1".into(), "90".into()],
            vec![b.clone(), "paid".into(), "1".into(), "50".into()],
            vec![b.clone(), "promotional".into(), "1".into(), "5".into()],
        ]
    );
}
