//! One scope of a re-rating (an account's execution, or one direct call): its lines and the
//! debits already written in; its correction debit, or why it is left out, out. The rule is
//! in [`super`]'s documentation.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::Correction;
use crate::debit::{
    self, BreakdownLine, Components, CorrectionRef, Debit, DebitKind, LineKind, PricedLine,
};
use crate::event::{EventKind, UsageEvent};
use crate::money;
use crate::rating::{Pricing, price_call};

/// What a correction debit is per: an account's execution, or one direct call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScopeKey {
    Execution {
        account_id: String,
        execution_id: String,
    },
    Direct {
        account_id: String,
        event_id: String,
    },
}

impl ScopeKey {
    pub fn of(line: &PricedLine) -> ScopeKey {
        match &line.execution_id {
            Some(x) => ScopeKey::Execution {
                account_id: line.account_id.clone(),
                execution_id: x.clone(),
            },
            None => ScopeKey::Direct {
                account_id: line.account_id.clone(),
                event_id: line.event_id.clone(),
            },
        }
    }

    pub fn account(&self) -> &str {
        match self {
            ScopeKey::Execution { account_id, .. } | ScopeKey::Direct { account_id, .. } => {
                account_id
            }
        }
    }

    /// The scope part of the correction debit id: `execution\n<id>` or `direct\n<event id>`.
    pub fn id_part(&self) -> String {
        match self {
            ScopeKey::Execution { execution_id, .. } => format!("execution\n{execution_id}"),
            ScopeKey::Direct { event_id, .. } => format!("direct\n{event_id}"),
        }
    }

    /// The correction debit id of this scope under correction `correction_id`.
    pub fn correction_debit_id(&self, correction_id: &str) -> String {
        debit::correction_debit_id(correction_id, self.account(), &self.id_part())
    }
}

impl std::fmt::Display for ScopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScopeKey::Execution {
                account_id,
                execution_id,
            } => write!(f, "account {account_id} execution {execution_id}"),
            ScopeKey::Direct {
                account_id,
                event_id,
            } => write!(f, "account {account_id} direct call {event_id}"),
        }
    }
}

/// Why a scope is left out (counted; a later run of the same correction picks it up once
/// the reason is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// A line has no debit on the topic yet: an execution still open.
    NotBilledYet(String),
    /// The execution id was reused (several execution debits) and a line cannot be told
    /// apart: its first call left no line.
    Ambiguous(String),
    /// A debit's lines as read do not add up to it (lines missing from the read).
    DoesNotAddUp {
        scope: String,
        debit_id: String,
        lines: u64,
        sum: Decimal,
        calls: u32,
        subtotal: Decimal,
    },
    /// A line cannot be priced with today's catalog (the rejection, in words).
    Unpriceable(String),
}

impl Skip {
    /// The reason code (`not_billed_yet`, `ambiguous_execution`, `does_not_add_up`,
    /// `unpriceable`).
    pub fn code(&self) -> &'static str {
        match self {
            Skip::NotBilledYet(_) => "not_billed_yet",
            Skip::Ambiguous(_) => "ambiguous_execution",
            Skip::DoesNotAddUp { .. } => "does_not_add_up",
            Skip::Unpriceable(_) => "unpriceable",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotBilledYet(s) => write!(f, "{s}: not billed yet (execution still open)"),
            Skip::Ambiguous(s) => write!(
                f,
                "{s}: execution id reused and a line cannot be assigned to one of its debits"
            ),
            Skip::DoesNotAddUp {
                scope,
                debit_id,
                lines,
                sum,
                calls,
                subtotal,
            } => write!(
                f,
                "{scope}: debit {debit_id} has {calls} calls, subtotal {subtotal}, but {lines} lines summing to {sum} were read"
            ),
            Skip::Unpriceable(s) => write!(f, "{s}"),
        }
    }
}

/// The debits read, by id (each once), with the lookups a scope needs.
#[derive(Debug, Default)]
pub(super) struct DebitBook {
    by_id: BTreeMap<String, Debit>,
    /// (account, execution) -> ids of its execution debits.
    executions: BTreeMap<(String, String), BTreeSet<String>>,
    /// Original debit id -> ids of the corrections referencing it.
    corrections_of: BTreeMap<String, BTreeSet<String>>,
}

