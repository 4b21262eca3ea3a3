//! The `credits` and `vouchers` commands: arguments in, requests to Kafka and the verdict of
//! the ledger (or the voucher stage), or reads of ClickHouse, out (text or JSON). Exit
//! status: 0 applied / already applied / answered, 1 refused (`refused (<reason>): ...`) or
//! failed, 75 sent but no verdict within `--timeout` (ask with `credits grant-status`).
//! Voucher codes are read from the argument or stdin (`-`) and printed only by
//! `vouchers create`, once, to the operator who made the code.

mod print;
mod settings;
mod vouchers;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;

use crate::config::Config;
use crate::ledger::answer::{LedgerAnswer, Verdict};
use crate::ledger::client::follower::Answer;
use crate::ledger::client::{
    self, ClientError, Follower, GrantInput, LedgerFollower, ResultFollower,
};
use crate::ledger::command::Request;
use crate::ledger::entry::GrantView;
use crate::ledger::grant::{GrantKind, Terms};
use crate::ledger::thresholds::{AutoTopup, Threshold};
use crate::ledger::voucher::{self, VoucherRequest, VoucherResult};

pub use settings::{AutoTopupCommand, ThresholdsCommand};
pub use vouchers::{VouchersCommand, vouchers};

/// Exit status of a command that was sent but not answered in time (EX_TEMPFAIL).
pub const EXIT_PENDING: u8 = 75;

/// A verdict that ends the command with a status other than 0 (main maps `code`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliExit {
    pub code: u8,
    pub message: String,
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::values::parse_duration(s)
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    crate::config::values::parse_instant(s)
}

/// Terms of a grant that adds credits, as options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TermsArgs {
    /// 0-100, lower drawn first (default 50).
    #[arg(long)]
    priority: Option<String>,
    /// The credits' remainder is forfeited at this instant (RFC 3339).
    #[arg(long, value_parser = parse_instant, conflicts_with = "expires_in")]
    expires_at: Option<DateTime<Utc>>,
    /// The credits' remainder is forfeited this long after now, e.g. 90days.
    #[arg(long, value_parser = parse_duration)]
    expires_in: Option<Duration>,
}

impl TermsArgs {
    fn terms(&self, category: Option<String>) -> anyhow::Result<Terms<'_>> {
        let expires_at = match (self.expires_at, self.expires_in) {
            (Some(t), _) => Some(t),
            (None, Some(d)) => Some(client::instant_after(d).map_err(anyhow::Error::msg)?),
            (None, None) => None,
        };
        Ok(Terms {
            category,
            priority: self.priority.as_deref(),
            expires_at: expires_at.map(|t| t.to_rfc3339()),
        })
    }
}

