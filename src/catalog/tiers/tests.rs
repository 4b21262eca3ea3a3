//! Tier rules: the check's verdicts against a brute-force oracle over every small call,
//! selection by declared order, and the messages naming the tiers.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;

fn price(c: &str) -> UnitPrice {
    UnitPrice {
        credits: c.parse().unwrap(),
        per: 1_000_000,
        whole: None,
    }
}

fn default_prices() -> BTreeMap<String, UnitPrice> {
    [
        ("a".to_string(), price("1")),
        ("b".to_string(), price("2")),
        ("c".to_string(), price("3")),
    ]
    .into()
}

fn cond(units: &[&str], above: Option<u64>, up_to: Option<u64>) -> Condition {
    Condition {
        units: units.iter().map(|u| u.to_string()).collect(),
        above,
        up_to,
    }
}

fn tier(name: &str, when: Vec<Condition>) -> Tier {
    Tier {
        name: name.into(),
        when,
        prices: default_prices(),
    }
}

fn q(pairs: &[(&str, u64)]) -> Vec<(String, Decimal)> {
    pairs
        .iter()
        .map(|(u, v)| (u.to_string(), Decimal::from(*v)))
        .collect()
}

#[test]
fn boundaries_are_half_open_and_sum_units() {
    let long = tier("long", vec![cond(&["a", "b"], Some(200_000), None)]);
    let tiers = [long];
    assert_eq!(select(&tiers, &q(&[("a", 200_000)])), None);
    assert_eq!(select(&tiers, &q(&[("a", 200_001)])), Some(0));
    // The measure is the sum: 150 000 + 50 001 is above 200 000; c is not counted.
    assert_eq!(
        select(&tiers, &q(&[("a", 150_000), ("b", 50_001)])),
        Some(0)
    );
    assert_eq!(select(&tiers, &q(&[("a", 150_000), ("c", 90_000)])), None);
    assert!(problems(&default_prices(), &tiers).is_empty());
}

#[test]
fn first_match_in_declared_order() {
    // Overlapping tiers are refused by the check, but selection itself is by order.
    let t = [
        tier("x", vec![cond(&["a"], Some(10), None)]),
        tier("y", vec![cond(&["a"], Some(5), None)]),
    ];
    assert_eq!(select(&t, &q(&[("a", 11)])), Some(0));
    assert_eq!(select(&t, &q(&[("a", 6)])), Some(1));
}

#[test]
fn overlap_unreachable_and_default_are_named() {
    let p = problems(
        &default_prices(),
        &[
            tier("mid", vec![cond(&["a"], Some(128_000), None)]),
            tier("long", vec![cond(&["a"], Some(200_000), None)]),
        ],
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "tiers[1]");
    assert!(
        p[0].1
            .contains("\"long\" overlaps tiers[0] \"mid\": a call with a = 200001 matches both"),
        "{}",
        p[0].1
    );
    let p = problems(
        &default_prices(),
        &[tier("never", vec![cond(&["a"], Some(300), Some(100))])],
    );
    assert!(
        p[0].1
            .contains("\"never\" is unreachable: no call has a above 300 and up to 100"),
        "{p:?}"
    );
    // Two conditions on the same measure that cannot both hold.
    let p = problems(
        &default_prices(),
        &[tier(
            "never",
            vec![cond(&["a"], Some(300), None), cond(&["a"], None, Some(300))],
        )],
    );
    assert!(p[0].1.contains("unreachable"), "{p:?}");
    let p = problems(
        &default_prices(),
        &[
            tier("short", vec![cond(&["a"], None, Some(200_000))]),
            tier("long", vec![cond(&["a"], Some(200_000), None)]),
        ],
    );
    assert!(
        p[0].1.contains("the default prices are unreachable")
            && p[0].1.contains("\"short\", \"long\""),
        "{p:?}"
    );
}

