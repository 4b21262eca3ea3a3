//! Plan checks: the rules of one plan version or assignment, and a plans file's bytes in,
//! every problem with its path out (not only the first); with a catalog, rules that can
//! never apply (no asset matches, a unit the asset does not price) are named too. Also what
//! publishing a file would change against the plans already published.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{MAX_RULES, PlanAssignment, PlanBook, PlanError, PlanVersion, PlansFile};
use crate::catalog::Catalog;
use crate::catalog::check::{Problem, Problems};
use crate::money::MAX_MARKUP_RATE_SCALE;

/// Decimals allowed in a discount percentage.
pub const MAX_DISCOUNT_SCALE: u32 = 4;

fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Every rule of its own that a plan version breaks.
pub fn plan_problems(v: &PlanVersion) -> Vec<PlanError> {
    let what = format!("plan {} version {}", v.plan_id, v.version_label());
    let mut out = Vec::new();
    let mut bad = |field: String, why: String| {
        out.push(PlanError::Invalid {
            what: what.clone(),
            field,
            why,
        })
    };
    if !id_ok(&v.plan_id) {
        bad(
            "plan_id".into(),
            format!(
                "must be 1 to 64 characters of a-z, A-Z, 0-9, _ - . , got {:?}",
                v.plan_id
            ),
        );
    }
    if let Some(r) = v.markup_rate
        && (r.is_sign_negative()
            || r > Decimal::from(10)
            || r.normalize().scale() > MAX_MARKUP_RATE_SCALE)
    {
        bad(
            "markup_rate".into(),
            format!("must be between 0 and 10 with at most 6 decimals, got {r}"),
        );
    }
    if v.description.as_ref().is_some_and(|d| d.len() > 1024) {
        bad("description".into(), "is longer than 1024 bytes".into());
    }
    if v.rules.len() > MAX_RULES {
        bad(
            "rules".into(),
            format!("declares {} rules; at most {MAX_RULES}", v.rules.len()),
        );
    }
    for (i, r) in v.rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        let target = match &r.applies_to {
            super::Selector::AssetId(s)
            | super::Selector::AssetIdPrefix(s)
            | super::Selector::Vendor(s) => Some(s),
            super::Selector::AssetType(_) => None,
        };
        if target.is_some_and(|s| s.is_empty() || s.len() > 256 || s.chars().any(char::is_control))
        {
            bad(
                format!("{at}.applies_to"),
                "must name 1 to 256 bytes without control characters".into(),
            );
        }
        if let Some(j) = v.rules[..i]
            .iter()
            .position(|o| o.applies_to == r.applies_to)
        {
            bad(
                format!("{at}.applies_to"),
                format!(
                    "{} is also the selector of rules[{j}]; which one applies would be unclear",
                    r.applies_to.label()
                ),
            );
        }
        match (&r.discount_percent, r.unit_prices.is_empty()) {
            (Some(_), false) | (None, true) => bad(
                at.clone(),
                "needs exactly one of discount_percent and unit_prices".into(),
            ),
            (Some(p), true) => {
                if *p <= Decimal::ZERO
                    || *p > Decimal::from(100)
                    || p.normalize().scale() > MAX_DISCOUNT_SCALE
                {
                    bad(
                        format!("{at}.discount_percent"),
                        format!(
                            "must be above 0 and at most 100 with at most {MAX_DISCOUNT_SCALE} decimals, got {p}"
                        ),
                    );
                }
            }
            (None, false) => {
                for (u, p) in &r.unit_prices {
                    for (f, why) in
                        crate::catalog::price_problems(&format!("{at}.unit_prices.{u}"), p)
                    {
                        bad(f, why);
                    }
                    if p.whole.is_some() {
                        bad(
                            format!("{at}.unit_prices.{u}.whole"),
                            "is catalog data (the asset's price version says it); leave it out"
                                .into(),
                        );
                    }
                }
            }
        }
    }
    out
}

/// Every rule of its own that an assignment breaks.
pub fn assignment_problems(a: &PlanAssignment) -> Vec<PlanError> {
    let what = format!("assignment {}", a.topic_key());
    let mut out = Vec::new();
    if a.account_id.is_empty()
        || a.account_id.len() > crate::event::MAX_ID_BYTES
        || a.account_id.chars().any(char::is_control)
    {
        out.push(PlanError::Invalid {
            what: what.clone(),
            field: "account_id".into(),
            why: "must be 1 to 256 bytes without control characters".into(),
        });
    }
    if !id_ok(&a.plan_id) {
        out.push(PlanError::Invalid {
            what,
            field: "plan_id".into(),
            why: format!("{:?} is not a plan id", a.plan_id),
        });
    }
    out
}

fn problem_of(at: &str, e: PlanError) -> Problem {
    match e {
        PlanError::Invalid { field, why, .. } => Problem {
            path: format!("{at}: {field}"),
            message: why,
        },
        other => Problem {
            path: at.to_string(),
            message: format!("refused: {other}"),
        },
    }
}

