//! Spend report: ClickHouse tables in, readable tables (or JSON) out: spend per account, per
//! asset type, top executions with their breakdown, rejects by reason.

use rust_decimal::Decimal;
use serde::Serialize;

pub mod dimension;

fn dec(v: i128, scale: u32) -> Decimal {
    Decimal::try_from_i128_with_scale(v, scale)
        .unwrap_or_default()
        .normalize()
}

#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    /// Only debits/rows ingested at or after this unix time.
    pub since: Option<i64>,
    pub account: Option<String>,
    pub top: u32,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct AccountRow {
    account_id: String,
    debits: u64,
    subtotal: i128,
    markup: i128,
    total: i128,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct TypeRow {
    asset_type: String,
    calls: u64,
    cost: i128,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ExecRow {
    execution_id: String,
    account_id: String,
    total: i128,
    calls: u32,
    breakdown_assets: Vec<String>,
    breakdown_costs: Vec<i128>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct RejectRow {
    reason: String,
    events: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub accounts: Vec<serde_json::Value>,
    pub asset_types: Vec<serde_json::Value>,
    pub top_executions: Vec<serde_json::Value>,
    pub rejects: Vec<serde_json::Value>,
    pub totals: serde_json::Value,
    /// `--group-by dimension:KEY` sections ([`dimension::build`]), in the order asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<serde_json::Value>,
}

fn filter_sql(f: &ReportFilter, time_col: &str) -> String {
    let mut w = vec!["1".to_string()];
    if let Some(s) = f.since {
        w.push(format!("{time_col} >= toDateTime({s})"));
    }
    if f.account.is_some() {
        w.push("account_id = ?".into());
    }
    w.join(" AND ")
}

fn bind(q: clickhouse::query::Query, f: &ReportFilter) -> clickhouse::query::Query {
    match &f.account {
        Some(a) => q.bind(a),
        None => q,
    }
}

pub async fn build(ch: &clickhouse::Client, f: &ReportFilter) -> anyhow::Result<Report> {
    let top = f.top.max(1);
    let w = filter_sql(f, "ingested_at");
    let accounts: Vec<AccountRow> = bind(ch.query(&format!(
        "SELECT account_id, count() AS debits, sum(subtotal) AS subtotal, sum(markup) AS markup, sum(total) AS total FROM debits WHERE {w} GROUP BY account_id ORDER BY total DESC, account_id LIMIT {top}"
    )), f).fetch_all().await?;
    let types: Vec<TypeRow> = bind(ch.query(&format!(
        "SELECT asset_type, count() AS calls, sum(cost) AS cost FROM usage_transactions WHERE {w} GROUP BY asset_type ORDER BY cost DESC"
    )), f).fetch_all().await?;
    let execs: Vec<ExecRow> = bind(ch.query(&format!(
        "SELECT execution_id, account_id, total, calls, breakdown_assets, breakdown_costs FROM debits WHERE {w} AND kind = 'agent_execution' ORDER BY total DESC, debit_id LIMIT {top}"
    )), f).fetch_all().await?;
    let rejects: Vec<RejectRow> = ch
        .query(&format!(
            "SELECT reason, count() AS events FROM dead_letters WHERE {} GROUP BY reason ORDER BY events DESC",
            filter_sql(&ReportFilter { account: None, ..f.clone() }, "ingested_at")
        ))
        .fetch_all()
        .await?;
    let (n, total): (u64, i128) = bind(
        ch.query(&format!("SELECT count(), sum(total) FROM debits WHERE {w}")),
        f,
    )
    .fetch_one()
    .await?;
    Ok(Report {
        accounts: accounts.iter().map(|a| serde_json::json!({
            "account_id": a.account_id, "debits": a.debits,
            "subtotal": dec(a.subtotal, 18).to_string(), "markup": dec(a.markup, 18).to_string(), "total": dec(a.total, 18).to_string()})).collect(),
        asset_types: types.iter().map(|t| serde_json::json!({"asset_type": t.asset_type, "calls": t.calls, "cost": dec(t.cost, 12).to_string()})).collect(),
        top_executions: execs.iter().map(|e| serde_json::json!({
            "execution_id": e.execution_id, "account_id": e.account_id, "calls": e.calls, "total": dec(e.total, 18).to_string(),
            "breakdown": e.breakdown_assets.iter().zip(&e.breakdown_costs).map(|(a, c)| serde_json::json!({"asset_id": a, "cost": dec(*c, 12).to_string()})).collect::<Vec<_>>()})).collect(),
        rejects: rejects.iter().map(|r| serde_json::json!({"reason": r.reason, "events": r.events})).collect(),
        totals: serde_json::json!({"debits": n, "total": dec(total, 18).to_string()}),
        groups: Vec::new(),
    })
}

fn s(v: &serde_json::Value, k: &str) -> String {
    match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders the report as plain-text tables.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "Spend by account (credits)");
    let _ = writeln!(
        o,
        "{:<28} {:>8} {:>22} {:>22} {:>22}",
        "account", "debits", "subtotal", "markup", "total"
    );
    for a in &r.accounts {
        let _ = writeln!(
            o,
            "{:<28} {:>8} {:>22} {:>22} {:>22}",
            s(a, "account_id"),
            s(a, "debits"),
            s(a, "subtotal"),
            s(a, "markup"),
            s(a, "total")
        );
    }
    let _ = writeln!(o, "\nSpend by asset type (vendor cost)");
    for t in &r.asset_types {
        let _ = writeln!(
            o,
            "{:<14} {:>10} calls {:>22}",
            s(t, "asset_type"),
            s(t, "calls"),
            s(t, "cost")
        );
    }
    let _ = writeln!(o, "\nTop executions");
    for e in &r.top_executions {
        let _ = writeln!(
            o,
            "{:<30} {:<20} {:>5} calls  total {:>20}",
            s(e, "execution_id"),
            s(e, "account_id"),
            s(e, "calls"),
            s(e, "total")
        );
        if let Some(b) = e["breakdown"].as_array() {
            for x in b {
                let _ = writeln!(o, "    {:<40} {:>20}", s(x, "asset_id"), s(x, "cost"));
            }
        }
    }
    let _ = writeln!(o, "\nRejected events (not billed) by reason");
    for x in &r.rejects {
        let _ = writeln!(o, "{:<24} {:>8}", s(x, "reason"), s(x, "events"));
    }
    for g in &r.groups {
        o.push_str(&dimension::render(g));
    }
    let _ = writeln!(
        o,
        "\nTotal: {} debits, {} credits",
        s(&r.totals, "debits"),
        s(&r.totals, "total")
    );
    o
}
