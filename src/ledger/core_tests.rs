//! Tests of the ledger core by example: exact balances, idempotent grants and debits, the
//! draw-down order and funding of every entry, expiry once at the partition clock, overdrafts,
//! the answers, per-account thresholds and automatic top-ups. The fixtures here serve the
//! ledger core's other test files too: core_state_tests.rs (what a partition remembers and
//! restores) and core_model_tests.rs (generated runs against a reference model).

use std::str::FromStr;

use chrono::TimeZone;

use super::*;
use crate::debit::{Debit, DebitKind};
use crate::ledger::answer::GrantState;
use crate::ledger::funding::{Category, FundingCategory};
use crate::ledger::thresholds::AutoTopup;

pub(super) fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub(super) fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap()
}

pub(super) fn day(n: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, n, 0, 0, 0).unwrap()
}

pub(super) fn src(topic: &str, offset: i64) -> EntrySource {
    EntrySource {
        topic: topic.into(),
        partition: 0,
        offset,
    }
}

pub(super) fn grant(id: &str, account: &str, kind: GrantKind, amount: Decimal) -> Grant {
    Grant {
        reason: (kind == GrantKind::Adjustment).then(|| "fix".into()),
        ..Grant::new(id, kind, account, amount, at())
    }
}

pub(super) fn termed(
    id: &str,
    account: &str,
    cat: Category,
    prio: u8,
    exp: Option<u32>,
    amount: &str,
) -> Grant {
    let mut g = grant(id, account, GrantKind::Adjustment, d(amount));
    g.category = Some(cat);
    g.priority = Some(prio);
    g.occurred_at = day(1);
    g.expires_at = exp.map(day);
    g
}

pub(super) fn debit(id: &str, account: &str, total: Decimal) -> Debit {
    Debit {
        debit_id: id.into(),
        kind: DebitKind::ModelCall,
        account_id: account.into(),
        execution_id: None,
        plan: "default".into(),
        plan_version: None,
        subtotal: total,
        markup_rate: Decimal::ZERO,
        markup: Decimal::ZERO,
        total,
        calls: 1,
        first_event_at: at(),
        last_event_at: at(),
        breakdown: Vec::new(),
        components: Default::default(),
        correction: None,
    }
}

pub(super) fn applied(fx: Effects) -> (BalanceEvent, Vec<CreditAlert>) {
    assert!(
        fx.refused.is_none() && !fx.duplicate,
        "expected applied, got {fx:?}"
    );
    assert_eq!(fx.entries.len(), 1, "{fx:?}");
    (fx.entries.into_iter().next().unwrap(), fx.alerts)
}

pub(super) fn refused(fx: Effects) -> RejectReason {
    fx.refused.expect("refused").reason
}

pub(super) fn funding(e: &BalanceEvent) -> Vec<(String, Decimal)> {
    e.funded_by
        .iter()
        .map(|l| {
            (
                l.grant_id.clone().unwrap_or_else(|| "overdraft".into()),
                l.amount,
            )
        })
        .collect()
}

#[test]
fn max_balance_constant_is_1e10() {
    assert_eq!(MAX_BALANCE, Decimal::from(10_000_000_000u64));
}

#[test]
fn grants_and_debits_move_the_balance_exactly() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    let (e, _) =
        applied(l.apply_grant(&grant("pay-1", "a", GrantKind::Topup, d("25")), src("g", 0)));
    assert_eq!((e.seq, e.balance_after), (1, d("25")));
    assert_eq!(e.v, ENTRY_FORMAT);
    let (e, _) = applied(l.apply_debit(&debit("dc_1", "a", d("0.96")), 1, src("d", 0)));
    assert_eq!(e.balance_after, d("24.04"));
    assert_eq!(e.amount, d("-0.96"));
    assert_eq!(e.kind, EntryKind::Debit);
    assert_eq!(funding(&e), [("pay-1".to_string(), d("-0.96"))]);
    assert_eq!(e.grants[0].remaining, d("24.04"));
    let (e, _) = applied(l.apply_debit(
        &debit("dc_2", "a", d("0.000000000000000001")),
        2,
        src("d", 1),
    ));
    assert_eq!(e.balance_after.to_string(), "24.039999999999999999");
    assert_eq!(e.seq, 3);
    assert_eq!(l.account("a").unwrap().balance, e.balance_after);
}

