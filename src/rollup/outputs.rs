//! What the rollup emits, built from its state: an execution's debit (or its running cost),
//! the debit of a single call (direct use, late adjustment), and the keys that scope ids by
//! tenant.

use rust_decimal::Decimal;

use super::OpenExecution;
use crate::debit::{BreakdownLine, Components, Debit, DebitKind, PricedLine};
use crate::event::UsageEvent;
use crate::money;

/// The debit of an execution's state (also its running cost, with an empty id).
pub(super) fn execution_debit(
    exec_id: &str,
    o: &OpenExecution,
    markup_rate: Decimal,
    debit_id: String,
) -> Debit {
    let markup = money::debit_markup(o.subtotal, markup_rate);
    let breakdown: Vec<BreakdownLine> = o
        .breakdown
        .iter()
        .map(|(asset_id, a)| BreakdownLine {
            asset_id: asset_id.clone(),
            asset_type: a.asset_type,
            calls: a.calls,
            quantities: a
                .quantities
                .iter()
                .map(|(u, q)| (u.clone(), q.normalize()))
                .collect(),
            cost: a.cost.normalize(),
        })
        .collect();
    Debit {
        debit_id,
        kind: DebitKind::AgentExecution,
        account_id: o.account_id.clone(),
        execution_id: Some(exec_id.to_string()),
        subtotal: o.subtotal.normalize(),
        markup_rate: markup_rate.normalize(),
        markup,
        total: (o.subtotal + markup).normalize(),
        calls: o.calls_priced,
        first_event_at: o.first_event_at,
        last_event_at: o.last_event_at,
        components: Components::of(&breakdown, markup),
        breakdown,
    }
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
        subtotal: line.cost,
        markup_rate: markup_rate.normalize(),
        markup,
        total: (line.cost + markup).normalize(),
        calls: 1,
        first_event_at: line.occurred_at,
        last_event_at: line.occurred_at,
        components: Components::of(&breakdown, markup),
        breakdown,
    }
}
