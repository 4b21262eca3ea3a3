//! The draw-down order written out again, independently of the ledger: what each entry
//! of the storm must be funded by.

use rust_decimal::Decimal;
use usage_aggregator::ledger::core::GrantTerms;
use usage_aggregator::ledger::funding::{Category, FundingCategory};

/// One funding line: grant (none: the overdraft), category, amount.
pub(crate) type Line = (Option<String>, FundingCategory, Decimal);

pub(crate) struct Open {
    pub(crate) id: String,
    pub(crate) terms: GrantTerms,
    pub(crate) seq: u64,
    pub(crate) left: Decimal,
}

/// The draw-down order written out again: lower priority number, soonest expiry (none
/// last), promotional before paid, oldest. Picks the next grant by a minimum each time
/// (the ledger keeps a sorted list).
#[derive(Default)]
pub(crate) struct Model {
    pub(crate) open: Vec<Open>,
    pub(crate) overdraft: Decimal,
}

pub(crate) fn category(c: Category) -> FundingCategory {
    match c {
        Category::Paid => FundingCategory::Paid,
        Category::Promotional => FundingCategory::Promotional,
    }
}

impl Model {
    pub(crate) fn first(&self) -> Option<usize> {
        (0..self.open.len()).min_by_key(|&i| {
            let g = &self.open[i];
            let promo_first = u8::from(g.terms.category == Category::Paid);
            (
                g.terms.priority,
                g.terms.expires_at.is_none(),
                g.terms.expires_at,
                promo_first,
                g.seq,
            )
        })
    }

    pub(crate) fn draw(&mut self, mut x: Decimal) -> Vec<Line> {
        let mut lines = Vec::new();
        while x > Decimal::ZERO {
            let Some(i) = self.first() else {
                self.overdraft += x;
                lines.push((None, FundingCategory::Overdraft, -x));
                break;
            };
            let g = &mut self.open[i];
            let take = x.min(g.left);
            g.left -= take;
            x -= take;
            lines.push((Some(g.id.clone()), category(g.terms.category), -take));
            if g.left.is_zero() {
                self.open.remove(i);
            }
        }
        lines
    }

    pub(crate) fn credit(
        &mut self,
        id: &str,
        terms: &GrantTerms,
        x: Decimal,
        seq: u64,
    ) -> Vec<Line> {
        let mut lines = Vec::new();
        let repaid = self.overdraft.min(x);
        if repaid > Decimal::ZERO {
            self.overdraft -= repaid;
            lines.push((None, FundingCategory::Overdraft, repaid));
        }
        if x > repaid {
            lines.push((Some(id.into()), category(terms.category), x - repaid));
            self.open.push(Open {
                id: id.into(),
                terms: terms.clone(),
                seq,
                left: x - repaid,
            });
        }
        lines
    }

    pub(crate) fn expire(&mut self, id: &str) -> Option<Vec<Line>> {
        let i = self.open.iter().position(|g| g.id == id)?;
        let g = self.open.remove(i);
        Some(vec![(Some(g.id), category(g.terms.category), -g.left)])
    }

    pub(crate) fn balance(&self) -> Decimal {
        self.open.iter().map(|g| g.left).sum::<Decimal>() - self.overdraft
    }
}

pub(crate) fn norm(lines: Vec<Line>) -> Vec<Line> {
    lines
        .into_iter()
        .map(|(g, c, a)| (g, c, a.normalize()))
        .collect()
}
