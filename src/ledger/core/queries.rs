//! Answers and settings of the partition: a grant's status, an account's view, the answer to
//! a grant (applied, already applied, refused), threshold and automatic top-up settings, and
//! refusals of messages that could not be read as a command.

use rust_decimal::Decimal;

use super::{Effects, LedgerPartition, grant_key};
use crate::ledger::answer::{
    AccountView, CommandKind, GrantState, GrantStatus, LedgerAnswer, RefusalView, ThresholdView,
    Verdict,
};
use crate::ledger::command::Ids;
use crate::ledger::entry::{GrantView, TopupRequest};
use crate::ledger::grant::Grant;
use crate::ledger::state::{AccountState, ClosedBy};
use crate::ledger::thresholds::{AutoTopup, Threshold, derive_below};
use crate::rejection::{Rejection, excerpt};

impl LedgerPartition {
    /// The status of grant `grant_id` of `account`.
    pub fn grant_status(&self, account: &str, grant_id: &str) -> GrantStatus {
        let key = grant_key(account, grant_id);
        let refusal = self.refusals.get(&key).map(|m| RefusalView {
            reason: m.reason,
            message: m.message.clone(),
        });
        let Some(m) = self.grants.get(&key) else {
            let mut s = GrantStatus::unknown(grant_id);
            if refusal.is_some() {
                s.state = GrantState::Refused;
            }
            s.refusal = refusal;
            return s;
        };
        let open = self
            .accounts
            .get(account)
            .and_then(|a| a.funds.get(grant_id));
        let state = match (&m.facts.amount, &m.closed, open) {
            (None, _, _) => GrantState::Applied,
            (Some(a), _, _) if *a < Decimal::ZERO => GrantState::Applied,
            (_, Some(c), _) if c.by == ClosedBy::Expired => GrantState::Expired,
            (_, Some(_), _) => GrantState::UsedUp,
            (_, None, Some(_)) => GrantState::Open,
            (_, None, None) => GrantState::Applied,
        };
        let remaining = match state {
            GrantState::Open => open.map(|g| g.remaining),
            GrantState::UsedUp | GrantState::Expired => Some(Decimal::ZERO),
            _ => None,
        };
        GrantStatus {
            grant_id: grant_id.to_string(),
            state,
            facts: m.facts.clone(),
            remaining,
            forfeited: m
                .closed
                .as_ref()
                .filter(|c| c.by == ClosedBy::Expired)
                .map(|c| c.forfeited),
            applied: m.seq.map(|seq| crate::ledger::answer::EntryRef {
                entry_id: m.entry_id.clone().unwrap_or_default(),
                seq,
                amount: m.facts.amount,
                balance_after: None,
                occurred_at: m.occurred_at,
            }),
            closed_seq: m.closed.as_ref().map(|c| c.seq),
            refusal,
        }
    }

    /// The account as the ledger holds it (an account without entries: balance 0).
    pub fn account_view(&self, account: &str) -> AccountView {
        let fresh;
        let a = match self.accounts.get(account) {
            Some(a) => a,
            None => {
                fresh = AccountState::new(&self.rules.thresholds);
                &fresh
            }
        };
        let thresholds = a
            .effective(&self.rules.thresholds)
            .into_iter()
            .map(|(t, value)| ThresholdView {
                rule: t.to_string(),
                value,
                below: a.below.contains(&t.to_string()),
            })
            .collect();
        AccountView {
            account_id: account.to_string(),
            balance: a.balance,
            paid: a.funds.by_category(crate::ledger::funding::Category::Paid),
            promotional: a
                .funds
                .by_category(crate::ledger::funding::Category::Promotional),
            overdraft: a.funds.overdraft,
            grants: a.funds.grants.iter().map(GrantView::from).collect(),
            next_expiry: a.funds.next_expiry().map(GrantView::from),
            thresholds,
            custom_thresholds: a.settings.thresholds.is_some(),
            expiry_warning_secs: a.warning_secs(self.rules.expiry_warning_secs),
            auto_topup: a.settings.auto_topup.clone(),
            last_topup: a.last_topup,
            entries: a.seq,
            updated_at: a.updated_at,
            clock: self.clock,
        }
    }

