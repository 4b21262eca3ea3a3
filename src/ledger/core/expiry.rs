//! Time in the partition: a clock marker moves the partition's clock (never back); what is
//! due by then happens in the same input: each reached expiry forfeits its grant's
//! remainder in one `expiry` entry, each reached warning raises one `grant_expiring` alert.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{
    AlertKind, CreditAlert, Effects, EntryIn, EntryKind, EntrySource, FundsChange, GrantTerms,
    GrantView, LedgerPartition, changelog, hashed_id,
};
use crate::ledger::funding::OpenGrant;
use crate::ledger::state::ClosedBy;
use crate::rejection::excerpt;

impl LedgerPartition {
    /// A clock marker at `at`: the partition's clock moves forward (never back), and every
    /// grant whose `expires_at` is now reached forfeits its remainder in one `expiry` entry
    /// (soonest first, ties in draw-down order); every grant whose warning window is
    /// reached raises one `grant_expiring` alert.
    pub fn tick(&mut self, at: DateTime<Utc>, source: EntrySource) -> Effects {
        let mut fx = Effects::default();
        if self.clock.is_some_and(|c| at <= c) {
            return fx;
        }
        self.clock = Some(at);
        self.changes.insert(
            changelog::CLOCK_KEY.to_vec(),
            Some(crate::ledger::command::clock_text(at).into_bytes()),
        );
        let due: Vec<String> = self
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= at)
            .map(|(_, a)| a.clone())
            .collect();
        for account in due {
            self.due(&account, at, &source, &mut fx);
        }
        fx
    }

    /// Expiries, then warnings, of one account at clock `now`.
    pub(super) fn due(
        &mut self,
        account: &str,
        now: DateTime<Utc>,
        source: &EntrySource,
        fx: &mut Effects,
    ) {
        let Some(state) = self.accounts.get(account) else {
            return;
        };
        let mut expiring: Vec<&OpenGrant> = state
            .funds
            .grants
            .iter()
            .filter(|g| g.expires_at.is_some_and(|e| e <= now))
            .collect();
        expiring.sort_by_key(|g| (g.expires_at, g.order_key()));
        let expiring: Vec<(String, GrantTerms, Decimal, DateTime<Utc>)> = expiring
            .into_iter()
            .map(|g| {
                let terms = GrantTerms {
                    category: g.category,
                    priority: g.priority,
                    expires_at: g.expires_at,
                };
                (
                    g.grant_id.clone(),
                    terms,
                    g.remaining,
                    g.expires_at.unwrap_or(now),
                )
            })
            .collect();
        for (grant_id, terms, remaining, at) in expiring {
            let description = format!(
                "expiry of {} grant {}",
                terms.category.as_str(),
                excerpt(&grant_id)
            );
            // A remainder is at most the balance's open part: the balance stays within
            // [0, before], so the entry cannot leave the exact range.
            let e = self
                .entry(EntryIn {
                    account,
                    kind: EntryKind::Expiry,
                    reference: &grant_id,
                    description,
                    amount: -remaining,
                    occurred_at: at,
                    lines: Vec::new(),
                    source: source.clone(),
                    change: FundsChange::Expire,
                })
                .expect("forfeiting an open grant's remainder stays in range");
            let seq = e.entries[0].seq;
            fx.extend(e);
            self.close_grant_mark(account, &grant_id, ClosedBy::Expired, seq, remaining);
        }
        let Some(mut state) = self.accounts.get(account).cloned() else {
            return;
        };
        let window = state.warning_secs(self.rules.expiry_warning_secs);
        let (balance, seq) = (state.balance, state.seq);
        for g in state.funds.grants.iter_mut() {
            let Some(warn) = crate::ledger::state::warn_at(g.expires_at, window) else {
                continue;
            };
            if g.warned || warn > now {
                continue;
            }
            g.warned = true;
            fx.alerts.push(CreditAlert {
                alert_id: hashed_id("ce", &[account, &g.grant_id]),
                account_id: account.to_string(),
                alert: AlertKind::GrantExpiring,
                crossing: None,
                threshold: None,
                rule: None,
                balance,
                seq,
                entry_id: None,
                occurred_at: now,
                grant: Some(GrantView::from(&*g)),
            });
        }
        self.put_account(account, state);
    }
}
