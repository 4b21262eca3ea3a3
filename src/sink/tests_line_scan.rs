//! The fast priced-line decoder against the serde path: the same row and id for every line
//! it accepts (arbitrary lines, mutated ones), and it accepts every line of the shape the
//! service writes.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::line_scan;
use super::rows::{Source, transaction_row_serde};
use crate::catalog::AssetType;
use crate::debit::{LineKind, PricedLine, PricedUnit};

const SRC: Source = Source {
    partition: 3,
    offset: 77,
    ingested_at: 1_772_323_200,
};

/// Both paths on one payload: when the fast one answers, serde must give the same id and row.
fn agree(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let Some((id, row)) = line_scan::scan(bytes, SRC) else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(bytes);
    match transaction_row_serde(bytes, SRC) {
        Ok((sid, srow)) => {
            prop_assert_eq!(&id, &sid, "{}", text);
            prop_assert_eq!(format!("{row:?}"), format!("{srow:?}"), "{}", text);
        }
        Err(e) => prop_assert!(false, "fast path accepted what serde refuses ({e}): {text}"),
    }
    Ok(true)
}

fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:/-]{0,30}"
}

/// Decimals the service writes: at most 12 decimals after normalizing, any sign.
fn money() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), 0u32..=12, 0u32..=4).prop_map(|(m, s, zeros)| {
        // Trailing zeros beyond the value's own scale, as an unnormalized decimal has.
        let d = Decimal::new(m / 1000, s);
        let mut t = d;
        t.rescale((s + zeros).min(28));
        t
    })
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (
        0i64..4_102_444_800,
        prop_oneof![
            Just(0u32),
            (0u32..1000).prop_map(|n| n * 1_000_000),
            (0u32..1_000_000).prop_map(|n| n * 1000),
            0u32..1_000_000_000,
        ],
    )
        .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
}

prop_compose! {
    /// A line as the rating core writes it (ids without escapes, decimals that fit).
    fn service_line()(
        ids in proptest::collection::vec(id(), 7),
        opts in proptest::collection::vec(proptest::option::of(id()), 7),
        discount in proptest::option::of(money()),
        model in any::<bool>(),
        at in time(),
        ty in prop_oneof![Just(AssetType::Model), Just(AssetType::Tool), Just(AssetType::Integration)],
        units in proptest::collection::vec((id(), money(), money(), any::<u64>()), 0..4),
        cost in money(),
        dims in proptest::collection::btree_map(id(), "[ !#-Z^-~é]{0,12}", 0..4),
        part in any::<i32>(),
        off in any::<i64>(),
    ) -> PricedLine {
        PricedLine {
            event_id: ids[0].clone(),
            kind: if model { LineKind::ModelCall } else { LineKind::ToolCall },
            occurred_at: at,
            account_id: ids[1].clone(),
            execution_id: opts[0].clone(),
            agent_id: opts[1].clone(),
            component: opts[2].clone(),
            asset_id: ids[2].clone(),
            asset_name_sent: opts[3].clone(),
            asset_type: ty,
            vendor: ids[3].clone(),
            price_version: ids[4].clone(),
            tier: opts[4].clone(),
            plan: ids[5].clone(),
            plan_version: opts[5].clone(),
            plan_rule: opts[6].clone(),
            discount_percent: discount,
            units: units
                .into_iter()
                .map(|(unit, quantity, credits, per)| PricedUnit { unit, quantity, credits, per })
                .collect(),
            cost,
            dimensions: dims,
            event_partition: part,
            event_offset: off,
        }
    }
}

/// Bytes to splice into a payload: JSON syntax, number and escape characters.
fn splice() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(
            prop_oneof![
                Just(b'"'),
                Just(b'\\'),
                Just(b'-'),
                Just(b'0'),
                Just(b'9'),
                Just(b'.'),
                Just(b','),
                Just(b':'),
                Just(b'}'),
                Just(b']'),
                Just(b' '),
                Just(b'e'),
                Just(b'Z'),
                Just(0x01),
                Just(0xff),
            ],
            0..3
        ),
        Just(b"null".to_vec()),
        Just(b"\"x\"".to_vec()),
        Just(b",\"tier\":\"t\"".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn every_line_the_service_writes_takes_the_fast_path(l in service_line()) {
        let bytes = l.encode();
        prop_assert!(agree(&bytes)?, "declined: {}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_lines_decode_as_serde_does(l in crate::debit::json::tests::line()) {
        agree(&l.encode())?;
    }

    #[test]
    fn mutated_lines_decode_as_serde_does_or_are_declined(
        l in service_line(),
        at in any::<prop::sample::Index>(),
        cut in 0usize..3,
        with in splice(),
    ) {
        let mut bytes = l.encode();
        let i = at.index(bytes.len());
        let end = (i + cut).min(bytes.len());
        bytes.splice(i..end, with);
        agree(&bytes)?;
    }
}

#[test]
fn pinned_lines() {
    let line = |s: &str| s.as_bytes().to_vec();
    let base = r#"{"event_id":"e1","kind":"model_call","occurred_at":"2026-03-01T10:00:00.250Z","account_id":"acct","execution_id":"x1","agent_id":null,"component":"planner","asset_id":"gpt-4o","asset_name_sent":"gpt-4o-latest","asset_type":"model","vendor":"openai","price_version":"v3","tier":"standard","plan":"default","units":[{"unit":"input_tokens","quantity":"1200","credits":"0.0000025","per":1}],"cost":"0.003","dimensions":{"region":"eu","team":"a"},"event_partition":2,"event_offset":41}"#;
    let (id, row) = line_scan::scan(base.as_bytes(), SRC).expect("fast path");
    assert_eq!(id, "acct\nx1\ne1");
    assert_eq!(row.occurred_at, 1_772_359_200);
    assert_eq!(row.occurred_at_nanos, 250_000_000);
    assert_eq!(row.cost, 3_000_000_000);
    assert_eq!(row.unit_credits, vec![2_500_000]);
    assert_eq!(row.quantities, vec![1_200_000_000_000_000]);
    assert_eq!(row.agent_id, "");
    assert_eq!(row.asset_name_sent, "gpt-4o-latest");
    assert_eq!(row.dimension_keys, vec!["region", "team"]);
    // Declined, and serde's answer stands: escapes, whitespace, a leap second, 13 decimals,
    // `-0`, keys out of order, a repeated dimension, trailing text.
    for declined in [
        base.replace("\"e1\"", "\"e\\u0031\""),
        base.replace("\"kind\":", "\"kind\": "),
        base.replace("10:00:00.250Z", "23:59:60.250Z"),
        base.replace("\"0.003\"", "\"0.0000000000001\""),
        base.replace("\"event_partition\":2", "\"event_partition\":-0"),
        base.replace(
            "\"region\":\"eu\",\"team\":\"a\"",
            "\"team\":\"a\",\"region\":\"eu\"",
        ),
        base.replace("\"team\":\"a\"", "\"region\":\"a\""),
        format!("{base} "),
        base.replace("\"cost\":\"0.003\"", "\"cost\":\"00.003\""),
        base.replace("2026-03-01", "2026-02-30"),
    ] {
        assert!(
            line_scan::scan(&line(&declined), SRC).is_none(),
            "{declined}"
        );
    }
    assert!(
        transaction_row_serde(
            &line(&base.replace("\"0.003\"", "\"0.0000000000001\"")),
            SRC
        )
        .is_err()
    );
}
