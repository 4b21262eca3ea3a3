//! ClickHouse reads of the committed history: `usage_transactions` and `debits` rows of one
//! account below a position of its output partition in, priced lines and debits (as the
//! topics carry them, with their source offsets) out. Amounts come back exact from their
//! scaled `Decimal` columns.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::catalog::AssetType;
use crate::debit::{
    Components, CorrectionRef, Debit, DebitKind, LineKind, PricedLine, PricedUnit, direct_debit_id,
};
use crate::follow::Positions;
use crate::money::{DEBIT_SCALE, LINE_COST_SCALE};
use crate::trace::stream::Filter;

pub(crate) fn dec(v: i128, scale: u32) -> Decimal {
    Decimal::try_from_i128_with_scale(v, scale)
        .map(|d| d.normalize())
        .unwrap_or_default()
}

pub(crate) fn at(secs: u32, nanos: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(secs), nanos.min(999_999_999)).unwrap_or_default()
}

/// The columns of a priced line, in [`LINE_COLUMNS`] order.
#[derive(clickhouse::Row, serde::Deserialize)]
pub(crate) struct LineRecord {
    event_id: String,
    kind: String,
    occurred_at: u32,
    occurred_at_nanos: u32,
    account_id: String,
    execution_id: String,
    agent_id: String,
    component: String,
    dimension_keys: Vec<String>,
    dimension_values: Vec<String>,
    asset_id: String,
    asset_name_sent: String,
    asset_type: String,
    vendor: String,
    units: Vec<String>,
    quantities: Vec<i128>,
    unit_credits: Vec<i128>,
    unit_per: Vec<u64>,
    cost: i128,
    price_version: String,
    tier: String,
    plan: String,
    plan_version: String,
    plan_rule: String,
    discount_percent: i128,
    event_partition: i32,
    event_offset: i64,
    src_offset: i64,
}

pub(crate) const LINE_COLUMNS: &str = "event_id, kind, toUInt32(occurred_at) AS occurred_at, occurred_at_nanos, account_id, execution_id, agent_id, component, dimension_keys, dimension_values, asset_id, asset_name_sent, asset_type, vendor, units, quantities, unit_credits, unit_per, cost, price_version, tier, plan, plan_version, plan_rule, discount_percent, event_partition, event_offset, src_offset";

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl LineRecord {
    /// The priced line as the topic carried it, and its offset there.
    pub(crate) fn into_line(self) -> (i64, PricedLine) {
        let asset_type = AssetType::ALL
            .into_iter()
            .find(|t| t.as_str() == self.asset_type)
            .unwrap_or(AssetType::Tool);
        let units = self
            .units
            .into_iter()
            .enumerate()
            .map(|(i, unit)| PricedUnit {
                unit,
                quantity: dec(
                    self.quantities.get(i).copied().unwrap_or(0),
                    LINE_COST_SCALE,
                ),
                credits: dec(
                    self.unit_credits.get(i).copied().unwrap_or(0),
                    LINE_COST_SCALE,
                ),
                per: self.unit_per.get(i).copied().unwrap_or(1),
            })
            .collect();
        let line = PricedLine {
            event_id: self.event_id,
            kind: if self.kind == "model_call" {
                LineKind::ModelCall
            } else {
                LineKind::ToolCall
            },
            occurred_at: at(self.occurred_at, self.occurred_at_nanos),
            account_id: self.account_id,
            execution_id: opt(self.execution_id),
            agent_id: opt(self.agent_id),
            component: opt(self.component),
            asset_name_sent: (self.asset_name_sent != self.asset_id)
                .then_some(self.asset_name_sent),
            asset_id: self.asset_id,
            asset_type,
            vendor: self.vendor,
            price_version: self.price_version,
            tier: opt(self.tier),
            plan: self.plan,
            plan_version: opt(self.plan_version),
            plan_rule: opt(self.plan_rule),
            discount_percent: (self.discount_percent != 0)
                .then(|| dec(self.discount_percent, LINE_COST_SCALE)),
            units,
            cost: dec(self.cost, LINE_COST_SCALE),
            dimensions: self
                .dimension_keys
                .into_iter()
                .zip(self.dimension_values)
                .collect(),
            event_partition: self.event_partition,
            event_offset: self.event_offset,
        };
        (self.src_offset, line)
    }
}

