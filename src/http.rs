//! The HTTP server: requests in, JSON answers out. One file per group of endpoints under
//! `src/http/`; this one wires them, the auth layer and the error fallbacks:
//!
//! - `status`: `/metrics`, `/healthz`, `/readyz` (no credential; no account data);
//! - `executions`: `/v1/executions/{id}` (the trace) and `/v1/accounts/{id}/executions`;
//! - `stream`: the live streams (server-sent events) of an execution and a conversation;
//! - `usage`, `conversations`: `/v1/accounts/{id}/usage`, `/v1/accounts/{id}/conversations/{cid}`
//!   (these and the three above share `traces`: state; `trace_routes`: routes);
//! - `accounts`: `/v1/accounts/{id}/...` (balance, transactions, redemptions);
//! - `account_list`: `/v1/accounts` for operators (every account's balance, last activity;
//!   those below one of their thresholds);
//! - `alerts`: `/v1/accounts/{id}/alerts` (an account's recent credit and spend alerts);
//! - `dead_letters`: `/v1/dead-letters` for operators (newest first, counts by reason);
//! - `grants`: top-ups, adjustments, raw grants (answered with the ledger's verdict) and
//!   `/v1/grants/{id}` (a grant's status);
//! - `credit_settings`: an account's thresholds, expiry warning and auto top-up;
//! - `vouchers`: `/v1/vouchers` for operators (create, list with state, revoke);
//! - `/v1/whoami`: what the presented credential is (the console signs in with it);
//! - `console`: the web console's static files at `/console/` (no credential: they hold no
//!   data; the console reads everything through `/v1` with the key the person signs in with).
//!
//! Every `/v1` route is inside [`auth::require`] (`Authorization: Bearer <operator token or
//! API key>`); handlers take the [`auth::Caller`] and scope by it. Every error answer, also
//! axum's own (bad path, query or body, unknown route, wrong method), is the JSON of
//! [`error::ApiError`]: `{"error": "...", ...}`; a query parameter at fault is named in
//! `parameter` (strict query strings: [`params`]). Money is a decimal string. No payload or
//! secret is ever logged.

pub mod account_list;
pub mod accounts;
pub mod alerts;
pub mod auth;
pub mod console;
pub mod conversations;
pub mod credit_settings;
pub mod dead_letters;
pub mod error;
pub mod executions;
pub mod grants;
pub mod params;
pub mod status;
pub mod stream;
pub mod trace_routes;
pub mod traces;
pub mod usage;
pub mod vouchers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;

use crate::health::Health;
use crate::pipeline::EngineHandle;
use auth::{Auth, Caller};

#[derive(Clone)]
pub struct HttpState {
    pub health: Arc<Health>,
    pub engine: Arc<std::sync::OnceLock<EngineHandle>>,
    pub clickhouse: Option<clickhouse::Client>,
    pub stall_after: Duration,
    /// Credits ledger endpoints (`/v1/accounts/...`), when this process serves them.
    pub ledger: Option<Arc<accounts::LedgerApi>>,
    /// Traces, streams, listings and usage (`/v1/executions/...`, `/v1/accounts/...`), when
    /// this process serves them (always in the binary; unit tests may leave them out).
    pub traces: Option<Arc<traces::TracesApi>>,
    /// The credentials `/v1` accepts.
    pub auth: Arc<Auth>,
}

/// Creates the labelled series of the HTTP API (zeros instead of missing series).
pub fn init_labels() {
    let m = &crate::metrics::METRICS;
    for f in auth::Failure::ALL {
        m.http_auth_failures.with_label_values(&[f.as_str()]);
    }
    // Every instance runs the API stage; the others appear once this instance runs them
    // (a series for a stage it does not run would read "not ready").
    m.stage_ready.with_label_values(&["api"]);
}

/// Every route: operational ones open, `/v1` ones behind the auth layer.
pub fn router(state: HttpState) -> Router {
    let mut v1 = Router::new()
        .route("/v1/whoami", get(whoami))
        .merge(trace_routes::routes())
        .merge(dead_letters::routes());
    if state.ledger.is_some() {
        v1 = v1
            .merge(account_list::routes())
            .merge(accounts::routes())
            .merge(alerts::routes())
            .merge(grants::routes())
            .merge(credit_settings::routes())
            .merge(vouchers::routes());
    }
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(
        state.auth.clone(),
        auth::require,
    ));
    Router::new()
        .merge(status::routes())
        .merge(console::router())
        .merge(v1)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::wrong_method)
        .with_state(state)
}

/// `GET /v1/whoami`: `{"scope": "operator"}` or `{"scope": "account", "account_id",
/// "key_id"}`, so a client (the console) can check a credential and learn its account.
async fn whoami(caller: Caller) -> axum::Json<serde_json::Value> {
    axum::Json(caller.describe())
}

/// Serves on a listener bound beforehand (see [`crate::preflight::bind_http`]) until the
/// token is cancelled. Client addresses reach the auth layer's throttle.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listen = listener.local_addr()?.to_string();
    tracing::info!(listen, "http server listening");
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await?;
    Ok(())
}

#[cfg(test)]
#[path = "http/tests.rs"]
mod tests;
