//! Hand-written JSON encoder of the rating core's own output formats: a [`PricedLine`] or a
//! [`Debit`] in, the exact bytes `serde_json::to_vec` writes for them out (same field order,
//! compact, the same string escapes, decimals as strings, timestamps as chrono's RFC 3339
//! `AutoSi` with `Z`). It exists for speed only (issue 12: serde's generic serializer was the
//! largest share of the encoding cost); `tests` below and the property test check it
//! byte for byte against `serde_json` on arbitrary records, so the contract and replays'
//! byte-identical outputs do not change.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;

use super::{BreakdownLine, Components, Debit, LineKind, PricedLine, PricedUnit};

/// Appends `s` as a JSON string (serde_json's escapes: `\"`, `\\`, `\b \t \n \f \r`, other
/// control characters as `\u00xx`; everything else as is).
pub(crate) fn string(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    if !super::escape::needs_escape(bytes) {
        // The common case (ids, names): nothing to escape.
        buf.extend_from_slice(bytes);
        buf.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[(b >> 4) as usize]);
                buf.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

fn opt_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

/// A decimal as a JSON string of its `Display` form (what `rust_decimal`'s serde writes):
/// sign (also of a negative zero), the digits of the mantissa padded with zeros to the scale,
/// the point before the last `scale` digits (with a `0` before a leading point).
fn decimal(buf: &mut Vec<u8>, d: &Decimal) {
    buf.push(b'"');
    if d.is_sign_negative() {
        buf.push(b'-');
    }
    let scale = d.scale() as usize;
    // The mantissa has at most 96 bits (29 digits) and the scale is at most 28.
    let mut tmp = [b'0'; 40];
    let mut n = 0;
    let m = d.mantissa().unsigned_abs();
    if let Ok(mut small) = u64::try_from(m) {
        while small != 0 {
            n += 1;
            tmp[40 - n] = b'0' + (small % 10) as u8;
            small /= 10;
        }
    } else {
        let mut big = m;
        while big != 0 {
            n += 1;
            tmp[40 - n] = b'0' + (big % 10) as u8;
            big /= 10;
        }
    }
    let len = n.max(scale);
    let digits = &tmp[40 - len..];
    let whole = len - scale;
    if whole == 0 {
        buf.push(b'0');
    } else {
        buf.extend_from_slice(&digits[..whole]);
    }
    if scale > 0 {
        buf.push(b'.');
        buf.extend_from_slice(&digits[whole..]);
    }
    buf.push(b'"');
}

fn uint(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn int(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    uint(buf, v.unsigned_abs());
}

fn digits(buf: &mut Vec<u8>, v: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        buf.push(b'0' + ((v / div) % 10) as u8);
        div /= 10;
    }
}

/// A timestamp as chrono's serde writes it: `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z`.
/// Years outside 0..=9999 and leap seconds take chrono's own formatter.
fn timestamp(buf: &mut Vec<u8>, t: &DateTime<Utc>) {
    let nanos = t.nanosecond();
    let year = t.year();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        buf.push(b'"');
        buf.extend_from_slice(
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                .as_bytes(),
        );
        buf.push(b'"');
        return;
    }
    buf.push(b'"');
    digits(buf, year as u32, 4);
    buf.push(b'-');
    digits(buf, t.month(), 2);
    buf.push(b'-');
    digits(buf, t.day(), 2);
    buf.push(b'T');
    digits(buf, t.hour(), 2);
    buf.push(b':');
    digits(buf, t.minute(), 2);
    buf.push(b':');
    digits(buf, t.second(), 2);
    if nanos != 0 {
        buf.push(b'.');
        if nanos.is_multiple_of(1_000_000) {
            digits(buf, nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            digits(buf, nanos / 1_000, 6);
        } else {
            digits(buf, nanos, 9);
        }
    }
    buf.extend_from_slice(b"Z\"");
}

/// Appends `k` (the separator and the opening quote of one of our own ASCII field names,
/// e.g. `,"kind`) and then `":`.
fn key(buf: &mut Vec<u8>, k: &[u8]) {
    buf.extend_from_slice(k);
    buf.extend_from_slice(b"\":");
}

fn decimal_map(buf: &mut Vec<u8>, m: &BTreeMap<String, Decimal>) {
    buf.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        string(buf, k);
        buf.push(b':');
        decimal(buf, v);
    }
    buf.push(b'}');
}

