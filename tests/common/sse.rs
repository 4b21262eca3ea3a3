//! A server-sent events client for the tests: HTTP/1.0 with the operator token, events
//! parsed into name, id and JSON data.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::OPERATOR_TOKEN;

/// One server-sent event: its name, id and JSON data (comments and keep-alives skipped).
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// An event stream read over HTTP/1.0 with the operator token.
pub struct SseStream(BufReader<TcpStream>);

impl SseStream {
    /// Opens `path` on `addr` (with `Last-Event-ID` when given); None unless it answers 200.
    pub fn open(addr: &str, path: &str, last_event_id: Option<&str>) -> Option<SseStream> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nAccept: text/event-stream\r\n{resume}\r\n"
        )
        .ok()?;
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).ok()?;
        if status.split_whitespace().nth(1) != Some("200") {
            eprintln!("stream {path} on {addr}: {status}");
            return None;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).ok()? == 0 {
                return None;
            }
            if h.trim().is_empty() {
                return Some(SseStream(r));
            }
        }
    }

    /// The next event; None when the stream ended or broke, or nothing came for `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = Instant::now() + wait;
        let (mut event, mut id, mut data) = (String::new(), None, String::new());
        // A line cut by the read timeout stays in `line` (read_line keeps what it read) and
        // is completed by the next read: nothing is lost.
        let mut line = String::new();
        loop {
            match self.0.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() > deadline {
                        return None;
                    }
                    continue;
                }
                Err(_) => return None,
            }
            if !line.ends_with('\n') {
                continue; // the last line of a stream that ends without a newline
            }
            let whole = std::mem::take(&mut line);
            let line = whole.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    return Some(Sse { event, id, data });
                }
                (event, id, data) = (String::new(), None, String::new());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }
}
