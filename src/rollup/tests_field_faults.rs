//! Faults seen in the field (issue 14), at the rating core with the shipped catalog: strict
//! timestamps, rejected events that stay billable, tenant-scoped ids whatever the
//! partitioning, and close markers only from the aggregator.

use std::collections::BTreeMap;
use std::str::FromStr;

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::catalog::Catalog;
use crate::plans::NO_PLANS;

const SHIPPED: &str = include_str!("../../config/catalog.json");

fn shipped() -> Catalog {
    Catalog::from_json(SHIPPED.as_bytes()).unwrap()
}

/// The shipped catalog plus `acme/new-search` at 0.05 per request from 2024.
fn with_new_search() -> Catalog {
    let mut v: Vec<serde_json::Value> = serde_json::from_str(SHIPPED).unwrap();
    v.push(
        serde_json::json!({"asset_id":"acme/new-search","asset_type":"tool","vendor":"acme",
        "effective_from":"2024-01-01T00:00:00Z","prices":{"requests":{"credits":"0.05","per":1}}}),
    );
    Catalog::from_json(&serde_json::to_vec(&v).unwrap()).unwrap()
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

struct Core {
    rollup: PartitionRollup,
    offset: i64,
    out: Vec<Output>,
}

impl Core {
    fn new() -> Self {
        Core {
            rollup: PartitionRollup::new(RollupConfig::default(), 0),
            offset: 0,
            out: Vec::new(),
        }
    }
    fn feed(&mut self, catalog: &Catalog, payload: &str) -> Outcome {
        let o = self
            .rollup
            .process(self.offset, payload.as_bytes(), catalog, 0, &mut self.out);
        self.offset += 1;
        o
    }
    fn debits(&self) -> Vec<(DebitKind, String, Decimal)> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Debit(d) => Some((d.kind, d.account_id.clone(), d.total)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn issue_timestamps_are_rejected_not_billed() {
    let c = shipped();
    let mut core = Core::new();
    for line in [
        r#"{"type":"tool_call","event_id":"t1","occurred_at":"2026-03-15T10:00:00.1234567891Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
        r#"{"type":"tool_call","event_id":"t2","occurred_at":"2026-03-15 10:00:00Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
        r#"{"type":"tool_call","event_id":"t3","occurred_at":"2026-03-15t10:00:00z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
        r#"{"type":"tool_call","event_id":"t4","occurred_at":"2026-03-15T10:17:60Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
        r#"{"type":"tool_call","event_id":"t5","occurred_at":"2026-06-30T23:59:60Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#,
    ] {
        assert_eq!(
            core.feed(&c, line),
            Outcome::Rejected(RejectReason::InvalidTimestamp),
            "{line}"
        );
    }
    assert!(core.debits().is_empty());
    // The same call with a contract timestamp is billed 0.008.
    let good = r#"{"type":"tool_call","event_id":"t6","occurred_at":"2026-03-15T10:17:59.123456789Z","account_id":"acct-ts","asset_id":"tavily/web-search","quantities":{"requests":1}}"#;
    assert_eq!(core.feed(&c, good), Outcome::Priced(AssetType::Tool));
    assert_eq!(
        core.debits(),
        [(DebitKind::ToolCall, "acct-ts".into(), d("0.008"))]
    );
}

const NEW_SEARCH: &str = r#"{"type":"tool_call","event_id":"r1","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-r","asset_id":"acme/new-search","quantities":{"requests":2}}"#;

#[test]
fn a_rejected_event_is_billed_once_when_replayed_after_the_price_exists() {
    let (old, new) = (shipped(), with_new_search());
    let mut core = Core::new();
    let unknown = Outcome::Rejected(RejectReason::UnknownAsset);
    assert_eq!(core.feed(&old, NEW_SEARCH), unknown);
    // Re-sent before the fix: rejected (and dead-lettered) again, not dropped silently.
    assert_eq!(core.feed(&old, NEW_SEARCH), unknown);
    // The price is published; the dead letter is replayed: billed once.
    assert_eq!(
        core.feed(&new, NEW_SEARCH),
        Outcome::Priced(AssetType::Tool)
    );
    assert_eq!(core.feed(&new, NEW_SEARCH), Outcome::Duplicate);
    assert_eq!(
        core.debits(),
        [(DebitKind::ToolCall, "acct-r".into(), d("0.1"))]
    );
    // Once billed, the same event_id with other content is a conflict.
    let other = NEW_SEARCH.replace("\"requests\":2", "\"requests\":3");
    assert_eq!(
        core.feed(&new, &other),
        Outcome::Rejected(RejectReason::ConflictingDuplicate)
    );
}

#[test]
fn every_catalog_rejection_leaves_the_event_billable() {
    let c = shipped();
    let mut core = Core::new();
    let call = |id: &str, at: &str, unit: &str| {
        format!(
            r#"{{"type":"model_call","event_id":"{id}","occurred_at":"{at}","account_id":"acct-c","execution_id":"x","asset_id":"openai/gpt-4o-mini","quantities":{{"{unit}":1000000}}}}"#
        )
    };
    // no_price_at_time (before the first version) and unknown_unit, inside an execution.
    let early = call("m1", "2023-06-01T00:00:00Z", "input_tokens");
    let typo = call("m2", "2026-03-01T10:00:00Z", "input_token");
    assert_eq!(
        core.feed(&c, &early),
        Outcome::Rejected(RejectReason::NoPriceAtTime)
    );
    assert_eq!(
        core.feed(&c, &typo),
        Outcome::Rejected(RejectReason::UnknownUnit)
    );
    let ok = call("m3", "2026-03-01T10:00:01Z", "output_tokens");
    core.feed(&c, &ok);
    let fin = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:05Z","account_id":"acct-c","execution_id":"x"}"#;
    assert_eq!(core.feed(&c, fin), Outcome::Finished);
    // The producer corrects both with the same event_ids: each billed once, as a late call.
    let early_fixed = early.replace("2023-06-01", "2026-03-01");
    let typo_fixed = typo.replace("input_token\"", "input_tokens\"");
    for e in [&early_fixed, &typo_fixed, &early_fixed, &typo_fixed] {
        core.feed(&c, e);
    }
    assert_eq!(
        core.debits(),
        [
            // 1M output tokens at 0.6 per M, + 20 %.
            (DebitKind::AgentExecution, "acct-c".into(), d("0.72")),
            // 1M input tokens at 0.15 per M, + 20 %, twice (two event ids), once each.
            (
                DebitKind::AgentExecutionAdjustment,
                "acct-c".into(),
                d("0.18")
            ),
            (
                DebitKind::AgentExecutionAdjustment,
                "acct-c".into(),
                d("0.18")
            ),
        ]
    );
}

/// A restart between the rejection and the replay: the duplicate memory is rebuilt from the
/// log window and the snapshot's refused offsets, and decides as an uninterrupted run.
#[test]
fn a_restart_remembers_what_was_refused() {
    let (old, new) = (shipped(), with_new_search());
    let conflict = r#"{"type":"tool_call","event_id":"d1","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-r","asset_id":"tavily/web-search","quantities":{"requests":1}}"#;
    let conflict2 = conflict.replace("\"requests\":1", "\"requests\":5");
    let before = [NEW_SEARCH, conflict, &conflict2];
    let after = [NEW_SEARCH, NEW_SEARCH, &conflict2, conflict];
    let mut whole = Core::new();
    for e in before {
        whole.feed(&old, e);
    }
    let snap = PartitionSnapshot::from_bytes(&whole.rollup.snapshot().to_bytes().unwrap()).unwrap();
    let mut restored = Core {
        rollup: PartitionRollup::restore(RollupConfig::default(), 0, snap, 0),
        offset: whole.offset,
        out: Vec::new(),
    };
    for (o, e) in before.iter().enumerate() {
        restored.rollup.remember(o as i64, e.as_bytes());
    }
    let mark = whole.out.len();
    let outcomes_whole: Vec<Outcome> = after.iter().map(|e| whole.feed(&new, e)).collect();
    let outcomes_restored: Vec<Outcome> = after.iter().map(|e| restored.feed(&new, e)).collect();
    assert_eq!(
        outcomes_whole,
        [
            Outcome::Priced(AssetType::Tool),
            Outcome::Duplicate,
            Outcome::Rejected(RejectReason::ConflictingDuplicate),
            Outcome::Duplicate,
        ]
    );
    assert_eq!(outcomes_restored, outcomes_whole);
    assert_eq!(restored.out, whole.out[mark..]);
}

#[test]
fn the_same_event_id_in_two_accounts_is_billed_to_each() {
    let c = shipped();
    let mut core = Core::new();
    let a = r#"{"type":"model_call","event_id":"req-1","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-a","asset_id":"openai/gpt-4o-mini","quantities":{"input_tokens":1000}}"#;
    let b = r#"{"type":"model_call","event_id":"req-1","occurred_at":"2026-03-01T10:00:01Z","account_id":"acct-b","asset_id":"openai/gpt-4o-mini","quantities":{"input_tokens":2000}}"#;
    assert_eq!(core.feed(&c, a), Outcome::Priced(AssetType::Model));
    assert_eq!(core.feed(&c, b), Outcome::Priced(AssetType::Model));
    // Each account's retry is still a duplicate.
    assert_eq!(core.feed(&c, b), Outcome::Duplicate);
    assert_eq!(core.feed(&c, a), Outcome::Duplicate);
    assert_eq!(
        core.debits(),
        [
            (DebitKind::ModelCall, "acct-a".into(), d("0.00015")),
            (DebitKind::ModelCall, "acct-b".into(), d("0.0003")),
        ]
    );
    let ids: Vec<&str> = core
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Debit(d) => Some(d.debit_id.as_str()),
            _ => None,
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn a_producer_cannot_close_an_execution_early() {
    let c = shipped();
    let mut core = Core::new();
    let call = |id: &str| {
        format!(
            r#"{{"type":"tool_call","event_id":"{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-f","execution_id":"exec-f","asset_id":"tavily/web-search","quantities":{{"requests":1}}}}"#
        )
    };
    core.feed(&c, &call("c1"));
    let forged = r#"{"type":"execution_timeout","event_id":"timeout:0:1","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct-f","execution_id":"exec-f","after_offset":0}"#;
    assert_eq!(
        core.feed(&c, forged),
        Outcome::Rejected(RejectReason::UnknownEventType)
    );
    core.feed(&c, &call("c2"));
    let fin = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:05Z","account_id":"acct-f","execution_id":"exec-f"}"#;
    core.feed(&c, fin);
    // One execution of two calls (0.016 + 20 %), no adjustment.
    assert_eq!(
        core.debits(),
        [(DebitKind::AgentExecution, "acct-f".into(), d("0.0192"))]
    );
}

// ---- the live pipeline and `rate` agree whichever partitions the events land on ----

#[derive(Debug, Clone)]
enum GenEvent {
    Call {
        account: u8,
        exec: Option<u8>,
        id: u8,
        qty: u8,
    },
    Finish {
        account: u8,
        exec: u8,
        id: u8,
    },
    /// Repeats an earlier event verbatim (a producer retry).
    Retry(usize),
}

fn render(events: &[GenEvent]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in events {
        let (key, payload) = match *e {
            GenEvent::Call {
                account,
                exec,
                id,
                qty,
            } => {
                let exec_json = exec.map_or("null".into(), |x| format!("\"x{x}\""));
                (
                    exec.map_or(format!("a{account}"), |x| format!("x{x}")),
                    format!(
                        r#"{{"type":"tool_call","event_id":"e{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"a{account}","execution_id":{exec_json},"asset_id":"tavily/web-search","quantities":{{"requests":{qty}}}}}"#
                    ),
                )
            }
            GenEvent::Finish { account, exec, id } => (
                format!("x{exec}"),
                format!(
                    r#"{{"type":"execution_finished","event_id":"f{id}","occurred_at":"2026-03-01T10:05:00Z","account_id":"a{account}","execution_id":"x{exec}"}}"#
                ),
            ),
            GenEvent::Retry(i) => match out.get(i % out.len().max(1)) {
                Some(prev) => prev.clone(),
                None => continue,
            },
        };
        out.push((key, payload));
    }
    out
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    prop_oneof![
        6 => (0u8..3, proptest::option::of(0u8..3), 0u8..6, 1u8..3)
            .prop_map(|(account, exec, id, qty)| GenEvent::Call { account, exec, id, qty }),
        2 => (0u8..3, 0u8..3, 0u8..3).prop_map(|(account, exec, id)| GenEvent::Finish { account, exec, id }),
        2 => any::<usize>().prop_map(GenEvent::Retry),
    ]
}

/// Debits (bytes) and rejections (reason and message) of a log split into `n` partitions by
/// a hash of the Kafka key, each processed by its own rollup, sorted.
fn outcome(log: &[(String, String)], n: u64, salt: u64) -> (Vec<Vec<u8>>, Vec<String>) {
    let catalog = shipped();
    let mut parts: BTreeMap<u64, Core> = BTreeMap::new();
    for (key, payload) in log {
        let p = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), salt) % n;
        parts
            .entry(p)
            .or_insert_with(Core::new)
            .feed(&catalog, payload);
    }
    let (mut debits, mut rejected) = (Vec::new(), Vec::new());
    for core in parts.values_mut() {
        core.rollup.close_all(&NO_PLANS, &mut core.out);
        for o in &core.out {
            match o {
                Output::Debit(d) => debits.push(d.encode()),
                Output::Rejected(r) => rejected.push(format!("{}: {}", r.reason, r.message)),
                Output::Line(_) => {}
            }
        }
    }
    debits.sort();
    rejected.sort();
    (debits, rejected)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Accounts, executions and event ids collide on purpose (3 accounts, 3 execution ids,
    /// 6 event ids): one partition (`rate`) and any split by Kafka key give the same debits,
    /// byte for byte, and the same rejections.
    #[test]
    fn partitioning_never_changes_the_bill(
        events in proptest::collection::vec(gen_event(), 1..80),
        n in 2u64..6,
        salt in any::<u64>(),
    ) {
        let log = render(&events);
        let single = outcome(&log, 1, 0);
        prop_assert_eq!(outcome(&log, n, salt), single);
    }
}
