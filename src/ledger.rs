//! The credits ledger: debits (from the rating pipeline) and credit grants (top-ups,
//! vouchers, adjustments) in; exact balances, balance events, low-balance alerts and a
//! ClickHouse ledger out, exactly once under kill -9 (Kafka transactions). See
//! docs/credits.md for the flow and docs/design.md ("Credits ledger") for the guarantee.
//!
//! Pure cores ([`CORE_FILES`]; tests/core_is_pure.rs holds them to it): [`grant`] and
//! [`command`] (validation of the command log), [`funding`] (the draw-down order),
//! [`thresholds`] (alerts, automatic top-ups), [`core`] (balances, expiry, answers),
//! [`state`], [`entry`] and [`answer`] (records), [`voucher`] (redemption decisions). Shell:
//! [`processors`] (the two stages' glue on the stage runtime, [`crate::stage`], and the
//! ledger's clock markers), [`client`] (CLI/HTTP requests and queries), [`view`] (balances,
//! open grants and recent entries in memory for the HTTP API, without ClickHouse).
//! Elsewhere: the HTTP routes (`crate::http::{accounts, grants, credit_settings,
//! vouchers}`), the commands ([`crate::credits`]) and the ClickHouse rows
//! (`crate::sink::ledger_rows`).

pub mod answer;
pub mod client;
pub mod command;
pub mod core;
pub mod entry;
pub mod funding;
pub mod grant;
pub mod processors;
pub mod state;
pub mod thresholds;
pub mod view;
pub mod voucher;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::METRICS;
use crate::stage::{Guarantee, Stage, StageError, StageSpec};
use core::LedgerRules;
use grant::GrantRules;
use processors::{LedgerProcessor, VoucherProcessor};
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

/// How often the ledger looks for a due expiry or warning (and writes a clock marker).
pub const CLOCK_EVERY: Duration = Duration::from_millis(100);

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
    health: Option<Arc<Health>>,
    punctuate_every: Option<Duration>,
) -> StageSpec {
    StageSpec {
        name,
        group_id: group.to_string(),
        inputs,
        guarantee: Guarantee::Transactional {
            changelog: changelog.to_string(),
        },
        commit_interval: cfg.ledger.commit_interval,
        max_batch: cfg.ledger.max_batch,
        punctuate_every,
        consumer: Vec::new(),
        health,
    }
}

/// Runs the ledger stage (blocking) until `stop`; progress and lag go to `health`. Every
/// [`CLOCK_EVERY`] it writes a clock marker to each owned partition with a due expiry or
/// warning (docs/credits.md, "Expiry: how the ledger observes time").
pub fn run_ledger(
    cfg: &Config,
    health: Option<Arc<Health>>,
    stop: &CancellationToken,
) -> Result<(), StageError> {
    let (rules, grant_rules) = rules(cfg);
    let key = crate::marker::MarkerKey::load(&cfg.pipeline)
        .map_err(|e| StageError::Setup(e.to_string()))?;
    let p = LedgerProcessor::new(cfg.topics.clone(), rules, grant_rules, key);
    let t = &cfg.topics;
    let s = spec(
        cfg,
        "ledger",
        &cfg.ledger.group_id,
        vec![t.debits.clone(), t.credit_grants.clone()],
        &t.ledger_state,
        health,
        Some(CLOCK_EVERY),
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
        None,
    );
    Stage::new(cfg, s, p)?.run(stop)
}
