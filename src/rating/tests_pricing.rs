//! Tiers and plans at the rating core: the 200 000 / 200 001 boundary, every unit at the
//! selected tier, plan discounts and unit overrides on top of tiers, the markup of the plan
//! in force at the assignment instant. The helpers are shared with the rollup's pricing tests
//! (`crate::rollup::tests_pricing`: an execution's markup, a price change inside one).

use std::str::FromStr;

use rust_decimal::Decimal;

use super::*;
use crate::event::{DEFAULT_MAX_EVENT_BYTES, decode};
use crate::plans::PlanBook;

pub(crate) const CATALOG: &str = r#"[
  {"asset_id":"anthropic/sonnet","asset_type":"model","vendor":"anthropic","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"3","per":1000000},"cached_input_tokens":{"credits":"0.3","per":1000000},"output_tokens":{"credits":"15","per":1000000}},
   "tiers":[{"name":"above_200k_tokens","when":[{"units":["cached_input_tokens","input_tokens"],"above":200000}],
             "prices":{"input_tokens":{"credits":"6","per":1000000},"cached_input_tokens":{"credits":"0.6","per":1000000},"output_tokens":{"credits":"22.5","per":1000000}}}]},
  {"asset_id":"tavily/search","asset_type":"tool","vendor":"tavily","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"queries":{"credits":"0.008","per":1}}}
]"#;

const PLANS: &str = r#"{
  "plans": [
    {"plan_id": "enterprise-acme", "effective_from": "2026-01-01T00:00:00Z", "markup_rate": "0.1",
     "rules": [
       {"applies_to": {"vendor": "anthropic"}, "discount_percent": "15"},
       {"applies_to": {"asset_id": "tavily/search"}, "unit_prices": {"queries": {"credits": "0.005", "per": 1}}}
     ]}
  ],
  "assignments": [
    {"account_id": "acme", "plan_id": "enterprise-acme", "effective_from": "2026-03-01T12:00:00Z"}
  ]
}"#;

pub(crate) fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub(crate) fn catalog() -> Catalog {
    Catalog::from_json(CATALOG.as_bytes()).unwrap()
}

pub(crate) fn plans() -> PlanBook {
    crate::plans::check::check_file(PLANS.as_bytes(), None).unwrap()
}

pub(crate) fn call(
    account: &str,
    exec: Option<&str>,
    id: &str,
    at: &str,
    asset: &str,
    q: &str,
) -> String {
    let exec = exec
        .map(|x| format!(r#""execution_id":"{x}","#))
        .unwrap_or_default();
    format!(
        r#"{{"type":"model_call","event_id":"{id}","occurred_at":"{at}","account_id":"{account}",{exec}"asset_id":"{asset}","quantities":{q}}}"#
    )
}

fn line(c: &Catalog, p: &PlanBook, json: &str) -> PricedLine {
    let ev = decode(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap();
    price_call(
        &ev,
        Pricing {
            catalog: c,
            plans: p,
        },
        0,
        1,
    )
    .unwrap()
}

#[test]
fn every_unit_of_a_call_above_the_boundary_is_priced_at_the_tier() {
    let (c, none) = (catalog(), PlanBook::default());
    let at = "2026-02-01T00:00:00Z";
    // 150 000 + 50 000 prompt tokens: exactly 200 000, the default prices.
    let q = r#"{"input_tokens":150000,"cached_input_tokens":50000,"output_tokens":1000}"#;
    let l = line(&c, &none, &call("a", None, "e", at, "anthropic/sonnet", q));
    assert_eq!(l.tier.as_deref(), Some("default"));
    // 0.45 + 0.015 + 0.015
    assert_eq!(l.cost, d("0.48"));
    let credits = |l: &PricedLine, unit: &str| {
        l.units
            .iter()
            .find(|u| u.unit == unit)
            .map(|u| u.credits.to_string())
    };
    assert_eq!(credits(&l, "cached_input_tokens").as_deref(), Some("0.3"));
    // One more prompt token: every unit, output included, at the tier's prices.
    let q = r#"{"input_tokens":150001,"cached_input_tokens":50000,"output_tokens":1000}"#;
    let l = line(&c, &none, &call("a", None, "e", at, "anthropic/sonnet", q));
    assert_eq!(l.tier.as_deref(), Some("above_200k_tokens"));
    // 150001 * 6/1M + 50000 * 0.6/1M + 1000 * 22.5/1M = 0.900006 + 0.03 + 0.0225
    assert_eq!(l.cost, d("0.952506"));
    for (unit, c) in [
        ("input_tokens", "6"),
        ("cached_input_tokens", "0.6"),
        ("output_tokens", "22.5"),
    ] {
        assert_eq!(credits(&l, unit).as_deref(), Some(c), "{unit}");
    }
    // A version without tiers records none (the line's bytes as before tiers existed).
    let l = line(
        &c,
        &none,
        &call("a", None, "e", at, "tavily/search", r#"{"queries":1}"#),
    );
    assert_eq!(l.tier, None);
    assert!(!String::from_utf8(l.encode()).unwrap().contains("tier"));
}

#[test]
fn plans_discount_and_override_from_the_assignment_instant() {
    let (c, p) = (catalog(), plans());
    let q = r#"{"input_tokens":100000,"output_tokens":100000}"#;
    // Before the assignment: the default plan, list price 0.3 + 1.5.
    let before = line(
        &c,
        &p,
        &call(
            "acme",
            None,
            "e",
            "2026-03-01T11:59:59Z",
            "anthropic/sonnet",
            q,
        ),
    );
    assert_eq!(
        (before.plan.as_str(), before.plan_version.as_deref()),
        ("default", None)
    );
    assert_eq!(before.cost, d("1.8"));
    assert_eq!(before.discount_percent, None);
    // From it: 15 % off the vendor's models, applied to the exact cost then rounded once.
    let after = line(
        &c,
        &p,
        &call(
            "acme",
            None,
            "e",
            "2026-03-01T12:00:00Z",
            "anthropic/sonnet",
            q,
        ),
    );
    assert_eq!(after.plan, "enterprise-acme");
    assert_eq!(after.plan_version.as_deref(), Some("2026-01-01T00:00:00Z"));
    assert_eq!(after.plan_rule.as_deref(), Some("vendor:anthropic"));
    assert_eq!(after.discount_percent, Some(d("15")));
    assert_eq!(after.cost, d("1.53"));
    // The units show list prices; the discount is on the line.
    assert_eq!(after.units[0].credits, d("3"));
    // A discount applies on top of the tier.
    let long = line(
        &c,
        &p,
        &call(
            "acme",
            None,
            "e",
            "2026-03-02T00:00:00Z",
            "anthropic/sonnet",
            r#"{"input_tokens":200001}"#,
        ),
    );
    assert_eq!(long.tier.as_deref(), Some("above_200k_tokens"));
    // 200001 * 6/1M = 1.200006, 15 % off = 1.0200051
    assert_eq!(long.cost, d("1.0200051"));
    // A unit price override replaces the catalog's price.
    let tool = line(
        &c,
        &p,
        &call(
            "acme",
            None,
            "e",
            "2026-03-02T00:00:00Z",
            "tavily/search",
            r#"{"queries":3}"#,
        ),
    );
    assert_eq!(tool.cost, d("0.015"));
    assert_eq!((tool.units[0].credits, tool.units[0].per), (d("0.005"), 1));
    assert_eq!(tool.plan_rule.as_deref(), Some("asset_id:tavily/search"));
}
