//! `catalog import --format litellm`: LiteLLM's `model_prices_and_context_window.json` in,
//! price versions of this catalog and a report of what was skipped (and why) out. Prices are
//! read from the JSON numbers as written (`1.5e-07` is exactly 0.00000015) and scaled
//! exactly; a model whose prices the catalog cannot express is skipped, never approximated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{AssetType, PriceVersion, UnitPrice};
use crate::money::LINE_COST_SCALE;

pub mod canonical;
mod tiers;

/// LiteLLM price key -> (unit name of this catalog, default `per`). Per-token prices become
/// credits per 1M units, as in the rest of the catalog.
pub const PRICE_KEYS: &[(&str, &str, u64)] = &[
    ("input_cost_per_token", "input_tokens", 1_000_000),
    ("output_cost_per_token", "output_tokens", 1_000_000),
    (
        "cache_read_input_token_cost",
        "cached_input_tokens",
        1_000_000,
    ),
    (
        "input_cost_per_token_cache_hit",
        "cached_input_tokens",
        1_000_000,
    ),
    (
        "cache_creation_input_token_cost",
        "cache_creation_input_tokens",
        1_000_000,
    ),
    (
        "cache_creation_input_token_cost_above_1hr",
        "cache_creation_1h_input_tokens",
        1_000_000,
    ),
    (
        "output_cost_per_reasoning_token",
        "reasoning_tokens",
        1_000_000,
    ),
    (
        "input_cost_per_audio_token",
        "input_audio_tokens",
        1_000_000,
    ),
    (
        "output_cost_per_audio_token",
        "output_audio_tokens",
        1_000_000,
    ),
    (
        "cache_read_input_audio_token_cost",
        "cached_input_audio_tokens",
        1_000_000,
    ),
    (
        "cache_creation_input_audio_token_cost",
        "cache_creation_input_audio_tokens",
        1_000_000,
    ),
    (
        "input_cost_per_image_token",
        "input_image_tokens",
        1_000_000,
    ),
    (
        "output_cost_per_image_token",
        "output_image_tokens",
        1_000_000,
    ),
    (
        "output_cost_per_video_token",
        "output_video_tokens",
        1_000_000,
    ),
    ("citation_cost_per_token", "citation_tokens", 1_000_000),
    ("input_cost_per_character", "input_characters", 1_000_000),
    ("output_cost_per_character", "output_characters", 1_000_000),
    ("input_cost_per_pixel", "input_pixels", 1_000_000),
    ("output_cost_per_pixel", "output_pixels", 1_000_000),
    ("input_cost_per_image", "input_images", 1),
    ("output_cost_per_image", "images", 1),
    ("input_cost_per_second", "input_seconds", 1),
    ("output_cost_per_second", "output_seconds", 1),
    ("input_cost_per_audio_per_second", "input_audio_seconds", 1),
    ("input_cost_per_video_per_second", "input_video_seconds", 1),
    (
        "output_cost_per_video_per_second",
        "output_video_seconds",
        1,
    ),
    ("input_cost_per_query", "queries", 1),
    ("input_cost_per_request", "requests", 1),
    ("ocr_cost_per_page", "pages", 1),
    ("annotation_cost_per_page", "annotation_pages", 1),
];

/// Top-level entries that are not models.
const NOT_MODELS: [&str; 2] = ["sample_spec", "fallback_generalizations"];

/// Largest `per` tried to keep a tiny price within 12 decimals.
const MAX_PER: u64 = 1_000_000_000_000_000;

/// What the importer did with each entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// LiteLLM key -> asset id, for every model imported.
    pub imported: BTreeMap<String, String>,
    /// LiteLLM key -> why it was skipped.
    pub skipped: BTreeMap<String, String>,
    /// Rate keys present but not imported (service tiers, batch, regional uplifts, priced
    /// features): key -> number of models. The catalog prices the standard rate.
    pub not_imported_rates: BTreeMap<String, usize>,
    /// Models imported with every price 0 (as written in the file).
    pub zero_priced: Vec<String>,
    /// Dated models folded into (or kept apart from) their undated asset.
    pub dated: canonical::Folds,
}

