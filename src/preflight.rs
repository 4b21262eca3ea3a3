//! Preflight checks: a [`Config`] in, a verdict out before any work starts. Kafka answers
//! within `kafka.connect_timeout` (or fails with one line naming `kafka.brokers` and the
//! cause), topics exist with the right cleanup policy, ClickHouse answers (errors name the
//! `clickhouse.*` key and value, never the password), the HTTP address is free. `run` uses
//! the same probes to wait for Kafka with one rate-limited line instead of a flood.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::values::show_duration;

/// A failed preflight check: one line, naming the key and the value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PreflightError(pub String);

/// Remembers what librdkafka says about connections instead of printing it.
#[derive(Default)]
struct Capture {
    cause: Mutex<Option<String>>,
    all_down: Mutex<bool>,
    /// A security failure (SASL, TLS) and librdkafka's line, from any line seen.
    security: Mutex<Option<(crate::kafka_errors::Failure, String)>>,
}

impl Capture {
    fn seen(&self, line: &str) {
        if let Some(f) = crate::kafka_errors::classify(line) {
            let mut s = self.security.lock().expect("capture lock");
            s.get_or_insert_with(|| (f, line.to_string()));
        }
    }
}

impl ClientContext for Capture {
    fn log(&self, level: RDKafkaLogLevel, _fac: &str, msg: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.seen(msg);
            let mut c = self.cause.lock().expect("capture lock");
            c.get_or_insert_with(|| trim_broker_prefix(msg));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.seen(reason);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.all_down.lock().expect("capture lock") = true;
        } else {
            let mut c = self.cause.lock().expect("capture lock");
            c.get_or_insert_with(|| trim_broker_prefix(reason));
        }
    }
}

impl ProducerContext for Capture {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// `127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after
/// 0ms in state CONNECT)` -> `connect to ipv4#127.0.0.1:1 failed: Connection refused`.
fn trim_broker_prefix(msg: &str) -> String {
    let mut msg = msg;
    // `[thrd:host:port/bootstrap]: host:port/bootstrap: Connect ...`
    while let Some((head, rest)) = msg.split_once(": ") {
        if head.contains('/') || head.starts_with("[thrd:") {
            msg = rest;
        } else {
            break;
        }
    }
    let msg = msg.split(" (after ").next().unwrap_or(msg);
    let mut s = msg.trim().to_string();
    if let Some(first) = s.get(..1) {
        s.replace_range(..1, &first.to_ascii_lowercase());
    }
    s
}

/// A connection that has answered a metadata request (a producer handle is the lightest
/// client whose events, hence librdkafka's log lines, can be polled and captured).
pub struct Kafka {
    probe: BaseProducer<Capture>,
    admin: AdminClient<DefaultClientContext>,
    timeout: Duration,
    brokers: String,
}

impl Kafka {
    /// Connects and asks for metadata; fails within `kafka.connect_timeout` (at once when
    /// every broker refuses) with one line naming `kafka.brokers`, its value and the cause.
    pub async fn connect(cfg: &Config) -> Result<Kafka, PreflightError> {
        let brokers = cfg.kafka.brokers.clone();
        let timeout = cfg.kafka.connect_timeout;
        let mut c = crate::kafka::client_config(cfg, &[]);
        c.set("log.connection.close", "false");
        let refused =
            |e: KafkaError| PreflightError(format!("kafka client configuration refused: {e}"));
        let probe: BaseProducer<Capture> =
            c.create_with_context(Capture::default()).map_err(refused)?;
        let admin: AdminClient<DefaultClientContext> = c.create().map_err(refused)?;
        let k = Kafka {
            probe,
            admin,
            timeout,
            brokers,
        };
        tokio::task::block_in_place(|| k.probe(cfg, &c))?;
        Ok(k)
    }

