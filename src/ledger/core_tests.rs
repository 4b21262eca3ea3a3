//! Tests of the ledger core: exact balances, idempotent grants and debits, the draw-down
//! order and funding of every entry, expiry once at the partition clock, overdrafts, the
//! answers, per-account thresholds and automatic top-ups, and restore from the changelog;
//! property tests against an independent oracle and a reference model of the draw-down
//! order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::debit::{Debit, DebitKind};
use crate::ledger::answer::GrantState;
use crate::ledger::command::Ids;
use crate::ledger::funding::{self, Category, FundingCategory};
use crate::ledger::thresholds::AutoTopup;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap()
}

fn day(n: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, n, 0, 0, 0).unwrap()
}

fn src(topic: &str, offset: i64) -> EntrySource {
    EntrySource {
        topic: topic.into(),
        partition: 0,
        offset,
    }
}

fn grant(id: &str, account: &str, kind: GrantKind, amount: Decimal) -> Grant {
    Grant {
        grant_id: id.into(),
        kind,
        account_id: account.into(),
        amount,
        occurred_at: at(),
        reason: (kind == GrantKind::Adjustment).then(|| "fix".into()),
        voucher: None,
        category: None,
        priority: None,
        expires_at: None,
        request_id: None,
    }
}

fn termed(
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

fn debit(id: &str, account: &str, total: Decimal) -> Debit {
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

fn applied(fx: Effects) -> (BalanceEvent, Vec<CreditAlert>) {
    assert!(
        fx.refused.is_none() && !fx.duplicate,
        "expected applied, got {fx:?}"
    );
    assert_eq!(fx.entries.len(), 1, "{fx:?}");
    (fx.entries.into_iter().next().unwrap(), fx.alerts)
}

fn refused(fx: Effects) -> RejectReason {
    fx.refused.expect("refused").reason
}

fn funding(e: &BalanceEvent) -> Vec<(String, Decimal)> {
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
fn a_balance_leaving_the_exact_range_is_refused() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    for i in 0..9 {
        applied(l.apply_grant(
            &grant(&format!("p{i}"), "a", GrantKind::Topup, d("1000000000")),
            src("g", i),
        ));
    }
    let fx = l.apply_grant(
        &grant("p9", "a", GrantKind::Topup, d("1000000000")),
        src("g", 9),
    );
    assert_eq!(refused(fx), RejectReason::InvalidAmount);
    assert_eq!(l.account("a").unwrap().balance, d("9000000000"));
}

#[test]
fn debit_ids_are_forgotten_beyond_the_horizon_with_a_tombstone() {
    let mut l = LedgerPartition::new(LedgerRules {
        debit_horizon: 10,
        ..Default::default()
    });
    applied(l.apply_debit(&debit("dc_1", "a", d("1")), 1, src("d", 0)));
    assert!(
        l.apply_debit(&debit("dc_1", "a", d("1")), 1, src("d", 10))
            .duplicate
    );
    l.take_changes();
    applied(l.apply_debit(&debit("dc_2", "a", d("1")), 2, src("d", 11)));
    assert_eq!(l.remembered_debits(), 1);
    let changes = l.take_changes();
    let gone = super::changelog::debit_key(super::debit_digest("dc_1"));
    assert!(gone.starts_with(b"h/") && gone.len() == 34, "{gone:?}");
    assert!(changes.contains(&(gone, None)), "{changes:?}");
}

#[test]
fn debit_marks_keyed_by_id_are_read_and_re_keyed_by_digest() {
    let mut l = LedgerPartition::new(LedgerRules {
        debit_horizon: 10,
        ..Default::default()
    });
    // As an earlier build wrote them: one live mark, one deleted again.
    l.restore(b"d/dc_1", Some(br#"{"offset":5,"hash":1}"#))
        .unwrap();
    l.restore(b"d/dc_2", Some(br#"{"offset":6,"hash":2}"#))
        .unwrap();
    l.restore(b"d/dc_2", None).unwrap();
    l.restored();
    assert_eq!(l.remembered_debits(), 1);
    let changes = l.take_changes();
    let new_key = super::changelog::debit_key(super::debit_digest("dc_1"));
    assert!(changes.contains(&(b"d/dc_1".to_vec(), None)), "{changes:?}");
    assert!(
        changes.contains(&(new_key.clone(), Some(br#"{"offset":5,"hash":1}"#.to_vec()))),
        "{changes:?}"
    );
    assert_eq!(
        changes.len(),
        2,
        "the deleted mark is left alone: {changes:?}"
    );
    // The re-keyed mark reads back, still catches the repeat and still expires.
    let mut r = LedgerPartition::new(LedgerRules {
        debit_horizon: 10,
        ..Default::default()
    });
    for (k, v) in &changes {
        r.restore(k, v.as_deref()).unwrap();
    }
    r.restored();
    assert!(r.take_changes().is_empty());
    assert!(
        r.apply_debit(&debit("dc_1", "a", d("1")), 1, src("d", 7))
            .duplicate
    );
    applied(r.apply_debit(&debit("dc_3", "a", d("1")), 3, src("d", 16)));
    assert!(r.take_changes().contains(&(new_key, None)));
}

#[test]
fn refusals_are_remembered_within_the_bound() {
    let mut l = LedgerPartition::new(LedgerRules {
        refusal_memory: 2,
        ..Default::default()
    });
    for i in 0..3 {
        let ids = Ids {
            command: None,
            request_id: Some(format!("r{i}")),
            account_id: Some("a".into()),
            grant_id: Some(format!("g{i}")),
        };
        let fx = l.refuse_message(
            &ids,
            Rejection::new(RejectReason::TopupBelowMinimum, "small"),
        );
        assert_eq!(fx.answer.unwrap().verdict, Verdict::Refused);
    }
    assert_eq!(
        l.grant_status("a", "g0").state,
        GrantState::Unknown,
        "forgotten"
    );
    assert_eq!(l.grant_status("a", "g2").state, GrantState::Refused);
    // The bound survives a restore.
    let log = l.take_changes();
    let mut r = LedgerPartition::new(LedgerRules {
        refusal_memory: 2,
        ..Default::default()
    });
    for (k, v) in &log {
        r.restore(k, v.as_deref()).unwrap();
    }
    r.restored();
    assert_eq!(r.grant_status("a", "g1").state, GrantState::Refused);
    assert_eq!(r.grant_status("a", "g0").state, GrantState::Unknown);
}

#[test]
fn a_format_0_state_restores_with_an_opening_grant() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    l.restore(
        b"a/a",
        Some(br#"{"balance":"12.5","seq":3,"updated_at":null}"#),
    )
    .unwrap();
    l.restore(b"g/a\0pay-1", Some(b"1234")).unwrap();
    l.restored();
    let (e, _) = applied(l.apply_debit(&debit("dc_1", "a", d("2.5")), 1, src("d", 0)));
    assert_eq!(funding(&e), [("opening-balance".to_string(), d("-2.5"))]);
    assert_eq!(e.seq, 4);
    assert_eq!(l.grant_status("a", "pay-1").state, GrantState::Applied);
}

// ---- generated runs against a reference model ----------------------------------------

/// One input of a generated run.
#[derive(Debug, Clone)]
enum Op {
    /// (id, account, category promotional, priority, expiry day)
    Grant(usize, usize, bool, u8, Option<u32>),
    Debit(usize, usize),
    /// The clock marker of day n.
    Tick(u32),
}

fn amount_of(id: usize, grant: bool) -> Decimal {
    // Deterministic per id, so a re-send carries the same content.
    if grant {
        Decimal::new(1000 + (id as i64 * 7919) % 50_000, 2) // 10.00 .. 509.99
    } else {
        Decimal::new(1 + (id as i64 * 104_729) % 90_000_000, 6)
    }
}

const ACCOUNTS: [&str; 3] = ["a", "b", "c"];

fn grant_of(op: &Op) -> Option<Grant> {
    let Op::Grant(id, acct, promo, prio, exp) = op else {
        return None;
    };
    let cat = if *promo {
        Category::Promotional
    } else {
        Category::Paid
    };
    let mut g = termed(
        &format!("g-{id}"),
        ACCOUNTS[*acct],
        cat,
        *prio,
        *exp,
        &amount_of(*id, true).to_string(),
    );
    g.kind = GrantKind::Adjustment;
    Some(g)
}

fn apply_op(l: &mut LedgerPartition, op: &Op, i: usize) -> Effects {
    match op {
        Op::Grant(..) => l.apply_grant(&grant_of(op).unwrap(), src("g", i as i64)),
        Op::Debit(id, acct) => l.apply_debit(
            &debit(&format!("dc_{id}"), ACCOUNTS[*acct], amount_of(*id, false)),
            *id as u64,
            src("d", i as i64),
        ),
        Op::Tick(n) => l.tick(day(*n), src("g", i as i64)),
    }
}

fn run(ops: &[Op], restart_at: Option<usize>) -> (LedgerPartition, Vec<BalanceEvent>, usize) {
    let rules = LedgerRules {
        debit_horizon: 1_000_000,
        expiry_warning_secs: 86_400,
        ..Default::default()
    };
    let mut l = LedgerPartition::new(rules.clone());
    let mut log: Vec<Change> = Vec::new();
    let mut events = Vec::new();
    let mut alerts = 0;
    for (i, op) in ops.iter().enumerate() {
        if restart_at == Some(i) {
            log.extend(l.take_changes());
            l = LedgerPartition::new(rules.clone());
            for (k, v) in &log {
                l.restore(k, v.as_deref()).unwrap();
            }
            l.restored();
        }
        let fx = apply_op(&mut l, op, i);
        alerts += fx.alerts.len();
        events.extend(fx.entries);
        log.extend(l.take_changes());
    }
    (l, events, alerts)
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    // Ids map to one account each (id % 3) and to fixed terms, so a re-send is the same
    // grant; the clock moves forward in steps (a tick of an earlier day changes nothing).
    prop::collection::vec(
        prop_oneof![
            4 => (0usize..40).prop_map(|id| Op::Grant(
                id,
                id % 3,
                id % 2 == 0,
                [0u8, 50, 50, 100][id % 4],
                (id % 3 != 0).then_some(2 + (id as u32 * 7) % 20)
            )),
            6 => (0usize..60).prop_map(|id| Op::Debit(id, id % 3)),
            1 => (1u32..25).prop_map(Op::Tick),
        ],
        0..150,
    )
}

/// The reference model: per account, open grants (id, promotional, priority, expiry, seq,
/// remaining) and debt; the next grant drawn is found by comparing the rules one by one.
/// (id, promotional, priority, expiry, seq, remaining)
type MGrant = (String, bool, u8, Option<DateTime<Utc>>, u64, Decimal);

#[derive(Default, Clone)]
struct Model {
    grants: Vec<MGrant>,
    debt: Decimal,
    seq: u64,
}

fn before(a: &MGrant, b: &MGrant) -> bool {
    if a.2 != b.2 {
        return a.2 < b.2;
    }
    match (a.3, b.3) {
        (Some(x), Some(y)) if x != y => return x < y,
        (Some(_), None) => return true,
        (None, Some(_)) => return false,
        _ => {}
    }
    if a.1 != b.1 {
        return a.1;
    }
    a.4 < b.4
}

impl Model {
    fn draw(&mut self, amount: Decimal) -> Vec<(String, Decimal)> {
        let mut out = Vec::new();
        let mut left = amount;
        while left > Decimal::ZERO && !self.grants.is_empty() {
            let i = (0..self.grants.len())
                .reduce(|b, i| {
                    if before(&self.grants[i], &self.grants[b]) {
                        i
                    } else {
                        b
                    }
                })
                .unwrap();
            let take = left.min(self.grants[i].5);
            self.grants[i].5 -= take;
            left -= take;
            out.push((self.grants[i].0.clone(), -take));
            if self.grants[i].5.is_zero() {
                self.grants.remove(i);
            }
        }
        if left > Decimal::ZERO {
            self.debt += left;
            out.push(("overdraft".into(), -left));
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Balances equal the sum of distinct grants minus the sum of distinct debits minus
    /// what expired, per account, whatever the order and however often each is re-sent;
    /// every entry's funding sums to its amount and equals the reference model's
    /// draw-down; each grant expires at most once, when the clock reaches its expiry, by
    /// exactly what the model has left of it.
    #[test]
    fn every_entry_is_funded_as_the_reference_model_draws(ops in ops_strategy()) {
        let mut l = LedgerPartition::new(LedgerRules {
            debit_horizon: 1_000_000,
            expiry_warning_secs: 86_400,
            ..Default::default()
        });
        let mut models: HashMap<&str, Model> = HashMap::new();
        let mut clock: Option<DateTime<Utc>> = None;
        let mut seen = HashSet::new();
        let mut expired = HashSet::new();
        for (i, op) in ops.iter().enumerate() {
            let fx = apply_op(&mut l, op, i);
            for e in &fx.entries {
                prop_assert_eq!(funding::sum(&e.funded_by), e.amount);
                prop_assert_eq!(e.balance_after, (e.balance_before + e.amount).normalize());
            }
            match op {
                Op::Grant(id, acct, ..) => {
                    let g = grant_of(op).unwrap();
                    let expired_now = g.expires_at.zip(clock).is_some_and(|(e, c)| e <= c);
                    if !seen.insert(*id) || expired_now {
                        prop_assert!(fx.entries.is_empty());
                        continue; // a re-send, or refused: already expired
                    }
                    let m = models.entry(ACCOUNTS[*acct]).or_default();
                    m.seq += 1;
                    prop_assert_eq!(fx.entries.len(), 1);
                    let e = &fx.entries[0];
                    prop_assert_eq!(e.seq, m.seq);
                    let mut want = Vec::new();
                    let repay = m.debt.min(g.amount);
                    if repay > Decimal::ZERO {
                        m.debt -= repay;
                        want.push(("overdraft".to_string(), repay.normalize()));
                    }
                    if g.amount > repay {
                        want.push((g.grant_id.clone(), (g.amount - repay).normalize()));
                        m.grants.push((g.grant_id.clone(), g.category() == Category::Promotional, g.priority(), g.expires_at, m.seq, g.amount - repay));
                    }
                    prop_assert_eq!(funding(e), want);
                }
                Op::Debit(id, acct) => {
                    if !seen.insert(1_000_000 + *id) {
                        prop_assert!(fx.entries.is_empty() && fx.duplicate);
                        continue;
                    }
                    let m = models.entry(ACCOUNTS[*acct]).or_default();
                    m.seq += 1;
                    prop_assert_eq!(fx.entries.len(), 1);
                    let e = &fx.entries[0];
                    prop_assert_eq!((e.kind, e.seq), (EntryKind::Debit, m.seq));
                    let want: Vec<(String, Decimal)> = m.draw(amount_of(*id, false)).into_iter().map(|(g, a)| (g, a.normalize())).collect();
                    prop_assert_eq!(funding(e), want);
                }
                Op::Tick(n) => {
                    if clock.is_some_and(|c| day(*n) <= c) {
                        prop_assert!(fx.entries.is_empty() && fx.alerts.is_empty());
                        continue;
                    }
                    clock = Some(day(*n));
                    // Per account: soonest expiry first, ties in draw-down order.
                    for (acct, m) in models.iter_mut() {
                        let got: Vec<&BalanceEvent> = fx.entries.iter().filter(|e| e.account_id == *acct).collect();
                        let mut gone: Vec<_> = m.grants.iter().filter(|g| g.3.is_some_and(|e| e <= day(*n))).cloned().collect();
                        gone.sort_by(|a, b| a.3.cmp(&b.3).then_with(|| before(b, a).cmp(&before(a, b))));
                        prop_assert_eq!(got.len(), gone.len());
                        for (e, g) in got.into_iter().zip(gone) {
                            m.grants.retain(|x| x.0 != g.0);
                            m.seq += 1;
                            prop_assert_eq!((e.kind, e.seq), (EntryKind::Expiry, m.seq));
                            prop_assert_eq!(funding(e), vec![(g.0.clone(), (-g.5).normalize())]);
                            prop_assert_eq!(e.occurred_at, g.3.unwrap());
                            prop_assert!(expired.insert(g.0.clone()), "expired twice");
                        }
                    }
                }
            }
        }
        for (acct, m) in &models {
            let want = (m.grants.iter().map(|g| g.5).sum::<Decimal>() - m.debt).normalize();
            prop_assert_eq!(l.account(acct).map(|s| s.balance), Some(want));
            let open: Vec<&str> = l.account(acct).unwrap().funds.grants.iter().map(|g| g.grant_id.as_str()).collect();
            let mut model_open: Vec<_> = m.grants.clone();
            model_open.sort_by(|a, b| before(b, a).cmp(&before(a, b)));
            let model_open: Vec<&str> = model_open.iter().map(|g| g.0.as_str()).collect();
            prop_assert_eq!(open, model_open);
        }
    }

    /// Restoring from the changelog at any point and continuing gives exactly the events of
    /// an uninterrupted run.
    #[test]
    fn restore_from_changelog_continues_identically(ops in ops_strategy(), cut in 0usize..150) {
        let (a, ea, na) = run(&ops, None);
        let (b, eb, nb) = run(&ops, Some(cut.min(ops.len())));
        prop_assert_eq!(ea, eb);
        prop_assert_eq!(na, nb);
        let sa: BTreeMap<_, _> = a.accounts().map(|(k, v)| (k.clone(), v.clone())).collect();
        let sb: BTreeMap<_, _> = b.accounts().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(sa, sb);
        prop_assert_eq!(a.next_deadline(), b.next_deadline());
    }

    /// A low-balance alert is raised exactly when a balance crosses a default threshold,
    /// and alerts of one threshold alternate below / recovered.
    #[test]
    fn alerts_match_the_crossings_of_the_balance_path(ops in ops_strategy()) {
        let mut l = LedgerPartition::new(LedgerRules { debit_horizon: 1_000_000, expiry_warning_secs: 0, ..Default::default() });
        let mut path: HashMap<String, Vec<Decimal>> = HashMap::new();
        let mut alerts: HashMap<(String, Decimal), Vec<Crossing>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let fx = apply_op(&mut l, op, i);
            for e in &fx.entries {
                path.entry(e.account_id.clone()).or_insert_with(|| vec![Decimal::ZERO]).push(e.balance_after);
            }
            for a in fx.alerts {
                prop_assert_eq!(a.alert, AlertKind::LowBalance);
                alerts.entry((a.account_id.clone(), a.threshold.unwrap())).or_default().push(a.crossing.unwrap());
            }
        }
        for (acct, p) in &path {
            for t in [d("10"), d("0")] {
                let want: Vec<Crossing> = p.windows(2).filter_map(|w| crossing(w[0], w[1], t)).collect();
                let got = alerts.get(&(acct.clone(), t)).cloned().unwrap_or_default();
                prop_assert_eq!(&got, &want);
                for w in got.windows(2) {
                    prop_assert_ne!(w[0], w[1]);
                }
            }
        }
    }
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
