//! Kafka connection failures in the operator's terms: librdkafka's log and error lines in, one
//! line out that names `kafka.brokers`, `security.protocol` and `sasl.mechanisms` and says what
//! to fix (a wrong password, an untrusted CA, a certificate for another host name, a plaintext
//! client on a TLS listener). Never the secret: the configured `sasl.password` is redacted
//! from anything quoted. `preflight::Kafka::connect` (every command, and `run` while it waits
//! for Kafka) classifies what it captures with [`classify`] and reports [`diagnose`]'s line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use crate::config::Config;

/// Why a connection to a secured (or mis-secured) listener failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The broker refused the SASL username or password.
    Authentication,
    /// The broker does not offer the configured SASL mechanism.
    Mechanism,
    /// The broker's certificate did not verify: an untrusted CA or a host name the
    /// certificate does not name (librdkafka reports both alike; see [`check`]).
    CertificateVerify,
    /// The chain is trusted but the certificate is for another host name.
    HostnameMismatch,
    /// A plaintext client on a TLS (SSL/SASL_SSL) listener: Apache Kafka does not answer it.
    PlaintextOnTls,
    /// A TLS client on a plaintext listener.
    TlsOnPlaintext,
    /// Any other TLS handshake failure.
    Tls,
}

/// Recognises a librdkafka log or error line (`reason` of an error event, or a log message).
/// Returns None for lines that are not about security (refused connections, timeouts).
pub fn classify(line: &str) -> Option<Failure> {
    let l = line.to_ascii_lowercase();
    if l.contains("sasl authentication error")
        || l.contains("sasl scram authentication failed")
        || l.contains("authentication failed during authentication")
        || l.contains("invalid credentials")
    {
        Some(Failure::Authentication)
    } else if l.contains("unsupported sasl mechanism")
        || (l.contains("sasl") && l.contains("mechanism") && l.contains("not supported"))
    {
        Some(Failure::Mechanism)
    } else if l.contains("hostname mismatch") || l.contains("ip address mismatch") {
        Some(Failure::HostnameMismatch)
    } else if l.contains("certificate verify failed")
        || l.contains("broker certificate could not be verified")
        || l.contains("failed to verify broker certificate")
    {
        Some(Failure::CertificateVerify)
    } else if l.contains("connecting to a ssl listener?")
        || (l.contains("disconnected") && l.contains("apiversion") && !l.contains("< 0.10 (see"))
    {
        Some(Failure::PlaintextOnTls)
    } else if l.contains("connecting to a plaintext broker listener?")
        || l.contains("wrong version number")
        || l.contains("packet length too long")
        || l.contains("record layer failure")
    {
        Some(Failure::TlsOnPlaintext)
    } else if l.contains("ssl handshake failed") {
        Some(Failure::Tls)
    } else {
        None
    }
}

/// The effective value of a librdkafka property of the client configuration, or its default.
fn prop<'a>(c: &'a ClientConfig, key: &str, default: &'a str) -> &'a str {
    c.get(key).unwrap_or(default)
}

/// `kafka.brokers = "..." (security.protocol = X, sasl.mechanisms = Y)`: the listener and the
/// mechanism, as every message starts.
pub fn listener(cfg: &Config) -> String {
    let c = crate::kafka::client_config(cfg, &[]);
    let proto = prop(&c, "security.protocol", "plaintext").to_ascii_uppercase();
    let mut s = format!(
        "kafka.brokers = \"{}\" (security.protocol = {proto}",
        cfg.kafka.brokers
    );
    if proto.starts_with("SASL") {
        s.push_str(&format!(
            ", sasl.mechanisms = {}, sasl.username = \"{}\"",
            prop(&c, "sasl.mechanisms", "GSSAPI"),
            prop(&c, "sasl.username", "")
        ));
    }
    s.push(')');
    s
}

