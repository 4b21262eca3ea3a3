//! Catalog checks for the tools: a catalog file's bytes in, every problem with its path out
//! (not only the first), and the rule the docs set for publishing: a version that takes effect
//! in the past reprices past events, so it is named with what it changes.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Catalog, LookupError, PriceVersion};

/// One problem of a catalog file: where (`[3] openai/gpt-4o: effective_from`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Problems of a catalog file, all of them.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

fn hint(path: &str, raw: Option<&serde_json::Value>) -> &'static str {
    match raw {
        Some(serde_json::Value::Number(_)) if path.ends_with("credits") => {
            "; write it as a string so it stays exact, e.g. \"0.15\""
        }
        Some(serde_json::Value::String(_)) if path == "effective_from" => {
            "; write an RFC 3339 instant in UTC, e.g. \"2024-01-01T00:00:00Z\""
        }
        _ => "",
    }
}

/// The problem `e` found in the value at `base` (`""` for the whole version, `prices.x`):
/// the path, the value as written, the error and what to write instead.
fn problem<E: std::fmt::Display>(
    item: &serde_json::Value,
    at: &str,
    base: &str,
    e: &serde_path_to_error::Error<E>,
) -> Problem {
    let inner = e.path().to_string();
    let path = match (base, inner.as_str()) {
        ("", p) => p.to_string(),
        (b, ".") => b.to_string(),
        (b, p) => format!("{b}.{p}"),
    };
    let pointer = format!("/{}", path.replace('.', "/"));
    let raw = item.pointer(&pointer);
    let shown = raw.map(|r| format!(" = {r}")).unwrap_or_default();
    Problem {
        path: if path == "." {
            at.to_string()
        } else {
            format!("{at}: {path}{shown}")
        },
        message: format!("{}{}", e.inner(), hint(&path, raw)),
    }
}

/// Every field-level problem of one version: each field read on its own as its type (each
/// unit price on its own), unknown fields and missing ones. Empty when `item` is not an
/// object.
fn field_problems(item: &serde_json::Value, at: &str) -> Vec<Problem> {
    use serde::de::DeserializeOwned;
    fn field<T: DeserializeOwned>(
        item: &serde_json::Value,
        at: &str,
        base: &str,
        v: &serde_json::Value,
    ) -> Option<Problem> {
        serde_path_to_error::deserialize::<_, T>(v)
            .err()
            .map(|e| problem(item, at, base, &e))
    }
    const FIELDS: [&str; 8] = [
        "asset_id",
        "asset_type",
        "vendor",
        "effective_from",
        "prices",
        "aliases",
        "alias_patterns",
        "tiers",
    ];
    let Some(obj) = item.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in obj {
        let p = match k.as_str() {
            "asset_id" | "vendor" => field::<String>(item, at, k, v),
            "asset_type" => field::<super::AssetType>(item, at, k, v),
            "effective_from" => field::<DateTime<Utc>>(item, at, k, v),
            "aliases" | "alias_patterns" => field::<Vec<String>>(item, at, k, v),
            "tiers" => field::<Vec<super::tiers::Tier>>(item, at, k, v),
            "prices" => match v.as_object() {
                Some(units) => {
                    out.extend(units.iter().filter_map(|(u, p)| {
                        field::<super::UnitPrice>(item, at, &format!("prices.{u}"), p)
                    }));
                    None
                }
                None => {
                    field::<std::collections::BTreeMap<String, super::UnitPrice>>(item, at, k, v)
                }
            },
            other => Some(Problem {
                path: format!("{at}: {other} = {v}"),
                message: format!("unknown field `{other}`, expected one of {}", {
                    FIELDS.map(|f| format!("`{f}`")).join(", ")
                }),
            }),
        };
        out.extend(p);
    }
    for f in &FIELDS[..5] {
        if !obj.contains_key(*f) {
            out.push(Problem {
                path: at.to_string(),
                message: format!("missing field `{f}`"),
            });
        }
    }
    out
}

