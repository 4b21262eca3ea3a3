//! Execution traces: an execution's priced lines (each call, in the order of its output topic)
//! and its debits in, the [`ExecutionTrace`] the API answers out: every call with its price
//! and the running subtotal after it, then the subtotal, the markup and the total, and
//! breakdowns (by asset, by component, by dimension) that each add up to the total exactly,
//! with the markup as its own line (`crate::debit::components`).
//!
//! No I/O: where the calls come from (the pipeline's live state, ClickHouse, the committed
//! output topics) is the shell's business (`crate::http::executions`).

pub mod stream;

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::catalog::AssetType;
use crate::debit::{BreakdownLine, Component, Debit, DebitKind, LineKind, PricedLine};
use crate::money;
use crate::rollup::TracedCall;

/// One unit of a call: the quantity and the price applied (`unit_price` credits per `per`
/// units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceUnit {
    pub unit: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    pub per: u64,
}

/// One priced call of an execution. `kind`, `vendor` and `dimensions` are `null` (and
/// `agent_id`, `component`, `asset_name_sent` too) for a call known only from the pipeline's
/// memory: priced but not committed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceCall {
    /// 1, 2, 3, ... in the order the calls were priced (their input partition's order).
    pub seq: u64,
    pub event_id: String,
    pub kind: Option<LineKind>,
    pub occurred_at: DateTime<Utc>,
    pub asset_id: String,
    /// The name the event used when it was an alias of `asset_id`.
    pub asset_name_sent: Option<String>,
    pub asset_type: AssetType,
    pub vendor: Option<String>,
    pub agent_id: Option<String>,
    pub component: Option<String>,
    pub dimensions: Option<BTreeMap<String, String>>,
    pub units: Vec<TraceUnit>,
    pub price_version: String,
    /// Vendor price of the call (before markup).
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    /// The execution's subtotal after this call.
    #[serde(with = "rust_decimal::serde::str")]
    pub running_subtotal: Decimal,
}

impl TraceCall {
    /// The call of a priced line, numbered `seq`, with the subtotal after it.
    pub fn of(line: &PricedLine, seq: u64, running_subtotal: Decimal) -> TraceCall {
        TraceCall {
            seq,
            event_id: line.event_id.clone(),
            kind: Some(line.kind),
            occurred_at: line.occurred_at,
            asset_id: line.asset_id.clone(),
            asset_name_sent: line.asset_name_sent.clone(),
            asset_type: line.asset_type,
            vendor: Some(line.vendor.clone()),
            agent_id: line.agent_id.clone(),
            component: line.component.clone(),
            dimensions: Some(line.dimensions.clone()),
            units: line
                .units
                .iter()
                .map(|u| TraceUnit {
                    unit: u.unit.clone(),
                    quantity: u.quantity.normalize(),
                    unit_price: u.credits.normalize(),
                    per: u.per,
                })
                .collect(),
            price_version: line.price_version.clone(),
            cost: line.cost.normalize(),
            running_subtotal: running_subtotal.normalize(),
        }
    }

    /// A call known only from the pipeline's live state (not committed yet), numbered `seq`.
    pub fn live(c: &TracedCall, seq: u64) -> TraceCall {
        TraceCall {
            seq,
            event_id: c.event_id.clone(),
            kind: None,
            occurred_at: c.occurred_at,
            asset_id: c.asset_id.clone(),
            asset_name_sent: None,
            asset_type: c.asset_type,
            vendor: None,
            agent_id: None,
            component: None,
            dimensions: None,
            units: c
                .units
                .iter()
                .map(|u| TraceUnit {
                    unit: u.unit.clone(),
                    quantity: u.quantity.normalize(),
                    unit_price: u.credits.normalize(),
                    per: u.per,
                })
                .collect(),
            price_version: c.price_version.clone(),
            cost: c.cost.normalize(),
            running_subtotal: c.subtotal_after.normalize(),
        }
    }
}