#[test]
fn tier_prices_and_conditions_are_checked() {
    let mut t = tier("long", vec![cond(&["a", "zz"], Some(1), None)]);
    t.prices.remove("b");
    t.prices.insert("d".into(), price("1"));
    t.prices.get_mut("c").unwrap().whole = Some(true);
    t.prices.get_mut("a").unwrap().credits = "-1".parse().unwrap();
    let p = problems(&default_prices(), &[t]);
    let text = format!("{p:?}");
    for want in [
        "tiers[0].when[0].units\", \"zz is not a unit of the version's prices",
        "tiers[0].prices\", \"has no price for b",
        "tiers[0].prices.d\", \"is not a unit of the version's default prices",
        "tiers[0].prices.c.whole",
        "tiers[0].prices.a.credits\", \"must not be negative",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let p = problems(
        &default_prices(),
        &[
            tier("default", vec![cond(&["a"], Some(1), None)]),
            tier("x", vec![]),
            tier("x", vec![cond(&[], None, None)]),
        ],
    );
    let text = format!("{p:?}");
    for want in [
        "names the version's own prices",
        "needs at least one condition",
        "is also the name of tiers[1]",
        "must name at least one unit",
        "needs `above`, `up_to` or both",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // Measures that share units without being the same sum are not comparable.
    let p = problems(
        &default_prices(),
        &[
            tier("x", vec![cond(&["a", "b"], Some(1), None)]),
            tier("y", vec![cond(&["a"], None, Some(0))]),
        ],
    );
    assert!(p[0].1.contains("share units"), "{p:?}");
}

/// A tier set over measures `a` and `b` with small bounds.
fn small_tiers() -> impl Strategy<Value = Vec<Tier>> {
    let bound = proptest::option::of(0u64..8);
    let clause =
        (any::<bool>(), bound.clone(), bound).prop_filter_map("a bound", |(on_a, above, up_to)| {
            (above.is_some() || up_to.is_some())
                .then(|| cond(if on_a { &["a"] } else { &["b"] }, above, up_to))
        });
    proptest::collection::vec(proptest::collection::vec(clause, 1..3), 1..5).prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, when)| tier(&format!("t{i}"), when))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The check is exact: against every call with a, b in 0..=10 (every bound is below 8,
    /// so larger values behave like 9), it reports an overlap iff two tiers match one call,
    /// an unreachable tier iff one matches none, an unreachable default iff every call
    /// matches some tier; and a reported overlap's call matches both tiers named.
    #[test]
    fn check_equals_brute_force(tiers in small_tiers()) {
        let mut matched = vec![false; tiers.len()];
        let (mut overlap, mut default_reachable) = (false, false);
        for a in 0..=10u64 {
            for b in 0..=10u64 {
                let call = q(&[("a", a), ("b", b)]);
                let hits: Vec<usize> =
                    (0..tiers.len()).filter(|&i| tiers[i].matches(&call)).collect();
                for &i in &hits {
                    matched[i] = true;
                }
                overlap |= hits.len() > 1;
                default_reachable |= hits.is_empty();
            }
        }
        let p = problems(&default_prices(), &tiers);
        let said = |w: &str| p.iter().any(|(_, why)| why.contains(w));
        prop_assert_eq!(said("overlaps"), overlap, "{:?}", p);
        prop_assert_eq!(said("is unreachable"), matched.iter().any(|m| !m), "{:?}", p);
        if !overlap && matched.iter().all(|m| *m) {
            prop_assert_eq!(said("default prices are unreachable"), !default_reachable, "{:?}", p);
        }
        prop_assert_eq!(p.is_empty(), !overlap && matched.iter().all(|m| *m) && default_reachable);
        for (_, why) in &p {
            if let Some(rest) = why.split("a call with ").nth(1) {
                let mut call = Vec::new();
                for part in rest.split(" matches").next().unwrap().split(", ") {
                    let (u, v) = part.split_once(" = ").unwrap();
                    call.push((u.to_string(), v.parse::<Decimal>().unwrap()));
                }
                let hits = tiers.iter().filter(|t| t.matches(&call)).count();
                prop_assert!(hits >= 2, "{} does not match two tiers", why);
            }
        }
    }
}
