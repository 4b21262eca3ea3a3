//! Configuration: built-in defaults < TOML file < environment (`USAGE_AGG__SECTION__KEY`).
//! `validate()` checks cross-field rules before any connection opens and names the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::MAX_MARKUP_RATE_SCALE;
use crate::rollup::RollupConfig;

/// Configuration errors name the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {key} = {value}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub pricing: PricingConfig,
    pub rollup: RollupSection,
    pub pipeline: PipelineConfig,
    pub clickhouse: ClickHouseConfig,
    pub sink: SinkConfig,
    pub http: HttpConfig,
    pub alerts: AlertsConfig,
    pub ledger: LedgerConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub sink_group_id: String,
    pub alerts_group_id: String,
    /// This instance's stable name (e.g. the pod name of a StatefulSet), unique among the
    /// instances of one deployment. It becomes the static group membership id
    /// (`group.instance.id` = `<instance_id>-<stage>`), so a restarted instance takes its
    /// partitions back without waiting for a session timeout, and the pipeline's
    /// `transactional.id` (`<group_id>-pipeline-<instance_id>`), so a restart fences and aborts
    /// the crashed instance's open transaction at once. Unset: a random transactional id and
    /// dynamic membership (correct, but a crashed transaction holds back `read_committed`
    /// readers until `pipeline.transaction_timeout`).
    pub instance_id: Option<String>,
    /// librdkafka properties passed through as they are (SASL, TLS, timeouts).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:19092".into(),
            group_id: "usage-aggregator".into(),
            sink_group_id: "usage-aggregator-sink".into(),
            alerts_group_id: "usage-aggregator-alerts".into(),
            instance_id: None,
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub usage_events: String,
    pub price_catalog: String,
    pub debits: String,
    pub priced_usage: String,
    pub dead_letter: String,
    pub alerts: String,
    /// Compacted changelog of per-partition rollup snapshots.
    pub state: String,
    /// Credits ledger (docs/credits.md): grants in (keyed by account, co-partitioned with
    /// `debits`), balance changes and low-balance alerts out, compacted ledger state.
    pub credit_grants: String,
    pub balances: String,
    pub credit_alerts: String,
    pub ledger_state: String,
    /// Voucher commands keyed by code hash, their results, compacted voucher state.
    pub voucher_requests: String,
    pub voucher_results: String,
    pub voucher_state: String,
    /// Partitions `setup` gives the usage topic (and the state topic, which must match).
    pub partitions: i32,
    pub output_partitions: i32,
    pub replication_factor: i32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            usage_events: "usage_events".into(),
            price_catalog: "price_catalog".into(),
            debits: "debits".into(),
            priced_usage: "priced_usage".into(),
            dead_letter: "dead_letter".into(),
            alerts: "alerts".into(),
            state: "usage_aggregator_state".into(),
            credit_grants: "credit_grants".into(),
            balances: "balances".into(),
            credit_alerts: "credit_alerts".into(),
            ledger_state: "ledger_state".into(),
            voucher_requests: "voucher_requests".into(),
            voucher_results: "voucher_results".into(),
            voucher_state: "voucher_state".into(),
            partitions: 4,
            output_partitions: 4,
            replication_factor: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Catalog file published to an empty catalog topic at start; empty for none.
    pub catalog_file: PathBuf,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            catalog_file: PathBuf::from("config/catalog.json"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupSection {
    /// Markup on agent executions, a decimal string.
    pub markup_rate: String,
    #[serde(with = "humantime_serde")]
    pub execution_idle_timeout: Duration,
    pub max_open_executions: usize,
    pub dedupe_horizon: u64,
    pub closed_horizon: u64,
    pub closed_capacity: usize,
    pub max_event_bytes: usize,
}

impl Default for RollupSection {
    fn default() -> Self {
        let d = RollupConfig::default();
        RollupSection {
            markup_rate: "0.20".into(),
            execution_idle_timeout: Duration::from_secs(30),
            max_open_executions: d.max_open_executions,
            dedupe_horizon: d.dedupe_horizon,
            closed_horizon: d.closed_horizon,
            closed_capacity: d.closed_capacity,
            max_event_bytes: d.max_event_bytes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Produced messages not yet acknowledged before consumption pauses.
    pub max_in_flight: usize,
    /// How outputs, state snapshots and input offsets are made durable together.
    pub delivery: Delivery,
    /// `exactly_once`: the Kafka transaction timeout (`transaction.timeout.ms`). A transaction
    /// left open by a crashed instance without `kafka.instance_id` is aborted by the broker
    /// after this long; must stay below the broker's `transaction.max.timeout.ms`.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// File holding the secret that authenticates close markers (at least 32 bytes);
    /// `USAGE_AGG_MARKER_KEY` takes precedence. Neither: a public development key, with a
    /// warning. Every instance must share the key.
    pub marker_key_file: Option<PathBuf>,
}

/// The pipeline's delivery guarantee (see docs/design.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Each checkpoint's outputs, snapshots and input offsets commit in one Kafka transaction
    /// (KIP-447); `read_committed` consumers see every output exactly once. Needs a broker
    /// with transactions (Apache Kafka >= 2.5).
    #[default]
    ExactlyOnce,
    /// Deterministic replay without transactions: after a crash, outputs since the last
    /// checkpoint are written again byte for byte; consumers deduplicate by id.
    AtLeastOnce,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            checkpoint_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(15),
            max_in_flight: 100_000,
            delivery: Delivery::ExactlyOnce,
            transaction_timeout: Duration::from_secs(10),
            marker_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    /// Only from the environment (`USAGE_AGG__CLICKHOUSE__PASSWORD`) or `password_file`.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Schema validation of the clickhouse crate; off for the 18.16 test server.
    pub validation: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:18123".into(),
            database: "usage".into(),
            user: "default".into(),
            password: None,
            password_file: None,
            validation: false,
        }
    }
}

