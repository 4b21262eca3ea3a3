//! The router in process: every error answer is the documented JSON (also axum's own
//! rejections and fallbacks), and `/v1` needs a credential. The integration tests
//! (tests/access.rs) prove the same through the binary against the real services.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::keys::store::KeyStore;

const TOKEN: &str = "operator-token-for-unit-tests";

fn app() -> Router {
    let keys = Arc::new(KeyStore::default());
    keys.mark_loaded();
    router(HttpState {
        health: Arc::new(Health::default()),
        engine: Arc::new(std::sync::OnceLock::new()),
        clickhouse: None,
        stall_after: Duration::from_secs(30),
        ledger: None,
        traces: None,
        auth: Arc::new(Auth::for_tests(Some(TOKEN), keys)),
    })
}

async fn call(
    method: &str,
    uri: &str,
    auth: Option<&str>,
) -> (StatusCode, String, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header("authorization", format!("Bearer {a}"));
    }
    let res = app()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, ctype, json)
}

#[tokio::test]
async fn every_error_answer_is_json_with_an_error_field() {
    for (method, uri, auth, status, says) in [
        (
            "GET",
            "/nope",
            None,
            StatusCode::NOT_FOUND,
            "no endpoint at /nope",
        ),
        (
            "GET",
            "/v1/nope",
            Some(TOKEN),
            StatusCode::NOT_FOUND,
            "no endpoint",
        ),
        (
            "POST",
            "/readyz",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "POST is not served at /readyz",
        ),
        (
            "DELETE",
            "/v1/executions/e1",
            Some(TOKEN),
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE",
        ),
        (
            "GET",
            "/v1/executions/e1",
            None,
            StatusCode::UNAUTHORIZED,
            "credential is required",
        ),
        (
            "GET",
            "/v1/executions/e1",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
            "invalid credential",
        ),
        (
            "GET",
            "/v1/executions/e1?acount_id=a",
            Some(TOKEN),
            StatusCode::BAD_REQUEST,
            "unknown query parameter \"acount_id\"",
        ),
        (
            "GET",
            "/v1/executions/e1",
            Some(TOKEN),
            StatusCode::SERVICE_UNAVAILABLE,
            "does not serve traces",
        ),
    ] {
        let (s, ctype, body) = call(method, uri, auth).await;
        assert_eq!(s, status, "{method} {uri}: {body}");
        assert_eq!(ctype, "application/json", "{method} {uri}");
        let e = body["error"].as_str().unwrap_or_default();
        assert!(e.contains(says), "{method} {uri}: {body}");
    }
}

#[tokio::test]
async fn whoami_names_the_scope() {
    let (s, _, body) = call("GET", "/v1/whoami", Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"scope": "operator"}));
    // Operational endpoints need no credential.
    assert_eq!(call("GET", "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn dead_letters_say_plainly_when_clickhouse_cannot_answer() {
    let keys = Arc::new(KeyStore::default());
    keys.mark_loaded();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = router(HttpState {
        health: Arc::new(Health::default()),
        engine: Arc::new(std::sync::OnceLock::new()),
        clickhouse: Some(clickhouse::Client::default().with_url(url)),
        stall_after: Duration::from_secs(30),
        ledger: None,
        traces: None,
        auth: Arc::new(Auth::for_tests(Some(TOKEN), keys)),
    });
    for uri in ["/v1/dead-letters", "/v1/dead-letters/reasons"] {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let e = v["error"].as_str().unwrap();
        assert!(
            e.starts_with("the dead-letter list comes from clickhouse, which cannot answer"),
            "{uri}: {e}"
        );
    }
}
