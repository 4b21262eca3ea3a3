//! An account's usage over a window, from ClickHouse: credits (vendor price), calls and data
//! volume per unit, grouped by asset, day, component or a dimension's value; then the markup
//! as its own figure (docs/analytics.md#how-amounts-add-up): the groups' amounts plus the
//! markup equal the total exactly.
//!
//! The markup of a window is `rollup.markup_rate` of the vendor price of its calls made
//! inside executions (direct calls carry none): exact and linear, so it equals the markup
//! the executions' debits charge for those calls while the rate is unchanged.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use super::page::window_secs;
use super::rows::dec;
use crate::money::{self, LINE_COST_SCALE};
use crate::report::Window;

/// How calls are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Asset,
    /// UTC day of the call.
    Day,
    /// `models` or `tools`.
    Component,
    /// The value of a dimension key (`""` for calls without it).
    Dimension(String),
}

impl GroupBy {
    /// `asset`, `day`, `component` or `dimension:KEY` (KEY as the event contract writes it).
    pub fn parse(s: &str) -> Result<GroupBy, String> {
        match s {
            "asset" => Ok(GroupBy::Asset),
            "day" => Ok(GroupBy::Day),
            "component" => Ok(GroupBy::Component),
            _ => match s.strip_prefix("dimension:") {
                Some(k) if is_dimension_key(k) => Ok(GroupBy::Dimension(k.to_string())),
                Some(k) => Err(format!(
                    "\"{k}\" is not a dimension key (a lowercase letter, then up to 63 lowercase letters, digits or _)"
                )),
                None => Err(format!(
                    "group_by must be asset, day, component or dimension:KEY, got \"{s}\""
                )),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            GroupBy::Asset => "asset".into(),
            GroupBy::Day => "day".into(),
            GroupBy::Component => "component".into(),
            GroupBy::Dimension(k) => format!("dimension:{k}"),
        }
    }

    /// The group's SQL expression (a dimension key is bound as the first parameter).
    fn sql(&self) -> &'static str {
        match self {
            GroupBy::Asset => "asset_id",
            GroupBy::Day => "toString(toDate(occurred_at))",
            GroupBy::Component => "if(asset_type = 'model', 'models', 'tools')",
            GroupBy::Dimension(_) => "dimension_values[indexOf(dimension_keys, ?)]",
        }
    }
}

/// The event contract's dimension key rule: `^[a-z][a-z0-9_]{0,63}$`.
pub fn is_dimension_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// One group: calls, quantities per unit, vendor price.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UsageGroup {
    pub key: String,
    /// With `group_by=asset`: the asset's type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_type: Option<String>,
    pub calls: u64,
    pub quantities: BTreeMap<String, Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// The answer: groups at vendor price (largest first), then the markup; `subtotal + markup =
/// total`, and the groups' amounts sum to `subtotal`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub account_id: String,
    pub group_by: String,
    pub groups: Vec<UsageGroup>,
    pub calls: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup_rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct GroupRow {
    k: String,
    t: String,
    calls: u64,
    amount: i128,
    in_executions: i128,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct UnitRow {
    k: String,
    u: String,
    quantity: i128,
}

/// `account`'s usage in `window` (by the calls' `occurred_at`), grouped.
pub async fn usage(
    ch: &clickhouse::Client,
    account: &str,
    window: Window,
    by: &GroupBy,
    markup_rate: Decimal,
) -> Result<Usage, clickhouse::error::Error> {
    let (from, to) = window_secs(&window);
    let key = by.sql();
    let bind_key = |q: clickhouse::query::Query| match by {
        GroupBy::Dimension(k) => q.bind(k),
        _ => q,
    };
    let filter = "account_id = ? AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)";
    let groups: Vec<GroupRow> = bind_key(ch.query(&format!(
        "SELECT {key} AS k, any(asset_type) AS t, count() AS calls, sum(cost) AS amount, sumIf(cost, execution_id != '') AS in_executions FROM usage_transactions WHERE {filter} GROUP BY k ORDER BY amount DESC, k"
    )))
    .bind(account)
    .bind(from)
    .bind(to)
    .fetch_all()
    .await?;
    let units: Vec<UnitRow> = bind_key(ch.query(&format!(
        "SELECT {key} AS k, u, sum(q) AS quantity FROM usage_transactions ARRAY JOIN units AS u, quantities AS q WHERE {filter} GROUP BY k, u"
    )))
    .bind(account)
    .bind(from)
    .bind(to)
    .fetch_all()
    .await?;
    let mut in_executions = Decimal::ZERO;
    let mut out = Usage {
        account_id: account.to_string(),
        group_by: by.name(),
        groups: Vec::with_capacity(groups.len()),
        calls: 0,
        subtotal: Decimal::ZERO,
        markup_rate: markup_rate.normalize(),
        markup: Decimal::ZERO,
        total: Decimal::ZERO,
    };
    for g in groups {
        let amount = dec(g.amount, LINE_COST_SCALE);
        in_executions += dec(g.in_executions, LINE_COST_SCALE);
        out.calls += g.calls;
        out.subtotal += amount;
        out.groups.push(UsageGroup {
            quantities: units
                .iter()
                .filter(|u| u.k == g.k)
                .map(|u| (u.u.clone(), dec(u.quantity, LINE_COST_SCALE)))
                .collect(),
            asset_type: (*by == GroupBy::Asset).then_some(g.t),
            key: g.k,
            calls: g.calls,
            amount,
        });
    }
    out.subtotal = out.subtotal.normalize();
    out.markup = money::debit_markup(in_executions, markup_rate).normalize();
    out.total = (out.subtotal + out.markup).normalize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_values() {
        assert_eq!(GroupBy::parse("asset").unwrap(), GroupBy::Asset);
        assert_eq!(
            GroupBy::parse("dimension:end_user").unwrap(),
            GroupBy::Dimension("end_user".into())
        );
        assert!(
            GroupBy::parse("dimension:End-User")
                .unwrap_err()
                .contains("End-User")
        );
        assert!(GroupBy::parse("week").unwrap_err().contains("week"));
        assert_eq!(
            GroupBy::parse("dimension:project").unwrap().name(),
            "dimension:project"
        );
    }
}
