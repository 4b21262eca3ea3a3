//! `GET /v1/accounts/{id}/usage?from=&to=&group_by=asset|day|component|dimension:KEY`: an
//! account's credits (vendor price), calls and data volume per unit by group, then the
//! markup as its own figure (`crate::history::usage`). Default `group_by=asset`, all time.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::auth::Caller;
use super::error::ApiPath;
use super::params::{ApiError, Params};
use super::traces;
use crate::history::usage::{self, GroupBy};

pub async fn usage(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let run = async {
        let api = traces::api(&s)?;
        traces::account_for(&caller, &account, "usage")?;
        let p = Params::parse(raw.as_deref(), &["from", "to", "group_by"])?;
        let window = p.window()?;
        let by = match p.get("group_by") {
            None => GroupBy::Asset,
            Some(g) => {
                GroupBy::parse(g).map_err(|e| ApiError::parameter("group_by", Some(g), e))?
            }
        };
        usage::usage(&api.ch, &account, window, &by, api.markup_rate)
            .await
            .map_err(|e| ApiError::clickhouse_down("usage", &e))
    };
    match run.await {
        Ok(u) => Json(u).into_response(),
        Err(e) => e.into_response(),
    }
}
