//! ClickHouse failures in the operator's terms: a `clickhouse` crate error in, one line out that
//! names `clickhouse.url` and `clickhouse.user` and says what is wrong (refused credentials, a
//! full disk, no answer). Never the password: the configured one is redacted from anything
//! quoted. Used by `/readyz` while the sink retries, and by one-shot commands.

use crate::config::ClickHouseConfig;

/// What kind of failure a ClickHouse error is, from its server code or transport error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Unknown user or wrong password (codes 192, 193, 194, 516).
    Authentication,
    /// No space left on the server's disk (code 243, or ENOSPC in the message).
    DiskFull,
    /// No connection or no answer.
    Unreachable,
    /// The HTTPS handshake failed (an untrusted certificate, a host name it does not name).
    Tls,
    /// The database or a table does not exist (codes 81, 60): `setup` has not run for it.
    NotSetUp,
    /// Anything else the server said.
    Other,
}

/// Classifies a ClickHouse error.
pub fn kind(e: &clickhouse::error::Error) -> Unusable {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) if is_tls(&cause_chain(e)) => Unusable::Tls,
        E::Network(_) | E::TimedOut => Unusable::Unreachable,
        E::BadResponse(msg) => {
            let code = msg
                .split("Code: ")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse::<u32>().ok());
            let lower = msg.to_ascii_lowercase();
            if matches!(code, Some(192 | 193 | 194 | 516))
                || lower.contains("authentication failed")
                || lower.contains("wrong password")
            {
                Unusable::Authentication
            } else if code == Some(243)
                || lower.contains("no space left")
                || lower.contains("not enough space")
                || lower.contains("cannot reserve")
            {
                Unusable::DiskFull
            } else if matches!(code, Some(81 | 60)) {
                Unusable::NotSetUp
            } else {
                Unusable::Other
            }
        }
        _ => Unusable::Other,
    }
}

fn is_tls(chain: &str) -> bool {
    let l = chain.to_ascii_lowercase();
    ["certificate", "ssl", "tls", "handshake"]
        .iter()
        .any(|w| l.contains(w))
}

/// An error and its sources, each message once (`network error: client error (Connect):
/// error:0A000086:SSL routines::certificate verify failed ...`).
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// One line: which server and user, what failed, what to check; the server's own words
/// (first line, at most 300 characters, password redacted) at the end.
pub fn describe(cfg: &ClickHouseConfig, e: &clickhouse::error::Error) -> String {
    let who = format!(
        "clickhouse.url = \"{}\", clickhouse.user = \"{}\"",
        cfg.url, cfg.user
    );
    let what = match kind(e) {
        Unusable::Authentication => {
            // Loading the config reads password_file into `password`: the file names the source.
            let from = match (&cfg.password_file, &cfg.password) {
                (Some(f), _) => format!(
                    "the password from clickhouse.password_file = \"{}\"",
                    f.display()
                ),
                (None, Some(_)) => "the password from USAGE_AGG__CLICKHOUSE__PASSWORD".to_string(),
                (None, None) => "no password (none is configured)".to_string(),
            };
            format!("authentication failed: the server refused this user with {from}")
        }
        Unusable::DiskFull => {
            "the server's disk is full: inserts fail until space is freed (rows wait in Kafka)"
                .to_string()
        }
        Unusable::Unreachable => "no answer: the server is down or unreachable".to_string(),
        Unusable::Tls => "TLS handshake failed: the server's certificate is not trusted or does \
             not name the host in clickhouse.url (a private CA is trusted through OpenSSL's \
             SSL_CERT_FILE, or the system's CA store)"
            .to_string(),
        Unusable::NotSetUp => format!(
            "clickhouse.database = \"{}\" or one of its tables does not exist; run `usage-aggregator setup` (rows wait in Kafka)",
            cfg.database
        ),
        Unusable::Other => "the server refused the request".to_string(),
    };
    let mut cause: String = cause_chain(e)
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    if let Some(p) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
        cause = cause.replace(p, "***");
    }
    format!("{who}: {what} [{cause}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error as E;

    #[test]
    fn failures_name_url_and_user_never_the_password() {
        let mut cfg = crate::config::Config::default().clickhouse;
        cfg.url = "http://127.0.0.1:8123".into();
        cfg.user = "writer".into();
        cfg.password = Some("pa55-word".into());
        let auth = E::BadResponse(
            "Code: 193, e.displayText() = DB::Exception: Wrong password for user writer pa55-word"
                .into(),
        );
        assert_eq!(kind(&auth), Unusable::Authentication);
        let line = describe(&cfg, &auth);
        assert!(
            line.starts_with("clickhouse.url = \"http://127.0.0.1:8123\", clickhouse.user = \"writer\": authentication failed"),
            "{line}"
        );
        assert!(line.contains("USAGE_AGG__CLICKHOUSE__PASSWORD"), "{line}");
        assert!(!line.contains("pa55-word"), "{line}");
        let full = E::BadResponse(
            "Code: 243, e.displayText() = DB::Exception: Cannot reserve 1.00 MiB, not enough space"
                .into(),
        );
        assert_eq!(kind(&full), Unusable::DiskFull);
        assert!(describe(&cfg, &full).contains("disk is full"));
        let enospc = E::BadResponse("Code: 74, e.displayText() = DB::ErrnoException: Cannot write to file /x/data.bin, errno: 28, strerror: No space left on device".into());
        assert_eq!(kind(&enospc), Unusable::DiskFull);
        assert_eq!(kind(&E::TimedOut), Unusable::Unreachable);
        let no_db = E::BadResponse(
            "Code: 81, e.displayText() = DB::Exception: Database trial1_usage doesn't exist".into(),
        );
        assert_eq!(kind(&no_db), Unusable::NotSetUp);
        assert!(
            describe(&cfg, &no_db).contains("clickhouse.database = \"usage\" or one of its tables does not exist; run `usage-aggregator setup`"),
            "{}",
            describe(&cfg, &no_db)
        );
    }
}
