//! What the rollup emits, built from its state: an execution's debit (or its running cost),
//! the debit of a single call (direct use, late adjustment), and the keys that scope ids by
//! tenant.

use rust_decimal::Decimal;

use super::OpenExecution;
use crate::debit::{BreakdownLine, Components, Debit, DebitKind, PricedLine};
use crate::event::UsageEvent;
use crate::money;
use crate::plans::ResolvedPlan;

/// The debit of an execution's state (also its running cost, with an empty id), marked up
/// at `plan`'s rate (else `configured_markup`).
pub(super) fn execution_debit(
    exec_id: &str,
    o: &OpenExecution,
    plan: ResolvedPlan<'_>,
    configured_markup: Decimal,
    debit_id: String,
) -> Debit {
    let markup_rate = plan.markup_rate(configured_markup);
    let markup = money::debit_markup(o.subtotal, markup_rate);
    let breakdown: Vec<BreakdownLine> = o
        .breakdown
        .iter()
        .map(|(key, a)| {
            let (asset_id, price_version) = split_breakdown_key(key);
            BreakdownLine {
                asset_id: asset_id.to_string(),
                asset_type: a.asset_type,
                price_version: price_version.to_string(),
                calls: a.calls,
                quantities: a
                    .quantities
                    .iter()
                    .map(|(u, q)| (u.clone(), q.normalize()))
                    .collect(),
                cost: a.cost.normalize(),
            }
        })
        .collect();
    Debit {
        debit_id,
        kind: DebitKind::AgentExecution,
        account_id: o.account_id.clone(),
        execution_id: Some(exec_id.to_string()),
        plan: plan.plan_id.to_string(),
        plan_version: plan.label.map(str::to_string),
        subtotal: o.subtotal.normalize(),
        markup_rate: markup_rate.normalize(),
        markup,
        total: (o.subtotal + markup).normalize(),
        calls: o.calls_priced,
        first_event_at: o.first_event_at,
        last_event_at: o.last_event_at,
        components: Components::of(&breakdown, markup),
        breakdown,
        correction: None,
    }
}

/// Key of an execution's breakdown entry: one per (asset, price version), U+0000 between
/// (ids hold no control characters). State written before versions were recorded holds the
/// asset id alone, read back with an empty version.
pub(super) fn breakdown_key(asset_id: &str, price_version: &str) -> String {
    let mut k = String::with_capacity(asset_id.len() + 1 + price_version.len());
    k.push_str(asset_id);
    k.push('\0');
    k.push_str(price_version);
    k
}

/// (asset_id, price_version) of a [`breakdown_key`].
pub(super) fn split_breakdown_key(key: &str) -> (&str, &str) {
    key.split_once('\0').unwrap_or((key, ""))
}

/// Key of an execution: (account_id, execution_id). Ids hold no control character (the
/// decoder refuses them), so U+0000 separates the two unambiguously.
pub(super) fn exec_key(account_id: &str, execution_id: &str) -> String {
    let mut k = String::with_capacity(account_id.len() + 1 + execution_id.len());
    k.push_str(account_id);
    k.push('\0');
    k.push_str(execution_id);
    k
}

/// (account_id, execution_id) of an [`exec_key`].
pub(super) fn split_key(key: &str) -> (&str, &str) {
    key.split_once('\0').unwrap_or(("", key))
}

/// Hash of an event's idempotency key: (account_id, execution_id or none, event_id), the
/// scope of its Kafka key. A producer retry repeats all three; the same event_id in another
/// account or another execution is another event.
pub(super) fn dedupe_key(ev: &UsageEvent) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [
        ev.account_id.as_str(),
        ev.execution_id.as_deref().unwrap_or("\0"),
        ev.event_id.as_str(),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.digest()
}

pub(super) fn single_line_debit(
    debit_id: String,
    kind: DebitKind,
    execution_id: Option<&str>,
    line: &PricedLine,
    markup_rate: Decimal,
) -> Debit {
    let markup = money::debit_markup(line.cost, markup_rate);
    let breakdown = vec![BreakdownLine {
        asset_id: line.asset_id.clone(),
        asset_type: line.asset_type,
        price_version: line.price_version.clone(),
        calls: 1,
        quantities: line
            .units
            .iter()
            .map(|u| (u.unit.clone(), u.quantity))
            .collect(),
        cost: line.cost,
    }];
    Debit {
        debit_id,
        kind,
        account_id: line.account_id.clone(),
        execution_id: execution_id.map(str::to_string),
        plan: line.plan.clone(),
        plan_version: line.plan_version.clone(),
        subtotal: line.cost,
        markup_rate: markup_rate.normalize(),
        markup,
        total: (line.cost + markup).normalize(),
        calls: 1,
        first_event_at: line.occurred_at,
        last_event_at: line.occurred_at,
        components: Components::of(&breakdown, markup),
        breakdown,
        correction: None,
    }
}
