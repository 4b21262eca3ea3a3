//! `GET /v1/accounts/{id}/alerts?limit=20&kind=`: an account's recent alerts, newest first
//! (the operator token, or the account's own key; another account's id is the 404 of an
//! account without entries): credit alerts (`low_balance` crossings, `grant_expiring`) and
//! spend alerts (`account_hourly_credits`, `execution_credits`), from the alerts view in
//! memory ([`crate::alerts::view`], the newest 50 per account; no ClickHouse; 503 while this
//! instance is still reading it from Kafka).
//!
//! -> `{"account_id", "alerts": [{"alert_id", "at", "kind", "crossing", "threshold",
//! "threshold_share", "balance", "amount", "execution_id", "grant_id", "expires_at"}]}`;
//! money as decimal strings, null where a kind has no such field (schema/api/alerts.json).
//! Strict query string: an unknown, repeated or malformed parameter is a 400 naming it.

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::HttpState;
use super::accounts::{account_for, api};
use super::auth::Caller;
use super::error::ApiPath;
use super::params::{ApiError, Params};
use crate::alerts::view::KEEP;

/// The kinds of alert listed (`kind=`).
pub const KINDS: [&str; 4] = [
    "low_balance",
    "grant_expiring",
    "account_hourly_credits",
    "execution_credits",
];

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/accounts/{account_id}/alerts", get(list))
}

async fn list(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let api = api(&s)?;
    account_for(&caller, &account)?;
    let p = Params::parse(raw.as_deref(), &["limit", "kind"])?;
    let limit = p.number("limit", 1, KEEP as u64)?.unwrap_or(20) as usize;
    let kind = match p.get("kind") {
        None => None,
        Some(k) if KINDS.contains(&k) => Some(k),
        Some(k) => {
            return Err(ApiError::parameter(
                "kind",
                Some(k),
                format!("kind must be one of {}", KINDS.join(", ")),
            ));
        }
    };
    if !api.alerts.is_loaded() {
        return Err(ApiError::unavailable(
            "alerts are loading on this instance (reading the alerts topics); retry in a second",
        )
        .header(header::RETRY_AFTER, "1"));
    }
    let rows = api
        .alerts
        .view
        .read()
        .expect("alerts lock")
        .recent(&account, kind, limit);
    Ok(Json(json!({"account_id": account, "alerts": rows})))
}
