//! Price catalog: JSON price versions in, a point-in-time lookup (asset, time) -> version out.
//! The catalog is immutable once built; updates build a new one that is swapped in whole.
//! Names sent by producers resolve to a canonical asset through aliases (`catalog/aliases.rs`).

pub mod aliases;
pub mod correction;
pub mod litellm;
pub mod tiers;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::money::LINE_COST_SCALE;
pub use correction::{CorrectionWindow, VersionCorrection, valid_correction_id};

pub mod check;

/// What kind of asset a price version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetType {
    Model,
    Tool,
    Integration,
}

impl AssetType {
    /// Every asset type, in declaration order (`ALL[t as usize] == t`): iterate this, never a
    /// list of names. A new type goes at the end of the enum and of this list.
    pub const ALL: [AssetType; 3] = [AssetType::Model, AssetType::Tool, AssetType::Integration];

    /// The name in catalogs (serde), priced lines, metric labels and ClickHouse rows.
    pub fn as_str(self) -> &'static str {
        match self {
            AssetType::Model => "model",
            AssetType::Tool => "tool",
            AssetType::Integration => "integration",
        }
    }
}

/// Unit name endings that count whole things. A unit whose price does not say whether it is
/// whole (`whole` absent, as in every catalog written before the flag existed) is whole when
/// its name ends in one of these; so is a unit the catalog does not price for the event.
pub const WHOLE_UNIT_SUFFIXES: [&str; 7] = [
    "tokens",
    "requests",
    "queries",
    "calls",
    "images",
    "characters",
    "pages",
];

/// The default of [`UnitPrice::whole`]: true for units whose name counts whole things
/// ([`WHOLE_UNIT_SUFFIXES`]).
pub fn counts_whole_things(unit: &str) -> bool {
    WHOLE_UNIT_SUFFIXES.iter().any(|s| unit.ends_with(s))
}

/// Credits per `per` units of one unit name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitPrice {
    #[serde(with = "rust_decimal::serde::str")]
    pub credits: Decimal,
    pub per: u64,
    /// Whether quantities of this unit must be whole numbers (a fraction is rejected as
    /// `invalid_quantity`). Absent: [`counts_whole_things`] of the unit's name. Not written
    /// when absent, so versions published before the flag keep their exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<bool>,
}

impl UnitPrice {
    /// Whether `unit`, priced by this price, takes only whole quantities.
    pub fn is_whole(&self, unit: &str) -> bool {
        self.whole.unwrap_or_else(|| counts_whole_things(unit))
    }
}

/// One price version as written in a catalog file or on the catalog topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceVersion {
    pub asset_id: String,
    pub asset_type: AssetType,
    pub vendor: String,
    pub effective_from: DateTime<Utc>,
    pub prices: std::collections::BTreeMap<String, UnitPrice>,
    /// Other names producers send for this asset (exact, case-sensitive). They belong to the
    /// asset, whatever the time: see docs/price-catalog.md#aliases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Regex patterns (regex crate syntax) matched against the whole name sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alias_patterns: Vec<String>,
    /// Tiered prices: the first tier whose conditions hold prices every unit of a call;
    /// none matching, `prices` do (the `default` tier). See [`tiers`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<tiers::Tier>,
    /// Set on a version published by `catalog publish --correction ID`: it replaces the
    /// version of the same asset and instant (or adds one in the past) for the window up to
    /// the asset's next version, and `rerate --correction ID` re-prices that window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<VersionCorrection>,
}

impl PriceVersion {
    /// Key on the compacted catalog topic: all versions of an asset are kept (a correction
    /// under its own key, so the version it replaces stays on the topic).
    pub fn topic_key(&self) -> String {
        format!("{}@{}", self.asset_id, self.version_label())
    }

    /// The price version label stored with every priced line: the effective instant, and
    /// `#ID` for a version of correction `ID` (`2026-07-01T00:00:00Z#fix-42`).
    pub fn version_label(&self) -> String {
        let at = self
            .effective_from
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        match &self.correction {
            Some(c) => format!("{at}#{}", c.id),
            None => at,
        }
    }

