//! Catalog feed: price versions from the compacted catalog topic in (read fully at start,
//! then followed live by the generic [`TopicFeed`]), a whole new [`Catalog`] swapped into the
//! shared handle out. Also publishes catalog files to the topic (`catalog publish`).

use crate::catalog::{Catalog, CatalogHandle, PriceVersion};
use crate::config::Config;
use crate::feed::{FeedState, TopicFeed};
use crate::metrics::METRICS;

/// Publishes every version of a catalog file; returns how many were sent.
pub async fn publish(cfg: &Config, versions: &[PriceVersion]) -> anyhow::Result<usize> {
    let mut records = Vec::with_capacity(versions.len());
    for v in versions {
        v.validate()?;
        records.push((v.topic_key(), serde_json::to_vec(v)?));
    }
    crate::feed::publish(cfg, &cfg.topics.price_catalog, &records)
        .await
        .map_err(|e| anyhow::anyhow!("cannot publish price version: {e}"))
}

impl FeedState for Catalog {
    const WHAT: &'static str = "price version";

    fn apply(&mut self, payload: &[u8]) -> Result<bool, String> {
        let v = Catalog::parse_version(payload)
            .map_err(|e| format!("catalog message is not a valid price version: {e}"))?;
        self.insert(v).map_err(|e| e.to_string())
    }

    fn touch(&mut self, now: chrono::DateTime<chrono::Utc>) {
        self.updated_at = Some(now);
    }

    fn updated_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.updated_at
    }

    fn count(&self) -> usize {
        self.version_count()
    }

    fn on_update(&self) {
        METRICS.catalog_versions.set(self.version_count() as i64);
        METRICS.catalog_updates.inc();
    }

    fn on_refused() {
        METRICS.catalog_rejected.inc();
    }

    fn on_age(seconds: f64) {
        METRICS.catalog_age.set(seconds);
    }

    fn accepted_text(&self, payload: &[u8]) -> Option<(String, String)> {
        let v = Catalog::parse_version(payload).ok()?;
        Some(accepted_text(self, &v))
    }
}

/// Follows the catalog topic in a thread, applying versions to its handle.
pub type CatalogFeed = TopicFeed<Catalog>;

impl TopicFeed<Catalog> {
    /// The feed of `topics.price_catalog` and the handle it keeps current.
    pub fn new(cfg: &Config) -> anyhow::Result<(CatalogFeed, CatalogHandle)> {
        TopicFeed::open(cfg, &cfg.topics.price_catalog, "catalog")
    }
}

/// The topic key of `v` and what accepting it does to `current`: a new version (its prices),
/// or the same version republished with aliases added.
fn accepted_text(current: &Catalog, v: &PriceVersion) -> (String, String) {
    let republished = current
        .lookup(&v.asset_id, v.effective_from)
        .ok()
        .filter(|p| p.effective_from == v.effective_from);
    let what = match republished {
        Some(p) => {
            let added: Vec<&str> = v
                .aliases
                .iter()
                .chain(&v.alias_patterns)
                .filter(|a| !p.spec.aliases.contains(a) && !p.spec.alias_patterns.contains(a))
                .map(String::as_str)
                .collect();
            match &v.correction {
                Some(c) => format!(
                    "correction {} ({}) replaces {}: {}",
                    c.id,
                    c.reason,
                    p.label,
                    crate::catalog::check::prices_text(v)
                ),
                None => format!("republished with aliases added: {}", added.join(" ")),
            }
        }
        None => format!(
            "{} {} {}",
            v.asset_type.as_str(),
            v.vendor,
            crate::catalog::check::prices_text(v)
        ),
    };
    (v.topic_key(), what)
}