    /// Asks for metadata until the deadline. A security failure (refused credentials, an
    /// untrusted certificate, a plaintext client on a TLS port) ends it at once with
    /// [`crate::kafka_errors`]'s line naming the listener and the mechanism.
    fn probe(&self, cfg: &Config, c: &rdkafka::ClientConfig) -> Result<(), PreflightError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let ctx = self.probe.context();
        let mut tls_tried = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let step = left.min(Duration::from_millis(500));
            if self
                .probe
                .client()
                .fetch_metadata(None, step.max(Duration::from_millis(1)))
                .is_ok()
            {
                return Ok(());
            }
            // Serves librdkafka's log and error events into the capture.
            self.probe.poll(Duration::ZERO);
            let security = ctx.security.lock().expect("capture lock").clone();
            if let Some((failure, line)) = security {
                return Err(PreflightError(crate::kafka_errors::diagnose(
                    cfg, c, failure, &line,
                )));
            }
            // A plaintext client on a TLS port hears nothing (or all brokers end up down):
            // try a TLS handshake on the address once to say so.
            let all_down_now = *ctx.all_down.lock().expect("capture lock");
            if !tls_tried
                && (all_down_now || started.elapsed() >= crate::kafka_errors::PLAINTEXT_SILENCE)
            {
                tls_tried = true;
                if let Some(why) = crate::kafka_errors::plaintext_on_tls(cfg, c) {
                    return Err(PreflightError(why));
                }
            }
            let all_down = *ctx.all_down.lock().expect("capture lock");
            let cause = ctx.cause.lock().expect("capture lock").clone();
            if (all_down && cause.is_some()) || Instant::now() >= deadline {
                let why = match (all_down, cause) {
                    (true, Some(c)) => format!("no broker is reachable ({c})"),
                    (_, Some(c)) => format!(
                        "no broker answered within {} ({c})",
                        show_duration(self.timeout)
                    ),
                    (_, None) => {
                        format!("no broker answered within {}", show_duration(self.timeout))
                    }
                };
                return Err(PreflightError(format!(
                    "kafka.brokers = \"{}\": {why}; check the address and that Kafka runs, or raise kafka.connect_timeout",
                    self.brokers
                )));
            }
        }
    }

    /// Partition count of `topic`, or None when it does not exist. A topic just created
    /// whose partitions have no leader yet is waited for (up to `kafka.connect_timeout`).
    pub fn partitions(&self, topic: &str) -> Result<Option<usize>, PreflightError> {
        use rdkafka::types::RDKafkaRespErr;
        let deadline = Instant::now() + self.timeout;
        loop {
            let md = tokio::task::block_in_place(|| {
                self.probe
                    .client()
                    .fetch_metadata(Some(topic), self.timeout)
            })
            .map_err(|e| {
                PreflightError(format!(
                    "kafka.brokers = \"{}\": metadata of topic {topic}: {e}",
                    self.brokers
                ))
            })?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Ok(None);
            };
            if t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
                return Ok(None);
            }
            if t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED) {
                return Err(PreflightError(format!(
                    "topic {topic}: operation Describe is not allowed to this principal on {} (Kafka ACL: TOPIC_AUTHORIZATION_FAILED); create the role's ACLs with scripts/kafka-acls (docs/operations.md#kafka-acls)",
                    self.brokers
                )));
            }
            let settled = t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions()
                    .iter()
                    .all(|p| p.error().is_none() && p.leader() >= 0);
            if settled || Instant::now() >= deadline {
                return Ok((!t.partitions().is_empty()).then_some(t.partitions().len()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fails unless `topic` (configured as `key`) exists, and, when `compacted`, has
    /// `cleanup.policy` including `compact`.
    pub async fn require_topic(
        &self,
        key: &str,
        topic: &str,
        compacted: bool,
    ) -> Result<(), PreflightError> {
        if self.partitions(topic)?.is_none() {
            return Err(PreflightError(format!(
                "{key} = \"{topic}\": the topic does not exist on {}; run `usage-aggregator setup` first (or fix {key})",
                self.brokers
            )));
        }
        if !compacted {
            return Ok(());
        }
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        let res = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .map_err(|e| {
                PreflightError(format!(
                    "{key} = \"{topic}\": cannot read its configuration: {e}"
                ))
            })?;
        let policy = res
            .into_iter()
            .next()
            .and_then(|r| r.ok())
            .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()))
            .unwrap_or_default();
        if !policy.split(',').any(|p| p.trim() == "compact") {
            return Err(PreflightError(format!(
                "{key} = \"{topic}\": cleanup.policy is \"{policy}\", not compact: older price versions would be deleted by retention; recreate it with `usage-aggregator setup` (or set cleanup.policy=compact)"
            )));
        }
        Ok(())
    }
}

