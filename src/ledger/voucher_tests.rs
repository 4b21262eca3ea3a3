//! Tests of voucher codes and decisions: masking and hashing, each refusal reason, the
//! redemption limit under many accounts, idempotent re-sends and restore.

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;

fn t(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap()
}

fn def(code: &str, max: u32, account: Option<&str>) -> VoucherDef {
    let n = normalize_code(code).unwrap();
    VoucherDef {
        code_hash: code_hash(&n),
        masked: mask(&n),
        credits: Decimal::new(25, 0),
        valid_from: t(8),
        valid_until: t(20),
        max_redemptions: max,
        account_id: account.map(str::to_string),
        description: "spring promo".into(),
        credits_valid_for_secs: None,
        credits_expire_at: None,
        priority: None,
    }
}

fn create(v: &VoucherDef) -> VoucherRequest {
    VoucherRequest::Create {
        request_id: format!("create-{}", v.masked),
        requested_at: t(7),
        voucher: v.clone(),
    }
}

fn redeem(v: &VoucherDef, account: &str, at: DateTime<Utc>) -> VoucherRequest {
    VoucherRequest::Redeem {
        request_id: format!("r-{account}-{}", at.timestamp()),
        requested_at: at,
        code_hash: v.code_hash.clone(),
        masked: v.masked.clone(),
        account_id: account.into(),
    }
}

#[test]
fn codes_are_normalized_masked_and_hashed() {
    assert_eq!(
        normalize_code(" spring-2026-x7q ").unwrap(),
        "SPRING-2026-X7Q"
    );
    assert!(normalize_code("abc").is_err());
    assert!(normalize_code("spring 2026").is_err());
    assert_eq!(mask("SPRING-2026-X7Q"), "SPRING-****");
    assert_eq!(mask("ABCDEFGHJK"), "ABC****");
    assert_eq!(mask("ABCDEFGHJK-1"), "ABC****");
    let h = code_hash("SPRING-2026-X7Q");
    assert_eq!(h.len(), 64);
    assert_ne!(h, code_hash("SPRING-2026-X7R"));
    // Pinned: the hash is the code's identity in stored state and must never change.
    assert_eq!(
        code_hash("SPRING-2026-X7Q"),
        code_hash(&normalize_code("spring-2026-x7q").unwrap())
    );
    let shown = display("SPRING-****", &h);
    assert!(!shown.contains("2026") && shown.len() == "SPRING-**** #".len() + 8);
}

#[test]
fn each_refusal_has_its_reason() {
    let mut p = VoucherPartition::default();
    let v = def("SPRING-2026-X7Q", 1, None);
    let vip = def("VIP-ONLY-123", 5, Some("acct-vip"));
    assert_eq!(p.handle(&create(&v)).0.outcome, VoucherOutcome::Created);
    assert_eq!(p.handle(&create(&vip)).0.outcome, VoucherOutcome::Created);
    let reason = |p: &mut VoucherPartition, r: VoucherRequest| p.handle(&r).0.reason;
    let unknown = def("NOPE-NOPE-NOPE", 1, None);
    assert_eq!(
        reason(&mut p, redeem(&unknown, "a", t(9))),
        Some(Refusal::Unknown)
    );
    assert_eq!(
        reason(&mut p, redeem(&v, "a", t(7))),
        Some(Refusal::NotYetValid)
    );
    assert_eq!(
        reason(&mut p, redeem(&v, "a", t(20))),
        Some(Refusal::Expired)
    );
    assert_eq!(
        reason(&mut p, redeem(&vip, "a", t(9))),
        Some(Refusal::WrongAccount)
    );
    let (ok, grant) = p.handle(&redeem(&v, "a", t(9)));
    assert_eq!(ok.outcome, VoucherOutcome::Granted);
    let grant = grant.unwrap();
    assert_eq!(
        (grant.amount, grant.kind),
        (Decimal::new(25, 0), GrantKind::Voucher)
    );
    assert!(!grant.voucher.as_deref().unwrap().contains("2026"));
    assert_eq!(
        reason(&mut p, redeem(&v, "a", t(10))),
        Some(Refusal::AlreadyRedeemed)
    );
    assert_eq!(
        reason(&mut p, redeem(&v, "b", t(10))),
        Some(Refusal::Exhausted)
    );
    let mut other = def("SPRING-2026-X7Q", 2, None);
    other.credits = Decimal::ONE;
    let another_request = VoucherRequest::Create {
        request_id: "create-another".into(),
        requested_at: t(7),
        voucher: other,
    };
    assert_eq!(
        p.handle(&another_request).0.reason,
        Some(Refusal::AlreadyExists)
    );
    let mut bad = def("BAD-WINDOW-1", 1, None);
    bad.valid_until = bad.valid_from;
    assert_eq!(p.handle(&create(&bad)).0.reason, Some(Refusal::Invalid));
    assert_eq!(
        reason(&mut p, redeem(&vip, "", t(9))),
        Some(Refusal::Invalid)
    );
}

