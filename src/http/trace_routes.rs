//! The routes of the trace, stream, listing, usage and conversation endpoints; their shared
//! state and scoping are in [`super::traces`], each handler in its own file.

use axum::Router;
use axum::routing::get;

use super::HttpState;

/// The routes of the trace, stream, listing, usage and conversation endpoints (inside the
/// auth layer).
pub fn routes() -> Router<HttpState> {
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
}