#[test]
fn a_resent_grant_answers_already_applied_and_a_changed_one_is_refused() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    let mut g = grant("pay-1", "a", GrantKind::Topup, d("25"));
    g.request_id = Some("req-1".into());
    let fx = l.apply_grant(&g, src("g", 0));
    let a = fx.answer.clone().unwrap();
    assert_eq!(
        (a.verdict, a.request_id.as_deref()),
        (Verdict::Applied, Some("req-1"))
    );
    assert_eq!(a.entry.as_ref().unwrap().seq, 1);
    assert_eq!(a.grant.as_ref().unwrap().state, GrantState::Open);
    applied(fx);
    g.request_id = Some("req-2".into());
    let again = l.apply_grant(&g, src("g", 5));
    assert!(again.duplicate && again.entries.is_empty());
    let a = again.answer.unwrap();
    assert_eq!(
        (a.verdict, a.request_id.as_deref()),
        (Verdict::AlreadyApplied, Some("req-2"))
    );
    assert_eq!(a.entry.unwrap().seq, 1, "the original entry");
    // The same payment reference on another account is another grant.
    applied(l.apply_grant(&grant("pay-1", "b", GrantKind::Topup, d("25")), src("g", 6)));
    let mut changed = g.clone();
    changed.amount = d("30");
    let fx = l.apply_grant(&changed, src("g", 7));
    assert_eq!(fx.answer.as_ref().unwrap().verdict, Verdict::Refused);
    assert_eq!(refused(fx), RejectReason::ConflictingDuplicate);
    // Its status: applied with 25, and the refusal remembered.
    let s = l.grant_status("a", "pay-1");
    assert_eq!((s.state, s.facts.amount), (GrantState::Open, Some(d("25"))));
    assert_eq!(
        s.refusal.unwrap().reason,
        RejectReason::ConflictingDuplicate
    );
    // Other terms are other content too.
    let mut termed = g.clone();
    termed.expires_at = Some(day(30));
    assert_eq!(
        refused(l.apply_grant(&termed, src("g", 8))),
        RejectReason::ConflictingDuplicate
    );
    applied(l.apply_debit(&debit("dc_1", "a", d("1")), 7, src("d", 0)));
    assert!(
        l.apply_debit(&debit("dc_1", "a", d("1")), 7, src("d", 3))
            .duplicate
    );
    assert_eq!(l.account("a").unwrap().balance, d("24"));
}

#[test]
fn a_correction_applies_like_a_debit_and_a_negative_one_credits_back() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_debit(&debit("dc_1", "a", d("0.96")), 1, src("d", 0)));
    let mut c = debit("co_1", "a", d("-0.12"));
    c.kind = DebitKind::Correction;
    c.correction = Some(crate::debit::CorrectionRef {
        correction_id: "C-1".into(),
        reason: "typo".into(),
        corrects: vec!["dc_1".into()],
    });
    let (e, _) = applied(l.apply_debit(&c, 2, src("d", 1)));
    assert_eq!((e.amount, e.balance_after), (d("0.12"), d("-0.84")));
    // The credit-back repays the overdraft first.
    assert_eq!(funding(&e), [("overdraft".to_string(), d("0.12"))]);
    // Beyond the overdraft it opens a paid grant named by the correction.
    let mut big = debit("co_3", "a", d("-1"));
    big.kind = DebitKind::Correction;
    big.correction = c.correction.clone();
    let (e, _) = applied(l.apply_debit(&big, 5, src("d", 5)));
    assert_eq!(
        funding(&e),
        [
            ("overdraft".to_string(), d("0.84")),
            ("co_3".to_string(), d("0.16"))
        ]
    );
    assert_eq!(e.grants.len(), 1);
    assert_eq!(e.grants[0].category, Category::Paid);
    // Applied once, like any debit.
    assert!(l.apply_debit(&c, 2, src("d", 2)).duplicate);
    // A negative debit that is not a correction, or a correction without its reference.
    let r = l.apply_debit(&debit("dc_2", "a", d("-1")), 3, src("d", 3));
    assert!(r.refused.is_some(), "{r:?}");
    let mut bare = debit("co_2", "a", d("1"));
    bare.kind = DebitKind::Correction;
    let r = l.apply_debit(&bare, 4, src("d", 4));
    assert!(
        r.refused
            .as_ref()
            .is_some_and(|x| x.message.contains("lacks a correction reference")),
        "{r:?}"
    );
}