    /// Checks the version's own rules; names the field and value on failure (the first
    /// broken rule; [`PriceVersion::problems`] lists them all).
    pub fn validate(&self) -> Result<(), CatalogError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every rule of the version's own that it breaks, each naming the field and value.
    pub fn problems(&self) -> Vec<CatalogError> {
        let mut out = Vec::new();
        let mut bad = |field: &str, why: String| {
            out.push(CatalogError::Invalid {
                asset: self.asset_id.clone(),
                field: field.to_string(),
                why,
            })
        };
        if self.asset_id.is_empty() || self.asset_id.len() > crate::event::MAX_ID_BYTES {
            bad("asset_id", "must be 1 to 256 bytes".into());
        }
        if self.asset_type == AssetType::Integration && !self.prices.is_empty() {
            bad(
                "prices",
                "integrations have no direct cost; leave prices empty".into(),
            );
        }
        if self.asset_type != AssetType::Integration && self.prices.is_empty() {
            bad(
                "prices",
                "a model or tool needs at least one unit price".into(),
            );
        }
        if self.aliases.len() + self.alias_patterns.len() > aliases::MAX_ALIASES_PER_VERSION {
            bad(
                "aliases",
                format!(
                    "declares more than {} aliases and patterns",
                    aliases::MAX_ALIASES_PER_VERSION
                ),
            );
        }
        for (i, a) in self.aliases.iter().enumerate() {
            if a.is_empty()
                || a.len() > crate::event::MAX_ID_BYTES
                || a.chars().any(char::is_control)
            {
                bad(
                    &format!("aliases[{i}]"),
                    format!("must be 1 to 256 bytes without control characters, got {a:?}"),
                );
            }
        }
        for (i, p) in self.alias_patterns.iter().enumerate() {
            if let Err(why) = aliases::AliasPattern::compile(p) {
                bad(&format!("alias_patterns[{i}]"), format!("{p:?} {why}"));
            }
        }
        for (unit, p) in &self.prices {
            for (f, why) in price_problems(&format!("prices.{unit}"), p) {
                bad(&f, why);
            }
        }
        if let Some(c) = &self.correction {
            if !valid_correction_id(&c.id) {
                bad(
                    "correction.id",
                    format!("must be 1 to 64 bytes of A-Z a-z 0-9 . _ -, got {:?}", c.id),
                );
            }
            if c.reason.trim().is_empty() || c.reason.len() > 1000 {
                bad(
                    "correction.reason",
                    "must say why, in 1 to 1000 bytes".into(),
                );
            }
        }
        if self.asset_type == AssetType::Integration && !self.tiers.is_empty() {
            bad("tiers", "integrations have no prices to tier".into());
        } else {
            for (f, why) in tiers::problems(&self.prices, &self.tiers) {
                bad(&f, why);
            }
        }
        out
    }

    /// The alias patterns, compiled; names the pattern on failure.
    pub fn compiled_patterns(&self) -> Result<Vec<aliases::AliasPattern>, CatalogError> {
        self.alias_patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                aliases::AliasPattern::compile(p).map_err(|why| CatalogError::Invalid {
                    asset: self.asset_id.clone(),
                    field: format!("alias_patterns[{i}]"),
                    why: format!("{p:?} {why}"),
                })
            })
            .collect()
    }
}

/// The rules of one unit price at `field` (`prices.input_tokens`), as (field, why).
pub(crate) fn price_problems(field: &str, p: &UnitPrice) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if p.per == 0 {
        out.push((format!("{field}.per"), "must be at least 1".into()));
    }
    if p.credits.is_sign_negative() {
        out.push((
            format!("{field}.credits"),
            format!("must not be negative, got {}", p.credits),
        ));
    }
    if p.credits.normalize().scale() > LINE_COST_SCALE {
        out.push((
            format!("{field}.credits"),
            format!("has more than 12 decimals: {}", p.credits),
        ));
    }
    out
}

/// Errors reading or building a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog json is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("price version of {asset}: {field} {why}")]
    Invalid {
        asset: String,
        field: String,
        why: String,
    },
    #[error(
        "asset {asset} has two different versions effective from {effective_from} (a published version may only gain aliases)"
    )]
    Conflict {
        asset: String,
        effective_from: String,
    },
    #[error(
        "ambiguous alias: {name:?} would resolve to {asset} ({claim}) and to {other_asset} ({other_claim}); remove one of them"
    )]
    Ambiguous {
        asset: String,
        name: String,
        claim: String,
        other_asset: String,
        other_claim: String,
    },
}

/// Why a lookup found no price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    UnknownAsset,
    BeforeFirstVersion(DateTime<Utc>),
}

/// A price list prepared for lookups: (unit, price), few units each.
pub type UnitPrices = SmallVec<[(String, UnitPrice); 2]>;

