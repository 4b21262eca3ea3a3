//! Configuration: the embedded `config/default.toml` < `--config FILE` < environment
//! (`USAGE_AGG__SECTION__KEY`) in, one typed [`Config`] out (durations, decimals, resolved
//! paths, secrets read), checked by `validate()` before any connection opens. Errors name the
//! key as the user wrote it and the value (never a secret).

mod errors;
mod layers;
mod ledger;
mod validate;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};

use figment::Figment;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use errors::{ConfigError, ENV_PREFIX};
use layers::{EnvLayer, Layer, defaults_figment, layer_of};
pub use layers::{PROP_ENV_PREFIX, kafka_env_properties};
pub use ledger::LedgerConfig;
use values::show_duration;

use crate::rollup::RollupConfig;

/// The shipped defaults: the only place a default value is written.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Directory the built-in defaults' relative paths are resolved against, as if
/// `config/default.toml` were read from the current directory's `config/`.
pub const DEFAULTS_DIR: &str = "config";

/// Every key of the service. Sections and keys are documented in `config/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub pricing: PricingConfig,
    pub rollup: RollupSection,
    pub pipeline: PipelineConfig,
    pub clickhouse: ClickHouseConfig,
    pub sink: SinkConfig,
    pub http: HttpConfig,
    pub traces: TracesConfig,
    pub alerts: AlertsConfig,
    pub ledger: LedgerConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list (librdkafka `bootstrap.servers`).
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
    /// Prepended to every topic name and group id by [`Config::load`], which then clears it
    /// (the loaded names already carry it).
    pub prefix: String,
    /// The `prefix` that [`Config::load`] applied: what `teardown` is scoped to. Not a
    /// configuration key.
    #[serde(skip)]
    pub applied_prefix: String,
    /// How long one-shot commands wait for a broker to answer before they fail.
    #[serde(with = "values::duration")]
    pub connect_timeout: Duration,
    /// Consumer-group session timeout of every group member (`session.timeout.ms`).
    #[serde(with = "values::duration")]
    pub session_timeout: Duration,
    /// librdkafka properties passed through as they are (SASL, TLS, tuning).
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub usage_events: String,
    pub price_catalog: String,
    /// Compacted: plan versions and account assignments (docs/price-catalog.md#plans).
    pub plans: String,
    pub debits: String,
    pub priced_usage: String,
    pub dead_letter: String,
    pub alerts: String,
    /// Compacted changelog of the spend alerts stage (hourly windows, debit ids counted);
    /// as many partitions as `debits`.
    pub alerts_state: String,
    /// Compacted changelog of the rating pipeline (open executions, their traces, the
    /// duplicate and closed-execution memories); as many partitions as `usage_events`.
    pub state: String,
    /// Credits ledger (docs/credits.md): grants in (keyed by account, co-partitioned with
    /// `debits`), balance changes and low-balance alerts out, compacted ledger state.
    pub credit_grants: String,
    pub balances: String,
    pub credit_alerts: String,
    pub ledger_state: String,
    /// The ledger's answers to grants and commands (keyed by account), and the automatic
    /// top-up requests for the payment service (keyed by account).
    pub ledger_results: String,
    pub topup_requests: String,
    /// Voucher commands keyed by code hash, their results, compacted voucher state.
    pub voucher_requests: String,
    pub voucher_results: String,
    pub voucher_state: String,
    /// Account-scoped API keys (compacted, keyed by key id; digests only): every instance
    /// follows it (docs/operations.md#access).
    pub api_keys: String,
    /// Partitions `setup` gives the usage topic (and the state topic, which must match).
    pub partitions: i32,
    pub output_partitions: i32,
    /// Copies of every partition `setup` creates (1 for one broker, 3 for a production
    /// cluster); `setup` refuses a factor larger than the cluster's broker count.
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic `setup` creates: with `acks=all` a write needs
    /// this many in-sync copies (2 with a factor of 3: one broker may fail without stopping
    /// writes or losing acknowledged ones). 1 ..= `replication_factor`.
    pub min_insync_replicas: i32,
}