/// One line for the operator: the listener, the mechanism, what failed and what to check.
/// `cause` is librdkafka's line, quoted with any configured password redacted.
pub fn describe(cfg: &Config, failure: Failure, cause: &str) -> String {
    let c = crate::kafka::client_config(cfg, &[]);
    let ca = match c.get("ssl.ca.location") {
        Some(f) => format!("ssl.ca.location = \"{f}\""),
        None => "ssl.ca.location is not set: the system's CA store is used".into(),
    };
    let what = match failure {
        Failure::Authentication => format!(
            "authentication failed: the broker refused user \"{}\" with mechanism {}; check \
             sasl.username and the password (USAGE_AGG_KAFKA_PROP_SASL_PASSWORD) and that the \
             user exists for this mechanism",
            prop(&c, "sasl.username", ""),
            prop(&c, "sasl.mechanisms", "GSSAPI")
        ),
        Failure::Mechanism => format!(
            "the listener does not offer sasl.mechanisms = {}; use one it enables",
            prop(&c, "sasl.mechanisms", "GSSAPI")
        ),
        Failure::CertificateVerify => format!(
            "TLS handshake failed: the broker's certificate is not signed by a trusted CA ({ca})"
        ),
        Failure::HostnameMismatch => format!(
            "TLS handshake failed: the broker's certificate is trusted but does not name the host \
             in kafka.brokers; connect with a name the certificate lists (its subjectAltName) \
             ({ca})"
        ),
        Failure::PlaintextOnTls => format!(
            "no answer to plaintext requests: this listener expects TLS but \
             security.protocol = {}; set security.protocol = SASL_SSL (or SSL) as the listener \
             requires",
            prop(&c, "security.protocol", "plaintext").to_ascii_uppercase()
        ),
        Failure::TlsOnPlaintext => "TLS handshake failed: this listener does not speak TLS; \
             check the port, or set security.protocol = PLAINTEXT / SASL_PLAINTEXT"
            .to_string(),
        Failure::Tls => format!("TLS handshake failed ({ca})"),
    };
    let mut cause = trim(cause);
    if failure == Failure::HostnameMismatch {
        // librdkafka's hint about ssl.ca.location does not apply: the chain verified.
        cause = cause
            .split(": broker certificate could not be verified")
            .next()
            .unwrap_or_default()
            .to_string();
    }
    format!("{}: {what} [{}]", listener(cfg), redact(cfg, &cause))
}

/// Removes the configured SASL password (and, defensively, the ClickHouse one) from `text`.
pub fn redact(cfg: &Config, text: &str) -> String {
    let c = crate::kafka::client_config(cfg, &[]);
    let mut out = text.to_string();
    let secrets = [
        c.get("sasl.password").map(str::to_string),
        c.get("ssl.key.password").map(str::to_string),
        cfg.clickhouse.password.clone(),
    ];
    for s in secrets.into_iter().flatten().filter(|s| !s.is_empty()) {
        out = out.replace(&s, "***");
    }
    out
}

/// `[thrd:sasl_ssl://h:1/bootstrap]: sasl_ssl://h:1/bootstrap: SSL handshake failed: x (after
/// 3ms in state SSL_HANDSHAKE, 2 identical error(s) suppressed)` -> `sasl_ssl://h:1/bootstrap:
/// SSL handshake failed: x`.
fn trim(line: &str) -> String {
    let mut s = line.trim();
    if s.starts_with("[thrd:")
        && let Some((_, rest)) = s.split_once("]: ")
    {
        s = rest;
    }
    s.split(" (after ").next().unwrap_or(s).trim().to_string()
}

/// Collects what librdkafka says about connections instead of logging it.
#[derive(Default)]
struct Capture {
    lines: Mutex<Vec<String>>,
}

impl Capture {
    fn push(&self, line: String) {
        let mut l = self.lines.lock().expect("capture lock");
        if l.len() < 64 {
            l.push(line);
        }
    }

    /// The first security failure seen, with its line.
    fn failure(&self) -> Option<(Failure, String)> {
        let l = self.lines.lock().expect("capture lock");
        l.iter().find_map(|x| classify(x).map(|f| (f, x.clone())))
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("capture lock").clone()
    }
}

impl ClientContext for Capture {
    fn log(&self, level: RDKafkaLogLevel, _fac: &str, msg: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.push(msg.to_string());
        }
    }

    fn error(&self, _error: KafkaError, reason: &str) {
        self.push(reason.to_string());
    }
}

impl ProducerContext for Capture {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Outcome of one probe attempt.
enum Probe {
    Connected,
    Failed(Failure, String),
    /// No answer in time; what librdkafka said meanwhile.
    TimedOut(Vec<String>),
}

/// Asks for metadata until `timeout`; stops early on a classified failure, or when `settled`
/// says the captured lines already answer the caller's question.
fn probe(
    c: &ClientConfig,
    timeout: Duration,
    settled: impl Fn(&[String]) -> bool,
) -> Result<Probe, KafkaError> {
    let client: BaseProducer<Capture> = c.create_with_context(Capture::default())?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = left
            .min(Duration::from_millis(300))
            .max(Duration::from_millis(1));
        if client.client().fetch_metadata(None, step).is_ok() {
            return Ok(Probe::Connected);
        }
        // Serves librdkafka's log and error events into the capture.
        client.poll(Duration::ZERO);
        if let Some((f, line)) = client.context().failure() {
            return Ok(Probe::Failed(f, line));
        }
        let lines = client.context().lines();
        if Instant::now() >= deadline || settled(&lines) {
            return Ok(Probe::TimedOut(lines));
        }
    }
}

