//! The bad-input corpus: every hostile payload in tests/fixtures/bad_events is rejected by
//! the rating core with its expected reason code, and none of them disturbs the state.

use std::path::PathBuf;

use usage_aggregator::catalog::Catalog;
use usage_aggregator::rollup::{Outcome, Output, PartitionRollup, RollupConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_events")
}

pub fn cases() -> Vec<(String, Vec<u8>, String)> {
    let index = std::fs::read_to_string(fixtures().join("expected.tsv")).unwrap();
    index
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (file, reason) = l.split_once('\t').expect("file<TAB>reason");
            let bytes = std::fs::read(fixtures().join(file)).unwrap();
            (file.to_string(), bytes, reason.trim().to_string())
        })
        .collect()
}

#[test]
fn every_bad_event_is_rejected_with_its_reason() {
    let catalog = Catalog::from_json(&std::fs::read("config/catalog.json").unwrap()).unwrap();
    let mut rollup = PartitionRollup::new(RollupConfig::default(), 0);
    let mut out = Vec::new();
    let prelude = std::fs::read_to_string(fixtures().join("prelude.jsonl")).unwrap();
    let mut offset = 0;
    for line in prelude.lines().filter(|l| !l.is_empty()) {
        let o = rollup.process(offset, line.as_bytes(), &catalog, 0, &mut out);
        assert!(
            matches!(o, Outcome::Priced(_)),
            "prelude line {offset}: {o:?} {out:?}"
        );
        offset += 1;
    }
    let cases = cases();
    assert!(cases.len() >= 50, "the corpus has at least 50 cases");
    let mut failures = Vec::new();
    for (file, bytes, expected) in &cases {
        out.clear();
        let o = rollup.process(offset, bytes, &catalog, 0, &mut out);
        offset += 1;
        let got = match (&o, out.as_slice()) {
            (Outcome::Rejected(r), [Output::Rejected(rej)]) => {
                assert!(!rej.message.is_empty());
                r.as_str().to_string()
            }
            _ => format!("{o:?} with {} outputs", out.len()),
        };
        if &got != expected {
            let msg = match out.first() {
                Some(Output::Rejected(r)) => r.message.clone(),
                _ => String::new(),
            };
            failures.push(format!("{file}: expected {expected}, got {got} ({msg})"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(rollup.open_executions(), 1, "exec-ctx-1 is still open");
}

#[test]
fn ten_megabyte_payload_is_oversized() {
    let catalog = Catalog::default();
    let mut rollup = PartitionRollup::new(RollupConfig::default(), 0);
    let mut out = Vec::new();
    let big = format!(
        "{{\"type\":\"model_call\",\"event_id\":\"{}\"}}",
        "x".repeat(10 << 20)
    );
    let o = rollup.process(0, big.as_bytes(), &catalog, 0, &mut out);
    assert_eq!(format!("{o:?}"), "Rejected(Oversized)");
}
