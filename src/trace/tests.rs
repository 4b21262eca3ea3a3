//! Traces: the worked example, open and closed, calls left out, and a property test over the
//! rollup's own outputs: every breakdown adds up to the total, the last running subtotal is
//! the subtotal, the total is what the debits charged.

use std::str::FromStr;

use proptest::prelude::*;

use super::*;
use crate::catalog::Catalog;
use crate::rollup::{Output, PartitionRollup, RollupConfig};

pub(crate) const CATALOG: &str = r#"[
  {"asset_id":"llm","asset_type":"model","vendor":"openai","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"input_tokens":{"credits":"0.5","per":1000},"output_tokens":{"credits":"1.5","per":1000}}},
  {"asset_id":"search","asset_type":"tool","vendor":"tavily","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"requests":{"credits":"0.1","per":1}}},
  {"asset_id":"db","asset_type":"tool","vendor":"platform","effective_from":"2024-01-01T00:00:00Z",
   "prices":{"queries":{"credits":"0.2","per":1}}},
  {"asset_id":"slack","asset_type":"integration","vendor":"slack","effective_from":"2024-01-01T00:00:00Z","prices":{}}
]"#;

pub(crate) fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A call event of execution `exec` (`None`: direct) with a `project` dimension.
pub(crate) fn call(id: &str, exec: Option<&str>, asset: &str, q: &str, project: &str) -> String {
    let exec = exec.map_or("null".to_string(), |e| format!("\"{e}\""));
    let kind = if asset == "llm" {
        "model_call"
    } else {
        "tool_call"
    };
    format!(
        r#"{{"type":"{kind}","event_id":"{id}","occurred_at":"2026-03-01T10:00:0{}.5Z","account_id":"acct","execution_id":{exec},"asset_id":"{asset}","quantities":{q},"dimensions":{{"project":"{project}"}}}}"#,
        id.len() % 10
    )
}

pub(crate) fn finish(exec: &str) -> String {
    format!(
        r#"{{"type":"execution_finished","event_id":"fin-{exec}","occurred_at":"2026-03-01T10:05:00Z","account_id":"acct","execution_id":"{exec}"}}"#
    )
}

/// The rollup's outputs for `events` (offsets 0, 1, ...): lines and debits, each with the
/// offset it would get in its topic (in emission order).
/// Lines and debits, each with its offset in its topic.
pub(crate) type Rated = (Vec<(i64, PricedLine)>, Vec<(i64, Debit)>);

pub(crate) fn rate(events: &[String]) -> Rated {
    let catalog = Catalog::from_json(CATALOG.as_bytes()).unwrap();
    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        r.process(i as i64, e.as_bytes(), &catalog, 0, &mut out);
    }
    let (mut lines, mut debits) = (Vec::new(), Vec::new());
    for o in out {
        match o {
            Output::Line(l) => lines.push((lines.len() as i64 * 3 + 5, l)),
            Output::Debit(x) => debits.push((debits.len() as i64 * 2 + 7, x)),
            Output::Rejected(r) => panic!("rejected: {r:?}"),
        }
    }
    (lines, debits)
}

