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
    assert_eq!(
        p.handle(&create(&other)).0.reason,
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