/// Parses and checks a catalog file (a JSON array of price versions); collects every problem.
/// An empty array is a problem: nothing could be priced.
pub fn check_file(bytes: &[u8]) -> Result<Catalog, Problems> {
    let items: Vec<serde_json::Value> = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) if e.is_data() => {
            return Err(Problems(vec![Problem {
                path: String::new(),
                message: "a catalog is a JSON array of price versions ([{...}, ...])".into(),
            }]));
        }
        Err(e) => {
            return Err(Problems(vec![Problem {
                path: String::new(),
                message: format!("not valid JSON: {e}"),
            }]));
        }
    };
    let mut problems = Vec::new();
    if items.is_empty() {
        problems.push(Problem {
            path: String::new(),
            message: "the catalog is empty: it needs at least one price version".into(),
        });
    }
    let mut catalog = Catalog::default();
    for (i, item) in items.iter().enumerate() {
        let at = match item.get("asset_id").and_then(|a| a.as_str()) {
            Some(a) => format!("[{i}] {a}"),
            None => format!("[{i}]"),
        };
        let v: PriceVersion = match serde_path_to_error::deserialize(item) {
            Ok(v) => v,
            Err(e) => {
                // Serde stops at the first field: look at each field on its own so that a
                // version with several problems shows them all.
                let mut found = field_problems(item, &at);
                if found.is_empty() {
                    found.push(problem(item, &at, "", &e));
                }
                problems.extend(found);
                continue;
            }
        };
        // Every rule the version breaks, not only the first (insert checks them again).
        let invalid = v.problems();
        if !invalid.is_empty() {
            problems.extend(invalid.into_iter().map(|e| match e {
                super::CatalogError::Invalid { field, why, .. } => Problem {
                    path: format!("{at}: {field}"),
                    message: why,
                },
                e => Problem {
                    path: at.clone(),
                    message: format!("refused: {e}"),
                },
            }));
            continue;
        }
        match catalog.insert(v) {
            Ok(_) => {}
            Err(super::CatalogError::Invalid { field, why, .. }) => problems.push(Problem {
                path: format!("{at}: {field}"),
                message: why,
            }),
            Err(e) => problems.push(Problem {
                path: at,
                message: format!("refused: {e}"),
            }),
        }
    }
    if problems.is_empty() {
        Ok(catalog)
    } else {
        Err(Problems(problems))
    }
}

/// `unit credits/per, ...` of a version, e.g. `input_tokens 0.15/1000000`; each tier after
/// it as `; tier above_200k_tokens (input_tokens+cached_input_tokens above 200000):
/// input_tokens 0.3/1000000, ...`.
pub fn prices_text(v: &PriceVersion) -> String {
    if v.prices.is_empty() {
        return "no direct cost".into();
    }
    let list = |prices: &std::collections::BTreeMap<String, super::UnitPrice>| {
        prices
            .iter()
            .map(|(u, p)| format!("{u} {}/{}", p.credits, p.per))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = list(&v.prices);
    for t in &v.tiers {
        let when: Vec<String> = t.when.iter().map(|c| c.describe()).collect();
        s.push_str(&format!(
            "; tier {} ({}): {}",
            t.name,
            when.join(" and "),
            list(&t.prices)
        ));
    }
    s
}

/// What publishing `new` onto the `published` catalog would do to one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Change {
    /// Already on the topic, byte for byte.
    Unchanged { key: String },
    /// Takes effect now or later: the normal way to change a price.
    Future { key: String },
    /// Takes effect in the past over an earlier version: reprices events that were billed;
    /// `what` says which.
    Retroactive { key: String, what: String },
    /// Takes effect in the past where no price was in force (a new asset, or earlier than
    /// the asset's first version): events that were rejected become billable on replay
    /// (`dead-letters replay`); nothing billed changes. Allowed, and said.
    Backfill { key: String, what: String },
    /// The published version at the same instant with aliases or patterns added and nothing
    /// else changed: the one edit of a published version allowed (the catalog topic takes it
    /// as an update of the same key); `added` lists them, patterns as `/pattern/`.
    AliasesAdded { key: String, added: Vec<String> },
    /// A different version at the same instant is already published: never allowed; `what`
    /// names the fields that differ.
    Edit { key: String, what: String },
}

/// The aliases and patterns (`/pattern/`) `new` declares that `old` does not.
fn added_aliases(old: &PriceVersion, new: &PriceVersion) -> Vec<String> {
    let names = new.aliases.iter().filter(|a| !old.aliases.contains(a));
    let patterns = new
        .alias_patterns
        .iter()
        .filter(|p| !old.alias_patterns.contains(p))
        .map(|p| format!("/{p}/"));
    names.cloned().chain(patterns).collect()
}

