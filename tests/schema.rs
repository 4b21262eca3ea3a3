//! The JSON Schemas (schema/usage-event.v1.json and v1.1) and the decoder agree on `occurred_at`: a
//! corpus of timestamps, each inside an otherwise valid event, is accepted by both or
//! refused by both (the decoder with `invalid_timestamp`). The one rule the schema cannot
//! state (the UTC range of an instant written with an offset) is listed as a known
//! difference, and pinned: schema accepts, decoder refuses.

use serde_json::{Value, json};
use usage_aggregator::event::{DEFAULT_MAX_EVENT_BYTES, decode};
use usage_aggregator::rejection::RejectReason;

/// The current contract's schema (v1.1: v1 plus optional dimensions).
fn schema() -> Value {
    load("usage-event.v1.1.json")
}

fn load(name: &str) -> Value {
    let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn event(ts: &Value) -> Value {
    json!({"type":"tool_call","event_id":"ts-1","occurred_at":ts,"account_id":"acct-ts",
           "asset_id":"tavily/web-search","quantities":{"requests":1}})
}

/// Hand-picked timestamps: the issue's five, their kin, and the edges of every rule.
const CORPUS: &[&str] = &[
    // issue 14
    "2026-03-15T10:00:00.1234567891Z",
    "2026-03-15 10:00:00Z",
    "2026-03-15t10:00:00z",
    "2026-03-15T10:17:60Z",
    "2026-06-30T23:59:60Z",
    // accepted forms
    "2026-03-01T10:00:00Z",
    "2026-03-01T11:00:00.250+01:00",
    "2026-03-15T10:00:00.1Z",
    "2026-03-15T10:00:00.123456789Z",
    "2026-03-15T10:00:00.000000000Z",
    "2026-03-15T10:00:00-00:00",
    "2026-03-15T10:00:00+00:00",
    "2026-03-15T10:00:00+23:59",
    "2026-03-15T10:00:00-23:59",
    "2026-03-15T23:59:59Z",
    "2026-03-15T00:00:00Z",
    "2000-01-01T00:00:00Z",
    "2099-12-31T23:59:59.999999999Z",
    "2024-02-29T12:00:00Z",
    "2000-02-29T12:00:00Z",
    "2096-02-29T12:00:00Z",
    // calendar
    "2026-02-29T12:00:00Z",
    "2026-02-30T10:00:00Z",
    "2026-02-31T10:00:00Z",
    "2026-04-31T10:00:00Z",
    "2026-06-31T10:00:00Z",
    "2026-09-31T10:00:00Z",
    "2026-11-31T10:00:00Z",
    "2026-13-01T10:00:00Z",
    "2026-00-01T10:00:00Z",
    "2026-01-00T10:00:00Z",
    "2026-01-32T10:00:00Z",
    "2100-02-29T10:00:00Z",
    "2097-02-29T10:00:00Z",
    // year range
    "1999-12-31T23:59:59Z",
    "2100-01-01T00:00:00Z",
    "1999-12-31T23:30:00-01:00",
    "10000-01-01T00:00:00Z",
    "0026-03-15T10:00:00Z",
    "+2026-03-15T10:00:00Z",
    // time
    "2026-03-15T24:00:00Z",
    "2026-03-15T25:00:00Z",
    "2026-03-15T10:60:00Z",
    "2026-03-15T10:00:61Z",
    "2026-03-15T10:00Z",
    "2026-03-15T10:00:00",
    "2026-03-15T1:00:00Z",
    "2026-03-15T10:00:00.Z",
    "2026-03-15T10:00:00.12345678901Z",
    "2026-03-15T10:00:00,5Z",
    // separator and case
    "2026-03-15T10:00:00z",
    "2026-03-15t10:00:00Z",
    "2026-03-15_10:00:00Z",
    "2026-03-15TT10:00:00Z",
    // offsets
    "2026-03-15T10:00:00+24:00",
    "2026-03-15T10:00:00-24:00",
    "2026-03-15T10:00:00+01:60",
    "2026-03-15T10:00:00+0100",
    "2026-03-15T10:00:00+01",
    "2026-03-15T10:00:00+1:00",
    "2026-03-15T10:00:00 +01:00",
    "2026-03-15T10:00:00Z+01:00",
    "2026-03-15T10:00:00UTC",
    "2026-03-15T10:00:00GMT",
    // surroundings
    " 2026-03-15T10:00:00Z",
    "2026-03-15T10:00:00Z ",
    "2026-03-15T10:00:00Z\n",
    "\n2026-03-15T10:00:00Z",
    "",
    "2026-03-15",
    "10:00:00Z",
    "yesterday",
    "2026-03-15T10:00:00.5Zgarbage",
    // non-ASCII digits and look-alikes
    "２０２６-03-15T10:00:00Z",
    "2026-03-15T10:00:00.١Z",
    "2026‐03‐15T10:00:00Z",
    "2026-03-15T10:00:00−01:00",
];

/// Accepted by the schema, refused by the decoder: the instant leaves [2000, 2100) UTC
/// once the offset is applied. A regular expression cannot compare the time with the
/// offset; docs/event-contract.md states the rule.
const DECODER_STRICTER: &[&str] = &[
    "2000-01-01T00:30:00+01:00",
    "2000-01-01T00:00:00+00:01",
    "2099-12-31T23:30:00-01:00",
    "2099-12-31T23:59:59.5-00:01",
];

/// Every combination of a few values per component, around each rule's edges.
fn generated() -> Vec<String> {
    let mut out = Vec::new();
    for year in ["1999", "2000", "2023", "2024", "2099", "2100"] {
        for month in ["00", "01", "02", "04", "12", "13"] {
            for day in ["00", "01", "28", "29", "30", "31", "32"] {
                out.push(format!("{year}-{month}-{day}T12:00:00Z"));
            }
        }
    }
    for h in ["00", "23", "24"] {
        for m in ["00", "59", "60"] {
            for s in ["00", "59", "60"] {
                out.push(format!("2026-05-10T{h}:{m}:{s}Z"));
            }
        }
    }
    for n in 0..=11 {
        out.push(format!("2026-05-10T12:00:00.{}Z", "7".repeat(n)));
    }
    for sign in ["+", "-"] {
        for h in ["00", "05", "23", "24", "99"] {
            for m in ["00", "30", "59", "60"] {
                out.push(format!("2026-05-10T12:00:00{sign}{h}:{m}"));
            }
        }
    }
    out
}

fn decoder_accepts(ts: &Value) -> bool {
    let bytes = serde_json::to_vec(&event(ts)).unwrap();
    match decode(&bytes, DEFAULT_MAX_EVENT_BYTES) {
        Ok(_) => true,
        Err(r) => {
            assert_eq!(
                r.reason,
                RejectReason::InvalidTimestamp,
                "{ts}: {}",
                r.message
            );
            false
        }
    }
}

fn check(validator: &jsonschema::Validator, mode: &str) -> (usize, usize) {
    let mut values: Vec<Value> = CORPUS.iter().map(|s| json!(s)).collect();
    values.extend(generated().into_iter().map(Value::String));
    values.extend([
        json!(1772359200),
        json!(true),
        json!(["2026-03-15T10:00:00Z"]),
    ]);
    let (mut accepted, mut disagreements) = (0, Vec::new());
    for ts in &values {
        let schema_ok = validator.is_valid(&event(ts));
        let decoder_ok = decoder_accepts(ts);
        accepted += usize::from(decoder_ok);
        if schema_ok != decoder_ok {
            disagreements.push(format!("{ts}: schema {schema_ok}, decoder {decoder_ok}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{mode}: schema and decoder disagree on {} timestamps:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    for ts in DECODER_STRICTER {
        let v = json!(ts);
        assert!(
            validator.is_valid(&event(&v)),
            "{mode}: schema refuses {ts}"
        );
        assert!(!decoder_accepts(&v), "decoder accepts {ts}");
    }
    (values.len(), accepted)
}

#[test]
fn schema_and_decoder_accept_the_same_timestamps() {
    for name in ["usage-event.v1.json", "usage-event.v1.1.json"] {
        timestamps_agree(&load(name));
    }
}

fn timestamps_agree(schema: &Value) {
    let (n, accepted) = check(&jsonschema::validator_for(schema).unwrap(), "pattern");
    assert!(
        n > 400 && accepted > 100 && n - accepted > 250,
        "{n} {accepted}"
    );
    // A validator that also asserts `format: date-time` gives the same answers: the
    // pattern is at least as strict as the format.
    let with_formats = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap();
    check(&with_formats, "pattern and format");
}

#[test]
fn the_contract_examples_are_valid_and_the_marker_is_not_a_producer_event() {
    let v = jsonschema::validator_for(&schema()).unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/event-contract.md"
    ))
    .unwrap();
    let mut examples = 0;
    for block in doc.split("```json\n").skip(1) {
        let text = block.split("\n```").next().unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        if value.get("reason").is_some() {
            continue; // the dead-letter example
        }
        assert!(v.is_valid(&value), "schema refuses {text}");
        assert!(
            decode(text.as_bytes(), DEFAULT_MAX_EVENT_BYTES).is_ok(),
            "decoder refuses {text}"
        );
        examples += 1;
    }
    assert!(examples >= 5);
    let marker = json!({"type":"execution_timeout","event_id":"timeout:1:2","occurred_at":"2026-03-01T10:00:00Z",
        "account_id":"a","execution_id":"x","after_offset":1});
    assert!(!v.is_valid(&marker));
    let r = decode(marker.to_string().as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap_err();
    assert_eq!(r.reason, RejectReason::UnknownEventType);
}