impl ClickHouseConfig {
    /// The password from the environment or its file; never logged.
    pub fn resolved_password(&self) -> std::io::Result<Option<String>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        match &self.password_file {
            Some(f) => Ok(Some(std::fs::read_to_string(f)?.trim_end().to_string())),
            None => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub batch_age: Duration,
    /// Ids remembered per output partition to drop repeated rows.
    pub dedupe_window_rows: usize,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_rows: 100_000,
            batch_bytes: 32 << 20,
            batch_age: Duration::from_secs(1),
            dedupe_window_rows: 100_000,
            max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// Seconds without progress while lag is positive before /readyz fails.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
            stall_after: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Credits per account per clock hour (of event time) that raise an alert; "" disables.
    pub account_hourly_credits: String,
    /// Credits of one execution debit that raise an alert; "" disables.
    pub execution_credits: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            account_hourly_credits: "100".into(),
            execution_credits: "25".into(),
        }
    }
}

/// The credits ledger and vouchers (docs/credits.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Consumer group of the ledger stage (debits + credit_grants).
    pub group_id: String,
    /// Consumer group of the voucher stage (voucher_requests).
    pub voucher_group_id: String,
    /// Smallest top-up, credits (decimal string).
    pub min_topup: String,
    /// Balances whose crossing (downwards, then back up) raises a credit alert.
    pub alert_thresholds: Vec<String>,
    /// How long one Kafka transaction collects input before it commits.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Input messages per transaction at most.
    pub max_batch: usize,
    /// Offsets of a debits partition within which a repeated debit_id is a duplicate.
    pub debit_dedupe_horizon: u64,
    /// Bearer token of the HTTP write endpoints, from this file (or USAGE_AGG_API_TOKEN).
    pub api_token_file: Option<PathBuf>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            group_id: "usage-aggregator-ledger".into(),
            voucher_group_id: "usage-aggregator-vouchers".into(),
            min_topup: "10".into(),
            alert_thresholds: vec!["10".into(), "0".into()],
            commit_interval: Duration::from_millis(200),
            max_batch: 5_000,
            debit_dedupe_horizon: 200_000,
            api_token_file: None,
        }
    }
}

