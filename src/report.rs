//! Spend report: ClickHouse tables and a window in, a [`Report`] out (spend per account, per
//! asset type, top executions with their breakdown, rejects by reason), rendered as aligned
//! text (amounts rounded for display only), exact JSON, or exact CSV of the account table.
//!
//! Windows: `from`/`to` select by **event time** (a debit by its first event, a priced call
//! by `occurred_at`), half-open `[from, to)`; `since` selects by ingestion time. Rejected
//! events have no trusted event time: the same window applies to their ingestion time.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

pub mod dimension;
mod table;

/// Decimals shown in the text tables (JSON and CSV are exact).
pub const DISPLAY_DECIMALS: u32 = 4;

fn dec(v: i128, scale: u32) -> Decimal {
    Decimal::try_from_i128_with_scale(v, scale)
        .unwrap_or_default()
        .normalize()
}

/// A half-open window of event time `[from, to)`; `None` leaves that side open.
pub type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Which rows a report covers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReportFilter {
    /// Event time, inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Event time, exclusive.
    pub to: Option<DateTime<Utc>>,
    /// Ingestion time, inclusive.
    pub ingested_since: Option<DateTime<Utc>>,
    pub account: Option<String>,
    /// Rows in the top lists; 0 = all.
    pub top: u32,
}

/// Parses `--from`/`--to`: RFC 3339 (`2026-10-01T00:00:00Z`, any offset) or a UTC date
/// (`2026-10-01`). A date given as an end means the end of that day, so `--from 2026-10-01
/// --to 2026-10-31` is all of October.
pub fn parse_instant(s: &str, end: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => {
            let d = if end { d.succ_opt().unwrap_or(d) } else { d };
            Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        }
        Err(_) => Err(format!(
            "\"{s}\" is neither a date (2026-10-01, UTC) nor an RFC 3339 time (2026-10-01T12:00:00Z)"
        )),
    }
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
    markup: i128,
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