#[test]
fn usage_past_zero_is_an_overdraft_the_next_grant_repays_first() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_grant(&grant("pay-1", "a", GrantKind::Topup, d("10")), src("g", 0)));
    let (e, alerts) = applied(l.apply_debit(&debit("dc_1", "a", d("13")), 1, src("d", 0)));
    assert_eq!(e.balance_after, d("-3"));
    assert_eq!(
        funding(&e),
        [
            ("pay-1".to_string(), d("-10")),
            ("overdraft".to_string(), d("-3"))
        ]
    );
    assert_eq!((e.overdraft, e.grants.len()), (d("3"), 0));
    // From 10 (not below 10) to -3: both thresholds crossed, highest first.
    let got: Vec<_> = alerts.iter().map(|a| (a.threshold, a.crossing)).collect();
    assert_eq!(
        got,
        [
            (Some(d("10")), Some(Crossing::Below)),
            (Some(d("0")), Some(Crossing::Below))
        ]
    );
    assert_eq!(l.grant_status("a", "pay-1").state, GrantState::UsedUp);
    let (e, _) =
        applied(l.apply_grant(&grant("pay-2", "a", GrantKind::Topup, d("20")), src("g", 1)));
    assert_eq!(
        funding(&e),
        [
            ("overdraft".to_string(), d("3")),
            ("pay-2".to_string(), d("17"))
        ]
    );
    let s = l.grant_status("a", "pay-2");
    assert_eq!(
        (s.facts.amount, s.remaining),
        (Some(d("20")), Some(d("17")))
    );
    // A new account's debit is an overdraft from the start, never refused.
    let (e, _) = applied(l.apply_debit(&debit("dc_2", "b", d("3")), 2, src("d", 1)));
    assert_eq!(funding(&e), [("overdraft".to_string(), d("-3"))]);
}

#[test]
fn debits_draw_in_the_order_and_expiry_forfeits_once_at_the_clock() {
    use Category::*;
    let mut l = LedgerPartition::new(LedgerRules {
        expiry_warning_secs: 2 * 86_400,
        ..Default::default()
    });
    applied(l.apply_grant(&termed("paid", "a", Paid, 50, None, "20"), src("g", 0)));
    applied(l.apply_grant(
        &termed("promo", "a", Promotional, 50, Some(10), "15"),
        src("g", 1),
    ));
    applied(l.apply_grant(&termed("first", "a", Paid, 10, None, "5"), src("g", 2)));
    assert_eq!(
        l.next_deadline(),
        Some(day(8)),
        "the warning two days before"
    );
    let (e, _) = applied(l.apply_debit(&debit("dc_1", "a", d("12")), 1, src("d", 0)));
    assert_eq!(
        funding(&e),
        [
            ("first".to_string(), d("-5")),
            ("promo".to_string(), d("-7"))
        ]
    );
    assert_eq!(
        e.next_expiry.as_ref().map(|g| g.grant_id.as_str()),
        Some("promo")
    );
    // The clock reaches the warning: one grant_expiring alert, once.
    let fx = l.tick(day(8), src("g", 3));
    assert!(fx.entries.is_empty());
    assert_eq!(fx.alerts.len(), 1);
    assert_eq!(fx.alerts[0].alert, AlertKind::GrantExpiring);
    assert_eq!(fx.alerts[0].grant.as_ref().unwrap().remaining, d("8"));
    assert!(l.tick(day(9), src("g", 4)).alerts.is_empty());
    // A clock going back changes nothing.
    assert_eq!(l.tick(day(2), src("g", 5)), Effects::default());
    // The clock reaches the expiry: one entry forfeits the remainder.
    let fx = l.tick(day(10), src("g", 6));
    assert_eq!(fx.entries.len(), 1);
    let x = &fx.entries[0];
    assert_eq!(
        (x.kind, x.amount, x.occurred_at),
        (EntryKind::Expiry, d("-8"), day(10))
    );
    assert_eq!(funding(x), [("promo".to_string(), d("-8"))]);
    assert_eq!(x.balance_after, d("20"));
    assert_eq!(x.grant.as_ref().unwrap().category, Promotional);
    assert!(l.tick(day(11), src("g", 7)).entries.is_empty(), "once");
    let s = l.grant_status("a", "promo");
    assert_eq!((s.state, s.forfeited), (GrantState::Expired, Some(d("8"))));
    assert_eq!(l.next_deadline(), None);
    // A grant whose expiry the clock has passed is refused as such.
    let late = termed("late", "a", Paid, 50, Some(10), "5");
    assert_eq!(
        refused(l.apply_grant(&late, src("g", 8))),
        RejectReason::AlreadyExpired
    );
    assert_eq!(l.grant_status("a", "late").state, GrantState::Refused);
    let (e, _) = applied(l.apply_debit(&debit("dc_2", "a", d("1")), 2, src("d", 1)));
    assert_eq!(funding(&e), [("paid".to_string(), d("-1"))]);
}

