//! The one auth layer of `/v1`: `Authorization: Bearer <credential>` in (the operator token
//! or an account's API key; the console sends the same header); a [`Caller`] out, put in the
//! request's extensions for handlers to take as an extractor, or the refusal:
//!
//! - no credential, or a wrong one: **401** with `WWW-Authenticate: Bearer realm=...`
//!   (`error="invalid_token"` when one was given), JSON body;
//! - too many failures from one client address: **429** with `Retry-After`, before any check
//!   (a token bucket per address, [`Throttle`]);
//! - keys not loaded yet (right after start): **503** with `Retry-After: 1` for a key (the
//!   operator token works at once).
//!
//! Scope is the handlers' part, through [`Caller`]: an account key sees only its own
//! account, and another account's ids answer **404**, the same answer as an id that does not
//! exist, so ids never leak. Operator-only actions answer 403 to a key (`insufficient_scope`).
//! Failures are counted in `usage_agg_http_auth_failures_total{reason}`; credentials are
//! never logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::Config;
use crate::keys::store::{KeyStore, Verdict};
use crate::metrics::METRICS;

/// Environment variable holding the operator token (wins over `http.api_token_file`).
pub const TOKEN_ENV: &str = "USAGE_AGG_API_TOKEN";
const REALM: &str = "Bearer realm=\"usage-aggregator\"";

/// Who is calling: the operator (every account) or one account through its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Account { account_id: String, key_id: String },
}

impl Caller {
    /// Ok when the caller may read or act on `account`; else `not_found`, the very answer a
    /// missing account or id gets, so a key learns nothing about other accounts.
    pub fn may_see(
        &self,
        account: &str,
        not_found: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Account { account_id, .. } if account_id == account => Ok(()),
            Caller::Account { .. } => Err(not_found()),
        }
    }

    /// The account a query is about: the operator's `requested` one (or none: all
    /// accounts); a key's own account, also when `requested` is absent. A key asking for
    /// another account gets `not_found`.
    pub fn scope(
        &self,
        requested: Option<&str>,
        not_found: impl FnOnce() -> ApiError,
    ) -> Result<Option<String>, ApiError> {
        match (self, requested) {
            (Caller::Operator, r) => Ok(r.map(str::to_string)),
            (Caller::Account { account_id, .. }, None) => Ok(Some(account_id.clone())),
            (Caller::Account { account_id, .. }, Some(r)) if r == account_id => {
                Ok(Some(account_id.clone()))
            }
            (Caller::Account { .. }, Some(_)) => Err(not_found()),
        }
    }

    /// Ok for the operator; 403 `insufficient_scope` for a key (`what` names the action).
    pub fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Account { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{what} needs the operator token; an account's API key cannot do it"),
            )
            .header(
                header::WWW_AUTHENTICATE,
                &format!("{REALM}, error=\"insufficient_scope\""),
            )),
        }
    }

    /// `{"scope": "operator"}` or `{"scope": "account", "account_id", "key_id"}`.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Caller::Operator => serde_json::json!({"scope": "operator"}),
            Caller::Account { account_id, key_id } => serde_json::json!({
                "scope": "account", "account_id": account_id, "key_id": key_id,
            }),
        }
    }
}

/// Handlers take the caller as an extractor; a route outside the layer gets a 500, which a
/// test of every route would show at once.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this endpoint is outside the auth layer (a bug)",
            )
        })
    }
}

/// Why a check failed: the `reason` label of `usage_agg_http_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    WrongToken,
    UnknownKey,
    RevokedKey,
    Throttled,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::WrongToken,
        Failure::UnknownKey,
        Failure::RevokedKey,
        Failure::Throttled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::WrongToken => "wrong_token",
            Failure::UnknownKey => "unknown_key",
            Failure::RevokedKey => "revoked_key",
            Failure::Throttled => "throttled",
        }
    }
}

/// The credentials this instance accepts, and the throttle of failures.
pub struct Auth {
    operator: Option<String>,
    pub keys: Arc<KeyStore>,
    pub throttle: Throttle,
    client_header: Option<HeaderName>,
}

