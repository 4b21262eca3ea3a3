//! HTTP endpoints of the credits ledger (docs/credits.md, "HTTP"). Reads: balance (with open
//! grants) and paged history from ClickHouse. Writes and ledger queries answer with the
//! ledger's verdict, read back from `ledger_results` (or `voucher_results`): grants
//! ([`grants`]), account settings ([`settings`]), vouchers for operators ([`vouchers`]).
//! Every write needs `Authorization: Bearer <token>` (`USAGE_AGG_API_TOKEN` or
//! `ledger.api_token_file`; 401 without it, 503 when none is configured; never logged).
//! Error bodies are `{"error": "...", ...}`; refusals answer 422 with `reason`.

mod grants;
mod settings;
mod vouchers;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::ledger::answer::LedgerAnswer;
use crate::ledger::client::{self, ClientError, LedgerFollower, ResultFollower};
use crate::ledger::command::Request;
use crate::ledger::grant::check_account;

/// Environment variable holding the API token.
pub const TOKEN_ENV: &str = "USAGE_AGG_API_TOKEN";

/// What the ledger endpoints need.
pub struct LedgerApi {
    cfg: Config,
    producer: FutureProducer,
    /// Started on first use (each waits for its results topic to be readable).
    vouchers: tokio::sync::OnceCell<ResultFollower>,
    answers: tokio::sync::OnceCell<LedgerFollower>,
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
            vouchers: tokio::sync::OnceCell::new(),
            answers: tokio::sync::OnceCell::new(),
            token,
            ch,
        })
    }

    async fn voucher_results(&self) -> Result<&ResultFollower, ClientError> {
        self.vouchers
            .get_or_try_init(|| {
                let cfg = self.cfg.clone();
                async move {
                    tokio::task::spawn_blocking(move || ResultFollower::start(&cfg))
                        .await
                        .map_err(|e| ClientError::Other(e.to_string()))?
                }
            })
            .await
    }

    async fn ledger_answers(&self) -> Result<&LedgerFollower, ClientError> {
        self.answers
            .get_or_try_init(|| {
                let cfg = self.cfg.clone();
                async move {
                    tokio::task::spawn_blocking(move || LedgerFollower::start(&cfg))
                        .await
                        .map_err(|e| ClientError::Other(e.to_string()))?
                }
            })
            .await
    }

    /// Sends a ledger command and waits `ledger.answer_timeout` for its answer.
    async fn command(&self, req: &Request) -> Result<LedgerAnswer, ClientError> {
        let f = self.ledger_answers().await?;
        f.command(
            &self.cfg,
            &self.producer,
            req,
            self.cfg.ledger.answer_timeout,
        )
        .await
    }

    fn timeout(&self) -> Duration {
        self.cfg.ledger.answer_timeout
    }
}

pub fn router(api: Arc<LedgerApi>) -> Router {
    Router::new()
        .route("/v1/accounts/{account_id}/balance", get(balance))
        .route("/v1/accounts/{account_id}/transactions", get(transactions))
        .route("/v1/accounts/{account_id}/topups", post(grants::topup))
        .route(
            "/v1/accounts/{account_id}/adjustments",
            post(grants::adjust),
        )
        .route("/v1/accounts/{account_id}/grants", post(grants::grant))
        .route("/v1/grants/{grant_id}", get(grants::status))
        .route(
            "/v1/accounts/{account_id}/thresholds",
            get(settings::show).put(settings::thresholds),
        )
        .route(
            "/v1/accounts/{account_id}/auto-topup",
            put(settings::auto_topup).delete(settings::auto_topup_off),
        )
        .route(
            "/v1/accounts/{account_id}/redemptions",
            post(vouchers::redeem),
        )
        .route("/v1/vouchers", get(vouchers::list).post(vouchers::create))
        .route("/v1/vouchers/{voucher_id}/revoke", post(vouchers::revoke))
        .with_state(api)
}

/// 422 with the refusal's reason code.
fn refused(reason: &str, message: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"error": message, "reason": reason, "message": message})),
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

/// A JSON body that did not parse: 422 naming what was expected.
fn bad_body(expected: &str) -> Response {
    refused("invalid_json", &format!("body must be {expected}"))
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

/// Checks the path's account id: `None` when valid, else the 422.
fn bad_account(account: &str) -> Option<Response> {
    check_account(account)
        .err()
        .map(|r| refused(r.reason.as_str(), &r.message))
}

async fn balance(State(api): State<Arc<LedgerApi>>, Path(account): Path<String>) -> Response {
    if let Some(r) = bad_account(&account) {
        return r;
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

#[derive(Deserialize)]
struct Page {
    limit: Option<u32>,
    before_seq: Option<u64>,
}

async fn transactions(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    if let Some(r) = bad_account(&account) {
        return r;
    }
    let limit = page.limit.unwrap_or(50).clamp(1, 1000);
    match client::history(&api.ch, &account, limit, page.before_seq).await {
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
