//! HTTP endpoints: /metrics (Prometheus text), /healthz (alive), /readyz (progress and
//! reachability); the execution traces, live streams, listings and usage
//! ([`traces`]: one file per group under `src/http/`); the credits ledger's
//! (`crate::ledger::api`). No payloads or secrets are exposed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub mod conversations;
pub mod executions;
pub mod params;
pub mod stream;
pub mod traces;
pub mod usage;

use crate::health::Health;
use crate::metrics::METRICS;
use crate::pipeline::EngineHandle;

#[derive(Clone)]
pub struct HttpState {
    pub health: Arc<Health>,
    pub engine: Arc<std::sync::OnceLock<EngineHandle>>,
    pub clickhouse: Option<clickhouse::Client>,
    pub stall_after: Duration,
    /// Credits ledger endpoints (`/v1/accounts/...`), when this process serves them.
    pub ledger: Option<Arc<crate::ledger::api::LedgerApi>>,
    /// Traces, streams, listings and usage (`/v1/executions/...`, `/v1/accounts/...`).
    pub traces: Option<Arc<traces::TracesApi>>,
}

pub fn router(state: HttpState) -> Router {
    let ledger = state.ledger.clone();
    let traces = state.traces.clone();
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Some(l) = ledger {
        r = r.merge(crate::ledger::api::router(l));
    }
    if let Some(t) = traces {
        r = r.merge(traces::router(t));
    }
    r
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let ready = s.health.not_ready_reason(s.stall_after).is_none();
    METRICS.ready.set(i64::from(ready));
    (
        [("content-type", "text/plain; version=0.0.4")],
        METRICS.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    match s.health.not_ready_reason(s.stall_after) {
        None => {
            METRICS.ready.set(1);
            (StatusCode::OK, "ready\n".to_string()).into_response()
        }
        Some(why) => {
            METRICS.ready.set(0);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response()
        }
    }
}

/// Serves on a listener bound beforehand (see [`crate::preflight::bind_http`]) until the
/// token is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listen = listener.local_addr()?.to_string();
    tracing::info!(listen, "http server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}
