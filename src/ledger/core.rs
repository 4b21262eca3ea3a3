//! The ledger core, pure and I/O-free: the commands of one ledger partition (grants, debits,
//! status queries, settings, clock markers; in log order) in; balance entries with their
//! funding, alerts, top-up requests, answers and changelog records out.
//!
//! State per partition: each account (balance, sequence number, open grants in draw-down
//! order, overdraft, thresholds announced, settings; [`AccountState`]), the applied grants
//! (`grant_id` per account, kept for good: a payment reference can be re-sent days later),
//! the refused grant ids (bounded), the debits applied within the last `debit_horizon`
//! offsets of the debits partition (the rating pipeline repeats a debit only within its
//! checkpoint window), and the partition's **clock**: the latest instant of a clock marker
//! read from `credit_grants`. Time moves only with that clock, so expiries and expiry
//! warnings land at the same place of the log on every replay (docs/credits.md, "Expiry").
//! Every change is also a changelog record, so the stage can write the state in the same
//! Kafka transaction as the outputs and rebuild it on another instance.

mod changelog;
mod entry;
mod expiry;
mod queries;

pub use changelog::account_record;
use entry::{EntryIn, FundsChange};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::debit::Debit;
use crate::ledger::answer::{CommandKind, EntryRef, LedgerAnswer, Verdict};
use crate::ledger::command::{Command, Request};
use crate::ledger::grant::{Grant, GrantKind};
use crate::ledger::state::{ClosedBy, GrantMark, RefusalMark};

pub use crate::ledger::state::AccountState;
use crate::ledger::thresholds::Threshold;
use crate::money::DEBIT_SCALE;
use crate::rejection::{RejectReason, Rejection, excerpt};

pub use crate::ledger::entry::{
    AlertKind, BalanceEvent, CreditAlert, Crossing, ENTRY_FORMAT, EntryKind, EntryLine,
    EntrySource, GrantTerms, GrantView, TopupRequest,
};

pub use crate::ledger::funding::{MAX_BALANCE, MAX_LEDGER_BALANCE};

/// Rules of the ledger.
#[derive(Debug, Clone)]
pub struct LedgerRules {
    /// Default alert thresholds (`ledger.alert_thresholds`); an account may set its own.
    pub thresholds: Vec<Threshold>,
    /// Offsets of a debits partition within which a repeated debit_id is a duplicate.
    pub debit_horizon: u64,
    /// Default seconds before a grant's expiry to raise `grant_expiring` (0: never).
    pub expiry_warning_secs: u64,
    /// Smallest top-up (automatic top-up requests are at least this).
    pub min_topup: Decimal,
    /// Refused grant ids remembered per partition (for their status), oldest forgotten first.
    pub refusal_memory: usize,
}

impl Default for LedgerRules {
    fn default() -> Self {
        LedgerRules {
            thresholds: vec![
                Threshold::Credits(Decimal::TEN),
                Threshold::Credits(Decimal::ZERO),
            ],
            debit_horizon: 200_000,
            expiry_warning_secs: 7 * 86_400,
            min_topup: Decimal::TEN,
            refusal_memory: 100_000,
        }
    }
}

/// What one input did: entries (with their alerts and top-up requests), the answer to the
/// caller, a refusal for the dead-letter topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub entries: Vec<BalanceEvent>,
    pub alerts: Vec<CreditAlert>,
    pub topups: Vec<TopupRequest>,
    pub answer: Option<LedgerAnswer>,
    /// Refused: goes to the dead-letter topic; nothing changed.
    pub refused: Option<Rejection>,
    /// Seen before with the same content: nothing changed.
    pub duplicate: bool,
}

impl Effects {
    fn refused(r: Rejection) -> Self {
        Effects {
            refused: Some(r),
            ..Default::default()
        }
    }

    fn extend(&mut self, other: Effects) {
        self.entries.extend(other.entries);
        self.alerts.extend(other.alerts);
        self.topups.extend(other.topups);
    }
}

