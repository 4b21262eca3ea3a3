//! Operational endpoints, outside the auth layer (they hold no account's data):
//! `/metrics` (Prometheus text), `/healthz` (the process is alive), `/readyz` (readiness).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::HttpState;
use crate::metrics::METRICS;

/// The routes of this file.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
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
