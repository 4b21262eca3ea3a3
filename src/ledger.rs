//! The credits ledger: debits (from the rating pipeline) and credit grants (top-ups,
//! vouchers, adjustments) in; exact balances, balance events, low-balance alerts and a
//! ClickHouse ledger out, exactly once under kill -9 (Kafka transactions). See
//! docs/credits.md for the flow and docs/design.md ("Credits ledger") for the guarantee.
//!
//! Pure cores: [`grant`] (validation), [`core`] (balances), [`voucher`] (redemption
//! decisions). Shell: [`processors`] (the two stages' glue on the stage runtime,
//! [`crate::stage`]), [`client`] (CLI/HTTP requests and queries), [`rows`] (ClickHouse
//! rows), [`view`] (balances and recent entries in memory for the HTTP API, without
//! ClickHouse). The HTTP routes are in `crate::http::accounts`.

pub mod cli;
pub mod client;
pub mod core;
pub mod grant;
pub mod processors;
pub mod rows;
pub mod view;
pub mod voucher;

use std::sync::Arc;

use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::METRICS;
use crate::stage::{Stage, StageError, StageSpec};
use core::LedgerRules;
use grant::GrantRules;
use processors::{LedgerProcessor, VoucherProcessor};

/// Creates the ledger's labelled series (one per entry kind), so dashboards see zeros.
pub fn init_labels() {
    for k in core::EntryKind::ALL {
        let m = &METRICS.ledger;
        m.entries.with_label_values(&[k.as_str()]);
        m.credits.with_label_values(&[k.as_str()]);
        m.duplicates.with_label_values(&[k.as_str()]);
    }
}

/// Ledger rules from configuration (validated by `Config::validate`).
pub fn rules(cfg: &Config) -> (LedgerRules, GrantRules) {
    let mut thresholds: Vec<Decimal> = cfg
        .ledger
        .alert_thresholds
        .iter()
        .map(|d| d.normalize())
        .collect();
    thresholds.sort_by(|a, b| b.cmp(a));
    thresholds.dedup();
    (
        LedgerRules {
            thresholds,
            debit_horizon: cfg.ledger.debit_dedupe_horizon,
        },
        GrantRules {
            min_topup: cfg.ledger.min_topup,
        },
    )
}

fn spec(
    cfg: &Config,
    name: &'static str,
    group: &str,
    inputs: Vec<String>,
    changelog: &str,
    health: Option<Arc<Health>>,
) -> StageSpec {
    StageSpec {
        name,
        group_id: group.to_string(),
        inputs,
        changelog: changelog.to_string(),
        commit_interval: cfg.ledger.commit_interval,
        max_batch: cfg.ledger.max_batch,
        punctuate_every: None,
        consumer: Vec::new(),
        health,
    }
}

/// Runs the ledger stage (blocking) until `stop`; progress and lag go to `health`.
pub fn run_ledger(
    cfg: &Config,
    health: Option<Arc<Health>>,
    stop: &CancellationToken,
) -> Result<(), StageError> {
    let (rules, grant_rules) = rules(cfg);
    let p = LedgerProcessor::new(cfg.topics.clone(), rules, grant_rules);
    let t = &cfg.topics;
    let s = spec(
        cfg,
        "ledger",
        &cfg.ledger.group_id,
        vec![t.debits.clone(), t.credit_grants.clone()],
        &t.ledger_state,
        health,
    );
    Stage::new(cfg, s, p)?.run(stop)
}

/// Runs the voucher stage (blocking) until `stop`; progress and lag go to `health`.
pub fn run_vouchers(
    cfg: &Config,
    health: Option<Arc<Health>>,
    stop: &CancellationToken,
) -> Result<(), StageError> {
    let p = VoucherProcessor::new(cfg.topics.clone());
    let t = &cfg.topics;
    let s = spec(
        cfg,
        "vouchers",
        &cfg.ledger.voucher_group_id,
        vec![t.voucher_requests.clone()],
        &t.voucher_state,
        health,
    );
    Stage::new(cfg, s, p)?.run(stop)
}