/// Options of one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub effective_from: DateTime<Utc>,
    /// Only these `litellm_provider` values (all when empty).
    pub providers: BTreeSet<String>,
}

/// Why the file as a whole cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("litellm file is not a json object of model entries: {0}")]
    Json(#[from] serde_json::Error),
}

/// Converts a LiteLLM model cost map. Entries are independent: a bad one is skipped and
/// reported, the others are imported. Versions come out sorted by asset id.
pub fn import(
    bytes: &[u8],
    opts: &ImportOptions,
) -> Result<(Vec<PriceVersion>, ImportReport), ImportError> {
    let entries: Entries<'_> = serde_json::from_slice(bytes)?;
    let mut report = ImportReport::default();
    let mut by_asset: BTreeMap<String, (Vec<String>, PriceVersion)> = BTreeMap::new();
    let mut collided: BTreeSet<String> = BTreeSet::new();
    for (key, dup) in &entries.duplicates {
        report.skipped.insert(
            key.clone(),
            format!("the key appears {dup} times in the file; which one is meant is unknown"),
        );
    }
    for (key, raw) in entries.list {
        if NOT_MODELS.contains(&key.as_str()) || entries.duplicates.contains_key(&key) {
            continue;
        }
        let model = match convert(&key, raw, opts, &mut report) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(why) => {
                report.skipped.insert(key, why);
                continue;
            }
        };
        if collided.contains(&model.asset_id) {
            report.skipped.insert(
                key,
                format!("{} collides with another entry (see it)", model.asset_id),
            );
            continue;
        }
        match by_asset.get_mut(&model.asset_id) {
            None => {
                by_asset.insert(model.asset_id.clone(), (vec![key], model));
            }
            Some((keys, first))
                if first.prices == model.prices
                    && first.tiers == model.tiers
                    && first.vendor == model.vendor =>
            {
                // Two names for the same prices: one asset, both names resolve.
                for a in model.aliases {
                    if !first.aliases.contains(&a) {
                        first.aliases.push(a);
                    }
                }
                keys.push(key);
            }
            Some(_) => {
                let (keys, first) = by_asset.remove(&model.asset_id).expect("present");
                collided.insert(model.asset_id.clone());
                for k in keys.into_iter().chain([key]) {
                    report.skipped.insert(
                        k,
                        format!(
                            "maps to asset {} like another entry with different prices; import one of them by hand",
                            first.asset_id
                        ),
                    );
                }
            }
        }
    }
    report.dated = canonical::fold_dated(&mut by_asset);
    let mut versions = Vec::with_capacity(by_asset.len());
    for (asset, (keys, mut v)) in by_asset {
        v.aliases.retain(|a| *a != asset);
        v.aliases.sort();
        if v.prices.values().all(|p| p.credits.is_zero()) {
            report.zero_priced.push(asset.clone());
        }
        for k in keys {
            report.imported.insert(k, asset.clone());
        }
        versions.push(v);
    }
    Ok((versions, report))
}