#[test]
fn a_used_up_grant_does_not_expire() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_grant(
        &termed("v", "a", Category::Promotional, 50, Some(5), "3"),
        src("g", 0),
    ));
    applied(l.apply_debit(&debit("dc_1", "a", d("3")), 1, src("d", 0)));
    assert!(l.tick(day(6), src("g", 1)).entries.is_empty());
    assert_eq!(l.grant_status("a", "v").state, GrantState::UsedUp);
}

#[test]
fn a_voucher_grant_read_after_its_expiry_is_applied_and_expires_at_once() {
    // The voucher stage decided the redemption on day 4 (credits valid to day 5); the
    // ledger reads the grant after its clock reached day 6. A top-up so late is refused;
    // a decided redemption is not: its entry, then its expiry entry, in one effect.
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_debit(&debit("dc_1", "a", d("1")), 1, src("d", 0)));
    applied(l.apply_grant(
        &termed("soon", "b", Category::Paid, 50, Some(6), "1"),
        src("g", 0),
    ));
    let fx = l.tick(day(6), src("g", 1));
    assert_eq!(
        fx.entries.len(),
        1,
        "another account's expiry moved the clock"
    );
    let mut v = grant("vch", "a", GrantKind::Voucher, d("3"));
    v.voucher = Some("VCH-****".into());
    v.occurred_at = day(4);
    v.expires_at = Some(day(5));
    let fx = l.apply_grant(&v, src("g", 2));
    assert!(fx.refused.is_none(), "{fx:?}");
    assert_eq!(fx.answer.as_ref().unwrap().verdict, Verdict::Applied);
    let kinds: Vec<(EntryKind, Decimal, Decimal)> = fx
        .entries
        .iter()
        .map(|e| (e.kind, e.amount, e.balance_after))
        .collect();
    assert_eq!(
        kinds,
        [
            (EntryKind::Voucher, d("3"), d("2")),
            (EntryKind::Expiry, d("-2"), d("0"))
        ],
        "the overdraft of 1 repaid, the other 2 forfeited"
    );
    assert_eq!(fx.entries[1].occurred_at, day(5));
    let s = l.grant_status("a", "vch");
    assert_eq!((s.state, s.forfeited), (GrantState::Expired, Some(d("2"))));
    assert!(l.tick(day(7), src("g", 3)).entries.is_empty(), "once");
    assert!(
        l.apply_grant(&v, src("g", 4)).duplicate,
        "a re-send changes nothing"
    );
    let mut t = grant("late-topup", "a", GrantKind::Topup, d("20"));
    t.expires_at = Some(day(5));
    assert_eq!(
        refused(l.apply_grant(&t, src("g", 5))),
        RejectReason::AlreadyExpired
    );
}

#[test]
fn a_negative_adjustment_draws_like_a_debit_and_cannot_carry_terms() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_grant(
        &termed("p", "a", Category::Paid, 50, None, "10"),
        src("g", 0),
    ));
    let (e, _) = applied(l.apply_grant(
        &grant("fix", "a", GrantKind::Adjustment, d("-4")),
        src("g", 1),
    ));
    assert_eq!(funding(&e), [("p".to_string(), d("-4"))]);
    assert_eq!(l.grant_status("a", "fix").state, GrantState::Applied);
}

#[test]
fn status_and_account_answers() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    let s = l.apply(
        Command::Request(Request::GrantStatus {
            request_id: "r".into(),
            account_id: "a".into(),
            grant_id: "nope".into(),
        }),
        src("g", 0),
    );
    let a = s.answer.unwrap();
    assert_eq!(
        (a.verdict, a.grant.unwrap().state),
        (Verdict::Answered, GrantState::Unknown)
    );
    applied(l.apply_grant(
        &termed("v", "a", Category::Promotional, 50, Some(9), "15"),
        src("g", 1),
    ));
    applied(l.apply_grant(&grant("pay", "a", GrantKind::Topup, d("20")), src("g", 2)));
    let v = l.account_view("a");
    assert_eq!(
        (v.balance, v.paid, v.promotional),
        (d("35"), d("20"), d("15"))
    );
    assert_eq!(v.next_expiry.unwrap().grant_id, "v");
    assert_eq!(v.last_topup, Some(d("20")));
    assert_eq!(v.thresholds.len(), 2);
}