/// One line of a breakdown. Every breakdown is vendor-price lines, then one `markup` line;
/// their amounts add up to the trace's `total` exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum BreakdownItem {
    Asset {
        asset_id: String,
        asset_type: AssetType,
        calls: u64,
        quantities: BTreeMap<String, Decimal>,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
    },
    Component {
        component: Component,
        calls: u64,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
    },
    /// One value of a dimension key; `value` is `""` for the calls without the key.
    Dimension {
        value: String,
        calls: u64,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
    },
    Markup {
        #[serde(with = "rust_decimal::serde::str")]
        rate: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
    },
}

impl BreakdownItem {
    pub fn amount(&self) -> Decimal {
        match self {
            BreakdownItem::Asset { amount, .. }
            | BreakdownItem::Component { amount, .. }
            | BreakdownItem::Dimension { amount, .. }
            | BreakdownItem::Markup { amount, .. } => *amount,
        }
    }
}

/// The breakdowns of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breakdowns {
    pub by_asset: Vec<BreakdownItem>,
    /// `models`, `tools`, then `markup`.
    pub by_component: Vec<BreakdownItem>,
    /// Per dimension key of the calls: its values (with `""` for calls without it), then
    /// `markup`. `null` when calls were left out of the trace (the values of those are not
    /// known).
    pub by_dimension: Option<BTreeMap<String, Vec<BreakdownItem>>>,
}

/// A debit of the execution, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebitSummary {
    pub debit_id: String,
    pub kind: DebitKind,
    pub calls: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup_rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

impl DebitSummary {
    pub fn of(d: &Debit) -> DebitSummary {
        DebitSummary {
            debit_id: d.debit_id.clone(),
            kind: d.kind,
            calls: d.calls,
            subtotal: d.subtotal.normalize(),
            markup_rate: d.markup_rate.normalize(),
            markup: d.markup.normalize(),
            total: d.total.normalize(),
        }
    }
}

/// Open (no debit yet) or closed (billed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Closed,
}

/// Where a trace's calls came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The rating pipeline's memory on the instance that answered (calls not yet committed
    /// included).
    Live,
    /// The committed output topics and ClickHouse (any instance).
    Committed,
}

/// Calls of an execution that a trace does not list, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Omitted {
    /// Calls before the first one listed.
    pub before: u64,
    /// Calls after the last one listed.
    pub after: u64,
    /// Why (e.g. the bound of calls kept per open execution); `None` when nothing is left out.
    pub reason: Option<String>,
}

impl Omitted {
    pub fn count(&self) -> u64 {
        self.before + self.after
    }
}

/// `GET /v1/executions/{id}`: one shape for open and closed executions. Amounts are decimal
/// strings in credits; `subtotal + markup = total`, and every breakdown adds up to `total`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecutionTrace {
    pub execution_id: String,
    pub account_id: String,
    pub status: Status,
    pub source: Source,
    /// Calls priced so far (listed or not).
    pub calls_priced: u64,
    /// Calls listed in `calls` (= `calls_priced` unless some were left out).
    pub calls_listed: u64,
    pub calls_omitted: Omitted,
    pub calls: Vec<TraceCall>,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup_rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Sum of the debits' totals (what was charged so far); 0 while open.
    #[serde(with = "rust_decimal::serde::str")]
    pub billed: Decimal,
    pub first_event_at: Option<DateTime<Utc>>,
    pub last_event_at: Option<DateTime<Utc>>,
    pub breakdown: Breakdowns,
    /// The execution debit, then its adjustments (late calls), in topic order.
    pub debits: Vec<DebitSummary>,
}

/// What a trace is built from.
#[derive(Debug, Clone)]
pub struct TraceInput<'a> {
    pub execution_id: &'a str,
    pub account_id: &'a str,
    pub source: Source,
    /// The calls listed, in order, each once (see [`dedupe_lines`]).
    pub lines: &'a [PricedLine],
    /// Calls known only from the live state, listed after `lines` (their running subtotal
    /// is the live state's).
    pub live_only: &'a [TracedCall],
    /// The execution's debits, in order, each once.
    pub debits: &'a [DebitSummary],
    /// Calls not in `lines`, with the aggregate of all calls (`aggregate`) then required.
    pub omitted: Omitted,
    /// Per-asset vendor price of every call priced (listed or not): required when calls are
    /// omitted (the live state's running cost), ignored otherwise.
    pub aggregate: Option<&'a [BreakdownLine]>,
    /// The markup rate when no debit says it (open executions): `rollup.markup_rate`.
    pub markup_rate: Decimal,
}