/// Which fields of a published version `new` changes, for the refusal.
fn edit_text(old: &PriceVersion, new: &PriceVersion) -> String {
    let PriceVersion {
        asset_id: _,
        asset_type,
        vendor,
        effective_from: _,
        prices,
        aliases,
        alias_patterns,
        tiers,
        correction,
    } = old;
    let mut what = Vec::new();
    if *tiers != new.tiers {
        let names = |t: &[crate::catalog::tiers::Tier]| {
            t.iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>()
                .join(",")
        };
        what.push(format!(
            "tiers [{}] -> [{}]",
            names(tiers),
            names(&new.tiers)
        ));
    }
    if *correction != new.correction {
        let id = |c: &Option<crate::catalog::VersionCorrection>| {
            c.as_ref().map_or("none".to_string(), |c| c.id.clone())
        };
        what.push(format!(
            "correction {} -> {}",
            id(correction),
            id(&new.correction)
        ));
    }
    if *asset_type != new.asset_type {
        what.push(format!(
            "asset_type {} -> {}",
            asset_type.as_str(),
            new.asset_type.as_str()
        ));
    }
    if *vendor != new.vendor {
        what.push(format!("vendor {vendor:?} -> {:?}", new.vendor));
    }
    if *prices != new.prices {
        what.push(format!(
            "prices {} -> {}",
            prices_text(old),
            prices_text(new)
        ));
    }
    let removed: Vec<String> = aliases
        .iter()
        .filter(|a| !new.aliases.contains(a))
        .cloned()
        .chain(
            alias_patterns
                .iter()
                .filter(|p| !new.alias_patterns.contains(p))
                .map(|p| format!("/{p}/")),
        )
        .collect();
    if !removed.is_empty() {
        what.push(format!("aliases removed: {}", removed.join(" ")));
    }
    what.join("; ")
}

