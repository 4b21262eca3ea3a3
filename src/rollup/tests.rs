//! Rollup rules, one example each (the property tests against an oracle: tests_props.rs).

use std::str::FromStr;

use rust_decimal::Decimal;

use super::*;
use crate::catalog::Catalog;
use crate::plans::NO_PLANS;

const CATALOG: &str = r#"[
  {"asset_id":"llm","asset_type":"model","vendor":"openai","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"0.5","per":1000},"output_tokens":{"credits":"1.5","per":1000}}},
  {"asset_id":"search","asset_type":"tool","vendor":"tavily","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"requests":{"credits":"0.1","per":1}}},
  {"asset_id":"db","asset_type":"tool","vendor":"platform","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"queries":{"credits":"0.2","per":1}}},
  {"asset_id":"audio","asset_type":"model","vendor":"openai","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"audio_minutes":{"credits":"0.006","per":1}}}
]"#;

fn catalog() -> Catalog {
    Catalog::from_json(CATALOG.as_bytes()).unwrap()
}

pub(super) fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub(super) fn call(id: &str, exec: Option<&str>, account: &str, asset: &str, q: &str) -> String {
    let exec = exec.map_or("null".to_string(), |e| format!("\"{e}\""));
    let kind = if asset == "llm" || asset == "audio" {
        "model_call"
    } else {
        "tool_call"
    };
    format!(
        r#"{{"type":"{kind}","event_id":"{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"{account}","execution_id":{exec},"asset_id":"{asset}","quantities":{q}}}"#
    )
}

pub(super) fn finish(id: &str, exec: &str, account: &str, expected: Option<u32>) -> String {
    let exp = expected.map_or(String::new(), |n| format!(",\"expected_calls\":{n}"));
    format!(
        r#"{{"type":"execution_finished","event_id":"{id}","occurred_at":"2026-03-01T10:05:00Z","account_id":"{account}","execution_id":"{exec}"{exp}}}"#
    )
}

pub(super) struct Run {
    pub(super) rollup: PartitionRollup,
    pub(super) catalog: Catalog,
    offset: i64,
    pub(super) out: Vec<Output>,
}

impl Run {
    pub(super) fn new(cfg: RollupConfig) -> Self {
        Run {
            rollup: PartitionRollup::new(cfg, 0),
            catalog: catalog(),
            offset: 0,
            out: vec![],
        }
    }
    pub(super) fn feed(&mut self, payload: &str) -> Outcome {
        self.feed_from(Origin::Producer, payload)
    }
    fn feed_from(&mut self, origin: Origin, payload: &str) -> Outcome {
        let o = self.rollup.process_from(
            origin,
            self.offset,
            payload.as_bytes(),
            &self.catalog,
            0,
            &mut self.out,
        );
        self.offset += 1;
        o
    }
    pub(super) fn debits(&self) -> Vec<&Debit> {
        self.out
            .iter()
            .filter_map(|o| {
                if let Output::Debit(d) = o {
                    Some(d)
                } else {
                    None
                }
            })
            .collect()
    }
    pub(super) fn rejections(&self) -> Vec<RejectReason> {
        self.out
            .iter()
            .filter_map(|o| {
                if let Output::Rejected(r) = o {
                    Some(r.reason)
                } else {
                    None
                }
            })
            .collect()
    }
}

#[test]
fn worked_example_llm_search_database() {
    let mut r = Run::new(RollupConfig::default());
    // 1000 input tokens at 0.5 per 1000 = 0.5; one search 0.1; one query 0.2.
    r.feed(&call(
        "c1",
        Some("x"),
        "acct",
        "llm",
        r#"{"input_tokens":1000}"#,
    ));
    r.feed(&call(
        "c2",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    r.feed(&call("c3", Some("x"), "acct", "db", r#"{"queries":1}"#));
    assert!(
        r.debits().is_empty(),
        "nothing is billed before the execution finishes"
    );
    assert_eq!(r.feed(&finish("f", "x", "acct", None)), Outcome::Finished);
    let debits = r.debits();
    assert_eq!(debits.len(), 1);
    let x = debits[0];
    assert_eq!(x.kind, DebitKind::AgentExecution);
    assert_eq!(x.subtotal.to_string(), "0.8");
    assert_eq!(x.markup_rate.to_string(), "0.2");
    assert_eq!(x.markup.to_string(), "0.16");
    assert_eq!(x.total.to_string(), "0.96");
    assert_eq!(x.calls, 3);
    let costs: Vec<String> = x
        .breakdown
        .iter()
        .map(|b| format!("{}={}", b.asset_id, b.cost))
        .collect();
    assert_eq!(costs, ["db=0.2", "llm=0.5", "search=0.1"]);
    let json = String::from_utf8(x.encode()).unwrap();
    assert!(json.contains("\"total\":\"0.96\""), "{json}");
}

#[test]
fn open_execution_lists_its_priced_calls_up_to_the_bound() {
    let mut r = Run::new(RollupConfig {
        max_trace_calls: 2,
        ..RollupConfig::default()
    });
    r.feed(&call(
        "c1",
        Some("x"),
        "acct",
        "llm",
        r#"{"input_tokens":1000}"#,
    ));
    // A rejected call is neither priced nor listed.
    r.feed(&call("c2", Some("x"), "acct", "llm", r#"{"gallons":1}"#));
    r.feed(&call(
        "c3",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    r.feed(&call("c4", Some("x"), "acct", "db", r#"{"queries":1}"#));
    assert!(
        r.rollup.open_execution("other", "x", &NO_PLANS).is_none(),
        "scoped by account"
    );
    let v = r.rollup.open_execution("acct", "x", &NO_PLANS).unwrap();
    assert_eq!(v.running.subtotal.to_string(), "0.8");
    assert_eq!(v.running.total.to_string(), "0.96");
    assert_eq!(v.running.calls, 3);
    assert_eq!(
        v.calls_omitted, 1,
        "the third priced call is beyond the bound"
    );
    let listed: Vec<String> = v
        .calls
        .iter()
        .map(|c| {
            format!(
                "{} {} {} {}",
                c.event_id, c.asset_id, c.cost, c.subtotal_after
            )
        })
        .collect();
    assert_eq!(listed, ["c1 llm 0.5 0.5", "c3 search 0.1 0.6"]);
    let u = &v.calls[0].units[0];
    assert_eq!(
        (u.unit.as_str(), u.quantity, u.credits, u.per),
        ("input_tokens", d("1000"), d("0.5"), 1000)
    );
    assert_eq!(v.calls[0].asset_type, crate::catalog::AssetType::Model);
    assert!(!v.calls[0].price_version.is_empty());
    // Closed: no longer open; its debit carries the same totals.
    r.feed(&finish("f", "x", "acct", None));
    assert!(r.rollup.open_execution("acct", "x", &NO_PLANS).is_none());
    assert_eq!(r.debits()[0].total, v.running.total);
}

#[test]
fn direct_calls_are_billed_at_vendor_price_at_once() {
    let mut r = Run::new(RollupConfig::default());
    assert_eq!(
        r.feed(&call("c1", None, "acct", "search", r#"{"requests":3}"#)),
        Outcome::Priced(AssetType::Tool)
    );
    let d0 = r.debits()[0].clone();
    assert_eq!(d0.kind, DebitKind::ToolCall);
    assert_eq!(d0.total, d("0.3"));
    assert!(d0.markup.is_zero());
    r.feed(&call(
        "c2",
        None,
        "acct",
        "audio",
        r#"{"audio_minutes":"1.5"}"#,
    ));
    assert_eq!(r.debits()[1].kind, DebitKind::ModelCall);
    assert_eq!(r.debits()[1].total, d("0.009"));
}

#[test]
fn expected_calls_hold_the_close_until_all_calls_arrived() {
    let mut r = Run::new(RollupConfig::default());
    r.feed(&call(
        "c1",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    r.feed(&finish("f", "x", "acct", Some(2)));
    assert!(r.debits().is_empty());
    r.feed(&call(
        "c2",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    assert_eq!(r.debits().len(), 1);
    assert_eq!(r.debits()[0].total, d("0.24"));
}

/// Issue 23: a finish that arrives before its calls waits for `expected_calls`; the debit
/// is the one the usual order gives (same id, times and total), also when the finish is
/// re-sent and across a snapshot taken while it waits.
#[test]
fn a_finish_before_its_calls_waits_for_them() {
    let calls = [
        call("c1", Some("x"), "acct", "search", r#"{"requests":1}"#),
        call("c2", Some("x"), "acct", "db", r#"{"queries":1}"#),
    ];
    let fin = finish("f", "x", "acct", Some(2));
    let mut usual = Run::new(RollupConfig::default());
    for e in [&calls[0], &calls[1], &fin] {
        usual.feed(e);
    }
    let expected = usual.debits()[0].clone();
    assert_eq!(expected.total, d("0.36"));

    let mut early = Run::new(RollupConfig::default());
    assert_eq!(early.feed(&fin), Outcome::Finished);
    assert_eq!(early.feed(&fin), Outcome::Duplicate);
    assert_eq!(early.rollup.open_executions(), 1);
    // A restart while it waits: the snapshot carries the finished, waiting execution.
    let snap = PartitionSnapshot::from_bytes(&early.rollup.snapshot().to_bytes().unwrap());
    early.rollup = PartitionRollup::restore(RollupConfig::default(), 0, snap.unwrap(), 0);
    early.feed(&calls[0]);
    assert!(early.debits().is_empty(), "one call of two");
    early.feed(&calls[1]);
    assert_eq!(early.debits(), [&expected]);
    assert_eq!(
        early.feed(&fin),
        Outcome::Ignored,
        "re-sent after the close"
    );
}

/// Issue 23: when the calls never come, the idle rule closes the waiting execution with
/// nothing to bill, and a call after that is an adjustment.
#[test]
fn a_finish_whose_calls_never_come_closes_idle_with_nothing_billed() {
    let mut r = Run::new(RollupConfig::default());
    r.feed(&finish("f", "x", "acct", Some(1)));
    let idle = r.rollup.idle_executions(60_000, 1_000);
    assert_eq!(idle.len(), 1);
    let marker = crate::event::encode_timeout_marker("x", "acct", 0, chrono::Utc::now());
    assert_eq!(
        r.feed_from(Origin::Aggregator, std::str::from_utf8(&marker).unwrap()),
        Outcome::Marker
    );
    assert!(r.debits().is_empty());
    r.feed(&call("c1", Some("x"), "acct", "db", r#"{"queries":1}"#));
    assert_eq!(r.debits()[0].kind, DebitKind::AgentExecutionAdjustment);
}

#[test]
fn late_call_becomes_an_adjustment_with_markup() {
    let mut r = Run::new(RollupConfig::default());
    r.feed(&call(
        "c1",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    r.feed(&finish("f", "x", "acct", None));
    r.feed(&call("c2", Some("x"), "acct", "db", r#"{"queries":1}"#));
    let debits = r.debits();
    assert_eq!(debits.len(), 2);
    assert_eq!(debits[1].kind, DebitKind::AgentExecutionAdjustment);
    assert_eq!(debits[1].total, d("0.24"));
    assert_ne!(debits[0].debit_id, debits[1].debit_id);
    // A second finish of a closed execution changes nothing.
    assert_eq!(r.feed(&finish("f2", "x", "acct", None)), Outcome::Ignored);
}

#[test]
fn duplicates_are_dropped_and_conflicts_rejected() {
    let mut r = Run::new(RollupConfig::default());
    let c = call("c1", None, "acct", "search", r#"{"requests":1}"#);
    r.feed(&c);
    assert_eq!(r.feed(&c), Outcome::Duplicate);
    let conflicting = call("c1", None, "acct", "search", r#"{"requests":2}"#);
    assert_eq!(
        r.feed(&conflicting),
        Outcome::Rejected(RejectReason::ConflictingDuplicate)
    );
    assert_eq!(r.debits().len(), 1);
}

#[test]
fn an_execution_id_is_scoped_by_account() {
    // The same execution id in two accounts is two executions: each billed to its account.
    let mut r = Run::new(RollupConfig::default());
    r.feed(&call(
        "c1",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    r.feed(&call(
        "c2",
        Some("x"),
        "other",
        "search",
        r#"{"requests":2}"#,
    ));
    r.feed(&finish("f", "x", "acct", None));
    // A late call of acct's execution is an adjustment; other's execution is still open.
    r.feed(&call("c3", Some("x"), "acct", "db", r#"{"queries":1}"#));
    assert!(r.rejections().is_empty(), "{:?}", r.rejections());
    assert_eq!(r.rollup.open_executions(), 1);
    r.feed(&finish("f", "x", "other", None));
    let got: Vec<(DebitKind, &str, Decimal)> = r
        .debits()
        .iter()
        .map(|d| (d.kind, d.account_id.as_str(), d.total))
        .collect();
    assert_eq!(
        got,
        [
            (DebitKind::AgentExecution, "acct", d("0.12")),
            (DebitKind::AgentExecutionAdjustment, "acct", d("0.24")),
            (DebitKind::AgentExecution, "other", d("0.24")),
        ]
    );
}

#[test]
fn timeout_marker_closes_only_if_nothing_came_after_it() {
    let mut r = Run::new(RollupConfig::default());
    r.feed(&call(
        "c1",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    let stale = String::from_utf8(crate::event::encode_timeout_marker(
        "x",
        "acct",
        0,
        chrono::Utc::now(),
    ))
    .unwrap();
    r.feed(&call(
        "c2",
        Some("x"),
        "acct",
        "search",
        r#"{"requests":1}"#,
    ));
    assert_eq!(r.feed_from(Origin::Aggregator, &stale), Outcome::Ignored);
    let fresh = String::from_utf8(crate::event::encode_timeout_marker(
        "x",
        "acct",
        1,
        chrono::Utc::now(),
    ))
    .unwrap();
    // From a producer (not authenticated) the same bytes are refused and close nothing.
    assert_eq!(
        r.feed(&fresh),
        Outcome::Rejected(RejectReason::UnknownEventType)
    );
    assert!(r.debits().is_empty());
    assert_eq!(r.feed_from(Origin::Aggregator, &fresh), Outcome::Marker);
    assert_eq!(r.debits().len(), 1);
    assert_eq!(r.debits()[0].calls, 2);
}

#[test]
fn idle_executions_are_reported_once_per_last_offset() {
    let mut r = Run::new(RollupConfig::default());
    r.rollup.process(
        0,
        call("c1", Some("x"), "a", "db", r#"{"queries":1}"#).as_bytes(),
        &r.catalog,
        1_000,
        &mut r.out,
    );
    assert!(r.rollup.idle_executions(1_500, 1_000).is_empty());
    let idle = r.rollup.idle_executions(2_000, 1_000);
    assert_eq!(
        idle,
        [IdleExecution {
            execution_id: "x".into(),
            account_id: "a".into(),
            after_offset: 0
        }]
    );
    assert!(
        r.rollup.idle_executions(9_000, 1_000).is_empty(),
        "marker already requested"
    );
}

#[test]
fn open_execution_bound_closes_the_oldest() {
    let cfg = RollupConfig {
        max_open_executions: 2,
        ..Default::default()
    };
    let mut r = Run::new(cfg);
    for x in ["x1", "x2", "x3"] {
        r.feed(&call(
            &format!("c-{x}"),
            Some(x),
            "acct",
            "db",
            r#"{"queries":1}"#,
        ));
    }
    assert_eq!(r.rollup.open_executions(), 2);
    assert_eq!(r.debits().len(), 1);
    assert_eq!(r.debits()[0].execution_id.as_deref(), Some("x1"));
}

#[test]
fn snapshot_restore_continues_identically() {
    let events: Vec<String> = (0..60)
        .map(|i| match i % 6 {
            5 => finish(&format!("f{i}"), &format!("x{}", i / 12), "acct", None),
            _ => call(
                &format!("c{i}"),
                Some(&format!("x{}", i / 12)),
                "acct",
                "llm",
                r#"{"input_tokens":7,"output_tokens":3}"#,
            ),
        })
        .collect();
    let cfg = RollupConfig::default();
    let mut whole = Run::new(cfg.clone());
    for e in &events {
        whole.feed(e);
    }
    whole.rollup.close_all(&NO_PLANS, &mut whole.out);

    let mut first = Run::new(cfg.clone());
    for e in &events[..cut()] {
        first.feed(e);
    }
    let snap = first.rollup.snapshot();
    assert_eq!(
        snap.open_count(),
        1,
        "the cut falls inside an open execution"
    );
    let bytes = bincode::serialize(&snap).unwrap();
    let snap: PartitionSnapshot = bincode::deserialize(&bytes).unwrap();
    let mut second = Run {
        rollup: PartitionRollup::restore(cfg, 0, snap, 0),
        catalog: catalog(),
        offset: cut() as i64,
        out: vec![],
    };
    for (o, e) in events.iter().enumerate().take(cut()) {
        second.rollup.remember(o as i64, e.as_bytes());
    }
    for e in &events[cut()..] {
        second.feed(e);
    }
    second.rollup.close_all(&NO_PLANS, &mut second.out);
    let mut combined = first.out.clone();
    combined.extend(second.out);
    assert_eq!(combined, whole.out);
}

fn cut() -> usize {
    27
}
