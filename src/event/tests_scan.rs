//! The fast splitter ([`super::scan`]) against the serde path: for every payload, decoding
//! with the fast path enabled must give exactly the event or the rejection (reason and
//! message) that the serde path alone gives. The generator's payloads are checked the same way
//! in `crate::loadgen::tests_scan` (the generator sits above the event module).

use proptest::prelude::*;

use super::scan::SERDE_ONLY;
use super::*;

pub(crate) fn both(payload: &[u8], origin: Origin) -> (Result<UsageEvent, Rejection>, bool) {
    let fast = decode_from(payload, DEFAULT_MAX_EVENT_BYTES, origin);
    SERDE_ONLY.with(|f| f.set(true));
    let slow = decode_from(payload, DEFAULT_MAX_EVENT_BYTES, origin);
    SERDE_ONLY.with(|f| f.set(false));
    let took_fast = fast_fields(payload).is_some();
    assert_eq!(
        fast,
        slow,
        "fast and serde paths differ on {}",
        String::from_utf8_lossy(payload)
    );
    (fast, took_fast)
}

/// A JSON value of one of the shapes the splitter takes or declines.
fn value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        // strings: plain, non-ASCII, escaped, with raw control characters, empty, long
        "[a-zA-Z0-9:/._-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("\"é ü\"".to_string()),
        Just("\"a\\\"b\"".to_string()),
        Just("\"\\u0041\"".to_string()),
        Just("\"a\tb\"".to_string()),
        Just("\"\u{85}\"".to_string()),
        Just("\"\"".to_string()),
        Just(format!("\"{}\"", "x".repeat(300))),
        // timestamps, valid and not
        Just("\"2026-03-01T10:00:00Z\"".to_string()),
        Just("\"2026-03-01T10:00:00.123+02:00\"".to_string()),
        Just("\"2026-03-01\"".to_string()),
        // numbers, JSON and not
        "-?(0|[1-9][0-9]{0,17})(\\.[0-9]{1,14})?([eE][+-]?[0-9]{1,3})?",
        Just("01".to_string()),
        Just("1.".to_string()),
        Just(".5".to_string()),
        Just("+1".to_string()),
        Just("1e".to_string()),
        Just("-".to_string()),
        Just("\"12.50\"".to_string()),
        Just("\"1e3\"".to_string()),
        // literals and arrays
        Just("null".to_string()),
        Just("nul".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("[1]".to_string()),
        Just("[]".to_string()),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        4 => leaf,
        1 => prop::collection::vec((key(), value(depth - 1)), 0..4).prop_map(|m| object(&m, ", ")),
    ]
    .boxed()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "type", "event_id", "occurred_at", "account_id", "asset_id", "execution_id",
            "agent_id", "component", "quantities", "expected_calls", "after_offset",
            "dimensions", "input_tokens", "output_tokens", "requests", "team", "env",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z_]{0,8}",
        1 => Just("ty\\u0070e".to_string()),
        1 => Just("é".to_string()),
    ]
}

fn object(members: &[(String, String)], sep: &str) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(sep))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn generated_objects_agree(
        members in prop::collection::vec((key(), value(2)), 0..14),
        ws in prop::sample::select(vec![",", ", ", " ,\n", ",\t"]),
        lead in prop::sample::select(vec!["", " ", "\n\t"]),
        trail in prop::sample::select(vec!["", " ", "\r\n", " x", "}"]),
        aggregator in any::<bool>(),
    ) {
        let payload = format!("{lead}{}{trail}", object(&members, ws));
        let origin = if aggregator { Origin::Aggregator } else { Origin::Producer };
        let _ = both(payload.as_bytes(), origin);
    }

    #[test]
    fn valid_events_with_changed_fields_agree(
        base in prop::sample::select(vec![
            r#"{"type":"model_call","event_id":"e1","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","asset_id":"openai/gpt-4o-mini","execution_id":"x","agent_id":"g","component":"planner","quantities":{"input_tokens":1200,"output_tokens":"350"}}"#,
            r#"{"type":"tool_call","event_id":"e2","occurred_at":"2026-03-01T10:00:00.5+01:00","account_id":"a","asset_id":"tool/web-search","quantities":{"requests":1},"dimensions":{"team":"x","env":"prod"}}"#,
            r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","expected_calls":3}"#,
            r#"{"type":"execution_timeout","event_id":"t","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","after_offset":12}"#,
        ]),
        changes in prop::collection::vec((key(), value(2), any::<bool>()), 1..3),
        aggregator in any::<bool>(),
    ) {
        let mut members: Vec<(String, String)> =
            Vec::new();
        scan::each_member(base, true, |k, v| {
            members.push((k.to_string(), v.to_string()));
            Some(())
        })
        .unwrap();
        for (k, v, remove) in changes {
            match members.iter().position(|(key, _)| *key == k) {
                Some(i) if remove => { members.remove(i); }
                Some(i) => members[i].1 = v,
                None => members.push((k, v)),
            }
        }
        let payload = object(&members, ",");
        let origin = if aggregator { Origin::Aggregator } else { Origin::Producer };
        let _ = both(payload.as_bytes(), origin);
    }
}
