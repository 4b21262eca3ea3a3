//! Tiered prices of a price version: a call's quantities in, the tier whose prices apply to
//! the whole call out (first tier whose conditions all hold, in declared order; the version's
//! own `prices` are the `default` tier). Also the rules `catalog check` enforces on tiers:
//! no two tiers can match one call, none is unreachable, the default stays reachable, and
//! every tier prices the same units as the default. Decided exactly (interval arithmetic on
//! disjoint measures), each refusal naming the tiers and a call that shows it.
//!
//! Where the rule comes from: vendors price a long request's every token at a higher rate
//! (Anthropic long context above 200k input tokens, Gemini above 128k; LiteLLM's
//! `*_above_200k_tokens` keys, applied when `prompt_tokens > 200000`).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::UnitPrice;

/// Most tiers a version may declare (besides the default).
pub const MAX_TIERS: usize = 16;
/// Name of the tier that applies when no declared tier matches: the version's `prices`.
pub const DEFAULT_TIER: &str = "default";
/// Most cells the coverage check enumerates before refusing a version as too complex.
const MAX_CELLS: usize = 100_000;

/// One tier: a name, conditions that must all hold, and a complete price list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Recorded on every priced line the tier prices (`tier`), e.g. `above_200k_tokens`.
    pub name: String,
    /// Conditions on the call's quantities; the tier matches when all hold.
    pub when: Vec<Condition>,
    /// Prices of every unit of the call when this tier applies: the same units as the
    /// version's default `prices`.
    pub prices: BTreeMap<String, UnitPrice>,
}

/// A condition on one measure of a call (its quantities as (unit, quantity) pairs, each
/// unit once, as the event decoder guarantees): the sum of the call's quantities of `units` (an
/// absent unit counts 0) is `> above` and `<= up_to` (either bound may be absent, not both).
/// Bounds are half-open the same way everywhere, so `up_to: N` and `above: N` meet without
/// a gap or an overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub units: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<u64>,
}

impl Condition {
    /// The measure of a call: the sum of its quantities of this condition's units.
    fn measure(&self, quantities: &[(String, Decimal)]) -> Decimal {
        quantities
            .iter()
            .filter(|(u, _)| self.units.contains(u))
            .fold(Decimal::ZERO, |a, (_, q)| a.saturating_add(*q))
    }

    /// Whether the call's quantities satisfy the condition.
    pub fn holds(&self, quantities: &[(String, Decimal)]) -> bool {
        let m = self.measure(quantities);
        self.above.is_none_or(|a| m > Decimal::from(a))
            && self.up_to.is_none_or(|b| m <= Decimal::from(b))
    }

    /// `input_tokens+cached_input_tokens above 200000`.
    pub fn describe(&self) -> String {
        let mut s = self.units.join("+");
        if let Some(a) = self.above {
            s.push_str(&format!(" above {a}"));
        }
        if let Some(b) = self.up_to {
            if self.above.is_some() {
                s.push_str(" and");
            }
            s.push_str(&format!(" up to {b}"));
        }
        s
    }
}

impl Tier {
    /// Whether every condition holds for the call's quantities.
    pub fn matches(&self, quantities: &[(String, Decimal)]) -> bool {
        self.when.iter().all(|c| c.holds(quantities))
    }
}

/// The first tier of `tiers` (declared order) that matches, by index.
pub fn select(tiers: &[Tier], quantities: &[(String, Decimal)]) -> Option<usize> {
    tiers.iter().position(|t| t.matches(quantities))
}

/// An interval `(lo, hi]` of a measure (`lo` absent: from 0 inclusive; `hi` absent: no end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    lo: Option<u64>,
    hi: Option<u64>,
}

impl Span {
    const ALL: Span = Span { lo: None, hi: None };

