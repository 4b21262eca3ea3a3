//! `rerate --correction ID [--dry-run]`: the published catalog and plans, the committed
//! priced lines and debits in ([`kafka`]); the decision of [`usage_aggregator::rerate`]; the
//! report on stdout and, unless `--dry-run`, the correction debits written once to the
//! debits topic in Kafka transactions (docs/price-catalog.md#re-rating-rerate).

mod kafka;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use usage_aggregator::catalog::valid_correction_id;
use usage_aggregator::config::Config;
use usage_aggregator::debit::{Debit, PricedLine};
use usage_aggregator::preflight::Kafka;
use usage_aggregator::rating::Pricing;
use usage_aggregator::rerate::{self, Correction, Outcome, ScopeKey};

use super::plans::published_plans;
use super::{published_catalog, stdout};

/// Arguments of `rerate`.
#[derive(Debug, clap::Args)]
pub struct RerateArgs {
    /// The correction to apply: its id as published with `catalog publish --correction ID`.
    #[arg(long, value_name = "ID")]
    pub correction: String,
    /// Print what would be emitted (per account and per asset: count, old, new,
    /// difference) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Correction debits per Kafka transaction.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub per_transaction: u32,
    /// How long reading each topic to its end may take.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
}

pub async fn rerate(cfg: &Config, a: RerateArgs) -> anyhow::Result<()> {
    let id = a.correction.trim().to_string();
    if !valid_correction_id(&id) {
        return Err(anyhow!(
            "--correction \"{}\": not a correction id (1 to 64 of A-Z a-z 0-9 . _ -)",
            a.correction
        ));
    }
    let k = Kafka::connect(cfg).await?;
    for (key, topic) in [
        ("topics.priced_usage", &cfg.topics.priced_usage),
        ("topics.debits", &cfg.topics.debits),
    ] {
        k.require_topic(key, topic, false).await?;
    }
    let catalog = published_catalog(cfg).await?;
    let plans = published_plans(cfg).await?;
    let windows = catalog.correction_windows(&id);
    let Some(reason) = windows.first().map(|w| w.reason.clone()) else {
        return Err(anyhow!(
            "--correction \"{id}\": no price version of correction {id} is in force on {} (publish it with `catalog publish FILE --correction {id} --reason TEXT`; a later correction at the same instant replaces it)",
            cfg.topics.price_catalog
        ));
    };
    let c2 = cfg.clone();
    let dry = a.dry_run;
    let timeout = a.read_timeout;
    let started = Instant::now();
    // Fence earlier runs first (not in a dry run, which writes nothing and fences nothing);
    // then lines before debits: a line's debit is committed with it or later, never before.
    let win = windows.clone();
    let (producer, lines_read, lines, debits) = tokio::task::spawn_blocking(move || {
        let p = if dry {
            None
        } else {
            Some(kafka::producer(&c2)?)
        };
        // Two passes over the lines, so that memory holds only the affected scopes' lines:
        // which scopes have a line in a window, then every line of those scopes. (Lines
        // committed between the passes join only a scope already found.)
        let (key, topic) = ("topics.priced_usage", &c2.topics.priced_usage);
        let mut touched = BTreeSet::new();
        let mut lines_read = 0u64;
        kafka::read_all(&c2, key, topic, timeout, |l: &PricedLine| {
            lines_read += 1;
            if win.iter().any(|w| w.covers(&l.asset_id, l.occurred_at)) {
                touched.insert(ScopeKey::of(l));
            }
            false
        })?;
        let lines: Vec<PricedLine> = kafka::read_all(&c2, key, topic, timeout, |l| {
            touched.contains(&ScopeKey::of(l))
        })?;
        let debits: Vec<Debit> =
            kafka::read_all(&c2, "topics.debits", &c2.topics.debits, timeout, |_| true)?;
        anyhow::Ok((p, lines_read, lines, debits))
    })
    .await??;
    let read_ms = started.elapsed().as_millis();
    let decided = Instant::now();
    let out = rerate::decide(
        Correction {
            id: &id,
            reason: &reason,
            windows: &windows,
        },
        Pricing {
            catalog: &catalog,
            plans: &plans,
        },
        lines,
        debits,
    );
    let decide_ms = decided.elapsed().as_millis();
    let mut w = stdout();
    writeln!(w, "correction {id}: {reason}")?;
    for win in &windows {
        let until = win
            .until
            .map(|u| u.to_rfc3339())
            .unwrap_or_else(|| "now".into());
        writeln!(
            w,
            "  window {} from {} until {} (version {})",
            win.asset_id,
            win.from.to_rfc3339(),
            until,
            win.version
        )?;
    }
    writeln!(
        w,
        "source: {} ({lines_read} lines, {} of the affected scopes kept) and {} ({} debits), read_committed, whole topics; read in {read_ms} ms, re-rated in {decide_ms} ms",
        cfg.topics.priced_usage, out.stats.lines_read, cfg.topics.debits, out.stats.debits_read
    )?;
    report(&mut w, &out)?;
    let ids = out.to_emit.len();
    if out.to_emit.is_empty() {
        if out.already_written.is_empty() {
            writeln!(
                w,
                "nothing to emit: no billed amount differs under correction {id}"
            )?;
        } else {
            writeln!(
                w,
                "nothing to emit: correction {id} was already applied ({} correction debits written by an earlier run)",
                out.already_written.len()
            )?;
        }
    } else if dry {
        writeln!(
            w,
            "dry run: would emit {ids} correction debits to {}; nothing written",
            cfg.topics.debits
        )?;
    } else {
        w.flush()?;
        let p = producer.expect("not a dry run");
        let c2 = cfg.clone();
        let per = a.per_transaction as usize;
        let emitted = Instant::now();
        let debits = out.to_emit;
        // One progress line on stderr per committed transaction: what a killed run had
        // written is on the topic; the next run starts after it.
        let total = debits.len();
        let txns = tokio::task::spawn_blocking(move || {
            kafka::emit(&c2, &p, &debits, per, |n, done| {
                usage_aggregator::logging::stderr_line(&format!(
                    "rerate: committed transaction {n} ({done}/{total} correction debits)"
                ))
            })
        })
        .await??;
        writeln!(
            w,
            "emitted {ids} correction debits to {} in {txns} transactions ({} ms){}",
            cfg.topics.debits,
            emitted.elapsed().as_millis(),
            if out.already_written.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} written by an earlier run were not repeated",
                    out.already_written.len()
                )
            }
        )?;
    }
    w.flush()?;
    Ok(())
}

