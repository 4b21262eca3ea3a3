//! Canonical (undated) asset ids for an import: the converted versions by asset id in, the
//! same with each dated model folded into the undated asset LiteLLM's map gives for it out.
//!
//! LiteLLM lists a model under its stable name (`gpt-4o`) and under dated snapshots
//! (`gpt-4o-2024-08-06`, `claude-3-5-sonnet-20241022`, `claude-3-5-sonnet-v2@20241022`).
//! Users bill and query by the stable name, so when the map gives one (an entry of that
//! name, or its `-latest` entry), a dated entry with the same prices, vendor and type becomes
//! an alias of it: both its LiteLLM key and its own asset id resolve to the undated asset. A
//! dated entry with other prices stays an asset of its own (an alias would misprice it).

use std::collections::BTreeMap;

use crate::catalog::PriceVersion;

/// Asset id -> (LiteLLM keys that gave it, its version).
pub(super) type ByAsset = BTreeMap<String, (Vec<String>, PriceVersion)>;

/// The undated name of a dated model id: `x-2024-08-06`, `x-20241022` and `x@20241022`
/// give `x`; `x-latest` gives `x` too. `None` for any other name.
pub(super) fn undated(id: &str) -> Option<&str> {
    if let Some(base) = id.strip_suffix("-latest") {
        return Some(base).filter(|b| !b.is_empty());
    }
    let bytes = id.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let date_ok = |y: &[u8], m: &[u8], d: &[u8]| {
        let num = |s: &[u8]| s.iter().fold(0u32, |a, b| a * 10 + u32::from(b - b'0'));
        digits(y)
            && digits(m)
            && digits(d)
            && y.starts_with(b"20")
            && (1..=12).contains(&num(m))
            && (1..=31).contains(&num(d))
    };
    let n = bytes.len();
    // -YYYY-MM-DD
    if n > 11 && bytes[n - 11] == b'-' && bytes[n - 6] == b'-' && bytes[n - 3] == b'-' {
        let s = &bytes[n - 10..];
        if date_ok(&s[0..4], &s[5..7], &s[8..10]) {
            return Some(&id[..n - 11]);
        }
    }
    // -YYYYMMDD or @YYYYMMDD
    if n > 9 && matches!(bytes[n - 9], b'-' | b'@') {
        let s = &bytes[n - 8..];
        if date_ok(&s[0..4], &s[4..6], &s[6..8]) {
            return Some(&id[..n - 9]);
        }
    }
    None
}

/// What [`fold_dated`] did: (dated asset id, undated asset id) pairs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folds {
    /// Became an alias of the undated asset.
    pub folded: Vec<(String, String)>,
    /// Kept as an asset of its own: its prices, vendor or type differ from the undated one's.
    pub apart: Vec<(String, String)>,
}

/// Folds dated assets into the undated asset the map gives for them.
pub(super) fn fold_dated(by_asset: &mut ByAsset) -> Folds {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in by_asset.keys() {
        if let Some(base) = undated(id) {
            groups.entry(base.to_string()).or_default().push(id.clone());
        }
    }
    let mut folds = Folds::default();
    for (base, mut members) in groups {
        if !by_asset.contains_key(&base) {
            // No entry of the undated name: its `-latest` entry gives it, if there is one
            // next to dated ones (a lone `x-latest` stays as it is).
            let latest = format!("{base}-latest");
            if members.len() < 2 {
                continue;
            }
            let Some((keys, mut v)) = by_asset.remove(&latest) else {
                continue;
            };
            v.asset_id.clone_from(&base);
            // Its own id and the plain (unprefixed) undated name resolve too.
            let plain = keys.iter().filter_map(|k| undated(k)).map(str::to_string);
            for a in std::iter::once(latest.clone()).chain(plain) {
                if a != base && !v.aliases.contains(&a) {
                    v.aliases.push(a);
                }
            }
            by_asset.insert(base.clone(), (keys, v));
            members.retain(|m| *m != latest);
            folds.folded.push((latest, base.clone()));
        }
        for m in members {
            let Some((keys, dated)) = by_asset.remove(&m) else {
                continue;
            };
            let (canon_keys, canon) = by_asset.get_mut(&base).expect("present");
            let same = canon.prices == dated.prices
                && canon.vendor == dated.vendor
                && canon.asset_type == dated.asset_type;
            let mut merged = canon.clone();
            for a in std::iter::once(m.clone()).chain(dated.aliases.iter().cloned()) {
                if a != base && !merged.aliases.contains(&a) {
                    merged.aliases.push(a);
                }
            }
            if same && merged.validate().is_ok() {
                *canon = merged;
                canon_keys.extend(keys);
                folds.folded.push((m, base.clone()));
            } else {
                folds.apart.push((m.clone(), base.clone()));
                by_asset.insert(m, (keys, dated));
            }
        }
    }
    folds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_suffixes_and_what_is_not_one() {
        for (id, base) in [
            ("openai/gpt-4o-2024-08-06", Some("openai/gpt-4o")),
            (
                "anthropic/claude-3-5-sonnet-20241022",
                Some("anthropic/claude-3-5-sonnet"),
            ),
            (
                "vertex_ai/claude-3-5-sonnet-v2@20241022",
                Some("vertex_ai/claude-3-5-sonnet-v2"),
            ),
            (
                "anthropic/claude-3-5-sonnet-latest",
                Some("anthropic/claude-3-5-sonnet"),
            ),
            ("openai/gpt-3.5-turbo-0125", None),
            ("gemini/gemini-2.5-flash-preview-04-17", None),
            ("x-2024-13-01", None),
            ("x-19991231", None),
            ("-20241022", None),
            ("latest", None),
        ] {
            assert_eq!(undated(id), base, "{id}");
        }
    }
}