    fn meet(self, o: Span) -> Span {
        Span {
            lo: self.lo.max(o.lo),
            hi: match (self.hi, o.hi) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    fn is_empty(self) -> bool {
        matches!((self.lo, self.hi), (Some(l), Some(h)) if l >= h)
    }

    fn contains(self, v: u64) -> bool {
        self.lo.is_none_or(|l| v > l) && self.hi.is_none_or(|h| v <= h)
    }

    /// A whole value inside (the interval is not empty): the smallest one.
    fn witness(self) -> u64 {
        self.lo.map_or(0, |l| l + 1)
    }
}

/// A tier as a box: one span per measure (index into the version's measures).
type TierBox = Vec<Span>;

/// The distinct measures (unit sets) of the version's tiers, sorted units each, and each
/// tier's box over them. Errors name a measure that shares units with another without
/// being the same set: their sums are not independent, so overlap would not be decidable
/// by intervals.
fn boxes(tiers: &[Tier]) -> Result<(Vec<Vec<String>>, Vec<TierBox>), String> {
    let mut measures: Vec<Vec<String>> = Vec::new();
    for t in tiers {
        for c in &t.when {
            let mut m = c.units.clone();
            m.sort();
            if measures.contains(&m) {
                continue;
            }
            if let Some(other) = measures.iter().find(|o| o.iter().any(|u| m.contains(u))) {
                return Err(format!(
                    "conditions on {} and on {} share units without being the same sum; condition every tier on the same units, or on units no other condition uses",
                    m.join("+"),
                    other.join("+")
                ));
            }
            measures.push(m);
        }
    }
    let boxes = tiers
        .iter()
        .map(|t| {
            let mut b = vec![Span::ALL; measures.len()];
            for c in &t.when {
                let mut m = c.units.clone();
                m.sort();
                let i = measures.iter().position(|x| *x == m).expect("collected");
                b[i] = b[i].meet(Span {
                    lo: c.above,
                    hi: c.up_to,
                });
            }
            b
        })
        .collect();
    Ok((measures, boxes))
}

fn show_point(measures: &[Vec<String>], point: &[u64]) -> String {
    if measures.is_empty() {
        return "any call".into();
    }
    measures
        .iter()
        .zip(point)
        .map(|(m, v)| format!("{} = {v}", m.join("+")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every rule the tiers of a version break, as (field, why): names, conditions (units the
/// version prices, a bound, `above < up_to`), prices (the default's units, same `whole`),
/// overlap between tiers, unreachable tiers and an unreachable default.
pub fn problems(default: &BTreeMap<String, UnitPrice>, tiers: &[Tier]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if tiers.is_empty() {
        return out;
    }
    if tiers.len() > MAX_TIERS {
        out.push((
            "tiers".into(),
            format!("declares {} tiers; at most {MAX_TIERS}", tiers.len()),
        ));
    }
    let mut structural = false;
    for (i, t) in tiers.iter().enumerate() {
        let at = format!("tiers[{i}]");
        let name_ok = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            out.push((
                format!("{at}.name"),
                format!(
                    "must be 1 to 64 characters of a-z, 0-9, _ - . , got {:?}",
                    t.name
                ),
            ));
        }
        if t.name == DEFAULT_TIER {
            out.push((
                format!("{at}.name"),
                "\"default\" names the version's own prices; give the tier another name".into(),
            ));
        }
        if let Some(j) = tiers[..i].iter().position(|o| o.name == t.name) {
            out.push((
                format!("{at}.name"),
                format!("{:?} is also the name of tiers[{j}]", t.name),
            ));
        }
        if t.when.is_empty() {
            out.push((
                format!("{at}.when"),
                "needs at least one condition (a tier without one would take every call)".into(),
            ));
            structural = true;
        }
        for (k, c) in t.when.iter().enumerate() {
            let cat = format!("{at}.when[{k}]");
            if c.units.is_empty() {
                out.push((format!("{cat}.units"), "must name at least one unit".into()));
                structural = true;
            }
            for (n, u) in c.units.iter().enumerate() {
                if c.units[..n].contains(u) {
                    out.push((format!("{cat}.units"), format!("names {u} twice")));
                    structural = true;
                } else if !default.contains_key(u) {
                    out.push((
                        format!("{cat}.units"),
                        format!(
                            "{u} is not a unit of the version's prices ({})",
                            default.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            if c.above.is_none() && c.up_to.is_none() {
                out.push((cat, "needs `above`, `up_to` or both".into()));
                structural = true;
            }
        }
        for u in default.keys() {
            if !t.prices.contains_key(u) {
                out.push((
                    format!("{at}.prices"),
                    format!(
                        "has no price for {u}: a tier prices every unit of the version (repeat the default price if it does not change)"
                    ),
                ));
            }
        }
        for (u, p) in &t.prices {
            let f = format!("{at}.prices.{u}");
            match default.get(u) {
                None => out.push((
                    f.clone(),
                    "is not a unit of the version's default prices; list it there too".into(),
                )),
                Some(d) if d.is_whole(u) != p.is_whole(u) => out.push((
                    format!("{f}.whole"),
                    format!(
                        "is {} but {} in the default prices: whether a unit is whole cannot depend on the tier",
                        p.is_whole(u),
                        d.is_whole(u)
                    ),
                )),
                Some(_) => {}
            }
            out.extend(super::price_problems(&f, p));
        }
    }
    if structural {
        return out;
    }
    let (measures, boxes) = match boxes(tiers) {
        Ok(b) => b,
        Err(why) => {
            out.push(("tiers".into(), why));
            return out;
        }
    };
    for (i, b) in boxes.iter().enumerate() {
        if b.iter().any(|s| s.is_empty()) {
            let conds: Vec<String> = tiers[i].when.iter().map(Condition::describe).collect();
            out.push((
                format!("tiers[{i}]"),
                format!(
                    "{:?} is unreachable: no call has {}",
                    tiers[i].name,
                    conds.join(" and ")
                ),
            ));
        }
    }
    for j in 0..boxes.len() {
        for i in 0..j {
            let meet: Vec<Span> = boxes[i]
                .iter()
                .zip(&boxes[j])
                .map(|(a, b)| a.meet(*b))
                .collect();
            if boxes[i].iter().chain(&boxes[j]).any(|s| s.is_empty())
                || meet.iter().any(|s| s.is_empty())
            {
                continue;
            }
            let point: Vec<u64> = meet.iter().map(|s| s.witness()).collect();
            out.push((
                format!("tiers[{j}]"),
                format!(
                    "{:?} overlaps tiers[{i}] {:?}: a call with {} matches both; make their conditions disjoint",
                    tiers[j].name,
                    tiers[i].name,
                    show_point(&measures, &point)
                ),
            ));
        }
    }
    if out.is_empty() {
        match uncovered_point(&boxes) {
            Ok(Some(_)) => {}
            Ok(None) => out.push((
                "tiers".into(),
                format!(
                    "the default prices are unreachable: every call matches one of the tiers ({}); a default tier is always reachable, so drop a bound",
                    tiers
                        .iter()
                        .map(|t| format!("{:?}", t.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Err(cells) => out.push((
                "tiers".into(),
                format!(
                    "too many distinct bounds to check that the default stays reachable ({cells} cells, at most {MAX_CELLS})"
                ),
            )),
        }
    }
    out
}

/// A point (one whole value per measure) no box contains, if any: enumerates the cells
/// the boxes' bounds cut each measure into. `Err(cells)` when there are too many.
fn uncovered_point(boxes: &[TierBox]) -> Result<Option<Vec<u64>>, usize> {
    let Some(first) = boxes.first() else {
        return Ok(Some(Vec::new()));
    };
    let dims = first.len();
    // Representatives of the cells of each measure: 0 and b+1 for every bound b.
    let reps: Vec<Vec<u64>> = (0..dims)
        .map(|d| {
            let mut r = vec![0u64];
            for b in boxes {
                r.extend(b[d].lo.map(|l| l.saturating_add(1)));
                r.extend(b[d].hi.map(|h| h.saturating_add(1)));
            }
            r.sort_unstable();
            r.dedup();
            r
        })
        .collect();
    let cells = reps
        .iter()
        .try_fold(1usize, |a, r| a.checked_mul(r.len()))
        .unwrap_or(usize::MAX);
    if cells > MAX_CELLS {
        return Err(cells);
    }
    let mut idx = vec![0usize; dims];
    loop {
        let point: Vec<u64> = idx.iter().enumerate().map(|(d, &i)| reps[d][i]).collect();
        let covered = boxes
            .iter()
            .any(|b| b.iter().zip(&point).all(|(s, v)| s.contains(*v)));
        if !covered {
            return Ok(Some(point));
        }
        // Next cell (odometer).
        let mut d = 0;
        loop {
            if d == dims {
                return Ok(None);
            }
            idx[d] += 1;
            if idx[d] < reps[d].len() {
                break;
            }
            idx[d] = 0;
            d += 1;
        }
    }
}

#[cfg(test)]
mod tests;
