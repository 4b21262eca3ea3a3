//! Per-partition rollup: (offset, payload) in, priced lines, debits and rejections out.
//!
//! Every decision is a function of the partition's log (and the catalog), never of wall
//! time: idle closes happen only when the aggregator's own close marker is read back from
//! the same partition. So replaying the same log from a snapshot yields the same outputs,
//! byte for byte. Wall time is kept only to decide when to write a marker.
//!
//! Ids are scoped by tenant: an execution is (account_id, execution_id), and the
//! idempotency key of an event is (account_id, execution_id or none, event_id), the scope of
//! its Kafka key, so the outcome never depends on which partitions the events land on.

mod changelog;
pub mod dedupe;
mod open;
mod outputs;
mod snapshot;
pub mod trace;

use std::collections::{BTreeMap, VecDeque};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::AssetType;
use crate::debit::{self, Debit, DebitKind, PricedLine};
use crate::event::{self, EventKind, Origin, UsageEvent, id_hash};
use crate::money;
use crate::plans::PlanBook;
use crate::rating::{Pricing, check_whole_units, price_call};
use crate::rejection::{RejectReason, Rejection, excerpt};
use dedupe::{DedupeWindow, HashKeyed, Seen};
use open::{AssetAcc, OpenExecution};
use outputs::{dedupe_key, exec_key, execution_debit, single_line_debit, split_key};
pub use snapshot::PartitionSnapshot;
pub use trace::{OpenExecutionView, TracedCall};

/// Map keyed by execution key ([`exec_key`]) with a fast, non-cryptographic hash (keys come from our own
/// producers' ids; flooding them only costs the flooder's partition).
type FastMap<V> = std::collections::HashMap<String, V, xxhash_rust::xxh3::Xxh3Builder>;

/// Rules of the rollup; part of the determinism contract (changing them changes replays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupConfig {
    pub markup_rate: Decimal,
    pub max_open_executions: usize,
    pub dedupe_horizon: u64,
    pub closed_horizon: u64,
    pub closed_capacity: usize,
    pub max_event_bytes: usize,
    /// Priced calls listed per open execution for its live trace (not an output: changing
    /// it changes no debit).
    pub max_trace_calls: usize,
}

impl Default for RollupConfig {
    fn default() -> Self {
        RollupConfig {
            markup_rate: Decimal::new(20, 2),
            max_open_executions: 50_000,
            dedupe_horizon: 200_000,
            closed_horizon: 200_000,
            closed_capacity: 100_000,
            max_event_bytes: event::DEFAULT_MAX_EVENT_BYTES,
            max_trace_calls: trace::DEFAULT_MAX_TRACE_CALLS,
        }
    }
}

/// One output of processing an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Line(PricedLine),
    Debit(Debit),
    /// The event just processed was rejected.
    Rejected(Rejection),
}

/// What happened to an event, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Priced(AssetType),
    Duplicate,
    Rejected(RejectReason),
    Finished,
    Marker,
    /// A finish or marker that had nothing left to do (stale marker, late finish).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ClosedExecution {
    account_hash: u64,
    closed_at: i64,
}

/// An execution idle long enough to ask for a close marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleExecution {
    pub execution_id: String,
    pub account_id: String,
    pub after_offset: i64,
}

/// Rollup state of one input partition.
#[derive(Debug)]
pub struct PartitionRollup {
    cfg: RollupConfig,
    partition: i32,
    open: FastMap<OpenExecution>,
    open_by_first_offset: BTreeMap<i64, String>,
    closed: HashKeyed<ClosedExecution>,
    closed_order: VecDeque<(i64, u64)>,
    dedupe: DedupeWindow,
    next_offset: i64,
    journal: changelog::Journal,
}

impl PartitionRollup {
    pub fn new(cfg: RollupConfig, partition: i32) -> Self {
        let dedupe = DedupeWindow::new(cfg.dedupe_horizon);
        PartitionRollup {
            cfg,
            partition,
            open: FastMap::default(),
            open_by_first_offset: BTreeMap::new(),
            closed: HashKeyed::default(),
            closed_order: VecDeque::new(),
            dedupe,
            next_offset: 0,
            journal: changelog::Journal::default(),
        }
    }

