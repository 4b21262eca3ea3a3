//! An account's alert settings over HTTP, answered by the ledger itself (the operator token
//! or the account's own key):
//!
//! - `GET /v1/accounts/{id}/thresholds`: the account as the ledger holds it (balance, open
//!   grants, next expiry, thresholds in force, expiry warning, auto top-up)
//! - `PUT /v1/accounts/{id}/thresholds` `{"thresholds": ["50", "20%", "0"] | null,
//!   "expiry_warning": "7days" | null}` (a field left out keeps its value; `null` restores
//!   the default)
//! - `PUT /v1/accounts/{id}/auto-topup` `{"below": "10", "fixed": "50"}` or
//!   `{"below": "10", "refill_to": "100"}`; `DELETE` turns it off

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::Value;

use super::HttpState;
use super::accounts::{LedgerApi, account_for, api, unavailable, verdict};
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath};
use crate::ledger::client::{self, ClientError};
use crate::ledger::command::Request;
use crate::ledger::thresholds::{AutoTopup, Threshold};

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/v1/accounts/{account_id}/thresholds",
            get(show).put(thresholds),
        )
        .route(
            "/v1/accounts/{account_id}/auto-topup",
            put(auto_topup).delete(auto_topup_off),
        )
}

fn ledger_for<'a>(
    s: &'a HttpState,
    caller: &Caller,
    account: &str,
) -> Result<&'a LedgerApi, ApiError> {
    let api = api(s)?;
    account_for(caller, account)?;
    Ok(api)
}

async fn ask(api: &LedgerApi, req: Request) -> Response {
    match api.command(&req).await {
        Ok(a) => verdict(&a),
        Err(ClientError::Timeout(d, _)) => ApiError::unavailable(format!(
            "the ledger did not answer within {d:?}; ask again (a change that was sent is applied once)"
        ))
        .header(header::RETRY_AFTER, "1")
        .into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn show(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
) -> Result<Response, ApiError> {
    let api = ledger_for(&s, &caller, &account)?;
    let req = Request::AccountStatus {
        request_id: client::new_id("account"),
        account_id: account,
    };
    Ok(ask(api, req).await)
}

const EXPECTED: &str = r#"{"thresholds": ["50", "20%", "0"], "expiry_warning": "7days"}"#;

async fn thresholds(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Response, ApiError> {
    let api = ledger_for(&s, &caller, &account)?;
    let mut m = match body {
        Ok(ApiJson(Value::Object(m))) => m,
        Ok(ApiJson(_)) => {
            return Err(ApiError::refused(
                "invalid_json",
                format!("body must be {EXPECTED}"),
            ));
        }
        Err(e) => return Err(e.with("expected", EXPECTED)),
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["thresholds", "expiry_warning"].contains(&k.as_str()))
    {
        return Err(ApiError::refused(
            "unknown_field",
            format!("unknown field {k:?}; body must be {EXPECTED}"),
        ));
    }
    let thresholds = match m.remove("thresholds") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::Array(a)) => {
            let mut list = Vec::new();
            for v in &a {
                let t = match v {
                    Value::String(s) => s.parse::<Threshold>(),
                    Value::Number(n) => n.to_string().parse::<Threshold>(),
                    other => Err(format!("threshold {other} is not a string")),
                };
                list.push(t.map_err(|e| ApiError::refused("invalid_field", e))?);
            }
            Some(Some(list))
        }
        Some(other) => {
            return Err(ApiError::refused(
                "invalid_field",
                format!("thresholds must be a list or null (value {other})"),
            ));
        }
    };
    let warning = match m.remove("expiry_warning") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => match crate::config::values::parse_duration(&s) {
            Ok(d) => Some(Some(d.as_secs())),
            Err(e) => {
                return Err(ApiError::refused(
                    "invalid_field",
                    format!("expiry_warning: {e}"),
                ));
            }
        },
        Some(other) => {
            return Err(ApiError::refused(
                "invalid_field",
                format!(
                    "expiry_warning must be a duration such as \"7days\" or null (value {other})"
                ),
            ));
        }
    };
    let req = Request::SetThresholds {
        request_id: client::new_id("thresholds"),
        account_id: account,
        thresholds,
        expiry_warning_secs: warning,
    };
    Ok(ask(api, req).await)
}

async fn auto_topup(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    body: Result<ApiJson<AutoTopup>, ApiError>,
) -> Result<Response, ApiError> {
    let api = ledger_for(&s, &caller, &account)?;
    let ApiJson(rule) = body.map_err(|e| {
        e.with(
            "expected",
            r#"{"below": "10", "fixed": "50"} or {"below": "10", "refill_to": "100"}"#,
        )
    })?;
    rule.validate(api.cfg.ledger.min_topup)
        .map_err(|e| ApiError::refused("invalid_field", e))?;
    Ok(set_auto_topup(api, account, Some(rule)).await)
}

async fn auto_topup_off(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
) -> Result<Response, ApiError> {
    let api = ledger_for(&s, &caller, &account)?;
    Ok(set_auto_topup(api, account, None).await)
}

async fn set_auto_topup(api: &LedgerApi, account: String, rule: Option<AutoTopup>) -> Response {
    let req = Request::SetAutoTopup {
        request_id: client::new_id("autotopup"),
        account_id: account,
        rule,
    };
    ask(api, req).await
}
