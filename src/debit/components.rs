//! How an amount splits by component, the one rule every breakdown follows (the debit
//! message, the trace and usage answers of the API, `report`, the ClickHouse `debits` rows):
//! the **vendor price** of what was used, by asset or by component (models, tools), and then
//! the **markup as its own line**. Nothing is allocated and nothing is rounded: the vendor
//! lines sum to the subtotal and `subtotal + markup = total` exactly (`crate::money`).
//! docs/analytics.md#how-amounts-add-up says it for readers.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::BreakdownLine;
use crate::catalog::AssetType;

/// A component of an amount: the vendor price of model calls, of tool calls, or the markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Calls of `model` assets (LLMs, speech, images), at vendor price.
    Models,
    /// Calls of `tool` and `integration` assets (an integration is a tool generated from
    /// one; it is priced at 0), at vendor price.
    Tools,
    /// The markup of agent executions (`rollup.markup_rate` of their subtotal); 0 for direct
    /// use.
    Markup,
}

impl Component {
    /// Every component, in the order breakdowns list them (vendor lines, then markup).
    pub const ALL: [Component; 3] = [Component::Models, Component::Tools, Component::Markup];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Models => "models",
            Component::Tools => "tools",
            Component::Markup => "markup",
        }
    }

    /// The vendor component an asset type's calls count in.
    pub fn of(asset_type: AssetType) -> Component {
        match asset_type {
            AssetType::Model => Component::Models,
            AssetType::Tool | AssetType::Integration => Component::Tools,
        }
    }
}

/// A debit's amount by component: `models + tools + markup = total`, exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Components {
    #[serde(with = "rust_decimal::serde::str")]
    pub models: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tools: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
}

impl Components {
    /// The components of a debit's per-asset breakdown (vendor price) and its markup.
    pub fn of(breakdown: &[BreakdownLine], markup: Decimal) -> Components {
        let mut c = Components {
            markup: markup.normalize(),
            ..Components::default()
        };
        for b in breakdown {
            c.add(Component::of(b.asset_type), b.cost);
        }
        c.models = c.models.normalize();
        c.tools = c.tools.normalize();
        c
    }

    /// Adds `amount` to `component`.
    pub fn add(&mut self, component: Component, amount: Decimal) {
        match component {
            Component::Models => self.models += amount,
            Component::Tools => self.tools += amount,
            Component::Markup => self.markup += amount,
        }
    }

    /// The amount of one component.
    pub fn get(&self, component: Component) -> Decimal {
        match component {
            Component::Models => self.models,
            Component::Tools => self.tools,
            Component::Markup => self.markup,
        }
    }

    /// models + tools + markup.
    pub fn total(&self) -> Decimal {
        self.models + self.tools + self.markup
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn line(asset: &str, t: AssetType, cost: &str) -> BreakdownLine {
        BreakdownLine {
            asset_id: asset.into(),
            asset_type: t,
            price_version: "2026-01-01T00:00:00Z".into(),
            calls: 1,
            quantities: BTreeMap::new(),
            cost: cost.parse().unwrap(),
        }
    }

    #[test]
    fn the_worked_example_adds_up_with_markup_as_its_own_line() {
        // LLM 0.5 + web search 0.1 + database 0.2 = 0.8; markup 0.16; total 0.96.
        let b = [
            line("llm", AssetType::Model, "0.5"),
            line("search", AssetType::Tool, "0.1"),
            line("db", AssetType::Tool, "0.2"),
            line("slack", AssetType::Integration, "0"),
        ];
        let c = Components::of(&b, "0.16".parse().unwrap());
        assert_eq!(c.models.to_string(), "0.5");
        assert_eq!(c.tools.to_string(), "0.3");
        assert_eq!(c.markup.to_string(), "0.16");
        assert_eq!(c.total().to_string(), "0.96");
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"models":"0.5","tools":"0.3","markup":"0.16"}"#
        );
    }
}
