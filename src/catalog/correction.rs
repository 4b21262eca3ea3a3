//! Price corrections: versions published with `catalog publish --correction ID` replace the
//! version of the same asset and instant (or add one in the past); the window each corrects
//! runs to the asset's next version. `rerate --correction ID` re-prices those windows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Catalog;

/// The correction a price version belongs to: its id (`[A-Za-z0-9._-]`, 1 to 64 bytes) and
/// why it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionCorrection {
    pub id: String,
    pub reason: String,
}

/// Whether `id` is a valid correction id: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_correction_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One window a correction re-prices: events of `asset_id` with `from <= occurred_at <
/// until` (`until` `None`: no later version yet, so up to now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorrectionWindow {
    pub asset_id: String,
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    /// The label of the correcting version (`2026-07-01T00:00:00Z#fix-42`).
    pub version: String,
    pub reason: String,
}

impl CorrectionWindow {
    /// Whether an event of `asset_id` at `at` is in the window.
    pub fn covers(&self, asset_id: &str, at: DateTime<Utc>) -> bool {
        self.asset_id == asset_id && self.from <= at && self.until.is_none_or(|u| at < u)
    }
}

impl Catalog {
    /// The windows of correction `id` in this catalog, sorted by asset and instant; empty
    /// when no version in force belongs to it (unknown id, or superseded by a later
    /// correction at the same instant).
    pub fn correction_windows(&self, id: &str) -> Vec<CorrectionWindow> {
        let mut out = Vec::new();
        for list in self.assets.values() {
            for (i, v) in list.iter().enumerate() {
                let Some(c) = v.spec.correction.as_ref().filter(|c| c.id == id) else {
                    continue;
                };
                out.push(CorrectionWindow {
                    asset_id: v.spec.asset_id.clone(),
                    from: v.effective_from,
                    until: list.get(i + 1).map(|n| n.effective_from),
                    version: v.label.to_string(),
                    reason: c.reason.clone(),
                });
            }
        }
        out.sort_by(|a, b| (&a.asset_id, a.from).cmp(&(&b.asset_id, b.from)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"[
      {"asset_id":"llm","asset_type":"model","vendor":"v","effective_from":"2026-01-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"1","per":1000}}},
      {"asset_id":"llm","asset_type":"model","vendor":"v","effective_from":"2026-02-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"10","per":1000}}},
      {"asset_id":"llm","asset_type":"model","vendor":"v","effective_from":"2026-03-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"2","per":1000}}}
    ]"#;

    const FIX: &str = r#"{"asset_id":"llm","asset_type":"model","vendor":"v","effective_from":"2026-02-01T00:00:00Z",
       "prices":{"input_tokens":{"credits":"1.5","per":1000}},
       "correction":{"id":"fix-1","reason":"typo: 10 for 1.5"}}"#;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_correction_replaces_its_instant_in_either_order_and_names_its_window() {
        let fix = Catalog::parse_version(FIX.as_bytes()).unwrap();
        let mut c = Catalog::from_json(BASE.as_bytes()).unwrap();
        assert!(c.insert(fix.clone()).unwrap());
        let v = c.lookup("llm", t("2026-02-10T00:00:00Z")).unwrap();
        assert_eq!(&*v.label, "2026-02-01T00:00:00Z#fix-1");
        assert_eq!(v.spec.prices["input_tokens"].credits.to_string(), "1.5");
        // The original read after the correction (a compacted topic read again) loses.
        let original = Catalog::from_json(BASE.as_bytes()).unwrap();
        let feb = original
            .versions()
            .find(|v| v.effective_from == t("2026-02-01T00:00:00Z"))
            .unwrap()
            .clone();
        assert!(!c.insert(feb).unwrap());
        assert_eq!(
            &*c.lookup("llm", t("2026-02-10T00:00:00Z")).unwrap().label,
            "2026-02-01T00:00:00Z#fix-1"
        );
        let w = c.correction_windows("fix-1");
        assert_eq!(w.len(), 1);
        assert_eq!(
            (w[0].from, w[0].until),
            (t("2026-02-01T00:00:00Z"), Some(t("2026-03-01T00:00:00Z")))
        );
        assert!(w[0].covers("llm", t("2026-02-28T23:59:59Z")));
        assert!(!w[0].covers("llm", t("2026-03-01T00:00:00Z")));
        assert!(!w[0].covers("other", t("2026-02-10T00:00:00Z")));
        assert!(c.correction_windows("fix-2").is_empty());
        assert_eq!(c.version_count(), 3, "replaced, not added");
    }

    #[test]
    fn a_correction_id_and_reason_are_checked_naming_the_field() {
        let mut v = Catalog::parse_version(FIX.as_bytes()).unwrap();
        v.correction = Some(VersionCorrection {
            id: "fix 1".into(),
            reason: " ".into(),
        });
        let p: Vec<String> = v.problems().iter().map(|e| e.to_string()).collect();
        assert!(
            p[0].contains("correction.id") && p[0].contains("fix 1"),
            "{p:?}"
        );
        assert!(p[1].contains("correction.reason"), "{p:?}");
    }
}
