//! ClickHouse for the tests: queries over HTTP and a private server for outage tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{clickhouse_is_modern, http_get, quiet_ports, root};

/// Runs a ClickHouse query over HTTP; panics on error. Returns the TSV body.
pub fn ch_query(url: &str, sql: &str) -> String {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).unwrap_or("0").to_string();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    assert_eq!(status, "200", "clickhouse query failed: {sql}\n{body}");
    body
}

pub fn parse_tsv_map(tsv: &str) -> HashMap<String, String> {
    tsv.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A private ClickHouse server (for outage tests), configured like scripts/services does.
pub struct PrivateClickHouse {
    pub url: String,
    /// `https://127.0.0.1:PORT` when started with [`PrivateClickHouse::start_https`].
    pub https_url: Option<String>,
    dir: PathBuf,
    http: u16,
    tcp: u16,
    https: Option<(u16, PathBuf)>,
    child: Option<Child>,
}

impl PrivateClickHouse {
    /// Starts `scripts/services clickhouse-run DIR/clickhouse HTTP TCP`: data, logs and the
    /// generated password of user `usage_writer` live under DIR/clickhouse (a test may mount a
    /// small filesystem at DIR/clickhouse/data first).
    pub fn start(dir: &Path) -> PrivateClickHouse {
        Self::start_with(dir, None)
    }

    /// Also HTTPS, its certificate (for IP 127.0.0.1) signed by the throwaway CA in `ca_dir`
    /// (e.g. a secured broker's `tls` dir, to share its CA; made there when missing).
    pub fn start_https(dir: &Path, ca_dir: &Path) -> PrivateClickHouse {
        Self::start_with(dir, Some(ca_dir.to_path_buf()))
    }

    fn start_with(dir: &Path, ca_dir: Option<PathBuf>) -> PrivateClickHouse {
        let dir = dir.join("clickhouse");
        std::fs::create_dir_all(dir.join("log")).unwrap();
        // HTTP, native and HTTPS (when asked) on consecutive free ports.
        let base = quiet_ports(3);
        let https = ca_dir.map(|ca| (base + 2, ca));
        let mut ch = PrivateClickHouse {
            url: String::new(),
            https_url: https
                .as_ref()
                .map(|(p, _)| format!("https://127.0.0.1:{p}")),
            dir,
            http: base,
            tcp: base + 1,
            https,
            child: None,
        };
        ch.url = format!("http://127.0.0.1:{}", ch.http);
        ch.resume();
        ch
    }

    /// The file holding the password of user `usage_writer` (made by scripts/services).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("secrets/usage_writer.password")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// users.xml (ClickHouse 18.16 reloads it within seconds when it changes; 26.9 from
    /// chdb-core reads it once at start: restart it with `stop` + `resume`).
    pub fn users_file(&self) -> PathBuf {
        self.dir.join("users.xml")
    }

    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log/stdout.log"))
            .unwrap();
        let modern = clickhouse_is_modern();
        // ClickHouse 26.9 from chdb-core has no HTTPS listener: a TLS test needs a terminator
        // in front of it (docs/analytics.md#clickhouse-versions), so it runs on 18.16 only.
        assert!(
            !(modern && self.https.is_some()),
            "HTTPS is tested on ClickHouse 18.16 only: chdb-core's 26.9 has no HTTPS listener"
        );
        let mut args = vec![
            if modern {
                "clickhouse-modern-run"
            } else {
                "clickhouse-run"
            }
            .to_string(),
            self.dir.to_str().unwrap().to_string(),
            self.http.to_string(),
            self.tcp.to_string(),
        ];
        if let Some((port, ca)) = &self.https {
            args.push(port.to_string());
            args.push(ca.to_str().unwrap().to_string());
        }
        let child = Command::new(root().join("scripts/services"))
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&addr, "/ping").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "private clickhouse did not start; see {}",
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
