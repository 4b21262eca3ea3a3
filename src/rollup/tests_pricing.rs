//! Pricing through the rollup: the markup of the plan in force at an execution's first call,
//! and a price change between two calls of one execution (its breakdown split by version).
//! The catalog, plans and event helpers are the rating core's (`crate::rating::tests_pricing`).

use crate::catalog::Catalog;
use crate::rating::Pricing;
use crate::rating::tests_pricing::{CATALOG, call, catalog, d, plans};
use crate::rollup::{Output, PartitionRollup, RollupConfig};

#[test]
fn an_execution_is_marked_up_at_the_plan_of_its_first_call() {
    let (c, p) = (catalog(), plans());
    let pricing = Pricing {
        catalog: &c,
        plans: &p,
    };
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    let mut out = Vec::new();
    let q = r#"{"queries":100}"#;
    // First call before the assignment (default plan, list price), second after it.
    let events = [
        call("acme", Some("x1"), "c1", "2026-03-01T11:59:00Z", "tavily/search", q),
        call("acme", Some("x1"), "c2", "2026-03-01T12:01:00Z", "tavily/search", q),
        r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T12:02:00Z","account_id":"acme","execution_id":"x1"}"#.to_string(),
        call("acme", Some("x2"), "c3", "2026-03-01T12:05:00Z", "tavily/search", q),
        r#"{"type":"execution_finished","event_id":"f2","occurred_at":"2026-03-01T12:06:00Z","account_id":"acme","execution_id":"x2"}"#.to_string(),
        // A late call to x2: an adjustment at the markup of the plan at its own time.
        call("acme", Some("x2"), "c4", "2026-03-01T12:07:00Z", "tavily/search", q),
    ];
    for (i, e) in events.iter().enumerate() {
        r.process(i as i64, e.as_bytes(), pricing, 0, &mut out);
    }
    let debits: Vec<&crate::debit::Debit> = out
        .iter()
        .filter_map(|o| match o {
            Output::Debit(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(debits.len(), 3, "{debits:?}");
    // x1: 0.8 (list) + 0.5 (override) = 1.3, markup of the default plan (first call) 20 %.
    assert_eq!(
        (debits[0].subtotal, debits[0].markup_rate, debits[0].total),
        (d("1.3"), d("0.2"), d("1.56"))
    );
    assert_eq!(debits[0].plan, "default");
    // Two breakdown lines? No: one asset, one version; the plan does not split it.
    assert_eq!(debits[0].breakdown.len(), 1);
    assert_eq!(debits[0].breakdown[0].price_version, "2024-01-01T00:00:00Z");
    // x2 and its adjustment: the enterprise plan, 10 %.
    assert_eq!(
        (
            debits[1].plan.as_str(),
            debits[1].markup_rate,
            debits[1].total
        ),
        ("enterprise-acme", d("0.1"), d("0.55"))
    );
    assert_eq!(
        (debits[2].kind, debits[2].markup_rate, debits[2].total),
        (
            crate::debit::DebitKind::AgentExecutionAdjustment,
            d("0.1"),
            d("0.55")
        )
    );
    assert_eq!(
        debits[2].plan_version.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
}

#[test]
fn a_price_change_inside_an_execution_splits_its_breakdown_by_version() {
    let c = Catalog::from_json(
        CATALOG
            .replace(
                r#"{"asset_id":"tavily/search","asset_type":"tool","vendor":"tavily","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"queries":{"credits":"0.008","per":1}}}"#,
                r#"{"asset_id":"tavily/search","asset_type":"tool","vendor":"tavily","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"queries":{"credits":"0.008","per":1}}},
  {"asset_id":"tavily/search","asset_type":"tool","vendor":"tavily","effective_from":"2026-03-01T12:00:00Z",
   "prices":{"queries":{"credits":"0.01","per":1}}}"#,
            )
            .as_bytes(),
    )
    .unwrap();
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    let mut out = Vec::new();
    let q = r#"{"queries":1}"#;
    for (i, e) in [
        call("a", Some("x"), "c1", "2026-03-01T11:59:00Z", "tavily/search", q),
        call("a", Some("x"), "c2", "2026-03-01T12:01:00Z", "tavily/search", q),
        r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T12:02:00Z","account_id":"a","execution_id":"x"}"#.to_string(),
    ]
    .iter()
    .enumerate()
    {
        r.process(i as i64, e.as_bytes(), &c, 0, &mut out);
    }
    let Some(Output::Debit(debit)) = out.last() else {
        panic!("{out:?}")
    };
    let b: Vec<(&str, &str, String)> = debit
        .breakdown
        .iter()
        .map(|b| {
            (
                b.asset_id.as_str(),
                b.price_version.as_str(),
                b.cost.to_string(),
            )
        })
        .collect();
    assert_eq!(
        b,
        [
            ("tavily/search", "2024-01-01T00:00:00Z", "0.008".to_string()),
            ("tavily/search", "2026-03-01T12:00:00Z", "0.01".to_string())
        ]
    );
    assert_eq!(debit.subtotal, d("0.018"));
}
