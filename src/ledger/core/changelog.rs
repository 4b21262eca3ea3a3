//! The partition's state as changelog records: every write to the state goes through here
//! (so it is also a record of the next commit), and a restore reads the records back.
//! Keys: `a/<account>` account, `g/<account>\0<grant_id>` applied grant, `r/<account>\0
//! <grant_id>` refusal, `h/<32 hex digits>` debit mark (the debit id's digest,
//! [`super::debit_digest`]), `c/clock` the partition's clock. Debit marks of earlier builds,
//! `d/<debit_id>`, still read; a restore re-keys the live ones (tombstone + `h/` record in
//! the next commit).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Change, DebitDigest, LedgerPartition, debit_digest};
use crate::ledger::state::{AccountState, Closed, ClosedBy, GrantMark, RefusalMark};

const ACCOUNT_PREFIX: &[u8] = b"a/";
const GRANT_PREFIX: &[u8] = b"g/";
const REFUSAL_PREFIX: &[u8] = b"r/";
const DEBIT_PREFIX: &[u8] = b"h/";
/// Debit marks keyed by the id, as written before the digests.
const LEGACY_DEBIT_PREFIX: &[u8] = b"d/";
pub(super) const CLOCK_KEY: &[u8] = b"c/clock";

#[derive(Serialize, Deserialize)]
struct DebitMark {
    offset: i64,
    hash: u64,
}

fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn debit_key(digest: DebitDigest) -> Vec<u8> {
    key(DEBIT_PREFIX, &format!("{digest:032x}"))
}

fn debit_mark(offset: i64, hash: u64) -> Vec<u8> {
    serde_json::to_vec(&DebitMark { offset, hash }).expect("mark serializes")
}

/// The account and state of a ledger changelog record, when it is an account's (`a/<id>`;
/// `None` state for a tombstone); other records (grant, refusal and debit marks, the clock,
/// positions) are not. Readers of the changelog other than the stage (the HTTP ledger view,
/// `credits balance`) use it so the key format stays in this file. A format-0 record reads
/// with its balance and no open grants (the stage migrates it on its next change).
pub fn account_record(k: &[u8], value: Option<&[u8]>) -> Option<(String, Option<AccountState>)> {
    let account = String::from_utf8(k.strip_prefix(ACCOUNT_PREFIX)?.to_vec()).ok()?;
    match value {
        None => Some((account, None)),
        Some(v) => serde_json::from_slice(v).ok().map(|s| (account, Some(s))),
    }
}

impl LedgerPartition {
    /// Stores an account's new state and re-files its next deadline.
    pub(super) fn put_account(&mut self, account: &str, state: AccountState) {
        self.changes.insert(
            key(ACCOUNT_PREFIX, account),
            Some(serde_json::to_vec(&state).expect("account serializes")),
        );
        self.accounts.insert(account.to_string(), state);
        self.reindex(account);
    }

    /// Keeps `deadlines` equal to every account's next deadline.
    fn reindex(&mut self, account: &str) {
        let next = self
            .accounts
            .get(account)
            .and_then(|s| s.next_deadline(self.rules.expiry_warning_secs));
        let prev = self.deadline_of.get(account).copied();
        if prev == next {
            return;
        }
        if let Some(p) = prev {
            self.deadlines.remove(&(p, account.to_string()));
            self.deadline_of.remove(account);
        }
        if let Some(n) = next {
            self.deadlines.insert((n, account.to_string()));
            self.deadline_of.insert(account.to_string(), n);
        }
    }

    pub(super) fn put_grant_mark(&mut self, grant_key: &str, mark: GrantMark) {
        self.changes.insert(
            key(GRANT_PREFIX, grant_key),
            Some(serde_json::to_vec(&mark).expect("grant mark serializes")),
        );
        self.grants.insert(grant_key.to_string(), mark);
    }

    /// Records that a grant closed (a grant without a mark, the opening balance, has none).
    pub(super) fn close_grant_mark(
        &mut self,
        account: &str,
        grant_id: &str,
        by: ClosedBy,
        seq: u64,
        forfeited: Decimal,
    ) {
        let k = super::grant_key(account, grant_id);
        if let Some(mut m) = self.grants.get(&k).cloned() {
            m.closed = Some(Closed {
                by,
                seq,
                forfeited: forfeited.normalize(),
            });
            self.put_grant_mark(&k, m);
        }
    }

    /// Reserves the debit memory's steady size once it holds 1/16 of `debit_horizon`
    /// ([`crate::rollup::dedupe::SteadySize`]): from then on it never grows while it churns.
    fn size_debit_memory(&mut self) {
        let bound = usize::try_from(self.rules.debit_horizon).unwrap_or(usize::MAX);
        let lens = (self.debits.len(), self.debit_order.len());
        if let Some((table, queue)) = self.debits_sized.due(lens.0, lens.1, bound) {
            self.debits.reserve(table);
            self.debit_order.reserve(queue);
        }
    }

    pub(super) fn remember_debit(&mut self, digest: DebitDigest, offset: i64, hash: u64) {
        self.size_debit_memory();
        self.debits.insert(digest, (offset, hash));
        self.debit_order.push_back(digest);
        self.changes
            .insert(debit_key(digest), Some(debit_mark(offset, hash)));
    }

