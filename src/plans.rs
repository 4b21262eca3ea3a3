//! Plans and negotiated prices, versioned in time like prices: plan versions and account
//! assignments in; for (account, instant) the plan in force out, and for a priced asset the
//! one plan rule that changes its price (a percentage discount or unit price overrides) and
//! the markup rate of agent executions. Pure: the book is built from the plans topic (or a
//! plans file) and swapped whole, like the catalog.
//!
//! Point-in-time, so replays decide the same: an event is priced under the assignment of
//! its account in force at its `occurred_at` (the greatest `effective_from` <= it), and under
//! that plan's version in force then. An account never assigned is on the plan `default`:
//! its published versions if any, else no rule and the configured markup.

pub mod check;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::{AssetType, UnitPrice};

/// The plan of accounts without an assignment in force.
pub const DEFAULT_PLAN: &str = "default";
/// Most rules one plan version may declare.
pub const MAX_RULES: usize = 256;

/// What a plan rule applies to. The most specific matching rule of a plan applies, alone:
/// `asset_id` > `asset_id_prefix` (the longest) > `vendor` > `asset_type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Selector {
    /// One asset, by its canonical id (`anthropic/claude-3-5-sonnet`).
    AssetId(String),
    /// Every asset whose id starts with this (`anthropic/`: a vendor's prefix).
    AssetIdPrefix(String),
    /// Every asset of this vendor (the price version's `vendor`).
    Vendor(String),
    /// Every asset of this type.
    AssetType(AssetType),
}

impl Selector {
    /// `asset_id:openai/gpt-4o`, as recorded on priced lines (`plan_rule`).
    pub fn label(&self) -> String {
        match self {
            Selector::AssetId(a) => format!("asset_id:{a}"),
            Selector::AssetIdPrefix(p) => format!("asset_id_prefix:{p}"),
            Selector::Vendor(v) => format!("vendor:{v}"),
            Selector::AssetType(t) => format!("asset_type:{}", t.as_str()),
        }
    }

    /// Specificity: higher wins; among prefixes the longer.
    fn rank(&self) -> (u8, usize) {
        match self {
            Selector::AssetId(_) => (3, 0),
            Selector::AssetIdPrefix(p) => (2, p.len()),
            Selector::Vendor(_) => (1, 0),
            Selector::AssetType(_) => (0, 0),
        }
    }

    fn matches(&self, asset_id: &str, asset_type: AssetType, vendor: &str) -> bool {
        match self {
            Selector::AssetId(a) => a == asset_id,
            Selector::AssetIdPrefix(p) => asset_id.starts_with(p.as_str()),
            Selector::Vendor(v) => v == vendor,
            Selector::AssetType(t) => *t == asset_type,
        }
    }
}

/// One rule of a plan: a percentage off the list price, or unit prices that replace the
/// catalog's (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRule {
    pub applies_to: Selector,
    /// Percent off the call's cost (0 < p <= 100, at most 4 decimals), e.g. `"15"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub discount_percent: Option<Decimal>,
    /// Unit -> price replacing the catalog's for that unit (other units keep the catalog's
    /// price, tiers included).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unit_prices: BTreeMap<String, UnitPrice>,
}

/// One version of a plan: complete (rules and markup), immutable once published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanVersion {
    /// `team`, `enterprise-acme`: 1 to 64 characters of a-z, 0-9, `_`, `-`, `.`.
    pub plan_id: String,
    pub effective_from: DateTime<Utc>,
    /// Markup rate of agent executions under this plan (absent: `rollup.markup_rate`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub markup_rate: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PlanRule>,
    /// Free text for people (`Team plan`, `ACME contract 2026-014`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl PlanVersion {
    /// The version label recorded on priced lines and debits (`plan_version`).
    pub fn version_label(&self) -> String {
        self.effective_from
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }

    /// Key on the compacted plans topic.
    pub fn topic_key(&self) -> String {
        format!("plan/{}@{}", self.plan_id, self.version_label())
    }

    /// The rule that applies to an asset: the most specific one matching.
    pub fn rule_for(
        &self,
        asset_id: &str,
        asset_type: AssetType,
        vendor: &str,
    ) -> Option<&PlanRule> {
        self.rules
            .iter()
            .filter(|r| r.applies_to.matches(asset_id, asset_type, vendor))
            .max_by_key(|r| r.applies_to.rank())
    }
}

