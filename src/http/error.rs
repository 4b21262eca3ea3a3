//! The HTTP API's one error shape: every error answer, ours or axum's (a bad path, query or
//! body, an unknown route, a wrong method), is JSON `{"error": "<what, naming the field and
//! value>", ...}` with its status. Extractors [`ApiPath`], [`ApiQuery`] and [`ApiJson`] wrap
//! axum's so that their rejections take this shape too; handlers use them instead of
//! axum's own.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// An error answer: status, message and optional extra fields (`reason`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub extra: Map<String, Value>,
    /// Extra headers, e.g. `WWW-Authenticate` or `Retry-After`.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    /// 400: a malformed or unknown parameter; the message names it and its value.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 naming query parameter `name` and the `value` given (at most 100 characters):
    /// `{"error", "parameter", "value"}`.
    pub fn parameter(name: &str, value: Option<&str>, message: impl Into<String>) -> ApiError {
        let e = ApiError::bad_request(message).with("parameter", name);
        match value {
            Some(v) => e.with("value", excerpt(v)),
            None => e,
        }
    }

    /// 404 with the given message.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 503: a dependency (Kafka, ClickHouse, a stage) cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 503 for a read only ClickHouse can answer (`what`: "usage", "the execution listing"):
    /// logs the cause and answers "`what` comes from clickhouse, which cannot answer: cause".
    pub fn clickhouse_down(what: &str, e: &(dyn std::error::Error + 'static)) -> ApiError {
        let cause = crate::sink::errors::cause_chain(e);
        tracing::warn!(error = %cause, "{what}: clickhouse cannot answer");
        ApiError::unavailable(format!(
            "{what} comes from clickhouse, which cannot answer: {cause}"
        ))
    }

    /// 422 refusal of a valid request by a business rule, with its stable reason code.
    pub fn refused(reason: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message).with("reason", reason)
    }

    /// Adds a field to the body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: header::HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), Value::String(self.message.clone()));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        for (k, v) in self.headers {
            r.headers_mut().append(k, v);
        }
        r
    }
}

/// At most 100 characters of a value given by a client, for an error message.
pub fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The 404 of a path no route matches.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint at {}; see docs/operations.md (HTTP endpoints)",
        crate::rejection::excerpt(uri.path())
    ))
}

/// The 405 of a known path asked with a method it does not serve (axum adds `Allow`).
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not served at {}",
            crate::rejection::excerpt(uri.path())
        ),
    )
}

/// A path parameter, with axum's rejection as a JSON 400.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(path_rejection(&e)),
        }
    }
}

fn path_rejection(e: &PathRejection) -> ApiError {
    ApiError::new(e.status(), format!("path: {}", e.body_text()))
}

/// Query parameters, with axum's rejection (a malformed value, an unknown parameter when `T`
/// denies unknown fields) as a JSON 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or_default();
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(query_rejection(&e, q)),
        }
    }
}

fn query_rejection(e: &QueryRejection, query: &str) -> ApiError {
    // "Failed to deserialize query string: unknown field `x`, expected ..."
    let text = e.body_text();
    let why = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    ApiError::bad_request(format!("query parameters: {why}")).with(
        "query",
        crate::rejection::excerpt(&urlencoding_lossy(query)),
    )
}

/// Percent-decoded query text for the message (lossy).
fn urlencoding_lossy(q: &str) -> String {
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A JSON body, with axum's rejection (no body, not JSON, wrong shape, wrong content type)
/// as a JSON error naming the field.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(&e)),
        }
    }
}

fn json_rejection(e: &JsonRejection) -> ApiError {
    let text = e.body_text();
    let why = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .or_else(|| text.strip_prefix("Failed to parse the request body as JSON: "))
        .unwrap_or(&text);
    let status = match e {
        // Valid JSON of the wrong shape: a refusal of the request, with the reason code the
        // CLI and the ledger use.
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        other => other.status(),
    };
    ApiError::new(status, format!("body: {why}")).with("reason", "invalid_json")
}

/// `{"error": ...}` for an answer built elsewhere (tests, other modules).
pub fn error_body(message: &str) -> Value {
    json!({ "error": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_extra_fields() {
        let e = ApiError::refused("invalid_amount", "amount -1 must be positive")
            .header(header::RETRY_AFTER, "1");
        assert_eq!(
            e.body(),
            json!({"error": "amount -1 must be positive", "reason": "invalid_amount"})
        );
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["content-type"], "application/json");
    }

    #[test]
    fn query_text_is_decoded_for_the_message() {
        assert_eq!(
            urlencoding_lossy("a=1&from=2026%2D01&x"),
            "a=1&from=2026-01&x"
        );
    }
}
