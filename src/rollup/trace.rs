//! The live trace of an open execution: each priced call in (from its [`PricedLine`] and the
//! execution's subtotal after it), a bounded list out (`rollup.max_trace_calls` calls per
//! execution; beyond it calls are still rolled up and counted, but not listed), read by the
//! execution trace API through the pipeline's query handle (with the running cost, from the
//! rollup's state). Not an output: the trace never
//! changes a debit, and dropping it changes no replay.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::outputs::{exec_key, execution_debit, split_key};
use crate::catalog::AssetType;
use crate::debit::{Debit, PricedLine, PricedUnit};
use crate::plans::PlanBook;

/// Calls listed per open execution unless configured (`rollup.max_trace_calls`).
pub const DEFAULT_MAX_TRACE_CALLS: usize = 200;

/// One priced call of an open execution, as the rating core priced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracedCall {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    /// The canonical asset priced (never an alias).
    pub asset_id: String,
    pub asset_type: AssetType,
    /// Per unit: the quantity, the unit price in credits and the quantity it is quoted per
    /// (`credits` per `per` units), as on the priced line.
    pub units: Vec<PricedUnit>,
    /// The catalog version that priced the call.
    pub price_version: String,
    /// The tier of that version that priced every unit of the call (`None`: untiered).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tier: Option<String>,
    /// The plan in force for the account at the call's time (`default` without one), its
    /// version and the rule of it that changed the price, if any.
    pub plan: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plan_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plan_rule: Option<String>,
    /// Credits of this call, before markup (exact).
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    /// The execution's subtotal (sum of its calls' costs, before markup) after this call.
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal_after: Decimal,
}

impl TracedCall {
    /// The trace entry of `line`, priced into an execution whose subtotal is now `subtotal`.
    pub(super) fn of(line: &PricedLine, subtotal: Decimal) -> TracedCall {
        TracedCall {
            event_id: line.event_id.clone(),
            occurred_at: line.occurred_at,
            asset_id: line.asset_id.clone(),
            asset_type: line.asset_type,
            units: line.units.clone(),
            price_version: line.price_version.clone(),
            tier: line.tier.clone(),
            plan: line.plan.clone(),
            plan_version: line.plan_version.clone(),
            plan_rule: line.plan_rule.clone(),
            cost: line.cost,
            subtotal_after: subtotal,
        }
    }
}

/// An open execution as the trace API shows it, copied out of the rollup's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenExecutionView {
    /// The running totals, shaped as the debit the execution would produce if it closed now
    /// (`debit_id` empty; `total` includes the markup; `calls` counts every priced call).
    pub running: Debit,
    /// The first priced calls in the order they were rated, at most `rollup.max_trace_calls`.
    pub calls: Vec<TracedCall>,
    /// Priced calls not in `calls` (beyond the bound): `running.calls - calls.len()`.
    pub calls_omitted: u32,
}

impl super::PartitionRollup {
    /// The running cost of an open execution, for the real-time API: of `account_id`'s
    /// execution if given, else of the earliest-opened execution with that id, under the
    /// plan of its account at its first call.
    pub fn running_cost(
        &self,
        execution_id: &str,
        account_id: Option<&str>,
        plans: &PlanBook,
    ) -> Option<Debit> {
        let o = match account_id {
            Some(a) => self.open.get(&exec_key(a, execution_id))?,
            None => self
                .open_by_first_offset
                .values()
                .find(|k| split_key(k).1 == execution_id)
                .and_then(|k| self.open.get(k))?,
        };
        Some(execution_debit(
            execution_id,
            o,
            plans.resolve(&o.account_id, o.first_event_at),
            self.cfg.markup_rate,
            String::new(),
        ))
    }

    /// `account_id`'s execution `execution_id` if it is open here: its running totals (as
    /// [`Self::running_cost`], under the plan of the account at its first call) and its
    /// first `max_trace_calls` priced calls, copied.
    pub fn open_execution(
        &self,
        account_id: &str,
        execution_id: &str,
        plans: &PlanBook,
    ) -> Option<OpenExecutionView> {
        let o = self.open.get(&exec_key(account_id, execution_id))?;
        let plan = plans.resolve(&o.account_id, o.first_event_at);
        let running = execution_debit(execution_id, o, plan, self.cfg.markup_rate, String::new());
        Some(OpenExecutionView {
            calls_omitted: running.calls.saturating_sub(o.calls.len() as u32),
            calls: o.calls.clone(),
            running,
        })
    }
}