/// An account's plan from an instant on (until its next assignment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanAssignment {
    pub account_id: String,
    pub plan_id: String,
    pub effective_from: DateTime<Utc>,
}

impl PlanAssignment {
    pub fn topic_key(&self) -> String {
        format!(
            "assignment/{}@{}",
            self.account_id,
            self.effective_from
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    }
}

/// A plans file: plan versions and assignments (`plans check|publish FILE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlansFile {
    #[serde(default)]
    pub plans: Vec<PlanVersion>,
    #[serde(default)]
    pub assignments: Vec<PlanAssignment>,
}

/// One message of the plans topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PlansRecord {
    Plan(PlanVersion),
    Assignment(PlanAssignment),
}

impl PlansRecord {
    pub fn topic_key(&self) -> String {
        match self {
            PlansRecord::Plan(p) => p.topic_key(),
            PlansRecord::Assignment(a) => a.topic_key(),
        }
    }
}

/// Why a plan version or assignment is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{what}: {field} {why}")]
    Invalid {
        what: String,
        field: String,
        why: String,
    },
    #[error(
        "{what} differs from the one already published at the same instant; a published version is never edited: publish a new one with a later effective_from"
    )]
    Conflict { what: String },
    #[error(
        "assignment of {account} to plan {plan} from {from}: the plan has no version in force then (publish the plan first, effective at or before the assignment)"
    )]
    NoPlanVersion {
        account: String,
        plan: String,
        from: String,
    },
}

/// A published plan version with its label computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredPlan {
    spec: PlanVersion,
    label: String,
}

/// The plan that prices an account's call at an instant: its id and version (`None`: the
/// built-in `default`, no rule).
#[derive(Debug, Clone, Copy)]
pub struct ResolvedPlan<'a> {
    pub plan_id: &'a str,
    pub version: Option<&'a PlanVersion>,
    /// The version's label (`plan_version` of lines and debits).
    pub label: Option<&'a str>,
}

impl<'a> ResolvedPlan<'a> {
    /// The markup rate of agent executions: the plan's, else `configured`.
    pub fn markup_rate(&self, configured: Decimal) -> Decimal {
        self.version
            .and_then(|v| v.markup_rate)
            .unwrap_or(configured)
    }

    pub fn rule_for(
        &self,
        asset_id: &str,
        asset_type: AssetType,
        vendor: &str,
    ) -> Option<&'a PlanRule> {
        self.version
            .and_then(|v| v.rule_for(asset_id, asset_type, vendor))
    }
}

/// Every plan version and assignment, point-in-time. Immutable once built; the plans feed
/// builds a new one per update and swaps it in whole.
#[derive(Debug, Clone, Default)]
pub struct PlanBook {
    plans: BTreeMap<String, Vec<Arc<StoredPlan>>>,
    assignments: BTreeMap<String, Vec<PlanAssignment>>,
    /// Wall time of the last update (for the age metric; not used to decide anything).
    pub updated_at: Option<DateTime<Utc>>,
}

/// The book with no plan and no assignment: every account on the built-in `default`.
pub static NO_PLANS: PlanBook = PlanBook::EMPTY;

impl PlanBook {
    pub const EMPTY: PlanBook = PlanBook {
        plans: BTreeMap::new(),
        assignments: BTreeMap::new(),
        updated_at: None,
    };

    /// Builds a book from a plans file's records (plans first, then assignments); the first
    /// refusal is the error (`plans check` lists them all: [`check::check_file`]).
    pub fn from_file(file: &PlansFile) -> Result<PlanBook, PlanError> {
        let mut b = PlanBook::default();
        for p in &file.plans {
            b.insert_plan(p.clone())?;
        }
        for a in &file.assignments {
            b.insert_assignment(a.clone())?;
        }
        Ok(b)
    }

    /// Applies one topic record; returns whether the book changed.
    pub fn apply(&mut self, r: PlansRecord) -> Result<bool, PlanError> {
        match r {
            PlansRecord::Plan(p) => self.insert_plan(p),
            PlansRecord::Assignment(a) => self.insert_assignment(a),
        }
    }