/// A version prepared for pricing: units in a small vector, label precomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVersion {
    pub asset_id: Arc<str>,
    pub asset_type: AssetType,
    pub vendor: Arc<str>,
    pub effective_from: DateTime<Utc>,
    pub label: Arc<str>,
    pub prices: UnitPrices,
    /// Tiers in declared order: (name, prices); their conditions are in `spec.tiers`.
    pub tiers: Vec<(Arc<str>, UnitPrices)>,
    pub spec: PriceVersion,
}

impl PreparedVersion {
    fn new(spec: PriceVersion) -> Self {
        PreparedVersion {
            asset_id: spec.asset_id.as_str().into(),
            asset_type: spec.asset_type,
            vendor: spec.vendor.as_str().into(),
            effective_from: spec.effective_from,
            label: spec.version_label().into(),
            prices: spec
                .prices
                .iter()
                .map(|(u, p)| (u.clone(), p.clone()))
                .collect(),
            tiers: spec
                .tiers
                .iter()
                .map(|t| {
                    let prices = t.prices.iter().map(|(u, p)| (u.clone(), p.clone()));
                    (t.name.as_str().into(), prices.collect())
                })
                .collect(),
            spec,
        }
    }

    /// The prices that apply to a call with these quantities, and the tier's name: the
    /// first tier (declared order) whose conditions hold, else the default prices (named
    /// `default` when the version has tiers; no name when it has none).
    pub fn tier_for(
        &self,
        quantities: &[(String, rust_decimal::Decimal)],
    ) -> (Option<&str>, &[(String, UnitPrice)]) {
        if self.tiers.is_empty() {
            return (None, &self.prices);
        }
        match tiers::select(&self.spec.tiers, quantities) {
            Some(i) => (Some(&self.tiers[i].0), &self.tiers[i].1),
            None => (Some(tiers::DEFAULT_TIER), &self.prices),
        }
    }

    pub fn price_of(&self, unit: &str) -> Option<&UnitPrice> {
        self.prices.iter().find(|(u, _)| u == unit).map(|(_, p)| p)
    }
}

/// All versions of all assets, sorted by effective time per asset.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    assets: HashMap<String, Vec<Arc<PreparedVersion>>>,
    aliases: aliases::AliasIndex,
    versions: usize,
    /// When the newest version was added (wall time of the update, for the age metric).
    pub updated_at: Option<DateTime<Utc>>,
}

impl Catalog {
    /// Parses a catalog file: a JSON array of price versions.
    pub fn from_json(bytes: &[u8]) -> Result<Catalog, CatalogError> {
        let specs: Vec<PriceVersion> = serde_json::from_slice(bytes)?;
        let mut c = Catalog::default();
        for s in specs {
            c.insert(s)?;
        }
        Ok(c)
    }

    /// Parses a catalog file and keeps going past refused versions: the catalog of every
    /// version that could be added, and one error per refused version (for `catalog check`).
    pub fn from_json_all_errors(
        bytes: &[u8],
    ) -> Result<(Catalog, Vec<CatalogError>), CatalogError> {
        let specs: Vec<PriceVersion> = serde_json::from_slice(bytes)?;
        let mut c = Catalog::default();
        let mut errors = Vec::new();
        for s in specs {
            if let Err(e) = c.insert(s) {
                errors.push(e);
            }
        }
        Ok((c, errors))
    }

    /// Parses one price version (one catalog-topic message).
    pub fn parse_version(bytes: &[u8]) -> Result<PriceVersion, CatalogError> {
        let v: PriceVersion = serde_json::from_slice(bytes)?;
        v.validate()?;
        Ok(v)
    }

