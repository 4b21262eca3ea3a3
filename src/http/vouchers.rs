//! Vouchers for operators over HTTP (operator token): create (idempotent with `request_id`,
//! or a given code and equal definition), list, revoke (once). Redemptions are in
//! [`super::accounts`].
//!
//! - `POST /v1/vouchers` `{"credits": "15"[, "code", "valid_from", "valid_until", "valid_for",
//!   "max_redemptions", "account_id", "description", "credits_valid_for",
//!   "credits_expire_at", "priority", "request_id"]}` -> 200 with the result (and `code`
//!   once, when it was generated)
//! - `GET /v1/vouchers?state=&limit=50&offset=0` -> `{"vouchers": [{..., "state"}], "total",
//!   "next_offset"}` (masked codes, ids; the oldest first), `state` one of `active`,
//!   `not_yet_valid`, `expired`, `used_up`, `revoked` (now); strict query string. From the
//!   voucher list in memory ([`crate::ledger::voucher::follow`]: the vouchers stage's
//!   changelog, followed), after it has read what was committed before the request
//! - `POST /v1/vouchers/{id}/revoke` `{"reason": "..."}` -> 200 revoked (also when it was
//!   already), 404 for an unknown id

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use super::accounts::{LedgerApi, api, refused, unavailable, voucher_answer};
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath};
use super::params::Params;
use crate::ledger::client::{self, ClientError, VoucherInput};
use crate::ledger::voucher::{VoucherRequest, VoucherView};

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/vouchers", get(list).post(create))
        .route("/v1/vouchers/{voucher_id}/revoke", post(revoke))
}

fn operator<'a>(s: &'a HttpState, caller: &Caller, what: &str) -> Result<&'a LedgerApi, ApiError> {
    let api = api(s)?;
    caller.require_operator(what)?;
    Ok(api)
}

async fn ask(api: &LedgerApi, req: &VoucherRequest, extra: Option<(&str, String)>) -> Response {
    match api.voucher(req, api.voucher_timeout()).await {
        Ok(r) => {
            let mut resp = voucher_answer(&r);
            if let Some((k, v)) = extra
                && resp.status() == StatusCode::OK
            {
                let mut body = serde_json::to_value(&r).expect("a voucher result serializes");
                body[k] = json!(v);
                resp = Json(body).into_response();
            }
            resp
        }
        Err(e @ ClientError::Timeout(..)) => {
            (StatusCode::ACCEPTED, Json(json!({"status": e.to_string()}))).into_response()
        }
        Err(e) => unavailable(&e),
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

async fn create(
    State(s): State<HttpState>,
    caller: Caller,
    body: Result<ApiJson<CreateBody>, ApiError>,
) -> Response {
    let api = match operator(&s, &caller, "creating a voucher") {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let b = match body {
        Ok(ApiJson(b)) => b,
        Err(e) => {
            return e
                .with("expected", r#"{"credits": "15", ...}"#)
                .into_response();
        }
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
    // The clear code, once, to the operator who had it generated.
    let extra = built.generated.then(|| ("code", built.code.clone()));
    ask(api, &built.request, extra).await
}

/// What a voucher is at `now`: revoked, used up, not yet valid, expired or active.
pub fn state(v: &VoucherView, now: chrono::DateTime<chrono::Utc>) -> &'static str {
    if v.revoked.is_some() {
        "revoked"
    } else if v.redeemed >= v.max_redemptions {
        "used_up"
    } else if now < v.valid_from {
        "not_yet_valid"
    } else if now >= v.valid_until {
        "expired"
    } else {
        "active"
    }
}

const STATES: [&str; 5] = ["active", "not_yet_valid", "expired", "used_up", "revoked"];

async fn list(State(s): State<HttpState>, caller: Caller, RawQuery(raw): RawQuery) -> Response {
    let api = match operator(&s, &caller, "listing vouchers") {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let page = (|| {
        let p = Params::parse(raw.as_deref(), &["state", "limit", "offset"])?;
        let want = match p.get("state") {
            None => None,
            Some(v) if STATES.contains(&v) => Some(v.to_string()),
            Some(v) => {
                return Err(ApiError::parameter(
                    "state",
                    Some(v),
                    format!("state must be one of {}", STATES.join(", ")),
                ));
            }
        };
        let limit = p.number("limit", 1, 1000)?.unwrap_or(50) as usize;
        let offset = p.number("offset", 0, u64::from(u32::MAX))?.unwrap_or(0) as usize;
        Ok((want, limit, offset))
    })();
    let (want, limit, offset) = match page {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let list = api.voucher_list.clone();
    if !list.is_loaded() {
        return ApiError::unavailable(
            "vouchers are loading on this instance (reading the voucher state); retry in a second",
        )
        .header(axum::http::header::RETRY_AFTER, "1")
        .into_response();
    }
    // What was committed before this request is in the list (a voucher just created),
    // waiting at most `ledger.answer_timeout` for this instance to have read it.
    let cfg = api.cfg.clone();
    let l = list.clone();
    let wait = api.timeout();
    match tokio::task::spawn_blocking(move || l.sync(&cfg, wait)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            tracing::debug!(
                ?wait,
                "voucher list: not caught up in time; listing what it has"
            )
        }
        Ok(Err(e)) => return unavailable(&ClientError::Other(e.to_string())),
        Err(e) => return unavailable(&ClientError::Other(e.to_string())),
    }
    let now = chrono::Utc::now();
    let rows: Vec<serde_json::Value> = list
        .all()
        .into_iter()
        .filter_map(|v| {
            let st = state(&v, now);
            if want.as_deref().is_some_and(|w| w != st) {
                return None;
            }
            let mut j = serde_json::to_value(&v).expect("a voucher view serializes");
            j["state"] = json!(st);
            Some(j)
        })
        .collect();
    let total = rows.len();
    let shown: Vec<_> = rows.into_iter().skip(offset).take(limit).collect();
    let next = (offset + shown.len() < total).then_some(offset + shown.len());
    Json(json!({"vouchers": shown, "total": total, "next_offset": next})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: String,
}

async fn revoke(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let api = match operator(&s, &caller, "revoking a voucher") {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    // The body is optional: none (or only whitespace) revokes without a reason.
    let reason = if body.trim_ascii().is_empty() {
        String::new()
    } else {
        match serde_json::from_slice::<RevokeBody>(&body) {
            Ok(b) => b.reason,
            Err(e) => {
                return ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("body: {e}"))
                    .with("reason", "invalid_json")
                    .with("expected", "{\"reason\": \"<why>\"} or no body")
                    .into_response();
            }
        }
    };
    let cfg = api.cfg.clone();
    let found = tokio::task::spawn_blocking(move || client::find_voucher(&cfg, &id)).await;
    let state = match found {
        Ok(Ok(s)) => s,
        Ok(Err(ClientError::Refused(r))) => return refused(r.reason.as_str(), &r.message),
        Ok(Err(ClientError::Other(m))) if m.contains("(unknown)") => {
            return ApiError::not_found(m).into_response();
        }
        Ok(Err(e)) => return unavailable(&e),
        Err(e) => return unavailable(&ClientError::Other(e.to_string())),
    };
    let req = VoucherRequest::Revoke {
        request_id: client::new_id("revoke"),
        requested_at: chrono::Utc::now(),
        code_hash: state.def.code_hash,
        reason,
    };
    ask(api, &req, None).await
}
