//! Tests of the ledger core: exact balances, idempotent grants and debits, threshold
//! crossings, and restore from the changelog; property tests against an independent oracle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::debit::{Debit, DebitKind};
use crate::ledger::grant::{Grant, GrantKind};

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap()
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
    }
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
        correction: None,
    }
}

fn applied(o: Outcome) -> (BalanceEvent, Vec<CreditAlert>) {
    match o {
        Outcome::Applied(e, a) => (*e, a),
        other => panic!("expected applied, got {other:?}"),
    }
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
    let (e, _) = applied(l.apply_debit(&debit("dc_1", "a", d("0.96")), 1, src("d", 0)));
    assert_eq!(e.balance_after, d("24.04"));
    assert_eq!(e.amount, d("-0.96"));
    assert_eq!(e.kind, EntryKind::Debit);
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
fn a_resent_grant_or_debit_is_applied_once_and_a_changed_one_is_refused() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    let g = grant("pay-1", "a", GrantKind::Topup, d("25"));
    applied(l.apply_grant(&g, src("g", 0)));
    assert_eq!(l.apply_grant(&g, src("g", 5)), Outcome::Duplicate);
    // The same payment reference on another account is another grant.
    applied(l.apply_grant(&grant("pay-1", "b", GrantKind::Topup, d("25")), src("g", 6)));
    let mut changed = g.clone();
    changed.amount = d("30");
    match l.apply_grant(&changed, src("g", 7)) {
        Outcome::Refused(r) => assert_eq!(r.reason, RejectReason::ConflictingDuplicate),
        o => panic!("{o:?}"),
    }
    applied(l.apply_debit(&debit("dc_1", "a", d("1")), 7, src("d", 0)));
    assert_eq!(
        l.apply_debit(&debit("dc_1", "a", d("1")), 7, src("d", 3)),
        Outcome::Duplicate
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
    // Applied once, like any debit.
    assert_eq!(l.apply_debit(&c, 2, src("d", 2)), Outcome::Duplicate);
    // A negative debit that is not a correction, or a correction without its reference.
    let r = l.apply_debit(&debit("dc_2", "a", d("-1")), 3, src("d", 3));
    assert!(matches!(r, Outcome::Refused(_)), "{r:?}");
    let mut bare = debit("co_2", "a", d("1"));
    bare.kind = DebitKind::Correction;
    let r = l.apply_debit(&bare, 4, src("d", 4));
    assert!(
        matches!(&r, Outcome::Refused(x) if x.message.contains("lacks a correction reference")),
        "{r:?}"
    );
}

#[test]
fn debits_are_never_blocked_by_a_negative_balance() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    let (e, alerts) = applied(l.apply_debit(&debit("dc_1", "a", d("3")), 1, src("d", 0)));
    assert_eq!(e.balance_after, d("-3"));
    // From 0 (already below 10) to -3: only the 0 threshold is crossed.
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].threshold, alerts[0].crossing),
        (d("0"), Crossing::Below)
    );
}

#[test]
fn thresholds_alert_once_per_crossing() {
    let mut l = LedgerPartition::new(LedgerRules::default());
    let mut all = Vec::new();
    all.extend(applied(l.apply_grant(&grant("p1", "a", GrantKind::Topup, d("20")), src("g", 0))).1);
    for i in 0..15 {
        let o = l.apply_debit(
            &debit(&format!("dc_{i}"), "a", d("1")),
            i,
            src("d", i as i64),
        );
        all.extend(applied(o).1);
    }
    // 0 -> 20 recovers 10 (and stays above 0); 20 -> 5 crosses 10 once (at 9), never 0.
    let below: Vec<_> = all
        .iter()
        .filter(|a| a.crossing == Crossing::Below)
        .collect();
    assert_eq!(below.len(), 1);
    assert_eq!(below[0].threshold, d("10"));
    assert_eq!(below[0].balance, d("9"));
    // Back up, then down through both.
    all.extend(applied(l.apply_grant(&grant("p2", "a", GrantKind::Topup, d("10")), src("g", 1))).1);
    all.extend(applied(l.apply_debit(&debit("dc_big", "a", d("100")), 99, src("d", 99))).1);
    let kinds: Vec<_> = all
        .iter()
        .map(|a| (a.threshold.to_string(), a.crossing))
        .collect();
    assert_eq!(
        kinds,
        [
            ("10".to_string(), Crossing::Recovered),
            ("10".to_string(), Crossing::Below),
            ("10".to_string(), Crossing::Recovered),
            ("10".to_string(), Crossing::Below),
            ("0".to_string(), Crossing::Below),
        ]
    );
    let ids: HashSet<_> = all.iter().map(|a| a.alert_id.clone()).collect();
    assert_eq!(ids.len(), all.len());
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
    match l.apply_grant(
        &grant("p9", "a", GrantKind::Topup, d("1000000000")),
        src("g", 9),
    ) {
        Outcome::Refused(r) => assert_eq!(r.reason, RejectReason::InvalidAmount),
        o => panic!("{o:?}"),
    }
    assert_eq!(l.account("a").unwrap().balance, d("9000000000"));
}

#[test]
fn debit_ids_are_forgotten_beyond_the_horizon_with_a_tombstone() {
    let mut l = LedgerPartition::new(LedgerRules {
        debit_horizon: 10,
        ..Default::default()
    });
    applied(l.apply_debit(&debit("dc_1", "a", d("1")), 1, src("d", 0)));
    assert_eq!(
        l.apply_debit(&debit("dc_1", "a", d("1")), 1, src("d", 10)),
        Outcome::Duplicate
    );
    l.take_changes();
    applied(l.apply_debit(&debit("dc_2", "a", d("1")), 2, src("d", 11)));
    assert_eq!(l.remembered_debits(), 1);
    let changes = l.take_changes();
    assert!(changes.contains(&(b"d/dc_1".to_vec(), None)), "{changes:?}");
}