fn convert(
    key: &str,
    raw: &RawValue,
    opts: &ImportOptions,
    report: &mut ImportReport,
) -> Result<Option<PriceVersion>, String> {
    let entry: Entries<'_> =
        serde_json::from_str(raw.get()).map_err(|e| format!("entry is not a json object ({e})"))?;
    if let Some((k, _)) = entry.duplicates.iter().next() {
        return Err(format!("field {k} appears more than once"));
    }
    let field = |name: &str| entry.list.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let provider: String = match field("litellm_provider").map(|r| serde_json::from_str(r.get())) {
        Some(Ok(p)) => p,
        _ => return Err("litellm_provider is missing or not a string".into()),
    };
    if !opts.providers.is_empty() && !opts.providers.contains(&provider) {
        return Ok(None);
    }
    let mode: Option<String> = field("mode").and_then(|r| serde_json::from_str(r.get()).ok());
    let mut prices = BTreeMap::new();
    let mut not_imported = Vec::new();
    for (k, v) in &entry.list {
        if let Some(&(_, unit, per)) = PRICE_KEYS.iter().find(|(name, _, _)| name == k) {
            let price = exact_price(k, v)?;
            let up = scaled(k, price, per)?;
            if let Some(prev) = prices.insert(unit.to_string(), up.clone())
                && prev != up
            {
                return Err(format!(
                    "two keys give {unit} different prices ({} and {} per {})",
                    prev.credits, up.credits, up.per
                ));
            }
        } else if tiers::split_tier_key(k).is_some() {
            // A long-context rate: becomes a tier below.
        } else if is_variant(k) {
            not_imported.push(k.clone());
        } else if is_unexpressible(k) {
            return Err(format!(
                "{k}: its price depends on the size or options of each call, which the catalog cannot express"
            ));
        } else if k.contains("cost") {
            return Err(format!(
                "{k} is a price key the importer does not know; its unit is not guessed"
            ));
        }
    }
    if prices.is_empty() {
        return Err("no price the catalog can import".into());
    }
    let tiers = tiers::tiers(&entry.list, &prices)?;
    for k in not_imported {
        *report.not_imported_rates.entry(k).or_default() += 1;
    }
    let prefix = format!("{provider}/");
    let asset_id = if key.starts_with(&prefix) {
        key.to_string()
    } else {
        format!("{prefix}{key}")
    };
    if asset_id.len() > crate::event::MAX_ID_BYTES {
        return Err(format!("asset id {asset_id} is longer than 256 bytes"));
    }
    let v = PriceVersion {
        asset_type: if mode.as_deref() == Some("search") {
            AssetType::Tool
        } else {
            AssetType::Model
        },
        vendor: provider,
        effective_from: opts.effective_from,
        prices,
        aliases: if asset_id == key {
            Vec::new()
        } else {
            vec![key.to_string()]
        },
        alias_patterns: Vec::new(),
        tiers,
        correction: None,
        asset_id,
    };
    v.validate().map_err(|e| e.to_string())?;
    Ok(Some(v))
}

/// Rates that depend on something the event does not carry or that LiteLLM applies
/// otherwise than by prompt tokens (per-resolution, per-context-size, price tables, long
/// context rates of characters, images or seconds). Token long-context rates are tiers
/// ([`tiers::split_tier_key`]), checked first.
fn is_unexpressible(k: &str) -> bool {
    (k.contains("_above_") && k != "cache_creation_input_token_cost_above_1hr")
        || k == "tiered_pricing"
        || k == "search_context_cost_per_query"
        || k == "guardrail_cost_per_unit"
        || k.starts_with("output_cost_per_second_")
}

/// Alternative rates of a unit that is imported at its standard rate: batch API, service
/// tiers, regional uplifts, non-USD accounting units, priced side features (a producer
/// reporting such a unit is rejected `unknown_unit`, never billed 0).
fn is_variant(k: &str) -> bool {
    k.ends_with("_batches")
        || k.contains("_priority_")
        || k.contains("_flex_")
        || k.ends_with("_priority")
        || k.ends_with("_flex")
        || k.contains("uplift_multiplier")
        || k.contains("_dbu_")
        || k.starts_with("code_interpreter_cost")
        || k.starts_with("computer_use_")
        || k.starts_with("file_search_cost")
        || k.starts_with("vector_store_cost")
        || k.starts_with("google_maps_grounding_cost")
        || k.starts_with("ocr_cost_per_credit")
}

/// The price exactly as written: the JSON number's own digits, never through a float.
pub(super) fn exact_price(key: &str, raw: &RawValue) -> Result<Decimal, String> {
    let text = raw.get().trim();
    let numeric = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !numeric {
        return Err(format!("{key} must be a json number, got {text}"));
    }
    let value = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    }
    .map_err(|e| format!("{key} = {text} is not a representable decimal ({e})"))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{key} = {text} is negative"));
    }
    Ok(value.abs().normalize())
}