#[derive(Debug, Serialize, PartialEq)]
pub struct AccountSpend {
    pub account_id: String,
    pub debits: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TypeSpend {
    pub asset_type: String,
    pub calls: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AssetCost {
    pub asset_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ExecutionSpend {
    pub execution_id: String,
    pub account_id: String,
    pub calls: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Vendor price per asset, then `markup`: they add up to `total`.
    pub breakdown: Vec<AssetCost>,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
}

/// Debits in the window by component (`crate::debit::components`): `models + tools +
/// unclassified + markup = total`. `unclassified` is the vendor price of debits written
/// before ClickHouse migration 6 (which does not record the split); 0 for every later one.
#[derive(Debug, Serialize, PartialEq)]
pub struct ComponentSpend {
    #[serde(with = "rust_decimal::serde::str")]
    pub models: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tools: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unclassified: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RejectCount {
    pub reason: String,
    pub events: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Totals {
    pub debits: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

/// The report; amounts are exact decimals (strings in JSON), in credits.
#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_at: DateTime<Utc>,
    pub window: ReportFilter,
    pub accounts: Vec<AccountSpend>,
    /// Accounts with debits in the window (`accounts` may show fewer: `top`).
    pub accounts_total: u64,
    pub asset_types: Vec<TypeSpend>,
    /// The debits' total by component, markup as its own line.
    pub components: ComponentSpend,
    pub top_executions: Vec<ExecutionSpend>,
    /// Execution debits in the window.
    pub executions_total: u64,
    pub rejects: Vec<RejectCount>,
    pub totals: Totals,
    /// `--group-by dimension:KEY` sections ([`dimension::build`]), in the order asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<serde_json::Value>,
}

/// `WHERE` clause over a table whose event-time column is `event_col`.
fn filter_sql(f: &ReportFilter, event_col: Option<&str>, with_account: bool) -> String {
    let mut w = vec!["1".to_string()];
    if let Some(col) = event_col {
        if let Some(t) = f.from {
            w.push(format!("{col} >= toDateTime({})", t.timestamp()));
        }
        if let Some(t) = f.to {
            w.push(format!("{col} < toDateTime({})", t.timestamp()));
        }
    }
    if let Some(t) = f.ingested_since {
        w.push(format!("ingested_at >= toDateTime({})", t.timestamp()));
    }
    if with_account && f.account.is_some() {
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

/// Errors of [`build`].
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("account \"{0}\" has no debits at all; check the id (ids are case-sensitive)")]
    UnknownAccount(String),
    #[error(transparent)]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// Runs the report's queries.
pub async fn build(ch: &clickhouse::Client, f: &ReportFilter) -> Result<Report, ReportError> {
    if let Some(a) = &f.account {
        let n: u64 = ch
            .query("SELECT count() FROM debits WHERE account_id = ?")
            .bind(a)
            .fetch_one()
            .await?;
        if n == 0 {
            return Err(ReportError::UnknownAccount(a.clone()));
        }
    }
    let limit = if f.top == 0 {
        String::new()
    } else {
        format!(" LIMIT {}", f.top)
    };
    let w = filter_sql(f, Some("first_event_at"), true);
    let accounts: Vec<AccountRow> = bind(ch.query(&format!(
        "SELECT account_id, count() AS debits, sum(subtotal) AS subtotal, sum(markup) AS markup, sum(total) AS total FROM debits WHERE {w} GROUP BY account_id ORDER BY total DESC, account_id{limit}"
    )), f).fetch_all().await?;
    let tw = filter_sql(f, Some("occurred_at"), true);
    let types: Vec<TypeRow> = bind(ch.query(&format!(
        "SELECT asset_type, count() AS calls, sum(cost) AS cost FROM usage_transactions WHERE {tw} GROUP BY asset_type ORDER BY cost DESC, asset_type"
    )), f).fetch_all().await?;
    let execs: Vec<ExecRow> = bind(ch.query(&format!(
        "SELECT execution_id, account_id, markup, total, calls, breakdown_assets, breakdown_costs FROM debits WHERE {w} AND kind = 'agent_execution' ORDER BY total DESC, debit_id{limit}"
    )), f).fetch_all().await?;
    // Rejected events: the same window applied to their ingestion time.
    let rw = filter_sql(f, Some("ingested_at"), false);
    let rejects: Vec<RejectRow> = ch
        .query(&format!(
            "SELECT reason, count() AS events FROM dead_letters WHERE {rw} GROUP BY reason ORDER BY events DESC, reason"
        ))
        .fetch_all()
        .await?;
    let (n, accounts_total, subtotal, markup, total): (u64, u64, i128, i128, i128) = bind(
        ch.query(&format!(
            "SELECT count(), uniqExact(account_id), sum(subtotal), sum(markup), sum(total) FROM debits WHERE {w}"
        )),
        f,
    )
    .fetch_one()
    .await?;
    let (models, tools, c_subtotal, c_markup, c_total): (i128, i128, i128, i128, i128) = bind(
        ch.query(&format!(
            "SELECT sum(models), sum(tools), sum(subtotal), sum(markup), sum(total) FROM debits WHERE {w}"
        )),
        f,
    )
    .fetch_one()
    .await?;
    let executions_total: u64 = bind(
        ch.query(&format!(
            "SELECT count() FROM debits WHERE {w} AND kind = 'agent_execution'"
        )),
        f,
    )
    .fetch_one()
    .await?;
    Ok(Report {
        generated_at: Utc::now(),
        window: f.clone(),
        accounts: accounts
            .into_iter()
            .map(|a| AccountSpend {
                account_id: a.account_id,
                debits: a.debits,
                subtotal: dec(a.subtotal, 18),
                markup: dec(a.markup, 18),
                total: dec(a.total, 18),
            })
            .collect(),
        accounts_total,
        asset_types: types
            .into_iter()
            .map(|t| TypeSpend {
                asset_type: t.asset_type,
                calls: t.calls,
                cost: dec(t.cost, 12),
            })
            .collect(),
        components: ComponentSpend {
            models: dec(models, 18),
            tools: dec(tools, 18),
            unclassified: dec(c_subtotal - models - tools, 18),
            markup: dec(c_markup, 18),
            total: dec(c_total, 18),
        },
        top_executions: execs
            .into_iter()
            .map(|e| ExecutionSpend {
                breakdown: e
                    .breakdown_assets
                    .iter()
                    .zip(&e.breakdown_costs)
                    .map(|(a, c)| AssetCost {
                        asset_id: a.clone(),
                        cost: dec(*c, 12),
                    })
                    .collect(),
                execution_id: e.execution_id,
                account_id: e.account_id,
                calls: e.calls,
                total: dec(e.total, 18),
                markup: dec(e.markup, 18),
            })
            .collect(),
        executions_total,
        rejects: rejects
            .into_iter()
            .map(|r| RejectCount {
                reason: r.reason,
                events: r.events,
            })
            .collect(),
        totals: Totals {
            debits: n,
            subtotal: dec(subtotal, 18),
            markup: dec(markup, 18),
            total: dec(total, 18),
        },
        groups: Vec::new(),
    })
}

/// An amount for display: rounded half away from zero to [`DISPLAY_DECIMALS`], all decimals
/// written, so that columns align.
pub fn display_amount(d: Decimal) -> String {
    let mut r = d.round_dp_with_strategy(DISPLAY_DECIMALS, RoundingStrategy::MidpointAwayFromZero);
    r.rescale(DISPLAY_DECIMALS);
    r.to_string()
}

fn window_text(r: &Report) -> String {
    let w = &r.window;
    let t = |d: &DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let mut parts = Vec::new();
    match (&w.from, &w.to) {
        (None, None) => parts.push("all event times".to_string()),
        (f, to) => parts.push(format!(
            "event time {} .. {}",
            f.as_ref().map_or("start".into(), t),
            to.as_ref().map_or("now".into(), t)
        )),
    }
    if let Some(s) = &w.ingested_since {
        parts.push(format!("ingested since {}", t(s)));
    }
    if let Some(a) = &w.account {
        parts.push(format!("account {a}"));
    }
    format!(
        "Spend report: {}; generated {}",
        parts.join(", "),
        t(&r.generated_at)
    )
}

fn shown(n: usize, total: u64) -> String {
    if n as u64 == total {
        format!("{total}")
    } else {
        format!("{n} of {total}")
    }
}

/// Renders the report as plain-text tables (amounts rounded for display; use JSON or CSV
/// for exact figures).
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "{}", window_text(r));
    let _ = writeln!(
        o,
        "Amounts in credits, rounded to {DISPLAY_DECIMALS} decimals for display (--format json or csv is exact).\n"
    );
    let _ = writeln!(
        o,
        "Spend by account ({} accounts)",
        shown(r.accounts.len(), r.accounts_total)
    );
    use table::Align::{Left, Right};
    let rows: Vec<Vec<String>> = r
        .accounts
        .iter()
        .map(|a| {
            vec![
                a.account_id.clone(),
                a.debits.to_string(),
                display_amount(a.subtotal),
                display_amount(a.markup),
                display_amount(a.total),
            ]
        })
        .collect();
    o.push_str(&table::render(
        &[
            ("account", Left),
            ("debits", Right),
            ("subtotal", Right),
            ("markup", Right),
            ("total", Right),
        ],
        &rows,
    ));
    let _ = writeln!(o, "\nSpend by asset type (vendor cost, before markup)");
    let rows: Vec<Vec<String>> = r
        .asset_types
        .iter()
        .map(|t| {
            vec![
                t.asset_type.clone(),
                t.calls.to_string(),
                display_amount(t.cost),
            ]
        })
        .collect();
    o.push_str(&table::render(
        &[("asset type", Left), ("calls", Right), ("cost", Right)],
        &rows,
    ));
    let c = &r.components;
    let _ = writeln!(
        o,
        "\nSpend by component (vendor price, then markup; they add up to the total)"
    );
    let mut parts = vec![("models", c.models), ("tools", c.tools)];
    if !c.unclassified.is_zero() {
        parts.push(("unclassified (before migration 6)", c.unclassified));
    }
    parts.extend([("markup", c.markup), ("total", c.total)]);
    let rows: Vec<Vec<String>> = parts
        .into_iter()
        .map(|(name, amount)| vec![name.to_string(), display_amount(amount)])
        .collect();
    o.push_str(&table::render(
        &[("component", Left), ("amount", Right)],
        &rows,
    ));
    let _ = writeln!(
        o,
        "\nTop executions ({})",
        shown(r.top_executions.len(), r.executions_total)
    );
    for e in &r.top_executions {
        let _ = writeln!(
            o,
            "{:<30} {:<20} {:>5} calls  total {:>18}",
            e.execution_id,
            e.account_id,
            e.calls,
            display_amount(e.total)
        );
        for x in &e.breakdown {
            let _ = writeln!(o, "    {:<40} {:>18}", x.asset_id, display_amount(x.cost));
        }
        let _ = writeln!(o, "    {:<40} {:>18}", "markup", display_amount(e.markup));
    }
    let _ = writeln!(
        o,
        "\nRejected events (not billed) by reason, by ingestion time"
    );
    let rows: Vec<Vec<String>> = r
        .rejects
        .iter()
        .map(|x| vec![x.reason.clone(), x.events.to_string()])
        .collect();
    o.push_str(&table::render(
        &[("reason", Left), ("events", Right)],
        &rows,
    ));
    for g in &r.groups {
        o.push_str(&dimension::render(g));
    }
    let _ = writeln!(
        o,
        "\nTotal: {} debits, {} credits (exact: {})",
        r.totals.debits,
        display_amount(r.totals.total),
        r.totals.total
    );
    o
}

/// Writes the account table as CSV (header, one row per account), amounts exact.
/// I/O errors keep their kind (a closed pipe stays `BrokenPipe`).
pub fn write_csv<W: std::io::Write>(r: &Report, w: W) -> std::io::Result<()> {
    let io = |e: csv::Error| match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    };
    let mut c = csv::Writer::from_writer(w);
    c.write_record(["account_id", "debits", "subtotal", "markup", "total"])
        .map_err(io)?;
    for a in &r.accounts {
        c.write_record([
            a.account_id.clone(),
            a.debits.to_string(),
            a.subtotal.to_string(),
            a.markup.to_string(),
            a.total.to_string(),
        ])
        .map_err(io)?;
    }
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_instants() {
        assert_eq!(
            parse_instant("2026-10-01", false).unwrap().to_rfc3339(),
            "2026-10-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_instant("2026-10-31", true).unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_instant("2026-10-01T02:00:00+02:00", true)
                .unwrap()
                .to_rfc3339(),
            "2026-10-01T00:00:00+00:00"
        );
        assert!(
            parse_instant("yesterday", false)
                .unwrap_err()
                .contains("yesterday")
        );
    }

    #[test]
    fn display_rounding_is_half_away_from_zero_and_aligned() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(display_amount(d("0.00005")), "0.0001");
        assert_eq!(display_amount(d("0.00004")), "0.0000");
        assert_eq!(display_amount(d("12")), "12.0000");
        assert_eq!(display_amount(d("-0.00005")), "-0.0001");
    }

    #[test]
    fn filters() {
        let f = ReportFilter {
            from: Some(parse_instant("2026-10-01", false).unwrap()),
            to: Some(parse_instant("2026-10-31", true).unwrap()),
            account: Some("a".into()),
            ..Default::default()
        };
        let w = filter_sql(&f, Some("first_event_at"), true);
        assert_eq!(
            w,
            "1 AND first_event_at >= toDateTime(1790812800) AND first_event_at < toDateTime(1793491200) AND account_id = ?"
        );
        assert_eq!(
            filter_sql(&f, Some("ingested_at"), false),
            "1 AND ingested_at >= toDateTime(1790812800) AND ingested_at < toDateTime(1793491200)"
        );
    }
}
