//! Plan book rules: point-in-time resolution, the most specific rule, refusals, and the
//! file check naming every problem.

use super::check::{PlanChange, changes, check_file};
use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const FILE: &str = r#"{
  "plans": [
    {"plan_id": "team", "effective_from": "2026-01-01T00:00:00Z",
     "rules": [{"applies_to": {"asset_type": "tool"}, "discount_percent": "10"}]},
    {"plan_id": "enterprise-acme", "effective_from": "2026-01-01T00:00:00Z", "markup_rate": "0.1",
     "description": "ACME contract 2026-014",
     "rules": [
       {"applies_to": {"vendor": "anthropic"}, "discount_percent": "15"},
       {"applies_to": {"asset_id_prefix": "anthropic/claude-3-5"}, "discount_percent": "20"},
       {"applies_to": {"asset_id": "anthropic/claude-3-5-sonnet"}, "unit_prices": {"output_tokens": {"credits": "12", "per": 1000000}}},
       {"applies_to": {"asset_type": "model"}, "discount_percent": "5"}
     ]},
    {"plan_id": "enterprise-acme", "effective_from": "2026-06-01T00:00:00Z", "markup_rate": "0.12"}
  ],
  "assignments": [
    {"account_id": "acct-acme", "plan_id": "team", "effective_from": "2026-01-01T00:00:00Z"},
    {"account_id": "acct-acme", "plan_id": "enterprise-acme", "effective_from": "2026-03-01T00:00:00Z"}
  ]
}"#;

fn book() -> PlanBook {
    check_file(FILE.as_bytes(), None).unwrap()
}

#[test]
fn the_assignment_and_version_in_force_at_the_event_time_apply() {
    let b = book();
    let at = |s: &str| {
        let r = b.resolve("acct-acme", t(s));
        (r.plan_id.to_string(), r.label.map(str::to_string))
    };
    assert_eq!(at("2025-12-31T23:59:59Z"), ("default".into(), None));
    assert_eq!(
        at("2026-02-28T23:59:59Z"),
        ("team".into(), Some("2026-01-01T00:00:00Z".into()))
    );
    assert_eq!(
        at("2026-03-01T00:00:00Z"),
        (
            "enterprise-acme".into(),
            Some("2026-01-01T00:00:00Z".into())
        )
    );
    assert_eq!(
        at("2026-06-01T00:00:00Z"),
        (
            "enterprise-acme".into(),
            Some("2026-06-01T00:00:00Z".into())
        )
    );
    let r = b.resolve("acct-acme", t("2026-04-01T00:00:00Z"));
    assert_eq!(r.markup_rate(Decimal::new(2, 1)), Decimal::new(1, 1));
    // A later version is complete: no rules any more, its own markup.
    let r = b.resolve("acct-acme", t("2026-07-01T00:00:00Z"));
    assert!(
        r.rule_for("anthropic/x", AssetType::Model, "anthropic")
            .is_none()
    );
    assert_eq!(r.markup_rate(Decimal::new(2, 1)), Decimal::new(12, 2));
    // Never assigned: the built-in default, configured markup.
    let r = b.resolve("acct-other", t("2026-04-01T00:00:00Z"));
    assert_eq!((r.plan_id, r.version.is_none()), ("default", true));
    assert_eq!(r.markup_rate(Decimal::new(2, 1)), Decimal::new(2, 1));
}

#[test]
fn the_most_specific_rule_applies_alone() {
    let b = book();
    let r = b.resolve("acct-acme", t("2026-04-01T00:00:00Z"));
    let rule = |a: &str, ty: AssetType, v: &str| r.rule_for(a, ty, v).map(|x| x.applies_to.label());
    assert_eq!(
        rule("anthropic/claude-3-5-sonnet", AssetType::Model, "anthropic").as_deref(),
        Some("asset_id:anthropic/claude-3-5-sonnet")
    );
    assert_eq!(
        rule("anthropic/claude-3-5-haiku", AssetType::Model, "anthropic").as_deref(),
        Some("asset_id_prefix:anthropic/claude-3-5")
    );
    assert_eq!(
        rule("anthropic/claude-3-opus", AssetType::Model, "anthropic").as_deref(),
        Some("vendor:anthropic")
    );
    assert_eq!(
        rule("openai/gpt-4o", AssetType::Model, "openai").as_deref(),
        Some("asset_type:model")
    );
    assert_eq!(rule("tavily/search", AssetType::Tool, "tavily"), None);
}

#[test]
fn the_book_refuses_what_would_make_resolution_ambiguous() {
    let mut b = book();
    // An assignment to a plan with no version yet at its start.
    let e = b
        .insert_assignment(PlanAssignment {
            account_id: "a".into(),
            plan_id: "team".into(),
            effective_from: t("2025-06-01T00:00:00Z"),
        })
        .unwrap_err();
    assert!(e.to_string().contains("no version in force then"), "{e}");
    let e = b
        .insert_assignment(PlanAssignment {
            account_id: "a".into(),
            plan_id: "gold".into(),
            effective_from: t("2026-06-01T00:00:00Z"),
        })
        .unwrap_err();
    assert!(e.to_string().contains("plan gold"), "{e}");
    // The same record again changes nothing; another at the same instant is refused.
    let team = b.plans().next().unwrap().clone();
    assert!(!b.insert_plan(team.clone()).unwrap());
    let mut edited = team;
    edited.markup_rate = Some(Decimal::ONE);
    assert!(matches!(
        b.insert_plan(edited),
        Err(PlanError::Conflict { .. })
    ));
    // Back to default is always possible.
    assert!(
        b.insert_assignment(PlanAssignment {
            account_id: "acct-acme".into(),
            plan_id: "default".into(),
            effective_from: t("2026-09-01T00:00:00Z"),
        })
        .unwrap()
    );
    assert_eq!(b.plan_of("acct-acme", t("2026-09-02T00:00:00Z")), "default");
}