    /// The offset of the next event this state expects.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn open_executions(&self) -> usize {
        self.open.len()
    }

    pub fn dedupe_entries(&self) -> usize {
        self.dedupe.len()
    }

    pub fn config(&self) -> &RollupConfig {
        &self.cfg
    }

    /// Feeds the duplicate memory with an event already processed before `next_offset`
    /// (rebuilding after a restart from the snapshot's refused offsets and the log window).
    /// Produces nothing. Leaves out what processing left out: rejected events and markers.
    pub fn remember(&mut self, offset: i64, payload: &[u8]) {
        if self.dedupe.is_refused(offset) {
            return;
        }
        if let Ok(ev) = event::decode(payload, self.cfg.max_event_bytes) {
            self.dedupe
                .remember(offset, dedupe_key(&ev), ev.content_hash());
        }
    }

    /// Processes the event at `offset` written by a producer (no close markers accepted).
    /// `now_ms` is wall time, used only for idle markers.
    pub fn process<'a>(
        &mut self,
        offset: i64,
        payload: &[u8],
        pricing: impl Into<Pricing<'a>>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Outcome {
        self.process_from(Origin::Producer, offset, payload, pricing, now_ms, out)
    }

    /// Processes the event at `offset`; `origin` says whether the pipeline authenticated it
    /// as the aggregator's own close marker ([`Origin::Aggregator`]). Only accepted events
    /// enter the duplicate memory: a rejected event can be billed when re-sent.
    pub fn process_from<'a>(
        &mut self,
        origin: Origin,
        offset: i64,
        payload: &[u8],
        pricing: impl Into<Pricing<'a>>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let pricing = pricing.into();
        self.next_offset = offset + 1;
        self.evict_closed(offset);
        let ev = match event::decode_from(payload, self.cfg.max_event_bytes, origin) {
            Ok(ev) => ev,
            Err(r) => return self.rejected(r, out),
        };
        if ev.kind == EventKind::ExecutionTimeout {
            // A marker is idempotent by itself (a stale one is ignored): no duplicate memory.
            return self.timeout(&ev, pricing.plans, out);
        }
        let key = dedupe_key(&ev);
        let content = ev.content_hash();
        match self.dedupe.check(offset, key, content) {
            Seen::New => {}
            Seen::Duplicate => {
                self.accept(offset, key, content);
                return Outcome::Duplicate;
            }
            Seen::Conflict => {
                self.dedupe.refuse(offset);
                let r = Rejection::new(
                    RejectReason::ConflictingDuplicate,
                    format!(
                        "event_id {} of account_id {} was already billed with different content",
                        excerpt(&ev.event_id),
                        excerpt(&ev.account_id)
                    ),
                );
                return self.rejected(r, out);
            }
        }
        let outcome = match ev.kind {
            EventKind::ModelCall | EventKind::ToolCall => {
                match check_whole_units(&ev, pricing.catalog) {
                    Ok(()) => self.call(offset, &ev, pricing, now_ms, out),
                    Err(r) => self.rejected(r, out),
                }
            }
            _ => self.finish(offset, &ev, pricing.plans, now_ms, out),
        };
        if matches!(outcome, Outcome::Rejected(_)) {
            self.dedupe.refuse(offset);
        } else {
            self.accept(offset, key, content);
        }
        outcome
    }

    /// Remembers an accepted event (or a duplicate's new last occurrence).
    fn accept(&mut self, offset: i64, key: u64, content: u64) {
        self.dedupe.remember(offset, key, content);
        let entry = (offset, key, content);
        self.journal.dedupe.push(self.journal.on, entry);
    }

    fn rejected(&self, r: Rejection, out: &mut Vec<Output>) -> Outcome {
        let reason = r.reason;
        out.push(Output::Rejected(r));
        Outcome::Rejected(reason)
    }

    fn call(
        &mut self,
        offset: i64,
        ev: &UsageEvent,
        pricing: Pricing<'_>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let Some(exec_id) = ev.execution_id.as_deref() else {
            return match price_call(ev, pricing, self.partition, offset) {
                Ok(line) => {
                    let asset_type = line.asset_type;
                    let kind = if ev.kind == EventKind::ModelCall {
                        DebitKind::ModelCall
                    } else {
                        DebitKind::ToolCall
                    };
                    let id = debit::direct_debit_id(&ev.account_id, &ev.event_id);
                    let d = single_line_debit(id, kind, None, &line, Decimal::ZERO);
                    out.push(Output::Line(line));
                    out.push(Output::Debit(d));
                    Outcome::Priced(asset_type)
                }
                Err(r) => self.rejected(r, out),
            };
        };
        let key = exec_key(&ev.account_id, exec_id);
        if !self.open.contains_key(&key) && self.is_closed(&key, &ev.account_id) {
            return match price_call(ev, pricing, self.partition, offset) {
                Ok(line) => {
                    let id = debit::adjustment_debit_id(&ev.account_id, exec_id, &ev.event_id);
                    // The markup of the plan in force at the late call's own time.
                    let rate = pricing
                        .plans
                        .resolve(&ev.account_id, ev.occurred_at)
                        .markup_rate(self.cfg.markup_rate);
                    let d = single_line_debit(
                        id,
                        DebitKind::AgentExecutionAdjustment,
                        Some(exec_id),
                        &line,
                        rate,
                    );
                    let asset_type = line.asset_type;
                    out.push(Output::Line(line));
                    out.push(Output::Debit(d));
                    Outcome::Priced(asset_type)
                }
                Err(r) => self.rejected(r, out),
            };
        }
        let priced = price_call(ev, pricing, self.partition, offset);
        if !self.open.contains_key(&key) {
            self.open_waiting(&key, offset, ev, now_ms, pricing.plans, out);
        }
        self.journal.touch(&key);
        let open = self.open.get_mut(&key).expect("inserted above");
        if open.calls_seen == 0 {
            // The first call names the execution's debit and starts its time span, whether
            // or not its finish came first: the debit is the same in either order.
            open.first_event_id.clone_from(&ev.event_id);
            open.first_event_at = ev.occurred_at;
            open.last_event_at = ev.occurred_at;
        }
        open.calls_seen += 1;
        open.last_offset = offset;
        open.last_seen_ms = now_ms;
        let outcome = match priced {
            Ok(line) => match money::add(open.subtotal, line.cost) {
                Ok(subtotal) => {
                    open.subtotal = subtotal;
                    open.calls_priced += 1;
                    open.first_event_at = open.first_event_at.min(ev.occurred_at);
                    open.last_event_at = open.last_event_at.max(ev.occurred_at);
                    let acc = open
                        .breakdown
                        .entry(outputs::breakdown_key(&line.asset_id, &line.price_version))
                        .or_insert_with(|| AssetAcc::new(line.asset_type));
                    acc.calls += 1;
                    acc.cost += line.cost;
                    for u in &line.units {
                        *acc.quantities.entry(u.unit.clone()).or_default() += u.quantity;
                    }
                    if open.calls.len() < self.cfg.max_trace_calls {
                        open.calls.push(TracedCall::of(&line, subtotal));
                    }
                    let asset_type = line.asset_type;
                    out.push(Output::Line(line));
                    Outcome::Priced(asset_type)
                }
                Err(e) => self.rejected(
                    Rejection::new(
                        RejectReason::InvalidQuantity,
                        format!("execution_id {} subtotal overflows: {e}", excerpt(exec_id)),
                    ),
                    out,
                ),
            },
            Err(r) => self.rejected(r, out),
        };
        let ready = self
            .open
            .get(&key)
            .is_some_and(|o| o.finished && o.expected_calls.is_none_or(|n| o.calls_seen >= n));
        if ready {
            self.close(&key, offset, pricing.plans, out);
        }
        outcome
    }

    fn finish(
        &mut self,
        offset: i64,
        ev: &UsageEvent,
        plans: &PlanBook,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Outcome {
        let exec_id = ev.execution_id.as_deref().unwrap_or_default();
        let key = exec_key(&ev.account_id, exec_id);
        if !self.open.contains_key(&key) {
            if self.is_closed(&key, &ev.account_id) {
                return Outcome::Ignored;
            }
            if ev.expected_calls.is_none_or(|n| n == 0) {
                // An execution with no calls: nothing to bill, but later calls adjust.
                self.remember_closed(id_hash(&key), id_hash(&ev.account_id), offset);
                return Outcome::Finished;
            }
            // The finish came before its calls: wait for them, finished, with nothing
            // priced yet (the idle rule closes it if they never come).
            self.open_waiting(&key, offset, ev, now_ms, plans, out);
        }
        self.journal.touch(&key);
        let open = self.open.get_mut(&key).expect("present or opened above");
        open.finished = true;
        open.expected_calls = ev.expected_calls;
        open.last_offset = offset;
        open.last_seen_ms = now_ms;
        if ev.expected_calls.is_none_or(|n| open.calls_seen >= n) {
            self.close(&key, offset, plans, out);
        }
        Outcome::Finished
    }

    /// Opens execution `key` at `offset` with no calls yet (its first call, or a finish
    /// that came before its calls), making room under the bound first.
    fn open_waiting(
        &mut self,
        key: &str,
        offset: i64,
        ev: &UsageEvent,
        now_ms: u64,
        plans: &PlanBook,
        out: &mut Vec<Output>,
    ) {
        self.make_room(plans, out);
        self.open_by_first_offset.insert(offset, key.to_string());
        self.open
            .insert(key.to_string(), OpenExecution::waiting(ev, offset, now_ms));
    }

    fn timeout(&mut self, ev: &UsageEvent, plans: &PlanBook, out: &mut Vec<Output>) -> Outcome {
        let key = exec_key(
            &ev.account_id,
            ev.execution_id.as_deref().unwrap_or_default(),
        );
        match self.open.get(&key) {
            Some(open) if Some(open.last_offset) == ev.after_offset => {
                let at = open.last_offset;
                self.close(&key, at, plans, out);
                Outcome::Marker
            }
            _ => Outcome::Ignored,
        }
    }

    /// Closes the oldest open executions while the partition is at its bound.
    fn make_room(&mut self, plans: &PlanBook, out: &mut Vec<Output>) {
        while self.open.len() >= self.cfg.max_open_executions.max(1) {
            let Some((&first, id)) = self.open_by_first_offset.iter().next() else {
                break;
            };
            let id = id.clone();
            let at = self.open.get(&id).map_or(first, |o| o.last_offset);
            self.close(&id, at, plans, out);
        }
    }

    /// True if the execution `key` of `account_id` closed within the closed horizon.
    fn is_closed(&self, key: &str, account_id: &str) -> bool {
        self.closed
            .get(&id_hash(key))
            .is_some_and(|c| c.account_hash == id_hash(account_id))
    }

    fn close(&mut self, key: &str, offset: i64, plans: &PlanBook, out: &mut Vec<Output>) {
        let Some(open) = self.open.remove(key) else {
            return;
        };
        self.journal.touch(key);
        self.open_by_first_offset.remove(&open.first_offset);
        self.remember_closed(id_hash(key), id_hash(&open.account_id), offset);
        if open.calls_priced == 0 {
            return;
        }
        let (_, exec_id) = split_key(key);
        let id = debit::execution_debit_id(&open.account_id, exec_id, &open.first_event_id);
        // The markup of the plan in force at the execution's first call.
        let plan = plans.resolve(&open.account_id, open.first_event_at);
        out.push(Output::Debit(execution_debit(
            exec_id,
            &open,
            plan,
            self.cfg.markup_rate,
            id,
        )));
    }

    fn remember_closed(&mut self, exec_hash: u64, account_hash: u64, offset: i64) {
        let entry = (exec_hash, account_hash, offset);
        self.journal.closed.push(self.journal.on, entry);
        self.closed.insert(
            exec_hash,
            ClosedExecution {
                account_hash,
                closed_at: offset,
            },
        );
        self.closed_order.push_back((offset, exec_hash));
        while self.closed_order.len() > self.cfg.closed_capacity {
            self.pop_closed();
        }
    }

    fn evict_closed(&mut self, offset: i64) {
        let limit = offset.saturating_sub(self.cfg.closed_horizon as i64);
        while self.closed_order.front().is_some_and(|(o, _)| *o <= limit) {
            self.pop_closed();
        }
    }

    fn pop_closed(&mut self) {
        let Some((o, h)) = self.closed_order.pop_front() else {
            return;
        };
        self.journal.closed.popped(1);
        if self.closed.get(&h).is_some_and(|c| c.closed_at == o) {
            self.closed.remove(&h);
        }
    }

    /// Closes every open execution (end of input in offline rating), each under the plan
    /// of its account at its first call.
    pub fn close_all(&mut self, plans: &PlanBook, out: &mut Vec<Output>) {
        let ids: Vec<String> = self.open_by_first_offset.values().cloned().collect();
        for id in ids {
            let at = self.open[&id].last_offset;
            self.close(&id, at, plans, out);
        }
    }

    /// Open executions idle for `timeout_ms` whose close marker is not yet written.
    pub fn idle_executions(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<IdleExecution> {
        let mut idle = Vec::new();
        for (key, o) in self.open.iter_mut() {
            if now_ms.saturating_sub(o.last_seen_ms) >= timeout_ms
                && o.marker_sent_after != Some(o.last_offset)
            {
                o.marker_sent_after = Some(o.last_offset);
                idle.push(IdleExecution {
                    execution_id: split_key(key).1.to_string(),
                    account_id: o.account_id.clone(),
                    after_offset: o.last_offset,
                });
            }
        }
        idle.sort_by_key(|i| i.after_offset);
        idle
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_field_faults;
#[cfg(test)]
mod tests_pricing;
#[cfg(test)]
mod tests_props;