fn unit(buf: &mut Vec<u8>, u: &PricedUnit) {
    key(buf, b"{\"unit");
    string(buf, &u.unit);
    key(buf, b",\"quantity");
    decimal(buf, &u.quantity);
    key(buf, b",\"credits");
    decimal(buf, &u.credits);
    key(buf, b",\"per");
    uint(buf, u.per);
    buf.push(b'}');
}

fn breakdown_line(buf: &mut Vec<u8>, b: &BreakdownLine) {
    key(buf, b"{\"asset_id");
    string(buf, &b.asset_id);
    key(buf, b",\"asset_type");
    string(buf, b.asset_type.as_str());
    if !b.price_version.is_empty() {
        key(buf, b",\"price_version");
        string(buf, &b.price_version);
    }
    key(buf, b",\"calls");
    uint(buf, u64::from(b.calls));
    key(buf, b",\"quantities");
    decimal_map(buf, &b.quantities);
    key(buf, b",\"cost");
    decimal(buf, &b.cost);
    buf.push(b'}');
}

/// Appends a priced line's JSON (byte-identical to `serde_json::to_vec(line)`).
pub fn encode_line(buf: &mut Vec<u8>, l: &PricedLine) {
    key(buf, b"{\"event_id");
    string(buf, &l.event_id);
    key(buf, b",\"kind");
    buf.extend_from_slice(match l.kind {
        LineKind::ModelCall => b"\"model_call\"",
        LineKind::ToolCall => b"\"tool_call\"",
    });
    key(buf, b",\"occurred_at");
    timestamp(buf, &l.occurred_at);
    key(buf, b",\"account_id");
    string(buf, &l.account_id);
    key(buf, b",\"execution_id");
    opt_string(buf, l.execution_id.as_deref());
    key(buf, b",\"agent_id");
    opt_string(buf, l.agent_id.as_deref());
    key(buf, b",\"component");
    opt_string(buf, l.component.as_deref());
    key(buf, b",\"asset_id");
    string(buf, &l.asset_id);
    if let Some(s) = &l.asset_name_sent {
        key(buf, b",\"asset_name_sent");
        string(buf, s);
    }
    key(buf, b",\"asset_type");
    string(buf, l.asset_type.as_str());
    key(buf, b",\"vendor");
    string(buf, &l.vendor);
    key(buf, b",\"price_version");
    string(buf, &l.price_version);
    if let Some(t) = &l.tier {
        key(buf, b",\"tier");
        string(buf, t);
    }
    key(buf, b",\"plan");
    string(buf, &l.plan);
    if let Some(v) = &l.plan_version {
        key(buf, b",\"plan_version");
        string(buf, v);
    }
    if let Some(r) = &l.plan_rule {
        key(buf, b",\"plan_rule");
        string(buf, r);
    }
    if let Some(p) = &l.discount_percent {
        key(buf, b",\"discount_percent");
        decimal(buf, p);
    }
    key(buf, b",\"units");
    buf.push(b'[');
    for (i, u) in l.units.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        unit(buf, u);
    }
    buf.push(b']');
    key(buf, b",\"cost");
    decimal(buf, &l.cost);
    if !l.dimensions.is_empty() {
        key(buf, b",\"dimensions");
        buf.push(b'{');
        for (i, (k, v)) in l.dimensions.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            string(buf, k);
            buf.push(b':');
            string(buf, v);
        }
        buf.push(b'}');
    }
    key(buf, b",\"event_partition");
    int(buf, i64::from(l.event_partition));
    key(buf, b",\"event_offset");
    int(buf, l.event_offset);
    buf.push(b'}');
}

