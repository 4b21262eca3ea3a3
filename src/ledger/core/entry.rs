//! One entry applied to an account: the funds change (draw, credit or expire), the exact
//! balance, the sequence number, the alerts it crosses and the top-up request it raises;
//! the balance event out.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{
    AlertKind, BalanceEvent, CreditAlert, ENTRY_FORMAT, Effects, EntryKind, EntryLine, EntrySource,
    GrantTerms, GrantView, LedgerPartition, TopupRequest, entry_id, exact_balance, hashed_id,
};
use crate::ledger::funding::{self, FundingLine, OpenGrant};
use crate::ledger::state::{AccountState, ClosedBy};
use crate::ledger::thresholds::crossings;
use crate::rejection::Rejection;

/// How an entry changes the account's funds.
pub(super) enum FundsChange {
    /// Take credits away in draw-down order (debits, negative adjustments).
    Draw,
    /// A grant with these terms: repay the overdraft, open the rest.
    Credit(GrantTerms),
    /// Forfeit the named open grant's remainder.
    Expire,
}

/// One entry to apply.
pub(super) struct EntryIn<'a> {
    pub(super) account: &'a str,
    pub(super) kind: EntryKind,
    pub(super) reference: &'a str,
    pub(super) description: String,
    pub(super) amount: Decimal,
    pub(super) occurred_at: DateTime<Utc>,
    pub(super) lines: Vec<EntryLine>,
    pub(super) source: EntrySource,
    pub(super) change: FundsChange,
}

impl LedgerPartition {
    /// Applies one entry to its account: the funds change, the balance, the alerts and the
    /// top-up request it causes. Refused (nothing changes) when the balance would leave its
    /// exact range.
    pub(super) fn entry(&mut self, e: EntryIn<'_>) -> Result<Effects, Rejection> {
        let mut state = self
            .accounts
            .get(e.account)
            .cloned()
            .unwrap_or_else(|| AccountState::new(&self.rules.thresholds));
        let before = state.balance;
        let after = exact_balance(before, e.amount)?;
        let seq = state.seq + 1;
        let (funded_by, closed, grant): (Vec<FundingLine>, Vec<OpenGrant>, Option<GrantTerms>) =
            match e.change {
                FundsChange::Draw => {
                    let (lines, closed) = state.funds.draw(-e.amount);
                    (lines, closed, None)
                }
                FundsChange::Credit(terms) => {
                    let g = OpenGrant {
                        grant_id: e.reference.to_string(),
                        category: terms.category,
                        priority: terms.priority,
                        expires_at: terms.expires_at,
                        seq,
                        amount: e.amount.normalize(),
                        remaining: e.amount.normalize(),
                        warned: false,
                    };
                    let (lines, _) = state.funds.credit(g);
                    (lines, Vec::new(), Some(terms))
                }
                FundsChange::Expire => {
                    let (g, line) = state
                        .funds
                        .expire(e.reference)
                        .expect("an expiry names an open grant");
                    let terms = GrantTerms {
                        category: g.category,
                        priority: g.priority,
                        expires_at: g.expires_at,
                    };
                    (vec![line], Vec::new(), Some(terms))
                }
            };
        debug_assert_eq!(funding::sum(&funded_by), e.amount.normalize());
        debug_assert_eq!(state.funds.balance(), after);
        state.balance = after;
        state.seq = seq;
        state.updated_at = Some(e.occurred_at);
        if e.kind == EntryKind::Topup {
            state.last_topup = Some(e.amount.normalize());
        }
        let entry_id = entry_id(e.account, e.kind, e.reference);
        let effective = state.effective(&self.rules.thresholds);
        let alerts = crossings(&mut state.below, &effective, after)
            .into_iter()
            .map(|(t, value, c)| CreditAlert {
                alert_id: hashed_id(
                    "ca",
                    &[e.account, &seq.to_string(), &t.to_string(), c.as_str()],
                ),
                account_id: e.account.to_string(),
                alert: AlertKind::LowBalance,
                crossing: Some(c),
                threshold: Some(value),
                rule: t.is_share().then(|| t.to_string()),
                balance: after,
                seq,
                entry_id: Some(entry_id.clone()),
                occurred_at: e.occurred_at,
                grant: None,
            })
            .collect();
        let topups = self
            .auto_topup(e.account, &mut state, e.occurred_at)
            .into_iter()
            .collect();
        for g in &closed {
            self.close_grant_mark(e.account, &g.grant_id, ClosedBy::UsedUp, seq, Decimal::ZERO);
        }
        let event = BalanceEvent {
            v: ENTRY_FORMAT,
            entry_id,
            account_id: e.account.to_string(),
            seq,
            kind: e.kind,
            reference: e.reference.to_string(),
            description: e.description,
            amount: e.amount.normalize(),
            balance_before: before,
            balance_after: after,
            occurred_at: e.occurred_at,
            lines: e.lines,
            source: e.source,
            funded_by,
            grant,
            grants: state.funds.grants.iter().map(GrantView::from).collect(),
            overdraft: state.funds.overdraft,
            next_expiry: state.funds.next_expiry().map(GrantView::from),
        };
        self.put_account(e.account, state);
        Ok(Effects {
            entries: vec![event],
            alerts,
            topups,
            ..Default::default()
        })
    }

    /// The top-up request the account's rule raises now, once per crossing of `below`.
    pub(super) fn auto_topup(
        &self,
        account: &str,
        state: &mut AccountState,
        at: DateTime<Utc>,
    ) -> Option<TopupRequest> {
        let rule = state.settings.auto_topup.clone()?;
        if state.balance >= rule.below {
            state.topup_pending = false;
            return None;
        }
        if state.topup_pending {
            return None;
        }
        state.topup_pending = true;
        state.topup_requests += 1;
        Some(TopupRequest {
            request_id: hashed_id("tr", &[account, &state.topup_requests.to_string()]),
            account_id: account.to_string(),
            amount: rule.amount(state.balance, self.rules.min_topup),
            rule,
            balance: state.balance,
            seq: state.seq,
            occurred_at: at,
        })
    }
}
