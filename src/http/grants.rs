//! Grants over HTTP, answered with the ledger's verdict read back from `ledger_results`: 201
//! applied, 200 already applied (the original entry), 422 refused (with the reason), 202
//! with a status URL when the ledger did not answer within `ledger.answer_timeout`. Top-ups,
//! adjustments and raw grants need the operator token; a grant's status is also open to
//! the account's own key.
//!
//! - `POST /v1/accounts/{id}/topups` `{"amount","reference"[,"priority","expires_at","request_id"]}`
//! - `POST /v1/accounts/{id}/adjustments` `{"amount","reason","reference"[,"category","priority","expires_at","request_id"]}`
//! - `POST /v1/accounts/{id}/grants` `{"kind":"topup"|"adjustment","grant_id","amount"[,"reason","category","priority","expires_at","request_id"]}`
//! - `GET /v1/grants/{grant_id}?account_id=A` -> the grant's state (404 when the ledger has
//!   none of that id for the account)

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::HttpState;
use super::accounts::{LedgerApi, account_for, api, refused, unavailable, verdict};
use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::ledger::answer::GrantState;
use crate::ledger::client::{self, ClientError, GrantInput};
use crate::ledger::command::Request;
use crate::ledger::grant::{Grant, GrantKind, Terms, id_problem};

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/accounts/{account_id}/topups", post(topup))
        .route("/v1/accounts/{account_id}/adjustments", post(adjust))
        .route("/v1/accounts/{account_id}/grants", post(grant))
        .route("/v1/grants/{grant_id}", get(status))
}

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
    /// `topup` or `adjustment`: required for raw grants, else it must match the endpoint.
    #[serde(default)]
    kind: Option<String>,
    /// The grant id (`grant_id` is accepted as its name).
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

/// The path to ask later what became of a grant (ids percent-encoded).
pub fn status_url(grant_id: &str, account_id: &str) -> String {
    let mut u = url::Url::parse("http://localhost/").expect("a constant URL parses");
    u.path_segments_mut()
        .expect("an http URL has segments")
        .extend(["v1", "grants", grant_id]);
    u.query_pairs_mut().append_pair("account_id", account_id);
    format!("{}?{}", u.path(), u.query().unwrap_or_default())
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
            "message": format!("sent; the ledger gave no verdict within {waited:?}: it applies the grant once when it runs; GET the status_url for its verdict"),
        })),
    )
        .into_response()
}

/// Builds, sends and answers one grant.
async fn send(api: &LedgerApi, account: &str, kind: GrantKind, b: GrantBody) -> Response {
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
            "field reference (the grant id, the idempotency key) is required",
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

/// The ledger API, the caller's right to `account` and the operator's, and the body.
fn operator_request<'a>(
    s: &'a HttpState,
    caller: &Caller,
    account: &str,
    what: &str,
    body: Result<ApiJson<GrantBody>, ApiError>,
    expected: &str,
) -> Result<(&'a LedgerApi, GrantBody), ApiError> {
    let api = api(s)?;
    account_for(caller, account).and_then(|()| caller.require_operator(what))?;
    match body {
        Ok(ApiJson(b)) => Ok((api, b)),
        Err(e) => Err(e.with("expected", expected)),
    }
}

async fn topup(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    body: Result<ApiJson<GrantBody>, ApiError>,
) -> Response {
    let expected = r#"{"amount": "25.00", "reference": "<payment id>"}"#;
    match operator_request(
        &s,
        &caller,
        &account,
        "a top-up (a payment)",
        body,
        expected,
    ) {
        Ok((api, b)) => send(api, &account, GrantKind::Topup, b).await,
        Err(e) => e.into_response(),
    }
}

async fn adjust(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    body: Result<ApiJson<GrantBody>, ApiError>,
) -> Response {
    let expected = r#"{"amount": "-5.25", "reason": "<why>", "reference": "<idempotency key>"}"#;
    match operator_request(&s, &caller, &account, "an adjustment", body, expected) {
        Ok((api, b)) => send(api, &account, GrantKind::Adjustment, b).await,
        Err(e) => e.into_response(),
    }
}

async fn grant(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    body: Result<ApiJson<GrantBody>, ApiError>,
) -> Response {
    let expected = r#"{"kind": "topup", "grant_id": "<id>", "amount": "25"}"#;
    let (api, b) = match operator_request(&s, &caller, &account, "a grant", body, expected) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let kind = match b.kind.as_deref() {
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
    send(api, &account, kind, b).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    account_id: Option<String>,
}

/// The 404 of a grant the ledger does not know: also what a key gets for another account.
fn no_grant() -> ApiError {
    ApiError::not_found("the ledger has no grant of this id for this account")
}

async fn status(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(grant_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatusQuery>,
) -> Response {
    let api = match api(&s) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let account = match caller.scope(q.account_id.as_deref(), no_grant) {
        Ok(Some(a)) => a,
        Ok(None) => {
            return ApiError::bad_request(
                "query parameter account_id is required (grant ids are per account)",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    if let Err(e) = account_for(&caller, &account) {
        return e.into_response();
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
        Err(ClientError::Timeout(d, _)) => {
            ApiError::unavailable(format!("the ledger did not answer within {d:?}; ask again"))
                .header(header::RETRY_AFTER, "1")
                .into_response()
        }
        Err(e) => unavailable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::status_url;

    #[test]
    fn the_status_url_encodes_both_ids() {
        assert_eq!(
            status_url("pay 1/2?", "acct&x"),
            "/v1/grants/pay%201%2F2%3F?account_id=acct%26x"
        );
    }
}
