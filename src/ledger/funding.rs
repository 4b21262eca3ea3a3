//! Grant funding, pure: an account's open grants (category, priority, expiry, remaining) and
//! its overdraft in; for each change of the balance, the [`FundingLine`]s that say which
//! grants paid for it (or which the credits went to) out. No I/O, no clock: time arrives as
//! values (a grant's `expires_at`, the partition clock of [`super::core`]).
//!
//! **The draw-down order** (what billing platforms converge on: OpenMeter, Stripe, Lago, Orb,
//! Metronome): lower `priority` number first; then the soonest `expires_at` (a grant that
//! never expires last); then `promotional` before `paid`; then the oldest (the grant applied
//! first, by the account's entry `seq`). Usage past the last open grant is an **overdraft**;
//! the next grant pays the overdraft first and only its rest opens the grant.
//!
//! Invariants (checked by the property tests against an independent model,
//! `funding_tests.rs`): the lines of a change sum to its amount exactly; the balance is
//! Σ remaining − overdraft; the overdraft is positive only when no grant is open; every open
//! grant has `remaining > 0`; the grants are kept in draw-down order.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Largest balance magnitude a grant may bring an account to (away from zero): 1e10 credits.
pub const MAX_BALANCE: Decimal = Decimal::from_parts(1_410_065_408, 2, 0, false, 0); // 1e10

/// Largest exact balance magnitude of any entry. 28 significant digits with 18 decimals hold
/// +-7.9e10; 5e10 leaves what the ledger must record whatever the balance (usage, and the
/// credit-back of a negative correction) 4e10 credits of room beyond where grants stop, so a
/// credit-back to an account that grants filled to [`MAX_BALANCE`] is still paid.
pub const MAX_LEDGER_BALANCE: Decimal = Decimal::from_parts(2_755_359_744, 11, 0, false, 0); // 5e10

/// Priority of a grant when none is given: the middle of 0..=100.
pub const DEFAULT_PRIORITY: u8 = 50;
/// Highest (last drawn) priority number.
pub const MAX_PRIORITY: u8 = 100;

/// What kind of credit a grant is. Top-ups are `paid`, voucher grants `promotional`,
/// adjustments say which (default `paid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Bought credit: a liability until used, refundable by policy.
    Paid,
    /// Given credit (vouchers, goodwill): drawn before paid credit of the same priority
    /// and expiry.
    Promotional,
}

impl Category {
    pub const ALL: [Category; 2] = [Category::Paid, Category::Promotional];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Paid => "paid",
            Category::Promotional => "promotional",
        }
    }

    /// Rank in the draw-down order: promotional before paid.
    fn rank(self) -> u8 {
        match self {
            Category::Promotional => 0,
            Category::Paid => 1,
        }
    }
}

/// Where one part of an entry's amount came from or went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FundingCategory {
    Paid,
    Promotional,
    /// Usage past the last open grant (negative), or the part of a grant that repaid it
    /// (positive).
    Overdraft,
}

impl FundingCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            FundingCategory::Paid => "paid",
            FundingCategory::Promotional => "promotional",
            FundingCategory::Overdraft => "overdraft",
        }
    }
}

impl From<Category> for FundingCategory {
    fn from(c: Category) -> Self {
        match c {
            Category::Paid => FundingCategory::Paid,
            Category::Promotional => FundingCategory::Promotional,
        }
    }
}

/// One part of an entry: `amount` (signed like the entry) drawn from, or credited to, one
/// grant, or the overdraft (no `grant_id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FundingLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    pub category: FundingCategory,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

impl FundingLine {
    fn grant(g: &OpenGrant, amount: Decimal) -> Self {
        FundingLine {
            grant_id: Some(g.grant_id.clone()),
            category: g.category.into(),
            amount: amount.normalize(),
        }
    }

    fn overdraft(amount: Decimal) -> Self {
        FundingLine {
            grant_id: None,
            category: FundingCategory::Overdraft,
            amount: amount.normalize(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A grant with credits left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenGrant {
    pub grant_id: String,
    pub category: Category,
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The account's entry `seq` that applied it: "oldest" in the draw-down order.
    pub seq: u64,
    /// Credits it was granted (before any overdraft it repaid).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Credits left, > 0.
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
    /// A `grant_expiring` alert was raised for it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub warned: bool,
}

/// The sort key of the draw-down order; smaller draws first.
pub type OrderKey = (u8, bool, Option<DateTime<Utc>>, u8, u64);

impl OpenGrant {
    /// Its place in the draw-down order: priority, soonest expiry (none last), promotional
    /// before paid, oldest.
    pub fn order_key(&self) -> OrderKey {
        (
            self.priority,
            self.expires_at.is_none(),
            self.expires_at,
            self.category.rank(),
            self.seq,
        )
    }
}

/// An account's credits: open grants in draw-down order and the overdraft.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Funds {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<OpenGrant>,
    /// Credits used past the last open grant, >= 0.
    #[serde(
        default,
        with = "rust_decimal::serde::str",
        skip_serializing_if = "Decimal::is_zero"
    )]
    pub overdraft: Decimal,
}

impl Funds {
    /// Σ remaining − overdraft.
    pub fn balance(&self) -> Decimal {
        let open: Decimal = self.grants.iter().map(|g| g.remaining).sum();
        (open - self.overdraft).normalize()
    }

