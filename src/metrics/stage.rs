//! The stage runtime's series (`usage_agg_stage_*`), one set for every stage on it.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::{LATENCY_BUCKETS, reg};

/// The stage runtime (`src/stage.rs`), one naming scheme for every stage on it
/// (`usage_agg_stage_*`, label `stage`: pipeline, alerts, ledger, vouchers).
pub struct StageMetrics {
    pub input_messages: IntCounterVec,
    pub transactions: IntCounterVec,
    pub commit_seconds: HistogramVec,
    pub restore_seconds: HistogramVec,
    pub last_commit: GaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub changelog_records: IntCounterVec,
    pub changelog_bytes: IntCounterVec,
    pub produce_latency: HistogramVec,
    pub produce_errors: IntCounterVec,
    pub producer_reinits: IntCounterVec,
}

impl StageMetrics {
    pub(super) fn new(r: &Registry) -> StageMetrics {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        let hv = |name: &str, help: &str| {
            reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    &["stage"],
                )
                .unwrap(),
            )
        };
        StageMetrics {
            input_messages: cv(
                "usage_agg_stage_input_messages_total",
                "Input messages of a stage's committed transactions, or of its store writes (the sink), added at each commit.",
                &["stage"],
            ),
            transactions: cv(
                "usage_agg_stage_transactions_total",
                "Kafka transactions of a stage by outcome (committed, aborted).",
                &["stage", "outcome"],
            ),
            commit_seconds: hv(
                "usage_agg_stage_commit_seconds",
                "Time to write the changelog, send the offsets and commit one transaction (the sink: its due inserts and the offset commit).",
            ),
            restore_seconds: hv(
                "usage_agg_stage_restore_seconds",
                "Time to restore one assigned partition from the changelog (the sink: its resume point from ClickHouse).",
            ),
            last_commit: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "usage_agg_stage_last_commit_timestamp_seconds",
                        "Unix time of a stage's last committed transaction (the sink: its last offset commit after an insert).",
                    ),
                    &["stage"],
                )
                .unwrap(),
            ),
            consumer_lag: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "usage_agg_stage_consumer_lag_messages",
                        "Input messages behind the high watermark, per stage and input partition.",
                    ),
                    &["stage", "partition"],
                )
                .unwrap(),
            ),
            changelog_records: cv(
                "usage_agg_stage_changelog_records_total",
                "Changelog records written (changed keys and tombstones, with the offsets record).",
                &["stage"],
            ),
            changelog_bytes: cv(
                "usage_agg_stage_changelog_bytes_total",
                "Bytes of keys and values written to the changelog.",
                &["stage"],
            ),
            produce_latency: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "usage_agg_stage_produce_latency_seconds",
                        "Time from produce to broker acknowledgement.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["stage"],
                )
                .unwrap(),
            ),
            produce_errors: cv(
                "usage_agg_stage_produce_errors_total",
                "Output messages that failed delivery (their transaction aborts).",
                &["stage"],
            ),
            producer_reinits: cv(
                "usage_agg_stage_producer_reinits_total",
                "Transactional producers re-created after failing for good (fenced).",
                &["stage"],
            ),
        }
    }
}