#[test]
fn per_account_thresholds_replace_the_defaults_and_follow_a_share_of_the_last_topup() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_grant(
        &grant("pay-1", "a", GrantKind::Topup, d("100")),
        src("g", 0),
    ));
    let fx = l.apply(
        Command::Request(Request::SetThresholds {
            request_id: "r".into(),
            account_id: "a".into(),
            thresholds: Some(Some(vec!["50".parse().unwrap(), "20%".parse().unwrap()])),
            expiry_warning_secs: None,
        }),
        src("g", 1),
    );
    assert!(fx.alerts.is_empty(), "setting thresholds is not a crossing");
    let view = fx.answer.unwrap().account.unwrap();
    assert!(view.custom_thresholds);
    assert_eq!(view.thresholds[1].value, d("20"));
    let (_, alerts) = applied(l.apply_debit(&debit("dc_1", "a", d("60")), 1, src("d", 0)));
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].threshold, alerts[0].rule.clone()),
        (Some(d("50")), None)
    );
    let (_, alerts) = applied(l.apply_debit(&debit("dc_2", "a", d("25")), 2, src("d", 1)));
    assert_eq!(alerts[0].rule.as_deref(), Some("20%"));
    // A bigger top-up moves the share threshold: 15 + 200 is above 50 and above 40.
    let (_, alerts) = applied(l.apply_grant(
        &grant("pay-2", "a", GrantKind::Topup, d("200")),
        src("g", 2),
    ));
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.crossing == Some(Crossing::Recovered))
            .count(),
        2
    );
    // Back to the defaults.
    l.apply(
        Command::Request(Request::SetThresholds {
            request_id: "r2".into(),
            account_id: "a".into(),
            thresholds: Some(None),
            expiry_warning_secs: Some(None),
        }),
        src("g", 3),
    );
    assert!(!l.account_view("a").custom_thresholds);
}

#[test]
fn auto_topup_requests_once_per_crossing_and_never_credits() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_grant(&grant("pay-1", "a", GrantKind::Topup, d("30")), src("g", 0)));
    let rule = AutoTopup {
        below: d("10"),
        fixed: None,
        refill_to: Some(d("100")),
    };
    let fx = l.apply(
        Command::Request(Request::SetAutoTopup {
            request_id: "r".into(),
            account_id: "a".into(),
            rule: Some(rule.clone()),
        }),
        src("g", 1),
    );
    assert!(fx.topups.is_empty(), "30 is not below 10");
    let fx = l.apply_debit(&debit("dc_1", "a", d("25.005")), 1, src("d", 0));
    assert_eq!(fx.topups.len(), 1);
    let t = &fx.topups[0];
    assert_eq!((t.amount, t.balance), (d("95.01"), d("4.995")));
    assert_eq!(
        l.account("a").unwrap().balance,
        d("4.995"),
        "a request is not a grant"
    );
    assert!(
        l.apply_debit(&debit("dc_2", "a", d("1")), 2, src("d", 1))
            .topups
            .is_empty()
    );
    applied(l.apply_grant(
        &grant(&t.request_id, "a", GrantKind::Topup, t.amount),
        src("g", 2),
    ));
    let fx = l.apply_debit(&debit("dc_3", "a", d("95")), 3, src("d", 2));
    assert_eq!(fx.topups.len(), 1, "the next crossing");
    assert_ne!(fx.topups[0].request_id, t.request_id);
    // Set while below: requested at once.
    let fx = l.apply(
        Command::Request(Request::SetAutoTopup {
            request_id: "r2".into(),
            account_id: "b".into(),
            rule: Some(AutoTopup {
                below: d("10"),
                fixed: Some(d("50")),
                refill_to: None,
            }),
        }),
        src("g", 3),
    );
    assert_eq!(fx.topups[0].amount, d("50"));
}

#[test]
fn funding_categories_are_recorded() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    applied(l.apply_grant(
        &termed("v", "a", Category::Promotional, 50, None, "5"),
        src("g", 0),
    ));
    let (e, _) = applied(l.apply_debit(&debit("dc", "a", d("6")), 1, src("d", 0)));
    let cats: Vec<FundingCategory> = e.funded_by.iter().map(|f| f.category).collect();
    assert_eq!(
        cats,
        [FundingCategory::Promotional, FundingCategory::Overdraft]
    );
}