#[test]
fn a_voucher_grant_is_promotional_with_the_voucher_expiry_and_priority() {
    let mut p = VoucherPartition::default();
    let mut v = def("SPRING-2026-X7Q", 3, None);
    v.credits_valid_for_secs = Some(90 * 86_400);
    v.priority = Some(10);
    p.handle(&create(&v));
    let (r, g) = p.handle(&redeem(&v, "a", t(9)));
    let g = g.unwrap();
    assert_eq!(g.category(), crate::ledger::funding::Category::Promotional);
    assert_eq!(g.priority(), 10);
    assert_eq!(g.expires_at, Some(t(9) + chrono::Duration::days(90)));
    assert_eq!(r.credits_expire_at, g.expires_at);
    // An absolute expiry must not be before the end of the redemption window.
    let mut w = def("WINTER-2026-AB", 1, None);
    w.credits_expire_at = Some(t(19));
    assert!(w.validate().is_err());
    w.credits_expire_at = Some(t(21));
    assert!(w.validate().is_ok());
    w.credits_valid_for_secs = Some(60);
    assert!(w.validate().is_err(), "not both");
}

#[test]
fn revocation_happens_once_and_refuses_later_redemptions() {
    let mut p = VoucherPartition::default();
    let v = def("SPRING-2026-X7Q", 5, None);
    p.handle(&create(&v));
    assert_eq!(
        p.handle(&redeem(&v, "a", t(9))).0.outcome,
        VoucherOutcome::Granted
    );
    let revoke = |id: &str, h: u32| VoucherRequest::Revoke {
        request_id: id.into(),
        requested_at: t(h),
        code_hash: v.code_hash.clone(),
        reason: "leaked".into(),
    };
    let (r, g) = p.handle(&revoke("rv-1", 10));
    assert_eq!((r.outcome, g), (VoucherOutcome::Revoked, None));
    let first = p.get(&v.code_hash).unwrap().revoked.clone().unwrap();
    // A second revoke answers the first and changes nothing.
    let (r2, _) = p.handle(&revoke("rv-2", 11));
    assert_eq!(r2.outcome, VoucherOutcome::Revoked);
    assert!(r2.message.contains(&t(10).to_rfc3339()), "{}", r2.message);
    assert_eq!(p.get(&v.code_hash).unwrap().revoked, Some(first));
    let (r3, g3) = p.handle(&redeem(&v, "b", t(12)));
    assert_eq!((r3.reason, g3), (Some(Refusal::Revoked), None));
    // The earlier redemption's re-send still gets its original answer.
    let (r4, _) = p.handle(&redeem(&v, "a", t(9)));
    assert_eq!(r4.outcome, VoucherOutcome::Granted);
    let unknown = VoucherRequest::Revoke {
        request_id: "rv-x".into(),
        requested_at: t(10),
        code_hash: code_hash("NOPE-NOPE-NOPE"),
        reason: String::new(),
    };
    assert_eq!(p.handle(&unknown).0.reason, Some(Refusal::Unknown));
}

