//! The ledger core, pure and I/O-free: validated grants and debits of one ledger partition
//! in (in log order); balance events, threshold-crossing alerts and changelog records out.
//!
//! State per partition: each account's balance (exact decimal) and sequence number, the
//! applied grants (`grant_id` per account, kept for good: a payment reference can be re-sent
//! days later) and the debits applied within the last `debit_horizon` offsets of the debits
//! partition (the rating pipeline repeats a debit only within its checkpoint window). Every
//! change is also a changelog record, so the stage can write the state in the same Kafka
//! transaction as the outputs and rebuild it on another instance.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::debit::Debit;
use crate::ledger::grant::{Grant, GrantKind};
use crate::money::DEBIT_SCALE;
use crate::rejection::{RejectReason, Rejection};

/// Largest exact balance magnitude: 28 significant digits with 18 decimals.
pub const MAX_BALANCE: Decimal = Decimal::from_parts(1_410_065_408, 2, 0, false, 0); // 1e10

/// What changed a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Topup,
    Voucher,
    Adjustment,
    Debit,
}

impl EntryKind {
    pub const ALL: [EntryKind; 4] = [
        EntryKind::Topup,
        EntryKind::Voucher,
        EntryKind::Adjustment,
        EntryKind::Debit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Topup => "topup",
            EntryKind::Voucher => "voucher",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Debit => "debit",
        }
    }

    fn of(kind: GrantKind) -> EntryKind {
        match kind {
            GrantKind::Topup => EntryKind::Topup,
            GrantKind::Voucher => EntryKind::Voucher,
            GrantKind::Adjustment => EntryKind::Adjustment,
        }
    }
}

/// One asset of a debit entry: what was used and what it cost (before markup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryLine {
    pub asset_id: String,
    pub calls: u32,
    pub quantities: BTreeMap<String, Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

/// Where an entry was read (input topic position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A balance change: the `balances` topic message and the ClickHouse `ledger` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceEvent {
    /// Unique id of the entry: a hash of (account, kind, reference).
    pub entry_id: String,
    pub account_id: String,
    /// 1, 2, 3, ... per account, in the order the ledger applied the entries.
    pub seq: u64,
    pub kind: EntryKind,
    /// grant_id or debit_id.
    pub reference: String,
    pub description: String,
    /// Signed change: positive for grants, negative for debits.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_after: Decimal,
    /// When it happened: the grant's `occurred_at`, the debit's `last_event_at`.
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<EntryLine>,
    pub source: EntrySource,
}

/// Which way a threshold was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crossing {
    /// From `>= threshold` to `< threshold`.
    Below,
    /// From `< threshold` back to `>= threshold`.
    Recovered,
}

impl Crossing {
    pub fn as_str(self) -> &'static str {
        match self {
            Crossing::Below => "below",
            Crossing::Recovered => "recovered",
        }
    }
}

/// A low-balance alert on the `credit_alerts` topic: one per crossing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditAlert {
    pub alert_id: String,
    pub account_id: String,
    pub crossing: Crossing,
    #[serde(with = "rust_decimal::serde::str")]
    pub threshold: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    pub seq: u64,
    pub entry_id: String,
    pub occurred_at: DateTime<Utc>,
}

/// Rules of the ledger.
#[derive(Debug, Clone)]
pub struct LedgerRules {
    /// Alert thresholds (`ledger.alert_thresholds`).
    pub thresholds: Vec<Decimal>,
    /// Offsets of a debits partition within which a repeated debit_id is a duplicate.
    pub debit_horizon: u64,
}

impl Default for LedgerRules {
    fn default() -> Self {
        LedgerRules {
            thresholds: vec![Decimal::TEN, Decimal::ZERO],
            debit_horizon: 200_000,
        }
    }
}

/// One account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    pub seq: u64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What applying one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(Box<BalanceEvent>, Vec<CreditAlert>),
    /// Seen before with the same content: nothing changes.
    Duplicate,
    /// Refused: goes to the dead-letter topic; nothing changes.
    Refused(Rejection),
}

/// A changelog record: key, and value (`None` deletes the key).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

#[derive(Serialize, Deserialize)]
struct DebitMark {
    offset: i64,
    hash: u64,
}

/// String-keyed map with xxh3 instead of SipHash: keys are ids from our own topics, and the
/// default hasher was ~1 % of the process's CPU during a drain.
type FastMap<V> = HashMap<String, V, xxhash_rust::xxh3::Xxh3Builder>;