#[derive(Subcommand)]
pub enum CreditsCommand {
    /// Add purchased (paid) credits, at least ledger.min_topup, and print the ledger's
    /// verdict. REFERENCE is the payment id: the idempotency key, so re-running the command
    /// never credits twice (the second run answers "already applied").
    Topup {
        /// Account to credit.
        account: String,
        /// Credits to add, a decimal such as 25 or 12.50.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Payment id: the idempotency key.
        #[arg(long)]
        reference: String,
        #[command(flatten)]
        terms: TermsArgs,
        /// Longest wait for the ledger's verdict (then exit 75: ask with grant-status).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
    },
    /// Correct a balance (positive: a grant of CATEGORY; negative: taken in draw-down
    /// order) with a reason. Without --reference one is derived from the arguments, so
    /// re-running the same command applies it once.
    Adjust {
        /// Account to correct.
        account: String,
        /// Signed decimal, e.g. -5.25.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Why the balance is corrected (kept with the entry).
        #[arg(long)]
        reason: String,
        /// Idempotency key; derived from the arguments when omitted.
        #[arg(long)]
        reference: Option<String>,
        /// paid (default) or promotional, for a positive adjustment.
        #[arg(long, value_parser = ["paid", "promotional"])]
        category: Option<String>,
        #[command(flatten)]
        terms: TermsArgs,
        /// Longest wait for the ledger's verdict.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
    },
    /// What became of a grant: open (with what is left), used_up, expired, refused (with
    /// the reason) or unknown, as the ledger has it now.
    GrantStatus {
        /// Account the grant was made to.
        account: String,
        /// The grant id (a top-up's reference).
        grant_id: String,
        /// How long to wait for the ledger's answer on `ledger_results`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
    },
    /// Redeem a voucher code for an account (`-` reads the code from stdin).
    Redeem {
        /// Account that redeems the voucher.
        account: String,
        /// Voucher code, or `-` to read it from stdin.
        code: String,
        /// Longest wait for the voucher stage's answer.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// The account's balance and open grants, from the ledger's own state in Kafka (not
    /// ClickHouse).
    Balance {
        /// Account to show.
        account: String,
        /// Output format.
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
    },
    /// The account's entries with the running balance, newest first.
    History {
        /// Account to show.
        account: String,
        /// Entries to show at most.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries before this sequence number (the next page).
        #[arg(long)]
        before_seq: Option<u64>,
        /// Output format.
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
    },
    /// Low-balance thresholds and the expiry warning of one account.
    Thresholds {
        #[command(subcommand)]
        command: ThresholdsCommand,
    },
    /// The automatic top-up rule of one account (requests for the payment service).
    AutoTopup {
        #[command(subcommand)]
        command: AutoTopupCommand,
    },
}

fn refusal_exit(reason: &str, message: &str) -> anyhow::Error {
    CliExit {
        code: 1,
        message: format!("refused ({reason}): {message}"),
    }
    .into()
}

fn pending_exit(what: &str, ask: &str) -> anyhow::Error {
    CliExit {
        code: EXIT_PENDING,
        message: format!("{what}; ask later with: {ask}"),
    }
    .into()
}

fn decimal(field: &str, s: &str) -> anyhow::Result<rust_decimal::Decimal> {
    crate::ledger::grant::parse_amount(s.trim())
        .map_err(|r| refusal_exit("invalid_field", &format!("{field}: {}", r.message)))
}

pub async fn credits(cfg: &Config, cmd: CreditsCommand) -> anyhow::Result<()> {
    match cmd {
        CreditsCommand::Topup {
            account,
            amount,
            reference,
            terms,
            timeout,
            format,
        } => {
            let input = GrantInput {
                kind: GrantKind::Topup,
                account: &account,
                amount: &amount,
                reference: &reference,
                reason: None,
                terms: terms.terms(None)?,
            };
            grant(cfg, &input, timeout, &format).await
        }
        CreditsCommand::Adjust {
            account,
            amount,
            reason,
            reference,
            category,
            terms,
            timeout,
            format,
        } => {
            let derived = reference.is_none();
            let reference = reference.unwrap_or_else(|| {
                let expires = terms
                    .expires_at
                    .map(|t| t.to_rfc3339())
                    .or(terms.expires_in.map(|d| format!("in {d:?}")))
                    .unwrap_or_default();
                client::derived_reference(
                    "adj",
                    &[
                        &account,
                        amount.trim(),
                        &reason,
                        category.as_deref().unwrap_or(""),
                        terms.priority.as_deref().unwrap_or(""),
                        &expires,
                    ],
                )
            });
            if derived {
                writeln!(
                    std::io::stdout(),
                    "reference {reference} (derived from the arguments: running this same command again applies it once; give --reference to make another adjustment)"
                )?;
            }
            let input = GrantInput {
                kind: GrantKind::Adjustment,
                account: &account,
                amount: &amount,
                reference: &reference,
                reason: Some(&reason),
                terms: terms.terms(category)?,
            };
            grant(cfg, &input, timeout, &format).await
        }
        CreditsCommand::GrantStatus {
            account,
            grant_id,
            timeout,
            format,
        } => {
            let req = Request::GrantStatus {
                request_id: client::new_id("status"),
                account_id: account.clone(),
                grant_id: grant_id.clone(),
            };
            let ask = format!("usage-aggregator credits grant-status {account} {grant_id}");
            let a = command(cfg, &req, timeout, &ask).await?;
            print::grant_status(&a, &format)
        }
        CreditsCommand::Redeem {
            account,
            code,
            timeout,
        } => {
            let code = if code == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                code
            };
            let code = voucher::normalize_code(&code)
                .map_err(|_| refusal_exit("unknown", "no voucher has this code"))?;
            let req = VoucherRequest::Redeem {
                request_id: client::new_id("redeem"),
                requested_at: Utc::now(),
                code_hash: voucher::code_hash(&code),
                masked: voucher::mask(&code),
                account_id: account,
            };
            let r = ask_vouchers(cfg, &req, timeout).await?;
            print::voucher_result(&r)
        }
        CreditsCommand::Balance { account, format } => {
            // From the ledger's own state in Kafka: exact, and without ClickHouse.
            require_kafka(cfg, &[("topics.ledger_state", &cfg.topics.ledger_state)]).await?;
            let (c, a) = (cfg.clone(), account.clone());
            let state = tokio::task::spawn_blocking(move || {
                crate::ledger::view::follow::read_account(&c, &a, Duration::from_secs(60))
            })
            .await??
            .with_context(|| format!("account {account} has no ledger entries"))?;
            let grants: Vec<GrantView> = state.funds.grants.iter().map(GrantView::from).collect();
            let b = client::Balance::from_ledger(
                &account,
                state.balance,
                state.funds.overdraft,
                state.seq,
                state.updated_at,
                &grants,
            );
            print::balance(&b, &format)
        }
        CreditsCommand::History {
            account,
            limit,
            before_seq,
            format,
        } => {
            let ch = require_clickhouse(cfg).await?;
            let page = client::HistoryPage {
                limit,
                before_seq,
                window: (None, None),
            };
            let h = client::history(&ch, &account, &page)
                .await
                .map_err(|e| query_error(cfg, e))?;
            print::history(&h, &format)
        }
        CreditsCommand::Thresholds { command: c } => thresholds(cfg, c).await,
        CreditsCommand::AutoTopup { command: c } => auto_topup(cfg, c).await,
    }
}