impl DebitBook {
    pub(super) fn add(&mut self, d: Debit) {
        if self.by_id.contains_key(&d.debit_id) {
            return;
        }
        if let (DebitKind::AgentExecution, Some(x)) = (d.kind, &d.execution_id) {
            self.executions
                .entry((d.account_id.clone(), x.clone()))
                .or_default()
                .insert(d.debit_id.clone());
        }
        if let Some(c) = &d.correction {
            for o in &c.corrects {
                self.corrections_of
                    .entry(o.clone())
                    .or_default()
                    .insert(d.debit_id.clone());
            }
        }
        self.by_id.insert(d.debit_id.clone(), d);
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn has(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }
}

/// A scope's correction and what the report says of it.
#[derive(Debug)]
pub(super) struct Corrected {
    pub debit: Debit,
    /// Totals of the originals and earlier corrections of the scope.
    pub billed_total: Decimal,
    /// What the originals total when priced today.
    pub corrected_total: Decimal,
    /// (asset, old cost, new cost) of each line whose cost changed.
    pub changed: Vec<(String, Decimal, Decimal)>,
}

#[derive(Debug)]
pub(super) enum Verdict {
    Correction(Box<Corrected>),
    /// No difference (lines priced again).
    Unchanged(u64),
    /// This correction's debit of the scope is already written (its id).
    AlreadyWritten(String),
    Skipped(Skip),
}

/// Which debit each line was billed in (line id -> debit id), or why it cannot be told.
fn assign(
    key: &ScopeKey,
    lines: &BTreeMap<String, PricedLine>,
    book: &DebitBook,
) -> Result<BTreeMap<String, String>, Skip> {
    let mut out = BTreeMap::new();
    let (account, exec) = match key {
        ScopeKey::Direct {
            account_id,
            event_id,
        } => {
            let id = debit::direct_debit_id(account_id, event_id);
            if !book.has(&id) {
                return Err(Skip::NotBilledYet(key.to_string()));
            }
            for l in lines.keys() {
                out.insert(l.clone(), id.clone());
            }
            return Ok(out);
        }
        ScopeKey::Execution {
            account_id,
            execution_id,
        } => (account_id, execution_id),
    };
    let executions = book.executions.get(&(account.clone(), exec.clone()));
    // Calls not adjustments, in log order (an execution lives on one input partition).
    let mut in_execution: Vec<&PricedLine> = Vec::new();
    for (lid, l) in lines {
        let ad = debit::adjustment_debit_id(account, exec, &l.event_id);
        if book.has(&ad) {
            out.insert(lid.clone(), ad);
        } else {
            in_execution.push(l);
        }
    }
    if in_execution.is_empty() {
        return Ok(out);
    }
    let Some(executions) = executions else {
        return Err(Skip::NotBilledYet(key.to_string()));
    };
    if let [only] = executions.iter().collect::<Vec<_>>()[..] {
        for l in in_execution {
            out.insert(l.line_id(), only.clone());
        }
        return Ok(out);
    }
    // A reused execution id: each execution debit is named by its first call.
    in_execution.sort_by_key(|l| (l.event_partition, l.event_offset));
    let mut current: Option<String> = None;
    for l in in_execution {
        let id = debit::execution_debit_id(account, exec, &l.event_id);
        if executions.contains(&id) {
            current = Some(id);
        }
        match &current {
            Some(id) => out.insert(l.line_id(), id.clone()),
            None => return Err(Skip::Ambiguous(key.to_string())),
        };
    }
    Ok(out)
}

/// The call event a priced line was priced from (enough of it to price it again).
fn event_of(l: &PricedLine) -> UsageEvent {
    UsageEvent {
        kind: match l.kind {
            LineKind::ModelCall => EventKind::ModelCall,
            LineKind::ToolCall => EventKind::ToolCall,
        },
        event_id: l.event_id.clone(),
        occurred_at: l.occurred_at,
        account_id: l.account_id.clone(),
        asset_id: Some(l.asset_id.clone()),
        execution_id: l.execution_id.clone(),
        agent_id: l.agent_id.clone(),
        component: l.component.clone(),
        quantities: l
            .units
            .iter()
            .map(|u| (u.unit.clone(), u.quantity))
            .collect(),
        expected_calls: None,
        after_offset: None,
        dimensions: l.dimensions.clone(),
    }
}

/// Sums of a debit's amounts.
#[derive(Debug, Default, Clone, Copy)]
struct Amounts {
    subtotal: Decimal,
    markup: Decimal,
    total: Decimal,
}

impl Amounts {
    fn add(&mut self, subtotal: Decimal, markup: Decimal, total: Decimal) {
        self.subtotal += subtotal;
        self.markup += markup;
        self.total += total;
    }
}

/// Re-rates one scope; see [`super`] for the rule.
pub(super) fn rerate(
    key: &ScopeKey,
    lines: &BTreeMap<String, PricedLine>,
    book: &DebitBook,
    pricing: Pricing<'_>,
    correction: Correction<'_>,
) -> Verdict {
    let own_id = key.correction_debit_id(correction.id);
    if book.has(&own_id) {
        return Verdict::AlreadyWritten(own_id);
    }
    let assigned = match assign(key, lines, book) {
        Ok(a) => a,
        Err(s) => return Verdict::Skipped(s),
    };
    // Per original debit: its lines' count, old and new sums.
    let mut per_debit: BTreeMap<&str, (u64, Decimal, Decimal)> = BTreeMap::new();
    // (asset, new price version) -> (calls, quantities, cost difference), then the earlier
    // corrections' breakdowns are taken off.
    let mut breakdown: BTreeMap<(String, String), BreakdownLine> = BTreeMap::new();
    let mut changed = Vec::new();
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (lid, l) in lines {
        let new = match price_call(&event_of(l), pricing, l.event_partition, l.event_offset) {
            Ok(n) => n,
            Err(r) => {
                return Verdict::Skipped(Skip::Unpriceable(format!(
                    "{key}: call {} cannot be priced again: {}: {}",
                    l.event_id,
                    r.reason.as_str(),
                    r.message
                )));
            }
        };
        let e = per_debit.entry(assigned[lid].as_str()).or_default();
        e.0 += 1;
        e.1 += l.cost;
        e.2 += new.cost;
        span = Some(match span {
            None => (l.occurred_at, l.occurred_at),
            Some((a, b)) => (a.min(l.occurred_at), b.max(l.occurred_at)),
        });
        if new.cost != l.cost {
            let b = breakdown
                .entry((new.asset_id.clone(), new.price_version.clone()))
                .or_insert_with(|| BreakdownLine {
                    asset_id: new.asset_id.clone(),
                    asset_type: new.asset_type,
                    price_version: new.price_version.clone(),
                    calls: 0,
                    quantities: BTreeMap::new(),
                    cost: Decimal::ZERO,
                });
            b.calls += 1;
            b.cost += new.cost - l.cost;
            for u in &l.units {
                *b.quantities.entry(u.unit.clone()).or_default() += u.quantity;
            }
            changed.push((l.asset_id.clone(), l.cost, new.cost));
        }
    }
    let mut billed = Amounts::default();
    let mut target = Amounts::default();
    let mut earlier: BTreeSet<&str> = BTreeSet::new();
    for (id, (n, old, new)) in &per_debit {
        let d = &book.by_id[*id];
        if *n != u64::from(d.calls) || *old != d.subtotal {
            return Verdict::Skipped(Skip::DoesNotAddUp {
                scope: key.to_string(),
                debit_id: d.debit_id.clone(),
                lines: *n,
                sum: old.normalize(),
                calls: d.calls,
                subtotal: d.subtotal,
            });
        }
        billed.add(d.subtotal, d.markup, d.total);
        let subtotal = d.subtotal + (new - old);
        let markup = money::debit_markup(subtotal, d.markup_rate);
        target.add(subtotal, markup, subtotal + markup);
        if let Some(cs) = book.corrections_of.get(*id) {
            earlier.extend(cs.iter().map(String::as_str));
        }
    }
    for c in &earlier {
        let c = &book.by_id[*c];
        billed.add(c.subtotal, c.markup, c.total);
        for b in &c.breakdown {
            let e = breakdown
                .entry((b.asset_id.clone(), b.price_version.clone()))
                .or_insert_with(|| BreakdownLine {
                    quantities: BTreeMap::new(),
                    calls: 0,
                    cost: Decimal::ZERO,
                    ..b.clone()
                });
            e.cost -= b.cost;
        }
    }
    let subtotal = (target.subtotal - billed.subtotal).normalize();
    let markup = (target.markup - billed.markup).normalize();
    let total = (target.total - billed.total).normalize();
    if subtotal.is_zero() && markup.is_zero() && total.is_zero() {
        return Verdict::Unchanged(lines.len() as u64);
    }
    let breakdown: Vec<BreakdownLine> = breakdown
        .into_values()
        .filter(|b| !b.cost.is_zero())
        .map(|b| BreakdownLine {
            cost: b.cost.normalize(),
            quantities: b
                .quantities
                .into_iter()
                .map(|(u, q)| (u, q.normalize()))
                .collect(),
            ..b
        })
        .collect();
    // The plan and rate named: the execution debit's (else the first original's).
    let main = per_debit
        .keys()
        .map(|id| &book.by_id[*id])
        .find(|d| d.kind == DebitKind::AgentExecution)
        .or_else(|| per_debit.keys().next().map(|id| &book.by_id[*id]))
        .expect("a scope has a line, so a debit");
    let (first, last) = span.expect("a scope has a line");
    let debit = Debit {
        debit_id: own_id,
        kind: DebitKind::Correction,
        account_id: key.account().to_string(),
        execution_id: match key {
            ScopeKey::Execution { execution_id, .. } => Some(execution_id.clone()),
            ScopeKey::Direct { .. } => None,
        },
        plan: main.plan.clone(),
        plan_version: main.plan_version.clone(),
        subtotal,
        markup_rate: main.markup_rate,
        markup,
        total,
        calls: changed.len() as u32,
        first_event_at: first,
        last_event_at: last,
        components: Components::of(&breakdown, markup),
        breakdown,
        correction: Some(CorrectionRef {
            correction_id: correction.id.to_string(),
            reason: correction.reason.to_string(),
            corrects: per_debit.keys().map(|s| s.to_string()).collect(),
        }),
    };
    Verdict::Correction(Box::new(Corrected {
        debit,
        billed_total: billed.total,
        corrected_total: target.total,
        changed,
    }))
}
