//! Price catalog: JSON price versions in, a point-in-time lookup (asset, time) -> version out.
//! The catalog is immutable once built; updates build a new one that is swapped in whole.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::money::LINE_COST_SCALE;

/// What kind of asset a price version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetType {
    Model,
    Tool,
    Integration,
}

impl AssetType {
    pub fn as_str(self) -> &'static str {
        match self {
            AssetType::Model => "model",
            AssetType::Tool => "tool",
            AssetType::Integration => "integration",
        }
    }
}

/// Credits per `per` units of one unit name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitPrice {
    #[serde(with = "rust_decimal::serde::str")]
    pub credits: Decimal,
    pub per: u64,
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
}

impl PriceVersion {
    /// Key on the compacted catalog topic: all versions of an asset are kept.
    pub fn topic_key(&self) -> String {
        format!("{}@{}", self.asset_id, self.version_label())
    }

    /// The price version label stored with every priced line.
    pub fn version_label(&self) -> String {
        self.effective_from
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }

    /// Checks the version's own rules; names the field and value on failure.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let bad = |field: &str, why: String| CatalogError::Invalid {
            asset: self.asset_id.clone(),
            field: field.to_string(),
            why,
        };
        if self.asset_id.is_empty() || self.asset_id.len() > crate::event::MAX_ID_BYTES {
            return Err(bad("asset_id", "must be 1 to 256 bytes".into()));
        }
        if self.asset_type == AssetType::Integration && !self.prices.is_empty() {
            return Err(bad(
                "prices",
                "integrations have no direct cost; leave prices empty".into(),
            ));
        }
        if self.asset_type != AssetType::Integration && self.prices.is_empty() {
            return Err(bad(
                "prices",
                "a model or tool needs at least one unit price".into(),
            ));
        }
        for (unit, p) in &self.prices {
            if p.per == 0 {
                return Err(bad(
                    &format!("prices.{unit}.per"),
                    "must be at least 1".into(),
                ));
            }
            if p.credits.is_sign_negative() {
                return Err(bad(
                    &format!("prices.{unit}.credits"),
                    format!("must not be negative, got {}", p.credits),
                ));
            }
            if p.credits.normalize().scale() > LINE_COST_SCALE {
                return Err(bad(
                    &format!("prices.{unit}.credits"),
                    format!("has more than 12 decimals: {}", p.credits),
                ));
            }
        }
        Ok(())
    }
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
    #[error("asset {asset} has two different versions effective from {effective_from}")]
    Conflict {
        asset: String,
        effective_from: String,
    },
}

/// Why a lookup found no price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    UnknownAsset,
    BeforeFirstVersion(DateTime<Utc>),
}

/// A version prepared for pricing: units in a small vector, label precomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVersion {
    pub asset_id: Arc<str>,
    pub asset_type: AssetType,
    pub vendor: Arc<str>,
    pub effective_from: DateTime<Utc>,
    pub label: Arc<str>,
    pub prices: SmallVec<[(String, UnitPrice); 2]>,
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
            spec,
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

    /// Parses one price version (one catalog-topic message).
    pub fn parse_version(bytes: &[u8]) -> Result<PriceVersion, CatalogError> {
        let v: PriceVersion = serde_json::from_slice(bytes)?;
        v.validate()?;
        Ok(v)
    }

    /// Adds a version. The same version again is a no-op; a different one at the same
    /// effective time is a conflict. Returns whether the catalog changed.
    pub fn insert(&mut self, spec: PriceVersion) -> Result<bool, CatalogError> {
        spec.validate()?;
        let list = self.assets.entry(spec.asset_id.clone()).or_default();
        match list.binary_search_by(|v| v.effective_from.cmp(&spec.effective_from)) {
            Ok(i) if list[i].spec == spec => Ok(false),
            Ok(_) => Err(CatalogError::Conflict {
                asset: spec.asset_id.clone(),
                effective_from: spec.version_label(),
            }),
            Err(i) => {
                list.insert(i, Arc::new(PreparedVersion::new(spec)));
                self.versions += 1;
                Ok(true)
            }
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

/// The shared, swappable catalog: one writer, lock-free readers.
pub type CatalogHandle = Arc<arc_swap::ArcSwap<Catalog>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const TWO_VERSIONS: &str = r#"[
      {"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2026-06-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"0.12","per":1000000}}},
      {"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"0.15","per":1000000}}},
      {"asset_id":"slack","asset_type":"integration","vendor":"slack","effective_from":"2024-01-01T00:00:00Z","prices":{}}
    ]"#;

    #[test]
    fn point_in_time_lookup() {
        let c = Catalog::from_json(TWO_VERSIONS.as_bytes()).unwrap();
        assert_eq!(c.version_count(), 3);
        let old = c.lookup("m", t("2026-05-31T23:59:59Z")).unwrap();
        assert_eq!(
            old.price_of("input_tokens").unwrap().credits.to_string(),
            "0.15"
        );
        let new = c.lookup("m", t("2026-06-01T00:00:00Z")).unwrap();
        assert_eq!(
            new.price_of("input_tokens").unwrap().credits.to_string(),
            "0.12"
        );
        assert_eq!(&*new.label, "2026-06-01T00:00:00Z");
        assert_eq!(
            c.lookup("nope", t("2026-01-01T00:00:00Z")),
            Err(LookupError::UnknownAsset)
        );
        assert!(matches!(
            c.lookup("m", t("2023-01-01T00:00:00Z")),
            Err(LookupError::BeforeFirstVersion(_))
        ));
    }

    #[test]
    fn same_version_twice_is_idempotent_but_a_different_one_conflicts() {
        let mut c = Catalog::from_json(TWO_VERSIONS.as_bytes()).unwrap();
        let v = c.versions().next().unwrap().clone();
        assert!(!c.insert(v.clone()).unwrap());
        let mut changed = v;
        changed.vendor = "other".into();
        assert!(matches!(
            c.insert(changed),
            Err(CatalogError::Conflict { .. })
        ));
    }

    #[test]
    fn invalid_versions_name_the_field() {
        let bad = TWO_VERSIONS.replace("\"0.12\"", "\"-1\"");
        let e = Catalog::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("prices.input_tokens.credits"), "{e}");
        let bad = TWO_VERSIONS.replace("\"per\":1000000}}},", "\"per\":0}}},");
        let e = Catalog::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("per"), "{e}");
        let bad = TWO_VERSIONS.replace("\"credits\":\"0.12\"", "\"credits\":0.12");
        assert!(
            Catalog::from_json(bad.as_bytes()).is_err(),
            "float prices are refused"
        );
    }

    #[test]
    fn shipped_catalog_parses() {
        let bytes =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap();
        let c = Catalog::from_json(&bytes).unwrap();
        assert!(c.version_count() >= 10);
        // Integrations price at zero; the second gpt-4o-mini version is point-in-time.
        assert!(
            c.versions()
                .any(|v| v.asset_type == AssetType::Integration && v.prices.is_empty())
        );
    }
}
