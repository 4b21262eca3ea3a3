//! LiteLLM's long-context rates as tiers: an entry's `*_above_<N>_tokens` keys in, the
//! version's tiers out, exactly as LiteLLM applies them (`_get_token_base_cost` in
//! `litellm_core_utils/llm_cost_calc/utils.py`): a threshold exists where
//! `input_cost_per_token_above_<N>_tokens` is set; when the call's prompt tokens exceed the
//! largest threshold they exceed, the input, output, cache-read and cache-write rates of that
//! threshold apply (each falling back to the base rate when the key is absent), every other
//! unit keeps its base rate. LiteLLM's `prompt_tokens` counts every input token, cached or
//! not, so the tier's condition sums the prompt-side token units the version prices.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::super::UnitPrice;
use super::super::tiers::{Condition, Tier};
use super::{exact_price, scaled};

/// LiteLLM base key of a tiered rate -> (unit of this catalog, `per`).
const TIERED: [(&str, &str, u64); 5] = [
    ("input_cost_per_token", "input_tokens", 1_000_000),
    ("output_cost_per_token", "output_tokens", 1_000_000),
    (
        "cache_read_input_token_cost",
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
];

/// The units whose sum is LiteLLM's `prompt_tokens` (each token is reported in one unit
/// only: docs/event-contract.md).
pub const PROMPT_UNITS: [&str; 8] = [
    "input_tokens",
    "cached_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "input_audio_tokens",
    "cached_input_audio_tokens",
    "cache_creation_input_audio_tokens",
    "input_image_tokens",
];

/// `(base key, threshold text)` of a tiered-rate key such as
/// `output_cost_per_token_above_200k_tokens` -> (`output_cost_per_token`, `200k`).
pub(super) fn split_tier_key(k: &str) -> Option<(&'static str, &str)> {
    // The longest base first: `cache_creation_input_token_cost_above_1hr` before its prefix.
    let mut bases: Vec<&'static str> = TIERED.iter().map(|(b, _, _)| *b).collect();
    bases.sort_by_key(|b| std::cmp::Reverse(b.len()));
    for b in bases {
        if let Some(rest) = k.strip_prefix(b).and_then(|r| r.strip_prefix("_above_"))
            && let Some(n) = rest.strip_suffix("_tokens")
            && threshold(n).is_some()
        {
            return Some((b, n));
        }
    }
    None
}

/// `200k` -> 200 000, `128000` -> 128 000.
fn threshold(n: &str) -> Option<u64> {
    let (digits, factor) = match n.strip_suffix('k') {
        Some(d) => (d, 1000),
        None => (n, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(factor)
}

/// The tiers of an entry whose base prices are `prices`, highest threshold first; empty
/// without tiered keys. `Err` says why the entry cannot be imported exactly.
pub(super) fn tiers(
    entry: &[(String, &RawValue)],
    prices: &BTreeMap<String, UnitPrice>,
) -> Result<Vec<Tier>, String> {
    // threshold text -> (base key -> raw value)
    let mut by_threshold: BTreeMap<&str, BTreeMap<&str, &RawValue>> = BTreeMap::new();
    for (k, v) in entry {
        if let Some((base, n)) = split_tier_key(k) {
            by_threshold.entry(n).or_default().insert(base, v);
        }
    }
    let mut levels: Vec<(u64, &str, &BTreeMap<&str, &RawValue>)> = Vec::new();
    for (n, keys) in &by_threshold {
        if !keys.contains_key("input_cost_per_token") {
            let k = keys.keys().next().expect("non-empty");
            return Err(format!(
                "{k}_above_{n}_tokens without input_cost_per_token_above_{n}_tokens: LiteLLM never applies it"
            ));
        }
        let t = threshold(n).expect("parsed by split_tier_key");
        if let Some((_, other, _)) = levels.iter().find(|(u, _, _)| *u == t) {
            return Err(format!(
                "thresholds {other} and {n} are the same number of tokens"
            ));
        }
        levels.push((t, n, keys));
    }
    levels.sort_by_key(|(t, _, _)| std::cmp::Reverse(*t));
    let measure: Vec<String> = PROMPT_UNITS
        .iter()
        .filter(|u| prices.contains_key(**u))
        .map(|u| u.to_string())
        .collect();
    let mut out = Vec::with_capacity(levels.len());
    let mut upper: Option<u64> = None;
    for (t, n, keys) in levels {
        let mut tier_prices = prices.clone();
        for (base, raw) in keys {
            let &(_, unit, per) = TIERED.iter().find(|(b, _, _)| b == base).expect("listed");
            let key = format!("{base}_above_{n}_tokens");
            if !prices.contains_key(unit) {
                return Err(format!(
                    "{key} prices {unit} above {n} tokens, but the entry has no base price for it"
                ));
            }
            let mut p = scaled(&key, exact_price(&key, raw)?, per)?;
            p.whole = prices[unit].whole;
            tier_prices.insert(unit.to_string(), p);
        }
        out.push(Tier {
            name: format!("above_{n}_tokens"),
            when: vec![Condition {
                units: measure.clone(),
                above: Some(t),
                up_to: upper,
            }],
            prices: tier_prices,
        });
        upper = Some(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_keys_and_thresholds() {
        assert_eq!(
            split_tier_key("input_cost_per_token_above_200k_tokens"),
            Some(("input_cost_per_token", "200k"))
        );
        assert_eq!(
            split_tier_key("cache_creation_input_token_cost_above_1hr_above_200k_tokens"),
            Some(("cache_creation_input_token_cost_above_1hr", "200k"))
        );
        assert_eq!(
            split_tier_key("output_cost_per_token_above_128000_tokens"),
            Some(("output_cost_per_token", "128000"))
        );
        for k in [
            "cache_creation_input_token_cost_above_1hr",
            "input_cost_per_token_above_200k_tokens_priority",
            "input_cost_per_character_above_128k_tokens",
            "input_cost_per_token_above_2.5k_tokens",
        ] {
            assert_eq!(split_tier_key(k), None, "{k}");
        }
        assert_eq!(threshold("200k"), Some(200_000));
        assert_eq!(threshold("k"), None);
    }
}