/// Compares the versions of `new` with the `published` catalog at `now`. Seeding an empty
/// topic changes no price that was ever charged, so nothing is retroactive then.
pub fn changes(new: &Catalog, published: &Catalog, now: DateTime<Utc>) -> Vec<Change> {
    let mut out = Vec::new();
    for v in new.versions() {
        let key = v.topic_key();
        let same_instant = published
            .lookup(&v.asset_id, v.effective_from)
            .ok()
            .filter(|p| p.effective_from == v.effective_from);
        if let Some(p) = same_instant {
            out.push(if p.spec == *v {
                Change::Unchanged { key }
            } else if super::adds_aliases_only(&p.spec, v) {
                let added = added_aliases(&p.spec, v);
                if added.is_empty() {
                    // The same names in another order.
                    Change::Unchanged { key }
                } else {
                    Change::AliasesAdded { key, added }
                }
            } else {
                Change::Edit {
                    key,
                    what: edit_text(&p.spec, v),
                }
            });
            continue;
        }
        if v.effective_from >= now || published.is_empty() {
            out.push(Change::Future { key });
            continue;
        }
        let until = published
            .versions()
            .filter(|p| p.asset_id == v.asset_id && p.effective_from > v.effective_from)
            .map(|p| p.effective_from)
            .min()
            .unwrap_or(now)
            .min(now);
        let span = format!(
            "from {} to {}",
            v.version_label(),
            until.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        let change = match published.lookup(&v.asset_id, v.effective_from) {
            Ok(prev) => Change::Retroactive {
                key,
                what: format!(
                    "events of {} {span} were priced with the version of {} ({}) and would be priced at {} on replay",
                    v.asset_id,
                    prev.label,
                    prices_text(&prev.spec),
                    prices_text(v)
                ),
            },
            Err(LookupError::UnknownAsset) => Change::Backfill {
                key,
                what: format!(
                    "{} is not in the published catalog: its events {span} were rejected (unknown_asset) and become billable by `dead-letters replay`",
                    v.asset_id
                ),
            },
            Err(LookupError::BeforeFirstVersion(first)) => Change::Backfill {
                key,
                what: format!(
                    "events of {} from {} to {} were rejected (no_price_at_time) and become billable by `dead-letters replay`",
                    v.asset_id,
                    v.version_label(),
                    first.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
            },
        };
        out.push(change);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const ONE: &str = r#"[{"asset_id":"m","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":"0.15","per":1000}}}]"#;

    #[test]
    fn every_problem_is_reported_with_its_path_and_a_hint() {
        let bad = r#"[
          {"asset_id":"a","asset_type":"model","vendor":"v","effective_from":"2024-01-01","prices":{"t":{"credits":"1","per":1}}},
          {"asset_id":"b","asset_type":"model","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":0.5,"per":1}}},
          {"asset_id":"c","asset_type":"tool","vendor":"v","effective_from":"2024-01-01T00:00:00Z","prices":{"t":{"credits":"-1","per":1}}}
        ]"#;
        let p = check_file(bad.as_bytes()).unwrap_err().0;
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(p[0].path, "[0] a: effective_from = \"2024-01-01\"");
        assert!(p[0].message.contains("2024-01-01T00:00:00Z"), "{}", p[0]);
        assert_eq!(p[1].path, "[1] b: prices.t.credits = 0.5");
        assert!(p[1].message.contains("as a string"), "{}", p[1]);
        assert!(
            p[2].to_string()
                .contains("[2] c: prices.t.credits: must not be negative"),
            "{}",
            p[2]
        );
        let e = check_file(b"[]").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = check_file(b"{}").unwrap_err().to_string();
        assert!(e.contains("JSON array"), "{e}");
    }

    #[test]
    fn retroactive_versions_say_what_they_change() {
        let published = check_file(ONE.as_bytes()).unwrap();
        let now = t("2026-11-29T00:00:00Z");
        let newer = ONE
            .replace("2024-01-01", "2026-06-01")
            .replace("0.15", "0.12");
        let c = changes(&check_file(newer.as_bytes()).unwrap(), &published, now);
        match &c[0] {
            Change::Retroactive { what, .. } => assert!(
                what.contains("from 2026-06-01T00:00:00Z to 2026-11-29T00:00:00Z")
                    && what.contains("t 0.15/1000")
                    && what.contains("t 0.12/1000"),
                "{what}"
            ),
            other => panic!("{other:?}"),
        }
        let later = ONE.replace("2024-01-01", "2027-01-01");
        let c = changes(&check_file(later.as_bytes()).unwrap(), &published, now);
        assert!(matches!(c[0], Change::Future { .. }));
        let c = changes(&published, &published, now);
        assert!(matches!(c[0], Change::Unchanged { .. }));
        let edited = ONE.replace("0.15", "0.2");
        let c = changes(&check_file(edited.as_bytes()).unwrap(), &published, now);
        assert!(
            matches!(&c[0], Change::Edit { what, .. } if what == "prices t 0.15/1000 -> t 0.2/1000"),
            "{c:?}"
        );
        // A new asset in the past reprices nothing billed: a backfill.
        let other = ONE.replace("\"m\"", "\"n\"");
        let c = changes(&check_file(other.as_bytes()).unwrap(), &published, now);
        assert!(
            matches!(&c[0], Change::Backfill { what, .. } if what.contains("unknown_asset")),
            "{c:?}"
        );
        // Seeding an empty topic reprices nothing.
        let c = changes(&published, &Catalog::default(), now);
        assert!(matches!(c[0], Change::Future { .. }));
    }

    #[test]
    fn a_published_version_may_only_gain_aliases() {
        let with_in = |base: &str, aliases: &str| {
            let v = base.replace("\"prices\"", &format!("{aliases}\"prices\""));
            check_file(v.as_bytes()).unwrap()
        };
        let with = |aliases: &str| with_in(ONE, aliases);
        let now = t("2026-11-29T00:00:00Z");
        let published = with(r#""aliases":["a","b"],"#);
        let c = changes(
            &with(r#""aliases":["b","a","c"],"alias_patterns":["m-[0-9]+"],"#),
            &published,
            now,
        );
        assert_eq!(
            c,
            vec![Change::AliasesAdded {
                key: "m@2024-01-01T00:00:00Z".into(),
                added: vec!["c".into(), "/m-[0-9]+/".into()]
            }]
        );
        // The same names in another order are the same version.
        let c = changes(&with(r#""aliases":["b","a"],"#), &published, now);
        assert!(matches!(c[0], Change::Unchanged { .. }), "{c:?}");
        // A name that resolved must keep resolving; prices never change in place.
        let c = changes(&with(r#""aliases":["a","c"],"#), &published, now);
        assert!(
            matches!(&c[0], Change::Edit { what, .. } if what == "aliases removed: b"),
            "{c:?}"
        );
        let repriced = with_in(&ONE.replace("0.15", "0.2"), r#""aliases":["a","b","c"],"#);
        let c = changes(&repriced, &published, now);
        assert!(
            matches!(&c[0], Change::Edit { what, .. } if what.starts_with("prices t 0.15/1000 -> t 0.2/1000")),
            "{c:?}"
        );
    }
}