/// The report: per account, then per account and asset, then what was left out.
fn report(w: &mut impl Write, out: &Outcome) -> std::io::Result<()> {
    let s = &out.stats;
    writeln!(
        w,
        "{} lines in the windows, {} scopes (executions, direct calls); {} lines priced again; {} unchanged; {} already corrected by this correction",
        s.lines_in_window,
        s.scopes_in_window,
        s.lines_repriced,
        s.scopes_unchanged,
        out.already_written.len()
    )?;
    if !out.accounts.is_empty() {
        writeln!(
            w,
            "{:<24} {:>7} {:>24} {:>24} {:>24}",
            "account", "debits", "billed", "corrected", "difference"
        )?;
        for (account, r) in &out.accounts {
            writeln!(
                w,
                "{:<24} {:>7} {:>24} {:>24} {:>24}",
                account, r.debits, r.billed, r.corrected, r.difference
            )?;
        }
        writeln!(
            w,
            "{:<24} {:<32} {:>7} {:>20} {:>20} {:>20}",
            "account", "asset (line costs, before markup)", "lines", "old", "new", "difference"
        )?;
        for ((account, asset), r) in &out.assets {
            writeln!(
                w,
                "{:<24} {:<32} {:>7} {:>20} {:>20} {:>20}",
                account, asset, r.lines, r.old, r.new, r.difference
            )?;
        }
    }
    for (code, n) in &s.scopes_skipped {
        writeln!(
            w,
            "left out: {n} scopes {code} (run rerate again later to pick them up)"
        )?;
    }
    if let Some(first) = &s.first_skip {
        writeln!(w, "  first: {first}")?;
    }
    Ok(())
}