    /// Adds a version. The same version again is a no-op; a different one at the same
    /// effective time is a conflict. Returns whether the catalog changed.
    /// A version whose aliases could resolve a name that another asset's id or aliases
    /// resolve is refused ([`CatalogError::Ambiguous`]), and so is a new asset whose id
    /// another asset's alias claims.
    pub fn insert(&mut self, spec: PriceVersion) -> Result<bool, CatalogError> {
        spec.validate()?;
        let existing = self.assets.get(&spec.asset_id);
        // (position, whether it replaces the version there: the same one with aliases added)
        let (at, replace) = match existing {
            None => (0, false),
            Some(list) => {
                match list.binary_search_by(|v| v.effective_from.cmp(&spec.effective_from)) {
                    Ok(i) if list[i].spec == spec => return Ok(false),
                    // A correction replaces the version at its instant; an original never
                    // replaces a correction (whatever order they are read in).
                    Ok(i) if spec.correction.is_some() => (i, true),
                    Ok(i) if list[i].spec.correction.is_some() => return Ok(false),
                    Ok(i) if adds_aliases_only(&list[i].spec, &spec) => (i, true),
                    Ok(_) => {
                        return Err(CatalogError::Conflict {
                            asset: spec.asset_id.clone(),
                            effective_from: spec.version_label(),
                        });
                    }
                    Err(i) => (i, false),
                }
            }
        };
        let patterns = spec.compiled_patterns()?;
        let ids = self.assets.keys().map(String::as_str);
        self.aliases
            .check(
                &spec.asset_id,
                existing.is_none(),
                &spec.aliases,
                &patterns,
                ids,
                |n| self.assets.contains_key(n),
            )
            .map_err(|a| CatalogError::Ambiguous {
                asset: spec.asset_id.clone(),
                name: a.name,
                claim: a.claim,
                other_asset: a.other_asset,
                other_claim: a.other_claim,
            })?;
        let prepared = Arc::new(PreparedVersion::new(spec));
        self.aliases
            .add(&prepared.asset_id, &prepared.spec.aliases, patterns);
        let list = self
            .assets
            .entry(prepared.spec.asset_id.clone())
            .or_default();
        if replace {
            list[at] = prepared;
        } else {
            list.insert(at, prepared);
            self.versions += 1;
        }
        Ok(true)
    }

    /// The canonical asset id of a name sent by a producer: the name itself when it is an
    /// asset id, else the asset whose alias claims it. `None`: unknown (never priced).
    pub fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.assets.contains_key(name) {
            return Some(name);
        }
        self.aliases.resolve(name).map(|a| &**a)
    }

    /// Whether `unit` of the asset named `sent` (its id or an alias) takes only whole
    /// quantities at `at`: the flag of the version in force ([`UnitPrice::is_whole`]); where
    /// the catalog does not price the unit then (unknown asset, before its first version, a
    /// unit the version does not list, an integration), the default for the unit's name
    /// ([`counts_whole_things`]), so such an event is still refused for its quantity first.
    pub fn whole_unit(&self, sent: &str, at: DateTime<Utc>, unit: &str) -> bool {
        let asset = self.resolve(sent).unwrap_or(sent);
        match self.lookup(asset, at).ok().and_then(|v| v.price_of(unit)) {
            Some(p) => p.is_whole(unit),
            None => counts_whole_things(unit),
        }
    }

    /// The version in force at `at`: the greatest effective_from <= at.
    pub fn lookup(
        &self,
        asset_id: &str,
        at: DateTime<Utc>,
    ) -> Result<&PreparedVersion, LookupError> {
        let list = self.assets.get(asset_id).ok_or(LookupError::UnknownAsset)?;
        let idx = list.partition_point(|v| v.effective_from <= at);
        if idx == 0 {
            return Err(LookupError::BeforeFirstVersion(list[0].effective_from));
        }
        Ok(&list[idx - 1])
    }

    pub fn version_count(&self) -> usize {
        self.versions
    }

    pub fn is_empty(&self) -> bool {
        self.versions == 0
    }

    /// Every version, per asset in time order.
    pub fn versions(&self) -> impl Iterator<Item = &PriceVersion> {
        let mut keys: Vec<&String> = self.assets.keys().collect();
        keys.sort();
        keys.into_iter()
            .flat_map(move |k| self.assets[k].iter().map(|v| &v.spec))
    }
}

/// True when `new` is `old` with aliases or patterns added (none removed, nothing else
/// changed): the one edit of a published version the catalog accepts, as it never changes a
/// price and a name that resolved keeps resolving.
fn adds_aliases_only(old: &PriceVersion, new: &PriceVersion) -> bool {
    let strip = |v: &PriceVersion| PriceVersion {
        aliases: Vec::new(),
        alias_patterns: Vec::new(),
        ..v.clone()
    };
    strip(old) == strip(new)
        && old.aliases.iter().all(|a| new.aliases.contains(a))
        && old
            .alias_patterns
            .iter()
            .all(|p| new.alias_patterns.contains(p))
}

/// The shared, swappable catalog: one writer, lock-free readers.
pub type CatalogHandle = Arc<arc_swap::ArcSwap<Catalog>>;

#[cfg(test)]
mod tests;
