//! Validation of a loaded [`Config`]: ranges, formats and cross-field rules in, the first
//! broken rule out as a [`ConfigError`] naming the key and the value (never a secret).

use std::time::Duration;

use rust_decimal::Decimal;

use super::values::show_duration;
use super::{Config, ConfigError, Delivery};
use crate::money::MAX_MARKUP_RATE_SCALE;

/// The longest `ledger.expiry_warning`: the bound the ledger's command check holds
/// (`ledger::command::MAX_WARNING_SECS`, a layer above; a test holds them equal).
pub(super) const MAX_EXPIRY_WARNING_SECS: u64 = 3650 * 86_400;

/// librdkafka properties that have a typed key of their own, and secrets that never go in a
/// file: (property, what to use instead).
const OWNED_PROPERTIES: [(&str, &str); 8] = [
    ("bootstrap.servers", "kafka.brokers"),
    (
        "group.id",
        "kafka.group_id, kafka.sink_group_id, kafka.alerts_group_id",
    ),
    ("session.timeout.ms", "kafka.session_timeout"),
    (
        "socket.connection.setup.timeout.ms",
        "kafka.connect_timeout",
    ),
    (
        "sasl.password",
        "the environment: USAGE_AGG_KAFKA_PROP_SASL_PASSWORD",
    ),
    (
        "ssl.key.password",
        "the environment: USAGE_AGG_KAFKA_PROP_SSL_KEY_PASSWORD",
    ),
    (
        "ssl.keystore.password",
        "the environment: USAGE_AGG_KAFKA_PROP_SSL_KEYSTORE_PASSWORD",
    ),
    (
        "sasl.oauthbearer.client.secret",
        "the environment: USAGE_AGG_KAFKA_PROP_SASL_OAUTHBEARER_CLIENT_SECRET",
    ),
];