/// Appends a debit's JSON (byte-identical to `serde_json::to_vec(debit)`).
pub fn encode_debit(buf: &mut Vec<u8>, d: &Debit) {
    key(buf, b"{\"debit_id");
    string(buf, &d.debit_id);
    key(buf, b",\"kind");
    string(buf, d.kind.as_str());
    key(buf, b",\"account_id");
    string(buf, &d.account_id);
    key(buf, b",\"execution_id");
    opt_string(buf, d.execution_id.as_deref());
    key(buf, b",\"plan");
    string(buf, &d.plan);
    if let Some(v) = &d.plan_version {
        key(buf, b",\"plan_version");
        string(buf, v);
    }
    key(buf, b",\"subtotal");
    decimal(buf, &d.subtotal);
    key(buf, b",\"markup_rate");
    decimal(buf, &d.markup_rate);
    key(buf, b",\"markup");
    decimal(buf, &d.markup);
    key(buf, b",\"total");
    decimal(buf, &d.total);
    key(buf, b",\"calls");
    uint(buf, u64::from(d.calls));
    key(buf, b",\"first_event_at");
    timestamp(buf, &d.first_event_at);
    key(buf, b",\"last_event_at");
    timestamp(buf, &d.last_event_at);
    key(buf, b",\"breakdown");
    buf.push(b'[');
    for (i, b) in d.breakdown.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        breakdown_line(buf, b);
    }
    buf.push(b']');
    key(buf, b",\"components");
    components(buf, &d.components);
    if let Some(c) = &d.correction {
        key(buf, b",\"correction");
        key(buf, b"{\"correction_id");
        string(buf, &c.correction_id);
        key(buf, b",\"reason");
        string(buf, &c.reason);
        key(buf, b",\"corrects");
        buf.push(b'[');
        for (i, id) in c.corrects.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            string(buf, id);
        }
        buf.push(b']');
        buf.push(b'}');
    }
    buf.push(b'}');
}