/// Kafka answers and every topic of `topics.*` exists (a service started before `setup`
/// otherwise waited silently and blamed the empty catalog).
async fn kafka_and_topics(cfg: &Config) -> Result<(), PreflightError> {
    let k = Kafka::connect(cfg).await?;
    for (key, topic) in cfg.topics.all() {
        k.require_topic(key, topic, false).await?;
    }
    Ok(())
}

/// Waits until Kafka answers and the topics exist, logging one line per 30 s while not and
/// keeping that line in `health.kafka_wait` for `/readyz`. Returns false when `stop` is
/// cancelled first (a requested stop, not a failure).
pub async fn wait_for_kafka(
    cfg: &Config,
    stop: &CancellationToken,
    health: &crate::health::Health,
) -> bool {
    let mut last_log: Option<Instant> = None;
    loop {
        let r = kafka_and_topics(cfg).await;
        *health.kafka_wait.lock().expect("health lock") = r.as_ref().err().map(|e| e.to_string());
        match r {
            Ok(_) => {
                if last_log.is_some() {
                    tracing::info!(brokers = %cfg.kafka.brokers, "kafka reachable");
                }
                return true;
            }
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!("{e}; retrying every 2s");
                    last_log = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Describes a ClickHouse failure in the operator's terms: which key, which value, what to
/// do. Never includes the password.
pub fn clickhouse_error(cfg: &Config, e: &clickhouse::error::Error) -> PreflightError {
    use crate::sink::errors::{Unusable, describe, kind};
    // Refused credentials, a TLS failure, a full disk: the same line `/readyz` serves.
    if matches!(
        kind(e),
        Unusable::Authentication | Unusable::Tls | Unusable::DiskFull
    ) {
        return PreflightError(describe(&cfg.clickhouse, e));
    }
    let c = &cfg.clickhouse;
    let chain = crate::sink::errors::cause_chain(e);
    let msg = match e {
        clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut => {
            format!("clickhouse.url = \"{}\": cannot connect ({chain})", c.url)
        }
        clickhouse::error::Error::BadResponse(text)
            if [
                "Code: 516",
                "Code: 192",
                "Code: 193",
                "Code: 194",
                "AUTHENTICATION_FAILED",
            ]
            .iter()
            .any(|c| text.contains(c)) =>
        {
            let from = match (&c.password_file, &c.password) {
                (Some(f), _) => format!(
                    "password from clickhouse.password_file = \"{}\"",
                    f.display()
                ),
                (None, Some(_)) => "password from USAGE_AGG__CLICKHOUSE__PASSWORD".into(),
                (None, None) => "no password set".into(),
            };
            format!(
                "clickhouse.user = \"{}\": authentication failed at {} ({from})",
                c.user, c.url
            )
        }
        clickhouse::error::Error::BadResponse(text)
            if text.contains("Code: 81") || text.contains("UNKNOWN_DATABASE") =>
        {
            format!(
                "clickhouse.database = \"{}\": does not exist at {}; run `usage-aggregator setup`",
                c.database, c.url
            )
        }
        clickhouse::error::Error::BadResponse(text)
            if text.contains("Code: 60") || text.contains("UNKNOWN_TABLE") =>
        {
            format!(
                "clickhouse.database = \"{}\": tables are missing at {}; run `usage-aggregator setup`",
                c.database, c.url
            )
        }
        _ => format!("clickhouse at {}: {chain}", c.url),
    };
    PreflightError(msg)
}

/// Asks ClickHouse `SELECT 1` within 10 s; errors name the key and value.
pub async fn clickhouse(cfg: &Config) -> Result<(), PreflightError> {
    let client = crate::sink::client(&cfg.clickhouse).map_err(|e| PreflightError(e.to_string()))?;
    let q = client.query("SELECT 1").fetch_one::<u8>();
    match tokio::time::timeout(Duration::from_secs(10), q).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(clickhouse_error(cfg, &e)),
        Err(_) => Err(PreflightError(format!(
            "clickhouse.url = \"{}\": no answer within 10s",
            cfg.clickhouse.url
        ))),
    }
}

/// Binds `http.listen`; a taken address fails here, before any stage starts.
pub fn bind_http(cfg: &Config) -> Result<tokio::net::TcpListener, PreflightError> {
    let listen = &cfg.http.listen;
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let l = std::net::TcpListener::bind(listen)?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    bind().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another process listens there: stop it or choose another http.listen"
        } else {
            ""
        };
        PreflightError(format!("http.listen = {listen}: {e}{hint}"))
    })
}

