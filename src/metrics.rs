//! Every Prometheus metric of the service, declared once: `usage_agg_<subsystem>_<name>_<unit>`,
//! counters end in `_total`, labels are bounded (never an account or asset id).
//! Credits counters are telemetry floats for dashboards; money of record stays decimal.

use std::sync::LazyLock;

use prometheus::{
    CounterVec, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod stage;
pub use stage::StageMetrics;

pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: IntCounter,
    pub events_priced: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub debits: IntCounterVec,
    pub credits_debited: CounterVec,
    pub open_executions: IntGauge,
    pub dedupe_entries: IntGauge,
    pub last_progress: Gauge,
    pub backpressure_paused: IntGauge,
    pub markers_written: IntCounter,
    pub sink_rows: IntCounterVec,
    pub sink_insert_latency: HistogramVec,
    pub sink_batch_rows: HistogramVec,
    pub sink_retries: IntCounterVec,
    pub sink_duplicates: IntCounterVec,
    pub sink_lag: IntGaugeVec,
    pub sink_last_insert: Gauge,
    pub catalog_versions: IntGauge,
    pub catalog_age: Gauge,
    pub catalog_updates: IntCounter,
    pub catalog_rejected: IntCounter,
    pub plans_records: IntGauge,
    pub plans_updates: IntCounter,
    pub plans_rejected: IntCounter,
    pub alerts_fired: IntCounterVec,
    pub ready: IntGauge,
    /// Live streams (SSE) served now, and times one fell behind (and caught up losslessly).
    pub api_streams: IntGauge,
    pub api_streams_lagged: IntCounter,
    /// Reads of an output partition straight from Kafka (what the follower's memory holds
    /// neither the messages of nor knows there are none), and the messages they scanned.
    pub api_follow_kafka_reads: IntCounter,
    pub api_follow_kafka_scanned: IntCounter,
    /// 1 when a stage of this instance is ready (`/readyz` per stage), by stage.
    pub stage_ready: IntGaugeVec,
    /// Failed credential checks of the HTTP API, by reason (`http::auth::Failure`).
    pub http_auth_failures: IntCounterVec,
    /// Accounts and entries held by this instance's ledger view (`ledger::view`).
    pub ledger_view_accounts: IntGauge,
    pub ledger_view_entries: IntGauge,
    pub ledger: LedgerMetrics,
    pub stage: StageMetrics,
}

/// Credits ledger and voucher stages (`usage_agg_ledger_*`). Labels: kind, reason, threshold
/// (configured values), crossing, action, result. Their transactions, commits and restores
/// are the stage runtime's ([`StageMetrics`]).
pub struct LedgerMetrics {
    pub entries: IntCounterVec,
    pub credits: CounterVec,
    pub duplicates: IntCounterVec,
    pub rejected: IntCounterVec,
    pub alerts: IntCounterVec,
    pub accounts: IntGauge,
    pub accounts_below: IntGaugeVec,
    pub balance_sum: Gauge,
    pub voucher_results: IntCounterVec,
    pub answers: IntCounterVec,
    pub topup_requests: IntCounter,
    pub clock_markers: IntCounter,
}

