//! The `[ledger]` section: the credits ledger and voucher stages (docs/credits.md).

use std::path::PathBuf;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::values;

/// The credits ledger and vouchers (docs/credits.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Consumer group of the ledger stage (debits + credit_grants).
    pub group_id: String,
    /// Consumer group of the voucher stage (voucher_requests).
    pub voucher_group_id: String,
    /// Smallest top-up, credits (> 0).
    #[serde(with = "values::decimal")]
    pub min_topup: Decimal,
    /// Balances whose crossing (downwards, then back up) raises a credit alert.
    #[serde(with = "values::decimal_list")]
    pub alert_thresholds: Vec<Decimal>,
    /// How long one Kafka transaction collects input before it commits; at most a quarter
    /// of `pipeline.transaction_timeout`.
    #[serde(with = "values::duration")]
    pub commit_interval: Duration,
    /// Input messages per transaction at most.
    pub max_batch: usize,
    /// Offsets of a debits partition within which a repeated debit_id is a duplicate.
    pub debit_dedupe_horizon: u64,
    /// How long before a grant expires its `grant_expiring` alert is raised (an account
    /// may set its own; 0 for none).
    #[serde(with = "values::duration")]
    pub expiry_warning: Duration,
    /// Refused grant ids remembered per ledger partition for their status answer.
    pub refusal_memory: usize,
    /// How long the HTTP API waits for the ledger's answer before a 202 with a status URL.
    #[serde(with = "values::duration")]
    pub answer_timeout: Duration,
    /// Deprecated name of `http.api_token_file` (still read; setting both is an error).
    pub api_token_file: Option<PathBuf>,
}
