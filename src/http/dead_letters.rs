//! Dead letters for operators (operator token; an account's key gets 403), from ClickHouse's
//! `dead_letters` table ([`crate::history::dead_letters`]). When ClickHouse cannot answer,
//! a 503 says so (`"the dead-letter list comes from clickhouse, which cannot answer: ..."`); the
//! topic itself is what `dead-letters replay` reads.
//!
//! - `GET /v1/dead-letters?reason=&from=&to=&limit=50&cursor=` -> `{"dead_letters": [{
//!   "dead_letter_id", "reason", "message", "source_topic", "source_partition",
//!   "source_offset", "dead_lettered_at", "payload", "payload_truncated"}], "next_cursor"}`,
//!   newest first (`from`/`to`: when each was stored, half-open)
//! - `GET /v1/dead-letters/reasons?from=&to=` -> `{"reasons": [{"reason", "count",
//!   "last_at", "sample": {...}}]}`, the most frequent first
//!
//! Strict query strings: an unknown, repeated or malformed parameter is a 400 naming it.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::HttpState;
use super::auth::Caller;
use super::params::{ApiError, Params};
use crate::history::dead_letters::{self, Cursor, Query};
use crate::rejection::RejectReason;

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/dead-letters", get(list))
        .route("/v1/dead-letters/reasons", get(reasons))
}

fn clickhouse<'a>(
    s: &'a HttpState,
    caller: &Caller,
    what: &str,
) -> Result<&'a clickhouse::Client, ApiError> {
    caller.require_operator(what)?;
    s.clickhouse.as_ref().ok_or_else(|| {
        ApiError::unavailable("this instance has no clickhouse to read dead letters from")
    })
}

/// A reason code of [`RejectReason`], else a 400 naming `reason` and listing the codes.
fn reason(p: &Params) -> Result<Option<String>, ApiError> {
    let Some(v) = p.get("reason") else {
        return Ok(None);
    };
    match RejectReason::ALL.iter().find(|r| r.as_str() == v) {
        Some(r) => Ok(Some(r.as_str().to_string())),
        None => Err(ApiError::parameter(
            "reason",
            Some(v),
            format!(
                "reason must be one of {}",
                RejectReason::ALL.map(|r| r.as_str()).join(", ")
            ),
        )),
    }
}

async fn list(State(s): State<HttpState>, caller: Caller, RawQuery(raw): RawQuery) -> Response {
    let run = async {
        let ch = clickhouse(&s, &caller, "reading dead letters")?;
        let p = Params::parse(raw.as_deref(), &["reason", "from", "to", "limit", "cursor"])?;
        let q = Query {
            window: p.window()?,
            reason: reason(&p)?,
            limit: p.number("limit", 1, 1000)?.unwrap_or(50) as u32,
            cursor: p
                .string("cursor")?
                .map(|c| Cursor::parse(&c).map_err(|e| ApiError::parameter("cursor", Some(&c), e)))
                .transpose()?,
        };
        dead_letters::list(ch, &q)
            .await
            .map_err(|e| ApiError::clickhouse_down("the dead-letter list", &e))
    };
    match run.await {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn reasons(State(s): State<HttpState>, caller: Caller, RawQuery(raw): RawQuery) -> Response {
    let run = async {
        let ch = clickhouse(&s, &caller, "reading dead letters")?;
        let p = Params::parse(raw.as_deref(), &["from", "to"])?;
        dead_letters::by_reason(ch, p.window()?)
            .await
            .map_err(|e| ApiError::clickhouse_down("the dead-letter list", &e))
    };
    match run.await {
        Ok(r) => Json(json!({ "reasons": r })).into_response(),
        Err(e) => e.into_response(),
    }
}