/// The columns of a debit, in [`DEBIT_COLUMNS`] order.
#[derive(clickhouse::Row, serde::Deserialize)]
pub(crate) struct DebitRecord {
    debit_id: String,
    kind: String,
    account_id: String,
    execution_id: String,
    subtotal: i128,
    models: i128,
    tools: i128,
    markup_rate: i128,
    markup: i128,
    total: i128,
    calls: u32,
    first_event_at: u32,
    last_event_at: u32,
    plan: String,
    plan_version: String,
    correction_id: String,
    correction_reason: String,
    corrects: Vec<String>,
    src_offset: i64,
}

pub(crate) const DEBIT_COLUMNS: &str = "debit_id, kind, account_id, execution_id, subtotal, models, tools, markup_rate, markup, total, calls, toUInt32(first_event_at) AS first_event_at, toUInt32(last_event_at) AS last_event_at, plan, plan_version, correction_id, correction_reason, corrects, src_offset";

impl DebitRecord {
    /// The debit (without its per-asset breakdown, which ClickHouse keeps only in part: the
    /// components say the split), and its offset in the debits topic.
    pub(crate) fn into_debit(self) -> (i64, Debit) {
        let kind = DebitKind::ALL
            .into_iter()
            .find(|k| k.as_str() == self.kind)
            .unwrap_or(DebitKind::AgentExecutionAdjustment);
        let d = Debit {
            debit_id: self.debit_id,
            kind,
            account_id: self.account_id,
            execution_id: opt(self.execution_id),
            plan: self.plan,
            plan_version: opt(self.plan_version),
            subtotal: dec(self.subtotal, DEBIT_SCALE),
            markup_rate: dec(self.markup_rate, DEBIT_SCALE),
            markup: dec(self.markup, DEBIT_SCALE),
            total: dec(self.total, DEBIT_SCALE),
            calls: self.calls,
            first_event_at: at(self.first_event_at, 0),
            last_event_at: at(self.last_event_at, 0),
            breakdown: Vec::new(),
            components: Components {
                models: dec(self.models, DEBIT_SCALE),
                tools: dec(self.tools, DEBIT_SCALE),
                markup: dec(self.markup, DEBIT_SCALE),
            },
            correction: (!self.correction_id.is_empty()).then_some(CorrectionRef {
                correction_id: self.correction_id,
                reason: self.correction_reason,
                corrects: self.corrects,
            }),
        };
        (self.src_offset, d)
    }
}