    /// Adds a plan version. The same again is a no-op; another at the same instant is a
    /// conflict.
    pub fn insert_plan(&mut self, v: PlanVersion) -> Result<bool, PlanError> {
        if let Some(e) = check::plan_problems(&v).into_iter().next() {
            return Err(e);
        }
        let list = self.plans.entry(v.plan_id.clone()).or_default();
        match list.binary_search_by(|x| x.spec.effective_from.cmp(&v.effective_from)) {
            Ok(i) if list[i].spec == v => Ok(false),
            Ok(_) => Err(PlanError::Conflict {
                what: format!("plan {} version {}", v.plan_id, v.version_label()),
            }),
            Err(i) => {
                let label = v.version_label();
                list.insert(i, Arc::new(StoredPlan { spec: v, label }));
                Ok(true)
            }
        }
    }

    /// Adds an assignment. Refused when its plan has no version in force at its
    /// `effective_from` (so resolving never finds a plan without a version), or when another
    /// assignment of the account starts at the same instant.
    pub fn insert_assignment(&mut self, a: PlanAssignment) -> Result<bool, PlanError> {
        if let Some(e) = check::assignment_problems(&a).into_iter().next() {
            return Err(e);
        }
        if a.plan_id != DEFAULT_PLAN && self.plan_version(&a.plan_id, a.effective_from).is_none() {
            return Err(PlanError::NoPlanVersion {
                account: a.account_id.clone(),
                plan: a.plan_id.clone(),
                from: a
                    .effective_from
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            });
        }
        let list = self.assignments.entry(a.account_id.clone()).or_default();
        match list.binary_search_by(|x| x.effective_from.cmp(&a.effective_from)) {
            Ok(i) if list[i] == a => Ok(false),
            Ok(_) => Err(PlanError::Conflict {
                what: format!("assignment {}", a.topic_key()),
            }),
            Err(i) => {
                list.insert(i, a);
                Ok(true)
            }
        }
    }

    /// The version of `plan_id` in force at `at`.
    pub fn plan_version(&self, plan_id: &str, at: DateTime<Utc>) -> Option<&PlanVersion> {
        self.stored(plan_id, at).map(|s| &s.spec)
    }

    fn stored(&self, plan_id: &str, at: DateTime<Utc>) -> Option<&StoredPlan> {
        let list = self.plans.get(plan_id)?;
        let i = list.partition_point(|v| v.spec.effective_from <= at);
        (i > 0).then(|| &*list[i - 1])
    }

    /// The plan id assigned to `account_id` at `at` (`default` when none).
    pub fn plan_of(&self, account_id: &str, at: DateTime<Utc>) -> &str {
        self.assignments
            .get(account_id)
            .and_then(|list| {
                let i = list.partition_point(|a| a.effective_from <= at);
                (i > 0).then(|| list[i - 1].plan_id.as_str())
            })
            .unwrap_or(DEFAULT_PLAN)
    }

    /// The plan that prices `account_id`'s calls at `at`.
    pub fn resolve(&self, account_id: &str, at: DateTime<Utc>) -> ResolvedPlan<'_> {
        if self.plans.is_empty() {
            return ResolvedPlan {
                plan_id: DEFAULT_PLAN,
                version: None,
                label: None,
            };
        }
        let plan_id = self.plan_of(account_id, at);
        let stored = self.stored(plan_id, at);
        ResolvedPlan {
            plan_id,
            version: stored.map(|s| &s.spec),
            label: stored.map(|s| s.label.as_str()),
        }
    }

    /// Every plan version, by plan id then time.
    pub fn plans(&self) -> impl Iterator<Item = &PlanVersion> {
        self.plans.values().flat_map(|l| l.iter().map(|v| &v.spec))
    }

    /// Every assignment, by account then time.
    pub fn assignments(&self) -> impl Iterator<Item = &PlanAssignment> {
        self.assignments.values().flatten()
    }

    /// Plan versions plus assignments.
    pub fn record_count(&self) -> usize {
        self.plans.values().map(Vec::len).sum::<usize>()
            + self.assignments.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty() && self.assignments.is_empty()
    }

    /// Every record, plans first (the order `plans publish` sends them in, so that an
    /// assignment never arrives before its plan).
    pub fn records(&self) -> Vec<PlansRecord> {
        self.plans()
            .cloned()
            .map(PlansRecord::Plan)
            .chain(self.assignments().cloned().map(PlansRecord::Assignment))
            .collect()
    }
}

/// The shared, swappable plan book: one writer (the plans feed), lock-free readers.
pub type PlansHandle = Arc<arc_swap::ArcSwap<PlanBook>>;

#[cfg(test)]
mod tests;
