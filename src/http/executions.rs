//! `GET /v1/executions/{id}[?account_id=A]`: one shape with a status: the running cost of
//! an execution open on this instance, or the closed execution's debits from ClickHouse.
//! Execution ids are scoped by account, so the account narrows the answer (an account key
//! is always narrowed to its own account: another account's execution answers 404); with
//! the spend per dimension of its calls (contract v1.1), from ClickHouse.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::json;

use super::HttpState;
use super::auth::Caller;
use super::error::{ApiError, ApiPath, ApiQuery};
use axum::extract::State;

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/executions/{execution_id}", get(execution))
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct DebitRecord {
    debit_id: String,
    kind: String,
    account_id: String,
    subtotal: i128,
    markup_rate: i128,
    markup: i128,
    total: i128,
    calls: u32,
    first_event_at: u32,
    last_event_at: u32,
    breakdown_assets: Vec<String>,
    breakdown_costs: Vec<i128>,
}

fn dec(v: i128, scale: u32) -> Decimal {
    Decimal::try_from_i128_with_scale(v, scale)
        .map(|d| d.normalize())
        .unwrap_or_default()
}

/// One asset's share of an execution's cost (credits, before markup).
#[derive(Debug, Serialize, PartialEq)]
pub struct AssetCost {
    pub asset_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

/// One debit of a closed execution (the execution debit, then adjustments for late calls).
#[derive(Debug, Serialize, PartialEq)]
pub struct DebitRef {
    pub debit_id: String,
    pub kind: String,
    pub account_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

/// `GET /v1/executions/{id}`: the same shape whether the execution is still open on this
/// instance (`status: "running"`, its cost so far, `debits: []`) or closed and billed
/// (`status: "closed"`, sums over its debits in ClickHouse). Amounts are decimal strings in
/// credits; times RFC 3339 UTC.
#[derive(Debug, Serialize, PartialEq)]
pub struct ExecutionView {
    pub execution_id: String,
    pub status: &'static str,
    pub account_id: String,
    pub calls: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup_rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
    pub breakdown: Vec<AssetCost>,
    pub debits: Vec<DebitRef>,
    /// Spend per dimension key and value of the calls already in ClickHouse
    /// (`{"project": [{"value", "calls", "cost"}]}`), null when ClickHouse cannot answer.
    pub dimensions: Option<serde_json::Value>,
}

impl ExecutionView {
    fn running(id: &str, open: &crate::debit::Debit) -> Self {
        ExecutionView {
            execution_id: id.to_string(),
            status: "running",
            account_id: open.account_id.clone(),
            calls: u64::from(open.calls),
            subtotal: open.subtotal,
            markup_rate: open.markup_rate,
            markup: open.markup,
            total: open.total,
            first_event_at: open.first_event_at,
            last_event_at: open.last_event_at,
            breakdown: open
                .breakdown
                .iter()
                .map(|b| AssetCost {
                    asset_id: b.asset_id.clone(),
                    cost: b.cost,
                })
                .collect(),
            debits: Vec::new(),
            dimensions: None,
        }
    }

