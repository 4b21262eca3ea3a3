//! The `credits` and `vouchers` commands: arguments in, requests to Kafka and answers from
//! the voucher stage or ClickHouse out (text or JSON). A refusal exits non-zero with its
//! reason code. Voucher codes are read from the argument or stdin (`-`) and printed only by
//! `vouchers create`, once, to the operator who made the code.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use rust_decimal::Decimal;

use crate::config::Config;
use crate::ledger::client::{self, ClientError, ResultFollower};
use crate::ledger::grant::GrantKind;
use crate::ledger::voucher::{self, VoucherDef, VoucherOutcome, VoucherRequest, VoucherResult};

#[derive(Subcommand)]
pub enum CreditsCommand {
    /// Add purchased credits (at least ledger.min_topup). REFERENCE is the payment id: the
    /// idempotency key, so re-running the command never credits twice.
    Topup {
        /// Account to credit.
        account: String,
        /// Credits to add, a decimal such as 25 or 12.50.
        amount: String,
        /// Payment id: the idempotency key.
        #[arg(long)]
        reference: String,
    },
    /// Correct a balance (positive or negative) with a reason.
    Adjust {
        /// Account to correct.
        account: String,
        /// Signed decimal, e.g. -5.25.
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Why the balance is corrected (kept with the entry).
        #[arg(long)]
        reason: String,
        /// Idempotency key; a new one is generated (and printed) when omitted.
        #[arg(long)]
        reference: Option<String>,
    },
    /// Redeem a voucher code for an account (`-` reads the code from stdin).
    Redeem {
        /// Account that redeems the voucher.
        account: String,
        /// Voucher code, or `-` to read it from stdin.
        code: String,
        /// Longest wait for the voucher stage's answer.
        #[arg(long, default_value = "30s", value_parser = crate::config::values::parse_duration)]
        timeout: Duration,
    },
    /// The account's balance, from the ledger's own state in Kafka (not ClickHouse).
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
}

#[derive(Subcommand)]
pub enum VouchersCommand {
    /// Create a voucher. Without CODE a random one is generated and printed once.
    Create {
        /// Voucher code; a random one is generated when omitted.
        code: Option<String>,
        /// Credits the voucher grants, a decimal such as 20.
        #[arg(long)]
        credits: String,
        /// RFC 3339 (2026-07-01T00:00:00Z); default now.
        #[arg(long, value_parser = crate::config::values::parse_instant)]
        valid_from: Option<DateTime<Utc>>,
        /// RFC 3339; default valid_from + --valid-for.
        #[arg(long, value_parser = crate::config::values::parse_instant)]
        valid_until: Option<DateTime<Utc>>,
        /// Validity when --valid-until is not given, e.g. 30days.
        #[arg(long, default_value = "30days", value_parser = crate::config::values::parse_duration)]
        valid_for: Duration,
        /// How many times it can be redeemed in all.
        #[arg(long, default_value_t = 1)]
        max_redemptions: u32,
        /// Only this account may redeem it.
        #[arg(long)]
        account: Option<String>,
        /// Free text kept with the voucher.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every voucher with its redemptions (masked codes).
    List {
        /// Output format.
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
    },
}

fn refusal_exit(reason: &str, message: &str) -> anyhow::Error {
    anyhow::anyhow!("refused ({reason}): {message}")
}

fn generate_code() -> String {
    // 16 characters from a 32-letter alphabet: 80 bits.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let chars: String = (0..16)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!(
        "{}-{}-{}-{}",
        &chars[0..4],
        &chars[4..8],
        &chars[8..12],
        &chars[12..16]
    )
}

fn print_result(r: &VoucherResult) -> anyhow::Result<()> {
    match r.outcome {
        VoucherOutcome::Refused => Err(refusal_exit(
            r.reason.map_or("refused", |x| x.as_str()),
            &r.message,
        )),
        _ => {
            writeln!(
                std::io::stdout(),
                "{} ({} left)",
                r.message,
                r.redemptions_left
            )?;
            if let Some(g) = &r.grant_id {
                writeln!(std::io::stdout(), "grant {g}")?;
            }
            Ok(())
        }
    }
}

pub async fn credits(cfg: &Config, cmd: CreditsCommand) -> anyhow::Result<()> {
    match cmd {
        CreditsCommand::Topup {
            account,
            amount,
            reference,
        } => grant(cfg, GrantKind::Topup, &account, &amount, &reference, None).await,
        CreditsCommand::Adjust {
            account,
            amount,
            reason,
            reference,
        } => {
            let reference = reference.unwrap_or_else(|| client::new_id("adj"));
            grant(
                cfg,
                GrantKind::Adjustment,
                &account,
                &amount,
                &reference,
                Some(&reason),
            )
            .await
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
            let r = ask(cfg, &req, timeout).await?;
            print_result(&r)
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
            let b = client::Balance {
                account_id: account.clone(),
                balance: state.balance.normalize().to_string(),
                entries: state.seq,
                last_entry_at: state
                    .updated_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
            };
            if format == "json" {
                writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&b)?)?;
            } else {
                writeln!(
                    std::io::stdout(),
                    "{}  balance {} credits  ({} entries, last {})",
                    b.account_id,
                    b.balance,
                    b.entries,
                    b.last_entry_at
                )?;
            }
            Ok(())
        }
        CreditsCommand::History {
            account,
            limit,
            before_seq,
            format,
        } => {
            let ch = require_clickhouse(cfg).await?;
            let h = client::history(&ch, &account, limit, before_seq)
                .await
                .map_err(|e| query_error(cfg, e))?;
            if format == "json" {
                writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&h)?)?;
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "Ledger order, newest first: seq is the order entries were applied and the balance \
                 follows it; date is when it happened (a debit: its last call's event time)."
            )?;
            writeln!(
                out,
                "{:>6}  {:<21}  {:<10}  {:>14}  {:>14}  {:>16}  description",
                "seq", "date", "kind", "credit", "debit", "balance"
            )?;
            let marks = client::dates_out_of_order(&h);
            for (e, late) in h.iter().zip(&marks) {
                writeln!(
                    out,
                    "{:>6}  {:<20}{}  {:<10}  {:>14}  {:>14}  {:>16}  {}",
                    e.seq,
                    e.date,
                    if *late { "*" } else { " " },
                    e.kind,
                    e.credit,
                    e.debit,
                    e.balance,
                    e.description
                )?;
            }
            if marks.iter().any(|m| *m) {
                writeln!(
                    out,
                    "* dated before an entry applied earlier (a late or replayed call, a back-dated grant): \
                     the list stays in seq order, as the balance does"
                )?;
            }
            Ok(())
        }
    }
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

