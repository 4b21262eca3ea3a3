//! The fast debit decoder against serde: the same `Debit`, field for field and byte for byte
//! once re-encoded (scale and sign of every decimal included), for every debit it accepts
//! (arbitrary, mutated); every debit of the shape the service writes takes the fast path.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;

use super::{decode, scan};
use crate::catalog::AssetType;
use crate::debit::{BreakdownLine, Components, CorrectionRef, Debit, DebitKind};

/// Equal as values and as bytes: `Decimal`'s `==` ignores scale and the sign of zero, the
/// encoder (byte-identical to serde's, `debit::json` tests) does not.
fn same(a: &Debit, b: &Debit) -> Result<(), TestCaseError> {
    prop_assert_eq!(a, b);
    prop_assert_eq!(
        String::from_utf8(a.encode()).unwrap(),
        String::from_utf8(b.encode()).unwrap()
    );
    Ok(())
}

/// Both decoders on one payload: when the fast one answers, serde must give the same debit;
/// [`decode`] always answers as serde does. `Ok(true)`: the fast path answered.
fn agree(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let serde = serde_json::from_slice::<Debit>(bytes);
    match (&serde, decode(bytes)) {
        (Ok(s), Ok(d)) => same(s, &d)?,
        (Err(s), Err(d)) => prop_assert_eq!(s.to_string(), d.to_string()),
        (s, d) => prop_assert!(false, "serde {s:?}, decode {d:?}: {text}"),
    }
    let Some(fast) = scan(bytes) else {
        return Ok(false);
    };
    match &serde {
        Ok(s) => same(s, &fast)?,
        Err(e) => prop_assert!(false, "fast path accepted what serde refuses ({e}): {text}"),
    }
    Ok(true)
}

fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:/é-]{0,30}"
}

