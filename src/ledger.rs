//! The credits ledger: debits (from the rating pipeline) and credit grants (top-ups,
//! vouchers, adjustments) in; exact balances, balance events, low-balance alerts and a
//! ClickHouse ledger out, exactly once under kill -9 (Kafka transactions). See
//! docs/credits.md for the flow and docs/design.md ("Credits ledger") for the guarantee.
//!
//! Pure cores ([`CORE_FILES`]; tests/core_is_pure.rs holds them to it): [`grant`] and
//! [`command`] (validation of the command log), [`funding`] (the draw-down order),
//! [`thresholds`] (alerts, automatic top-ups), [`core`] (balances, expiry, answers),
//! [`state`], [`entry`] and [`answer`] (records), [`voucher`] (redemption decisions). Shell:
//! [`stage`] (a generic transactional consume-transform-produce loop), [`processors`] (the
//! two stages' glue), [`clock`] (writes clock markers when an expiry is due), [`client`]
//! (CLI/HTTP requests and queries), [`api`] (HTTP routes), [`rows`] (ClickHouse rows).

pub mod answer;
pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod command;
pub mod core;
pub mod entry;
pub mod funding;
pub mod grant;
pub mod processors;
pub mod rows;
pub mod stage;
pub mod state;
pub mod thresholds;
pub mod voucher;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::TopicPlan;
use core::LedgerRules;
use grant::GrantRules;
use processors::{LedgerProcessor, VoucherProcessor};
use stage::{Stage, StageError, StageSpec};
use thresholds::Threshold;

/// The files of the ledger's pure core (under src/ledger/): no I/O, clock or randomness.
pub const CORE_FILES: [&str; 16] = [
    "answer.rs",
    "command.rs",
    "core.rs",
    "core/changelog.rs",
    "core/entry.rs",
    "core/expiry.rs",
    "core/queries.rs",
    "entry.rs",
    "funding.rs",
    "grant.rs",
    "state.rs",
    "thresholds.rs",
    "voucher.rs",
    "voucher/code.rs",
    "voucher/revoke.rs",
    "voucher/view.rs",
];

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
        (
            t.ledger_results.clone(),
            o,
            vec![delete, ("retention.ms", "604800000")],
        ),
        (t.topup_requests.clone(), o, vec![delete, month]),
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
    let mut values: Vec<_> = cfg
        .ledger
        .alert_thresholds
        .iter()
        .map(|d| d.normalize())
        .collect();
    values.sort_by(|a, b| b.cmp(a));
    values.dedup();
    (
        LedgerRules {
            thresholds: values.into_iter().map(Threshold::Credits).collect(),
            debit_horizon: cfg.ledger.debit_dedupe_horizon,
            expiry_warning_secs: cfg.ledger.expiry_warning.as_secs(),
            min_topup: cfg.ledger.min_topup,
            refusal_memory: cfg.ledger.refusal_memory,
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

/// Runs the ledger stage (blocking) until `stop`, with its clock (a thread writing clock
/// markers to `credit_grants` when an expiry of an owned partition is due).
pub fn run_ledger(cfg: &Config, stop: &CancellationToken) -> Result<(), StageError> {
    let (rules, grant_rules) = rules(cfg);
    let key = crate::marker::MarkerKey::load(&cfg.pipeline)
        .map_err(|e| StageError::Setup(e.to_string()))?;
    let board = Arc::new(clock::Deadlines::default());
    let mut p = LedgerProcessor::new(
        cfg.topics.clone(),
        rules,
        grant_rules,
        key.clone(),
        board.clone(),
    );
    let t = &cfg.topics;
    let s = spec(
        cfg,
        "ledger",
        &cfg.ledger.group_id,
        vec![t.debits.clone(), t.credit_grants.clone()],
        &t.ledger_state,
    );
    let clock_stop = stop.child_token();
    std::thread::scope(|scope| {
        let c = clock_stop.clone();
        let b = board.clone();
        std::thread::Builder::new()
            .name("ledger-clock".into())
            .spawn_scoped(scope, move || clock::run(cfg, &b, &key, &c))
            .map_err(|e| StageError::Setup(format!("cannot start the ledger clock: {e}")))?;
        let result = Stage::new(cfg, s, &mut p).and_then(|stage| stage.run(stop));
        clock_stop.cancel();
        result
    })
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
