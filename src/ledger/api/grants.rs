//! Grants over HTTP: top-ups, adjustments and raw grants answered with the ledger's verdict
//! (201 applied, 200 already applied, 422 refused, 202 with a status URL when the ledger did
//! not answer within `ledger.answer_timeout`), and a grant's status.
//!
//! - `POST /v1/accounts/{id}/topups` `{"amount","reference"[,"priority","expires_at","request_id"]}`
//! - `POST /v1/accounts/{id}/adjustments` `{"amount","reason","reference"[,"category","priority","expires_at","request_id"]}`
//! - `POST /v1/accounts/{id}/grants` `{"kind":"topup"|"adjustment","grant_id","amount"[,"reason","category","priority","expires_at","request_id"]}`
//! - `GET /v1/grants/{grant_id}?account_id=A`

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{LedgerApi, authorize, bad_account, bad_body, error, refused, unavailable};
use crate::ledger::answer::{GrantState, LedgerAnswer, Verdict};
use crate::ledger::client::{self, ClientError, GrantInput};
use crate::ledger::command::Request;
use crate::ledger::grant::{Grant, GrantKind, Terms, id_problem};

/// A JSON value as text: strings as they are, numbers as written.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    /// `topup` or `adjustment` (raw grants only; top-ups and adjustments imply it).
    #[serde(default)]
    kind: Option<String>,
    /// The grant id; `grant_id` is accepted as its name in raw grants.
    #[serde(default, alias = "grant_id")]
    reference: Option<String>,
    amount: Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    priority: Option<Value>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

/// The path to ask later what became of a grant.
pub fn status_url(grant_id: &str, account_id: &str) -> String {
    let mut u = url::Url::parse("http://localhost/").expect("a constant URL parses");
    u.path_segments_mut()
        .expect("an http URL has segments")
        .extend(["v1", "grants", grant_id]);
    u.query_pairs_mut().append_pair("account_id", account_id);
    format!("{}?{}", u.path(), u.query().unwrap_or_default())
}

/// The verdict as an HTTP answer.
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

/// 202: sent, no verdict in time; where to ask.
fn pending(g: &Grant, waited: std::time::Duration) -> Response {
    let url = status_url(&g.grant_id, &g.account_id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, url.clone())],
        Json(json!({
            "verdict": "pending",
            "request_id": g.request_id,
            "grant_id": g.grant_id,
            "account_id": g.account_id,
            "status_url": url,
            "message": format!("sent; the ledger gave no verdict within {waited:?}: it applies the grant once when it runs; GET the status_url for the verdict"),
        })),
    )
        .into_response()
}

async fn send(
    api: &LedgerApi,
    account: &str,
    kind: GrantKind,
    body: &Bytes,
    expected: &str,
) -> Response {
    if let Some(r) = bad_account(account) {
        return r;
    }
    let b: GrantBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return bad_body(&format!("{expected} ({e})")),
    };
    if let Some(k) = b.kind.as_deref().filter(|k| *k != kind.as_str()) {
        return refused(
            "invalid_field",
            &format!(
                "kind {k:?} does not match this endpoint ({})",
                kind.as_str()
            ),
        );
    }
    let Some(reference) = b.reference.as_deref() else {
        return refused(
            "missing_field",
            "field reference (the grant id) is required",
        );
    };
    let priority = b.priority.as_ref().map(text);
    let amount = text(&b.amount);
    let input = GrantInput {
        kind,
        account,
        amount: &amount,
        reference,
        reason: b.reason.as_deref(),
        terms: Terms {
            category: b.category.clone(),
            priority: priority.as_deref(),
            expires_at: b.expires_at.clone(),
        },
    };
    let mut g = match client::build_grant(&api.cfg, &input) {
        Ok(g) => g,
        Err(r) => return refused(r.reason.as_str(), &r.message),
    };
    if let Some(id) = b.request_id {
        if let Some(why) = id_problem(&id) {
            return refused("invalid_field", &format!("request_id {why}"));
        }
        g.request_id = Some(id);
    }
    let f = match api.ledger_answers().await {
        Ok(f) => f,
        Err(e) => return unavailable(&e),
    };
    match f.grant(&api.cfg, &api.producer, &g, api.timeout()).await {
        Ok(a) => verdict(&a),
        Err(ClientError::Timeout(..)) => pending(&g, api.timeout()),
        Err(e) => unavailable(&e),
    }
}

pub(super) async fn topup(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let expected = r#"{"amount": "25.00", "reference": "<payment id>"}"#;
    send(&api, &account, GrantKind::Topup, &body, expected).await
}

pub(super) async fn adjust(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let expected = r#"{"amount": "-5.25", "reason": "<why>", "reference": "<idempotency key>"}"#;
    send(&api, &account, GrantKind::Adjustment, &body, expected).await
}

pub(super) async fn grant(
    State(api): State<Arc<LedgerApi>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let kind = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("kind").and_then(Value::as_str).map(str::to_string));
    let kind = match kind.as_deref() {
        Some("topup") => GrantKind::Topup,
        Some("adjustment") => GrantKind::Adjustment,
        Some(other) => {
            return refused(
                "invalid_field",
                &format!(
                    "kind must be topup or adjustment (voucher grants come from redemptions) (value {other:?})"
                ),
            );
        }
        None => {
            return refused(
                "missing_field",
                "field kind is required (topup or adjustment)",
            );
        }
    };
    let expected = r#"{"kind": "topup", "grant_id": "<id>", "amount": "25", ...}"#;
    send(&api, &account, kind, &body, expected).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusQuery {
    account_id: Option<String>,
}

pub(super) async fn status(
    State(api): State<Arc<LedgerApi>>,
    Path(grant_id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(r) = authorize(&api, &headers) {
        return r;
    }
    let account = match query {
        Ok(Query(StatusQuery {
            account_id: Some(a),
        })) => a,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "query parameter account_id is required (grant ids are per account)",
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("query: {e}")),
    };
    if let Some(r) = bad_account(&account) {
        return r;
    }
    if let Some(why) = id_problem(&grant_id) {
        return refused("invalid_field", &format!("grant id {why}"));
    }
    let req = Request::GrantStatus {
        request_id: client::new_id("status"),
        account_id: account,
        grant_id,
    };
    match api.command(&req).await {
        Ok(a)
            if a.grant
                .as_ref()
                .is_some_and(|g| g.state == GrantState::Unknown) =>
        {
            let mut body = serde_json::to_value(&a).expect("an answer serializes");
            body["error"] = json!(a.message);
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
        Ok(a) => verdict(&a),
        Err(ClientError::Timeout(d, _)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": format!("the ledger did not answer within {d:?}; ask again")})),
        )
            .into_response(),
        Err(e) => unavailable(&e),
    }
}
