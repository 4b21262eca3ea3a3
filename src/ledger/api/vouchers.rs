//! Vouchers over HTTP. Operators (operator token): create (idempotent with `request_id`, or
//! a given code and equal definition), list, revoke (once). Accounts: redeem.
//!
//! - `POST /v1/vouchers` `{"credits": "15"[, "code", "valid_from", "valid_until", "valid_for",
//!   "max_redemptions", "account_id", "description", "credits_valid_for",
//!   "credits_expire_at", "priority", "request_id"]}` -> 200 with the result (and `code`
//!   once, when it was generated)
//! - `GET /v1/vouchers` -> `{"vouchers": [...]}` (masked codes, ids)
//! - `POST /v1/vouchers/{id}/revoke` `{"reason": "..."}` -> 200 revoked (also when it was
//!   already), 404 unknown id
//! - `POST /v1/accounts/{id}/redemptions` `{"code"[, "request_id"]}` -> 200 granted, 422
//!   refused, 202 when the voucher stage did not answer in 15 s

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{LedgerApi, authorize, bad_account, bad_body, error, refused, unavailable};
use crate::ledger::client::{self, ClientError, VoucherInput};
use crate::ledger::voucher::{self, VoucherOutcome, VoucherRequest, VoucherResult, VoucherView};

async fn ask(
    api: &LedgerApi,
    req: &VoucherRequest,
    timeout: Duration,
) -> Result<VoucherResult, Response> {
    let f = api.voucher_results().await.map_err(|e| unavailable(&e))?;
    match f.request(&api.cfg, &api.producer, req, timeout).await {
        Ok(r) => Ok(r),
        Err(e @ ClientError::Timeout(..)) => Err(error(StatusCode::ACCEPTED, &e.to_string())),
        Err(e) => Err(unavailable(&e)),
    }
}

/// 200 (or 404 for an unknown voucher, 422 for another refusal) with the result.
fn result(r: &VoucherResult, extra: Option<(&str, String)>) -> Response {
    let mut body = serde_json::to_value(r).expect("a voucher result serializes");
    if let Some((k, v)) = extra {
        body[k] = json!(v);
    }
    let status = match (r.outcome, r.reason) {
        (VoucherOutcome::Refused, Some(voucher::Refusal::Unknown)) if r.action == "revoke" => {
            StatusCode::NOT_FOUND
        }
        (VoucherOutcome::Refused, _) => {
            body["error"] = json!(r.message);
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::OK,
    };
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    code: String,
    request_id: Option<String>,
}

pub(super) async fn redeem(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<RedeemBody>(&body) else {
        return bad_body(r#"{"code": "<voucher code>"}"#);
    };
    if let Some(r) = bad_account(&account) {
        return r;
    }
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
    match ask(&api, &req, Duration::from_secs(15)).await {
        Ok(r) => result(&r, None),
        Err(resp) => resp,
    }
}

fn duration(field: &str, v: Option<String>) -> Result<Option<Duration>, String> {
    v.map(|s| crate::config::values::parse_duration(&s).map_err(|e| format!("{field}: {e}")))
        .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    code: Option<String>,
    credits: serde_json::Value,
    valid_from: Option<chrono::DateTime<chrono::Utc>>,
    valid_until: Option<chrono::DateTime<chrono::Utc>>,
    valid_for: Option<String>,
    max_redemptions: Option<u32>,
    account_id: Option<String>,
    description: Option<String>,
    credits_valid_for: Option<String>,
    credits_expire_at: Option<chrono::DateTime<chrono::Utc>>,
    priority: Option<u8>,
    request_id: Option<String>,
}

pub(super) async fn create(
    State(api): State<Arc<LedgerApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let b: CreateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_body(&format!(r#"{{"credits": "15", ...}} ({e})"#)),
    };
    let valid_for = match duration("valid_for", b.valid_for) {
        Ok(d) => d.unwrap_or(Duration::from_secs(30 * 86_400)),
        Err(e) => return refused("invalid_field", &e),
    };
    let credits_valid_for = match duration("credits_valid_for", b.credits_valid_for) {
        Ok(d) => d,
        Err(e) => return refused("invalid_field", &e),
    };
    let input = VoucherInput {
        code: b.code,
        credits: match b.credits {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        },
        valid_from: b.valid_from,
        valid_until: b.valid_until,
        valid_for,
        max_redemptions: b.max_redemptions.unwrap_or(1),
        account: b.account_id,
        description: b.description.unwrap_or_default(),
        credits_valid_for,
        credits_expire_at: b.credits_expire_at,
        priority: b.priority,
        request_id: b.request_id,
    };
    let built = match client::build_voucher(&input) {
        Ok(v) => v,
        Err(r) => return refused("invalid", &r.message),
    };
    match ask(&api, &built.request, Duration::from_secs(15)).await {
        // The clear code, once, to the operator who had it generated.
        Ok(r) => result(&r, built.generated.then(|| ("code", built.code.clone()))),
        Err(resp) => resp,
    }
}

pub(super) async fn list(State(api): State<Arc<LedgerApi>>, headers: HeaderMap) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let cfg = api.cfg.clone();
    match tokio::task::spawn_blocking(move || client::list_vouchers(&cfg)).await {
        Ok(Ok(list)) => {
            let views: Vec<VoucherView> = list.iter().map(VoucherView::from).collect();
            Json(json!({"vouchers": views})).into_response()
        }
        Ok(Err(e)) => unavailable(&e),
        Err(e) => unavailable(&ClientError::Other(e.to_string())),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: String,
}

pub(super) async fn revoke(
    State(api): State<Arc<LedgerApi>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let b: RevokeBody = if body.is_empty() {
        RevokeBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad_body(&format!(r#"{{"reason": "<why>"}} ({e})"#)),
        }
    };
    let cfg = api.cfg.clone();
    let found = tokio::task::spawn_blocking(move || client::find_voucher(&cfg, &id)).await;
    let state = match found {
        Ok(Ok(s)) => s,
        Ok(Err(ClientError::Refused(r))) => return refused(r.reason.as_str(), &r.message),
        Ok(Err(ClientError::Other(m))) if m.contains("(unknown)") => {
            return error(StatusCode::NOT_FOUND, &m);
        }
        Ok(Err(e)) => return unavailable(&e),
        Err(e) => return unavailable(&ClientError::Other(e.to_string())),
    };
    let req = VoucherRequest::Revoke {
        request_id: client::new_id("revoke"),
        requested_at: chrono::Utc::now(),
        code_hash: state.def.code_hash,
        reason: b.reason,
    };
    match ask(&api, &req, Duration::from_secs(15)).await {
        Ok(r) => result(&r, None),
        Err(resp) => resp,
    }
}