async fn thresholds(cfg: &Config, c: ThresholdsCommand) -> anyhow::Result<()> {
    let (req, timeout, format) = match c {
        ThresholdsCommand::Set {
            account,
            thresholds,
            expiry_warning,
            timeout,
        } => {
            let list = thresholds
                .iter()
                .map(|t| t.parse::<Threshold>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| refusal_exit("invalid_field", &e))?;
            let req = Request::SetThresholds {
                request_id: client::new_id("thresholds"),
                account_id: account,
                thresholds: (!list.is_empty()).then_some(Some(list)),
                expiry_warning_secs: expiry_warning.map(|d| Some(d.as_secs())),
            };
            (req, timeout, "text".to_string())
        }
        ThresholdsCommand::Reset { account, timeout } => (
            Request::SetThresholds {
                request_id: client::new_id("thresholds"),
                account_id: account,
                thresholds: Some(None),
                expiry_warning_secs: Some(None),
            },
            timeout,
            "text".to_string(),
        ),
        ThresholdsCommand::Show {
            account,
            timeout,
            format,
        } => (
            Request::AccountStatus {
                request_id: client::new_id("account"),
                account_id: account,
            },
            timeout,
            format,
        ),
    };
    let account = req.account_id().unwrap_or_default().to_string();
    let ask = format!("usage-aggregator credits thresholds show {account}");
    let a = command(cfg, &req, timeout, &ask).await?;
    print::account(&a, &format)
}

async fn auto_topup(cfg: &Config, c: AutoTopupCommand) -> anyhow::Result<()> {
    let (account, rule, timeout) = match c {
        AutoTopupCommand::Set {
            account,
            below,
            fixed,
            refill_to,
            timeout,
        } => {
            let rule = AutoTopup {
                below: decimal("below", &below)?,
                fixed: fixed.as_deref().map(|f| decimal("fixed", f)).transpose()?,
                refill_to: refill_to
                    .as_deref()
                    .map(|f| decimal("refill_to", f))
                    .transpose()?,
            };
            rule.validate(cfg.ledger.min_topup)
                .map_err(|e| refusal_exit("invalid_field", &e))?;
            (account, Some(rule), timeout)
        }
        AutoTopupCommand::Off { account, timeout } => (account, None, timeout),
    };
    let req = Request::SetAutoTopup {
        request_id: client::new_id("autotopup"),
        account_id: account.clone(),
        rule,
    };
    let ask = format!("usage-aggregator credits thresholds show {account}");
    let a = command(cfg, &req, timeout, &ask).await?;
    print::account(&a, "text")
}