    /// An `answered` verdict with the account's view.
    pub(super) fn answered(
        &self,
        command: CommandKind,
        request_id: String,
        account_id: String,
        topups: Vec<TopupRequest>,
    ) -> Effects {
        let view = self.account_view(&account_id);
        let message = format!(
            "account {} has {} credits in {} open grants",
            excerpt(&account_id),
            view.balance,
            view.grants.len()
        );
        Effects {
            topups,
            answer: Some(LedgerAnswer {
                request_id: Some(request_id),
                account_id,
                command,
                verdict: Verdict::Answered,
                reason: None,
                message,
                grant: None,
                entry: None,
                account: Some(view),
            }),
            ..Default::default()
        }
    }

    /// The answer to grant `g` (its status included).
    pub(super) fn grant_answer(
        &self,
        g: &Grant,
        verdict: Verdict,
        reason: Option<crate::rejection::RejectReason>,
        message: String,
    ) -> Effects {
        Effects {
            answer: Some(LedgerAnswer {
                request_id: g.request_id.clone(),
                account_id: g.account_id.clone(),
                command: CommandKind::Grant,
                verdict,
                reason,
                message,
                grant: Some(self.grant_status(&g.account_id, &g.grant_id)),
                entry: None,
                account: None,
            }),
            ..Default::default()
        }
    }

    /// Refuses a valid grant: remembered for its status, answered, dead-lettered.
    pub(super) fn refuse_grant(&mut self, g: &Grant, r: Rejection) -> Effects {
        self.remember_refusal(&grant_key(&g.account_id, &g.grant_id), &r);
        let mut fx = self.grant_answer(g, Verdict::Refused, Some(r.reason), r.message.clone());
        fx.refused = Some(r);
        fx
    }

    /// Refuses a message that is not a valid command: answered when it names a valid
    /// account, and (a grant with a valid id) remembered for its status. Dead-lettered.
    pub fn refuse_message(&mut self, ids: &Ids, r: Rejection) -> Effects {
        let Some(account) = ids.account().map(str::to_string) else {
            return Effects::refused(r);
        };
        let is_grant = ids.command.is_none();
        let grant_id = ids
            .grant_id
            .as_deref()
            .filter(|g| crate::ledger::grant::id_problem(g).is_none());
        if is_grant && let Some(gid) = grant_id {
            self.remember_refusal(&grant_key(&account, gid), &r);
        }
        let command = match ids.command.as_deref() {
            None => CommandKind::Grant,
            Some("grant_status") => CommandKind::GrantStatus,
            Some("set_thresholds") => CommandKind::SetThresholds,
            Some("set_auto_topup") => CommandKind::SetAutoTopup,
            Some(_) => CommandKind::AccountStatus,
        };
        let grant = grant_id.map(|gid| self.grant_status(&account, gid));
        Effects {
            answer: Some(LedgerAnswer {
                request_id: ids.request_id.clone(),
                account_id: account,
                command,
                verdict: Verdict::Refused,
                reason: Some(r.reason),
                message: r.message.clone(),
                grant,
                entry: None,
                account: None,
            }),
            refused: Some(r),
            ..Default::default()
        }
    }

    /// Sets an account's thresholds and warning window (`None`: unchanged, `Some(None)`:
    /// the default); the announced-below set is re-derived from the balance, without alerts.
    pub(super) fn set_thresholds(
        &mut self,
        account: &str,
        thresholds: Option<Option<Vec<Threshold>>>,
        warning: Option<Option<u64>>,
    ) {
        let mut a = self
            .accounts
            .get(account)
            .cloned()
            .unwrap_or_else(|| AccountState::new(&self.rules.thresholds));
        if let Some(t) = thresholds {
            a.settings.thresholds = t;
            a.below = derive_below(&a.effective(&self.rules.thresholds), a.balance);
        }
        if let Some(w) = warning {
            a.settings.expiry_warning_secs = w;
        }
        self.put_account(account, a);
    }

    /// Sets (or, `None`, removes) an account's automatic top-up rule. A rule set while the
    /// balance is below its `below` raises its request at once.
    pub(super) fn set_auto_topup(
        &mut self,
        account: &str,
        rule: Option<AutoTopup>,
    ) -> Vec<TopupRequest> {
        let mut a = self
            .accounts
            .get(account)
            .cloned()
            .unwrap_or_else(|| AccountState::new(&self.rules.thresholds));
        a.settings.auto_topup = rule;
        a.topup_pending = false;
        let at = self
            .clock
            .max(a.updated_at)
            .unwrap_or(chrono::DateTime::UNIX_EPOCH);
        let topups = self.auto_topup(account, &mut a, at).into_iter().collect();
        self.put_account(account, a);
        topups
    }
}
