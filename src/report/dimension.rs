//! `report --group-by dimension:KEY`: the `usage_transactions` rows (contract v1.1 dimensions)
//! in, spend per value of one dimension key out: calls, accounts and cost before markup, the
//! calls without that key as one `(none)` row, so that the values add up to the total.

use serde_json::json;

use super::{ReportFilter, dec, filter_sql};
use crate::event::dimensions::is_valid_key;

/// Parses a `--group-by` value: `dimension:KEY` -> `KEY` (the contract's key pattern).
pub fn parse_group_by(s: &str) -> Result<String, String> {
    let key = s.strip_prefix("dimension:").ok_or_else(|| {
        format!("--group-by {s:?} is not supported; use dimension:KEY, e.g. dimension:project")
    })?;
    if !is_valid_key(key) {
        return Err(format!(
            "--group-by {s:?}: {key:?} is not a dimension key (^[a-z][a-z0-9_]{{0,63}}$)"
        ));
    }
    Ok(key.to_string())
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ValueRow {
    value: String,
    calls: u64,
    accounts: u64,
    cost: i128,
}

/// Spend per value of `key` over the lines the filter selects, most expensive first (at most
/// `top` values, plus the totals over all of them).
pub async fn build(
    ch: &clickhouse::Client,
    f: &ReportFilter,
    key: &str,
) -> anyhow::Result<serde_json::Value> {
    let top = if f.top == 0 {
        usize::MAX
    } else {
        f.top as usize
    };
    let w = filter_sql(f, Some("occurred_at"), true);
    let q = ch.query(&format!(
        "SELECT dimension_values[indexOf(dimension_keys, ?)] AS value, count() AS calls, uniqExact(account_id) AS accounts, sum(cost) AS cost FROM usage_transactions WHERE {w} GROUP BY value ORDER BY cost DESC, value"
    ));
    // Placeholders bind in text order: the key, then the account filter.
    let q = q.bind(key);
    let q = match &f.account {
        Some(a) => q.bind(a),
        None => q,
    };
    let rows: Vec<ValueRow> = q.fetch_all().await?;
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let cost: i128 = rows.iter().map(|r| r.cost).sum();
    let values: Vec<_> = rows
        .iter()
        .take(top)
        .map(|r| {
            json!({
                "value": (!r.value.is_empty()).then_some(&r.value),
                "calls": r.calls,
                "accounts": r.accounts,
                "cost": dec(r.cost, 12).to_string(),
            })
        })
        .collect();
    Ok(json!({
        "dimension": key,
        "values": values,
        "distinct_values": rows.iter().filter(|r| !r.value.is_empty()).count(),
        "calls": calls,
        "cost": dec(cost, 12).to_string(),
    }))
}

/// Renders one group as a text table (costs rounded for display like the rest of the text
/// report; JSON keeps them exact).
pub fn render(g: &serde_json::Value) -> String {
    use super::table::{self, Align::Left, Align::Right};
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nSpend by dimension {} (cost before markup, credits)",
        g["dimension"].as_str().unwrap_or_default()
    );
    // serde_json::Value ignores width and alignment when formatted: cells are strings.
    let num = |v: &serde_json::Value| v.as_u64().map(|n| n.to_string()).unwrap_or_default();
    let cost = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|c| c.parse::<rust_decimal::Decimal>().ok())
            .map(super::display_amount)
            .unwrap_or_default()
    };
    let mut rows: Vec<Vec<String>> = g["values"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                v["value"].as_str().unwrap_or("(none)").to_string(),
                num(&v["calls"]),
                num(&v["accounts"]),
                cost(&v["cost"]),
            ]
        })
        .collect();
    rows.push(vec![
        format!("all ({} values)", num(&g["distinct_values"])),
        num(&g["calls"]),
        String::new(),
        cost(&g["cost"]),
    ]);
    o.push_str(&table::render(
        &[
            ("value", Left),
            ("calls", Right),
            ("accounts", Right),
            ("cost", Right),
        ],
        &rows,
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_names_a_dimension_key() {
        assert_eq!(parse_group_by("dimension:project").unwrap(), "project");
        assert!(
            parse_group_by("project")
                .unwrap_err()
                .contains("dimension:KEY")
        );
        assert!(parse_group_by("dimension:Project").is_err());
        assert!(parse_group_by("dimension:").is_err());
    }

    #[test]
    fn renders_the_none_row_and_totals() {
        let g = json!({"dimension":"project","values":[
            {"value":"apollo","calls":2,"accounts":1,"cost":"0.5"},
            {"value":null,"calls":1,"accounts":1,"cost":"0.1"}],
            "distinct_values":1,"calls":3,"cost":"0.6"});
        let t = render(&g);
        assert!(t.contains("Spend by dimension project"), "{t}");
        assert!(
            t.contains("apollo") && t.contains("(none)") && t.contains("0.6000"),
            "{t}"
        );
        // Aligned: every table line ends at the cost column's right edge.
        let ends: Vec<usize> = t.lines().skip(2).map(|l| l.chars().count()).collect();
        assert!(ends.len() == 4 && ends.iter().all(|e| *e == ends[0]), "{t}");
    }
}