/// Logs the effective settings (secrets redacted) and what is missing, at `run` start.
pub fn announce(cfg: &Config, role: &str) {
    let settings: Vec<String> = cfg
        .effective_settings()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::info!(role, settings = %settings.join(" "), "effective settings");
    let f = &cfg.pricing.catalog_file;
    if !f.as_os_str().is_empty() && !f.is_file() {
        tracing::warn!(
            "pricing.catalog_file = \"{}\" does not exist; an empty catalog topic cannot be seeded from it (relative paths are resolved against the config file's directory)",
            f.display()
        );
    }
}

/// Logs one clear line when ClickHouse cannot be used at start (the sink keeps retrying):
/// unreachable, refused, or without `clickhouse.database` (`setup` not run for it).
pub async fn report_clickhouse(cfg: Config) {
    let with_database = async {
        clickhouse(&cfg).await?;
        let client = crate::sink::client(&cfg.clickhouse)
            .map_err(|e| PreflightError(e.to_string()))?
            .with_database(&cfg.clickhouse.database);
        let q = client.query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(Duration::from_secs(10), q).await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(clickhouse_error(&cfg, &e)),
        }
    };
    if let Err(e) = with_database.await {
        tracing::warn!("{e}; the sink retries with backoff, rows wait in Kafka");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_messages_are_trimmed_to_the_cause() {
        assert_eq!(
            trim_broker_prefix(
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"
            ),
            "connect to ipv4#127.0.0.1:1 failed: Connection refused"
        );
        assert_eq!(trim_broker_prefix("Local: timed out"), "local: timed out");
        assert_eq!(
            trim_broker_prefix("[thrd:h:1/bootstrap]: h:1/bootstrap: Failed to resolve 'h:1'"),
            "failed to resolve 'h:1'"
        );
        assert_eq!(
            trim_broker_prefix("[thrd:h:1/bootstrap]: h:1/bootstrap: Failed to resolve 'h:1'"),
            "failed to resolve 'h:1'"
        );
    }

    #[test]
    fn http_port_taken_names_the_key() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = Config::default();
        cfg.http.listen = holder.local_addr().unwrap().to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let e = rt
            .block_on(async { bind_http(&cfg).unwrap_err() })
            .to_string();
        assert!(
            e.starts_with(&format!("http.listen = {}: ", cfg.http.listen)),
            "{e}"
        );
        assert!(e.contains("in use"), "{e}");
    }
}