impl Auth {
    /// Reads the operator token (`USAGE_AGG_API_TOKEN`, else `http.api_token_file`, else the
    /// deprecated `ledger.api_token_file`); never logs it.
    pub fn from_config(cfg: &Config, keys: Arc<KeyStore>) -> anyhow::Result<Auth> {
        let from_file = |key: &str, f: &std::path::Path| -> anyhow::Result<Option<String>> {
            let t = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("{key} = \"{}\": {e}", f.display()))?;
            Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()))
        };
        let operator = match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => match (&cfg.http.api_token_file, &cfg.ledger.api_token_file) {
                (Some(f), _) => from_file("http.api_token_file", f)?,
                (None, Some(f)) => {
                    tracing::warn!(
                        "ledger.api_token_file is the old name of http.api_token_file; it still works, rename it"
                    );
                    from_file("ledger.api_token_file", f)?
                }
                (None, None) => None,
            },
        };
        match &operator {
            None => tracing::warn!(
                "no operator token ({TOKEN_ENV} or http.api_token_file): /v1 accepts account API keys only"
            ),
            Some(t) if t.len() < 16 => {
                tracing::warn!(
                    "the operator token is shorter than 16 characters; use a long random one"
                )
            }
            Some(_) => {}
        }
        Ok(Auth {
            operator,
            keys,
            throttle: Throttle::new(
                cfg.http.auth_failure_burst,
                cfg.http.auth_failures_per_minute,
                MAX_CLIENTS,
            ),
            client_header: Some(cfg.http.client_address_header.trim())
                .filter(|h| !h.is_empty())
                .and_then(|h| HeaderName::try_from(h).ok()),
        })
    }

    /// An `Auth` for tests: this token, these keys, a generous throttle.
    pub fn for_tests(operator: Option<&str>, keys: Arc<KeyStore>) -> Auth {
        Auth {
            operator: operator.map(str::to_string),
            keys,
            throttle: Throttle::new(1000, 1000, MAX_CLIENTS),
            client_header: None,
        }
    }

    /// The caller a request's headers name, or why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<Caller, (Failure, ApiError)> {
        let unauthorized = |f: Failure, message: &str| {
            let challenge = match f {
                Failure::Missing => REALM.to_string(),
                _ => format!("{REALM}, error=\"invalid_token\""),
            };
            (
                f,
                ApiError::new(StatusCode::UNAUTHORIZED, message)
                    .header(header::WWW_AUTHENTICATE, &challenge),
            )
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                Failure::Missing,
                "a credential is required: Authorization: Bearer <operator token or API key>",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, c)| c.trim())
            .filter(|c| !c.is_empty());
        let Some(given) = given else {
            return Err(unauthorized(
                Failure::Malformed,
                "the Authorization header must be `Bearer <operator token or API key>`",
            ));
        };
        if crate::keys::key_id(given).is_some() {
            return match self.keys.verify(given) {
                Verdict::Valid { account_id, key_id } => Ok(Caller::Account { account_id, key_id }),
                Verdict::Revoked => Err(unauthorized(
                    Failure::RevokedKey,
                    "this API key was revoked",
                )),
                Verdict::Unknown => Err(unauthorized(Failure::UnknownKey, "invalid API key")),
                Verdict::Loading => Err((
                    Failure::UnknownKey,
                    ApiError::unavailable(
                        "API keys are still loading on this instance; retry in a second",
                    )
                    .header(header::RETRY_AFTER, "1"),
                )),
            };
        }
        match &self.operator {
            Some(t) if crate::keys::same_secret(given, t) => Ok(Caller::Operator),
            _ => Err(unauthorized(Failure::WrongToken, "invalid credential")),
        }
    }

    fn client(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        if let Some(h) = &self.client_header {
            // The rightmost entry is the one the trusted proxy added.
            let from_header = headers
                .get_all(h)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|a| a.trim().parse::<IpAddr>().ok())
                .next_back();
            if from_header.is_some() {
                return from_header;
            }
        }
        peer.map(|p| p.ip())
    }
}

/// The middleware: throttle, check, then the handler with the [`Caller`] in extensions.
pub async fn require(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = auth.client(req.headers(), peer);
    if let Err(wait) = auth.throttle.allowed(client) {
        count(Failure::Throttled);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed credential checks from this address; retry later",
        )
        .header(header::RETRY_AFTER, &wait.as_secs().max(1).to_string())
        .into_response();
    }
    match auth.check(req.headers()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err((failure, e)) => {
            if e.status == StatusCode::UNAUTHORIZED {
                auth.throttle.failed(client);
            }
            count(failure);
            e.into_response()
        }
    }
}

fn count(f: Failure) {
    METRICS
        .http_auth_failures
        .with_label_values(&[f.as_str()])
        .inc();
}

/// Addresses the throttle remembers at most (oldest forgotten first).
pub const MAX_CLIENTS: usize = 10_000;

