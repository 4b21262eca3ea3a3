//! Re-rating, the decision (I/O-free): the priced lines and debits already written (read
//! `read_committed` from `priced_usage` and `debits`), the catalog holding correction `ID`
//! ([`crate::catalog::correction`]) and the plans in; one correction debit per affected
//! (account, execution or direct call) and the dry-run report out. The Kafka part (reading,
//! the transactions) is `rerate` in the binary (`src/commands/rerate.rs`).
//!
//! The rule, per scope (an account's execution, or one direct call) with a line in one of
//! the correction's windows ([`scope`]):
//! - every line of the scope is priced again ([`crate::rating::price_call`]) with today's
//!   catalog and the plan in force at the line's own time, as the pipeline would now price it;
//! - each original debit `D` of the scope (its execution debit, its late adjustments, or the
//!   direct call's debit) gets `new_subtotal(D) = D.subtotal + sum(new cost - old cost)` over
//!   its lines and `new_total(D) = new_subtotal(D) + debit_markup(new_subtotal(D),
//!   D.markup_rate)`: the markup at the debit's own rate, the rule of every debit;
//! - the correction is `sum(new_total(D)) - sum(D.total) - sum(earlier corrections of the
//!   scope)` (subtotal and markup likewise); nothing is emitted when all three are zero.
//!
//! Money: no rounding is added. Line costs are rounded once when a line is priced
//! ([`crate::money::round_line_cost`], 12 decimals, half away from zero), old and new alike;
//! differences and sums of them are exact; the markup is exact below 1e10 credits
//! ([`crate::money::debit_markup`]). So originals plus corrections equal, to the last digit,
//! what `rate` gives over the same events with today's catalog, whatever corrections ran
//! before (a later correction includes what an earlier one would have found if that one has
//! not run yet; it then finds nothing).
//!
//! The id is [`crate::debit::correction_debit_id`]`(ID, account, scope)`: the same on every
//! run, so a run repeated or resumed finds what it already wrote and emits the rest. A scope
//! is only corrected when its lines add up exactly to its debits (count and subtotal);
//! otherwise it is left out and counted: an execution still open (its debit not written yet),
//! lines or debits missing from what was read.

mod scope;

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::catalog::CorrectionWindow;
use crate::debit::{Debit, PricedLine};
use crate::rating::Pricing;
pub use scope::{ScopeKey, Skip};

/// The correction being applied: its id and reason, and its windows in today's catalog
/// ([`crate::catalog::Catalog::correction_windows`]).
#[derive(Debug, Clone, Copy)]
pub struct Correction<'a> {
    pub id: &'a str,
    pub reason: &'a str,
    pub windows: &'a [CorrectionWindow],
}

/// What a re-rating run decided.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The correction debits still to write, sorted by id.
    pub to_emit: Vec<Debit>,
    /// Ids of this correction's debits already on the debits topic (an earlier run).
    pub already_written: Vec<String>,
    /// Per account, over the debits of `to_emit`.
    pub accounts: BTreeMap<String, AccountRow>,
    /// Per (account, asset): the lines of `to_emit`'s scopes whose cost changed.
    pub assets: BTreeMap<(String, String), AssetRow>,
    pub stats: Stats,
}

/// One account's line of the report: what its affected scopes were billed so far
/// (originals and earlier corrections), what they cost now, and the difference emitted.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct AccountRow {
    /// Correction debits.
    pub debits: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub billed: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub corrected: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub difference: Decimal,
}

/// One (account, asset) line of the report: line costs at vendor price, before markup.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct AssetRow {
    /// Lines whose cost changed.
    pub lines: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub old: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub new: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub difference: Decimal,
}

/// Counts of a run, for the operator and the report.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub lines_read: u64,
    /// Distinct debits read (originals and corrections).
    pub debits_read: u64,
    /// Lines in one of the correction's windows.
    pub lines_in_window: u64,
    /// Scopes with a line in a window.
    pub scopes_in_window: u64,
    /// Lines priced again (every line of a scope with a line in a window).
    pub lines_repriced: u64,
    /// Scopes whose correction would be zero.
    pub scopes_unchanged: u64,
    /// Scopes left out, by reason ([`Skip::code`]); a later run picks them up.
    pub scopes_skipped: BTreeMap<&'static str, u64>,
    /// The first skipped scope's reason, in words.
    pub first_skip: Option<String>,
}

/// Decides the corrections of `correction` over every priced line and debit read, pricing
/// with `pricing` (today's catalog and plans). Lines and debits may repeat (a topic read
/// with duplicates): each counts once, by its id.
pub fn decide(
    correction: Correction<'_>,
    pricing: Pricing<'_>,
    lines: impl IntoIterator<Item = PricedLine>,
    debits: impl IntoIterator<Item = Debit>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut book = scope::DebitBook::default();
    for d in debits {
        book.add(d);
    }
    out.stats.debits_read = book.len() as u64;
    let mut scopes: BTreeMap<ScopeKey, BTreeMap<String, PricedLine>> = BTreeMap::new();
    let mut touched: BTreeSet<ScopeKey> = BTreeSet::new();
    for l in lines {
        out.stats.lines_read += 1;
        let key = ScopeKey::of(&l);
        if correction
            .windows
            .iter()
            .any(|w| w.covers(&l.asset_id, l.occurred_at))
        {
            out.stats.lines_in_window += 1;
            touched.insert(key.clone());
        }
        scopes.entry(key).or_default().insert(l.line_id(), l);
    }
    out.stats.scopes_in_window = touched.len() as u64;
    for key in touched {
        let lines = &scopes[&key];
        match scope::rerate(&key, lines, &book, pricing, correction) {
            scope::Verdict::Correction(c) => {
                let c = *c;
                out.stats.lines_repriced += lines.len() as u64;
                let row = out.accounts.entry(key.account().to_string()).or_default();
                row.debits += 1;
                row.billed += c.billed_total;
                row.corrected += c.corrected_total;
                row.difference += c.debit.total;
                for (asset, old, new) in c.changed {
                    let r = out
                        .assets
                        .entry((key.account().to_string(), asset))
                        .or_default();
                    r.lines += 1;
                    r.old += old;
                    r.new += new;
                    r.difference += new - old;
                }
                out.to_emit.push(c.debit);
            }
            scope::Verdict::Unchanged(n) => {
                out.stats.lines_repriced += n;
                out.stats.scopes_unchanged += 1;
            }
            scope::Verdict::AlreadyWritten(id) => out.already_written.push(id),
            scope::Verdict::Skipped(why) => {
                *out.stats.scopes_skipped.entry(why.code()).or_default() += 1;
                out.stats.first_skip.get_or_insert_with(|| why.to_string());
            }
        }
    }
    out.to_emit.sort_by(|a, b| a.debit_id.cmp(&b.debit_id));
    out.already_written.sort();
    for r in out.accounts.values_mut() {
        r.billed = r.billed.normalize();
        r.corrected = r.corrected.normalize();
        r.difference = r.difference.normalize();
    }
    for r in out.assets.values_mut() {
        r.old = r.old.normalize();
        r.new = r.new.normalize();
        r.difference = r.difference.normalize();
    }
    out
}

#[cfg(test)]
mod tests;
