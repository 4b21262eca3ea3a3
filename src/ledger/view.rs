//! The ledger as the HTTP API reads it without ClickHouse: account states (from the ledger
//! stage's changelog) and balance events (the `balances` topic) in; each account's balance
//! and its last `keep` entries out, held in memory. Pure: the follower ([`follow`]) moves
//! the bytes.
//!
//! Balances come from the changelog's account records, so every account is known, also one
//! whose events left the `balances` topic's retention long ago; an event with a higher
//! `seq` than the state moves the balance on. Entries are kept per account, newest `keep`,
//! keyed by `seq`; [`LedgerView::page`] says whether memory holds the whole page asked for
//! (else the caller goes to ClickHouse, and says so when it cannot).
//!
//! Memory, measured by `tests::memory_per_account`: about 2.2 KB per kept debit entry of three
//! assets, so about 46 KB per account at the default 20; `docs/credits.md` gives the figures.

pub mod follow;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::ledger::client::{Balance, HistoryEntry};
use crate::ledger::core::{AccountState, BalanceEvent, GrantView};
use crate::ledger::thresholds::Threshold;

/// One account: its balance, open grants and overdraft now, and its newest entries
/// (ascending `seq`, no repeats).
#[derive(Debug, Clone, Default)]
pub struct AccountView {
    pub balance: Decimal,
    /// Credits used past the last open grant.
    pub overdraft: Decimal,
    /// Open grants in draw-down order, with what is left of each.
    pub grants: Vec<GrantView>,
    /// Entries applied so far (the `seq` of the last one).
    pub seq: u64,
    pub updated_at: Option<DateTime<Utc>>,
    /// The thresholds the ledger has announced the account to be below (its changelog's
    /// `below`), each with its value in credits now, highest first.
    pub below: Vec<(Threshold, Decimal)>,
    recent: VecDeque<Arc<BalanceEvent>>,
}

impl AccountView {
    /// The balance answer (`GET /v1/accounts/{id}/balance`).
    pub fn balance_answer(&self, account: &str) -> Balance {
        Balance::from_ledger(
            account,
            self.balance,
            self.overdraft,
            self.seq,
            self.updated_at,
            &self.grants,
        )
    }
}

/// A page of an account's entries, newest first, from memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub entries: Vec<HistoryEntry>,
    /// Whether memory held every entry of the page; when false, `missing` lists the `seq`
    /// ranges it lacks (inclusive) and the page must come from ClickHouse.
    pub complete: bool,
    pub missing: Vec<(u64, u64)>,
}

/// Every account's balance and newest entries.
#[derive(Debug, Default)]
pub struct LedgerView {
    accounts: HashMap<String, AccountView>,
    keep: usize,
    entries: usize,
    /// `ledger.alert_thresholds`: the thresholds of an account without its own.
    defaults: Vec<Threshold>,
}

impl LedgerView {
    /// A view keeping the newest `keep` entries per account (at least 1).
    pub fn new(keep: usize) -> LedgerView {
        LedgerView {
            keep: keep.max(1),
            ..Default::default()
        }
    }

    /// Sets the thresholds of accounts without their own (`ledger.alert_thresholds`).
    pub fn set_default_thresholds(&mut self, defaults: Vec<Threshold>) {
        self.defaults = defaults;
    }

    /// Applies an account record of the ledger's changelog: the balance moves forward only
    /// (a record older than events already applied changes nothing); the thresholds the
    /// account is below are the record's, the latest read (records of an account are in
    /// order on its partition, and a change of thresholds moves no `seq`).
    pub fn restore(&mut self, account: &str, state: &AccountState) {
        self.set_below(account, state);
        let a = self.accounts.entry(account.to_string()).or_default();
        if state.seq > a.seq {
            a.balance = state.balance;
            a.overdraft = state.funds.overdraft;
            a.grants = state.funds.grants.iter().map(GrantView::from).collect();
            a.seq = state.seq;
            a.updated_at = state.updated_at;
        }
    }

