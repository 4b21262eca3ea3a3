//! HTTP endpoints of the credits ledger: balance and paged history from ClickHouse (GET),
//! top-ups and voucher redemptions (POST, bearer token from `USAGE_AGG_API_TOKEN` or
//! `ledger.api_token_file`; 401 without it; the token is never logged).
//!
//! - `GET  /v1/accounts/{id}/balance` -> `{"account_id","balance","entries","last_entry_at"}`
//! - `GET  /v1/accounts/{id}/transactions?limit=50&before_seq=N&from=&to=` -> newest first
//!   (`from`/`to`: the entries' dates, half-open), with `next_before_seq` for the next page;
//!   an unknown or malformed parameter is a 400 naming it
//! - `POST /v1/accounts/{id}/topups` `{"amount":"25.00","reference":"pay_123"}` -> 202
//! - `POST /v1/accounts/{id}/redemptions` `{"code":"SPRING-2026-X7Q"}` -> 200 granted
//!
//! Refusals answer 422 with `{"reason": code, "message": text}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::http::params::Params;
use crate::ledger::client::{self, ClientError, ResultFollower};
use crate::ledger::grant::{GrantKind, check_account};
use crate::ledger::voucher::{self, VoucherOutcome, VoucherRequest};

/// Environment variable holding the API token.
pub const TOKEN_ENV: &str = "USAGE_AGG_API_TOKEN";

/// What the ledger endpoints need.
pub struct LedgerApi {
    cfg: Config,
    producer: FutureProducer,
    /// Started on the first redemption (it waits for the results topic to be readable).
    follower: tokio::sync::OnceCell<ResultFollower>,
    token: Option<String>,
    ch: clickhouse::Client,
}

impl LedgerApi {
    /// Reads the token (environment first, then `ledger.api_token_file`).
    pub fn new(cfg: &Config, ch: clickhouse::Client) -> anyhow::Result<LedgerApi> {
        let token = match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => match &cfg.ledger.api_token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| anyhow::anyhow!("ledger.api_token_file {}: {e}", f.display()))?
                        .trim()
                        .to_string(),
                )
                .filter(|t| !t.is_empty()),
                None => None,
            },
        };
        if token.is_none() {
            tracing::warn!(
                "no API token (USAGE_AGG_API_TOKEN or ledger.api_token_file): the ledger write endpoints answer 503"
            );
        }
        Ok(LedgerApi {
            cfg: cfg.clone(),
            producer: client::producer(cfg)?,
            follower: tokio::sync::OnceCell::new(),
            token,
            ch,
        })
    }
}

pub fn router(api: Arc<LedgerApi>) -> Router {
    Router::new()
        .route("/v1/accounts/{account_id}/balance", get(balance))
        .route("/v1/accounts/{account_id}/transactions", get(transactions))
        .route("/v1/accounts/{account_id}/topups", post(topup))
        .route("/v1/accounts/{account_id}/redemptions", post(redeem))
        .with_state(api)
}

fn refused(reason: &str, message: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"reason": reason, "message": message})),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn unavailable(e: &ClientError) -> Response {
    tracing::warn!(error = %e, "ledger request failed");
    error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

/// Equal length and bytes, compared without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` when the bearer token matches, else the answer to send.
fn authorize(api: &LedgerApi, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &api.token else {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "write endpoints are disabled: no API token is configured (USAGE_AGG_API_TOKEN or ledger.api_token_file)",
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.as_bytes(), token.as_bytes()) {
        None
    } else {
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                Json(json!({"error": "a valid bearer token is required"})),
            )
                .into_response(),
        )
    }
}

async fn balance(State(api): State<Arc<LedgerApi>>, Path(account): Path<String>) -> Response {
    if let Err(r) = check_account(&account) {
        return refused(r.reason.as_str(), &r.message);
    }
    match client::balance(&api.ch, &account).await {
        Ok(Some(b)) => Json(b).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "this account has no ledger entries (yet)",
        ),
        Err(e) => unavailable(&e),
    }
}

async fn transactions(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = check_account(&account) {
        return refused(r.reason.as_str(), &r.message);
    }
    let page =
        match Params::parse(raw.as_deref(), &["limit", "before_seq", "from", "to"]).and_then(|p| {
            Ok(client::HistoryPage {
                limit: p.number("limit", 1, 1000)?.unwrap_or(50) as u32,
                before_seq: p.number("before_seq", 1, u64::MAX)?,
                window: p.window()?,
            })
        }) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
    let limit = page.limit;
    match client::history(&api.ch, &account, &page).await {
        Ok(entries) => {
            let next = (entries.len() as u32 == limit)
                .then(|| entries.last().map(|e| e.seq))
                .flatten();
            Json(json!({
                "account_id": account,
                "transactions": entries,
                "next_before_seq": next,
            }))
            .into_response()
        }
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopupBody {
    amount: serde_json::Value,
    reference: String,
}

async fn topup(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Option<Json<TopupBody>>,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let Some(Json(body)) = body else {
        return refused(
            "invalid_json",
            "body must be {\"amount\": \"25.00\", \"reference\": \"<payment id>\"}",
        );
    };
    let amount = match &body.amount {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let g = match client::build_grant(
        &api.cfg,
        GrantKind::Topup,
        &account,
        &amount,
        &body.reference,
        None,
    ) {
        Ok(g) => g,
        Err(r) => return refused(r.reason.as_str(), &r.message),
    };
    match client::send_grant(&api.cfg, &api.producer, &g).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "grant_id": g.grant_id,
                "account_id": g.account_id,
                "amount": g.amount.to_string(),
                "status": "accepted: the balance changes when the ledger applies it (about a second)",
            })),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    code: String,
    request_id: Option<String>,
}

async fn redeem(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Option<Json<RedeemBody>>,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let Some(Json(body)) = body else {
        return refused(
            "invalid_json",
            "body must be {\"code\": \"<voucher code>\"}",
        );
    };
    if let Err(r) = check_account(&account) {
        return refused(r.reason.as_str(), &r.message);
    }
    let code = match voucher::normalize_code(&body.code) {
        Ok(c) => c,
        // A malformed code cannot exist: the same answer as an unknown one.
        Err(_) => return refused("unknown", "no voucher has this code"),
    };
    let started = api
        .follower
        .get_or_try_init(|| {
            let cfg = api.cfg.clone();
            async move {
                tokio::task::spawn_blocking(move || ResultFollower::start(&cfg))
                    .await
                    .map_err(|e| ClientError::Other(e.to_string()))?
            }
        })
        .await;
    let follower = match started {
        Ok(f) => f,
        Err(e) => return unavailable(&e),
    };
    let req = VoucherRequest::Redeem {
        request_id: body.request_id.unwrap_or_else(|| client::new_id("redeem")),
        requested_at: chrono::Utc::now(),
        code_hash: voucher::code_hash(&code),
        masked: voucher::mask(&code),
        account_id: account,
    };
    match follower
        .request(&api.cfg, &api.producer, &req, Duration::from_secs(15))
        .await
    {
        Ok(r) if r.outcome == VoucherOutcome::Granted => Json(r).into_response(),
        Ok(r) => (StatusCode::UNPROCESSABLE_ENTITY, Json(r)).into_response(),
        Err(e @ ClientError::Timeout(..)) => error(StatusCode::ACCEPTED, &e.to_string()),
        Err(e) => unavailable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
