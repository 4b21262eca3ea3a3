//! `/v1/accounts/{id}/...`, the credits ledger over HTTP: balance (with open grants and the
//! next expiry) and paged history with the funding of each entry (GET), and voucher
//! redemptions (POST, the operator or the account's own key). Grants are in
//! [`super::grants`], alert settings in [`super::credit_settings`], vouchers for operators in
//! [`super::vouchers`]; [`LedgerApi`] is what they share. An account key asking about
//! another account gets the 404 of an account without entries.
//!
//! - `GET  /v1/accounts/{id}/balance` -> `{"account_id","balance","overdraft","entries",
//!   "last_entry_at","grants":[...],"next_expiry"}`
//! - `GET  /v1/accounts/{id}/transactions?limit=50&before_seq=N&from=&to=` -> newest first
//!   (`from`/`to`: the entries' dates, half-open), with `next_before_seq` for the next page;
//!   an unknown or malformed parameter is a 400 naming it
//! - `POST /v1/accounts/{id}/redemptions` `{"code":"SPRING-2026-X7Q"}` -> 200 granted
//!
//! Refusals answer 422 with `{"error": text, "reason": code}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath};
use crate::alerts::view::follow::SharedAlertsView;
use crate::config::Config;
use crate::http::params::Params;
use crate::kafka::acked::AckedProducer;
use crate::ledger::answer::{LedgerAnswer, Verdict};
use crate::ledger::client::{self, ClientError, LedgerFollower, ResultFollower};
use crate::ledger::command::Request;
use crate::ledger::grant::check_account;
use crate::ledger::view::follow::SharedLedgerView;
use crate::ledger::voucher::{self, VoucherOutcome, VoucherRequest, VoucherResult};

/// What the ledger endpoints need.
pub struct LedgerApi {
    pub(super) cfg: Config,
    pub(super) producer: AckedProducer,
    /// Started on first use (each waits for its results topic to be readable).
    vouchers: tokio::sync::OnceCell<ResultFollower>,
    answers: tokio::sync::OnceCell<LedgerFollower>,
    ch: clickhouse::Client,
    /// Balances and recent entries in memory, followed from Kafka (no ClickHouse).
    pub view: Arc<SharedLedgerView>,
    /// Each account's recent alerts in memory, followed from Kafka (no ClickHouse).
    pub alerts: Arc<SharedAlertsView>,
    /// Every voucher in memory, followed from the vouchers stage's changelog.
    pub voucher_list: Arc<crate::ledger::voucher::follow::SharedVoucherList>,
}

impl LedgerApi {
    pub fn new(
        cfg: &Config,
        ch: clickhouse::Client,
        view: Arc<SharedLedgerView>,
    ) -> anyhow::Result<LedgerApi> {
        Ok(LedgerApi {
            cfg: cfg.clone(),
            producer: client::producer(cfg)?,
            vouchers: tokio::sync::OnceCell::new(),
            answers: tokio::sync::OnceCell::new(),
            ch,
            view,
            alerts: Arc::default(),
            voucher_list: Arc::default(),
        })
    }