#[test]
fn check_names_every_problem_with_its_path() {
    let bad = r#"{
      "plans": [
        {"plan_id": "bad plan", "effective_from": "2026-01-01T00:00:00Z", "markup_rate": "-1",
         "rules": [
           {"applies_to": {"vendor": "x"}, "discount_percent": "150"},
           {"applies_to": {"vendor": "x"}, "discount_percent": "1", "unit_prices": {"t": {"credits": "1", "per": 1}}},
           {"applies_to": {"asset_id": "m"}},
           {"applies_to": {"asset_id": "n"}, "unit_prices": {"t": {"credits": "0.0000000000001", "per": 0, "whole": true}}}
         ]}
      ],
      "assignments": [{"account_id": "a", "plan_id": "nope", "effective_from": "2026-01-01T00:00:00Z"}]
    }"#;
    let p = check_file(bad.as_bytes(), None).unwrap_err().0;
    let text: Vec<String> = p.iter().map(|x| x.to_string()).collect();
    let all = text.join("\n");
    for want in [
        "plans[0] bad plan@2026-01-01T00:00:00Z: plan_id: must be 1 to 64 characters",
        "markup_rate: must be between 0 and 10",
        "rules[0].discount_percent: must be above 0 and at most 100",
        "rules[1]: needs exactly one of discount_percent and unit_prices",
        "rules[1].applies_to: vendor:x is also the selector of rules[0]",
        "rules[2]: needs exactly one",
        "rules[3].unit_prices.t.per: must be at least 1",
        "rules[3].unit_prices.t.credits: has more than 12 decimals",
        "rules[3].unit_prices.t.whole: is catalog data",
        "assignments[0] assignment/a@2026-01-01T00:00:00Z: refused: assignment of a to plan nope",
    ] {
        assert!(all.contains(want), "{want}\n{all}");
    }
    let e = check_file(br#"{"plan": []}"#, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `plan`"), "{e}");
}

#[test]
fn with_a_catalog_rules_that_can_never_apply_are_named() {
    let catalog = crate::catalog::Catalog::from_json(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap(),
    )
    .unwrap();
    let f = r#"{"plans": [{"plan_id": "p", "effective_from": "2026-01-01T00:00:00Z", "rules": [
        {"applies_to": {"vendor": "nobody"}, "discount_percent": "5"},
        {"applies_to": {"asset_id": "openai/gpt-4o-mini"}, "unit_prices": {"images": {"credits": "1", "per": 1}}}
    ]}]}"#;
    let all = check_file(f.as_bytes(), Some(&catalog))
        .unwrap_err()
        .to_string();
    assert!(
        all.contains("rules[0].applies_to: vendor:nobody matches no asset of the catalog"),
        "{all}"
    );
    assert!(
        all.contains("rules[1].unit_prices.images: no asset that asset_id:openai/gpt-4o-mini matches prices images"),
        "{all}"
    );
}

#[test]
fn publishing_says_what_is_retroactive() {
    let published = book();
    let now = t("2026-05-01T00:00:00Z");
    let c = changes(&published, &published, now);
    assert!(c.iter().all(|c| matches!(c, PlanChange::Unchanged { .. })));
    let later = FILE.replace("2026-03-01", "2026-08-01");
    let c = changes(
        &check_file(later.as_bytes(), None).unwrap(),
        &published,
        now,
    );
    assert!(c.iter().any(|c| matches!(c, PlanChange::Future { key } if key == "assignment/acct-acme@2026-08-01T00:00:00Z")));
    let past = FILE.replace("2026-03-01", "2026-04-01");
    let c = changes(&check_file(past.as_bytes(), None).unwrap(), &published, now);
    assert!(c.iter().any(|c| matches!(c, PlanChange::Retroactive { key } if key == "assignment/acct-acme@2026-04-01T00:00:00Z")));
    let edited = FILE.replace("\"0.12\"", "\"0.13\"");
    let c = changes(
        &check_file(edited.as_bytes(), None).unwrap(),
        &published,
        now,
    );
    assert!(c.iter().any(|c| matches!(c, PlanChange::Edit { .. })));
    // Seeding an empty topic is never retroactive.
    let c = changes(&published, &PlanBook::default(), now);
    assert!(c.iter().all(|c| matches!(c, PlanChange::Future { .. })));
}

#[test]
fn records_round_trip_through_the_topic_format() {
    let b = book();
    let mut again = PlanBook::default();
    for r in b.records() {
        let bytes = serde_json::to_vec(&r).unwrap();
        let back: PlansRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.topic_key(), r.topic_key());
        assert!(again.apply(back).unwrap());
    }
    assert_eq!(again.record_count(), b.record_count());
    assert_eq!(b.record_count(), 5);
    let json = serde_json::to_string(&b.records()[0]).unwrap();
    assert!(
        json.starts_with(r#"{"plan":{"plan_id":"enterprise-acme""#),
        "{json}"
    );
}