impl LedgerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, why| Err(ConfigError::Invalid { key, value, why });
        match self.min_topup.parse::<Decimal>() {
            Ok(d) if d > Decimal::ZERO => {}
            _ => {
                return invalid(
                    "ledger.min_topup",
                    self.min_topup.clone(),
                    "must be a positive decimal string",
                );
            }
        }
        for t in &self.alert_thresholds {
            if t.parse::<Decimal>().is_err() {
                return invalid(
                    "ledger.alert_thresholds",
                    t.clone(),
                    "must be decimal strings",
                );
            }
        }
        if self.max_batch == 0 {
            return invalid("ledger.max_batch", "0".into(), "must be at least 1");
        }
        if self.group_id.is_empty() || self.voucher_group_id.is_empty() {
            return invalid("ledger.group_id", String::new(), "must not be empty");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "human" or "json".
    pub format: String,
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "human".into(),
            filter: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(Env::prefixed("USAGE_AGG__").split("__"));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks; each error names the key and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, why| Err(ConfigError::Invalid { key, value, why });
        let rate = self.markup_rate().map_err(|_| ConfigError::Invalid {
            key: "rollup.markup_rate",
            value: self.rollup.markup_rate.clone(),
            why: "must be a decimal string such as \"0.20\"",
        })?;
        if rate.is_sign_negative() || rate > Decimal::from(10) {
            return invalid(
                "rollup.markup_rate",
                self.rollup.markup_rate.clone(),
                "must be between 0 and 10",
            );
        }
        if rate.normalize().scale() > MAX_MARKUP_RATE_SCALE {
            return invalid(
                "rollup.markup_rate",
                self.rollup.markup_rate.clone(),
                "may have at most 6 decimals",
            );
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid(
                "kafka.brokers",
                String::new(),
                "must name at least one broker",
            );
        }
        if self.rollup.max_open_executions == 0 {
            return invalid(
                "rollup.max_open_executions",
                "0".into(),
                "must be at least 1",
            );
        }
        if self.rollup.execution_idle_timeout < Duration::from_millis(100) {
            return invalid(
                "rollup.execution_idle_timeout",
                format!("{:?}", self.rollup.execution_idle_timeout),
                "must be at least 100ms",
            );
        }
        if self.topics.partitions < 1 || self.topics.output_partitions < 1 {
            return invalid(
                "topics.partitions",
                self.topics.partitions.to_string(),
                "must be at least 1",
            );
        }
        if self.sink.batch_rows == 0 {
            return invalid("sink.batch_rows", "0".into(), "must be at least 1");
        }
        for (key, v) in [
            (
                "alerts.account_hourly_credits",
                &self.alerts.account_hourly_credits,
            ),
            ("alerts.execution_credits", &self.alerts.execution_credits),
        ] {
            if !v.is_empty() && v.parse::<Decimal>().is_err() {
                return invalid(key, v.clone(), "must be a decimal string or empty");
            }
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return invalid(
                "log.format",
                self.log.format.clone(),
                "must be human or json",
            );
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("http.listen", self.http.listen.clone(), "must be host:port");
        }
        for t in [
            &self.topics.usage_events,
            &self.topics.price_catalog,
            &self.topics.debits,
            &self.topics.priced_usage,
            &self.topics.dead_letter,
            &self.topics.alerts,
            &self.topics.state,
            &self.topics.credit_grants,
            &self.topics.balances,
            &self.topics.credit_alerts,
            &self.topics.ledger_state,
            &self.topics.voucher_requests,
            &self.topics.voucher_results,
            &self.topics.voucher_state,
        ] {
            if t.is_empty() {
                return invalid("topics", String::new(), "topic names must not be empty");
            }
        }
        self.ledger.validate()?;
        if self.ledger.commit_interval * 4 > self.pipeline.transaction_timeout {
            return invalid(
                "ledger.commit_interval",
                format!("{:?}", self.ledger.commit_interval),
                "must be at most a quarter of pipeline.transaction_timeout",
            );
        }
        Ok(())
    }

    pub fn markup_rate(&self) -> Result<Decimal, rust_decimal::Error> {
        Decimal::from_str_exact(self.rollup.markup_rate.trim())
    }

    /// The rollup rules this configuration implies.
    pub fn rollup_config(&self) -> RollupConfig {
        RollupConfig {
            markup_rate: self.markup_rate().unwrap_or(Decimal::new(20, 2)),
            max_open_executions: self.rollup.max_open_executions,
            dedupe_horizon: self.rollup.dedupe_horizon,
            closed_horizon: self.rollup.closed_horizon,
            closed_capacity: self.rollup.closed_capacity,
            max_event_bytes: self.rollup.max_event_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_file_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let file: Config = Figment::new()
            .merge(Toml::file_exact(&path))
            .extract()
            .unwrap();
        file.validate().unwrap();
        assert_eq!(file.rollup.markup_rate, "0.20");
    }

    #[test]
    fn errors_name_key_and_value() {
        let mut c = Config::default();
        c.rollup.markup_rate = "0.1234567".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("rollup.markup_rate") && e.contains("0.1234567"),
            "{e}"
        );
        c.rollup.markup_rate = "abc".into();
        assert!(c.validate().unwrap_err().to_string().contains("abc"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let r: Result<Config, _> = Figment::new()
            .merge(Toml::string("[rollup]\nmarkup = \"0.1\"\n"))
            .extract();
        assert!(r.unwrap_err().to_string().contains("markup"));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[kafka]\nbrokers = \"file:1\"\n")?;
            jail.set_env("USAGE_AGG__KAFKA__BROKERS", "env:2");
            jail.set_env("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "2s");
            let c = Config::load(Some(Path::new("c.toml"))).unwrap();
            assert_eq!(c.kafka.brokers, "env:2");
            assert_eq!(c.rollup.execution_idle_timeout, Duration::from_secs(2));
            Ok(())
        });
    }
}