impl TopicsConfig {
    /// (key, topic name) of every topic, in `setup` order.
    pub fn all(&self) -> [(&'static str, &String); 19] {
        [
            ("topics.usage_events", &self.usage_events),
            ("topics.state", &self.state),
            ("topics.price_catalog", &self.price_catalog),
            ("topics.plans", &self.plans),
            ("topics.debits", &self.debits),
            ("topics.priced_usage", &self.priced_usage),
            ("topics.dead_letter", &self.dead_letter),
            ("topics.alerts", &self.alerts),
            ("topics.alerts_state", &self.alerts_state),
            ("topics.credit_grants", &self.credit_grants),
            ("topics.balances", &self.balances),
            ("topics.credit_alerts", &self.credit_alerts),
            ("topics.ledger_state", &self.ledger_state),
            ("topics.ledger_results", &self.ledger_results),
            ("topics.topup_requests", &self.topup_requests),
            ("topics.voucher_requests", &self.voucher_requests),
            ("topics.voucher_results", &self.voucher_results),
            ("topics.voucher_state", &self.voucher_state),
            ("topics.api_keys", &self.api_keys),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// Catalog file published to an empty catalog topic at start; empty for none. Relative
    /// paths are resolved at load (see [`Config::load`]).
    pub catalog_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupSection {
    /// Markup on agent executions: total = subtotal × (1 + rate); 0..=10, ≤ 6 decimals.
    #[serde(with = "values::decimal")]
    pub markup_rate: Decimal,
    #[serde(with = "values::duration")]
    pub execution_idle_timeout: Duration,
    pub max_open_executions: usize,
    pub dedupe_horizon: u64,
    pub closed_horizon: u64,
    pub closed_capacity: usize,
    pub max_event_bytes: usize,
    /// Priced calls listed per open execution for its live trace (the execution trace API);
    /// beyond it calls are rolled up and counted but not listed. Memory: ~300 bytes a call.
    pub max_trace_calls: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(with = "values::duration")]
    pub checkpoint_interval: Duration,
    /// Shutdown and revoke deadline; at most `kafka.session_timeout`.
    #[serde(with = "values::duration")]
    pub drain_timeout: Duration,
    /// Produced messages not yet acknowledged before consumption pauses.
    pub max_in_flight: usize,
    /// How outputs, state changes and input offsets are made durable together: only
    /// `exactly_once` (one Kafka transaction per checkpoint); `at_least_once` is refused.
    pub delivery: Delivery,
    /// `exactly_once`: the Kafka transaction timeout (`transaction.timeout.ms`). A transaction
    /// left open by a crashed instance without `kafka.instance_id` is aborted by the broker
    /// after this long; must stay below the broker's `transaction.max.timeout.ms`.
    #[serde(with = "values::duration")]
    pub transaction_timeout: Duration,
    /// A Kafka stage (rating pipeline, ledger, vouchers, alerts) that made no progress for
    /// this long while its input waits is stuck: the process exits with status 1 so its
    /// supervisor restarts it from the last commit. `0s`: never.
    #[serde(with = "values::duration")]
    pub stall_exit_after: Duration,
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
    /// Removed (docs/design.md "Why there is no at-least-once mode"): still parsed so that
    /// [`Config::validate`] can refuse it naming the key, the value and what to do instead.
    AtLeastOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// `http://` or `https://` URL of the HTTP interface; checked at load.
    pub url: String,
    /// Database name: letters, digits and `_` (it is spliced into DDL).
    pub database: String,
    pub user: String,
    /// Only from the environment (`USAGE_AGG__CLICKHOUSE__PASSWORD`) or `password_file`
    /// (read at load). Never serialized, never logged.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Schema validation of the clickhouse crate; off for the 18.16 test server.
    pub validation: bool,
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
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    #[serde(with = "values::duration")]
    pub batch_age: Duration,
    /// Ids remembered per output partition to drop repeated rows.
    pub dedupe_window_rows: usize,
    #[serde(with = "values::duration")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` the HTTP server binds; `run` fails at start when it is taken.
    pub listen: String,
    /// Time without progress while lag is positive before /readyz fails.
    #[serde(with = "values::duration")]
    pub stall_after: Duration,
    /// The operator token (every account, every endpoint) from this file; the environment
    /// variable `USAGE_AGG_API_TOKEN` wins. Formerly `ledger.api_token_file` (still read).
    pub api_token_file: Option<PathBuf>,
    /// Failed credential checks a client address may make in a burst before it is throttled.
    pub auth_failure_burst: u32,
    /// Failed checks per minute regained by a throttled address (token bucket).
    pub auth_failures_per_minute: u32,
    /// Header naming the client address when a trusted proxy sets it (e.g.
    /// `x-forwarded-for`, rightmost entry); empty: the TCP peer address.
    pub client_address_header: String,
    /// Ledger entries kept in memory per account (served without ClickHouse).
    pub recent_entries: usize,
    /// Balance events per `balances` partition the ledger view reads at start to fill the
    /// recent entries (older ones come from ClickHouse).
    pub ledger_view_replay: u64,
}

/// Execution traces and live streams of the HTTP API (docs/operations.md, Traces and streams).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// Messages of each committed output topic (priced_usage, debits) the follower keeps in
    /// memory, over all partitions: the recent tail traces and streams read without Kafka.
    pub follow_buffer: usize,
    /// Followed messages queued per stream client; a client that falls this far behind
    /// stops being queued and reads what it missed from the follower's tail (or Kafka) once
    /// it has caught up: never dropped, nothing missed.
    pub stream_buffer: usize,
    /// Streams served at once by one instance; more answer 503.
    pub max_streams: usize,
    /// Start the follower of the output topics with the process (from the sink's position)
    /// instead of on the first trace or stream: then a stream of an execution that began
    /// after the start opens without reading Kafka. `false` saves an instance nobody reads
    /// traces from the follower's CPU.
    pub follow_on_start: bool,
    /// How long a stream holds a debit read before the last calls it bills.
    #[serde(with = "values::duration")]
    pub debit_wait: Duration,
    /// The dimension (contract v1.1) that names a conversation.
    pub conversation_dimension: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Credits per account per clock hour (of event time) that raise an alert; None = off.
    #[serde(with = "values::optional_decimal")]
    pub account_hourly_credits: Option<Decimal>,
    /// Credits of one execution debit that raise an alert; None = off.
    #[serde(with = "values::optional_decimal")]
    pub execution_credits: Option<Decimal>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,usage_aggregator::sink=debug`.
    pub filter: String,
}

impl Default for Config {
    /// The built-in defaults (the embedded `config/default.toml`), paths resolved.
    fn default() -> Self {
        let fig = defaults_figment();
        let mut cfg: Config = fig
            .extract()
            .expect("the embedded config/default.toml is a complete, valid configuration");
        cfg.resolve_paths(&fig);
        cfg
    }
}

impl Config {
    /// Loads the built-in defaults, then `file` (if given), then the environment; resolves
    /// relative paths (against the config file's directory when the file set them, against
    /// `./config/` for built-in defaults, against the current directory for the
    /// environment), applies `kafka.prefix` (topics, groups, ClickHouse database), reads
    /// `clickhouse.password_file`, validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let defaults = defaults_figment();
        let mut fig = defaults.clone();
        if let Some(f) = file {
            if !f.is_file() {
                return Err(ConfigError::File {
                    key: "--config",
                    path: f.display().to_string(),
                    why: "no such file".into(),
                });
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(EnvLayer::new(&defaults));
        let mut cfg: Config = fig
            .extract()
            .map_err(|e| errors::render(e, &fig, &defaults))?;
        cfg.resolve_paths(&fig);
        cfg.apply_prefix();
        cfg.read_password_file()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, fig: &Figment) {
        let resolve = |key: &str, p: &Path| -> PathBuf {
            if p.as_os_str().is_empty() || p.is_absolute() {
                return p.to_path_buf();
            }
            match layer_of(fig.find_metadata(key)) {
                Layer::File(f) => f.parent().unwrap_or(Path::new("")).join(p),
                Layer::Defaults => Path::new(DEFAULTS_DIR).join(p),
                Layer::Environment => p.to_path_buf(),
            }
        };
        self.pricing.catalog_file = resolve("pricing.catalog_file", &self.pricing.catalog_file);
        if let Some(f) = &self.clickhouse.password_file {
            self.clickhouse.password_file = Some(resolve("clickhouse.password_file", f));
        }
        if let Some(f) = &self.pipeline.marker_key_file {
            self.pipeline.marker_key_file = Some(resolve("pipeline.marker_key_file", f));
        }
        if let Some(f) = &self.ledger.api_token_file {
            self.ledger.api_token_file = Some(resolve("ledger.api_token_file", f));
        }
        if let Some(f) = &self.http.api_token_file {
            self.http.api_token_file = Some(resolve("http.api_token_file", f));
        }
    }

    fn apply_prefix(&mut self) {
        let prefix = std::mem::take(&mut self.kafka.prefix);
        if !prefix.is_empty() {
            self.prefix_names(&prefix);
            self.kafka.applied_prefix = prefix;
        }
    }

    /// Puts `prefix` in front of every topic name and consumer group id, and (with
    /// characters other than letters and digits as `_`) the ClickHouse database: what
    /// `kafka.prefix` does at load; the bench uses it to isolate a run.
    pub fn prefix_names(&mut self, prefix: &str) {
        let k = &mut self.kafka;
        let t = &mut self.topics;
        for name in [
            &mut k.group_id,
            &mut k.sink_group_id,
            &mut k.alerts_group_id,
            &mut self.ledger.group_id,
            &mut self.ledger.voucher_group_id,
            &mut t.usage_events,
            &mut t.price_catalog,
            &mut t.plans,
            &mut t.debits,
            &mut t.priced_usage,
            &mut t.dead_letter,
            &mut t.alerts,
            &mut t.alerts_state,
            &mut t.state,
            &mut t.credit_grants,
            &mut t.balances,
            &mut t.credit_alerts,
            &mut t.ledger_state,
            &mut t.ledger_results,
            &mut t.topup_requests,
            &mut t.voucher_requests,
            &mut t.voucher_results,
            &mut t.voucher_state,
            &mut t.api_keys,
        ] {
            name.insert_str(0, prefix);
        }
        // The ClickHouse database too: the sink's resume points and the reports are per
        // database, so a trial sharing another's database would mix its rows into their
        // reports and take their offsets for its own ("output topic was recreated").
        // A database name is letters, digits and `_`: "trial1-" gives "trial1_usage".
        let db_prefix: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.clickhouse.database.insert_str(0, &db_prefix);
    }

    fn read_password_file(&mut self) -> Result<(), ConfigError> {
        let Some(f) = &self.clickhouse.password_file else {
            return Ok(());
        };
        if self.clickhouse.password.is_some() {
            return Err(ConfigError::File {
                key: "clickhouse.password_file",
                path: f.display().to_string(),
                why: "is set and so is USAGE_AGG__CLICKHOUSE__PASSWORD; keep one".into(),
            });
        }
        match std::fs::read_to_string(f) {
            Ok(p) => {
                self.clickhouse.password = Some(p.trim_end().to_string());
                Ok(())
            }
            Err(e) => Err(ConfigError::File {
                key: "clickhouse.password_file",
                path: f.display().to_string(),
                why: format!("cannot be read: {e}"),
            }),
        }
    }

    /// The rollup rules this configuration implies.
    pub fn rollup_config(&self) -> RollupConfig {
        let r = &self.rollup;
        RollupConfig {
            markup_rate: r.markup_rate,
            max_open_executions: r.max_open_executions,
            dedupe_horizon: r.dedupe_horizon,
            closed_horizon: r.closed_horizon,
            closed_capacity: r.closed_capacity,
            max_event_bytes: r.max_event_bytes,
            max_trace_calls: r.max_trace_calls,
        }
    }

    /// The effective settings, one `key = value` per line, secrets redacted: what `run`
    /// logs at start.
    pub fn effective_settings(&self) -> Vec<(String, String)> {
        let k = &self.kafka;
        let mut out = vec![
            ("kafka.brokers".to_string(), k.brokers.clone()),
            ("kafka.group_id".into(), k.group_id.clone()),
            ("kafka.sink_group_id".into(), k.sink_group_id.clone()),
            ("kafka.alerts_group_id".into(), k.alerts_group_id.clone()),
            ("ledger.group_id".into(), self.ledger.group_id.clone()),
            (
                "ledger.voucher_group_id".into(),
                self.ledger.voucher_group_id.clone(),
            ),
            (
                "kafka.session_timeout".into(),
                show_duration(k.session_timeout),
            ),
            (
                "kafka.instance_id".into(),
                k.instance_id.clone().unwrap_or_else(|| "(none)".into()),
            ),
            (
                "pipeline.delivery".into(),
                serde_json::to_value(self.pipeline.delivery)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ),
        ];
        for p in k.properties.keys() {
            out.push((format!("kafka.properties.\"{p}\""), "(set)".into()));
        }
        // Values not shown: this is where secrets come from.
        for (var, p, _) in kafka_env_properties() {
            out.push((format!("kafka.properties.\"{p}\""), format!("(from {var})")));
        }
        for (key, name) in self.topics.all() {
            out.push((key.into(), name.clone()));
        }
        let c = &self.clickhouse;
        out.extend([
            (
                "pricing.catalog_file".into(),
                self.pricing.catalog_file.display().to_string(),
            ),
            (
                "rollup.markup_rate".into(),
                self.rollup.markup_rate.to_string(),
            ),
            (
                "rollup.execution_idle_timeout".into(),
                show_duration(self.rollup.execution_idle_timeout),
            ),
            (
                "pipeline.drain_timeout".into(),
                show_duration(self.pipeline.drain_timeout),
            ),
            ("clickhouse.url".into(), c.url.clone()),
            ("clickhouse.database".into(), c.database.clone()),
            ("clickhouse.user".into(), c.user.clone()),
            (
                "clickhouse.password".into(),
                match (&c.password, &c.password_file) {
                    (_, Some(f)) => format!("(from {})", f.display()),
                    (Some(_), None) => "(from USAGE_AGG__CLICKHOUSE__PASSWORD)".into(),
                    (None, None) => "(none)".into(),
                },
            ),
            ("http.listen".into(), self.http.listen.clone()),
        ]);
        out
    }
}

#[cfg(test)]
mod tests;