/// Rules of `v` that can never apply with `catalog`: no asset matches the selector, or a
/// unit price overrides a unit no matching asset prices.
pub fn dead_rules(v: &PlanVersion, catalog: &Catalog) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, r) in v.rules.iter().enumerate() {
        let matching: Vec<&crate::catalog::PriceVersion> = catalog
            .versions()
            .filter(|p| r.applies_to.matches(&p.asset_id, p.asset_type, &p.vendor))
            .collect();
        if matching.is_empty() {
            out.push((
                format!("rules[{i}].applies_to"),
                format!("{} matches no asset of the catalog", r.applies_to.label()),
            ));
            continue;
        }
        for u in r.unit_prices.keys() {
            if !matching.iter().any(|p| p.prices.contains_key(u)) {
                out.push((
                    format!("rules[{i}].unit_prices.{u}"),
                    format!(
                        "no asset that {} matches prices {u}: a call in that unit is rejected (unknown_unit) whatever the plan says",
                        r.applies_to.label()
                    ),
                ));
            }
        }
    }
    out
}

/// Parses and checks a plans file; collects every problem, each with its path
/// (`plans[2] enterprise-acme@2026-01-01T00:00:00Z: rules[0].discount_percent`). With a
/// catalog, rules that can never apply are problems too.
pub fn check_file(bytes: &[u8], catalog: Option<&Catalog>) -> Result<PlanBook, Problems> {
    let file: PlansFile =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
            .map_err(|e| {
                Problems(vec![Problem {
                    path: e.path().to_string(),
                    message: format!(
                        "{} (a plans file is {{\"plans\": [...], \"assignments\": [...]}})",
                        e.inner()
                    ),
                }])
            })?;
    let mut problems = Vec::new();
    if file.plans.is_empty() && file.assignments.is_empty() {
        problems.push(Problem {
            path: String::new(),
            message: "the file has no plan and no assignment".into(),
        });
    }
    let mut book = PlanBook::default();
    for (i, p) in file.plans.iter().enumerate() {
        let at = format!("plans[{i}] {}@{}", p.plan_id, p.version_label());
        let own = plan_problems(p);
        if !own.is_empty() {
            problems.extend(own.into_iter().map(|e| problem_of(&at, e)));
            continue;
        }
        if let Some(c) = catalog {
            problems.extend(dead_rules(p, c).into_iter().map(|(f, why)| Problem {
                path: format!("{at}: {f}"),
                message: why,
            }));
        }
        if let Err(e) = book.insert_plan(p.clone()) {
            problems.push(problem_of(&at, e));
        }
    }
    for (i, a) in file.assignments.iter().enumerate() {
        let at = format!("assignments[{i}] {}", a.topic_key());
        let own = assignment_problems(a);
        if !own.is_empty() {
            problems.extend(own.into_iter().map(|e| problem_of(&at, e)));
            continue;
        }
        if let Err(e) = book.insert_assignment(a.clone()) {
            problems.push(problem_of(&at, e));
        }
    }
    if problems.is_empty() {
        Ok(book)
    } else {
        Err(Problems(problems))
    }
}

/// What publishing one record would do against the published book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum PlanChange {
    /// Already published, the same.
    Unchanged { key: String },
    /// Takes effect now or later.
    Future { key: String },
    /// Takes effect in the past: events already billed were priced otherwise; `rerate`
    /// does not re-price plan changes, a replay of the log would.
    Retroactive { key: String },
    /// Another record at the same instant is published: never allowed.
    Edit { key: String },
}

/// Compares `new` with `published` at `now`. Seeding an empty topic is never retroactive.
pub fn changes(new: &PlanBook, published: &PlanBook, now: DateTime<Utc>) -> Vec<PlanChange> {
    let seeding = published.is_empty();
    let mut out = Vec::new();
    for p in new.plans() {
        let key = p.topic_key();
        out.push(match published.plan_version(&p.plan_id, p.effective_from) {
            Some(q) if q.effective_from == p.effective_from && q == p => {
                PlanChange::Unchanged { key }
            }
            Some(q) if q.effective_from == p.effective_from => PlanChange::Edit { key },
            _ if seeding || p.effective_from >= now => PlanChange::Future { key },
            _ => PlanChange::Retroactive { key },
        });
    }
    for a in new.assignments() {
        let key = a.topic_key();
        let same = published
            .assignments()
            .find(|x| x.account_id == a.account_id && x.effective_from == a.effective_from);
        out.push(match same {
            Some(x) if x == a => PlanChange::Unchanged { key },
            Some(_) => PlanChange::Edit { key },
            None if seeding || a.effective_from >= now => PlanChange::Future { key },
            None => PlanChange::Retroactive { key },
        });
    }
    out
}