    /// Remembers the last refusal of a grant id; the oldest beyond `refusal_memory` are
    /// forgotten.
    pub(super) fn remember_refusal(&mut self, grant_key: &str, r: &crate::rejection::Rejection) {
        self.refusal_n += 1;
        let mark = RefusalMark {
            n: self.refusal_n,
            reason: r.reason,
            message: r.message.clone(),
        };
        self.changes.insert(
            key(REFUSAL_PREFIX, grant_key),
            Some(serde_json::to_vec(&mark).expect("refusal serializes")),
        );
        self.refusals.insert(grant_key.to_string(), mark);
        self.refusal_order
            .push_back((self.refusal_n, grant_key.to_string()));
        while self.refusals.len() > self.rules.refusal_memory {
            let Some((n, k)) = self.refusal_order.pop_front() else {
                break;
            };
            if self.refusals.get(&k).is_some_and(|m| m.n == n) {
                self.refusals.remove(&k);
                self.changes.insert(key(REFUSAL_PREFIX, &k), None);
            }
        }
    }

    pub(super) fn forget_refusal(&mut self, grant_key: &str) {
        if self.refusals.remove(grant_key).is_some() {
            self.changes.insert(key(REFUSAL_PREFIX, grant_key), None);
        }
    }

    /// Changelog records for everything changed since the last call (the last value per key).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes).into_iter().collect()
    }

    /// Applies one changelog record while restoring (in log order; the last value wins).
    pub fn restore(&mut self, k: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "key is not utf-8");
        if k == CLOCK_KEY {
            self.clock = match value {
                Some(v) => Some(
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .ok_or("clock is not an RFC 3339 instant")?
                        .with_timezone(&Utc),
                ),
                None => None,
            };
        } else if let Some(account) = k.strip_prefix(ACCOUNT_PREFIX) {
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
        } else if let Some(grant) = k.strip_prefix(GRANT_PREFIX) {
            let grant = text(grant)?;
            match value {
                Some(v) => {
                    self.grants.insert(grant, GrantMark::read(v)?);
                }
                None => {
                    self.grants.remove(&grant);
                }
            }
        } else if let Some(refusal) = k.strip_prefix(REFUSAL_PREFIX) {
            let refusal = text(refusal)?;
            match value {
                Some(v) => {
                    let m: RefusalMark =
                        serde_json::from_slice(v).map_err(|e| format!("refusal: {e}"))?;
                    self.refusals.insert(refusal, m);
                }
                None => {
                    self.refusals.remove(&refusal);
                }
            }
        } else if let Some(hex) = k.strip_prefix(DEBIT_PREFIX) {
            let digest = std::str::from_utf8(hex)
                .ok()
                .filter(|h| h.len() == 32)
                .and_then(|h| u128::from_str_radix(h, 16).ok())
                .ok_or("debit mark key is not 32 hex digits")?;
            self.restore_debit(digest, value)?;
        } else if let Some(debit) = k.strip_prefix(LEGACY_DEBIT_PREFIX) {
            let debit = text(debit)?;
            let digest = debit_digest(&debit);
            self.restore_debit(digest, value)?;
            match value {
                Some(_) => self.legacy_debits.insert(digest, debit),
                None => self.legacy_debits.remove(&digest),
            };
        } else {
            return Err(format!(
                "unknown ledger state key {:?}",
                String::from_utf8_lossy(k)
            ));
        }
        Ok(())
    }

    fn restore_debit(&mut self, digest: DebitDigest, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(v) => {
                let m: DebitMark =
                    serde_json::from_slice(v).map_err(|e| format!("debit mark: {e}"))?;
                self.size_debit_memory();
                self.debits.insert(digest, (m.offset, m.hash));
            }
            None => {
                self.debits.remove(&digest);
            }
        }
        Ok(())
    }

    /// Ends a restore: rebuilds the orders and the deadlines, migrates accounts of format 0
    /// and debit marks keyed by the id (their new records go out with the next commit) and
    /// forgets the restore's other changes.
    pub fn restored(&mut self) {
        let mut order: Vec<(i64, DebitDigest)> = self
            .debits
            .iter()
            .map(|(digest, (o, _))| (*o, *digest))
            .collect();
        order.sort();
        self.debit_order.clear();
        self.debit_order
            .extend(order.into_iter().map(|(_, digest)| digest));
        let mut refusals: Vec<(u64, String)> = self
            .refusals
            .iter()
            .map(|(k, m)| (m.n, k.clone()))
            .collect();
        refusals.sort();
        self.refusal_n = refusals.last().map_or(0, |(n, _)| *n);
        self.refusal_order = refusals.into();
        self.changes.clear();
        for (digest, id) in std::mem::take(&mut self.legacy_debits) {
            self.changes.insert(key(LEGACY_DEBIT_PREFIX, &id), None);
            if let Some((offset, hash)) = self.debits.get(&digest) {
                self.changes
                    .insert(debit_key(digest), Some(debit_mark(*offset, *hash)));
            }
        }
        let old: Vec<String> = self
            .accounts
            .iter()
            .filter(|(_, a)| a.v == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for account in old {
            let mut a = self.accounts[&account].clone();
            a.migrate_v0(&self.rules.thresholds);
            self.put_account(&account, a);
        }
        self.deadlines.clear();
        self.deadline_of.clear();
        let all: Vec<String> = self.accounts.keys().cloned().collect();
        for account in all {
            self.reindex(&account);
        }
    }
}