impl Config {
    /// Cross-field and range checks; each error names the key and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(ConfigError::invalid(key, value, why))
        };
        let rate = self.rollup.markup_rate;
        if rate.is_sign_negative() || rate > Decimal::from(10) {
            return invalid("rollup.markup_rate", &rate, "must be between 0 and 10");
        }
        if rate.normalize().scale() > MAX_MARKUP_RATE_SCALE {
            return invalid("rollup.markup_rate", &rate, "may have at most 6 decimals");
        }
        self.validate_kafka()?;
        let r = &self.rollup;
        if r.max_open_executions == 0 {
            return invalid("rollup.max_open_executions", &0, "must be at least 1");
        }
        if r.execution_idle_timeout < Duration::from_millis(100) {
            return invalid(
                "rollup.execution_idle_timeout",
                &show_duration(r.execution_idle_timeout),
                "must be at least 100ms",
            );
        }
        if r.max_event_bytes < 1024 {
            return invalid(
                "rollup.max_event_bytes",
                &r.max_event_bytes,
                "must be at least 1024",
            );
        }
        if self.pipeline.checkpoint_interval.is_zero() {
            return invalid(
                "pipeline.checkpoint_interval",
                &"0s",
                "must be more than 0s",
            );
        }
        if self.pipeline.delivery == Delivery::AtLeastOnce {
            return invalid(
                "pipeline.delivery",
                &"\"at_least_once\"",
                "at_least_once was removed: every stage needs Kafka transactions (Apache Kafka >= 2.5, \
                 or a compatible broker with transactions enabled); set pipeline.delivery = \"exactly_once\" \
                 (see README, \"Delivery\")",
            );
        }
        if self.pipeline.max_in_flight == 0 {
            return invalid("pipeline.max_in_flight", &0, "must be at least 1");
        }
        if self.sink.batch_rows == 0 {
            return invalid("sink.batch_rows", &0, "must be at least 1");
        }
        for (key, v) in [
            (
                "alerts.account_hourly_credits",
                self.alerts.account_hourly_credits,
            ),
            ("alerts.execution_credits", self.alerts.execution_credits),
        ] {
            if v.is_some_and(|v| v <= Decimal::ZERO) {
                return invalid(
                    key,
                    &v.unwrap_or_default(),
                    "must be more than 0, or \"off\"",
                );
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return invalid("log.filter", &self.log.filter, &e.to_string());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "http.listen",
                &self.http.listen,
                "must be ip:port, e.g. 127.0.0.1:9464 or 0.0.0.0:9464",
            );
        }
        self.validate_http()?;
        self.validate_clickhouse()?;
        self.validate_ledger()?;
        self.validate_topics()
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        let brokers: Vec<&str> = k.brokers.split(',').map(str::trim).collect();
        if brokers.iter().any(|b| b.is_empty()) {
            return Err(ConfigError::invalid(
                "kafka.brokers",
                format!("\"{}\"", k.brokers),
                "must list host:port entries separated by commas",
            ));
        }
        for b in &brokers {
            let hostport = b.rsplit("://").next().unwrap_or(b);
            if let Some((host, port)) = hostport.rsplit_once(':')
                && (host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0))
            {
                return Err(ConfigError::invalid(
                    "kafka.brokers",
                    format!("\"{}\"", k.brokers),
                    format!("\"{b}\" is not host:port"),
                ));
            }
        }
        for (key, group) in [
            ("kafka.group_id", &k.group_id),
            ("kafka.sink_group_id", &k.sink_group_id),
            ("kafka.alerts_group_id", &k.alerts_group_id),
        ] {
            if group.trim().is_empty() {
                return Err(ConfigError::invalid(key, "\"\"", "must not be empty"));
            }
        }
        if k.connect_timeout < Duration::from_millis(100)
            || k.connect_timeout > Duration::from_secs(300)
        {
            return Err(ConfigError::invalid(
                "kafka.connect_timeout",
                show_duration(k.connect_timeout),
                "must be between 100ms and 5m",
            ));
        }
        if k.session_timeout < Duration::from_secs(3)
            || k.session_timeout > Duration::from_secs(1800)
        {
            return Err(ConfigError::invalid(
                "kafka.session_timeout",
                show_duration(k.session_timeout),
                "must be between 3s and 30m (brokers allow 6s to 30m by default)",
            ));
        }
        let stall = self.pipeline.stall_exit_after;
        if !stall.is_zero() && stall < self.pipeline.transaction_timeout * 2 {
            return Err(ConfigError::invalid(
                "pipeline.stall_exit_after",
                show_duration(stall),
                format!(
                    "must be 0s (never) or at least twice pipeline.transaction_timeout ({}): a commit that fails may take that long to abort",
                    show_duration(self.pipeline.transaction_timeout)
                ),
            ));
        }
        if self.pipeline.drain_timeout > k.session_timeout {
            return Err(ConfigError::invalid(
                "pipeline.drain_timeout",
                show_duration(self.pipeline.drain_timeout),
                format!(
                    "must not exceed kafka.session_timeout ({}): a revoke drain that outlives the session lets the group hand the partitions to another member while this one still writes",
                    show_duration(k.session_timeout)
                ),
            ));
        }
        for (prop, instead) in OWNED_PROPERTIES {
            if k.properties.contains_key(prop) {
                return Err(ConfigError::invalid(
                    &format!("kafka.properties.\"{prop}\""),
                    "(not shown)",
                    format!("set it with {instead}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_clickhouse(&self) -> Result<(), ConfigError> {
        let c = &self.clickhouse;
        let bad_url = |why: &str| {
            Err(ConfigError::invalid(
                "clickhouse.url",
                format!("\"{}\"", c.url),
                format!("{why}; write it like http://127.0.0.1:8123 or https://host:8443"),
            ))
        };
        match url::Url::parse(&c.url) {
            Err(e) => return bad_url(&format!("not a URL ({e})")),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                return bad_url(&format!("scheme \"{}\" is not http or https", u.scheme()));
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => return bad_url("no host"),
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return Err(ConfigError::invalid(
                    "clickhouse.url",
                    "(not shown: it holds credentials)",
                    "must not hold credentials; use clickhouse.user and USAGE_AGG__CLICKHOUSE__PASSWORD or clickhouse.password_file",
                ));
            }
            Ok(_) => {}
        }
        if c.database.is_empty()
            || !c
                .database
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            return Err(ConfigError::invalid(
                "clickhouse.database",
                format!("\"{}\"", c.database),
                "must be letters, digits and _",
            ));
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        if let (Some(new), Some(old)) = (&h.api_token_file, &self.ledger.api_token_file) {
            return Err(ConfigError::invalid(
                "ledger.api_token_file",
                old.display(),
                format!(
                    "is the old name of http.api_token_file, which is set too ({}); keep http.api_token_file",
                    new.display()
                ),
            ));
        }
        for (key, n) in [
            ("http.auth_failure_burst", h.auth_failure_burst),
            ("http.auth_failures_per_minute", h.auth_failures_per_minute),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(key, 0, "must be at least 1"));
            }
        }
        let header = h.client_address_header.trim();
        if !header.is_empty() && axum::http::HeaderName::try_from(header).is_err() {
            return Err(ConfigError::invalid(
                "http.client_address_header",
                format!("\"{header}\""),
                "is not a header name; write it like x-forwarded-for, or \"\" for the peer address",
            ));
        }
        if !(1..=10_000).contains(&h.recent_entries) {
            return Err(ConfigError::invalid(
                "http.recent_entries",
                h.recent_entries,
                "must be 1 to 10000",
            ));
        }
        Ok(())
    }

    fn validate_ledger(&self) -> Result<(), ConfigError> {
        let l = &self.ledger;
        if l.min_topup <= Decimal::ZERO {
            return Err(ConfigError::invalid(
                "ledger.min_topup",
                l.min_topup,
                "must be more than 0",
            ));
        }
        if l.refusal_memory == 0 {
            return Err(ConfigError::invalid(
                "ledger.refusal_memory",
                0,
                "must be at least 1",
            ));
        }
        if l.expiry_warning.as_secs() > MAX_EXPIRY_WARNING_SECS {
            return Err(ConfigError::invalid(
                "ledger.expiry_warning",
                show_duration(l.expiry_warning),
                "must be at most 3650days",
            ));
        }
        if l.answer_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "ledger.answer_timeout",
                "0s",
                "must be more than 0",
            ));
        }
        if l.max_batch == 0 {
            return Err(ConfigError::invalid(
                "ledger.max_batch",
                0,
                "must be at least 1",
            ));
        }
        for (key, g) in [
            ("ledger.group_id", &l.group_id),
            ("ledger.voucher_group_id", &l.voucher_group_id),
        ] {
            if g.trim().is_empty() {
                return Err(ConfigError::invalid(key, "\"\"", "must not be empty"));
            }
        }
        if l.commit_interval * 4 > self.pipeline.transaction_timeout {
            return Err(ConfigError::invalid(
                "ledger.commit_interval",
                show_duration(l.commit_interval),
                format!(
                    "must be at most a quarter of pipeline.transaction_timeout ({})",
                    show_duration(self.pipeline.transaction_timeout)
                ),
            ));
        }
        Ok(())
    }

    fn validate_topics(&self) -> Result<(), ConfigError> {
        let t = &self.topics;
        for (key, name) in t.all() {
            if name.is_empty()
                || name.len() > 249
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("\"{name}\""),
                    "a topic name is 1 to 249 of a-z A-Z 0-9 . _ -",
                ));
            }
        }
        let all = t.all();
        for (i, (key, name)) in all.iter().enumerate() {
            if let Some((other, _)) = all[..i].iter().find(|(_, n)| n == name) {
                return Err(ConfigError::invalid(
                    key,
                    format!("\"{name}\""),
                    format!("is also {other}; every topic needs its own name"),
                ));
            }
        }
        for (key, n) in [
            ("topics.partitions", t.partitions),
            ("topics.output_partitions", t.output_partitions),
            ("topics.replication_factor", t.replication_factor),
        ] {
            if n < 1 {
                return Err(ConfigError::invalid(key, n, "must be at least 1"));
            }
        }
        if t.min_insync_replicas < 1 || t.min_insync_replicas > t.replication_factor {
            return Err(ConfigError::invalid(
                "topics.min_insync_replicas",
                t.min_insync_replicas,
                format!(
                    "must be between 1 and topics.replication_factor ({})",
                    t.replication_factor
                ),
            ));
        }
        Ok(())
    }
}
