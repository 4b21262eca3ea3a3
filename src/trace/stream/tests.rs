//! Streams: debits after their calls whatever the read order, running totals, and resuming
//! from every event id gives no gap and no repeat.

use proptest::prelude::*;

use super::*;
use crate::trace::tests::{call, d, finish, rate};

fn execution() -> Filter {
    Filter::Execution {
        account_id: "acct".into(),
        execution_id: "x".into(),
    }
}

/// Feeds `order` (true: next line, false: next debit) and returns the events.
fn run(
    state: &mut StreamState,
    lines: &[(i64, PricedLine)],
    debits: &[(i64, Debit)],
    order: &[bool],
) -> Vec<StreamEvent> {
    let (mut li, mut di, mut out) = (0, 0, Vec::new());
    for &line in order {
        if line && li < lines.len() {
            state.line(lines[li].0, &lines[li].1, &mut out);
            li += 1;
        } else if di < debits.len() {
            state.debit(debits[di].0, &debits[di].1, &mut out);
            di += 1;
        }
    }
    for (o, l) in &lines[li..] {
        state.line(*o, l, &mut out);
    }
    for (o, x) in &debits[di..] {
        state.debit(*o, x, &mut out);
    }
    out
}

fn events() -> Vec<String> {
    vec![
        call("e1", Some("x"), "llm", r#"{"input_tokens":1000}"#, "a"),
        call("o1", Some("other"), "db", r#"{"queries":1}"#, "a"),
        call("e2", Some("x"), "search", r#"{"requests":1}"#, "a"),
        call("e3", Some("x"), "db", r#"{"queries":1}"#, "b"),
        finish("x"),
        finish("other"),
        call("late", Some("x"), "db", r#"{"queries":1}"#, "a"),
    ]
}

#[test]
fn a_debit_read_before_its_calls_waits_for_them() {
    let (lines, debits) = rate(&events());
    let mut s = StreamState::new(execution(), d("0.2"), StreamCursor::start(0));
    // Every debit first, then the lines.
    let out = run(&mut s, &lines, &debits, &[false, false, false]);
    let names: Vec<&str> = out.iter().map(StreamEvent::name).collect();
    assert_eq!(names, ["call", "call", "call", "debit", "call", "debit"]);
    let StreamEvent::Debit { running, debit, .. } = &out[3] else {
        panic!()
    };
    assert_eq!(debit.total, d("0.96"));
    assert_eq!((running.total, running.billed), (d("0.96"), d("0.96")));
    assert!(s.execution_billed());
    let StreamEvent::Call { running, call, .. } = &out[4] else {
        panic!()
    };
    assert_eq!(
        (call.seq, running.subtotal, running.total),
        (4, d("1"), d("1.2"))
    );
    // Ids only go forward.
    assert!(out.windows(2).all(|w| {
        let (a, b) = (w[0].id(), w[1].id());
        a.lines <= b.lines && a.debits <= b.debits
    }));
}

#[test]
fn cursors_round_trip_and_bad_ones_are_refused() {
    let c = StreamCursor {
        partition: 3,
        lines: 1200,
        debits: 0,
    };
    assert_eq!(c.to_string(), "3.1200.0");
    assert_eq!("3.1200.0".parse::<StreamCursor>().unwrap(), c);
    for bad in ["", "3.1", "3.1.2.4", "a.b.c", "-1.0.0", "3.1.x"] {
        assert!(bad.parse::<StreamCursor>().is_err(), "{bad}");
    }
}

#[test]
fn a_conversation_follows_its_calls_across_executions_and_direct_calls() {
    let mut ev = events();
    ev.push(call("direct", None, "search", r#"{"requests":2}"#, "a"));
    let (lines, debits) = rate(&ev);
    let filter = Filter::Conversation {
        account_id: "acct".into(),
        key: "project".into(),
        value: "a".into(),
    };
    let mut s = StreamState::new(filter, d("0.2"), StreamCursor::start(0));
    let mut out = run(&mut s, &lines, &debits, &[true; 20]);
    s.release(true, &mut out);
    let calls: Vec<String> = out
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Call { call, .. } => Some(call.event_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(calls, ["e1", "o1", "e2", "late", "direct"]);
    let billed: Vec<String> = out
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Debit { debit, .. } => Some(format!("{:?}", debit.kind)),
            _ => None,
        })
        .collect();
    assert_eq!(
        billed,
        [
            "AgentExecution",
            "AgentExecution",
            "AgentExecutionAdjustment",
            "ToolCall"
        ]
    );
    // Markup only on the calls of executions: 0.5 + 0.2 + 0.1 + 0.2 in executions, 0.2 direct.
    assert_eq!(
        (s.running().subtotal, s.running().markup),
        (d("1.2"), d("0.2"))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever order the two topics are read in, and wherever the client reconnects, the
    /// events before the reconnect plus those after it are the uninterrupted stream's: no
    /// call or debit missing or repeated, the same running totals.
    #[test]
    fn resuming_from_any_event_neither_misses_nor_repeats(
        order in proptest::collection::vec(any::<bool>(), 0..20),
        order2 in proptest::collection::vec(any::<bool>(), 0..20),
        cut in 0usize..20,
    ) {
        let (lines, debits) = rate(&events());
        let mut s = StreamState::new(execution(), d("0.2"), StreamCursor::start(0));
        let whole = run(&mut s, &lines, &debits, &order);
        prop_assert_eq!(whole.len(), 6);
        let cut = cut % whole.len();
        let before = &whole[..=cut];
        // A new instance replays the history (its own read order) after the last id seen.
        let mut r = StreamState::new(execution(), d("0.2"), before[cut].id());
        let after = run(&mut r, &lines, &debits, &order2);
        let key = |e: &StreamEvent| match e {
            StreamEvent::Call { call, running, .. } => format!("call {} {} {}", call.event_id, call.seq, running.total),
            StreamEvent::Debit { debit, running, .. } => format!("debit {} {}", debit.debit_id, running.billed),
        };
        let mut got: Vec<String> = before.iter().chain(&after).map(key).collect();
        let mut want: Vec<String> = whole.iter().map(key).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }
}

/// Skipping the lines without the needle, unparsed, gives the same events and cursor as
/// parsing every line: the needle is in every wanted line's encoding.
#[test]
fn lines_skipped_by_the_needle_change_nothing() {
    let (lines, debits) = rate(&events());
    let conversation = Filter::Conversation {
        account_id: "acct".into(),
        key: "project".into(),
        value: "a".into(),
    };
    for filter in [execution(), conversation] {
        let mut whole = StreamState::new(filter.clone(), d("0.2"), StreamCursor::start(0));
        let want = run(&mut whole, &lines, &debits, &[]);
        let mut s = StreamState::new(filter, d("0.2"), StreamCursor::start(0));
        let needle = s.line_needle();
        let finder = memchr::memmem::Finder::new(&needle);
        let mut got = Vec::new();
        let mut skipped = 0;
        for (o, l) in &lines {
            if finder.find(&l.encode()).is_none() {
                s.skip_line(*o);
                skipped += 1;
            } else {
                s.line(*o, l, &mut got);
            }
        }
        for (o, x) in &debits {
            s.debit(*o, x, &mut got);
        }
        assert!(skipped > 0, "the other execution's call is skipped");
        assert_eq!(got, want);
        assert_eq!(s.cursor(), whole.cursor());
    }
}
