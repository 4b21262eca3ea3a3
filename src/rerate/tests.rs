//! Re-rating against an independent oracle: the rollup run again over the same events with
//! the corrected catalog. Originals plus corrections must equal it per account and per
//! execution, to the last digit; runs repeated, resumed or stacked emit nothing twice.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::*;
use crate::catalog::Catalog;
use crate::debit::DebitKind;
use crate::plans::PlanBook;
use crate::rollup::{Output, PartitionRollup, RollupConfig};

const BASE: &str = r#"[
  {"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-01-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"1","per":1000},"output_tokens":{"credits":"1","per":3}}},
  {"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-02-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"10","per":1000},"output_tokens":{"credits":"1","per":3}}},
  {"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-03-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"2","per":1000},"output_tokens":{"credits":"1","per":3}}},
  {"asset_id":"t","asset_type":"tool","vendor":"w","effective_from":"2026-01-01T00:00:00Z",
   "prices":{"requests":{"credits":"0.1","per":1}}}
]"#;

/// February's input price was a typo (10 for 1.5); output 2 per 3 instead of 1 per 3.
fn fix(id: &str, input: &str) -> String {
    format!(
        r#"{{"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-02-01T00:00:00Z",
   "prices":{{"input_tokens":{{"credits":"{input}","per":1000}},"output_tokens":{{"credits":"2","per":3}}}},
   "correction":{{"id":"{id}","reason":"typo"}}}}"#
    )
}

const PLANS: &str = r#"{
  "plans": [{"plan_id": "ent", "effective_from": "2026-01-01T00:00:00Z", "markup_rate": "0.15",
             "rules": [{"applies_to": {"vendor": "v"}, "discount_percent": "12.5"}]}],
  "assignments": [{"account_id": "b", "plan_id": "ent", "effective_from": "2026-02-10T00:00:00Z"}]
}"#;

fn corrected(fixes: &[String]) -> Catalog {
    let mut c = Catalog::from_json(BASE.as_bytes()).unwrap();
    for f in fixes {
        assert!(
            c.insert(Catalog::parse_version(f.as_bytes()).unwrap())
                .unwrap()
        );
    }
    c
}

fn plans() -> PlanBook {
    crate::plans::check::check_file(PLANS.as_bytes(), None).unwrap()
}

