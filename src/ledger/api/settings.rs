//! An account's alert settings over HTTP, answered by the ledger itself:
//!
//! - `GET /v1/accounts/{id}/thresholds`: the account as the ledger holds it (balance, open
//!   grants, next expiry, thresholds in force, expiry warning, auto top-up)
//! - `PUT /v1/accounts/{id}/thresholds` `{"thresholds": ["50", "20%", "0"] | null,
//!   "expiry_warning": "7days" | null}` (a field left out keeps its value; `null` restores
//!   the default)
//! - `PUT /v1/accounts/{id}/auto-topup` `{"below": "10", "fixed": "50"}` or
//!   `{"below": "10", "refill_to": "100"}`; `DELETE` turns it off

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::grants::verdict;
use super::{LedgerApi, authorize, bad_account, bad_body, refused, unavailable};
use crate::ledger::client::{self, ClientError};
use crate::ledger::command::Request;
use crate::ledger::thresholds::{AutoTopup, Threshold};

async fn ask(api: &LedgerApi, req: Request) -> Response {
    match api.command(&req).await {
        Ok(a) => verdict(&a),
        Err(ClientError::Timeout(d, _)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            Json(json!({"error": format!("the ledger did not answer within {d:?}; ask again (a change that was sent is applied once)")})),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}

pub(super) async fn show(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = authorize(&api, &headers).or_else(|| bad_account(&account)) {
        return r;
    }
    let req = Request::AccountStatus {
        request_id: client::new_id("account"),
        account_id: account,
    };
    ask(&api, req).await
}

pub(super) async fn thresholds(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers).or_else(|| bad_account(&account)) {
        return r;
    }
    let expected = r#"{"thresholds": ["50", "20%", "0"], "expiry_warning": "7days"}"#;
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&body) else {
        return bad_body(expected);
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["thresholds", "expiry_warning"].contains(&k.as_str()))
    {
        return refused(
            "unknown_field",
            &format!("unknown field {k:?}; body must be {expected}"),
        );
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
                match t {
                    Ok(t) => list.push(t),
                    Err(e) => return refused("invalid_field", &e),
                }
            }
            Some(Some(list))
        }
        Some(other) => {
            return refused(
                "invalid_field",
                &format!("thresholds must be a list or null (value {other})"),
            );
        }
    };
    let warning = match m.remove("expiry_warning") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => match crate::config::values::parse_duration(&s) {
            Ok(d) => Some(Some(d.as_secs())),
            Err(e) => return refused("invalid_field", &format!("expiry_warning: {e}")),
        },
        Some(other) => {
            return refused(
                "invalid_field",
                &format!(
                    "expiry_warning must be a duration such as \"7days\" or null (value {other})"
                ),
            );
        }
    };
    let req = Request::SetThresholds {
        request_id: client::new_id("thresholds"),
        account_id: account,
        thresholds,
        expiry_warning_secs: warning,
    };
    ask(&api, req).await
}

pub(super) async fn auto_topup(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers).or_else(|| bad_account(&account)) {
        return r;
    }
    let rule: AutoTopup = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_body(&format!(
                r#"{{"below": "10", "fixed": "50"}} or {{"below": "10", "refill_to": "100"}} ({e})"#
            ));
        }
    };
    if let Err(e) = rule.validate(api.cfg.ledger.min_topup) {
        return refused("invalid_field", &e);
    }
    let req = Request::SetAutoTopup {
        request_id: client::new_id("autotopup"),
        account_id: account,
        rule: Some(rule),
    };
    ask(&api, req).await
}

pub(super) async fn auto_topup_off(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = authorize(&api, &headers).or_else(|| bad_account(&account)) {
        return r;
    }
    let req = Request::SetAutoTopup {
        request_id: client::new_id("autotopup"),
        account_id: account,
        rule: None,
    };
    ask(&api, req).await
}
