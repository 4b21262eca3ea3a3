//! The sink's ledger-row decoder against decoding the whole balance entry with serde (the
//! path it replaced, kept here as the reference): the same id and row, or both refusing, for
//! arbitrary entries as the ledger writes them (serde_json, compact), for format-1 entries,
//! and for entries missing a required field.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::ledger_rows::{LedgerRow, ledger_row, scaled, secs};
use super::rows::{RowError, Source};
use crate::ledger::core::{BalanceEvent, EntryKind, EntryLine, EntrySource, GrantTerms, GrantView};
use crate::ledger::funding::{Category, FundingCategory, FundingLine};
use crate::money::{DEBIT_SCALE, LINE_COST_SCALE, to_scaled_i128};

const SRC: Source = Source {
    partition: 2,
    offset: 41,
    ingested_at: 1_772_323_200,
};

/// The reference: the whole [`BalanceEvent`] by serde, then the row (the sink's code before
/// its own decoder).
fn reference(bytes: &[u8], src: Source) -> Result<(String, LedgerRow), RowError> {
    let e: BalanceEvent = serde_json::from_slice(bytes).map_err(|source| RowError::Json {
        table: "ledger",
        source,
    })?;
    let (credit, debit) = if e.amount.is_sign_negative() {
        (Decimal::ZERO, -e.amount)
    } else {
        (e.amount, Decimal::ZERO)
    };
    let mut costs = Vec::new();
    for l in &e.lines {
        costs.push(to_scaled_i128(l.cost, LINE_COST_SCALE)?);
    }
    let row = LedgerRow {
        entry_id: e.entry_id.clone(),
        account_id: e.account_id,
        seq: e.seq,
        occurred_at: secs(e.occurred_at),
        kind: e.kind.as_str(),
        reference: e.reference,
        description: e.description,
        category: e.grant.as_ref().map(|g| g.category.as_str()).unwrap_or(""),
        priority: e.grant.as_ref().map(|g| g.priority),
        expires_at: e.grant.as_ref().and_then(|g| g.expires_at).map(secs),
        credit: to_scaled_i128(credit, DEBIT_SCALE)?,
        debit: to_scaled_i128(debit, DEBIT_SCALE)?,
        balance_after: to_scaled_i128(e.balance_after, DEBIT_SCALE)?,
        funded_grants: e
            .funded_by
            .iter()
            .map(|f| f.grant_id.clone().unwrap_or_default())
            .collect(),
        funded_categories: e.funded_by.iter().map(|f| f.category.as_str()).collect(),
        funded_amounts: scaled(e.funded_by.iter().map(|f| f.amount))?,
        overdraft: to_scaled_i128(e.overdraft, DEBIT_SCALE)?,
        open_grants: e.grants.iter().map(|g| g.grant_id.clone()).collect(),
        open_categories: e.grants.iter().map(|g| g.category.as_str()).collect(),
        open_priorities: e.grants.iter().map(|g| g.priority).collect(),
        open_expires: e.grants.iter().map(|g| g.expires_at.map(secs)).collect(),
        open_remaining: scaled(e.grants.iter().map(|g| g.remaining))?,
        assets: e.lines.iter().map(|l| l.asset_id.clone()).collect(),
        asset_calls: e.lines.iter().map(|l| l.calls).collect(),
        asset_quantities: e
            .lines
            .iter()
            .map(|l| serde_json::to_string(&l.quantities).unwrap())
            .collect(),
        asset_costs: costs,
        src_partition: src.partition,
        src_offset: src.offset,
        ingested_at: src.ingested_at,
    };
    Ok((e.entry_id, row))
}

/// Both decoders on one payload: the same id and row, or both refuse.
fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    match (ledger_row(bytes, SRC), reference(bytes, SRC)) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", text),
        (Err(_), Err(_)) => {}
        (a, b) => prop_assert!(
            false,
            "one refused: {:?} vs {:?}: {}",
            a.err(),
            b.err(),
            text
        ),
    }
    Ok(())
}

/// Any text, with quotes, backslashes, control and non-ASCII characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9_-]{0,24}", "\\PC{0,12}", ".{0,8}"]
}

/// Decimals of any sign, some beyond the columns' scale (both must refuse those).
fn decimal() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), 0u32..=22).prop_map(|(m, s)| Decimal::new(m, s))
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000, 0u32..1_000)
        .prop_map(|(s, ms)| Utc.timestamp_opt(s, ms * 1_000_000).single().unwrap())
}

fn category() -> impl Strategy<Value = Category> {
    prop::sample::select(Category::ALL.to_vec())
}

fn grant_view() -> impl Strategy<Value = GrantView> {
    (
        text(),
        category(),
        any::<u8>(),
        prop::option::of(time()),
        decimal(),
        decimal(),
    )
        .prop_map(
            |(grant_id, category, priority, expires_at, amount, remaining)| GrantView {
                grant_id,
                category,
                priority,
                expires_at,
                amount,
                remaining,
            },
        )
}

fn line() -> impl Strategy<Value = EntryLine> {
    (
        text(),
        any::<u32>(),
        prop::collection::btree_map(text(), decimal(), 0..4),
        decimal(),
    )
        .prop_map(|(asset_id, calls, quantities, cost)| EntryLine {
            asset_id,
            calls,
            quantities: quantities.into_iter().collect::<BTreeMap<_, _>>(),
            cost,
        })
}