fn call(id: &str, account: &str, exec: Option<&str>, at: &str, asset: &str, q: &str) -> String {
    let exec = exec
        .map(|x| format!(r#","execution_id":"{x}""#))
        .unwrap_or_default();
    let kind = if asset == "t" {
        "tool_call"
    } else {
        "model_call"
    };
    format!(
        r#"{{"type":"{kind}","event_id":"{id}","occurred_at":"{at}","account_id":"{account}"{exec},"asset_id":"{asset}","quantities":{q}}}"#
    )
}

fn finish(id: &str, account: &str, exec: &str, calls: u32) -> String {
    format!(
        r#"{{"type":"execution_finished","event_id":"{id}","occurred_at":"2026-02-15T00:00:00Z","account_id":"{account}","execution_id":"{exec}","expected_calls":{calls}}}"#
    )
}

/// Events over January to March: executions across the window's edges, direct calls, a
/// late call (an adjustment), two accounts (one on a plan from Feb 10).
fn events() -> Vec<String> {
    let mut e = Vec::new();
    for (i, (account, at)) in [
        ("a", "2026-01-31T23:59:59Z"),
        ("a", "2026-02-01T00:00:00Z"),
        ("b", "2026-02-12T00:00:00Z"),
        ("b", "2026-02-28T23:59:59Z"),
        ("a", "2026-03-01T00:00:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        let x = format!("x{i}");
        e.push(call(
            &format!("{x}-1"),
            account,
            Some(&x),
            at,
            "m",
            &format!(
                r#"{{"input_tokens":{},"output_tokens":{}}}"#,
                1000 + i * 7,
                i + 1
            ),
        ));
        e.push(call(
            &format!("{x}-2"),
            account,
            Some(&x),
            "2026-01-15T00:00:00Z",
            "t",
            r#"{"requests":2}"#,
        ));
        e.push(finish(&format!("{x}-f"), account, &x, 2));
        e.push(call(
            &format!("d{i}"),
            account,
            None,
            at,
            "m",
            r#"{"input_tokens":333,"output_tokens":1}"#,
        ));
    }
    // A late call of a closed execution: its own adjustment debit, at the plan then in force.
    e.push(call(
        "x2-late",
        "b",
        Some("x2"),
        "2026-02-20T00:00:00Z",
        "m",
        r#"{"input_tokens":5}"#,
    ));
    e
}

/// The rollup's outputs over `events` with `catalog` (one partition, all closed).
fn rate(events: &[String], catalog: &Catalog) -> (Vec<PricedLine>, Vec<Debit>) {
    let plans = plans();
    let pricing = Pricing {
        catalog,
        plans: &plans,
    };
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        r.process(i as i64, e.as_bytes(), pricing, 0, &mut out);
    }
    r.close_all(&plans, &mut out);
    let (mut lines, mut debits) = (Vec::new(), Vec::new());
    for o in out {
        match o {
            Output::Line(l) => lines.push(l),
            Output::Debit(d) => debits.push(d),
            Output::Rejected(x) => panic!("{x:?}"),
        }
    }
    (lines, debits)
}

fn totals<'a>(
    debits: impl IntoIterator<Item = &'a Debit>,
) -> BTreeMap<(String, Option<String>), Decimal> {
    let mut t = BTreeMap::new();
    for d in debits {
        *t.entry((d.account_id.clone(), d.execution_id.clone()))
            .or_insert(Decimal::ZERO) += d.total;
    }
    t.into_iter().map(|(k, v)| (k, v.normalize())).collect()
}

fn run(id: &str, catalog: &Catalog, lines: &[PricedLine], debits: &[Debit]) -> Outcome {
    let windows = catalog.correction_windows(id);
    let plans = plans();
    decide(
        Correction {
            id,
            reason: "typo",
            windows: &windows,
        },
        Pricing {
            catalog,
            plans: &plans,
        },
        lines.to_vec(),
        debits.to_vec(),
    )
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[test]
fn originals_plus_corrections_equal_the_rollup_with_the_corrected_catalog() {
    let ev = events();
    let (lines, mut debits) = rate(&ev, &corrected(&[]));
    let fixed = corrected(&[fix("fix-1", "1.5")]);
    let out = run("fix-1", &fixed, &lines, &debits);
    // x1, x2 (its late call too), x3 and d1, d2, d3 are in February; x0, x4, d0, d4 are not.
    assert_eq!(out.to_emit.len(), 6, "{:#?}", out.stats);
    assert!(out.stats.scopes_skipped.is_empty(), "{:?}", out.stats);
    for c in &out.to_emit {
        assert_eq!(c.kind, DebitKind::Correction);
        assert_eq!(c.subtotal + c.markup, c.total);
        let b: Decimal = c.breakdown.iter().map(|b| b.cost).sum();
        assert_eq!(b, c.subtotal, "breakdown sums to the subtotal");
        assert_eq!(c.components.models + c.components.tools, c.subtotal);
        assert!(c.total < Decimal::ZERO, "a lower price credits back");
    }
    debits.extend(out.to_emit.iter().cloned());
    let (_, oracle) = rate(&ev, &fixed);
    assert_eq!(totals(&debits), totals(&oracle));
    // The report adds up to what is emitted.
    let emitted: Decimal = out.to_emit.iter().map(|c| c.total).sum();
    let reported: Decimal = out.accounts.values().map(|r| r.difference).sum();
    assert_eq!(emitted, reported);
    for r in out.accounts.values() {
        assert_eq!(r.corrected - r.billed, r.difference);
    }
    // Run again (or resumed after all was written): nothing new, each id once.
    let again = run("fix-1", &fixed, &lines, &debits);
    assert!(again.to_emit.is_empty());
    assert_eq!(again.already_written.len(), 6);
}

#[test]
fn the_worked_example_is_exact_and_names_what_it_corrects() {
    // x1: 1007 input tokens at 10/1000 = 10.07 and 2 output at 1/3 = 0.666666666667
    // (rounded once, 12 decimals), plus 2 requests at 0.1. Corrected: 1.5/1000 -> 1.5105,
    // 2/3 per output token -> 1.333333333333. Difference of the rounded line costs:
    // (1.5105 + 1.333333333333) - (10.07 + 0.666666666667) = -7.892833333334; markup 20 %.
    let ev = events();
    let (lines, debits) = rate(&ev, &corrected(&[]));
    let out = run("fix-1", &corrected(&[fix("fix-1", "1.5")]), &lines, &debits);
    let c = out
        .to_emit
        .iter()
        .find(|c| c.execution_id.as_deref() == Some("x1"))
        .unwrap();
    assert_eq!(c.subtotal, d("-7.892833333334"));
    assert_eq!(c.markup_rate, d("0.2"));
    assert_eq!(c.markup, d("-1.5785666666668"));
    assert_eq!(c.total, d("-9.4714000000008"));
    assert_eq!(c.calls, 1);
    assert_eq!(
        c.breakdown[0].price_version,
        "2026-02-01T00:00:00Z#fix-1".to_string()
    );
    let r = c.correction.as_ref().unwrap();
    assert_eq!(r.correction_id, "fix-1");
    assert_eq!(
        r.corrects,
        vec![crate::debit::execution_debit_id("a", "x1", "x1-1")]
    );
    assert_eq!(
        c.debit_id,
        crate::debit::correction_debit_id("fix-1", "a", "execution\nx1")
    );
    // The late call's adjustment is corrected at its own rate (plan ent from Feb 10: 0.15,
    // 12.5 % off); the execution at its debit's (plan at its first call, Jan 15: default,
    // 0.2): one correction for both.
    let c2 = out
        .to_emit
        .iter()
        .find(|c| c.execution_id.as_deref() == Some("x2"))
        .unwrap();
    assert_eq!(c2.correction.as_ref().unwrap().corrects.len(), 2);
    // 5 input tokens: 0.05 -> 0.0075, 12.5 % off: -0.0371875 at 15 % markup.
    let late = -(d("0.05") - d("0.0075")) * d("0.875");
    assert_eq!(
        c2.markup,
        (late * d("0.15") + (c2.subtotal - late) * d("0.2")).normalize()
    );
    // The direct call: no markup.
    let dc = out
        .to_emit
        .iter()
        .find(|c| c.execution_id.is_none() && c.account_id == "a")
        .unwrap();
    assert_eq!(dc.markup, Decimal::ZERO);
    assert_eq!(dc.subtotal, dc.total);
    // Per account and asset, line costs before markup.
    let row = &out.assets[&("a".to_string(), "m".to_string())];
    assert_eq!(row.difference, row.new - row.old);
}

#[test]
fn stacked_corrections_in_either_order_add_up_and_never_repeat() {
    let ev = events();
    let (lines, originals) = rate(&ev, &corrected(&[]));
    let f1 = fix("fix-1", "1.5");
    let f2 = fix("fix-2", "1.25");
    let (_, oracle) = rate(&ev, &corrected(&[f1.clone(), f2.clone()]));
    // fix-1 run, then fix-2 (superseding it at the same instant) run.
    let mut debits = originals.clone();
    let one = run(
        "fix-1",
        &corrected(std::slice::from_ref(&f1)),
        &lines,
        &debits,
    );
    debits.extend(one.to_emit);
    let both = corrected(&[f1.clone(), f2.clone()]);
    let two = run("fix-2", &both, &lines, &debits);
    assert_eq!(two.to_emit.len(), 6);
    debits.extend(two.to_emit);
    assert_eq!(totals(&debits), totals(&oracle));
    for c in debits.iter().filter(|c| c.kind == DebitKind::Correction) {
        let b: Decimal = c.breakdown.iter().map(|b| b.cost).sum();
        assert_eq!(b, c.subtotal);
    }
    // fix-1 is no longer in force (fix-2 replaced it): nothing to do, and running it under
    // its id on the latest catalog finds no window.
    assert!(both.correction_windows("fix-1").is_empty());
    // The other order: fix-2 first (it includes fix-1's difference), fix-1's windows never
    // applied separately; a duplicate correction (same prices, another id) finds nothing.
    let mut debits = originals.clone();
    let two = run("fix-2", &both, &lines, &debits);
    debits.extend(two.to_emit);
    assert_eq!(totals(&debits), totals(&oracle));
    let dup = corrected(&[f1, f2, fix("fix-2-again", "1.25")]);
    let again = run("fix-2-again", &dup, &lines, &debits);
    assert!(again.to_emit.is_empty(), "{:?}", again.to_emit);
    assert_eq!(again.stats.scopes_unchanged, 6);
}

#[test]
fn an_open_execution_or_missing_lines_are_left_out_and_picked_up_later() {
    let ev = events();
    let (lines, debits) = rate(&ev, &corrected(&[]));
    let fixed = corrected(&[fix("fix-1", "1.5")]);
    let x1 = crate::debit::execution_debit_id("a", "x1", "x1-1");
    // x1's debit not written yet: left out, counted.
    let without: Vec<Debit> = debits
        .iter()
        .filter(|d| d.debit_id != x1)
        .cloned()
        .collect();
    let out = run("fix-1", &fixed, &lines, &without);
    assert_eq!(out.to_emit.len(), 5);
    assert_eq!(out.stats.scopes_skipped["not_billed_yet"], 1);
    assert!(
        out.stats
            .first_skip
            .as_deref()
            .unwrap()
            .contains("account a execution x1"),
        "{:?}",
        out.stats.first_skip
    );
    // Written now: a second run emits x1's only.
    let mut written = without.clone();
    written.extend(out.to_emit);
    written.push(debits.iter().find(|d| d.debit_id == x1).unwrap().clone());
    let later = run("fix-1", &fixed, &lines, &written);
    assert_eq!(later.to_emit.len(), 1);
    assert_eq!(later.to_emit[0].execution_id.as_deref(), Some("x1"));
    // A line missing from what was read: the debit does not add up; never corrected half.
    let partial: Vec<PricedLine> = lines
        .iter()
        .filter(|l| l.event_id != "x3-2")
        .cloned()
        .collect();
    let out = run("fix-1", &fixed, &partial, &debits);
    assert_eq!(out.stats.scopes_skipped["does_not_add_up"], 1);
    assert!(
        out.to_emit
            .iter()
            .all(|c| c.execution_id.as_deref() != Some("x3"))
    );
}

#[test]
fn duplicates_in_what_is_read_count_once() {
    let ev = events();
    let (lines, debits) = rate(&ev, &corrected(&[]));
    let fixed = corrected(&[fix("fix-1", "1.5")]);
    let once = run("fix-1", &fixed, &lines, &debits);
    let twice_lines: Vec<PricedLine> = lines.iter().chain(lines.iter()).cloned().collect();
    let twice_debits: Vec<Debit> = debits.iter().chain(debits.iter()).cloned().collect();
    let twice = run("fix-1", &fixed, &twice_lines, &twice_debits);
    assert_eq!(once.to_emit, twice.to_emit);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Any quantities, any corrected prices (up or down), any order of two corrections:
    /// originals plus corrections equal the rollup with the final catalog, per execution.
    #[test]
    fn corrections_equal_the_oracle_for_any_prices(
        tokens in proptest::collection::vec((1u64..5_000_000, 0u64..100_000), 1..12),
        p1 in 1u64..100_000, p2 in 1u64..100_000, fix2_first in proptest::bool::ANY,
    ) {
        let mut ev = Vec::new();
        for (i, (input, output)) in tokens.iter().enumerate() {
            let exec = (i % 3 != 0).then(|| format!("x{}", i % 4));
            let account = if i % 2 == 0 { "a" } else { "b" };
            ev.push(call(&format!("e{i}"), account, exec.as_deref(),
                &format!("2026-02-{:02}T00:00:00Z", 1 + i % 28), "m",
                &format!(r#"{{"input_tokens":{input},"output_tokens":{output}}}"#)));
        }
        let price = |p: u64| (Decimal::from(p) / d("1000")).normalize().to_string();
        let (f1, f2) = (fix("fix-1", &price(p1)), fix("fix-2", &price(p2)));
        let (lines, mut debits) = rate(&ev, &corrected(&[]));
        let both = corrected(&[f1.clone(), f2.clone()]);
        let order: Vec<(&str, Catalog)> = if fix2_first {
            vec![("fix-2", both.clone()), ("fix-1", both.clone())]
        } else {
            vec![("fix-1", corrected(&[f1])), ("fix-2", both.clone())]
        };
        for (id, cat) in order {
            let out = run(id, &cat, &lines, &debits);
            debits.extend(out.to_emit);
        }
        let (_, oracle) = rate(&ev, &both);
        proptest::prop_assert_eq!(totals(&debits), totals(&oracle));
    }
}

#[test]
fn the_difference_is_that_of_the_rounded_line_costs() {
    // 1 token at 1/3 credit = 0.333333333333, re-priced at 2/3 = 0.666666666667 (each rounded
    // once, 12 decimals, half away from zero): the correction is 0.333333333334, not the
    // rounded exact difference 0.333333333333.
    let base = r#"[{"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-01-01T00:00:00Z",
       "prices":{"output_tokens":{"credits":"1","per":3}}}]"#;
    let fix = r#"{"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-01-01T00:00:00Z",
       "prices":{"output_tokens":{"credits":"2","per":3}},"correction":{"id":"third","reason":"x"}}"#;
    let old = Catalog::from_json(base.as_bytes()).unwrap();
    let mut new = old.clone();
    new.insert(Catalog::parse_version(fix.as_bytes()).unwrap())
        .unwrap();
    let ev = vec![call(
        "e",
        "a",
        None,
        "2026-01-02T00:00:00Z",
        "m",
        r#"{"output_tokens":1}"#,
    )];
    let (lines, debits) = rate(&ev, &old);
    assert_eq!(debits[0].total, d("0.333333333333"));
    let out = run("third", &new, &lines, &debits);
    assert_eq!(out.to_emit.len(), 1);
    let c = &out.to_emit[0];
    assert_eq!(
        (c.subtotal, c.markup, c.total),
        (d("0.333333333334"), d("0"), d("0.333333333334"))
    );
    let (_, oracle) = rate(&ev, &new);
    assert_eq!(debits[0].total + c.total, oracle[0].total);
}