/// Keeps the first of each line id (a line read from ClickHouse and again from the topic,
/// or repeated by an at-least-once replay), in order.
pub fn dedupe_lines(lines: Vec<PricedLine>) -> Vec<PricedLine> {
    let mut seen = HashSet::new();
    lines
        .into_iter()
        .filter(|l| seen.insert(l.line_id()))
        .collect()
}

/// Keeps the first of each debit id, in order.
pub fn dedupe_debits(debits: Vec<DebitSummary>) -> Vec<DebitSummary> {
    let mut seen = HashSet::new();
    debits
        .into_iter()
        .filter(|d| seen.insert(d.debit_id.clone()))
        .collect()
}

#[derive(Default)]
struct AssetSum {
    asset_type: Option<AssetType>,
    calls: u64,
    quantities: BTreeMap<String, Decimal>,
    cost: Decimal,
}

/// Builds the trace; `None` when there is nothing at all (no call, no debit).
pub fn build(input: &TraceInput<'_>) -> Option<ExecutionTrace> {
    if input.lines.is_empty()
        && input.live_only.is_empty()
        && input.debits.is_empty()
        && input.omitted.count() == 0
    {
        return None;
    }
    let markup_rate = input
        .debits
        .first()
        .map_or(input.markup_rate, |d| d.markup_rate)
        .normalize();
    let listed_cost: Decimal = input.lines.iter().map(|l| l.cost).sum::<Decimal>()
        + input.live_only.iter().map(|c| c.cost).sum::<Decimal>();
    let complete = input.omitted.count() == 0 && input.live_only.is_empty();
    // Per asset: from the calls when all are listed, else from the aggregate.
    let mut assets: BTreeMap<String, AssetSum> = BTreeMap::new();
    match input.aggregate.filter(|_| input.omitted.count() > 0) {
        Some(agg) => {
            for b in agg {
                let a = assets.entry(b.asset_id.clone()).or_default();
                a.asset_type = Some(b.asset_type);
                a.calls += u64::from(b.calls);
                a.cost += b.cost;
                for (u, q) in &b.quantities {
                    *a.quantities.entry(u.clone()).or_default() += *q;
                }
            }
        }
        None => {
            for l in input.lines {
                let a = assets.entry(l.asset_id.clone()).or_default();
                a.asset_type = Some(l.asset_type);
                a.calls += 1;
                a.cost += l.cost;
                for u in &l.units {
                    *a.quantities.entry(u.unit.clone()).or_default() += u.quantity;
                }
            }
            for c in input.live_only {
                let a = assets.entry(c.asset_id.clone()).or_default();
                a.asset_type = Some(c.asset_type);
                a.calls += 1;
                a.cost += c.cost;
                for u in &c.units {
                    *a.quantities.entry(u.unit.clone()).or_default() += u.quantity;
                }
            }
        }
    }
    let subtotal: Decimal = assets.values().map(|a| a.cost).sum::<Decimal>().normalize();
    let billed: Decimal = input.debits.iter().map(|d| d.total).sum();
    let closed = !input.debits.is_empty();
    // Closed and every call billed: the debits say the markup. Otherwise (open, or a late
    // call whose adjustment is not visible yet) the rate of the subtotal: the same number
    // whenever the debits cover the calls, as the markup is exact and linear.
    let billed_subtotal: Decimal = input.debits.iter().map(|d| d.subtotal).sum();
    let markup = if closed && billed_subtotal == subtotal {
        input.debits.iter().map(|d| d.markup).sum::<Decimal>()
    } else {
        money::debit_markup(subtotal, markup_rate)
    }
    .normalize();
    let total = (subtotal + markup).normalize();
    let calls_priced = assets.values().map(|a| a.calls).sum::<u64>();
    // Running subtotals: from the start when nothing before the list is left out; else back
    // from the subtotal (the live state keeps a prefix or a suffix of the calls, never both
    // sides cut; if it did, they would count from the first call listed).
    let mut calls = Vec::with_capacity(input.lines.len());
    let mut running = if input.omitted.before > 0 && input.omitted.after == 0 {
        subtotal - listed_cost
    } else {
        Decimal::ZERO
    };
    for (i, l) in input.lines.iter().enumerate() {
        running += l.cost;
        calls.push(TraceCall::of(
            l,
            input.omitted.before + i as u64 + 1,
            running,
        ));
    }
    let first = input.omitted.before + calls.len() as u64 + 1;
    for (i, c) in input.live_only.iter().enumerate() {
        calls.push(TraceCall::live(c, first + i as u64));
    }
    let by_asset = with_markup(
        assets
            .iter()
            .map(|(id, a)| BreakdownItem::Asset {
                asset_id: id.clone(),
                asset_type: a.asset_type.unwrap_or(AssetType::Tool),
                calls: a.calls,
                quantities: a
                    .quantities
                    .iter()
                    .map(|(u, q)| (u.clone(), q.normalize()))
                    .collect(),
                amount: a.cost.normalize(),
            })
            .collect(),
        markup_rate,
        markup,
    );
    let by_component = {
        let mut items = Vec::new();
        for c in [Component::Models, Component::Tools] {
            let (n, amount) = assets
                .values()
                .filter(|a| a.asset_type.map(Component::of) == Some(c))
                .fold((0u64, Decimal::ZERO), |(n, s), a| (n + a.calls, s + a.cost));
            items.push(BreakdownItem::Component {
                component: c,
                calls: n,
                amount: amount.normalize(),
            });
        }
        with_markup(items, markup_rate, markup)
    };
    let by_dimension = complete.then(|| by_dimension(input.lines, markup_rate, markup));
    let first_event_at = calls.iter().map(|c| c.occurred_at).min();
    let last_event_at = calls.iter().map(|c| c.occurred_at).max();
    Some(ExecutionTrace {
        execution_id: input.execution_id.to_string(),
        account_id: input.account_id.to_string(),
        status: if closed { Status::Closed } else { Status::Open },
        source: input.source,
        calls_priced: calls_priced.max(calls.len() as u64),
        calls_listed: calls.len() as u64,
        calls_omitted: input.omitted.clone(),
        calls,
        subtotal,
        markup_rate,
        markup,
        total,
        billed: billed.normalize(),
        first_event_at,
        last_event_at,
        breakdown: Breakdowns {
            by_asset,
            by_component,
            by_dimension,
        },
        debits: input.debits.to_vec(),
    })
}

