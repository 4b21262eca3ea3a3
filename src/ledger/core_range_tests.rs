//! The balance range: grants stop at +-1e10 credits; usage and the credit-back of a
//! negative correction always land (up to +-5e10, the exact range).

use std::str::FromStr;

use chrono::TimeZone;

use super::*;
use crate::debit::{CorrectionRef, DebitKind};
use crate::ledger::funding::FundingCategory;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn src(offset: i64) -> EntrySource {
    EntrySource {
        topic: "in".into(),
        partition: 0,
        offset,
    }
}

fn grant(id: &str, kind: GrantKind, amount: &str) -> Grant {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    Grant {
        reason: (kind == GrantKind::Adjustment).then(|| "fix".into()),
        ..Grant::new(id, kind, "a", d(amount), at)
    }
}

fn debit(id: &str, total: &str) -> Debit {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 11, 0, 0).unwrap();
    let total = d(total);
    let correction = total.is_sign_negative();
    Debit {
        debit_id: id.into(),
        kind: if correction {
            DebitKind::Correction
        } else {
            DebitKind::ModelCall
        },
        account_id: "a".into(),
        execution_id: None,
        plan: "default".into(),
        plan_version: None,
        subtotal: total,
        markup_rate: Decimal::ZERO,
        markup: Decimal::ZERO,
        total,
        calls: 1,
        first_event_at: at,
        last_event_at: at,
        breakdown: Vec::new(),
        components: Default::default(),
        correction: correction.then(|| CorrectionRef {
            correction_id: "C-1".into(),
            reason: "price typo".into(),
            corrects: vec!["dc_1".into()],
        }),
    }
}

fn entry(fx: Effects) -> BalanceEvent {
    assert!(fx.refused.is_none() && !fx.duplicate, "{fx:?}");
    fx.entries.into_iter().next().expect("an entry")
}

fn balance(l: &LedgerPartition) -> Decimal {
    l.account("a").unwrap().balance
}

#[test]
fn the_ranges_are_1e10_for_grants_and_5e10_for_entries() {
    assert_eq!(MAX_BALANCE, d("10000000000"));
    assert_eq!(MAX_LEDGER_BALANCE, d("50000000000"));
    // 5e10 with 18 decimals fits the 96-bit mantissa (7.9e28): every sum inside is exact.
    let top = MAX_LEDGER_BALANCE - d("0.000000000000000001");
    assert_eq!(top.to_string(), "49999999999.999999999999999999");
}

#[test]
fn a_credit_back_is_paid_on_an_account_that_grants_filled_to_the_limit() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    entry(l.apply_grant(&grant("p1", GrantKind::Topup, "9999999990"), src(0)));
    // The usage, then a top-up back to 9999999990: grants are at their limit.
    entry(l.apply_debit(&debit("dc_1", "100"), 1, src(1)));
    entry(l.apply_grant(&grant("p2", GrantKind::Topup, "100"), src(2)));
    let fx = l.apply_grant(&grant("p3", GrantKind::Topup, "20"), src(3));
    let r = fx.refused.expect("a grant past 1e10 is refused");
    assert_eq!(r.reason, RejectReason::InvalidAmount);
    assert!(r.message.contains("1e10"), "{}", r.message);
    assert_eq!(
        fx.answer.map(|a| a.verdict),
        Some(crate::ledger::answer::Verdict::Refused)
    );
    // The price correction finds the 100 charged 60 too high: the 60 comes back, past 1e10.
    let e = entry(l.apply_debit(&debit("co_1", "-60"), 2, src(4)));
    assert_eq!((e.amount, e.balance_after), (d("60"), d("10000000050")));
    let lines: Vec<_> = e
        .funded_by
        .iter()
        .map(|f| (f.grant_id.as_deref(), f.category, f.amount))
        .collect();
    assert_eq!(lines, [(Some("co_1"), FundingCategory::Paid, d("60"))]);
    // Usage goes on; a negative adjustment (towards zero) is taken; a grant is not.
    entry(l.apply_debit(&debit("dc_2", "0.5"), 3, src(5)));
    let e = entry(l.apply_grant(&grant("adj-1", GrantKind::Adjustment, "-20"), src(6)));
    assert_eq!(e.balance_after, d("10000000029.5"));
    let fx = l.apply_grant(&grant("adj-2", GrantKind::Adjustment, "1"), src(7));
    assert_eq!(
        fx.refused.map(|r| r.reason),
        Some(RejectReason::InvalidAmount)
    );
    assert_eq!(balance(&l), d("10000000029.5"));
    // Replayed, the credit-back is the duplicate it is, not a second payment.
    assert!(l.apply_debit(&debit("co_1", "-60"), 2, src(8)).duplicate);
    assert_eq!(balance(&l), d("10000000029.5"));
}

#[test]
fn usage_past_minus_1e10_is_recorded_and_only_the_exact_range_stops_it() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    let e = entry(l.apply_debit(&debit("dc_1", "10000000005"), 1, src(0)));
    assert_eq!(
        (e.balance_after, e.overdraft),
        (d("-10000000005"), d("10000000005"))
    );
    // A credit-back repays the overdraft first.
    let e = entry(l.apply_debit(&debit("co_1", "-5"), 2, src(1)));
    assert_eq!(e.funded_by[0].category, FundingCategory::Overdraft);
    assert_eq!(balance(&l), d("-10000000000"));
    // Past 5e10 the balance would no longer be exact: refused, dead-lettered, kept.
    let fx = l.apply_debit(&debit("dc_2", "40000000000"), 3, src(2));
    assert_eq!(
        fx.refused.map(|r| r.reason),
        Some(RejectReason::InvalidAmount)
    );
    assert_eq!(balance(&l), d("-10000000000"));
}
