use super::*;

fn ok(s: &str) -> UsageEvent {
    decode(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap()
}
fn err(s: &[u8]) -> Rejection {
    decode(s, DEFAULT_MAX_EVENT_BYTES).unwrap_err()
}

const CALL: &str = r#"{"type":"model_call","event_id":"e1","occurred_at":"2026-03-01T10:00:00+02:00","account_id":"acct","asset_id":"openai/gpt-4o-mini","execution_id":"x1","agent_id":"a","component":"planner","quantities":{"input_tokens":1200,"output_tokens":"350"}}"#;

#[test]
fn decodes_a_model_call() {
    let e = ok(CALL);
    assert_eq!(e.kind, EventKind::ModelCall);
    assert_eq!(e.occurred_at.to_rfc3339(), "2026-03-01T08:00:00+00:00");
    assert_eq!(e.execution_id.as_deref(), Some("x1"));
    assert_eq!(
        e.quantities[0],
        ("input_tokens".into(), Decimal::from(1200))
    );
    assert_eq!(
        e.quantities[1],
        ("output_tokens".into(), Decimal::from(350))
    );
}

#[test]
fn null_execution_means_direct_use() {
    let e = ok(
        r#"{"type":"tool_call","event_id":"e","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","asset_id":"t","execution_id":null,"quantities":{"audio_minutes":"1.5"}}"#,
    );
    assert_eq!(e.execution_id, None);
    assert_eq!(e.quantities[0].1, Decimal::new(15, 1));
}

#[test]
fn content_hash_ignores_key_order_and_number_spelling() {
    let a = ok(CALL);
    let b = ok(
        r#"{"quantities":{"output_tokens":350,"input_tokens":"1200.0"},"type":"model_call","event_id":"e1","occurred_at":"2026-03-01T08:00:00Z","account_id":"acct","asset_id":"openai/gpt-4o-mini","execution_id":"x1","agent_id":"a","component":"planner"}"#,
    );
    assert_eq!(a.content_hash(), b.content_hash());
    let c = ok(&CALL.replace("1200", "1201"));
    assert_ne!(a.content_hash(), c.content_hash());
}

#[test]
fn content_hash_bytes_are_stable() {
    // Pinned: the duplicate memory in running partitions and snapshots holds these hashes,
    // so adding or reordering what is hashed for existing fields must fail here.
    let dims = r#"{"type":"tool_call","event_id":"e2","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct","asset_id":"t","quantities":{"audio_minutes":"1.5"},"dimensions":{"team":"x","env":"prod"}}"#;
    let fin = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","expected_calls":3}"#;
    assert_eq!(ok(CALL).content_hash(), 0x0c5d_3951_e1d4_9a4a);
    assert_eq!(ok(dims).content_hash(), 0xc365_36ad_dbb1_89fc);
    assert_eq!(ok(fin).content_hash(), 0x0592_0878_61cc_4b98);
}

#[test]
fn reasons_name_field_and_value() {
    let cases: &[(&str, RejectReason, &str)] = &[
        ("{", RejectReason::InvalidJson, "invalid json"),
        ("[1]", RejectReason::InvalidJson, "json object"),
        (
            &CALL.replace("\"agent_id\"", "\"colour\":1,\"agent_id\""),
            RejectReason::UnknownField,
            "colour",
        ),
        (
            &CALL.replace(
                "\"account_id\":\"acct\",",
                "\"account_id\":\"acct\",\"account_id\":\"b\",",
            ),
            RejectReason::DuplicateKey,
            "account_id",
        ),
        (
            &CALL.replace("\"event_id\":\"e1\",", ""),
            RejectReason::MissingField,
            "event_id",
        ),
        (
            &CALL.replace("\"e1\"", "5"),
            RejectReason::InvalidField,
            "event_id must be a string, got 5",
        ),
        (
            &CALL.replace("model_call", "gpu_call"),
            RejectReason::UnknownEventType,
            "gpu_call",
        ),
        (
            &CALL.replace("2026-03-01T10:00:00+02:00", "2026-03-01T10:00:00"),
            RejectReason::InvalidTimestamp,
            "2026-03-01T10:00:00",
        ),
        (
            &CALL.replace("2026-03-01T10:00:00+02:00", "2100-01-01T00:00:00Z"),
            RejectReason::InvalidTimestamp,
            "2000 to 2099",
        ),
        (
            &CALL.replace("1200", "-3"),
            RejectReason::InvalidQuantity,
            "negative",
        ),
        (
            &CALL.replace("1200", "\"NaN\""),
            RejectReason::InvalidQuantity,
            "NaN",
        ),
        (
            &CALL.replace("1200", "1e400"),
            RejectReason::InvalidQuantity,
            "1e400",
        ),
        (
            &CALL.replace("1200", "1e16"),
            RejectReason::InvalidQuantity,
            "1e15",
        ),
        (
            &CALL.replace("1200", "true"),
            RejectReason::InvalidQuantity,
            "true",
        ),
        (
            &CALL.replace("\"output_tokens\":\"350\"", "\"input_tokens\":1"),
            RejectReason::DuplicateKey,
            "input_tokens",
        ),
        (
            &CALL.replace("{\"input_tokens\":1200,\"output_tokens\":\"350\"}", "{}"),
            RejectReason::InvalidQuantity,
            "at least one",
        ),
        (
            &CALL.replace("\"acct\"", "\"\""),
            RejectReason::InvalidField,
            "account_id must not be empty",
        ),
    ];
    for (input, reason, needle) in cases {
        let r = err(input.as_bytes());
        assert_eq!(r.reason, *reason, "{input}: {}", r.message);
        assert!(r.message.contains(needle), "{input}: {}", r.message);
    }
}

#[test]
fn dimensions_are_optional_bounded_and_part_of_the_content() {
    let plain = ok(CALL);
    assert!(plain.dimensions.is_empty());
    let with = |d: &str| {
        CALL.replace(
            "\"quantities\"",
            &format!("\"dimensions\":{d},\"quantities\""),
        )
    };
    let a = ok(&with(r#"{"project":"apollo","end_user":"u1"}"#));
    assert_eq!(a.dimensions.len(), 2);
    assert_eq!(a.dimensions["project"], "apollo");
    // Key order does not matter; `{}` and null are no dimensions, hashed as in v1.
    let b = ok(&with(r#"{"end_user":"u1","project":"apollo"}"#));
    assert_eq!(a.content_hash(), b.content_hash());
    assert_eq!(ok(&with("{}")).content_hash(), plain.content_hash());
    assert_eq!(ok(&with("null")).content_hash(), plain.content_hash());
    // Other dimensions are other content (a retry with them conflicts).
    let c = ok(&with(r#"{"end_user":"u1","project":"zeus"}"#));
    assert_ne!(a.content_hash(), c.content_hash());
    assert_ne!(a.content_hash(), plain.content_hash());
    // Moving a value between keys changes the hash too (length-prefixed parts).
    let d = ok(&with(r#"{"a":"bc"}"#));
    let e = ok(&with(r#"{"ab":"c"}"#));
    assert_ne!(d.content_hash(), e.content_hash());
    let r = err(with(r#"{"Project":"x"}"#).as_bytes());
    assert_eq!(r.reason, RejectReason::InvalidDimension);
    // Not allowed on execution_finished.
    let f = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","dimensions":{"project":"p"}}"#;
    let r = err(f.as_bytes());
    assert_eq!(r.reason, RejectReason::InvalidField);
    assert!(r.message.contains("dimensions"), "{}", r.message);
}

#[test]
fn whole_units_are_not_the_decoders_business() {
    // 1.5 tokens decodes; the catalog says tokens are whole (rating::check_whole_units).
    let e = ok(&CALL.replace("1200", "1.5"));
    assert_eq!(e.quantities[0].1, Decimal::new(15, 1));
}

#[test]
fn fractional_units_accept_decimals_but_not_too_many() {
    let ev = CALL
        .replace("input_tokens", "audio_minutes")
        .replace("1200", "0.25");
    assert_eq!(ok(&ev).quantities[0].1, Decimal::new(25, 2));
    let ev = ev.replace("0.25", "\"0.0000000000001\"");
    assert_eq!(err(ev.as_bytes()).reason, RejectReason::InvalidQuantity);
}

#[test]
fn finish_rules() {
    let f = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","expected_calls":3}"#;
    assert_eq!(ok(f).expected_calls, Some(3));
    let r = err(f.replace("\"execution_id\":\"x\",", "").as_bytes());
    assert_eq!(r.reason, RejectReason::MissingField);
    let r = err(f.replace("3}", "\"3\"}").as_bytes());
    assert_eq!(r.reason, RejectReason::InvalidField);
    let r = err(f.replace("3}", "-1}").as_bytes());
    assert_eq!(r.reason, RejectReason::InvalidField);
    let r = err(f.replace("\"a\",", "\"a\",\"asset_id\":\"m\",").as_bytes());
    assert_eq!(r.reason, RejectReason::InvalidField);
}

#[test]
fn size_and_encoding_come_first() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
    assert_eq!(err(big.as_bytes()).reason, RejectReason::Oversized);
    assert_eq!(
        err(b"{\"type\":\"\xff\"}").reason,
        RejectReason::InvalidEncoding
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(err(deep.as_bytes()).reason, RejectReason::InvalidJson);
}

#[test]
fn timeout_marker_round_trips() {
    let at = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let m = encode_timeout_marker("x\"1", "a", 42, at);
    let e = decode_from(&m, DEFAULT_MAX_EVENT_BYTES, Origin::Aggregator).unwrap();
    assert_eq!(e.kind, EventKind::ExecutionTimeout);
    assert_eq!(e.execution_id.as_deref(), Some("x\"1"));
    assert_eq!(e.after_offset, Some(42));
    // The same bytes from a producer are refused: the type is reserved.
    let r = decode(&m, DEFAULT_MAX_EVENT_BYTES).unwrap_err();
    assert_eq!(r.reason, RejectReason::UnknownEventType);
    assert!(r.message.contains("reserved"), "{}", r.message);
    // Type is checked first: a forged marker with other defects still names the type.
    let bad = String::from_utf8(m)
        .unwrap()
        .replace("2026-03-01T10:00:00.000Z", "soon");
    let r = decode(bad.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap_err();
    assert_eq!(r.reason, RejectReason::UnknownEventType);
}

#[test]
fn max_quantity_constant_is_1e15() {
    assert_eq!(MAX_QUANTITY, Decimal::from(1_000_000_000_000_000u64));
}
