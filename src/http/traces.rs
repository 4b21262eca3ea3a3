//! What the trace, stream, listing and usage endpoints share (their routes are in
//! [`super::trace_routes`], so that the handlers' files and this one import no circle):
//!
//! - `GET /v1/executions/{id}?account_id=A`: the execution's trace ([`super::executions`])
//! - `GET /v1/executions/{id}/events?account_id=A[&follow=true]`: its live stream
//!   ([`super::stream`])
//! - `GET /v1/accounts/{id}/executions?from=&to=&limit=&cursor=`: executions, newest first
//! - `GET /v1/accounts/{id}/usage?from=&to=&group_by=asset|day|component|dimension:KEY`
//!   ([`super::usage`])
//! - `GET /v1/accounts/{id}/conversations/{cid}` and `.../events`: a conversation
//!   ([`super::conversations`], [`super::stream`])
//!
//! Shapes: docs/operations.md (HTTP API); amounts are decimal strings in credits; errors are
//! `{"error": ..., "parameter"?: ..., "value"?: ...}` ([`super::params`]). Scoped by the
//! caller ([`account_for`]): an account key sees its own account only, another's ids are 404.

use std::sync::{Arc, OnceLock};

use rust_decimal::Decimal;

use super::HttpState;
use super::auth::Caller;
use super::params::{ApiError, check_id};
use crate::config::{Config, TracesConfig};
use crate::follow::Follower;
use crate::history::cache::HistoryCache;
use crate::pipeline::EngineHandle;

/// The state of these endpoints.
pub struct TracesApi {
    pub follower: Follower,
    /// Executions' committed histories kept between lookups.
    pub history: HistoryCache,
    pub ch: clickhouse::Client,
    /// The rating pipeline of this process, when it runs one (open executions' live state).
    pub engine: Arc<OnceLock<EngineHandle>>,
    /// `rollup.markup_rate`: the markup of calls not billed yet.
    pub markup_rate: Decimal,
    pub cfg: TracesConfig,
}

impl TracesApi {
    pub fn new(
        cfg: &Config,
        ch: clickhouse::Client,
        engine: Arc<OnceLock<EngineHandle>>,
        stop: tokio_util::sync::CancellationToken,
    ) -> TracesApi {
        TracesApi {
            follower: Follower::new(cfg, stop),
            history: HistoryCache::default(),
            ch,
            engine,
            markup_rate: cfg.rollup.markup_rate,
            cfg: cfg.traces.clone(),
        }
    }
}

/// These endpoints' state, or 503 when this process does not serve them.
pub fn api(s: &HttpState) -> Result<&Arc<TracesApi>, ApiError> {
    s.traces
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this instance does not serve traces"))
}

/// Checks an account id from the path and the caller's right to it: another account's is
/// the same 404 as an account without any call (`what` says what was looked for).
pub fn account_for(caller: &Caller, account: &str, what: &str) -> Result<(), ApiError> {
    caller.may_see(account, || {
        ApiError::not_found(format!(
            "{what} of account {}: none (yet)",
            crate::rejection::excerpt(account)
        ))
    })?;
    check_id("account_id", account)
}