/// A changelog record: key, and value (`None` deletes the key).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// String-keyed map with xxh3 instead of SipHash: keys are ids from our own topics, and the
/// default hasher was ~1 % of the process's CPU during a drain.
type FastMap<V> = HashMap<String, V, xxhash_rust::xxh3::Xxh3Builder>;

/// A debit id's 128-bit xxh3 digest: the bounded debit memory keeps these instead of the ids
/// (two copies of a ~35-byte id, ~180 bytes a debit with the map and the order, became ~70).
/// Two different ids of one partition's horizon sharing a digest is a 2^-128-per-pair event.
pub type DebitDigest = u128;

/// The digest of a debit id.
pub fn debit_digest(debit_id: &str) -> DebitDigest {
    xxhash_rust::xxh3::xxh3_128(debit_id.as_bytes())
}

/// The ledger state of one partition.
#[derive(Debug, Default)]
pub struct LedgerPartition {
    rules: LedgerRules,
    accounts: FastMap<AccountState>,
    /// "account\0grant_id" -> the applied grant.
    grants: FastMap<GrantMark>,
    /// "account\0grant_id" -> its last refusal.
    refusals: FastMap<RefusalMark>,
    refusal_order: VecDeque<(u64, String)>,
    refusal_n: u64,
    /// Debit digest -> (offset, content hash) within the horizon.
    debits: HashMap<DebitDigest, (i64, u64), xxhash_rust::xxh3::Xxh3Builder>,
    /// The digests of `debits` in offset order (16 B a debit: the offset is the map's).
    debit_order: VecDeque<DebitDigest>,
    /// When `debits` and `debit_order` take their steady size.
    debits_sized: crate::rollup::dedupe::SteadySize,
    /// During a restore: debit marks of the format keyed by the id (`d/<id>`), to be
    /// re-keyed by digest when the restore ends.
    legacy_debits: HashMap<DebitDigest, String>,
    /// The latest clock marker read.
    clock: Option<DateTime<Utc>>,
    /// (when something is due, account): expiries and expiry warnings.
    deadlines: BTreeSet<(DateTime<Utc>, String)>,
    deadline_of: FastMap<DateTime<Utc>>,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// Stable hashed id, length-prefixed parts (same scheme as debit ids).
pub fn hashed_id(prefix: &str, parts: &[&str]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{prefix}_{:032x}", h.digest128())
}

/// Id of a ledger entry.
pub fn entry_id(account_id: &str, kind: EntryKind, reference: &str) -> String {
    hashed_id("le", &[account_id, kind.as_str(), reference])
}

/// `before + amount`, exact, within +-[`MAX_LEDGER_BALANCE`], at most 18 decimals.
pub fn exact_balance(before: Decimal, amount: Decimal) -> Result<Decimal, Rejection> {
    let refuse = || {
        Rejection::new(
            RejectReason::InvalidAmount,
            format!(
                "balance {before} + {amount} leaves the exact range of +-5e10 credits with 18 decimals"
            ),
        )
    };
    if amount.normalize().scale() > DEBIT_SCALE {
        return Err(refuse());
    }
    // An exact sum that does not fit 96 bits is rounded by `checked_add`: its magnitude is
    // then above 7.9e10, so the range check below refuses it.
    let after = before.checked_add(amount).ok_or_else(refuse)?;
    if after.abs() >= MAX_LEDGER_BALANCE {
        return Err(refuse());
    }
    Ok(after.normalize())
}

/// Checks that a grant of `amount` keeps the balance within +-[`MAX_BALANCE`], or brings it
/// closer to zero (a negative adjustment on an account that credit-backs took past it).
/// Grants stop there; debits and credit-backs go on to [`MAX_LEDGER_BALANCE`].
pub fn grant_in_range(before: Decimal, amount: Decimal) -> Result<(), Rejection> {
    let after = before.checked_add(amount);
    match after {
        Some(a) if a.abs() < MAX_BALANCE || a.abs() <= before.abs() => Ok(()),
        _ => Err(Rejection::new(
            RejectReason::InvalidAmount,
            format!(
                "balance {before} + {amount} would leave +-1e10 credits: grants stop there (usage and credit-backs always land)"
            ),
        )),
    }
}

/// The crossing of `threshold` by a change from `before` to `after`, if any.
pub fn crossing(before: Decimal, after: Decimal, threshold: Decimal) -> Option<Crossing> {
    match (before >= threshold, after >= threshold) {
        (true, false) => Some(Crossing::Below),
        (false, true) => Some(Crossing::Recovered),
        _ => None,
    }
}

fn grant_key(account_id: &str, grant_id: &str) -> String {
    format!("{account_id}\0{grant_id}")
}

impl EntryKind {
    fn of(kind: GrantKind) -> EntryKind {
        match kind {
            GrantKind::Topup => EntryKind::Topup,
            GrantKind::Voucher => EntryKind::Voucher,
            GrantKind::Adjustment => EntryKind::Adjustment,
        }
    }
}

impl LedgerPartition {
    pub fn new(rules: LedgerRules) -> Self {
        LedgerPartition {
            rules,
            ..Default::default()
        }
    }

    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.accounts.get(account_id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = (&String, &AccountState)> {
        self.accounts.iter()
    }

    /// Debit ids currently remembered.
    pub fn remembered_debits(&self) -> usize {
        self.debits.len()
    }

    /// The partition's clock: the latest clock marker read.
    pub fn clock(&self) -> Option<DateTime<Utc>> {
        self.clock
    }

    /// The earliest instant an expiry or an expiry warning is due: a clock marker at or
    /// after it makes it happen.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Applies one command read at `source`. A clock marker must have been authenticated.
    pub fn apply(&mut self, cmd: Command, source: EntrySource) -> Effects {
        match cmd {
            Command::Grant(g) => self.apply_grant(&g, source),
            Command::Clock { at, .. } => self.tick(at, source),
            Command::Request(r) => self.request(r),
        }
    }

    /// Answers a checked query or settings change.
    fn request(&mut self, r: Request) -> Effects {
        match r {
            Request::GrantStatus {
                request_id,
                account_id,
                grant_id,
            } => {
                let status = self.grant_status(&account_id, &grant_id);
                let message = format!("grant {} is {}", excerpt(&grant_id), status.state.as_str());
                Effects {
                    answer: Some(LedgerAnswer {
                        request_id: Some(request_id),
                        account_id,
                        command: CommandKind::GrantStatus,
                        verdict: Verdict::Answered,
                        reason: None,
                        message,
                        grant: Some(status),
                        entry: None,
                        account: None,
                    }),
                    ..Default::default()
                }
            }
            Request::AccountStatus {
                request_id,
                account_id,
            } => self.answered(
                CommandKind::AccountStatus,
                request_id,
                account_id,
                Vec::new(),
            ),
            Request::SetThresholds {
                request_id,
                account_id,
                thresholds,
                expiry_warning_secs,
            } => {
                self.set_thresholds(&account_id, thresholds, expiry_warning_secs);
                self.answered(
                    CommandKind::SetThresholds,
                    request_id,
                    account_id,
                    Vec::new(),
                )
            }
            Request::SetAutoTopup {
                request_id,
                account_id,
                rule,
            } => {
                let topups = self.set_auto_topup(&account_id, rule);
                self.answered(CommandKind::SetAutoTopup, request_id, account_id, topups)
            }
            // parse_command makes a clock marker a Command::Clock (after its MAC check).
            Request::Clock { .. } => Effects::refused(Rejection::new(
                RejectReason::InvalidField,
                "a clock marker is applied only as a checked Command::Clock",
            )),
        }
    }

    /// Applies a validated grant read at `source`.
    pub fn apply_grant(&mut self, g: &Grant, source: EntrySource) -> Effects {
        let key = grant_key(&g.account_id, &g.grant_id);
        let hash = g.content_hash();
        if let Some(mark) = self.grants.get(&key) {
            if mark.hash == hash {
                let entry = EntryRef {
                    entry_id: mark.entry_id.clone().unwrap_or_else(|| {
                        entry_id(&g.account_id, EntryKind::of(g.kind), &g.grant_id)
                    }),
                    seq: mark.seq.unwrap_or(0),
                    amount: Some(g.amount),
                    balance_after: None,
                    occurred_at: mark.occurred_at,
                };
                let message = format!(
                    "grant {} was already applied to account {} (entry {}); nothing changed",
                    excerpt(&g.grant_id),
                    excerpt(&g.account_id),
                    entry.seq
                );
                let mut fx = self.grant_answer(g, Verdict::AlreadyApplied, None, message);
                if let Some(a) = fx.answer.as_mut() {
                    a.entry = Some(entry);
                }
                fx.duplicate = true;
                return fx;
            }
            let r = Rejection::new(
                RejectReason::ConflictingDuplicate,
                format!(
                    "grant {} was already applied to account {} with another kind, amount or terms",
                    excerpt(&g.grant_id),
                    excerpt(&g.account_id)
                ),
            );
            return self.refuse_grant(g, r);
        }
        // A grant whose expiry the partition's clock has passed is refused, except a voucher
        // grant: the voucher stage decided that redemption (and answered "granted") from the
        // request's time; read late (the voucher stage lagged), it is applied and expires at
        // once below: a decided redemption is never refused here.
        let past_clock = match (g.expires_at, self.clock) {
            (Some(exp), Some(clock)) if exp <= clock => Some((exp, clock)),
            _ => None,
        };
        if let Some((exp, clock)) = past_clock
            && g.kind != GrantKind::Voucher
        {
            let r = Rejection::new(
                RejectReason::AlreadyExpired,
                format!(
                    "expires_at {} is not after the ledger's clock {} for this account's partition",
                    exp.to_rfc3339(),
                    clock.to_rfc3339()
                ),
            );
            return self.refuse_grant(g, r);
        }
        let before = self
            .accounts
            .get(&g.account_id)
            .map_or(Decimal::ZERO, |a| a.balance);
        if let Err(r) = grant_in_range(before, g.amount) {
            return self.refuse_grant(g, r);
        }
        let kind = EntryKind::of(g.kind);
        let description = match (g.kind, &g.reason, &g.voucher) {
            (GrantKind::Voucher, _, Some(v)) => format!("voucher {v}"),
            (_, Some(r), _) => r.clone(),
            _ => g.kind.as_str().to_string(),
        };
        let change = if g.adds_credits() {
            FundsChange::Credit(GrantTerms {
                category: g.category(),
                priority: g.priority(),
                expires_at: g.expires_at,
            })
        } else {
            FundsChange::Draw
        };
        let applied = self.entry(EntryIn {
            account: &g.account_id,
            kind,
            reference: &g.grant_id,
            description,
            amount: g.amount,
            occurred_at: g.occurred_at,
            lines: Vec::new(),
            source: source.clone(),
            change,
        });
        let mut fx = match applied {
            Ok(fx) => fx,
            Err(r) => return self.refuse_grant(g, r),
        };
        let e = &fx.entries[0];
        let opened = g.adds_credits()
            && self
                .accounts
                .get(&g.account_id)
                .is_some_and(|a| a.funds.get(&g.grant_id).is_some());
        let mark = GrantMark {
            hash,
            facts: crate::ledger::answer::GrantFacts::of(g),
            seq: Some(e.seq),
            entry_id: Some(e.entry_id.clone()),
            occurred_at: Some(g.occurred_at),
            closed: (g.adds_credits() && !opened).then_some(crate::ledger::state::Closed {
                by: ClosedBy::UsedUp,
                seq: e.seq,
                forfeited: Decimal::ZERO,
            }),
        };
        let entry = EntryRef {
            entry_id: e.entry_id.clone(),
            seq: e.seq,
            amount: Some(e.amount),
            balance_after: Some(e.balance_after),
            occurred_at: Some(e.occurred_at),
        };
        let message = format!(
            "{} of {} credits applied to {} (entry {}, balance {})",
            g.kind.as_str(),
            e.amount,
            excerpt(&g.account_id),
            e.seq,
            e.balance_after
        );
        self.put_grant_mark(&key, mark);
        self.forget_refusal(&key);
        if let Some((_, clock)) = past_clock {
            self.due(&g.account_id, clock, &source, &mut fx);
        }
        let mut answer = self.grant_answer(g, Verdict::Applied, None, message);
        if let Some(a) = answer.answer.as_mut() {
            a.entry = Some(entry);
        }
        Effects {
            answer: answer.answer,
            ..fx
        }
    }

    /// Applies a debit read at `source` (its offset drives the duplicate horizon). A debit
    /// is never refused for a low or negative balance: usage past the last grant is an
    /// overdraft.
    pub fn apply_debit(&mut self, d: &Debit, content_hash: u64, source: EntrySource) -> Effects {
        let offset = source.offset;
        self.expire_debits(offset);
        let digest = debit_digest(&d.debit_id);
        if let Some((_, prev)) = self.debits.get(&digest) {
            return if *prev == content_hash {
                Effects {
                    duplicate: true,
                    ..Default::default()
                }
            } else {
                Effects::refused(Rejection::new(
                    RejectReason::ConflictingDuplicate,
                    format!(
                        "debit {} repeated with different content",
                        excerpt(&d.debit_id)
                    ),
                ))
            };
        }
        // A correction credits back when negative (re-rating found the original too high);
        // any other debit is a charge.
        let correction = d.kind == crate::debit::DebitKind::Correction;
        if d.total.is_sign_negative() && !correction {
            return Effects::refused(Rejection::new(
                RejectReason::InvalidAmount,
                format!("debit total must not be negative (value {})", d.total),
            ));
        }
        if correction != d.correction.is_some() {
            return Effects::refused(Rejection::new(
                RejectReason::InvalidAmount,
                format!(
                    "debit {} of kind {} {} a correction reference",
                    crate::rejection::excerpt(&d.debit_id),
                    d.kind.as_str(),
                    if correction { "lacks" } else { "carries" }
                ),
            ));
        }
        let lines = d
            .breakdown
            .iter()
            .map(|b| EntryLine {
                asset_id: b.asset_id.clone(),
                calls: b.calls,
                quantities: b.quantities.clone(),
                cost: b.cost,
            })
            .collect();
        let description = match &d.execution_id {
            Some(x) => format!("{} {}", d.kind.as_str(), x),
            None => d.kind.as_str().to_string(),
        };
        // A credit-back (a negative correction) repays the overdraft first and opens the
        // rest as a paid grant named by the correction's debit id, priority 50, no expiry
        // (docs/credits.md, "Corrections"); a charge draws down.
        let change = if d.total.is_sign_negative() {
            FundsChange::Credit(GrantTerms {
                category: crate::ledger::funding::Category::Paid,
                priority: crate::ledger::funding::DEFAULT_PRIORITY,
                expires_at: None,
            })
        } else {
            FundsChange::Draw
        };
        let applied = self.entry(EntryIn {
            account: &d.account_id,
            kind: EntryKind::Debit,
            reference: &d.debit_id,
            description,
            amount: -d.total,
            occurred_at: d.last_event_at,
            lines,
            source,
            change,
        });
        match applied {
            Ok(fx) => {
                self.remember_debit(digest, offset, content_hash);
                fx
            }
            Err(r) => Effects::refused(r),
        }
    }

    fn expire_debits(&mut self, offset: i64) {
        let horizon = self.rules.debit_horizon as i64;
        while let Some(digest) = self.debit_order.front() {
            let o = self.debits.get(digest).map_or(i64::MIN, |(o, _)| *o);
            if offset.saturating_sub(o) <= horizon {
                break;
            }
            let digest = self.debit_order.pop_front().expect("front exists");
            self.debits.remove(&digest);
            self.changes.insert(changelog::debit_key(digest), None);
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "core_state_tests.rs"]
mod state_tests;

#[cfg(test)]
#[path = "core_model_tests.rs"]
mod model_tests;

#[cfg(test)]
#[path = "core_range_tests.rs"]
mod range_tests;
