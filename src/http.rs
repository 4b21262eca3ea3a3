//! HTTP endpoints: /metrics (Prometheus text), /healthz (alive), /readyz (progress and
//! reachability), GET /v1/executions/{id}[?account_id=A] (running cost, or the debits from
//! ClickHouse; execution ids are scoped by account, so the account narrows the answer; with
//! the spend per dimension of its calls, contract v1.1, from ClickHouse).
//! No payloads or secrets are exposed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::json;

use crate::health::Health;
use crate::metrics::METRICS;
use crate::pipeline::EngineHandle;

#[derive(Clone)]
pub struct HttpState {
    pub health: Arc<Health>,
    pub engine: Arc<std::sync::OnceLock<EngineHandle>>,
    pub clickhouse: Option<clickhouse::Client>,
    pub stall_after: Duration,
    /// Credits ledger endpoints (`/v1/accounts/...`), when this process serves them.
    pub ledger: Option<Arc<crate::ledger::api::LedgerApi>>,
}

pub fn router(state: HttpState) -> Router {
    let ledger = state.ledger.clone();
    let r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/executions/{execution_id}", get(execution))
        .with_state(state);
    match ledger {
        Some(l) => r.merge(crate::ledger::api::router(l)),
        None => r,
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let ready = s.health.not_ready_reason(s.stall_after).is_none();
    METRICS.ready.set(i64::from(ready));
    (
        [("content-type", "text/plain; version=0.0.4")],
        METRICS.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    match s.health.not_ready_reason(s.stall_after) {
        None => {
            METRICS.ready.set(1);
            (StatusCode::OK, "ready\n".to_string()).into_response()
        }
        Some(why) => {
            METRICS.ready.set(0);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response()
        }
    }
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
    breakdown_assets: Vec<String>,
    breakdown_costs: Vec<i128>,
}

fn dec(v: i128, scale: u32) -> String {
    Decimal::try_from_i128_with_scale(v, scale)
        .map(|d| d.normalize().to_string())
        .unwrap_or_else(|_| "overflow".into())
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
                json!({"value": r.dimension_value, "calls": r.calls, "cost": dec(r.cost, 12)}),
            );
        }
    }
    Some(serde_json::Value::Object(by_key))
}

/// Adds `dimensions` to a response object when ClickHouse answered.
fn with_dimensions(mut body: serde_json::Value, dims: Option<serde_json::Value>) -> Response {
    if let (Some(d), Some(obj)) = (dims, body.as_object_mut()) {
        obj.insert("dimensions".into(), d);
    }
    Json(body).into_response()
}

/// Query of `GET /v1/executions/{id}`.
#[derive(serde::Deserialize)]
struct ExecutionQuery {
    account_id: Option<String>,
}

async fn execution(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<ExecutionQuery>,
) -> Response {
    let account = q.account_id.as_deref();
    if let Some(open) = s.engine.get().and_then(|e| e.running_cost(&id, account)) {
        let dims = dimensions_of(s.clickhouse.as_ref(), &open.account_id, &id).await;
        return with_dimensions(
            json!({
                "execution_id": id,
                "status": "running",
                "account_id": open.account_id,
                "calls": open.calls,
                "subtotal": open.subtotal.to_string(),
                "markup_rate": open.markup_rate.to_string(),
                "markup": open.markup.to_string(),
                "total": open.total.to_string(),
                "first_event_at": open.first_event_at,
                "last_event_at": open.last_event_at,
                "breakdown": open.breakdown,
            }),
            dims,
        );
    }
    let Some(ch) = &s.clickhouse else {
        return not_found(&id);
    };
    let rows: Result<Vec<DebitRecord>, _> = ch
        .query("SELECT debit_id, kind, account_id, subtotal, markup_rate, markup, total, calls, breakdown_assets, breakdown_costs FROM debits WHERE execution_id = ? AND (? = '' OR account_id = ?) ORDER BY first_event_at, debit_id")
        .bind(&id)
        .bind(account.unwrap_or_default())
        .bind(account.unwrap_or_default())
        .fetch_all()
        .await;
    match rows {
        Ok(rows) if rows.is_empty() => not_found(&id),
        Ok(rows) => {
            let dims = dimensions_of(Some(ch), &rows[0].account_id, &id).await;
            let mut seen = std::collections::HashSet::new();
            let debits: Vec<_> = rows
                .into_iter()
                .filter(|r| seen.insert(r.debit_id.clone()))
                .map(|r| {
                    json!({
                        "debit_id": r.debit_id,
                        "kind": r.kind,
                        "account_id": r.account_id,
                        "calls": r.calls,
                        "subtotal": dec(r.subtotal, 18),
                        "markup_rate": dec(r.markup_rate, 18),
                        "markup": dec(r.markup, 18),
                        "total": dec(r.total, 18),
                        "breakdown": r.breakdown_assets.iter().zip(&r.breakdown_costs)
                            .map(|(a, c)| json!({"asset_id": a, "cost": dec(*c, 12)}))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect();
            with_dimensions(
                json!({"execution_id": id, "status": "closed", "debits": debits}),
                dims,
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "execution lookup in clickhouse failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "closed executions are unavailable: clickhouse cannot be reached"})),
            )
                .into_response()
        }
    }
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": format!("execution {} is neither open on this instance nor billed yet; it may run on another instance (route by the partition of its execution_id) or its debit may not have reached clickhouse", crate::rejection::excerpt(id))
        })),
    )
        .into_response()
}

/// Serves until the token is cancelled.
pub async fn serve(
    listen: &str,
    state: HttpState,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {listen}: {e}"))?;
    tracing::info!(listen, "http server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}