/// What every command that writes to or reads from Kafka checks first: a broker answers
/// and `topics` exist, so an unreachable broker or a missing topic fails within
/// `kafka.connect_timeout` with one line naming the key and its value (it hung or waited
/// 30 s for librdkafka's own error, naming neither).
pub(crate) async fn require_kafka(cfg: &Config, topics: &[(&str, &str)]) -> anyhow::Result<()> {
    let k = crate::preflight::Kafka::connect(cfg).await?;
    for (key, topic) in topics {
        k.require_topic(key, topic, false).await?;
    }
    Ok(())
}

/// ClickHouse answers (naming `clickhouse.url`, `clickhouse.user` when it does not).
async fn require_clickhouse(cfg: &Config) -> anyhow::Result<clickhouse::Client> {
    crate::preflight::clickhouse(cfg).await?;
    Ok(crate::sink::client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database))
}

/// A query's error said as `report` says it: the key and value (a missing database or
/// table: run `setup`), not ClickHouse's raw answer.
fn query_error(cfg: &Config, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::ClickHouse(e) => crate::preflight::clickhouse_error(cfg, &e).into(),
        other => other.into(),
    }
}

/// A follower of the answers topic `A` comes on (`answers`), started on a blocking thread once
/// it and the topic the requests go to (`requests`) are checked to exist: (key, topic) each.
async fn follower<A: Answer>(
    cfg: &Config,
    requests: (&str, &str),
    answers: (&str, &str),
) -> anyhow::Result<Follower<A>> {
    require_kafka(cfg, &[requests, answers]).await?;
    let c = cfg.clone();
    Ok(tokio::task::spawn_blocking(move || Follower::<A>::start(&c)).await??)
}

async fn ledger_follower(cfg: &Config) -> anyhow::Result<LedgerFollower> {
    let t = &cfg.topics;
    follower(
        cfg,
        ("topics.credit_grants", &t.credit_grants),
        ("topics.ledger_results", &t.ledger_results),
    )
    .await
}

/// Sends a grant and prints the ledger's verdict.
async fn grant(
    cfg: &Config,
    input: &GrantInput<'_>,
    timeout: Duration,
    format: &str,
) -> anyhow::Result<()> {
    let g =
        client::build_grant(cfg, input).map_err(|r| refusal_exit(r.reason.as_str(), &r.message))?;
    let follower = ledger_follower(cfg).await?;
    let p = client::producer(cfg)?;
    match follower.grant(cfg, &p, &g, timeout).await {
        Ok(a) => print::grant_answer(&a, format),
        Err(ClientError::Timeout(..)) => Err(pending_exit(
            &format!(
                "{} {} for {} sent; the ledger gave no verdict within {timeout:?} (it applies it once when it runs)",
                g.kind.as_str(),
                g.grant_id,
                g.account_id
            ),
            &format!(
                "usage-aggregator credits grant-status {} {}",
                g.account_id, g.grant_id
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Sends a command and returns the ledger's answer (a refusal is an error).
async fn command(
    cfg: &Config,
    req: &Request,
    timeout: Duration,
    ask: &str,
) -> anyhow::Result<LedgerAnswer> {
    let follower = ledger_follower(cfg).await?;
    let p = client::producer(cfg)?;
    match follower.command(cfg, &p, req, timeout).await {
        Ok(a) if a.verdict == Verdict::Refused => Err(refusal_exit(
            a.reason.map_or("refused", |r| r.as_str()),
            &a.message,
        )),
        Ok(a) => Ok(a),
        Err(ClientError::Timeout(..)) => Err(pending_exit(
            &format!("the ledger gave no answer within {timeout:?}"),
            ask,
        )),
        Err(e) => Err(e.into()),
    }
}

async fn ask_vouchers(
    cfg: &Config,
    req: &VoucherRequest,
    timeout: Duration,
) -> anyhow::Result<VoucherResult> {
    let t = &cfg.topics;
    let follower: ResultFollower = follower(
        cfg,
        ("topics.voucher_requests", &t.voucher_requests),
        ("topics.voucher_results", &t.voucher_results),
    )
    .await?;
    let p = client::producer(cfg)?;
    match follower.request(cfg, &p, req, timeout).await {
        Ok(r) => Ok(r),
        Err(e @ ClientError::Timeout(..)) => Err(anyhow::anyhow!("{e}")),
        Err(e) => Err(e.into()),
    }
}
