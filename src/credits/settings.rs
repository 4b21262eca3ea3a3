//! The arguments of `credits thresholds` and `credits auto-topup` (an account's alert
//! thresholds, expiry warning and automatic top-up rule); `cli.rs` sends them to the ledger.

use std::time::Duration;

use clap::Subcommand;

use super::parse_duration;

#[derive(Subcommand)]
pub enum ThresholdsCommand {
    /// Set the thresholds (credits such as 50 or -5, or a share of the last top-up such as
    /// 20%), e.g. `set ACCOUNT 50 10 0`; none given keeps them.
    Set {
        /// Account whose settings these are.
        account: String,
        /// Thresholds: credits (50, -5) or a share of the last top-up (20%).
        #[arg(allow_hyphen_values = true)]
        thresholds: Vec<String>,
        /// Raise grant_expiring this long before a grant expires ("0s": never).
        #[arg(long, value_parser = parse_duration)]
        expiry_warning: Option<Duration>,
        /// How long to wait for the ledger's answer on `ledger_results`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Back to ledger.alert_thresholds and ledger.expiry_warning.
    Reset {
        /// Account whose settings these are.
        account: String,
        /// How long to wait for the ledger's answer on `ledger_results`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// The account as the ledger holds it: balance, open grants, thresholds, auto top-up.
    Show {
        /// Account whose settings these are.
        account: String,
        /// How long to wait for the ledger's answer on `ledger_results`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
    },
}

#[derive(Subcommand)]
pub enum AutoTopupCommand {
    /// When the balance goes below BELOW, request --fixed credits or what refills to
    /// --refill-to (one `topup_requested` per crossing; the payment service tops up).
    Set {
        /// Account whose settings these are.
        account: String,
        /// Request a top-up when the balance goes below this many credits.
        #[arg(long, allow_hyphen_values = true)]
        below: String,
        /// Credits to request each time (at least ledger.min_topup).
        #[arg(
            long,
            conflicts_with = "refill_to",
            required_unless_present = "refill_to"
        )]
        fixed: Option<String>,
        /// Request what brings the balance back to this many credits.
        #[arg(long)]
        refill_to: Option<String>,
        /// How long to wait for the ledger's answer on `ledger_results`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Turn the rule off.
    Off {
        /// Account whose settings these are.
        account: String,
        /// How long to wait for the ledger's answer on `ledger_results`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
}