    /// The follower of `voucher_results`.
    pub(super) async fn voucher_results(&self) -> Result<&ResultFollower, ClientError> {
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

    /// The follower of `ledger_results`.
    pub(super) async fn ledger_answers(&self) -> Result<&LedgerFollower, ClientError> {
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

    /// Sends a voucher command and waits `timeout` for its result.
    pub(super) async fn voucher(
        &self,
        req: &VoucherRequest,
        timeout: Duration,
    ) -> Result<VoucherResult, ClientError> {
        let f = self.voucher_results().await?;
        f.request(&self.cfg, &self.producer, req, timeout).await
    }

    /// Sends a ledger command and waits `ledger.answer_timeout` for its answer.
    pub(super) async fn command(&self, req: &Request) -> Result<LedgerAnswer, ClientError> {
        let f = self.ledger_answers().await?;
        f.command(&self.cfg, &self.producer, req, self.timeout())
            .await
    }

    /// How long a request waits for the ledger's verdict (`ledger.answer_timeout`).
    pub(super) fn timeout(&self) -> Duration {
        self.cfg.ledger.answer_timeout
    }

    /// How long a voucher request waits for the voucher stage's verdict: 15 s, or
    /// `ledger.answer_timeout` when that is longer (redeeming also waits for the ledger).
    pub(super) fn voucher_timeout(&self) -> Duration {
        self.cfg.ledger.answer_timeout.max(Duration::from_secs(15))
    }

    /// The view, or 503 while this instance is still reading it from Kafka.
    pub(super) fn loaded_view(&self) -> Result<&SharedLedgerView, ApiError> {
        if self.view.is_loaded() {
            return Ok(&self.view);
        }
        Err(ApiError::unavailable(format!(
            "balances are loading on this instance ({}); retry in a second",
            self.view.status()
        ))
        .header(axum::http::header::RETRY_AFTER, "1"))
    }
}

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/accounts/{account_id}/balance", get(balance))
        .route("/v1/accounts/{account_id}/transactions", get(transactions))
        .route("/v1/accounts/{account_id}/redemptions", post(redeem))
}

pub(super) fn refused(reason: &str, message: &str) -> Response {
    ApiError::refused(reason, message).into_response()
}

pub(super) fn unavailable(e: &ClientError) -> Response {
    tracing::warn!(error = %e, "ledger request failed");
    ApiError::unavailable(e.to_string()).into_response()
}

/// The ledger endpoints of this process, or 503.
pub(super) fn api(s: &HttpState) -> Result<&Arc<LedgerApi>, ApiError> {
    s.ledger
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this instance does not serve the credits ledger"))
}

/// The 404 of an account without entries: also what a key gets for another account.
pub(super) fn no_entries() -> ApiError {
    ApiError::not_found("this account has no ledger entries (yet)")
}

/// Checks the account id and the caller's right to it.
pub(super) fn account_for(caller: &Caller, account: &str) -> Result<(), ApiError> {
    caller.may_see(account, no_entries)?;
    check_account(account).map_err(|r| ApiError::refused(r.reason.as_str(), r.message))
}

/// A ledger answer as an HTTP answer: 201 applied, 200 already applied or answered, 422
/// refused (with `error` and `reason`).
pub(super) fn verdict(a: &LedgerAnswer) -> Response {
    let mut body = serde_json::to_value(a).expect("an answer serializes");
    let status = match a.verdict {
        Verdict::Applied => StatusCode::CREATED,
        Verdict::AlreadyApplied | Verdict::Answered => StatusCode::OK,
        Verdict::Refused => {
            body["error"] = json!(a.message);
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    (status, Json(body)).into_response()
}

/// A voucher result as an HTTP answer: 200, or 422 (with `error`) for a refusal.
pub(super) fn voucher_answer(r: &VoucherResult) -> Response {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if r.outcome != VoucherOutcome::Refused {
        return Json(v).into_response();
    }
    // The voucher stage's answer, with the `error` every error body has.
    if let Some(m) = v.as_object_mut() {
        m.insert("error".into(), json!(r.message));
    }
    (StatusCode::UNPROCESSABLE_ENTITY, Json(v)).into_response()
}

/// `GET /v1/accounts/{id}/balance`: from the ledger view (memory, at most one ledger commit
/// behind), whatever ClickHouse's state.
async fn balance(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
) -> Result<Json<client::Balance>, ApiError> {
    let api = api(&s)?;
    account_for(&caller, &account)?;
    let shared = api.loaded_view()?;
    let view = shared.view.read().expect("view lock");
    let a = view
        .account(&account)
        .filter(|a| a.seq > 0)
        .ok_or_else(no_entries)?;
    Ok(Json(a.balance_answer(&account)))
}

/// `GET /v1/accounts/{id}/transactions`: newest first. A page the ledger view holds whole
/// (the newest `http.recent_entries`) comes from memory; an older one from ClickHouse. When
/// ClickHouse cannot answer, what memory has of the page is served with `"partial": true`
/// and `unavailable` naming the entries left out and why (not a 503 for the whole). With
/// `from`/`to` (entry dates, half-open) the page comes from ClickHouse, which can select by
/// date. Strict query: an unknown or malformed parameter is a 400 naming it.
async fn transactions(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let api = api(&s)?;
    account_for(&caller, &account)?;
    let p = Params::parse(raw.as_deref(), &["limit", "before_seq", "from", "to"])?;
    let page = client::HistoryPage {
        limit: p.number("limit", 1, 1000)?.unwrap_or(50) as u32,
        before_seq: p.number("before_seq", 1, u64::MAX)?,
        window: p.window()?,
    };
    if page.window != (None, None) {
        let entries = client::history(&api.ch, &account, &page)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "ledger entries by date: clickhouse cannot answer");
                ApiError::unavailable(format!(
                    "entries by date (from, to) come from clickhouse, which cannot answer now ({e}); leave from and to out for the recent entries"
                ))
            })?;
        let next = (entries.len() as u32 == page.limit)
            .then(|| entries.last().map(|e| e.seq))
            .flatten();
        return Ok(Json(json!({
            "account_id": account,
            "transactions": entries,
            "next_before_seq": next,
            "partial": false,
        })));
    }
    let limit = page.limit;
    let memory = {
        let shared = api.loaded_view()?;
        let view = shared.view.read().expect("view lock");
        view.page(&account, limit, page.before_seq)
    };
    let (entries, partial, unavailable) = if memory.complete {
        (memory.entries, false, None)
    } else {
        match client::history(&api.ch, &account, &page).await {
            Ok(entries) => (entries, false, None),
            Err(e) => {
                tracing::warn!(error = %e, "older ledger entries: clickhouse cannot answer");
                let ranges: Vec<String> = memory
                    .missing
                    .iter()
                    .map(|(lo, hi)| {
                        if lo == hi {
                            format!("{lo}")
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                let why = format!(
                    "entries with seq {} are only in clickhouse, which cannot answer now ({e}); the others are the ledger's own",
                    ranges.join(", ")
                );
                (memory.entries, true, Some(why))
            }
        }
    };
    // seq numbers an account's entries 1, 2, 3, ...: older ones exist below the lowest shown.
    let next = entries.last().map(|e| e.seq).filter(|s| *s > 1);
    let mut body = json!({
        "account_id": account,
        "transactions": entries,
        "next_before_seq": next,
        "partial": partial,
    });
    if let Some(why) = unavailable {
        body["unavailable"] = json!(why);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    code: String,
    request_id: Option<String>,
}

async fn redeem(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    body: Result<ApiJson<RedeemBody>, ApiError>,
) -> Response {
    let api = match api(&s).and_then(|a| account_for(&caller, &account).map(|()| a)) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let body = match body {
        Ok(ApiJson(b)) => b,
        Err(e) => {
            return e
                .with("expected", "{\"code\": \"<voucher code>\"}")
                .into_response();
        }
    };
    let code = match voucher::normalize_code(&body.code) {
        Ok(c) => c,
        // A malformed code cannot exist: the same answer as an unknown one.
        Err(_) => return refused("unknown", "no voucher has this code"),
    };
    let req = VoucherRequest::Redeem {
        request_id: body.request_id.unwrap_or_else(|| client::new_id("redeem")),
        requested_at: chrono::Utc::now(),
        code_hash: voucher::code_hash(&code),
        masked: voucher::mask(&code),
        account_id: account,
    };
    match api.voucher(&req, api.voucher_timeout()).await {
        Ok(r) => voucher_answer(&r),
        Err(e @ ClientError::Timeout(..)) => {
            (StatusCode::ACCEPTED, Json(json!({"status": e.to_string()}))).into_response()
        }
        Err(e) => unavailable(&e),
    }
}