/// One input of a generated run.
#[derive(Debug, Clone)]
enum Op {
    Grant(usize, usize),
    Debit(usize, usize),
}

fn amount_of(id: usize, grant: bool) -> Decimal {
    // Deterministic per id, so a re-send carries the same content.
    if grant {
        Decimal::new(1000 + (id as i64 * 7919) % 50_000, 2) // 10.00 .. 509.99
    } else {
        Decimal::new(1 + (id as i64 * 104_729) % 9_000_000, 6)
    }
}

fn run(ops: &[Op], restart_at: Option<usize>) -> (LedgerPartition, Vec<BalanceEvent>, usize) {
    let rules = LedgerRules {
        thresholds: vec![d("10"), d("0")],
        debit_horizon: 1_000_000,
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
        let accounts = ["a", "b", "c"];
        let o = match op {
            Op::Grant(id, acct) => l.apply_grant(
                &grant(
                    &format!("pay-{id}"),
                    accounts[*acct],
                    GrantKind::Topup,
                    amount_of(*id, true),
                ),
                src("g", i as i64),
            ),
            Op::Debit(id, acct) => l.apply_debit(
                &debit(&format!("dc_{id}"), accounts[*acct], amount_of(*id, false)),
                *id as u64,
                src("d", i as i64),
            ),
        };
        if let Outcome::Applied(e, a) = o {
            alerts += a.len();
            events.push(*e);
        }
        log.extend(l.take_changes());
    }
    (l, events, alerts)
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    // Ids map to one account each (id % 3), so a re-send is the same grant or debit.
    prop::collection::vec(
        (any::<bool>(), 0usize..40).prop_map(|(g, id)| {
            if g {
                Op::Grant(id, id % 3)
            } else {
                Op::Debit(id, id % 3)
            }
        }),
        0..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Balances equal the sum of distinct grants minus the sum of distinct debits, per
    /// account, whatever the order and however often each is re-sent.
    #[test]
    fn balances_equal_grants_minus_debits(ops in ops_strategy(), seed in any::<u64>()) {
        let mut shuffled = ops.clone();
        // A deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut oracle: BTreeMap<&str, Decimal> = BTreeMap::new();
        let mut seen = HashSet::new();
        for op in &ops {
            let (key, acct, amount) = match op {
                Op::Grant(id, a) => ((true, *id), *a, amount_of(*id, true)),
                Op::Debit(id, a) => ((false, *id), *a, -amount_of(*id, false)),
            };
            if seen.insert(key) {
                *oracle.entry(["a", "b", "c"][acct]).or_default() += amount;
            }
        }
        for order in [&ops, &shuffled] {
            let (l, events, _) = run(order, None);
            for (acct, want) in &oracle {
                prop_assert_eq!(l.account(acct).map(|s| s.balance), Some(want.normalize()));
            }
            prop_assert_eq!(events.len(), seen.len());
            // Each account's events form 1..n with balance_after = before + amount.
            let mut last: HashMap<&str, (u64, Decimal)> = HashMap::new();
            for e in &events {
                let (seq, bal) = last.get(e.account_id.as_str()).copied().unwrap_or((0, Decimal::ZERO));
                prop_assert_eq!(e.seq, seq + 1);
                prop_assert_eq!(e.balance_before, bal);
                prop_assert_eq!(e.balance_after, (bal + e.amount).normalize());
                last.insert(e.account_id.as_str(), (e.seq, e.balance_after));
            }
        }
    }

    /// Restoring from the changelog at any point and continuing gives exactly the events of
    /// an uninterrupted run.
    #[test]
    fn restore_from_changelog_continues_identically(ops in ops_strategy(), cut in 0usize..200) {
        let (a, ea, na) = run(&ops, None);
        let (b, eb, nb) = run(&ops, Some(cut.min(ops.len())));
        prop_assert_eq!(ea, eb);
        prop_assert_eq!(na, nb);
        let sa: BTreeMap<_, _> = a.accounts().map(|(k, v)| (k.clone(), v.clone())).collect();
        let sb: BTreeMap<_, _> = b.accounts().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(sa, sb);
    }

    /// An alert is raised exactly when a balance crosses a threshold, and alerts of one
    /// threshold alternate below / recovered.
    #[test]
    fn alerts_match_the_crossings_of_the_balance_path(ops in ops_strategy()) {
        let mut l = LedgerPartition::new(LedgerRules { thresholds: vec![d("10"), d("0")], debit_horizon: 1_000_000 });
        let mut path: HashMap<String, Vec<Decimal>> = HashMap::new();
        let mut alerts: HashMap<(String, Decimal), Vec<Crossing>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let o = match op {
                Op::Grant(id, a) => l.apply_grant(&grant(&format!("pay-{id}"), ["a", "b", "c"][*a], GrantKind::Topup, amount_of(*id, true)), src("g", i as i64)),
                Op::Debit(id, a) => l.apply_debit(&debit(&format!("dc_{id}"), ["a", "b", "c"][*a], amount_of(*id, false)), *id as u64, src("d", i as i64)),
            };
            if let Outcome::Applied(e, al) = o {
                path.entry(e.account_id.clone()).or_insert_with(|| vec![Decimal::ZERO]).push(e.balance_after);
                for a in al {
                    alerts.entry((a.account_id.clone(), a.threshold)).or_default().push(a.crossing);
                }
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