impl LedgerMetrics {
    fn new(r: &Registry) -> LedgerMetrics {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        LedgerMetrics {
            entries: cv(
                "usage_agg_ledger_entries_total",
                "Balance changes applied, by kind (topup, voucher, adjustment, debit).",
                &["kind"],
            ),
            credits: reg(
                r,
                CounterVec::new(
                    Opts::new(
                        "usage_agg_ledger_credits_total",
                        "Credits moved by applied entries, by kind (telemetry float; the ledger is exact).",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            duplicates: cv(
                "usage_agg_ledger_duplicates_total",
                "Re-sent grants and repeated debits ignored (applied once).",
                &["kind"],
            ),
            rejected: cv(
                "usage_agg_ledger_rejected_total",
                "Grants, debits and voucher requests dead-lettered, by reason.",
                &["reason"],
            ),
            alerts: cv(
                "usage_agg_ledger_alerts_total",
                "Alerts emitted to credit_alerts: threshold crossings (threshold: a configured default's value, or \"account\" for an account's own) and grant_expiring (threshold \"\").",
                &["threshold", "crossing"],
            ),
            accounts: reg(
                r,
                IntGauge::new(
                    "usage_agg_ledger_accounts",
                    "Accounts held by this instance's ledger partitions.",
                )
                .unwrap(),
            ),
            accounts_below: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "usage_agg_ledger_accounts_below_threshold",
                        "Accounts of this instance whose balance is below a configured threshold.",
                    ),
                    &["threshold"],
                )
                .unwrap(),
            ),
            balance_sum: reg(
                r,
                Gauge::new(
                    "usage_agg_ledger_balance_sum_credits",
                    "Sum of the balances of this instance's accounts (telemetry float).",
                )
                .unwrap(),
            ),
            voucher_results: cv(
                "usage_agg_ledger_voucher_results_total",
                "Voucher commands decided, by action and result (created, granted or the refusal reason).",
                &["action", "result"],
            ),
            answers: cv(
                "usage_agg_ledger_answers_total",
                "Answers of the ledger to grants and commands, by command and verdict.",
                &["command", "verdict"],
            ),
            topup_requests: reg(
                r,
                IntCounter::new(
                    "usage_agg_ledger_topup_requests_total",
                    "Automatic top-up requests raised for the payment service.",
                )
                .unwrap(),
            ),
            clock_markers: reg(
                r,
                IntCounter::new(
                    "usage_agg_ledger_clock_markers_total",
                    "Clock markers written to credit_grants (a grant's expiry or warning was due).",
                )
                .unwrap(),
            ),
        }
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).unwrap());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        let gauge = |name: &str, help: &str| reg(&r, IntGauge::new(name, help).unwrap());
        let hist_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            reg(
                &r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).unwrap(),
            )
        };
        let row_buckets = vec![
            1.0, 10.0, 100.0, 1_000.0, 10_000.0, 50_000.0, 100_000.0, 500_000.0,
        ];
        Metrics {
            events_consumed: counter(
                "usage_agg_pipeline_events_consumed_total",
                "Usage events read from the input topic.",
            ),
            events_priced: counter_vec(
                "usage_agg_rating_events_priced_total",
                "Calls priced.",
                &["asset_type"],
            ),
            events_rejected: counter_vec(
                "usage_agg_rating_events_rejected_total",
                "Events rejected and dead-lettered.",
                &["reason"],
            ),
            events_duplicate: counter(
                "usage_agg_rating_events_duplicate_total",
                "Repeated events dropped (same event_id, same content).",
            ),
            debits: counter_vec(
                "usage_agg_rating_debits_total",
                "Debits emitted.",
                &["kind"],
            ),
            credits_debited: reg(
                &r,
                CounterVec::new(
                    Opts::new(
                        "usage_agg_rating_credits_debited_total",
                        "Credits debited (telemetry float; the ledger is exact).",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            open_executions: gauge(
                "usage_agg_rollup_open_executions",
                "Executions open in memory.",
            ),
            dedupe_entries: gauge(
                "usage_agg_rollup_dedupe_entries",
                "Event ids held in duplicate memory.",
            ),
            last_progress: reg(
                &r,
                Gauge::new(
                    "usage_agg_pipeline_last_progress_timestamp_seconds",
                    "Unix time the pipeline last advanced an input offset.",
                )
                .unwrap(),
            ),
            backpressure_paused: gauge(
                "usage_agg_pipeline_backpressure_paused",
                "1 while consumption waits for the producer.",
            ),
            markers_written: counter(
                "usage_agg_pipeline_close_markers_total",
                "Idle-timeout close markers written to the input topic.",
            ),
            sink_rows: counter_vec(
                "usage_agg_sink_rows_inserted_total",
                "Rows inserted into ClickHouse.",
                &["table"],
            ),
            sink_insert_latency: hist_vec(
                "usage_agg_sink_insert_latency_seconds",
                "ClickHouse insert time per batch.",
                &["table"],
                LATENCY_BUCKETS.to_vec(),
            ),
            sink_batch_rows: hist_vec(
                "usage_agg_sink_batch_rows",
                "Rows per insert batch.",
                &["table"],
                row_buckets,
            ),
            sink_retries: counter_vec(
                "usage_agg_sink_retries_total",
                "Insert attempts retried.",
                &["table"],
            ),
            sink_duplicates: counter_vec(
                "usage_agg_sink_duplicates_skipped_total",
                "Repeated rows not inserted again.",
                &["table"],
            ),
            sink_lag: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "usage_agg_sink_lag_messages",
                        "Sink messages behind the high watermark.",
                    ),
                    &["topic", "partition"],
                )
                .unwrap(),
            ),
            sink_last_insert: reg(
                &r,
                Gauge::new(
                    "usage_agg_sink_last_insert_timestamp_seconds",
                    "Unix time of the last successful insert.",
                )
                .unwrap(),
            ),
            catalog_versions: gauge("usage_agg_catalog_versions", "Price versions loaded."),
            catalog_age: reg(
                &r,
                Gauge::new(
                    "usage_agg_catalog_age_seconds",
                    "Seconds since the catalog last changed.",
                )
                .unwrap(),
            ),
            catalog_updates: counter(
                "usage_agg_catalog_updates_total",
                "Price versions applied from the catalog topic.",
            ),
            catalog_rejected: counter(
                "usage_agg_catalog_rejected_total",
                "Catalog messages refused (invalid or conflicting).",
            ),
            plans_records: gauge(
                "usage_agg_plans_records",
                "Plan versions and account assignments loaded.",
            ),
            plans_updates: counter(
                "usage_agg_plans_updates_total",
                "Plan book updates applied from the plans topic.",
            ),
            plans_rejected: counter(
                "usage_agg_plans_rejected_total",
                "Plans topic messages refused (invalid, conflicting, or an assignment to a plan without a version).",
            ),
            alerts_fired: counter_vec(
                "usage_agg_alerts_fired_total",
                "Spend alerts emitted.",
                &["rule"],
            ),
            api_streams: gauge(
                "usage_agg_api_streams",
                "Live streams (server-sent events) this instance serves now.",
            ),
            api_streams_lagged: counter(
                "usage_agg_api_streams_lagged_total",
                "Times a live stream fell traces.stream_buffer messages behind; it then read what it missed from the follower's tail or Kafka (nothing lost, the stream stays open).",
            ),
            api_follow_kafka_reads: counter(
                "usage_agg_api_follow_kafka_reads_total",
                "Reads of an output partition straight from Kafka for a trace's or stream's history (or a lagging stream's gap) that the follower's memory could not answer.",
            ),
            api_follow_kafka_scanned: counter(
                "usage_agg_api_follow_kafka_scanned_total",
                "Messages those reads scanned (every key of the partition).",
            ),
            ready: gauge(
                "usage_agg_ready",
                "1 when /readyz answers 200 (the stages this instance's HTTP answers depend on are ready).",
            ),
            stage_ready: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "usage_agg_stage_ready",
                        "1 when this instance's stage is ready, by stage (pipeline, sink, ledger, vouchers, alerts, api); see /readyz for why not.",
                    ),
                    &["stage"],
                )
                .unwrap();
                r.register(Box::new(g.clone())).unwrap();
                g
            },
            ledger_view_accounts: gauge(
                "usage_agg_ledger_view_accounts",
                "Accounts in this instance's in-memory ledger view (balances served without ClickHouse).",
            ),
            ledger_view_entries: gauge(
                "usage_agg_ledger_view_entries",
                "Ledger entries held in memory by this instance's ledger view (http.recent_entries per account at most).",
            ),
            http_auth_failures: counter_vec(
                "usage_agg_http_auth_failures_total",
                "Failed credential checks of the HTTP API by reason (missing, malformed, wrong_token, unknown_key, revoked_key, throttled).",
                &["reason"],
            ),
            ledger: LedgerMetrics::new(&r),
            stage: StageMetrics::new(&r),
            registry: r,
        }
    }

    /// Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is utf-8")
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Creates the labelled series of the rating core's label values (asset types, reasons,
/// debit kinds, stages), so dashboards and alert rules see zeros instead of missing series.
/// The sink and the ledger create their own (`sink::init_labels`, `ledger::init_labels`);
/// `app::init_labels` calls all of them.
pub fn init_labels() {
    let m = &*METRICS;
    for t in crate::catalog::AssetType::ALL {
        m.events_priced.with_label_values(&[t.as_str()]);
    }
    for r in crate::rejection::RejectReason::ALL {
        m.events_rejected.with_label_values(&[r.as_str()]);
    }
    for k in crate::debit::DebitKind::ALL {
        m.debits.with_label_values(&[k.as_str()]);
        m.credits_debited.with_label_values(&[k.as_str()]);
    }
    for r in ["account_hourly_credits", "execution_credits"] {
        m.alerts_fired.with_label_values(&[r]);
    }
    for s in STAGES {
        let st = &m.stage;
        st.input_messages.with_label_values(&[s]);
        st.transactions.with_label_values(&[s, "committed"]);
        st.transactions.with_label_values(&[s, "aborted"]);
        st.commit_seconds.with_label_values(&[s]);
        st.restore_seconds.with_label_values(&[s]);
        st.last_commit.with_label_values(&[s]);
        st.consumer_lag.with_label_values(&[s, "0"]);
        st.changelog_records.with_label_values(&[s]);
        st.changelog_bytes.with_label_values(&[s]);
        st.produce_latency.with_label_values(&[s]);
        st.produce_errors.with_label_values(&[s]);
        st.producer_reinits.with_label_values(&[s]);
    }
    for r in crate::rejection::RejectReason::ALL {
        m.ledger.rejected.with_label_values(&[r.as_str()]);
    }
    for t in ["10", "0"] {
        m.ledger.accounts_below.with_label_values(&[t]);
        m.ledger.alerts.with_label_values(&[t, "below"]);
    }
    m.ledger
        .voucher_results
        .with_label_values(&["redeem", "granted"]);
}

/// The stages on the stage runtime (the `stage` label).
pub const STAGES: [&str; 4] = ["pipeline", "alerts", "ledger", "vouchers"];

/// Names of all metric families (for the dashboard/rule check).
pub fn metric_names() -> Vec<String> {
    METRICS
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        // Touch labelled families so they are gathered.
        METRICS
            .events_priced
            .with_label_values(&[crate::catalog::AssetType::Model.as_str()]);
        for name in metric_names() {
            assert!(name.starts_with("usage_agg_"), "{name}");
        }
        let text = METRICS.render();
        assert!(text.contains("usage_agg_pipeline_events_consumed_total"));
    }
}
