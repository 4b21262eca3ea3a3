//! Operational endpoints, outside the auth layer (they hold no account's data):
//! `/metrics` (Prometheus text), `/healthz` (the process is alive), `/readyz` (each stage's
//! readiness as JSON; the status code is what a load balancer needs).
//!
//! `/readyz` answers **200 when this instance can serve its HTTP API**: the `api` stage is
//! ready (API keys and the ledger view loaded from Kafka) and, on an instance that rates
//! events, the `pipeline` is (Kafka reachable, a catalog, progress while events wait;
//! running executions are answered from it). Else **503**. The `sink`, `ledger`,
//! `vouchers` and `alerts` stages are reported in the body and in
//! `usage_agg_stage_ready{stage}` but never take the instance out of rotation: a sink
//! behind an unreachable ClickHouse is fixed by ClickHouse, not by routing requests
//! elsewhere, and the alert rules name it (`SinkNotReady`).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::HttpState;
use crate::health::StageReadiness;
use crate::metrics::METRICS;

/// The routes of this file.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
}

/// The stages whose readiness decides `/readyz`'s status code (when this instance runs them).
pub const DECIDING: [&str; 2] = ["api", "pipeline"];

/// `/readyz`'s body.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready` or `not ready`: whether this instance should get HTTP traffic.
    pub status: &'static str,
    /// The stages of this instance that decide `status`.
    pub deciding: Vec<&'static str>,
    /// Stages not ready (deciding or not).
    pub not_ready: Vec<&'static str>,
    pub stages: BTreeMap<&'static str, StageReadiness>,
}

/// Every stage's readiness, and the verdict; sets `usage_agg_stage_ready` and `usage_agg_ready`.
pub fn readiness(s: &HttpState) -> Readiness {
    let mut stages = s.health.stage_readiness(s.stall_after);
    stages.insert("api", api_readiness(s));
    for (name, r) in &stages {
        METRICS
            .stage_ready
            .with_label_values(&[name])
            .set(i64::from(r.ready));
    }
    let deciding: Vec<&'static str> = DECIDING
        .into_iter()
        .filter(|n| stages.contains_key(n))
        .collect();
    let ready = deciding.iter().all(|n| stages[n].ready);
    METRICS.ready.set(i64::from(ready));
    Readiness {
        status: if ready { "ready" } else { "not ready" },
        not_ready: stages
            .iter()
            .filter(|(_, r)| !r.ready)
            .map(|(n, _)| *n)
            .collect(),
        deciding,
        stages,
    }
}

/// The HTTP API's own stage: credentials and balances loaded from Kafka.
fn api_readiness(s: &HttpState) -> StageReadiness {
    if let Some(why) = s.health.waiting_for_kafka() {
        return StageReadiness::not_ready(format!("waiting for kafka: {why}"));
    }
    let keys = &s.auth.keys;
    let mut detail = vec![if keys.is_loaded() {
        format!("{} api keys", keys.len())
    } else {
        "api keys loading".to_string()
    }];
    let mut ready = keys.is_loaded();
    if let Some(l) = &s.ledger {
        ready &= l.view.is_loaded();
        detail.push(l.view.status());
    }
    StageReadiness {
        ready,
        detail: detail.join("; "),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    readiness(&s);
    (
        [("content-type", "text/plain; version=0.0.4")],
        METRICS.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let r = readiness(&s);
    let status = if r.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}