/// `price` per unit as credits per `per` units, exactly; `per` grows by 1000 when needed to
/// stay within the catalog's 12 decimals.
pub(super) fn scaled(key: &str, price: Decimal, per: u64) -> Result<UnitPrice, String> {
    let mut per = per;
    loop {
        let credits = price
            .checked_mul(Decimal::from(per))
            .ok_or_else(|| format!("{key} = {price} overflows per {per} units"))?
            .normalize();
        if credits.scale() <= LINE_COST_SCALE {
            return Ok(UnitPrice {
                credits,
                per,
                whole: None,
            });
        }
        if per >= MAX_PER {
            return Err(format!(
                "{key} = {price} needs more than 12 decimals even per {MAX_PER} units"
            ));
        }
        per *= 1000;
    }
}

/// A JSON object's entries in file order, with keys seen more than once counted apart.
struct Entries<'a> {
    list: Vec<(String, &'a RawValue)>,
    duplicates: BTreeMap<String, usize>,
}

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut list: Vec<(String, &'de RawValue)> = Vec::new();
                let mut seen = BTreeSet::new();
                let mut duplicates = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: &'de RawValue = map.next_value()?;
                    if !seen.insert(k.clone()) {
                        *duplicates.entry(k.clone()).or_insert(1) += 1;
                    }
                    list.push((k, v));
                }
                Ok(Entries { list, duplicates })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn prices_are_exact_from_the_written_digits() {
        for (written, per_token, per_million) in [
            ("1.5e-07", "0.00000015", "0.15"),
            ("6e-07", "0.0000006", "0.6"),
            ("0.00000015", "0.00000015", "0.15"),
            ("2.4414e-07", "0.00000024414", "0.24414"),
            ("3.75e-06", "0.00000375", "3.75"),
            ("1E-5", "0.00001", "10"),
            ("0.0", "0", "0"),
        ] {
            let raw = RawValue::from_string(written.to_string()).unwrap();
            let p = exact_price("k", &raw).unwrap();
            assert_eq!(p, dec(per_token), "{written}");
            let s = scaled("k", p, 1_000_000).unwrap();
            assert_eq!(
                (s.credits.to_string().as_str(), s.per),
                (per_million, 1_000_000)
            );
        }
        // 0.1 + 0.2 style float noise never enters: 1.1e-07 x 1e6 is 0.11, not 0.11000000000000001.
        let raw = RawValue::from_string("1.1e-07".into()).unwrap();
        let s = scaled("k", exact_price("k", &raw).unwrap(), 1_000_000).unwrap();
        assert_eq!(s.credits.to_string(), "0.11");
    }

    #[test]
    fn tiny_prices_widen_per_and_impossible_ones_are_refused() {
        let s = scaled("k", dec("0.0000000000000000123"), 1_000_000).unwrap();
        assert_eq!(
            (s.credits.to_string().as_str(), s.per),
            ("0.0000000123", 1_000_000_000)
        );
        assert!(scaled("k", dec("0.0000000000000000000000001234"), 1_000_000).is_err());
        for bad in ["\"0.1\"", "true", "-1e-06", "{}", "1e999"] {
            let raw = RawValue::from_string(bad.into()).unwrap();
            assert!(exact_price("k", &raw).is_err(), "{bad}");
        }
    }

    #[test]
    fn classification_of_keys() {
        for k in [
            "input_cost_per_token_above_200k_tokens",
            "cache_read_input_token_cost_above_272k_tokens_priority",
            "tiered_pricing",
            "search_context_cost_per_query",
            "output_cost_per_second_1080p",
        ] {
            assert!(is_unexpressible(k), "{k}");
        }
        assert!(!is_unexpressible(
            "cache_creation_input_token_cost_above_1hr"
        ));
        for k in [
            "input_cost_per_token_batches",
            "output_cost_per_token_flex",
            "input_cost_per_token_priority",
            "regional_processing_uplift_multiplier_eu",
            "input_dbu_cost_per_token",
            "file_search_cost_per_1k_calls",
        ] {
            assert!(is_variant(k), "{k}");
        }
        let units: BTreeSet<&str> = PRICE_KEYS.iter().map(|(_, u, _)| *u).collect();
        assert!(units.contains("cached_input_tokens") && units.contains("reasoning_tokens"));
    }
}