fn funding() -> impl Strategy<Value = FundingLine> {
    (
        prop::option::of(text()),
        prop::sample::select(vec![
            FundingCategory::Paid,
            FundingCategory::Promotional,
            FundingCategory::Overdraft,
        ]),
        decimal(),
    )
        .prop_map(|(grant_id, category, amount)| FundingLine {
            grant_id,
            category,
            amount,
        })
}

fn entry() -> impl Strategy<Value = BalanceEvent> {
    (
        (
            1u32..=2,
            text(),
            text(),
            any::<u64>(),
            prop::sample::select(EntryKind::ALL.to_vec()),
            text(),
            text(),
        ),
        (decimal(), decimal(), decimal(), time(), decimal()),
        prop::collection::vec(line(), 0..3),
        prop::collection::vec(funding(), 0..3),
        prop::option::of((category(), any::<u8>(), prop::option::of(time()))),
        prop::collection::vec(grant_view(), 0..3),
        prop::option::of(grant_view()),
    )
        .prop_map(
            |(
                (v, entry_id, account_id, seq, kind, reference, description),
                (amount, balance_before, balance_after, occurred_at, overdraft),
                lines,
                funded_by,
                grant,
                grants,
                next_expiry,
            )| BalanceEvent {
                v,
                entry_id,
                account_id,
                seq,
                kind,
                reference,
                description,
                amount,
                balance_before,
                balance_after,
                occurred_at,
                lines,
                source: EntrySource {
                    topic: "debits".into(),
                    partition: 1,
                    offset: 9,
                },
                funded_by,
                grant: grant.map(|(category, priority, expires_at)| GrantTerms {
                    category,
                    priority,
                    expires_at,
                }),
                grants,
                overdraft,
                next_expiry,
            },
        )
}

/// A decimal the ledger could write: at most 8 decimals, below 10^15.
fn fit(d: Decimal) -> Decimal {
    Decimal::new(
        (d.mantissa() % 1_000_000_000_000_000) as i64,
        d.scale().min(8),
    )
}

/// The entry's decimals made ones the ledger could write (these must decode).
fn in_scale(e: &mut BalanceEvent) {
    for d in [
        &mut e.amount,
        &mut e.balance_before,
        &mut e.balance_after,
        &mut e.overdraft,
    ] {
        *d = fit(*d);
    }
    e.overdraft = e.overdraft.abs();
    for l in &mut e.lines {
        l.cost = fit(l.cost);
    }
    for f in &mut e.funded_by {
        f.amount = fit(f.amount);
    }
    for g in &mut e.grants {
        g.remaining = fit(g.remaining);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_row_is_the_whole_entrys_row(e in entry()) {
        agree(&serde_json::to_vec(&e).unwrap())?;
    }

    #[test]
    fn entries_within_scale_decode_to_the_whole_entrys_row(mut e in entry()) {
        in_scale(&mut e);
        let bytes = serde_json::to_vec(&e).unwrap();
        prop_assert!(ledger_row(&bytes, SRC).is_ok(), "{}", String::from_utf8_lossy(&bytes));
        agree(&bytes)?;
    }

    #[test]
    fn an_entry_without_a_required_field_is_refused_by_both(
        e in entry(),
        field in prop::sample::select(vec![
            "entry_id", "account_id", "seq", "kind", "reference", "description", "amount",
            "balance_before", "balance_after", "occurred_at", "source",
        ]),
    ) {
        let mut j = serde_json::to_value(&e).unwrap();
        j.as_object_mut().unwrap().remove(field);
        let bytes = serde_json::to_vec(&j).unwrap();
        prop_assert!(ledger_row(&bytes, SRC).is_err(), "{field}");
        agree(&bytes)?;
    }
}

#[test]
fn a_format_1_entry_decodes_with_the_defaults() {
    let bytes = br#"{"entry_id":"le_1","account_id":"acct-1","seq":3,"kind":"debit","reference":"dc_1","description":"run","amount":"-0.96","balance_before":"10","balance_after":"9.04","occurred_at":"2026-03-01T00:00:04.780Z","lines":[{"asset_id":"llm","calls":1,"quantities":{"calls":"1"},"cost":"0.5"}],"source":{"topic":"debits","partition":0,"offset":4}}"#;
    let (id, row) = ledger_row(bytes, SRC).unwrap();
    assert_eq!(id, "le_1");
    assert_eq!((id.clone(), row.clone()), reference(bytes, SRC).unwrap());
    assert_eq!(
        row.debit,
        to_scaled_i128(Decimal::new(96, 2), DEBIT_SCALE).unwrap()
    );
    assert_eq!(row.asset_quantities, vec![r#"{"calls":"1"}"#.to_string()]);
    assert!(row.funded_grants.is_empty() && row.open_grants.is_empty());
    assert_eq!((row.category, row.priority, row.overdraft), ("", None, 0));
}

#[test]
fn a_json_error_names_the_ledger_table() {
    let err = ledger_row(br#"{"entry_id": 5}"#, SRC).unwrap_err();
    assert!(err.to_string().contains("ledger"), "{err}");
}