    /// Sums a closed execution's debits (each id once); None when there are none.
    fn closed(id: &str, rows: Vec<DebitRecord>) -> Option<Self> {
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<DebitRecord> = rows
            .into_iter()
            .filter(|r| seen.insert(r.debit_id.clone()))
            .collect();
        let first = rows.first()?;
        let ts = |s: u32| DateTime::<Utc>::from_timestamp(i64::from(s), 0).unwrap_or_default();
        let mut v = ExecutionView {
            execution_id: id.to_string(),
            status: "closed",
            account_id: first.account_id.clone(),
            calls: 0,
            subtotal: Decimal::ZERO,
            markup_rate: dec(first.markup_rate, 18),
            markup: Decimal::ZERO,
            total: Decimal::ZERO,
            first_event_at: ts(first.first_event_at),
            last_event_at: ts(first.last_event_at),
            breakdown: Vec::new(),
            debits: Vec::new(),
            dimensions: None,
        };
        let mut by_asset: std::collections::BTreeMap<String, Decimal> = Default::default();
        for r in &rows {
            v.calls += u64::from(r.calls);
            v.subtotal += dec(r.subtotal, 18);
            v.markup += dec(r.markup, 18);
            v.total += dec(r.total, 18);
            v.first_event_at = v.first_event_at.min(ts(r.first_event_at));
            v.last_event_at = v.last_event_at.max(ts(r.last_event_at));
            for (a, c) in r.breakdown_assets.iter().zip(&r.breakdown_costs) {
                *by_asset.entry(a.clone()).or_default() += dec(*c, 12);
            }
            v.debits.push(DebitRef {
                debit_id: r.debit_id.clone(),
                kind: r.kind.clone(),
                account_id: r.account_id.clone(),
                total: dec(r.total, 18),
            });
        }
        v.breakdown = by_asset
            .into_iter()
            .map(|(asset_id, cost)| AssetCost {
                asset_id,
                cost: cost.normalize(),
            })
            .collect();
        v.subtotal = v.subtotal.normalize();
        v.markup = v.markup.normalize();
        v.total = v.total.normalize();
        Some(v)
    }
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct DimensionRecord {
    dimension_key: String,
    dimension_value: String,
    calls: u64,
    cost: i128,
}

/// Spend per dimension key and value of the execution's calls already in ClickHouse:
/// `{"project": [{"value", "calls", "cost"}], ...}`, cost before markup. `None` when
/// ClickHouse is not configured or cannot answer (the rest of the response still holds).
async fn dimensions_of(
    ch: Option<&clickhouse::Client>,
    account_id: &str,
    execution_id: &str,
) -> Option<serde_json::Value> {
    let rows: Vec<DimensionRecord> = ch?
        .query("SELECT dimension_key, dimension_value, count() AS calls, sum(cost) AS cost FROM usage_transactions ARRAY JOIN dimension_keys AS dimension_key, dimension_values AS dimension_value WHERE account_id = ? AND execution_id = ? GROUP BY dimension_key, dimension_value ORDER BY dimension_key, cost DESC, dimension_value")
        .bind(account_id)
        .bind(execution_id)
        .fetch_all()
        .await
        .map_err(|e| tracing::warn!(error = %e, "execution dimensions lookup in clickhouse failed"))
        .ok()?;
    let mut by_key = serde_json::Map::new();
    for r in rows {
        let list = by_key
            .entry(r.dimension_key)
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = list {
            list.push(
                json!({"value": r.dimension_value, "calls": r.calls, "cost": dec(r.cost, 12).to_string()}),
            );
        }
    }
    Some(serde_json::Value::Object(by_key))
}

/// Query of `GET /v1/executions/{id}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutionQuery {
    account_id: Option<String>,
}

async fn execution(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExecutionQuery>,
) -> Response {
    let scoped = match caller.scope(q.account_id.as_deref(), || not_found_error(&id)) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let account = scoped.as_deref();
    if let Some(open) = s.engine.get().and_then(|e| e.running_cost(&id, account)) {
        let mut v = ExecutionView::running(&id, &open);
        v.dimensions = dimensions_of(s.clickhouse.as_ref(), &open.account_id, &id).await;
        return Json(v).into_response();
    }
    let Some(ch) = &s.clickhouse else {
        return not_found(&id);
    };
    let rows: Result<Vec<DebitRecord>, _> = ch
        .query("SELECT debit_id, kind, account_id, subtotal, markup_rate, markup, total, calls, toUInt32(first_event_at) AS first_event_at, toUInt32(last_event_at) AS last_event_at, breakdown_assets, breakdown_costs FROM debits WHERE execution_id = ? AND (? = '' OR account_id = ?) ORDER BY first_event_at, debit_id")
        .bind(&id)
        .bind(account.unwrap_or_default())
        .bind(account.unwrap_or_default())
        .fetch_all()
        .await;
    if let Ok(rows) = &rows {
        let accounts: std::collections::HashSet<&str> =
            rows.iter().map(|r| r.account_id.as_str()).collect();
        if accounts.len() > 1 {
            return ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "execution {} exists in {} accounts; ask with ?account_id=",
                    crate::rejection::excerpt(&id),
                    accounts.len()
                ),
            )
            .into_response();
        }
    }
    match rows.map(|r| ExecutionView::closed(&id, r)) {
        Ok(None) => not_found(&id),
        Ok(Some(mut v)) => {
            v.dimensions = dimensions_of(Some(ch), &v.account_id, &id).await;
            Json(v).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "execution lookup in clickhouse failed");
            ApiError::unavailable("closed executions are unavailable: clickhouse cannot be reached")
                .into_response()
        }
    }
}

fn not_found(id: &str) -> Response {
    not_found_error(id).into_response()
}

/// The one 404 of an execution: also what an account key gets for another account's.
fn not_found_error(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "execution {} is neither open on this instance nor billed yet; it may run on another instance (route by the partition of its execution_id) or its debit may not have reached clickhouse",
        crate::rejection::excerpt(id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &ExecutionView) -> Vec<String> {
        let j = serde_json::to_value(v).unwrap();
        j.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn running_and_closed_executions_have_one_shape() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let open = crate::debit::Debit {
            debit_id: "x".into(),
            kind: crate::debit::DebitKind::AgentExecution,
            account_id: "acct".into(),
            execution_id: Some("e1".into()),
            plan: "default".into(),
            plan_version: None,
            subtotal: d("0.8"),
            markup_rate: d("0.2"),
            markup: d("0.16"),
            total: d("0.96"),
            calls: 3,
            first_event_at: t,
            last_event_at: t,
            breakdown: vec![],
            correction: None,
        };
        let running = ExecutionView::running("e1", &open);
        let scaled = |s: &str, scale: u32| {
            let mut v = d(s);
            v.rescale(scale);
            v.mantissa()
        };
        let row = |id: &str, kind: &str, sub: &str, total: &str, at: u32| DebitRecord {
            debit_id: id.into(),
            kind: kind.into(),
            account_id: "acct".into(),
            subtotal: scaled(sub, 18),
            markup_rate: scaled("0.2", 18),
            markup: scaled(total, 18) - scaled(sub, 18),
            total: scaled(total, 18),
            calls: 1,
            first_event_at: at,
            last_event_at: at,
            breakdown_assets: vec!["llm".into()],
            breakdown_costs: vec![scaled(sub, 12)],
        };
        let closed = ExecutionView::closed(
            "e1",
            vec![
                row("d1", "agent_execution", "0.8", "0.96", 100),
                row("d2", "adjustment", "0.1", "0.12", 200),
                row("d1", "agent_execution", "0.8", "0.96", 100),
            ],
        )
        .unwrap();
        assert_eq!(keys(&running), keys(&closed));
        assert_eq!(running.status, "running");
        assert_eq!(closed.status, "closed");
        assert_eq!(closed.total, d("1.08"), "each debit once");
        assert_eq!(
            closed.breakdown,
            vec![AssetCost {
                asset_id: "llm".into(),
                cost: d("0.9")
            }]
        );
        assert_eq!(closed.debits.len(), 2);
        assert_eq!(closed.last_event_at.timestamp(), 200);
        assert!(ExecutionView::closed("e1", vec![]).is_none());
    }
}