/// The line for a security failure seen by a connection probe with client configuration `c`
/// (preflight's). A certificate that does not verify is probed once more without host name
/// verification, to tell a certificate for another host (the chain verifies) from an
/// untrusted CA: librdkafka reports both as "certificate verify failed".
pub fn diagnose(cfg: &Config, c: &ClientConfig, failure: Failure, line: &str) -> String {
    let failure = match failure {
        Failure::CertificateVerify => {
            let mut lax = c.clone();
            lax.set("ssl.endpoint.identification.algorithm", "none");
            lax.set_log_level(RDKafkaLogLevel::Warning);
            match probe(&lax, Duration::from_secs(5), |_| false) {
                Ok(Probe::Connected) => Failure::HostnameMismatch,
                Ok(Probe::Failed(f, _)) if f != Failure::CertificateVerify && f != Failure::Tls => {
                    Failure::HostnameMismatch
                }
                _ => Failure::CertificateVerify,
            }
        }
        f => f,
    };
    describe(cfg, failure, line)
}

/// When `c` is a plaintext client (PLAINTEXT or SASL_PLAINTEXT) whose broker does not
/// answer, and the address completes a TLS handshake: the line saying so. Apache Kafka does
/// not answer a plaintext request on a TLS listener at all (it logs "SSL handshake failed"
/// and keeps the socket), so silence is all the client sees; call this after
/// [`PLAINTEXT_SILENCE`] without an answer.
pub fn plaintext_on_tls(cfg: &Config, c: &ClientConfig) -> Option<String> {
    let plaintext = !prop(c, "security.protocol", "plaintext")
        .to_ascii_lowercase()
        .contains("ssl");
    (plaintext && speaks_tls(c)).then(|| {
        describe(
            cfg,
            Failure::PlaintextOnTls,
            "no answer to the first request (ApiVersion); the port completes a TLS handshake",
        )
    })
}

/// How long a plaintext client waits for its first answer before trying TLS on the port.
pub const PLAINTEXT_SILENCE: Duration = Duration::from_secs(3);

/// True when the bootstrap address completes a TLS handshake (certificate not checked): a
/// client configured for plaintext is then talking to a TLS listener.
fn speaks_tls(c: &ClientConfig) -> bool {
    let mut tls = c.clone();
    tls.set("security.protocol", "ssl")
        .set("enable.ssl.certificate.verification", "false")
        .set("ssl.endpoint.identification.algorithm", "none")
        // The broker hanging up after the handshake is the evidence: it must be logged.
        .set("log.connection.close", "true");
    tls.set_log_level(RDKafkaLogLevel::Warning);
    for k in [
        "sasl.mechanisms",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password",
    ] {
        tls.remove(k);
    }
    // Settled once the handshake got through, or the port refused or failed it.
    let settled = |lines: &[String]| {
        lines.iter().any(|l| {
            past_handshake(l) || l.contains("Connection refused") || l.contains("handshake failed")
        })
    };
    match probe(&tls, PLAINTEXT_SILENCE, settled) {
        Ok(Probe::Connected) => true,
        // The handshake completed when librdkafka got past it (state UP or a request).
        Ok(Probe::TimedOut(lines)) => lines.iter().any(|l| past_handshake(l)),
        Ok(Probe::Failed(_, line)) => past_handshake(&line),
        Err(_) => false,
    }
}

fn past_handshake(line: &str) -> bool {
    ["in state UP", "in state APIVERSION_QUERY", "in state AUTH"]
        .iter()
        .any(|s| line.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_lines_are_classified() {
        let cases = [
            (
                "sasl_ssl://127.0.0.1:1/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 5ms in state AUTH_REQ)",
                Some(Failure::Authentication),
            ),
            (
                "ssl://h:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 3ms in state SSL_HANDSHAKE)",
                Some(Failure::CertificateVerify),
            ),
            (
                "127.0.0.1:1/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)",
                Some(Failure::PlaintextOnTls),
            ),
            (
                "ssl://h:1/bootstrap: SSL handshake failed: error:0A00010B:SSL routines::wrong version number (after 0ms in state SSL_HANDSHAKE)",
                Some(Failure::TlsOnPlaintext),
            ),
            (
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)",
                None,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(classify(line), want, "{line}");
        }
    }

    #[test]
    fn descriptions_name_listener_and_mechanism_never_the_password() {
        let mut cfg = Config::default();
        cfg.kafka.brokers = "127.0.0.1:9093".into();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "svc"),
            ("sasl.password", "hunter2-secret"),
        ] {
            cfg.kafka.properties.insert(k.into(), v.into());
        }
        let line = describe(
            &cfg,
            Failure::Authentication,
            "[thrd:x]: x: echo hunter2-secret (after 1ms in state AUTH_REQ)",
        );
        assert!(line.starts_with("kafka.brokers = \"127.0.0.1:9093\" (security.protocol = SASL_SSL, sasl.mechanisms = SCRAM-SHA-512, sasl.username = \"svc\"): authentication failed"), "{line}");
        assert!(!line.contains("hunter2-secret"), "{line}");
        assert!(line.contains("echo ***"), "{line}");
        assert!(!line.contains("after 1ms"), "{line}");
    }
}