fn with_markup(
    mut items: Vec<BreakdownItem>,
    rate: Decimal,
    markup: Decimal,
) -> Vec<BreakdownItem> {
    items.push(BreakdownItem::Markup {
        rate,
        amount: markup,
    });
    items
}

/// Per dimension key: every value's calls and vendor price, `""` for the calls without the
/// key, then the markup line.
fn by_dimension(
    lines: &[PricedLine],
    rate: Decimal,
    markup: Decimal,
) -> BTreeMap<String, Vec<BreakdownItem>> {
    let keys: std::collections::BTreeSet<&String> =
        lines.iter().flat_map(|l| l.dimensions.keys()).collect();
    keys.into_iter()
        .map(|k| {
            let mut values: BTreeMap<&str, (u64, Decimal)> = BTreeMap::new();
            for l in lines {
                let v = l.dimensions.get(k).map_or("", String::as_str);
                let e = values.entry(v).or_default();
                e.0 += 1;
                e.1 += l.cost;
            }
            let items = values
                .into_iter()
                .map(|(v, (calls, amount))| BreakdownItem::Dimension {
                    value: v.to_string(),
                    calls,
                    amount: amount.normalize(),
                })
                .collect();
            (k.clone(), with_markup(items, rate, markup))
        })
        .collect()
}

#[cfg(test)]
mod tests;