async fn grant(
    cfg: &Config,
    kind: GrantKind,
    account: &str,
    amount: &str,
    reference: &str,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let g = client::build_grant(cfg, kind, account, amount, reference, reason)
        .map_err(|r| refusal_exit(r.reason.as_str(), &r.message))?;
    require_kafka(cfg, &[("topics.credit_grants", &cfg.topics.credit_grants)]).await?;
    let p = client::producer(cfg)?;
    client::send_grant(cfg, &p, &g).await?;
    writeln!(
        std::io::stdout(),
        "{} of {} credits for {} sent (grant {}); the ledger applies it once, however often it is sent",
        kind.as_str(),
        g.amount,
        g.account_id,
        g.grant_id
    )?;
    Ok(())
}

async fn ask(
    cfg: &Config,
    req: &VoucherRequest,
    timeout: Duration,
) -> anyhow::Result<VoucherResult> {
    let t = &cfg.topics;
    require_kafka(
        cfg,
        &[
            ("topics.voucher_requests", &t.voucher_requests),
            ("topics.voucher_results", &t.voucher_results),
        ],
    )
    .await?;
    let c = cfg.clone();
    let follower = tokio::task::spawn_blocking(move || ResultFollower::start(&c)).await??;
    let p = client::producer(cfg)?;
    match follower.request(cfg, &p, req, timeout).await {
        Ok(r) => Ok(r),
        Err(e @ ClientError::Timeout(..)) => Err(anyhow::anyhow!("{e}")),
        Err(e) => Err(e.into()),
    }
}

pub async fn vouchers(cfg: &Config, cmd: VouchersCommand) -> anyhow::Result<()> {
    match cmd {
        VouchersCommand::Create {
            code,
            credits,
            valid_from,
            valid_until,
            valid_for,
            max_redemptions,
            account,
            description,
        } => {
            let generated = code.is_none();
            let code = code.unwrap_or_else(generate_code);
            let code = voucher::normalize_code(&code).map_err(|e| anyhow::anyhow!("{e}"))?;
            let credits: Decimal = crate::ledger::grant::parse_amount(credits.trim())
                .map_err(|r| refusal_exit(r.reason.as_str(), &r.message))?;
            let from = valid_from.unwrap_or_else(Utc::now);
            let until = valid_until.unwrap_or(from + chrono::Duration::from_std(valid_for)?);
            let def = VoucherDef {
                code_hash: voucher::code_hash(&code),
                masked: voucher::mask(&code),
                credits,
                valid_from: from,
                valid_until: until,
                max_redemptions,
                account_id: account,
                description,
            };
            def.validate().map_err(|e| refusal_exit("invalid", &e))?;
            let req = VoucherRequest::Create {
                request_id: client::new_id("create"),
                requested_at: Utc::now(),
                voucher: def,
            };
            let r = ask(cfg, &req, Duration::from_secs(30)).await?;
            print_result(&r)?;
            if generated {
                writeln!(
                    std::io::stdout(),
                    "code {code}  (shown once: it is stored only as a hash)"
                )?;
            }
            Ok(())
        }
        VouchersCommand::List { format } => {
            // A missing topic listed "0 vouchers".
            require_kafka(cfg, &[("topics.voucher_state", &cfg.topics.voucher_state)]).await?;
            let c = cfg.clone();
            let list = tokio::task::spawn_blocking(move || client::list_vouchers(&c)).await??;
            if format == "json" {
                let v: Vec<_> = list
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "voucher": voucher::display(&s.def.masked, &s.def.code_hash),
                            "credits": s.def.credits.to_string(),
                            "valid_from": s.def.valid_from,
                            "valid_until": s.def.valid_until,
                            "max_redemptions": s.def.max_redemptions,
                            "redeemed": s.redemptions.len(),
                            "account_id": s.def.account_id,
                            "description": s.def.description,
                        })
                    })
                    .collect();
                writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            writeln!(
                std::io::stdout(),
                "{:<24}  {:>10}  {:<20}  {:<20}  {:>9}  account",
                "voucher",
                "credits",
                "valid_from",
                "valid_until",
                "used/max"
            )?;
            for s in &list {
                writeln!(
                    std::io::stdout(),
                    "{:<24}  {:>10}  {:<20}  {:<20}  {:>9}  {}",
                    voucher::display(&s.def.masked, &s.def.code_hash),
                    s.def.credits,
                    s.def.valid_from.format("%Y-%m-%dT%H:%M:%SZ"),
                    s.def.valid_until.format("%Y-%m-%dT%H:%M:%SZ"),
                    format!("{}/{}", s.redemptions.len(), s.def.max_redemptions),
                    s.def.account_id.as_deref().unwrap_or("any")
                )?;
            }
            writeln!(std::io::stdout(), "{} vouchers", list.len())?;
            Ok(())
        }
    }
}