    /// Takes `amount` (>= 0) away in draw-down order. Returns the lines (negative amounts,
    /// in the order drawn; the overdraft last). Emptied grants close (are removed); they
    /// are returned second, for the caller's records.
    pub fn draw(&mut self, amount: Decimal) -> (Vec<FundingLine>, Vec<OpenGrant>) {
        let mut left = amount;
        let mut lines = Vec::new();
        let mut emptied = 0;
        for g in self.grants.iter_mut() {
            if left <= Decimal::ZERO {
                break;
            }
            let take = left.min(g.remaining);
            g.remaining = (g.remaining - take).normalize();
            left -= take;
            lines.push(FundingLine::grant(g, -take));
            if g.remaining.is_zero() {
                emptied += 1;
            }
        }
        // Draws take a prefix: only the grants at the front can be emptied.
        let closed: Vec<OpenGrant> = self.grants.drain(..emptied).collect();
        if left > Decimal::ZERO {
            self.overdraft = (self.overdraft + left).normalize();
            lines.push(FundingLine::overdraft(-left));
        }
        (lines, closed)
    }

    /// Adds a grant of `grant.amount` (> 0): the overdraft is repaid first, the rest opens
    /// the grant (none left: it never opens). Returns the lines (positive amounts: the
    /// overdraft repaid, then the grant) and whether the grant opened.
    pub fn credit(&mut self, mut grant: OpenGrant) -> (Vec<FundingLine>, bool) {
        let mut lines = Vec::new();
        let repaid = self.overdraft.min(grant.amount);
        if repaid > Decimal::ZERO {
            self.overdraft = (self.overdraft - repaid).normalize();
            lines.push(FundingLine::overdraft(repaid));
        }
        let rest = (grant.amount - repaid).normalize();
        if rest <= Decimal::ZERO {
            return (lines, false);
        }
        grant.remaining = rest;
        lines.push(FundingLine::grant(&grant, rest));
        let key = grant.order_key();
        let at = self.grants.partition_point(|g| g.order_key() <= key);
        self.grants.insert(at, grant);
        (lines, true)
    }

    /// Closes grant `grant_id` at its expiry: its remainder is forfeited. Returns the grant
    /// and the line (negative), or `None` when it is not open (used up, or expired before).
    pub fn expire(&mut self, grant_id: &str) -> Option<(OpenGrant, FundingLine)> {
        let i = self.grants.iter().position(|g| g.grant_id == grant_id)?;
        let g = self.grants.remove(i);
        let line = FundingLine::grant(&g, -g.remaining);
        Some((g, line))
    }

    /// The open grant that expires first (the soonest `expires_at`; ties in draw-down order).
    pub fn next_expiry(&self) -> Option<&OpenGrant> {
        self.grants
            .iter()
            .filter(|g| g.expires_at.is_some())
            .min_by_key(|g| (g.expires_at, g.order_key()))
    }

    /// Open grant by id.
    pub fn get(&self, grant_id: &str) -> Option<&OpenGrant> {
        self.grants.iter().find(|g| g.grant_id == grant_id)
    }

    /// Open grant by id, mutable (the caller must not change its order key).
    pub fn get_mut(&mut self, grant_id: &str) -> Option<&mut OpenGrant> {
        self.grants.iter_mut().find(|g| g.grant_id == grant_id)
    }

    /// Σ remaining per category.
    pub fn by_category(&self, c: Category) -> Decimal {
        self.grants
            .iter()
            .filter(|g| g.category == c)
            .map(|g| g.remaining)
            .sum::<Decimal>()
            .normalize()
    }
}

/// Σ of the lines' amounts.
pub fn sum(lines: &[FundingLine]) -> Decimal {
    lines.iter().map(|l| l.amount).sum::<Decimal>().normalize()
}

#[cfg(test)]
#[path = "funding_tests.rs"]
mod tests;