/// Lines and debits of `filter` in partition `p` below `below`, in offset order.
pub async fn read(
    ch: &clickhouse::Client,
    filter: &Filter,
    p: i32,
    below: Positions,
) -> Result<(Vec<(i64, PricedLine)>, Vec<(i64, Debit)>), clickhouse::error::Error> {
    let lines: Vec<LineRecord> = match filter {
        Filter::Execution {
            account_id,
            execution_id,
        } => {
            ch.query(&format!("SELECT {LINE_COLUMNS} FROM usage_transactions WHERE account_id = ? AND execution_id = ? AND src_partition = ? AND src_offset < ? ORDER BY src_offset"))
                .bind(account_id)
                .bind(execution_id)
                .bind(p)
                .bind(below.lines)
                .fetch_all()
                .await?
        }
        Filter::Conversation {
            account_id,
            key,
            value,
        } => {
            ch.query(&format!("SELECT {LINE_COLUMNS} FROM usage_transactions WHERE account_id = ? AND has(dimension_keys, ?) AND dimension_values[indexOf(dimension_keys, ?)] = ? AND src_partition = ? AND src_offset < ? ORDER BY src_offset"))
                .bind(account_id)
                .bind(key)
                .bind(key)
                .bind(value)
                .bind(p)
                .bind(below.lines)
                .fetch_all()
                .await?
        }
    };
    let lines: Vec<(i64, PricedLine)> = lines.into_iter().map(LineRecord::into_line).collect();
    let (executions, direct): (Vec<String>, Vec<String>) = match filter {
        Filter::Execution { execution_id, .. } => (vec![execution_id.clone()], Vec::new()),
        Filter::Conversation { .. } => {
            let mut e: Vec<String> = lines
                .iter()
                .filter_map(|(_, l)| l.execution_id.clone())
                .collect();
            e.sort();
            e.dedup();
            let d = lines
                .iter()
                .filter(|(_, l)| l.execution_id.is_none())
                .map(|(_, l)| direct_debit_id(&l.account_id, &l.event_id))
                .collect();
            (e, d)
        }
    };
    // `has(array, column)` (18.16 has no `IN` over an array); an empty array is left out.
    let mut of = Vec::new();
    if !executions.is_empty() {
        of.push(("has(?, execution_id)", executions));
    }
    if !direct.is_empty() {
        of.push(("has(?, debit_id)", direct));
    }
    let debits: Vec<DebitRecord> = if of.is_empty() {
        Vec::new()
    } else {
        let cond: Vec<&str> = of.iter().map(|(c, _)| *c).collect();
        let mut q = ch
            .query(&format!("SELECT {DEBIT_COLUMNS} FROM debits WHERE account_id = ? AND ({}) AND src_partition = ? AND src_offset < ? ORDER BY src_offset", cond.join(" OR ")))
            .bind(filter.account_id());
        for (_, ids) in &of {
            q = q.bind(ids);
        }
        q.bind(p).bind(below.debits).fetch_all().await?
    };
    Ok((
        lines,
        debits.into_iter().map(DebitRecord::into_debit).collect(),
    ))
}

/// Lines and debits of `account`'s `executions` in partition `p` below `below`, in offset
/// order: one query per table for all of them ([`super::batch`]).
pub async fn read_executions(
    ch: &clickhouse::Client,
    account: &str,
    executions: &[String],
    p: i32,
    below: Positions,
) -> Result<(Vec<(i64, PricedLine)>, Vec<(i64, Debit)>), clickhouse::error::Error> {
    // `has(array, column)`: 18.16 has no `IN` over an array parameter.
    let lines: Vec<LineRecord> = ch
        .query(&format!("SELECT {LINE_COLUMNS} FROM usage_transactions WHERE account_id = ? AND has(?, execution_id) AND src_partition = ? AND src_offset < ? ORDER BY src_offset"))
        .bind(account)
        .bind(executions)
        .bind(p)
        .bind(below.lines)
        .fetch_all()
        .await?;
    let debits: Vec<DebitRecord> = ch
        .query(&format!("SELECT {DEBIT_COLUMNS} FROM debits WHERE account_id = ? AND has(?, execution_id) AND src_partition = ? AND src_offset < ? ORDER BY src_offset"))
        .bind(account)
        .bind(executions)
        .bind(p)
        .bind(below.debits)
        .fetch_all()
        .await?;
    Ok((
        lines.into_iter().map(LineRecord::into_line).collect(),
        debits.into_iter().map(DebitRecord::into_debit).collect(),
    ))
}

/// Where ClickHouse stands in partition `p` of each output topic (one past the highest
/// source offset it holds): the position below which it holds everything, when the sink's
/// group never committed.
pub async fn held_positions(
    ch: &clickhouse::Client,
    p: i32,
) -> Result<Positions, clickhouse::error::Error> {
    let next = |table: &'static str| async move {
        let (max, n): (i64, u64) = ch
            .query(&format!(
                "SELECT max(src_offset), count() FROM {table} WHERE src_partition = ?"
            ))
            .bind(p)
            .fetch_one()
            .await?;
        Ok::<i64, clickhouse::error::Error>(if n == 0 { 0 } else { max + 1 })
    };
    Ok(Positions {
        lines: next("usage_transactions").await?,
        debits: next("debits").await?,
    })
}