    /// Takes only the thresholds the account is below from an account record of the
    /// ledger's changelog, followed after start-up: the balance and entries move with the
    /// balances topic alone then (a record read ahead of its entries would otherwise show a
    /// balance whose newest entries are not yet in memory).
    pub fn set_below(&mut self, account: &str, state: &AccountState) {
        let a = self.accounts.entry(account.to_string()).or_default();
        a.below = state
            .effective(&self.defaults)
            .into_iter()
            .filter(|(t, _)| state.below.contains(&t.to_string()))
            .collect();
    }

    /// Applies a balance event: kept among the account's newest entries (a repeat of a kept
    /// `seq` is ignored), and the balance moves on when it is newer than what is known.
    pub fn apply(&mut self, e: BalanceEvent) {
        let keep = self.keep;
        let a = self.accounts.entry(e.account_id.clone()).or_default();
        if e.seq > a.seq {
            a.balance = e.balance_after;
            a.overdraft = e.overdraft;
            a.grants = e.grants.clone();
            a.seq = e.seq;
            a.updated_at = Some(e.occurred_at);
        }
        let at = a.recent.partition_point(|x| x.seq < e.seq);
        if a.recent.get(at).is_some_and(|x| x.seq == e.seq) {
            return;
        }
        if a.recent.len() >= keep && at == 0 {
            return; // older than everything kept
        }
        a.recent.insert(at, Arc::new(e));
        self.entries += 1;
        if a.recent.len() > keep {
            a.recent.pop_front();
            self.entries -= 1;
        }
    }

    pub fn account(&self, account: &str) -> Option<&AccountView> {
        self.accounts.get(account)
    }

