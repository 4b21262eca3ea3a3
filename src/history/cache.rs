//! An execution's committed history, kept between lookups: what [`super::read`] found up to
//! a position of the account's output partition, then only what was committed since, read
//! from the follower's in-memory tail. Committed output messages never change, so a kept
//! history is never wrong, only short, and the next lookup adds what came since: a later
//! adjustment or a late call shows as it commits, with no invalidation to get right.
//!
//! A trace of a 1,000-call execution thus costs one ClickHouse query on its first lookup
//! and none after, while the tail still holds where it was kept (else it is read again).
//! Bounded: at most [`MAX_CALLS`] calls over all kept executions, the least recently used
//! go first. Also the accounts ClickHouse gave for an execution id (the operator's lookup
//! without `account_id`), [`MAX_ACCOUNTS`] of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Committed, HistoryError, decode_all};
use crate::debit::{Debit, PricedLine};
use crate::follow::{Follower, Positions};
use crate::trace::stream::Filter;

/// Calls kept over all executions (a priced line in memory: ~0.5-1 KB).
pub const MAX_CALLS: usize = 100_000;
/// Execution ids whose accounts ClickHouse gave, kept.
pub const MAX_ACCOUNTS: usize = 10_000;

struct Entry {
    partition: i32,
    upto: Positions,
    lines: Arc<Vec<(i64, PricedLine)>>,
    debits: Arc<Vec<(i64, Debit)>>,
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<(String, String), Entry>,
    calls: usize,
    tick: u64,
    accounts: HashMap<String, Vec<String>>,
}

/// The kept histories of one process (shared by its lookups).
#[derive(Default)]
pub struct HistoryCache(Mutex<Inner>);

impl HistoryCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The accounts ClickHouse gave for `execution_id` before, if kept.
    pub fn accounts(&self, execution_id: &str) -> Option<Vec<String>> {
        self.lock().accounts.get(execution_id).cloned()
    }

    /// Keeps the accounts ClickHouse gave for `execution_id` (not an empty answer: it may
    /// not be there yet).
    pub fn keep_accounts(&self, execution_id: &str, accounts: Vec<String>) {
        if accounts.is_empty() {
            return;
        }
        let mut g = self.lock();
        if g.accounts.len() >= MAX_ACCOUNTS {
            g.accounts.clear();
        }
        g.accounts.insert(execution_id.to_string(), accounts);
    }

    fn put(&self, account: &str, execution: &str, c: &Committed) {
        let n = c.lines.len();
        if n == 0 && c.debits.is_empty() || n > MAX_CALLS {
            return;
        }
        let mut g = self.lock();
        g.tick += 1;
        let used = g.tick;
        let key = (account.to_string(), execution.to_string());
        if let Some(old) = g.entries.remove(&key) {
            g.calls -= old.lines.len();
        }
        while g.calls + n > MAX_CALLS {
            let Some(oldest) = g
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = g.entries.remove(&oldest) {
                g.calls -= e.lines.len();
            }
        }
        g.calls += n;
        g.entries.insert(
            key,
            Entry {
                partition: c.partition,
                upto: c.upto,
                lines: Arc::new(c.lines.clone()),
                debits: Arc::new(c.debits.clone()),
                used,
            },
        );
    }

    /// The kept history of `account`'s `execution`, brought up to the follower's position
    /// from its in-memory tail; `None` when none is kept or the tail no longer reaches it.
    fn extend(
        &self,
        follower: &Follower,
        p: i32,
        account: &str,
        execution: &str,
        upto: Positions,
    ) -> Option<Committed> {
        let key = (account.to_string(), execution.to_string());
        let (from, mut lines, mut debits) = {
            let mut g = self.lock();
            g.tick += 1;
            let tick = g.tick;
            let e = g.entries.get_mut(&key)?;
            if e.partition != p || e.upto.lines > upto.lines || e.upto.debits > upto.debits {
                return None;
            }
            e.used = tick;
            (e.upto, e.lines.clone(), e.debits.clone())
        };
        let tail = follower.read_in_memory(p, account.as_bytes(), execution, from, upto)?;
        let filter = Filter::Execution {
            account_id: account.to_string(),
            execution_id: execution.to_string(),
        };
        if !tail.lines.is_empty() || !tail.debits.is_empty() {
            let mut l = (*lines).clone();
            l.extend(
                decode_all::<PricedLine>(&tail.lines)
                    .filter(|(_, x)| super::line_matches(&filter, x)),
            );
            let mut d = (*debits).clone();
            d.extend(
                decode_all::<Debit>(&tail.debits)
                    .filter(|(_, x)| x.execution_id.as_deref() == Some(execution)),
            );
            (lines, debits) = (Arc::new(l), Arc::new(d));
        }
        let mut g = self.lock();
        let added = lines.len();
        if let Some(e) = g.entries.get_mut(&key)
            && e.upto == from
        {
            let before = e.lines.len();
            e.upto = upto;
            e.lines = lines.clone();
            e.debits = debits.clone();
            g.calls = g.calls + added - before;
        }
        drop(g);
        Some(Committed {
            partition: p,
            upto,
            lines: (*lines).clone(),
            debits: (*debits).clone(),
            clickhouse_error: None,
        })
    }
}

/// [`super::read`] of one execution up to the follower's position, through `cache`.
pub async fn read_execution(
    cache: &HistoryCache,
    follower: &Follower,
    ch: &clickhouse::Client,
    account: &str,
    execution: &str,
) -> Result<Committed, HistoryError> {
    follower.ensure_started().await?;
    let p = follower.partition_of(account)?;
    let upto = follower.position(p);
    if let Some(c) = cache.extend(follower, p, account, execution, upto) {
        return Ok(c);
    }
    let filter = Filter::Execution {
        account_id: account.to_string(),
        execution_id: execution.to_string(),
    };
    let c = super::read(follower, ch, &filter, Some(upto)).await?;
    if c.clickhouse_error.is_none() {
        cache.put(account, execution, &c);
    }
    Ok(c)
}
