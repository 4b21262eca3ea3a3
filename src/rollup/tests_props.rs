//! Property tests of the rollup against an independent oracle: totals per account whatever
//! the order, duplicates and flush points; determinism; no panic on any bytes.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::tests::{Run, call, d, finish};
use super::*;
use crate::plans::NO_PLANS;

#[derive(Debug, Clone)]
struct GenCall {
    exec: Option<u8>,
    account: u8,
    asset: u8,
    qty: u32,
}

fn payload(i: usize, c: &GenCall) -> String {
    let (asset, unit) = [
        ("llm", "input_tokens"),
        ("search", "requests"),
        ("db", "queries"),
        ("audio", "audio_minutes"),
    ][c.asset as usize % 4];
    let q = if unit == "audio_minutes" {
        format!("\"{}.25\"", c.qty)
    } else {
        c.qty.to_string()
    };
    // Executions are owned by account (exec % 3) so that no call mismatches.
    let account = c.exec.map_or(c.account % 3, |e| e % 3);
    call(
        &format!("e{i}"),
        c.exec.map(|e| format!("x{e}")).as_deref(),
        &format!("a{account}"),
        asset,
        &format!("{{\"{unit}\":{q}}}"),
    )
}

/// The straightforward computation: per account, sum of vendor cost, plus 20% of the part
/// that ran inside executions.
fn oracle(calls: &[GenCall]) -> BTreeMap<String, Decimal> {
    let price = |c: &GenCall| -> Decimal {
        let q = Decimal::from(c.qty);
        match c.asset % 4 {
            0 => q * d("0.5") / d("1000"),
            1 => q * d("0.1"),
            2 => q * d("0.2"),
            _ => (q + d("0.25")) * d("0.006"),
        }
    };
    let mut totals = BTreeMap::new();
    for c in calls {
        let account = c.exec.map_or(c.account % 3, |e| e % 3);
        let cost = crate::money::round_line_cost(price(c));
        let total = if c.exec.is_some() {
            cost * d("1.2")
        } else {
            cost
        };
        *totals.entry(format!("a{account}")).or_insert(Decimal::ZERO) += total;
    }
    totals
        .into_iter()
        .map(|(k, v)| (k, v.normalize()))
        .collect()
}

fn totals(out: &[Output]) -> BTreeMap<String, Decimal> {
    let mut t = BTreeMap::new();
    for o in out {
        if let Output::Debit(d) = o {
            assert_eq!(d.total, d.subtotal + d.markup);
            let lines: Decimal = d.breakdown.iter().map(|b| b.cost).sum();
            assert_eq!(lines, d.subtotal, "breakdown sums to the subtotal");
            *t.entry(d.account_id.clone()).or_insert(Decimal::ZERO) += d.total;
        }
    }
    t.into_iter().map(|(k, v)| (k, v.normalize())).collect()
}

fn gen_call() -> impl Strategy<Value = GenCall> {
    (proptest::option::of(0u8..6), 0u8..3, 0u8..4, 0u32..5000).prop_map(
        |(exec, account, asset, qty)| GenCall {
            exec,
            account,
            asset,
            qty,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Totals per account do not depend on event order, duplicates, or where finish
    /// events (flush points) fall, and equal the oracle.
    #[test]
    fn totals_match_the_oracle_whatever_the_order(
        calls in proptest::collection::vec(gen_call(), 1..60),
        order_seed in any::<u64>(),
        dup_every in 2usize..10,
        finish_points in proptest::collection::vec(0usize..60, 0..8),
    ) {
        let mut payloads: Vec<String> = calls.iter().enumerate().map(|(i, c)| payload(i, c)).collect();
        // Shuffle deterministically from the seed.
        let mut s = order_seed | 1;
        for i in (1..payloads.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            payloads.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut stream = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            stream.push(p.clone());
            if i % dup_every == 0 {
                stream.push(p.clone());
            }
            for (k, fp) in finish_points.iter().enumerate() {
                if *fp == i {
                    let x = (k % 6) as u8;
                    stream.push(finish(&format!("f{k}"), &format!("x{x}"), &format!("a{}", x % 3), None));
                }
            }
        }
        let mut r = Run::new(RollupConfig::default());
        for p in &stream {
            r.feed(p);
        }
        r.rollup.close_all(&NO_PLANS, &mut r.out);
        prop_assert!(r.rejections().is_empty(), "{:?}", r.rejections());
        prop_assert_eq!(totals(&r.out), oracle(&calls));
        // Debit ids are unique.
        let mut ids: Vec<&str> = r.debits().iter().map(|d| d.debit_id.as_str()).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), n);
    }

    /// Processing the same log twice gives byte-identical outputs.
    #[test]
    fn processing_is_deterministic(calls in proptest::collection::vec(gen_call(), 1..40)) {
        let stream: Vec<String> = calls.iter().enumerate().map(|(i, c)| payload(i, c)).collect();
        let run = || {
            let mut r = Run::new(RollupConfig::default());
            for p in &stream { r.feed(p); }
            r.rollup.close_all(&NO_PLANS, &mut r.out);
            r.out.iter().map(|o| match o {
                Output::Debit(d) => d.encode(),
                Output::Line(l) => l.encode(),
                Output::Rejected(r) => r.message.clone().into_bytes(),
            }).collect::<Vec<_>>()
        };
        prop_assert_eq!(run(), run());
    }

    /// Any bytes: no panic, and a rejection names a reason.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut r = Run::new(RollupConfig::default());
        let mut out = Vec::new();
        let o = r.rollup.process(0, &bytes, &r.catalog, 0, &mut out);
        prop_assert!(matches!(o, Outcome::Rejected(_) | Outcome::Priced(_) | Outcome::Finished | Outcome::Ignored | Outcome::Marker));
    }
}
