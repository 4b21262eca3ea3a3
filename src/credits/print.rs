//! How the `credits` commands print the ledger's answers and ClickHouse's rows (text or
//! JSON); a refusal becomes the command's error.

use std::io::Write;

use super::{CliExit, refusal_exit};
use crate::ledger::answer::{AccountView, GrantState, GrantStatus, LedgerAnswer, Verdict};
use crate::ledger::client::{Balance, HistoryEntry, dates_out_of_order};
use crate::ledger::entry::GrantView;
use crate::ledger::voucher::{VoucherOutcome, VoucherResult};

fn out() -> std::io::Stdout {
    std::io::stdout()
}

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    writeln!(out(), "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn expiry(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("never expires".into(), |t| {
        format!(
            "expires {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    })
}

fn grant_line(g: &GrantView) -> String {
    format!(
        "{}  {} of {} left  {}, priority {}, {}",
        g.grant_id,
        g.remaining,
        g.amount,
        g.category.as_str(),
        g.priority,
        expiry(g.expires_at)
    )
}

fn status_line(s: &GrantStatus) -> String {
    let mut parts = vec![format!("grant {}: {}", s.grant_id, s.state.as_str())];
    if let (Some(a), Some(r)) = (s.facts.amount, s.remaining) {
        parts.push(format!("{r} of {a} left"));
    }
    if let Some(c) = s.facts.category {
        parts.push(c.as_str().to_string());
    }
    if let Some(p) = s.facts.priority {
        parts.push(format!("priority {p}"));
    }
    if s.facts
        .amount
        .is_some_and(|a| a > rust_decimal::Decimal::ZERO)
    {
        parts.push(expiry(s.facts.expires_at));
    }
    if let Some(f) = s.forfeited {
        parts.push(format!("{f} forfeited at expiry"));
    }
    if let Some(r) = &s.refusal {
        parts.push(format!("last refused ({}): {}", r.reason, r.message));
    }
    parts.join(", ")
}

/// A grant's verdict: applied and already applied print, a refusal is the error.
pub fn grant_answer(a: &LedgerAnswer, format: &str) -> anyhow::Result<()> {
    if a.verdict == Verdict::Refused {
        if format == "json" {
            json(a)?;
        }
        return Err(refusal_exit(
            a.reason.map_or("refused", |r| r.as_str()),
            &a.message,
        ));
    }
    if format == "json" {
        return json(a);
    }
    writeln!(out(), "{}: {}", a.verdict.as_str(), a.message)?;
    if let Some(s) = &a.grant {
        writeln!(out(), "{}", status_line(s))?;
    }
    Ok(())
}

/// A grant's status; exit 1 when it was refused or is unknown.
pub fn grant_status(a: &LedgerAnswer, format: &str) -> anyhow::Result<()> {
    let Some(s) = &a.grant else {
        return Err(anyhow::anyhow!("the ledger's answer has no grant status"));
    };
    if format == "json" {
        json(a)?;
    } else {
        writeln!(out(), "{}", status_line(s))?;
    }
    match s.state {
        GrantState::Refused | GrantState::Unknown => Err(CliExit {
            code: 1,
            message: format!(
                "grant {} of account {} is {}",
                s.grant_id,
                a.account_id,
                s.state.as_str()
            ),
        }
        .into()),
        _ => Ok(()),
    }
}

/// An account as the ledger holds it.
pub fn account(a: &LedgerAnswer, format: &str) -> anyhow::Result<()> {
    let Some(v) = &a.account else {
        return Err(anyhow::anyhow!("the ledger's answer has no account"));
    };
    if format == "json" {
        return json(v);
    }
    account_text(v)
}

fn account_text(v: &AccountView) -> anyhow::Result<()> {
    writeln!(
        out(),
        "{}  balance {} credits (paid {}, promotional {}, overdraft {}), {} entries",
        v.account_id,
        v.balance,
        v.paid,
        v.promotional,
        v.overdraft,
        v.entries
    )?;
    for g in &v.grants {
        writeln!(out(), "  {}", grant_line(g))?;
    }
    if let Some(n) = &v.next_expiry {
        writeln!(
            out(),
            "next expiry: {} of grant {} at {}",
            n.remaining,
            n.grant_id,
            n.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        )?;
    }
    let ts: Vec<String> = v
        .thresholds
        .iter()
        .map(|t| {
            let below = if t.below { " (below)" } else { "" };
            if t.rule == t.value.to_string() {
                format!("{}{below}", t.rule)
            } else {
                format!("{} = {}{below}", t.rule, t.value)
            }
        })
        .collect();
    writeln!(
        out(),
        "thresholds: {}{}; grant_expiring {} before an expiry",
        if ts.is_empty() {
            "none".into()
        } else {
            ts.join(", ")
        },
        if v.custom_thresholds {
            ""
        } else {
            " (defaults)"
        },
        if v.expiry_warning_secs == 0 {
            "never".to_string()
        } else {
            humantime::format_duration(std::time::Duration::from_secs(v.expiry_warning_secs))
                .to_string()
        }
    )?;
    match &v.auto_topup {
        Some(r) => writeln!(
            out(),
            "auto top-up: below {} request {}",
            r.below,
            match (r.fixed, r.refill_to) {
                (Some(f), _) => format!("{f} credits"),
                (_, Some(t)) => format!("a refill to {t}"),
                _ => String::new(),
            }
        )?,
        None => writeln!(out(), "auto top-up: off")?,
    }
    Ok(())
}

/// A voucher command's result; a refusal is the error.
pub fn voucher_result(r: &VoucherResult) -> anyhow::Result<()> {
    if r.outcome == VoucherOutcome::Refused {
        return Err(refusal_exit(
            r.reason.map_or("refused", |x| x.as_str()),
            &r.message,
        ));
    }
    writeln!(out(), "{} ({} left)", r.message, r.redemptions_left)?;
    if let Some(g) = &r.grant_id {
        writeln!(out(), "grant {g}")?;
    }
    if let Some(t) = r.credits_expire_at {
        writeln!(out(), "its credits expire at {}", t.to_rfc3339())?;
    }
    Ok(())
}

/// Balance and open grants from ClickHouse.
pub fn balance(b: &Balance, format: &str) -> anyhow::Result<()> {
    if format == "json" {
        return json(b);
    }
    writeln!(
        out(),
        "{}  balance {} credits  ({} entries, last {})",
        b.account_id,
        b.balance,
        b.entries,
        b.last_entry_at
    )?;
    if b.overdraft != "0" {
        writeln!(
            out(),
            "  overdraft {} (the next grant repays it first)",
            b.overdraft
        )?;
    }
    for g in &b.grants {
        writeln!(
            out(),
            "  {}  {} left  {}, priority {}, {}",
            g.grant_id,
            g.remaining,
            g.category,
            g.priority,
            g.expires_at
                .as_deref()
                .map_or("never expires".to_string(), |t| format!("expires {t}"))
        )?;
    }
    if let Some(n) = &b.next_expiry {
        writeln!(
            out(),
            "next expiry: {} of grant {} at {}",
            n.remaining,
            n.grant_id,
            n.expires_at.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

/// An account's entries, newest first.
pub fn history(h: &[HistoryEntry], format: &str) -> anyhow::Result<()> {
    if format == "json" {
        return json(&h);
    }
    let mut o = out().lock();
    writeln!(
        o,
        "Ledger order, newest first: seq is the order entries were applied and the balance \
         follows it; date is when it happened (a debit: its last call's event time)."
    )?;
    writeln!(
        o,
        "{:>6}  {:<21}  {:<10}  {:>14}  {:>14}  {:>16}  description [funded by]",
        "seq", "date", "kind", "credit", "debit", "balance"
    )?;
    let marks = dates_out_of_order(h);
    for (e, late) in h.iter().zip(&marks) {
        let funded: Vec<String> = e
            .funded_by
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    f.grant_id.as_deref().unwrap_or("overdraft"),
                    f.amount
                )
            })
            .collect();
        let funded = if funded.is_empty() {
            String::new()
        } else {
            format!("  [{}]", funded.join(", "))
        };
        writeln!(
            o,
            "{:>6}  {:<20}{}  {:<10}  {:>14}  {:>14}  {:>16}  {}{funded}",
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
            o,
            "* dated before an entry applied earlier (a late or replayed call, a back-dated grant): \
             the list stays in seq order, as the balance does"
        )?;
    }
    Ok(())
}
