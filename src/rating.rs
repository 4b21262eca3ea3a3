//! Pricing one call: a validated call event, the catalog and the plans in, a [`PricedLine`]
//! or a rejection out. Point-in-time: the price version in force at the event's own
//! `occurred_at`, its tier chosen by the call's quantities, and the account's plan in force
//! then (a discount or unit price overrides of the most specific matching rule).

use rust_decimal::Decimal;

use crate::catalog::{AssetType, Catalog, LookupError};
use crate::debit::{LineKind, PricedLine, PricedUnit};
use crate::event::{EventKind, UsageEvent};
use crate::money;
use crate::plans::{NO_PLANS, PlanBook};
use crate::rejection::{RejectReason, Rejection, excerpt};

/// What prices a call: the price catalog and the plan book (both point-in-time).
#[derive(Debug, Clone, Copy)]
pub struct Pricing<'a> {
    pub catalog: &'a Catalog,
    pub plans: &'a PlanBook,
}

impl<'a> From<&'a Catalog> for Pricing<'a> {
    /// The catalog alone: every account on the built-in `default` plan.
    fn from(catalog: &'a Catalog) -> Self {
        Pricing {
            catalog,
            plans: &NO_PLANS,
        }
    }
}

/// The live pipeline's view of prices: the catalog and the plan book, each swapped whole by
/// its feed. `From<CatalogHandle>`: a catalog alone (every account on `default`).
#[derive(Debug, Clone)]
pub struct PricingHandle {
    pub catalog: crate::catalog::CatalogHandle,
    pub plans: crate::plans::PlansHandle,
}

impl From<crate::catalog::CatalogHandle> for PricingHandle {
    fn from(catalog: crate::catalog::CatalogHandle) -> Self {
        PricingHandle {
            catalog,
            plans: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(PlanBook::default())),
        }
    }
}

impl PricingHandle {
    /// The current catalog and plans, held for one call or batch ([`PricingGuard::get`]).
    pub fn load(&self) -> PricingGuard {
        PricingGuard {
            catalog: self.catalog.load(),
            plans: self.plans.load(),
        }
    }
}

/// Loaded catalog and plans (arc-swap guards).
pub struct PricingGuard {
    catalog: arc_swap::Guard<std::sync::Arc<Catalog>>,
    plans: arc_swap::Guard<std::sync::Arc<PlanBook>>,
}

impl PricingGuard {
    pub fn get(&self) -> Pricing<'_> {
        Pricing {
            catalog: &self.catalog,
            plans: &self.plans,
        }
    }
}

/// Refuses a fraction of a unit that counts whole things (`invalid_quantity`): whether a unit
/// is whole is catalog data ([`Catalog::whole_unit`]: the `whole` flag of the unit's price in
/// the version in force, by default from the unit's name). Runs before anything else looks
/// at the call (execution bookkeeping, pricing), as the contract checks of the decoder do.
pub fn check_whole_units(event: &UsageEvent, catalog: &Catalog) -> Result<(), Rejection> {
    let sent = event.asset_id.as_deref().unwrap_or_default();
    for (unit, quantity) in &event.quantities {
        if !quantity.fract().is_zero() && catalog.whole_unit(sent, event.occurred_at, unit) {
            return Err(Rejection::new(
                RejectReason::InvalidQuantity,
                format!(
                    "quantities.{} must be a whole number for a counted unit, got {quantity}",
                    excerpt(unit)
                ),
            ));
        }
    }
    Ok(())
}