/// The ledger state of one partition.
#[derive(Debug, Default)]
pub struct LedgerPartition {
    rules: LedgerRules,
    accounts: FastMap<AccountState>,
    /// "account\0grant_id" -> content hash.
    grants: FastMap<u64>,
    debits: FastMap<(i64, u64)>,
    debit_order: VecDeque<(i64, String)>,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

const ACCOUNT_PREFIX: &[u8] = b"a/";
const GRANT_PREFIX: &[u8] = b"g/";
const DEBIT_PREFIX: &[u8] = b"d/";

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

/// `before + amount`, exact, within +-[`MAX_BALANCE`], at most 18 decimals.
pub fn exact_balance(before: Decimal, amount: Decimal) -> Result<Decimal, Rejection> {
    let refuse = || {
        Rejection::new(
            RejectReason::InvalidAmount,
            format!(
                "balance {before} + {amount} leaves the exact range of +-1e10 credits with 18 decimals"
            ),
        )
    };
    if amount.normalize().scale() > DEBIT_SCALE {
        return Err(refuse());
    }
    let after = before.checked_add(amount).ok_or_else(refuse)?;
    if after.abs() >= MAX_BALANCE {
        return Err(refuse());
    }
    Ok(after.normalize())
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

    /// Applies a validated grant read at `source`.
    pub fn apply_grant(&mut self, g: &Grant, source: EntrySource) -> Outcome {
        let key = format!("{}\0{}", g.account_id, g.grant_id);
        let hash = g.content_hash();
        if let Some(prev) = self.grants.get(&key) {
            return if *prev == hash {
                Outcome::Duplicate
            } else {
                Outcome::Refused(Rejection::new(
                    RejectReason::ConflictingDuplicate,
                    format!(
                        "grant {} was already applied to account {} with another kind or amount",
                        crate::rejection::excerpt(&g.grant_id),
                        crate::rejection::excerpt(&g.account_id)
                    ),
                ))
            };
        }
        let kind = EntryKind::of(g.kind);
        let description = match (g.kind, &g.reason, &g.voucher) {
            (GrantKind::Voucher, _, Some(v)) => format!("voucher {v}"),
            (_, Some(r), _) => r.clone(),
            _ => g.kind.as_str().to_string(),
        };
        let out = self.apply(
            &g.account_id,
            kind,
            &g.grant_id,
            description,
            g.amount,
            g.occurred_at,
            Vec::new(),
            source,
        );
        if matches!(out, Outcome::Applied(..)) {
            self.grants.insert(key.clone(), hash);
            let mut k = GRANT_PREFIX.to_vec();
            k.extend_from_slice(key.as_bytes());
            self.changes.insert(k, Some(hash.to_string().into_bytes()));
        }
        out
    }

    /// Applies a debit read at `source` (its offset drives the duplicate horizon). A debit
    /// is never refused for a low or negative balance.
    pub fn apply_debit(&mut self, d: &Debit, content_hash: u64, source: EntrySource) -> Outcome {
        let offset = source.offset;
        self.expire_debits(offset);
        if let Some((_, prev)) = self.debits.get(&d.debit_id) {
            return if *prev == content_hash {
                Outcome::Duplicate
            } else {
                Outcome::Refused(Rejection::new(
                    RejectReason::ConflictingDuplicate,
                    format!(
                        "debit {} repeated with different content",
                        crate::rejection::excerpt(&d.debit_id)
                    ),
                ))
            };
        }
        // A correction credits back when negative (re-rating found the original too high);
        // any other debit is a charge.
        let correction = d.kind == crate::debit::DebitKind::Correction;
        if d.total.is_sign_negative() && !correction {
            return Outcome::Refused(Rejection::new(
                RejectReason::InvalidAmount,
                format!("debit total must not be negative (value {})", d.total),
            ));
        }
        if correction != d.correction.is_some() {
            return Outcome::Refused(Rejection::new(
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
        let out = self.apply(
            &d.account_id,
            EntryKind::Debit,
            &d.debit_id,
            description,
            -d.total,
            d.last_event_at,
            lines,
            source,
        );
        if matches!(out, Outcome::Applied(..)) {
            self.debits
                .insert(d.debit_id.clone(), (offset, content_hash));
            self.debit_order.push_back((offset, d.debit_id.clone()));
            let mut k = DEBIT_PREFIX.to_vec();
            k.extend_from_slice(d.debit_id.as_bytes());
            let v = serde_json::to_vec(&DebitMark {
                offset,
                hash: content_hash,
            })
            .expect("mark serializes");
            self.changes.insert(k, Some(v));
        }
        out
    }

    fn expire_debits(&mut self, offset: i64) {
        let horizon = self.rules.debit_horizon as i64;
        while let Some((o, _)) = self.debit_order.front() {
            if offset.saturating_sub(*o) <= horizon {
                break;
            }
            let (_, id) = self.debit_order.pop_front().expect("front exists");
            self.debits.remove(&id);
            let mut k = DEBIT_PREFIX.to_vec();
            k.extend_from_slice(id.as_bytes());
            self.changes.insert(k, None);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        account_id: &str,
        kind: EntryKind,
        reference: &str,
        description: String,
        amount: Decimal,
        occurred_at: DateTime<Utc>,
        lines: Vec<EntryLine>,
        source: EntrySource,
    ) -> Outcome {
        let state = self.accounts.get(account_id).cloned().unwrap_or_default();
        let before = state.balance;
        let after = match exact_balance(before, amount) {
            Ok(a) => a,
            Err(r) => return Outcome::Refused(r),
        };
        let seq = state.seq + 1;
        let entry_id = entry_id(account_id, kind, reference);
        let alerts = self
            .rules
            .thresholds
            .iter()
            .filter_map(|t| crossing(before, after, *t).map(|c| (*t, c)))
            .map(|(t, c)| CreditAlert {
                alert_id: hashed_id(
                    "ca",
                    &[account_id, &seq.to_string(), &t.to_string(), c.as_str()],
                ),
                account_id: account_id.to_string(),
                crossing: c,
                threshold: t,
                balance: after,
                seq,
                entry_id: entry_id.clone(),
                occurred_at,
            })
            .collect();
        let new_state = AccountState {
            balance: after,
            seq,
            updated_at: Some(occurred_at),
        };
        let mut k = ACCOUNT_PREFIX.to_vec();
        k.extend_from_slice(account_id.as_bytes());
        self.changes.insert(
            k,
            Some(serde_json::to_vec(&new_state).expect("account serializes")),
        );
        self.accounts.insert(account_id.to_string(), new_state);
        Outcome::Applied(
            Box::new(BalanceEvent {
                entry_id,
                account_id: account_id.to_string(),
                seq,
                kind,
                reference: reference.to_string(),
                description,
                amount: amount.normalize(),
                balance_before: before,
                balance_after: after,
                occurred_at,
                lines,
                source,
            }),
            alerts,
        )
    }

    /// Changelog records for everything changed since the last call (the last value per key).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes).into_iter().collect()
    }

    /// Applies one changelog record while restoring (in log order; the last value wins).
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "key is not utf-8");
        if let Some(account) = key.strip_prefix(ACCOUNT_PREFIX) {
            let account = text(account)?;
            match value {
                Some(v) => {
                    let s: AccountState = serde_json::from_slice(v)
                        .map_err(|e| format!("account state of {account}: {e}"))?;
                    self.accounts.insert(account, s);
                }
                None => {
                    self.accounts.remove(&account);
                }
            }
        } else if let Some(grant) = key.strip_prefix(GRANT_PREFIX) {
            let grant = text(grant)?;
            match value {
                Some(v) => {
                    let h = std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or("grant mark is not a number")?;
                    self.grants.insert(grant, h);
                }
                None => {
                    self.grants.remove(&grant);
                }
            }
        } else if let Some(debit) = key.strip_prefix(DEBIT_PREFIX) {
            let debit = text(debit)?;
            match value {
                Some(v) => {
                    let m: DebitMark =
                        serde_json::from_slice(v).map_err(|e| format!("debit mark: {e}"))?;
                    self.debits.insert(debit, (m.offset, m.hash));
                }
                None => {
                    self.debits.remove(&debit);
                }
            }
        } else {
            return Err(format!(
                "unknown ledger state key {:?}",
                String::from_utf8_lossy(key)
            ));
        }
        Ok(())
    }

    /// Ends a restore: rebuilds the debit expiry order and forgets the restore's changes.
    pub fn restored(&mut self) {
        let mut order: Vec<(i64, String)> = self
            .debits
            .iter()
            .map(|(id, (o, _))| (*o, id.clone()))
            .collect();
        order.sort();
        self.debit_order = order.into();
        self.changes.clear();
    }
}

/// The account and state of a ledger changelog record, when it is an account's (`a/<id>`;
/// `None` state for a tombstone); other records (grant and debit marks, positions) are not.
/// Readers of the changelog other than the stage (the HTTP ledger view, `credits balance`)
/// use it so the key format stays in this file.
pub fn account_record(key: &[u8], value: Option<&[u8]>) -> Option<(String, Option<AccountState>)> {
    let account = String::from_utf8(key.strip_prefix(ACCOUNT_PREFIX)?.to_vec()).ok()?;
    match value {
        None => Some((account, None)),
        Some(v) => serde_json::from_slice(v).ok().map(|s| (account, Some(s))),
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

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