/// A token bucket of failed checks per client address: `burst` failures, then one more per
/// `60 / per_minute` seconds. Bounded: at most `max_clients` addresses; full buckets carry
/// no information and go first, then the least recently seen.
pub struct Throttle {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    burst: f64,
    per_second: f64,
    max_clients: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Throttle {
    pub fn new(burst: u32, per_minute: u32, max_clients: usize) -> Throttle {
        Throttle {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
            max_clients: max_clients.max(1),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.per_second).min(self.burst);
        b.at = now;
    }

    /// Ok while the address has a failure left; else how long until it has one.
    pub fn allowed(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let Some(ip) = client else { return Ok(()) };
        let now = Instant::now();
        let mut m = self.buckets.lock().expect("throttle lock");
        let Some(b) = m.get_mut(&ip) else {
            return Ok(());
        };
        self.refill(b, now);
        if b.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }

    /// Takes one failure from the address's bucket.
    pub fn failed(&self, client: Option<IpAddr>) {
        let Some(ip) = client else { return };
        let now = Instant::now();
        let mut m = self.buckets.lock().expect("throttle lock");
        if !m.contains_key(&ip) && m.len() >= self.max_clients {
            m.retain(|_, b| {
                let dt = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + dt * self.per_second < self.burst
            });
            if m.len() >= self.max_clients
                && let Some(oldest) = m.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
            {
                m.remove(&oldest);
            }
        }
        let b = m.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Addresses remembered (tests, telemetry).
    pub fn clients(&self) -> usize {
        self.buckets.lock().expect("throttle lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use chrono::Utc;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn operator_token_and_account_keys_are_told_apart() {
        let keys = Arc::new(KeyStore::default());
        let k = crate::keys::generate("acct-a", "", Utc::now());
        keys.apply(
            k.record.key_id.as_bytes(),
            Some(&serde_json::to_vec(&k.record).unwrap()),
        );
        let auth = Auth::for_tests(Some("operator-secret-123456"), keys.clone());
        let status = |h: &HeaderMap| auth.check(h).map_err(|(f, e)| (f, e.status));
        assert_eq!(
            status(&headers("Bearer operator-secret-123456")),
            Ok(Caller::Operator)
        );
        assert_eq!(
            status(&headers("bearer operator-secret-123456")),
            Ok(Caller::Operator)
        );
        assert_eq!(
            status(&headers("Bearer operator-secret-12345")),
            Err((Failure::WrongToken, StatusCode::UNAUTHORIZED))
        );
        assert_eq!(
            status(&HeaderMap::new()),
            Err((Failure::Missing, StatusCode::UNAUTHORIZED))
        );
        assert_eq!(
            status(&headers("Basic b3A6eA==")),
            Err((Failure::Malformed, StatusCode::UNAUTHORIZED))
        );
        // Not loaded yet: an unknown key may exist, so 503, not 401.
        let later = crate::keys::generate("acct-a", "", Utc::now());
        assert_eq!(
            status(&headers(&format!("Bearer {}", later.key)))
                .unwrap_err()
                .1,
            StatusCode::SERVICE_UNAVAILABLE
        );
        keys.mark_loaded();
        assert_eq!(
            status(&headers(&format!("Bearer {}", later.key))),
            Err((Failure::UnknownKey, StatusCode::UNAUTHORIZED))
        );
        assert_eq!(
            status(&headers(&format!("Bearer {}", k.key))),
            Ok(Caller::Account {
                account_id: "acct-a".into(),
                key_id: k.record.key_id.clone()
            })
        );
        let e = auth.check(&headers("Bearer nope")).unwrap_err().1;
        let challenge = &e.headers[0].1;
        assert_eq!(
            challenge,
            "Bearer realm=\"usage-aggregator\", error=\"invalid_token\""
        );
    }

    #[test]
    fn a_key_sees_its_own_account_only_and_others_as_missing() {
        let a = Caller::Account {
            account_id: "acct-a".into(),
            key_id: "k".into(),
        };
        let nf = || ApiError::not_found("no such account");
        assert!(a.may_see("acct-a", nf).is_ok());
        assert_eq!(
            a.may_see("acct-b", nf).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(a.scope(None, nf).unwrap(), Some("acct-a".into()));
        assert_eq!(a.scope(Some("acct-a"), nf).unwrap(), Some("acct-a".into()));
        assert!(a.scope(Some("acct-b"), nf).is_err());
        assert_eq!(Caller::Operator.scope(None, nf).unwrap(), None);
        assert_eq!(
            a.require_operator("a top-up").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(Caller::Operator.require_operator("a top-up").is_ok());
    }

    #[test]
    fn failures_are_throttled_per_address_and_the_map_stays_bounded() {
        let t = Throttle::new(3, 60, 4);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.allowed(Some(ip)).is_ok());
            t.failed(Some(ip));
        }
        let wait = t.allowed(Some(ip)).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(
            t.allowed(Some(other)).is_ok(),
            "another address is not throttled"
        );
        for i in 0..100u8 {
            t.failed(Some(IpAddr::from([192, 168, 0, i])));
        }
        assert!(t.clients() <= 4, "{}", t.clients());
    }
}
