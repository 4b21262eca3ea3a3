//! Tests of grant validation: every refusal with its reason, and the content hash.

use super::*;

fn grant(kind: &str, amount: &str) -> String {
    format!(
        r#"{{"grant_id":"pay-1","kind":"{kind}","account_id":"acct-1","amount":{amount},"occurred_at":"2026-03-01T10:00:00Z","reason":"goodwill"}}"#
    )
}

fn reason(bytes: &str) -> RejectReason {
    parse_grant(bytes.as_bytes(), &GrantRules::default())
        .unwrap_err()
        .reason
}

#[test]
fn max_grant_constant_is_1e12() {
    assert_eq!(MAX_GRANT_AMOUNT, Decimal::from(1_000_000_000_000u64));
}

#[test]
fn a_valid_topup_round_trips() {
    let g = parse_grant(
        grant("topup", "\"25.50\"").as_bytes(),
        &GrantRules::default(),
    )
    .unwrap();
    assert_eq!(g.amount, Decimal::new(255, 1));
    assert_eq!(g.kind, GrantKind::Topup);
    let back = parse_grant(&g.encode(), &GrantRules::default()).unwrap();
    assert_eq!(back, g);
    // Numbers are read from their text, exactly.
    let n = parse_grant(grant("topup", "10.1").as_bytes(), &GrantRules::default()).unwrap();
    assert_eq!(n.amount.to_string(), "10.1");
}

#[test]
fn refusals_carry_their_reason() {
    assert_eq!(
        reason(&grant("topup", "\"9.99\"")),
        RejectReason::TopupBelowMinimum
    );
    assert_eq!(
        reason(&grant("topup", "\"-20\"")),
        RejectReason::InvalidAmount
    );
    assert_eq!(
        reason(&grant("voucher", "\"0\"")),
        RejectReason::InvalidAmount
    );
    assert_eq!(
        reason(&grant("adjustment", "\"0\"")),
        RejectReason::InvalidAmount
    );
    assert_eq!(
        reason(&grant("topup", "\"1e3\"")),
        RejectReason::InvalidAmount
    );
    assert_eq!(
        reason(&grant("topup", "\"12.\"")),
        RejectReason::InvalidAmount
    );
    assert_eq!(
        reason(&grant("topup", "\"10.0000000000000000001\"")),
        RejectReason::InvalidAmount
    );
    assert_eq!(
        reason(&grant("topup", "\"1000000000001\"")),
        RejectReason::InvalidAmount
    );
    assert_eq!(reason(&grant("gift", "\"20\"")), RejectReason::InvalidField);
    assert_eq!(reason("{"), RejectReason::InvalidJson);
    assert_eq!(
        reason(&grant("topup", "\"20\"").replace("\"reason\"", "\"extra\"")),
        RejectReason::UnknownField
    );
    let bad_account = grant("topup", "\"20\"").replace("acct-1", "acct\\u0007");
    assert_eq!(reason(&bad_account), RejectReason::InvalidAccount);
    let empty_account = grant("topup", "\"20\"").replace("acct-1", "");
    assert_eq!(reason(&empty_account), RejectReason::InvalidAccount);
    let no_reason = grant("adjustment", "\"-5\"").replace(",\"reason\":\"goodwill\"", "");
    assert_eq!(reason(&no_reason), RejectReason::MissingField);
    let bad_time = grant("topup", "\"20\"").replace("2026-03-01T10:00:00Z", "yesterday");
    assert_eq!(reason(&bad_time), RejectReason::InvalidTimestamp);
}

#[test]
fn negative_adjustments_and_the_minimum_itself_are_accepted() {
    let rules = GrantRules::default();
    assert!(parse_grant(grant("adjustment", "\"-5.25\"").as_bytes(), &rules).is_ok());
    assert!(parse_grant(grant("topup", "\"10\"").as_bytes(), &rules).is_ok());
    assert!(parse_grant(grant("voucher", "\"0.01\"").as_bytes(), &rules).is_ok());
}

#[test]
fn content_hash_ignores_time_and_reason_but_not_amount() {
    let rules = GrantRules::default();
    let a = parse_grant(grant("topup", "\"20\"").as_bytes(), &rules).unwrap();
    let mut b = a.clone();
    b.occurred_at = Utc::now();
    b.reason = None;
    b.amount = Decimal::new(2000, 2);
    assert_eq!(a.content_hash(), b.content_hash());
    b.amount = Decimal::new(21, 0);
    assert_ne!(a.content_hash(), b.content_hash());
}