/// Prices a call event. Never bills an unknown asset, time or unit as 0. Every unit of the
/// call is priced at the selected tier (first matching in declared order, else the default
/// prices); a plan rule then replaces unit prices or takes a percentage off the exact cost,
/// which is rounded once ([`money::round_line_cost`]).
pub fn price_call<'a>(
    event: &UsageEvent,
    pricing: impl Into<Pricing<'a>>,
    partition: i32,
    offset: i64,
) -> Result<PricedLine, Rejection> {
    let Pricing { catalog, plans } = pricing.into();
    let sent = event.asset_id.as_deref().unwrap_or_default();
    // An alias only names an asset; the price is that asset's, or a rejection, never 0.
    let asset_id = catalog.resolve(sent).unwrap_or(sent);
    let version = catalog
        .lookup(asset_id, event.occurred_at)
        .map_err(|e| match e {
            LookupError::UnknownAsset => Rejection::new(
                RejectReason::UnknownAsset,
                format!(
                    "asset_id {} is not in the price catalog (nor an alias of an asset in it); publish a price version or an alias and replay",
                    excerpt(asset_id)
                ),
            ),
            LookupError::BeforeFirstVersion(first) => Rejection::new(
                RejectReason::NoPriceAtTime,
                format!(
                    "asset_id {}{} has no price at occurred_at {}; its first version is effective from {}",
                    excerpt(sent),
                    alias_note(sent, asset_id),
                    event.occurred_at.to_rfc3339(),
                    first.to_rfc3339()
                ),
            ),
        })?;
    let (tier, prices) = version.tier_for(&event.quantities);
    let plan = plans.resolve(&event.account_id, event.occurred_at);
    let rule = if version.asset_type == AssetType::Integration {
        None
    } else {
        plan.rule_for(asset_id, version.asset_type, &version.vendor)
    };
    let mut units = Vec::with_capacity(event.quantities.len());
    let mut exact = Decimal::ZERO;
    for (unit, quantity) in &event.quantities {
        let (credits, per) = if version.asset_type == AssetType::Integration {
            (Decimal::ZERO, 1)
        } else {
            let p = prices.iter().find(|(u, _)| u == unit).map(|(_, p)| p);
            let p = p.ok_or_else(|| {
                Rejection::new(
                    RejectReason::UnknownUnit,
                    format!(
                        "quantities.{} has no price for asset_id {}{} (version {}); priced units: {}",
                        excerpt(unit),
                        excerpt(sent),
                        alias_note(sent, asset_id),
                        version.label,
                        prices
                            .iter()
                            .map(|(u, _)| u.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            match rule.and_then(|r| r.unit_prices.get(unit)) {
                Some(o) => (o.credits, o.per),
                None => (p.credits, p.per),
            }
        };
        let c = money::unit_cost(*quantity, credits, per)
            .and_then(|c| money::add(exact, c))
            .map_err(|e| {
                Rejection::new(
                    RejectReason::InvalidQuantity,
                    format!("quantities.{} cannot be priced: {e}", excerpt(unit)),
                )
            })?;
        exact = c;
        units.push(PricedUnit {
            unit: unit.clone(),
            quantity: *quantity,
            credits,
            per,
        });
    }
    let discount = rule.and_then(|r| r.discount_percent);
    if let Some(p) = discount {
        exact = money::discounted(exact, p).map_err(|e| {
            Rejection::new(
                RejectReason::InvalidQuantity,
                format!("the call cannot be priced with its plan's discount: {e}"),
            )
        })?;
    }
    Ok(PricedLine {
        event_id: event.event_id.clone(),
        kind: if event.kind == EventKind::ModelCall {
            LineKind::ModelCall
        } else {
            LineKind::ToolCall
        },
        occurred_at: event.occurred_at,
        account_id: event.account_id.clone(),
        execution_id: event.execution_id.clone(),
        agent_id: event.agent_id.clone(),
        component: event.component.clone(),
        asset_id: asset_id.to_string(),
        asset_name_sent: (sent != asset_id).then(|| sent.to_string()),
        asset_type: version.asset_type,
        vendor: version.vendor.to_string(),
        price_version: version.label.to_string(),
        tier: tier.map(str::to_string),
        plan: plan.plan_id.to_string(),
        plan_version: plan.label.map(str::to_string),
        plan_rule: rule.map(|r| r.applies_to.label()),
        discount_percent: discount,
        units,
        cost: money::round_line_cost(exact),
        dimensions: event.dimensions.clone(),
        event_partition: partition,
        event_offset: offset,
    })
}

fn alias_note(sent: &str, asset_id: &str) -> String {
    if sent == asset_id {
        String::new()
    } else {
        format!(" (alias of {})", excerpt(asset_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DEFAULT_MAX_EVENT_BYTES, decode};

    const CATALOG: &str = r#"[
      {"asset_id":"m","asset_type":"model","vendor":"openai","effective_from":"2024-01-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"0.15","per":1000000},"output_tokens":{"credits":"0.6","per":1000000}}},
      {"asset_id":"m","asset_type":"model","vendor":"openai","effective_from":"2026-06-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"0.12","per":1000000},"output_tokens":{"credits":"0.48","per":1000000}}},
      {"asset_id":"i","asset_type":"integration","vendor":"slack","effective_from":"2024-01-01T00:00:00Z","prices":{}}
    ]"#;

    fn ev(asset: &str, at: &str, q: &str) -> UsageEvent {
        let s = format!(
            r#"{{"type":"model_call","event_id":"e","occurred_at":"{at}","account_id":"a","asset_id":"{asset}","quantities":{q}}}"#
        );
        decode(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap()
    }

    #[test]
    fn prices_tokens_at_the_version_in_force() {
        let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
        let q = r#"{"input_tokens":1200,"output_tokens":350}"#;
        let old = price_call(&ev("m", "2026-05-01T00:00:00Z", q), &c, 0, 1).unwrap();
        // 1200 * 0.15/1M + 350 * 0.6/1M = 0.00018 + 0.00021
        assert_eq!(old.cost.to_string(), "0.00039");
        assert_eq!(old.price_version, "2024-01-01T00:00:00Z");
        let new = price_call(&ev("m", "2026-06-02T00:00:00Z", q), &c, 0, 1).unwrap();
        assert_eq!(new.cost.to_string(), "0.000312");
        assert_eq!(new.vendor, "openai");
    }

    #[test]
    fn never_bills_unknown_things_at_zero() {
        let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
        let q = r#"{"input_tokens":1}"#;
        let r = price_call(&ev("x", "2026-05-01T00:00:00Z", q), &c, 0, 1).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownAsset);
        let r = price_call(&ev("m", "2023-05-01T00:00:00Z", q), &c, 0, 1).unwrap_err();
        assert_eq!(r.reason, RejectReason::NoPriceAtTime);
        let r = price_call(
            &ev("m", "2026-05-01T00:00:00Z", r#"{"images":1}"#),
            &c,
            0,
            1,
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownUnit);
        assert!(r.message.contains("images") && r.message.contains("input_tokens"));
    }

    #[test]
    fn aliases_price_under_the_canonical_asset_and_keep_the_name_sent() {
        let c = Catalog::from_json(
            &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap(),
        )
        .unwrap();
        let q = r#"{"input_tokens":1000000,"output_tokens":1000000}"#;
        for (sent, canonical, cost) in [
            ("gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini", "0.75"),
            (
                "openai/gpt-4o-mini-2024-07-18",
                "openai/gpt-4o-mini",
                "0.75",
            ),
            (
                "claude-3-5-sonnet-20241022",
                "anthropic/claude-3-5-sonnet",
                "18",
            ),
            (
                "models/gemini-1.5-flash-002",
                "google/gemini-1.5-flash",
                "0.375",
            ),
        ] {
            let l = price_call(&ev(sent, "2026-05-01T00:00:00Z", q), &c, 0, 1).unwrap();
            assert_eq!(l.asset_id, canonical);
            assert_eq!(l.asset_name_sent.as_deref(), Some(sent));
            assert_eq!(l.cost.normalize().to_string(), cost, "{sent}");
            assert_eq!(l.vendor, canonical.split('/').next().unwrap());
        }
        // The alias follows the canonical asset's point-in-time versions.
        let l = price_call(
            &ev("gpt-4o-mini-2024-07-18", "2026-06-01T00:00:00Z", q),
            &c,
            0,
            1,
        )
        .unwrap();
        assert_eq!(l.cost.normalize().to_string(), "0.6");
        assert_eq!(l.price_version, "2026-06-01T00:00:00Z");
        // The canonical name keeps no extra field (priced_usage bytes as before).
        let l = price_call(
            &ev("openai/gpt-4o-mini", "2026-05-01T00:00:00Z", q),
            &c,
            0,
            1,
        )
        .unwrap();
        assert_eq!(l.asset_name_sent, None);
        assert!(
            !String::from_utf8(l.encode())
                .unwrap()
                .contains("asset_name_sent")
        );
    }

    #[test]
    fn an_alias_never_makes_a_name_cost_zero() {
        let c = Catalog::from_json(
            &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap(),
        )
        .unwrap();
        let q = r#"{"input_tokens":1}"#;
        let r = price_call(
            &ev("gpt-4o-mini-2024-07", "2026-05-01T00:00:00Z", q),
            &c,
            0,
            1,
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownAsset);
        let r = price_call(
            &ev("claude-3-5-sonnet-20241022", "2023-05-01T00:00:00Z", q),
            &c,
            0,
            1,
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::NoPriceAtTime);
        assert!(
            r.message.contains("alias of anthropic/claude-3-5-sonnet"),
            "{}",
            r.message
        );
        let r = price_call(
            &ev(
                "models/gemini-1.5-flash-002",
                "2026-05-01T00:00:00Z",
                r#"{"images":1}"#,
            ),
            &c,
            0,
            1,
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownUnit);
    }

    proptest::proptest! {
        /// Dimensions label a call; whatever they are, the price is the one without them.
        #[test]
        fn dimensions_never_change_the_price(
            dims in proptest::collection::btree_map("[a-z][a-z0-9_]{0,10}", "[^\\p{Cc}\"\\\\]{1,20}", 0..=16),
            input in 0u64..10_000_000,
            output in 0u64..10_000_000,
        ) {
            let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
            let q = format!(r#"{{"input_tokens":{input},"output_tokens":{output}}}"#);
            let plain = price_call(&ev("m", "2026-05-01T00:00:00Z", &q), &c, 0, 1).unwrap();
            let mut labelled = ev("m", "2026-05-01T00:00:00Z", &q);
            labelled.dimensions = dims.clone();
            let l = price_call(&labelled, &c, 0, 1).unwrap();
            proptest::prop_assert_eq!(l.cost, plain.cost);
            proptest::prop_assert_eq!(&l.units, &plain.units);
            proptest::prop_assert_eq!(&l.dimensions, &dims);
        }
    }

    #[test]
    fn dimensions_reach_the_line_and_a_retry_with_others_conflicts() {
        use crate::rollup::{Outcome, Output, PartitionRollup, RollupConfig};
        let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
        let e = |dims: &str| {
            format!(
                r#"{{"type":"model_call","event_id":"e1","occurred_at":"2026-05-01T00:00:00Z","account_id":"a","asset_id":"m","dimensions":{dims},"quantities":{{"input_tokens":10}}}}"#
            )
        };
        let mut r = PartitionRollup::new(RollupConfig::default(), 0);
        let mut out = Vec::new();
        let first = e(r#"{"project":"apollo","end_user":"u1"}"#);
        assert!(matches!(
            r.process(0, first.as_bytes(), &c, 0, &mut out),
            Outcome::Priced(_)
        ));
        let Some(Output::Line(line)) = out.first() else {
            panic!("{out:?}")
        };
        assert_eq!(line.dimensions["project"], "apollo");
        let json = String::from_utf8(line.encode()).unwrap();
        assert!(
            json.contains(r#""dimensions":{"end_user":"u1","project":"apollo"}"#),
            "{json}"
        );
        // The same dimensions in another order: a retry, billed once.
        let retry = e(r#"{"end_user":"u1","project":"apollo"}"#);
        assert_eq!(
            r.process(1, retry.as_bytes(), &c, 0, &mut out),
            Outcome::Duplicate
        );
        // Other dimensions: a conflicting duplicate, rejected and not billed.
        let other = e(r#"{"project":"zeus","end_user":"u1"}"#);
        assert_eq!(
            r.process(2, other.as_bytes(), &c, 0, &mut out),
            Outcome::Rejected(RejectReason::ConflictingDuplicate)
        );
        // No dimensions at all is other content too.
        let none = e("{}");
        assert_eq!(
            r.process(3, none.as_bytes(), &c, 0, &mut out),
            Outcome::Rejected(RejectReason::ConflictingDuplicate)
        );
    }

    #[test]
    fn fractions_of_whole_units_are_refused_by_catalog_data() {
        let c = Catalog::from_json(
            CATALOG
                .replace(
                    r#""output_tokens":{"credits":"0.6","per":1000000}}"#,
                    r#""output_tokens":{"credits":"0.6","per":1000000},"audio_seconds":{"credits":"1","per":60,"whole":true}}"#,
                )
                .as_bytes(),
        )
        .unwrap();
        let at = "2026-05-01T00:00:00Z";
        let r = check_whole_units(&ev("m", at, r#"{"input_tokens":"1.5"}"#), &c).unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidQuantity);
        assert!(
            r.message
                .contains("quantities.input_tokens must be a whole number")
                && r.message.contains("1.5"),
            "{}",
            r.message
        );
        // A unit flagged whole in the catalog, whatever its name.
        let r = check_whole_units(&ev("m", at, r#"{"audio_seconds":"0.5"}"#), &c).unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidQuantity);
        // Whole values (3.0 included) and fractional units pass.
        check_whole_units(
            &ev("m", at, r#"{"input_tokens":"3.0","audio_minutes":"0.5"}"#),
            &c,
        )
        .unwrap();
        // Unknown asset or integration: the name decides, before any lookup error.
        assert!(check_whole_units(&ev("x", at, r#"{"input_tokens":0.5}"#), &c).is_err());
        assert!(check_whole_units(&ev("i", at, r#"{"requests":0.5}"#), &c).is_err());
    }

    #[test]
    fn integrations_have_no_direct_cost() {
        let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
        let l = price_call(
            &ev("i", "2026-05-01T00:00:00Z", r#"{"requests":3}"#),
            &c,
            0,
            1,
        )
        .unwrap();
        assert!(l.cost.is_zero());
    }
}
#[cfg(test)]
pub(crate) mod tests_pricing;