fn components(buf: &mut Vec<u8>, c: &Components) {
    key(buf, b"{\"models");
    decimal(buf, &c.models);
    key(buf, b",\"tools");
    decimal(buf, &c.tools);
    key(buf, b",\"markup");
    decimal(buf, &c.markup);
    buf.push(b'}');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::AssetType;
    use crate::debit::DebitKind;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // ASCII, escapes, control characters, DEL, non-ASCII and astral characters.
        prop_oneof![
            "[a-z0-9_.:-]{0,24}",
            proptest::collection::vec(
                prop_oneof![
                    Just('"'),
                    Just('\\'),
                    Just('\u{7f}'),
                    Just('é'),
                    Just('😀'),
                    Just('/'),
                    (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
                    proptest::char::range('a', 'z'),
                ],
                0..12
            )
            .prop_map(|v| v.into_iter().collect()),
        ]
    }

    fn dec() -> impl Strategy<Value = Decimal> {
        (any::<i64>(), 0u32..=28, any::<bool>()).prop_map(|(m, s, big)| {
            let m = if big {
                i128::from(m) * 1_000_000_007
            } else {
                i128::from(m)
            };
            Decimal::try_from_i128_with_scale(m, s).unwrap_or(Decimal::new(m as i64, s))
        })
    }

    fn ts() -> impl Strategy<Value = DateTime<Utc>> {
        (
            -62_000_000_000i64..300_000_000_000,
            prop_oneof![
                Just(0u32),
                (0u32..1000).prop_map(|n| n * 1_000_000),
                (0u32..1_000_000).prop_map(|n| n * 1000),
                0u32..1_000_000_000,
                1_000_000_000u32..2_000_000_000,
            ],
        )
            .prop_map(|(s, n)| {
                DateTime::from_timestamp(s, n)
                    .or_else(|| DateTime::from_timestamp(s, n % 1_000_000_000))
                    .unwrap()
            })
    }

    fn asset_type() -> impl Strategy<Value = AssetType> {
        prop_oneof![
            Just(AssetType::Model),
            Just(AssetType::Tool),
            Just(AssetType::Integration)
        ]
    }

    prop_compose! {
        pub(crate) fn line()(
            ids in proptest::collection::vec(text(), 7),
            opts in proptest::collection::vec(proptest::option::of(text()), 7),
            discount in proptest::option::of(dec()),
            model in any::<bool>(),
            at in ts(),
            ty in asset_type(),
            units in proptest::collection::vec((text(), dec(), dec(), any::<u64>()), 0..3),
            cost in dec(),
            dims in proptest::collection::btree_map(text(), text(), 0..3),
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

    prop_compose! {
        pub(crate) fn debit()(
            ids in proptest::collection::vec(text(), 3),
            exec in proptest::option::of(text()),
            plan_version in proptest::option::of(text()),
            kind in 0usize..5,
            correction in proptest::option::of((text(), text(), proptest::collection::vec(text(), 0..3))),
            money in proptest::collection::vec(dec(), 7),
            calls in any::<u32>(),
            at in proptest::collection::vec(ts(), 2),
            lines in proptest::collection::vec(
                (text(), asset_type(), text(), any::<u32>(), proptest::collection::btree_map(text(), dec(), 0..3), dec()),
                0..3,
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
                components: Components {
                    models: money[4],
                    tools: money[5],
                    markup: money[6],
                },
                correction: correction.map(|(correction_id, reason, corrects)| crate::debit::CorrectionRef {
                    correction_id,
                    reason,
                    corrects,
                }),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn line_bytes_equal_serde_json(l in line()) {
            let mut buf = Vec::new();
            encode_line(&mut buf, &l);
            prop_assert_eq!(
                String::from_utf8(buf).unwrap(),
                String::from_utf8(serde_json::to_vec(&l).unwrap()).unwrap()
            );
        }

        #[test]
        fn debit_bytes_equal_serde_json(d in debit()) {
            let mut buf = Vec::new();
            encode_debit(&mut buf, &d);
            prop_assert_eq!(
                String::from_utf8(buf).unwrap(),
                String::from_utf8(serde_json::to_vec(&d).unwrap()).unwrap()
            );
        }
    }

    #[test]
    fn edge_values_match_serde_json() {
        let at = |s: i64, n: u32| DateTime::from_timestamp(s, n).unwrap();
        for t in [
            at(0, 0),
            at(1_772_323_200, 5_000_000),
            at(1_772_323_200, 5_000),
            at(1_772_323_200, 5),
            at(1_772_323_259, 1_500_000_000), // leap second
            at(-62_167_219_201, 0),           // year -1
            at(253_402_300_800, 0),           // year 10000
        ] {
            let mut buf = Vec::new();
            timestamp(&mut buf, &t);
            assert_eq!(buf, serde_json::to_vec(&t).unwrap(), "{t:?}");
        }
        for d in [
            Decimal::ZERO,
            -Decimal::ZERO,
            Decimal::new(-5, 3),
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(1, 28),
        ] {
            let mut buf = Vec::new();
            decimal(&mut buf, &d);
            assert_eq!(buf, serde_json::to_vec(&d).unwrap(), "{d:?}");
        }
        for v in [0u64, 9, 10, u64::MAX] {
            let mut buf = Vec::new();
            uint(&mut buf, v);
            assert_eq!(buf, v.to_string().into_bytes());
        }
        for v in [i64::MIN, -1, 0, i64::MAX] {
            let mut buf = Vec::new();
            int(&mut buf, v);
            assert_eq!(buf, v.to_string().into_bytes());
        }
    }
}
