//! The credits ledger: debits (from the rating pipeline) and credit grants (top-ups,
//! vouchers, adjustments) in; exact balances, balance events, low-balance alerts and a
//! ClickHouse ledger out, exactly once under kill -9 (Kafka transactions). See
//! docs/credits.md for the flow and docs/design.md ("Credits ledger") for the guarantee.
//!
//! Pure cores: [`grant`] (validation), [`core`] (balances), [`voucher`] (redemption
//! decisions). Shell: [`stage`] (a generic transactional consume-transform-produce loop),
//! [`processors`] (the two stages' glue), [`client`] (CLI/HTTP requests and queries),
//! [`rows`] (ClickHouse rows). The HTTP routes are in `crate::http::accounts`.

pub mod cli;
pub mod client;
pub mod core;
pub mod grant;
pub mod processors;
pub mod rows;
pub mod stage;
pub mod voucher;

use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::TopicPlan;
use core::LedgerRules;
use grant::GrantRules;
use processors::{LedgerProcessor, VoucherProcessor};
use stage::{Stage, StageError, StageSpec};

/// Topics the ledger needs (`setup` creates them). The ledger's inputs, outputs and
/// changelogs get `output_partitions` partitions, like `debits`: an account's debits and
/// grants must meet in the same partition number.
pub fn planned_topics(cfg: &Config) -> Vec<TopicPlan> {
    let t = &cfg.topics;
    let o = t.output_partitions;
    let month = ("retention.ms", "2592000000");
    let delete = ("cleanup.policy", "delete");
    let compact = ("cleanup.policy", "compact");
    vec![
        (t.credit_grants.clone(), o, vec![delete, month]),
        (t.balances.clone(), o, vec![delete, month]),
        (t.credit_alerts.clone(), o, vec![delete, month]),
        (t.ledger_state.clone(), o, vec![compact]),
        (t.voucher_requests.clone(), o, vec![delete, month]),
        (
            t.voucher_results.clone(),
            o,
            vec![delete, ("retention.ms", "604800000")],
        ),
        (t.voucher_state.clone(), o, vec![compact]),
    ]
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
) -> StageSpec {
    StageSpec {
        name,
        group_id: group.to_string(),
        inputs,
        changelog: changelog.to_string(),
        commit_interval: cfg.ledger.commit_interval,
        max_batch: cfg.ledger.max_batch,
    }
}

/// Runs the ledger stage (blocking) until `stop`.
pub fn run_ledger(cfg: &Config, stop: &CancellationToken) -> Result<(), StageError> {
    let (rules, grant_rules) = rules(cfg);
    let mut p = LedgerProcessor::new(cfg.topics.clone(), rules, grant_rules);
    let t = &cfg.topics;
    let s = spec(
        cfg,
        "ledger",
        &cfg.ledger.group_id,
        vec![t.debits.clone(), t.credit_grants.clone()],
        &t.ledger_state,
    );
    Stage::new(cfg, s, &mut p)?.run(stop)
}

/// Runs the voucher stage (blocking) until `stop`.
pub fn run_vouchers(cfg: &Config, stop: &CancellationToken) -> Result<(), StageError> {
    let mut p = VoucherProcessor::new(cfg.topics.clone());
    let t = &cfg.topics;
    let s = spec(
        cfg,
        "vouchers",
        &cfg.ledger.voucher_group_id,
        vec![t.voucher_requests.clone()],
        &t.voucher_state,
    );
    Stage::new(cfg, s, &mut p)?.run(stop)
}
