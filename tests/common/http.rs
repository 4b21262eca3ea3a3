//! Minimal HTTP/1.0 calls to the aggregator's API (with or without the operator token) and
//! reading its metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The operator token every test aggregator gets (`USAGE_AGG_API_TOKEN`, see [`TestEnv::new`]).
pub const OPERATOR_TOKEN: &str = "test-operator-token-5c1d9e27";

/// A GET of the aggregator's API with the operator token: (status, body).
pub fn api_get(addr: &str, path: &str) -> (u16, String) {
    http_get_as(addr, path, Some(OPERATOR_TOKEN))
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_as(addr, path, None)
}

/// A minimal HTTP/1.0 GET with `Authorization: Bearer <credential>` when given.
pub fn http_get_as(addr: &str, path: &str, credential: Option<&str>) -> (u16, String) {
    let a = http_call(addr, "GET", path, credential, None);
    (a.status, a.body)
}

/// `/readyz`: (status, body as JSON; Null when the server did not answer).
pub fn readyz(addr: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, "/readyz");
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The detail of a stage that `/readyz` reports not ready, if it does.
pub fn not_ready_detail(readyz: &serde_json::Value, stage: &str) -> Option<String> {
    let s = &readyz["stages"][stage];
    (s["ready"] == false).then(|| s["detail"].as_str().unwrap_or_default().to_string())
}

/// An HTTP answer: status (0 when the connection failed), header lines, body.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of a header (name case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// A minimal HTTP/1.0 request: `body` is sent as JSON; `credential` as a bearer token.
pub fn http_call(
    addr: &str,
    method: &str,
    path: &str,
    credential: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let auth = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_request(addr, method, path, &headers, body)
}

/// A minimal HTTP/1.0 request with these headers; `body` is sent as JSON.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Answer::default();
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let content = body
        .map(|b| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}{content}\r\n{}",
        body.unwrap_or_default()
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    Answer { status, head, body }
}

/// The value of a metric line (first series whose name and labels start with `prefix`).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