fn worked_example() -> Vec<String> {
    vec![
        call("e1", Some("x"), "llm", r#"{"input_tokens":1000}"#, "apollo"),
        call("e2", Some("x"), "search", r#"{"requests":1}"#, "zeus"),
        call("e3", Some("x"), "db", r#"{"queries":1}"#, "apollo"),
        finish("x"),
    ]
}

fn trace_of(
    lines: &[PricedLine],
    debits: &[DebitSummary],
    omitted: Omitted,
    agg: Option<&[BreakdownLine]>,
) -> ExecutionTrace {
    build(&TraceInput {
        execution_id: "x",
        account_id: "acct",
        source: Source::Committed,
        lines,
        live_only: &[],
        debits,
        omitted,
        aggregate: agg,
        markup_rate: d("0.2"),
    })
    .unwrap()
}

fn assert_adds_up(t: &ExecutionTrace) {
    assert_eq!(t.subtotal + t.markup, t.total);
    let sum = |items: &[BreakdownItem]| items.iter().map(BreakdownItem::amount).sum::<Decimal>();
    assert_eq!(sum(&t.breakdown.by_asset), t.total, "by asset");
    assert_eq!(sum(&t.breakdown.by_component), t.total, "by component");
    for (k, items) in t.breakdown.by_dimension.iter().flatten() {
        assert_eq!(sum(items), t.total, "by dimension {k}");
    }
    for b in [&t.breakdown.by_asset, &t.breakdown.by_component] {
        assert!(
            matches!(b.last(), Some(BreakdownItem::Markup { .. })),
            "markup is the last line"
        );
    }
}

#[test]
fn the_worked_example_closed_and_open() {
    let (lines, debits) = rate(&worked_example());
    let lines: Vec<PricedLine> = lines.into_iter().map(|(_, l)| l).collect();
    let debits: Vec<DebitSummary> = debits.iter().map(|(_, d)| DebitSummary::of(d)).collect();
    let closed = trace_of(&lines, &debits, Omitted::default(), None);
    assert_eq!(closed.status, Status::Closed);
    assert_eq!(
        (closed.subtotal, closed.markup, closed.total),
        (d("0.8"), d("0.16"), d("0.96"))
    );
    assert_eq!(closed.billed, d("0.96"));
    let running: Vec<String> = closed
        .calls
        .iter()
        .map(|c| c.running_subtotal.to_string())
        .collect();
    assert_eq!(running, ["0.5", "0.6", "0.8"]);
    assert_eq!(closed.calls[2].seq, 3);
    assert_eq!(
        serde_json::to_value(&closed.breakdown.by_component).unwrap(),
        serde_json::json!([
            {"line": "component", "component": "models", "calls": 1, "amount": "0.5"},
            {"line": "component", "component": "tools", "calls": 2, "amount": "0.3"},
            {"line": "markup", "rate": "0.2", "amount": "0.16"},
        ])
    );
    let apollo = &closed.breakdown.by_dimension.as_ref().unwrap()["project"][0];
    assert_eq!(
        apollo,
        &BreakdownItem::Dimension {
            value: "apollo".into(),
            calls: 2,
            amount: d("0.7")
        }
    );
    assert_adds_up(&closed);

    let open = trace_of(&lines[..2], &[], Omitted::default(), None);
    assert_eq!(open.status, Status::Open);
    assert_eq!(
        (open.subtotal, open.markup, open.total, open.billed),
        (d("0.6"), d("0.12"), d("0.72"), d("0"))
    );
    assert_adds_up(&open);
    // The same keys either way: one shape.
    let keys = |t: &ExecutionTrace| {
        serde_json::to_value(t)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&open), keys(&closed));
}

#[test]
fn calls_left_out_are_said_and_totals_come_from_the_aggregate() {
    let (lines, debits) = rate(&worked_example());
    let lines: Vec<PricedLine> = lines.into_iter().map(|(_, l)| l).collect();
    let agg = &debits[0].1.breakdown;
    // The live state kept the last two calls of three.
    let omitted = Omitted {
        before: 1,
        after: 0,
        reason: Some("bound".into()),
    };
    let t = trace_of(&lines[1..], &[], omitted.clone(), Some(agg));
    assert_eq!(
        (t.calls_priced, t.calls_listed, t.calls_omitted.count()),
        (3, 2, 1)
    );
    assert_eq!(t.calls[0].seq, 2);
    assert_eq!(t.calls[0].running_subtotal, d("0.6"));
    assert_eq!(t.calls[1].running_subtotal, d("0.8"));
    assert_eq!(t.total, d("0.96"));
    assert!(
        t.breakdown.by_dimension.is_none(),
        "values of omitted calls are unknown"
    );
    assert_adds_up(&t);
    // ... or the first two.
    let omitted = Omitted {
        before: 0,
        after: 1,
        reason: Some("bound".into()),
    };
    let t = trace_of(&lines[..2], &[], omitted, Some(agg));
    assert_eq!(t.calls[1].running_subtotal, d("0.6"));
    assert_eq!(t.total, d("0.96"));
}

#[test]
fn duplicates_are_kept_once() {
    let (lines, _) = rate(&worked_example());
    let mut all: Vec<PricedLine> = lines.iter().map(|(_, l)| l.clone()).collect();
    all.push(all[0].clone());
    assert_eq!(dedupe_lines(all).len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the calls (and late calls after the close), the trace built from the
    /// rollup's lines and debits adds up, and its total is what the debits charged.
    #[test]
    fn traces_of_the_rollup_add_up_to_the_debits(
        calls in proptest::collection::vec((0usize..4, 1u32..5000, any::<bool>()), 1..30),
        late in 0usize..3,
    ) {
        let assets = [("llm", "input_tokens"), ("search", "requests"), ("db", "queries"), ("slack", "requests")];
        let mut events: Vec<String> = calls.iter().enumerate().map(|(i, (a, q, p))| {
            let (asset, unit) = assets[*a];
            call(&format!("c{i}"), Some("x"), asset, &format!("{{\"{unit}\":{q}}}"), if *p { "a" } else { "b" })
        }).collect();
        events.push(finish("x"));
        for i in 0..late {
            events.push(call(&format!("late{i}"), Some("x"), "db", r#"{"queries":3}"#, "a"));
        }
        let (lines, debits) = rate(&events);
        let lines: Vec<PricedLine> = lines.into_iter().map(|(_, l)| l).collect();
        let summaries: Vec<DebitSummary> = debits.iter().map(|(_, d)| DebitSummary::of(d)).collect();
        let t = trace_of(&lines, &summaries, Omitted::default(), None);
        assert_adds_up(&t);
        let charged: Decimal = debits.iter().map(|(_, d)| d.total).sum();
        prop_assert_eq!(t.total, charged.normalize());
        prop_assert_eq!(t.billed, charged.normalize());
        prop_assert_eq!(t.calls.last().unwrap().running_subtotal, t.subtotal);
        prop_assert_eq!(t.calls_priced as usize, calls.len() + late);
        prop_assert_eq!(t.debits.len(), 1 + late);
    }
}
