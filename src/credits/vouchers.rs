//! The `vouchers` commands: create (idempotent on retry), list, revoke (exactly once).

use std::io::{Read, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Subcommand;

use super::{ask_vouchers, parse_duration, parse_instant, print, refusal_exit, require_kafka};
use crate::config::Config;
use crate::ledger::client::{self, ClientError, VoucherInput};
use crate::ledger::voucher::{self, VoucherRequest, VoucherView};

#[derive(Subcommand)]
pub enum VouchersCommand {
    /// Create a voucher. Without CODE a random one is generated and printed once. Re-running
    /// the same command (same CODE and options) answers the original voucher.
    Create(CreateArgs),
    /// Every voucher with its redemptions (masked codes).
    List {
        /// Output format.
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
    },
    /// Revoke a voucher: later redemptions are refused `revoked` (credits already granted
    /// stay). Give the CODE (`-` reads stdin) or --id from `vouchers list`.
    Revoke {
        /// The voucher code, or `-` to read it from stdin.
        #[arg(required_unless_present = "id")]
        code: Option<String>,
        /// The voucher's id as `vouchers list` shows it (at least 8 hex digits).
        #[arg(long, conflicts_with = "code")]
        id: Option<String>,
        /// Why (kept with the voucher).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

// `vouchers create`'s options, the fields of a [`VoucherInput`] (no doc comment: the
// subcommand's help is the variant's).
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Voucher code; a random one is generated when omitted.
    code: Option<String>,
    /// Credits the voucher grants, a decimal such as 20.
    #[arg(long)]
    credits: String,
    /// RFC 3339 (2026-07-01T00:00:00Z); default now.
    #[arg(long, value_parser = parse_instant)]
    valid_from: Option<DateTime<Utc>>,
    /// RFC 3339; default valid_from + --valid-for.
    #[arg(long, value_parser = parse_instant)]
    valid_until: Option<DateTime<Utc>>,
    /// Validity when --valid-until is not given, e.g. 30days.
    #[arg(long, default_value = "30days", value_parser = parse_duration)]
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
    /// The granted credits expire this long after each redemption, e.g. 90days.
    #[arg(long, value_parser = parse_duration, conflicts_with = "credits_expire_at")]
    credits_valid_for: Option<Duration>,
    /// The granted credits expire at this instant (at or after --valid-until).
    #[arg(long, value_parser = parse_instant)]
    credits_expire_at: Option<DateTime<Utc>>,
    /// Priority of the granted credits, 0-100 (default 50).
    #[arg(long)]
    priority: Option<u8>,
    /// Request id: re-sending with it answers the original creation.
    #[arg(long)]
    request_id: Option<String>,
}

impl From<CreateArgs> for VoucherInput {
    fn from(a: CreateArgs) -> VoucherInput {
        VoucherInput {
            code: a.code,
            credits: a.credits,
            valid_from: a.valid_from,
            valid_until: a.valid_until,
            valid_for: a.valid_for,
            max_redemptions: a.max_redemptions,
            account: a.account,
            description: a.description,
            credits_valid_for: a.credits_valid_for,
            credits_expire_at: a.credits_expire_at,
            priority: a.priority,
            request_id: a.request_id,
        }
    }
}

pub async fn vouchers(cfg: &Config, cmd: VouchersCommand) -> anyhow::Result<()> {
    match cmd {
        VouchersCommand::Create(args) => {
            let input = VoucherInput::from(args);
            let built = client::build_voucher(&input)
                .map_err(|r| refusal_exit(r.reason.as_str(), &r.message))?;
            if built.generated {
                // Printed before sending: a timeout must not lose the only copy of the code.
                writeln!(
                    std::io::stdout(),
                    "code {}  (shown once: it is stored only as a hash; retry with this code and the same options)",
                    built.code
                )?;
            }
            if built.derived_request_id {
                writeln!(
                    std::io::stdout(),
                    "request {} (derived from the arguments: re-running this command answers the original voucher)",
                    built.request.request_id()
                )?;
            }
            let r = ask_vouchers(cfg, &built.request, Duration::from_secs(30)).await?;
            print::voucher_result(&r)
        }
        VouchersCommand::List { format } => {
            // A missing topic listed "0 vouchers".
            require_kafka(cfg, &[("topics.voucher_state", &cfg.topics.voucher_state)]).await?;
            let c = cfg.clone();
            let list = tokio::task::spawn_blocking(move || client::list_vouchers(&c)).await??;
            let views: Vec<VoucherView> = list.iter().map(VoucherView::from).collect();
            if format == "json" {
                writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::to_string_pretty(&views)?
                )?;
                return Ok(());
            }
            writeln!(
                std::io::stdout(),
                "{:<16}  {:<24}  {:>10}  {:<20}  {:<20}  {:>9}  {:<10}  account",
                "id",
                "voucher",
                "credits",
                "valid_from",
                "valid_until",
                "used/max",
                "credits"
            )?;
            for v in &views {
                let credits_expiry = match (v.credits_valid_for_secs, v.credits_expire_at) {
                    (Some(s), _) => format!(
                        "expire {}",
                        humantime::format_duration(Duration::from_secs(s))
                    ),
                    (_, Some(t)) => format!("expire {}", t.format("%Y-%m-%d")),
                    _ => "keep".into(),
                };
                writeln!(
                    std::io::stdout(),
                    "{:<16}  {:<24}  {:>10}  {:<20}  {:<20}  {:>9}  {:<10}  {}{}",
                    v.id,
                    v.voucher,
                    v.credits,
                    v.valid_from.format("%Y-%m-%dT%H:%M:%SZ"),
                    v.valid_until.format("%Y-%m-%dT%H:%M:%SZ"),
                    format!("{}/{}", v.redeemed, v.max_redemptions),
                    credits_expiry,
                    v.account_id.as_deref().unwrap_or("any"),
                    if v.revoked.is_some() { "  REVOKED" } else { "" }
                )?;
            }
            writeln!(std::io::stdout(), "{} vouchers", views.len())?;
            Ok(())
        }
        VouchersCommand::Revoke { code, id, reason } => {
            let code_hash = match (code, id) {
                (Some(c), _) => {
                    let c = if c == "-" {
                        let mut s = String::new();
                        std::io::stdin().read_to_string(&mut s)?;
                        s
                    } else {
                        c
                    };
                    let c = voucher::normalize_code(&c)
                        .map_err(|_| refusal_exit("unknown", "no voucher has this code"))?;
                    voucher::code_hash(&c)
                }
                (None, Some(id)) => {
                    require_kafka(cfg, &[("topics.voucher_state", &cfg.topics.voucher_state)])
                        .await?;
                    let c = cfg.clone();
                    match tokio::task::spawn_blocking(move || client::find_voucher(&c, &id)).await?
                    {
                        Ok(s) => s.def.code_hash,
                        Err(ClientError::Refused(r)) => {
                            return Err(refusal_exit(r.reason.as_str(), &r.message));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                (None, None) => unreachable!("clap requires a code or an id"),
            };
            let req = VoucherRequest::Revoke {
                request_id: client::new_id("revoke"),
                requested_at: Utc::now(),
                code_hash,
                reason,
            };
            let r = ask_vouchers(cfg, &req, Duration::from_secs(30)).await?;
            print::voucher_result(&r)
        }
    }
}