/// Decimals the service writes: any sign, up to 12 decimals, trailing zeros kept.
fn money() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), 0u32..=12, 0u32..=4, any::<bool>()).prop_map(|(m, s, zeros, neg_zero)| {
        let mut d = if neg_zero && m % 7 == 0 {
            -Decimal::ZERO
        } else {
            Decimal::new(m / 1000, s)
        };
        d.rescale((s + zeros).min(28));
        d
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

fn asset_type() -> impl Strategy<Value = AssetType> {
    prop_oneof![
        Just(AssetType::Model),
        Just(AssetType::Tool),
        Just(AssetType::Integration)
    ]
}

prop_compose! {
    /// A debit as the rating core and `rerate` write it (ids without escapes, decimals that
    /// fit).
    fn service_debit()(
        ids in proptest::collection::vec(id(), 3),
        exec in proptest::option::of(id()),
        plan_version in proptest::option::of(id()),
        kind in 0usize..5,
        correction in proptest::option::of((id(), "[ -!#-\\[\\]-~]{0,40}", proptest::collection::vec(id(), 0..3))),
        money in proptest::collection::vec(money(), 7),
        calls in any::<u32>(),
        at in proptest::collection::vec(time(), 2),
        lines in proptest::collection::vec(
            (id(), asset_type(), id(), any::<u32>(), proptest::collection::btree_map(id(), money(), 0..4), money()),
            0..4,
        ),
    ) -> Debit {
        Debit {
            debit_id: ids[0].clone(),
            kind: DebitKind::ALL[kind],
            account_id: ids[1].clone(),
            execution_id: exec,
            plan: ids[2].clone(),
            plan_version,
            subtotal: money[0],
            markup_rate: money[1],
            markup: money[2],
            total: money[3],
            calls,
            first_event_at: at[0],
            last_event_at: at[1],
            breakdown: lines
                .into_iter()
                .map(|(asset_id, asset_type, price_version, calls, quantities, cost)| BreakdownLine {
                    asset_id,
                    asset_type,
                    price_version,
                    calls,
                    quantities,
                    cost,
                })
                .collect(),
            components: Components { models: money[4], tools: money[5], markup: money[6] },
            correction: correction.map(|(correction_id, reason, corrects)| CorrectionRef {
                correction_id,
                reason,
                corrects,
            }),
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
                Just(b'{'),
                Just(b'}'),
                Just(b'['),
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
        Just(b",\"plan_version\":\"v\"".to_vec()),
        Just(b",\"extra\":1".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn every_debit_the_service_writes_takes_the_fast_path(d in service_debit()) {
        let bytes = d.encode();
        prop_assert!(agree(&bytes)?, "declined: {}", String::from_utf8_lossy(&bytes));
        // And it is the debit that was written (by value: a `-0` written reads as `0`).
        prop_assert_eq!(&d, &scan(&bytes).unwrap());
    }

    #[test]
    fn arbitrary_debits_decode_as_serde_does(d in crate::debit::json::tests::debit()) {
        agree(&d.encode())?;
    }

    #[test]
    fn mutated_debits_decode_as_serde_does_or_are_declined(
        d in service_debit(),
        at in any::<prop::sample::Index>(),
        cut in 0usize..3,
        with in splice(),
    ) {
        let mut bytes = d.encode();
        let i = at.index(bytes.len());
        let end = (i + cut).min(bytes.len());
        bytes.splice(i..end, with);
        agree(&bytes)?;
    }
}

const BASE: &str = r#"{"debit_id":"ex_0123","kind":"agent_execution","account_id":"acct","execution_id":"x1","plan":"default","subtotal":"0.80","markup_rate":"0.2","markup":"0.160","total":"0.960","calls":3,"first_event_at":"2026-03-01T10:00:00.250Z","last_event_at":"2026-03-01T10:00:01Z","breakdown":[{"asset_id":"gpt-4o","asset_type":"model","price_version":"v3","calls":1,"quantities":{"input_tokens":"1200","output_tokens":"300"},"cost":"0.5"},{"asset_id":"web_search","asset_type":"tool","calls":2,"quantities":{},"cost":"0.30"}],"components":{"models":"0.5","tools":"0.30","markup":"0.160"}}"#;

#[test]
fn the_worked_example_decodes_exactly() {
    let d = scan(BASE.as_bytes()).expect("fast path");
    assert_eq!(d.total.to_string(), "0.960");
    assert_eq!(d.subtotal.scale(), 2);
    assert_eq!(d.markup + d.subtotal, d.total);
    assert_eq!(d.breakdown[1].price_version, "");
    assert_eq!(
        d.breakdown[0].quantities["output_tokens"].to_string(),
        "300"
    );
    assert_eq!(
        d.first_event_at.to_rfc3339(),
        "2026-03-01T10:00:00.250+00:00"
    );
    assert_eq!(d.encode(), BASE.as_bytes());
    let serde: Debit = serde_json::from_slice(BASE.as_bytes()).unwrap();
    assert_eq!(d, serde);
}

#[test]
fn outside_the_layout_serde_answers() {
    // Declined by the fast path; `decode` still answers as serde does (value or error).
    let cases = [
        BASE.replace("\"x1\"", "\"x\\u0031\""),  // escape
        BASE.replace("\"kind\":", "\"kind\": "), // whitespace
        BASE.replace("10:00:01Z", "23:59:60Z"),  // leap second
        BASE.replace("\"0.80\"", "\"0.0000000000000000000000000001\""), // 29 digit characters
        BASE.replace("\"0.80\"", "\"-0.80e0\""), // exponent
        BASE.replace("\"0.80\"", "\"00.80\""),   // leading zero
        BASE.replace("\"0.80\"", "\"+0.80\""),   // plus sign
        BASE.replace("\"0.80\"", "\".80\""),     // no whole part
        BASE.replace(
            "\"input_tokens\":\"1200\",\"output_tokens\":\"300\"",
            "\"output_tokens\":\"300\",\"input_tokens\":\"1200\"",
        ), // keys out of order
        BASE.replace("\"output_tokens\"", "\"input_tokens\""), // repeated key
        BASE.replace("\"calls\":3", "\"calls\":4294967296"), // past u32
        BASE.replace("\"calls\":3", "\"calls\":03"),
        BASE.replace("2026-03-01T10:00:00", "2026-02-30T10:00:00"),
        BASE.replace("\"plan\":\"default\",", ""), // default plan
        BASE.replace(
            ",\"components\":{\"models\":\"0.5\",\"tools\":\"0.30\",\"markup\":\"0.160\"}",
            "",
        ),
        BASE.replace("}]", "}],\"unknown\":true"),
        format!("{BASE} "),
        format!("{BASE}x"),
    ];
    for case in cases {
        assert!(scan(case.as_bytes()).is_none(), "{case}");
        let serde = serde_json::from_slice::<Debit>(case.as_bytes());
        match (serde, decode(case.as_bytes())) {
            (Ok(s), Ok(d)) => assert_eq!(s.encode(), d.encode(), "{case}"),
            (Err(s), Err(d)) => assert_eq!(s.to_string(), d.to_string(), "{case}"),
            (s, d) => panic!("serde {s:?}, decode {d:?}: {case}"),
        }
    }
    // Trailing zeros are kept and the sign of a zero is dropped, as serde does.
    let z = BASE.replace("\"0.80\"", "\"-0.000\"");
    let d = scan(z.as_bytes()).expect("fast path");
    assert!(!d.subtotal.is_sign_negative() && d.subtotal.scale() == 3);
    assert_eq!(d.encode(), BASE.replace("\"0.80\"", "\"0.000\"").as_bytes());
    let serde: Debit = serde_json::from_slice(z.as_bytes()).unwrap();
    assert_eq!(serde.encode(), d.encode());
    // 28 digit characters still fit.
    let long = BASE.replace("\"0.80\"", "\"-123456789012345.6789012345678\"");
    assert_eq!(scan(long.as_bytes()).unwrap().encode(), long.as_bytes());
}
