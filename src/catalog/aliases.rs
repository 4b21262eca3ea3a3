//! Model aliases: the exact names and anchored patterns that price versions declare in, a
//! name -> canonical `asset_id` resolution out. Two assets whose aliases could match one name
//! are refused when the version is added: exact names by lookup, patterns by running every
//! known name through them, and pattern against pattern by a product construction over their
//! DFAs (`regex-automata`), which finds a name both accept whenever one exists.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use regex::{Regex, RegexSet};
use regex_automata::dfa::Automaton;
use regex_automata::dfa::dense::{self, DFA};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

/// Most aliases (names plus patterns) one price version may declare.
pub const MAX_ALIASES_PER_VERSION: usize = 64;
/// Longest alias pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Largest DFA one pattern may compile to (bytes); a bigger one is refused, not guessed.
const DFA_SIZE_LIMIT: usize = 4 << 20;
/// Most state pairs explored when intersecting two patterns; beyond it the pair is refused.
const MAX_PRODUCT_STATES: usize = 200_000;

/// One compiled alias pattern. Matched against the whole name: `p` means `^(?:p)$`.
#[derive(Debug, Clone)]
pub struct AliasPattern {
    pub source: String,
    regex: Regex,
    dfa: Arc<DFA<Vec<u32>>>,
}

