//! What the trace, stream, listing and usage endpoints share, and their routes:
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
//! `{"error": ..., "parameter"?: ..., "value"?: ...}` ([`super::params`]).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::routing::get;
use rust_decimal::Decimal;

use crate::config::{Config, TracesConfig};
use crate::follow::Follower;
use crate::pipeline::EngineHandle;

/// The state of these endpoints.
pub struct TracesApi {
    pub follower: Follower,
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
            ch,
            engine,
            markup_rate: cfg.rollup.markup_rate,
            cfg: cfg.traces.clone(),
        }
    }
}

pub fn router(api: Arc<TracesApi>) -> Router {
    Router::new()
        .route(
            "/v1/executions/{execution_id}",
            get(super::executions::trace),
        )
        .route(
            "/v1/executions/{execution_id}/events",
            get(super::stream::execution_events),
        )
        .route(
            "/v1/accounts/{account_id}/executions",
            get(super::executions::list),
        )
        .route("/v1/accounts/{account_id}/usage", get(super::usage::usage))
        .route(
            "/v1/accounts/{account_id}/conversations/{conversation_id}",
            get(super::conversations::view),
        )
        .route(
            "/v1/accounts/{account_id}/conversations/{conversation_id}/events",
            get(super::stream::conversation_events),
        )
        .with_state(api)
}