    /// Every account known with its view, in no particular order (`GET /v1/accounts`).
    pub fn all(&self) -> impl Iterator<Item = (&str, &AccountView)> {
        self.accounts.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Accounts known.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Entries held, all accounts together.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Entries newest first with `seq < before_seq` (all when `None`), at most `limit`,
    /// from memory: complete when memory holds each of them.
    pub fn page(&self, account: &str, limit: u32, before_seq: Option<u64>) -> Page {
        let Some(a) = self.accounts.get(account) else {
            return Page {
                entries: Vec::new(),
                complete: true,
                missing: Vec::new(),
            };
        };
        let hi = before_seq.map_or(a.seq, |b| b.saturating_sub(1).min(a.seq));
        let lo = hi.saturating_sub(u64::from(limit.max(1)) - 1).max(1);
        let mut entries = Vec::new();
        let mut missing: Vec<(u64, u64)> = Vec::new();
        let mut next = hi;
        for e in a.recent.iter().rev().filter(|e| e.seq <= hi && e.seq >= lo) {
            if e.seq < next {
                missing.push((e.seq + 1, next));
            }
            entries.push(HistoryEntry::from_event(e));
            next = e.seq.saturating_sub(1);
        }
        if hi > 0 && next >= lo {
            missing.push((lo, next));
        }
        Page {
            complete: missing.is_empty(),
            entries,
            missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::core::{EntryKind, EntrySource};

    fn ev(account: &str, seq: u64, amount: i64, after: i64) -> BalanceEvent {
        BalanceEvent {
            v: crate::ledger::core::ENTRY_FORMAT,
            funded_by: Vec::new(),
            grant: None,
            grants: Vec::new(),
            overdraft: Decimal::ZERO,
            next_expiry: None,
            entry_id: format!("le_{seq}"),
            account_id: account.into(),
            seq,
            kind: if amount < 0 {
                EntryKind::Debit
            } else {
                EntryKind::Topup
            },
            reference: format!("r{seq}"),
            description: String::new(),
            amount: Decimal::from(amount),
            balance_before: Decimal::from(after - amount),
            balance_after: Decimal::from(after),
            occurred_at: DateTime::from_timestamp(1_700_000_000 + seq as i64, 0).unwrap(),
            lines: Vec::new(),
            source: EntrySource {
                topic: "balances".into(),
                partition: 0,
                offset: seq as i64,
            },
        }
    }

    fn seqs(p: &Page) -> Vec<u64> {
        p.entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_the_newest_entries_and_the_latest_balance() {
        let mut v = LedgerView::new(3);
        for s in 1..=5 {
            v.apply(ev("a", s, 10, 10 * s as i64));
        }
        v.apply(ev("a", 4, 10, 40)); // a repeat
        v.apply(ev("a", 1, 10, 10)); // older than everything kept
        let a = v.account("a").unwrap();
        assert_eq!((a.balance, a.seq), (Decimal::from(50), 5));
        assert_eq!(v.entries(), 3);
        let p = v.page("a", 3, None);
        assert_eq!((seqs(&p), p.complete), (vec![5, 4, 3], true));
        let p = v.page("a", 2, Some(5));
        assert_eq!((seqs(&p), p.complete), (vec![4, 3], true));
        // Older than memory: incomplete, naming what is missing.
        let p = v.page("a", 3, Some(4));
        assert_eq!((seqs(&p), p.missing.clone()), (vec![3], vec![(1, 2)]));
        assert!(!p.complete);
        let p = v.page("a", 50, None);
        assert_eq!(p.missing, vec![(1, 2)]);
        // An account never seen has no entries: complete and empty.
        assert_eq!(v.page("b", 10, None).entries, vec![]);
        assert!(v.page("b", 10, None).complete);
    }

    #[test]
    fn the_changelog_gives_balances_events_never_go_backwards() {
        let mut v = LedgerView::new(5);
        let state = |seq: u64, balance: i64| AccountState {
            balance: Decimal::from(balance),
            seq,
            updated_at: None,
            ..Default::default()
        };
        v.restore("a", &state(7, 70));
        // Events older than the state fill the entries; the balance stays.
        v.apply(ev("a", 6, 10, 60));
        v.apply(ev("a", 7, 10, 70));
        assert_eq!(v.account("a").unwrap().balance, Decimal::from(70));
        // A newer event moves it on; an older state record does not move it back.
        v.apply(ev("a", 8, -5, 65));
        v.restore("a", &state(7, 70));
        assert_eq!(v.account("a").unwrap().balance, Decimal::from(65));
        let p = v.page("a", 3, None);
        assert_eq!((seqs(&p), p.complete), (vec![8, 7, 6], true));
        // A gap (entry 9 not read yet while the state says 10) is reported, not papered over.
        v.restore("a", &state(10, 80));
        v.apply(ev("a", 10, 15, 80));
        let p = v.page("a", 3, None);
        assert_eq!((seqs(&p), p.missing), (vec![10, 8], vec![(9, 9)]));
    }

    /// Memory of the view, measured (not a test of behaviour): 10,000 accounts with
    /// `keep` debit entries of three assets each. Run with
    /// `cargo test --release --lib ledger::view::tests::memory_per_account -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn memory_per_account() {
        fn rss_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .unwrap()
        }
        for keep in [1usize, 20] {
            let before = rss_kib();
            let mut v = LedgerView::new(keep);
            for a in 0..10_000u64 {
                let account = format!("acct-{a:08}");
                for seq in 1..=keep as u64 {
                    let mut e = ev(&account, seq, -1, -(seq as i64));
                    e.entry_id = format!("le_{:032x}", a * 1000 + seq);
                    e.reference = format!("ex_{:032x}", a * 1000 + seq);
                    e.description = format!("agent_execution exec-{a}-{seq}");
                    e.source.topic = "prod.debits".into();
                    e.lines = ["openai/gpt-4o-mini", "tavily/web-search", "supabase/query"]
                        .iter()
                        .map(|asset| crate::ledger::core::EntryLine {
                            asset_id: asset.to_string(),
                            calls: 2,
                            quantities: [
                                ("input_tokens".to_string(), Decimal::from(1200)),
                                ("output_tokens".to_string(), Decimal::from(300)),
                            ]
                            .into(),
                            cost: Decimal::new(123_456, 9),
                        })
                        .collect();
                    v.apply(e);
                }
            }
            let after = rss_kib();
            eprintln!(
                "keep {keep}: {} accounts, {} entries, {} bytes per account",
                v.accounts(),
                v.entries(),
                (after - before) * 1024 / 10_000
            );
            drop(v);
        }
    }
}