impl AliasPattern {
    /// Compiles `pattern` (regex crate syntax). Errors say why in a short sentence.
    pub fn compile(pattern: &str) -> Result<AliasPattern, String> {
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!("must be 1 to {MAX_PATTERN_BYTES} bytes"));
        }
        let anchored = anchored(pattern);
        let regex = Regex::new(&anchored).map_err(|e| format!("is not a valid regex: {e}"))?;
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(regex_automata::dfa::StartKind::Anchored)
                    .match_kind(MatchKind::All)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
            )
            .build(&anchored)
            .map_err(|e| {
                format!(
                    "cannot be checked for ambiguity ({e}); simplify it (no Unicode word boundaries, fewer repetitions)"
                )
            })?;
        Ok(AliasPattern {
            source: pattern.to_string(),
            regex,
            dfa: Arc::new(dfa),
        })
    }

    /// Whether the whole `name` matches.
    pub fn is_match(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    /// A name both patterns accept, if any. `Err` when the search is too large to finish
    /// (the caller refuses the pattern: an unproven pair is never accepted).
    pub fn intersection(&self, other: &AliasPattern) -> Result<Option<String>, String> {
        intersect(&self.dfa, &other.dfa)
            .map(|w| w.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }
}

fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// Breadth-first search over pairs of DFA states from both anchored start states; a pair
/// where both accept at end of input is a common name (returned as the shortest witness).
fn intersect(a: &DFA<Vec<u32>>, b: &DFA<Vec<u32>>) -> Result<Option<Vec<u8>>, String> {
    let cfg = start::Config::new().anchored(Anchored::Yes);
    let sa = a.start_state(&cfg).map_err(|e| e.to_string())?;
    let sb = b.start_state(&cfg).map_err(|e| e.to_string())?;
    // One representative byte per pair of equivalence classes: same transitions in both.
    let (ca, cb) = (a.byte_classes(), b.byte_classes());
    let mut seen_classes = vec![false; ca.alphabet_len() * cb.alphabet_len()];
    let mut reps = Vec::new();
    for byte in 0..=255u8 {
        let i = usize::from(ca.get(byte)) * cb.alphabet_len() + usize::from(cb.get(byte));
        if !seen_classes[i] {
            seen_classes[i] = true;
            reps.push(byte);
        }
    }
    type Pair = (StateID, StateID);
    let mut parent: HashMap<Pair, Option<(Pair, u8)>> = HashMap::new();
    let mut queue = VecDeque::new();
    parent.insert((sa, sb), None);
    queue.push_back((sa, sb));
    while let Some(pair) = queue.pop_front() {
        let (x, y) = pair;
        if a.is_match_state(a.next_eoi_state(x)) && b.is_match_state(b.next_eoi_state(y)) {
            let mut witness = Vec::new();
            let mut at = pair;
            while let Some(Some((prev, byte))) = parent.get(&at) {
                witness.push(*byte);
                at = *prev;
            }
            witness.reverse();
            return Ok(Some(witness));
        }
        for &byte in &reps {
            let nx = a.next_state(x, byte);
            let ny = b.next_state(y, byte);
            if a.is_dead_state(nx) || b.is_dead_state(ny) {
                continue;
            }
            if a.is_quit_state(nx) || b.is_quit_state(ny) {
                return Err("the patterns use a construct the DFA cannot decide".into());
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry((nx, ny)) {
                e.insert(Some((pair, byte)));
                if parent.len() > MAX_PRODUCT_STATES {
                    return Err(format!(
                        "checking them against each other needs more than {MAX_PRODUCT_STATES} states"
                    ));
                }
                queue.push_back((nx, ny));
            }
        }
    }
    Ok(None)
}

/// Two assets that could both own a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguity {
    /// A name both would resolve (a witness for patterns).
    pub name: String,
    /// The other asset, and how it claims the name.
    pub other_asset: String,
    pub other_claim: String,
    /// How the new version claims it.
    pub claim: String,
}

/// Every alias of every asset, for resolution and for the ambiguity check.
#[derive(Debug, Clone, Default)]
pub struct AliasIndex {
    names: HashMap<String, Arc<str>>,
    patterns: Vec<(Arc<str>, AliasPattern)>,
    set: Option<RegexSet>,
}

impl AliasIndex {
    /// The canonical asset a non-canonical `name` resolves to, if an alias claims it.
    pub fn resolve(&self, name: &str) -> Option<&Arc<str>> {
        if let Some(a) = self.names.get(name) {
            return Some(a);
        }
        let set = self.set.as_ref()?;
        set.matches(name).iter().next().map(|i| &self.patterns[i].0)
    }

    /// The asset whose alias claims `name`, with how it claims it (exact or pattern).
    fn claim_of(&self, name: &str, except: &str) -> Option<(String, String)> {
        if let Some(a) = self.names.get(name)
            && &**a != except
        {
            return Some((a.to_string(), format!("alias {name:?}")));
        }
        self.patterns
            .iter()
            .find(|(a, p)| &**a != except && p.is_match(name))
            .map(|(a, p)| (a.to_string(), format!("alias pattern {:?}", p.source)))
    }

    fn has_name(&self, asset: &str, name: &str) -> bool {
        self.names.get(name).is_some_and(|a| &**a == asset)
    }

    fn has_pattern(&self, asset: &str, source: &str) -> bool {
        self.patterns
            .iter()
            .any(|(a, p)| &**a == asset && p.source == source)
    }

    /// Checks a version of `asset` that declares `names` and `patterns` against everything
    /// else: `asset_ids` are all canonical ids (the new one included or not) and `is_asset`
    /// looks one up; `is_new_asset` says whether `asset` has no version yet. Returns the
    /// first ambiguity found.
    pub fn check<'a>(
        &self,
        asset: &str,
        is_new_asset: bool,
        names: &[String],
        patterns: &[AliasPattern],
        asset_ids: impl Iterator<Item = &'a str> + Clone,
        is_asset: impl Fn(&str) -> bool,
    ) -> Result<(), Box<Ambiguity>> {
        let amb = |name: &str, other: (String, String), claim: String| {
            Box::new(Ambiguity {
                name: name.to_string(),
                other_asset: other.0,
                other_claim: other.1,
                claim,
            })
        };
        if is_new_asset && let Some(other) = self.claim_of(asset, asset) {
            return Err(amb(asset, other, "its asset_id".into()));
        }
        for n in names.iter().filter(|n| !self.has_name(asset, n)) {
            if n != asset && is_asset(n) {
                return Err(amb(
                    n,
                    (n.clone(), "its asset_id".into()),
                    format!("alias {n:?}"),
                ));
            }
            if let Some(other) = self.claim_of(n, asset) {
                return Err(amb(n, other, format!("alias {n:?}")));
            }
        }
        for p in patterns
            .iter()
            .filter(|p| !self.has_pattern(asset, &p.source))
        {
            let claim = || format!("alias pattern {:?}", p.source);
            // The smallest offending name, so that the message is the same on every run.
            let id = asset_ids
                .clone()
                .filter(|id| *id != asset && p.is_match(id))
                .min();
            if let Some(id) = id {
                return Err(amb(id, (id.to_string(), "its asset_id".into()), claim()));
            }
            if let Some((n, a)) = self
                .names
                .iter()
                .filter(|(n, a)| &***a != asset && p.is_match(n))
                .min_by(|x, y| x.0.cmp(y.0))
            {
                return Err(amb(n, (a.to_string(), format!("alias {n:?}")), claim()));
            }
            for (a, q) in self.patterns.iter().filter(|(a, _)| &**a != asset) {
                let other = (a.to_string(), format!("alias pattern {:?}", q.source));
                match p.intersection(q) {
                    Ok(None) => {}
                    Ok(Some(w)) => return Err(amb(&w, other, claim())),
                    Err(why) => {
                        return Err(amb("(undecided)", other, format!("{}: {why}", claim())));
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the aliases of a version of `asset` (call after [`AliasIndex::check`]).
    pub fn add(&mut self, asset: &Arc<str>, names: &[String], patterns: Vec<AliasPattern>) {
        for n in names {
            self.names.entry(n.clone()).or_insert_with(|| asset.clone());
        }
        let before = self.patterns.len();
        for p in patterns {
            if !self.has_pattern(asset, &p.source) {
                self.patterns.push((asset.clone(), p));
            }
        }
        if self.patterns.len() != before {
            let sources = self.patterns.iter().map(|(_, p)| anchored(&p.source));
            self.set = Some(RegexSet::new(sources).expect("each pattern compiled alone"));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AliasPattern {
        AliasPattern::compile(s).unwrap()
    }

    #[test]
    fn patterns_match_the_whole_name() {
        let x = p(r"gpt-4o-mini-\d{4}-\d{2}-\d{2}");
        assert!(x.is_match("gpt-4o-mini-2024-07-18"));
        assert!(!x.is_match("openai/gpt-4o-mini-2024-07-18"));
        assert!(!x.is_match("gpt-4o-mini-2024-07-18-extra"));
    }

    #[test]
    fn disjoint_patterns_have_no_intersection() {
        let a = p(r"(openai/)?gpt-4o(-\d{4}-\d{2}-\d{2})?");
        let b = p(r"(openai/)?gpt-4o-mini(-\d{4}-\d{2}-\d{2})?");
        assert_eq!(a.intersection(&b).unwrap(), None);
        assert_eq!(b.intersection(&a).unwrap(), None);
    }

    #[test]
    fn overlapping_patterns_give_a_witness_both_accept() {
        let cases = [
            (r"gpt-4o.*", r"gpt-4o-mini.*"),
            (r"a|ab", r"a[b-z]"),
            (r"claude-3-5-sonnet-\d{8}", r"claude-3-5-[a-z]+-2024\d{4}"),
            (r"(?i)Models/gemini-1\.5-flash", r"models/gemini-1\.5-flash"),
            (r"x(é|e)", r"x[^a]"),
        ];
        for (x, y) in cases {
            let (a, b) = (p(x), p(y));
            let w = a
                .intersection(&b)
                .unwrap()
                .unwrap_or_else(|| panic!("{x} and {y} overlap"));
            assert!(a.is_match(&w) && b.is_match(&w), "{x} / {y}: witness {w:?}");
        }
    }

    #[test]
    fn patterns_too_big_to_check_are_refused() {
        let e = AliasPattern::compile(r"\w{50}[a-z]{1,200}").unwrap_err();
        assert!(e.contains("cannot be checked"), "{e}");
        let e = AliasPattern::compile(r"\bgpt").unwrap_err();
        assert!(e.contains("cannot be checked"), "{e}");
        assert!(AliasPattern::compile(r"(?-u:\b)gpt").is_ok());
        assert!(AliasPattern::compile("").is_err());
        assert!(AliasPattern::compile("(").is_err());
        assert!(AliasPattern::compile(&"a".repeat(300)).is_err());
    }

    #[test]
    fn index_resolves_and_refuses_overlaps() {
        let mut ix = AliasIndex::default();
        let ids = ["openai/gpt-4o", "openai/gpt-4o-mini"];
        let mini: Arc<str> = "openai/gpt-4o-mini".into();
        let names = vec!["gpt-4o-mini".to_string()];
        let pats = vec![p(r"(openai/)?gpt-4o-mini-\d{4}-\d{2}-\d{2}")];
        ix.check(&mini, true, &names, &pats, ids.iter().copied(), |n| {
            ids.contains(&n)
        })
        .unwrap();
        ix.add(&mini, &names, pats);
        assert_eq!(ix.resolve("gpt-4o-mini").map(|a| &**a), Some(&*mini));
        assert_eq!(
            ix.resolve("openai/gpt-4o-mini-2024-07-18").map(|a| &**a),
            Some(&*mini)
        );
        assert_eq!(ix.resolve("gpt-4o-mini-2024-07"), None);
        // Another asset claiming a name the pattern accepts is refused, with the name.
        let e = ix
            .check(
                "openai/gpt-4o",
                false,
                &["gpt-4o-mini-2024-07-18".into()],
                &[],
                ids.iter().copied(),
                |n| ids.contains(&n),
            )
            .unwrap_err();
        assert_eq!(e.other_asset, "openai/gpt-4o-mini");
        assert_eq!(e.name, "gpt-4o-mini-2024-07-18");
        // A pattern matching another asset's own id is refused.
        let e = ix
            .check(
                "openai/gpt-4o",
                false,
                &[],
                &[p(r"openai/gpt-4o.*")],
                ids.iter().copied(),
                |n| ids.contains(&n),
            )
            .unwrap_err();
        assert_eq!(e.name, "openai/gpt-4o-mini");
        // Pattern against pattern: the witness is named.
        let e = ix
            .check(
                "openai/gpt-4o",
                false,
                &[],
                &[p(r"gpt-4o.*-\d{4}-\d{2}-\d{2}")],
                ids.iter().copied(),
                |n| ids.contains(&n),
            )
            .unwrap_err();
        assert!(e.name.starts_with("gpt-4o-mini-"), "{e:?}");
        // A disjoint pattern is fine; the same asset may repeat its own aliases.
        ix.check(
            "openai/gpt-4o",
            false,
            &["gpt-4o".into()],
            &[p(r"gpt-4o-\d{4}-\d{2}-\d{2}")],
            ids.iter().copied(),
            |n| ids.contains(&n),
        )
        .unwrap();
        ix.check(&mini, false, &names, &[], ids.iter().copied(), |n| {
            ids.contains(&n)
        })
        .unwrap();
        // A new asset whose id is someone's alias is refused.
        let e = ix
            .check("gpt-4o-mini", true, &[], &[], ids.iter().copied(), |n| {
                ids.contains(&n)
            })
            .unwrap_err();
        assert_eq!(e.other_asset, "openai/gpt-4o-mini");
    }
}
