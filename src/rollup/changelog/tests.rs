//! The changelog state against an uninterrupted run: whatever the commit points and the
//! restart point, a rollup restored from the compacted changelog continues with the same
//! outputs, byte for byte, and the changelog stays bounded by the state.

use std::collections::HashMap;

use proptest::prelude::*;

use super::super::*;
use super::MERGE_UP_TO;
use crate::catalog::Catalog;
use crate::plans::NO_PLANS;

const CATALOG: &str = r#"[
  {"asset_id":"llm","asset_type":"model","vendor":"openai","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"0.5","per":1000}}},
  {"asset_id":"search","asset_type":"tool","vendor":"tavily","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"requests":{"credits":"0.1","per":1}}}
]"#;

/// Small bounds, so that every memory fills, evicts and deletes chunks within a test.
fn rules() -> RollupConfig {
    RollupConfig {
        max_open_executions: 3,
        dedupe_horizon: 12,
        closed_horizon: 20,
        closed_capacity: 4,
        ..RollupConfig::default()
    }
}

/// A compacted topic: the last value of each key, tombstoned keys gone, first-write order.
#[derive(Default)]
struct Log {
    order: Vec<Vec<u8>>,
    values: HashMap<Vec<u8>, Vec<u8>>,
    records: usize,
}

impl Log {
    fn write(&mut self, k: &[u8], v: Option<&[u8]>) {
        self.records += 1;
        match v {
            Some(v) => {
                if self.values.insert(k.to_vec(), v.to_vec()).is_none() {
                    self.order.retain(|o| o != k);
                    self.order.push(k.to_vec());
                }
            }
            None => {
                self.values.remove(k);
            }
        }
    }
}

/// One generated event: (kind 0..6, execution 0..6, event id 0..10, quantity).
fn event(kind: u8, exec: u8, id: u8, qty: u8) -> String {
    let account = format!("a{}", exec % 2);
    match kind {
        0 | 1 => format!(
            r#"{{"type":"model_call","event_id":"e{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"{account}","execution_id":"x{exec}","asset_id":"llm","quantities":{{"input_tokens":{qty}}}}}"#
        ),
        2 => format!(
            r#"{{"type":"tool_call","event_id":"e{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"{account}","execution_id":null,"asset_id":"search","quantities":{{"requests":{}}}}}"#,
            qty % 3 + 1
        ),
        3 => format!(
            r#"{{"type":"execution_finished","event_id":"f{id}","occurred_at":"2026-03-01T10:05:00Z","account_id":"{account}","execution_id":"x{exec}","expected_calls":{}}}"#,
            qty % 3
        ),
        4 => format!(
            r#"{{"type":"execution_finished","event_id":"f{id}","occurred_at":"2026-03-01T10:05:00Z","account_id":"{account}","execution_id":"x{exec}"}}"#
        ),
        _ => format!(
            r#"{{"type":"model_call","event_id":"e{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"{account}","execution_id":"x{exec}","asset_id":"nope","quantities":{{"input_tokens":1}}}}"#
        ),
    }
}

fn feed(r: &mut PartitionRollup, c: &Catalog, offset: usize, e: &str, out: &mut Vec<Output>) {
    r.process(offset as i64, e.as_bytes(), c, 0, out);
}

fn restore(log: &Log, next_offset: i64) -> PartitionRollup {
    let mut r = PartitionRollup::new(rules(), 0);
    r.record_changes();
    for k in &log.order {
        if let Some(v) = log.values.get(k) {
            r.restore_record(k, Some(v)).unwrap();
        }
    }
    r.restored(next_offset, 0);
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn a_restore_from_the_changelog_continues_identically(
        events in proptest::collection::vec((0u8..6, 0u8..6, 0u8..10, 1u8..50), 1..120),
        commit_every in 1usize..9,
        cut in 0usize..120,
    ) {
        let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
        let events: Vec<String> =
            events.iter().map(|&(k, x, i, q)| event(k, x, i, q)).collect();
        let cut = cut.min(events.len());
        let mut whole = PartitionRollup::new(rules(), 0);
        let mut expected = Vec::new();
        for (o, e) in events.iter().enumerate() {
            feed(&mut whole, &c, o, e, &mut expected);
        }
        whole.close_all(&NO_PLANS, &mut expected);

        // Commits every `commit_every` events; the process dies after event `cut`, right
        // after a commit: a restart resumes from there.
        let mut first = PartitionRollup::new(rules(), 0);
        first.record_changes();
        let mut log = Log::default();
        let mut got = Vec::new();
        for (o, e) in events.iter().enumerate().take(cut) {
            feed(&mut first, &c, o, e, &mut got);
            if (o + 1) % commit_every == 0 || o + 1 == cut {
                first.write_changes(|k, v| log.write(k, v));
            }
        }
        let mut second = restore(&log, cut as i64);
        prop_assert_eq!(second.open_executions(), first.open_executions());
        for (o, e) in events.iter().enumerate().skip(cut) {
            feed(&mut second, &c, o, e, &mut got);
            second.write_changes(|k, v| log.write(k, v));
        }
        second.close_all(&NO_PLANS, &mut got);
        prop_assert_eq!(got, expected);
        // Bounded: open executions plus the live chunks of two bounded memories.
        prop_assert!(log.values.len() <= 3 + 2 * (12 + 4 + 2), "{} live keys", log.values.len());
    }
}

#[test]
fn a_commit_writes_what_changed_and_nothing_else() {
    let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    r.record_changes();
    let mut out = Vec::new();
    for x in 0..50 {
        feed(&mut r, &c, x as usize, &event(0, x, x, 5), &mut out);
    }
    let mut log = Log::default();
    r.write_changes(|k, v| log.write(k, v));
    // 50 open executions and one chunk of 50 remembered events.
    assert_eq!(log.records, 51);
    let before = log.records;
    feed(&mut r, &c, 50, &event(1, 7, 60, 5), &mut out);
    r.write_changes(|k, v| log.write(k, v));
    assert_eq!(log.records - before, 2, "one execution and one chunk");
    let before = log.records;
    feed(&mut r, &c, 51, &event(4, 7, 61, 0), &mut out);
    r.write_changes(|k, v| log.write(k, v));
    // The execution closed: its tombstone, one closed entry, one accepted finish.
    assert_eq!(log.records - before, 3);
    assert!(
        !log.values
            .contains_key(&[b"o".as_slice(), b"a1\0x7"].concat())
    );
    assert_eq!(restore_default(&log, 52).open_executions(), 49);
    // Nothing happened: nothing written.
    let before = log.records;
    r.write_changes(|k, v| log.write(k, v));
    assert_eq!(log.records, before);
}

fn restore_default(log: &Log, next: i64) -> PartitionRollup {
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    for k in &log.order {
        r.restore_record(k, log.values.get(k).map(Vec::as_slice))
            .unwrap();
    }
    r.restored(next, 0);
    r
}

#[test]
fn unknown_records_are_refused_with_their_key() {
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    let e = r.restore_record(b"zz", Some(b"1")).unwrap_err();
    assert!(e.contains("zz"), "{e}");
    let e = r.restore_record(b"oa\0x", Some(&[9, 1])).unwrap_err();
    assert!(e.contains("format 9"), "{e}");
}

#[test]
fn a_trickle_of_commits_fills_chunks_instead_of_one_each() {
    let c = Catalog::from_json(CATALOG.as_bytes()).unwrap();
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    r.record_changes();
    let mut log = Log::default();
    let mut out = Vec::new();
    // One direct call per commit: each is remembered by the duplicate memory.
    let n = 3 * MERGE_UP_TO + 10;
    for o in 0..n {
        let e = format!(
            r#"{{"type":"tool_call","event_id":"t{o}","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","asset_id":"search","quantities":{{"requests":1}}}}"#
        );
        feed(&mut r, &c, o, &e, &mut out);
        r.write_changes(|k, v| log.write(k, v));
    }
    let chunks = log.values.keys().filter(|k| k[0] == b'd').count();
    assert_eq!(chunks, 4, "{n} entries in chunks of up to {MERGE_UP_TO}");
    // The restored memory refuses a repeat of the first and of the last event alike.
    let mut again = restore_default(&log, n as i64);
    let mut out = Vec::new();
    for o in [0, n - 1] {
        let e = format!(
            r#"{{"type":"tool_call","event_id":"t{o}","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","asset_id":"search","quantities":{{"requests":1}}}}"#
        );
        feed(&mut again, &c, n + o, &e, &mut out);
    }
    assert!(
        !out.iter().any(|o| matches!(o, Output::Debit(_))),
        "{out:?}"
    );
}