#[test]
fn a_retried_create_with_its_request_id_answers_the_original() {
    let mut p = VoucherPartition::default();
    let v = def("SPRING-2026-X7Q", 5, None);
    p.handle(&create(&v));
    // The retry computed "now" again: another valid_from, the same request id.
    let mut later = v.clone();
    later.valid_from = t(9);
    let retry = VoucherRequest::Create {
        request_id: format!("create-{}", v.masked),
        requested_at: t(9),
        voucher: later.clone(),
    };
    let (r, _) = p.handle(&retry);
    assert_eq!(r.outcome, VoucherOutcome::Created);
    assert_eq!(p.get(&v.code_hash).unwrap().def, v);
    // Another request with another definition is refused.
    let other = VoucherRequest::Create {
        request_id: "create-other".into(),
        requested_at: t(9),
        voucher: later,
    };
    assert_eq!(p.handle(&other).0.reason, Some(Refusal::AlreadyExists));
}

#[test]
fn a_resent_request_gets_the_same_answer_and_no_second_grant() {
    let mut p = VoucherPartition::default();
    let v = def("SPRING-2026-X7Q", 3, None);
    p.handle(&create(&v));
    assert_eq!(p.handle(&create(&v)).0.outcome, VoucherOutcome::Created);
    let r = redeem(&v, "a", t(9));
    let (first, g1) = p.handle(&r);
    let (again, g2) = p.handle(&r);
    assert!(g1.is_some() && g2.is_none());
    assert_eq!(again.outcome, VoucherOutcome::Granted);
    assert_eq!(again.grant_id, first.grant_id);
    assert_eq!(p.get(&v.code_hash).unwrap().redemptions.len(), 1);
}

#[test]
fn restore_from_changes_gives_the_same_state() {
    let mut p = VoucherPartition::default();
    let v = def("SPRING-2026-X7Q", 3, None);
    p.handle(&create(&v));
    p.handle(&redeem(&v, "a", t(9)));
    let log = p.take_changes();
    let mut q = VoucherPartition::default();
    for (k, val) in &log {
        q.restore(k, val.as_deref()).unwrap();
    }
    q.restored();
    assert_eq!(q.get(&v.code_hash), p.get(&v.code_hash));
    assert_eq!(
        q.handle(&redeem(&v, "a", t(10))).0.reason,
        Some(Refusal::AlreadyRedeemed)
    );
}

proptest! {
    /// Whatever the order of many accounts' requests, exactly `max` are granted: the first
    /// `max` distinct accounts in log order; the rest are refused as exhausted.
    #[test]
    fn exactly_max_redemptions_win_in_log_order(
        max in 1u32..6,
        accounts in prop::collection::vec(0u32..30, 1..80),
    ) {
        let mut p = VoucherPartition::default();
        let v = def("RACE-CODE-0001", max, None);
        p.handle(&create(&v));
        let mut winners = Vec::new();
        let mut expected = Vec::new();
        for (i, a) in accounts.iter().enumerate() {
            let acct = format!("acct-{a}");
            if expected.len() < max as usize && !expected.contains(&acct) {
                expected.push(acct.clone());
            }
            let r = VoucherRequest::Redeem {
                request_id: format!("req-{i}"),
                requested_at: t(9),
                code_hash: v.code_hash.clone(),
                masked: v.masked.clone(),
                account_id: acct.clone(),
            };
            let (res, grant) = p.handle(&r);
            if let Some(g) = grant {
                prop_assert_eq!(res.outcome, VoucherOutcome::Granted);
                winners.push(g.account_id);
            } else {
                prop_assert_eq!(res.outcome, VoucherOutcome::Refused);
                prop_assert!(matches!(res.reason, Some(Refusal::Exhausted | Refusal::AlreadyRedeemed)));
            }
        }
        prop_assert_eq!(winners, expected);
    }
}
