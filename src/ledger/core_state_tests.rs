//! What a ledger partition remembers and restores: the exact balance range, debit ids within
//! the horizon (tombstones beyond it, marks re-keyed by digest), refusals within their
//! bound, and a format-0 state restored with an opening grant.

use super::tests::{applied, d, debit, funding, grant, refused, src};
use super::*;
use crate::ledger::answer::GrantState;
use crate::ledger::command::Ids;

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
fn the_debit_memory_never_grows_while_it_churns() {
    // Its steady size is reserved once it holds 1/16 of the horizon
    // (rollup::dedupe::SteadySize): without that, the table doubles some way
    // into the churn (docs/design.md).
    let mut l = LedgerPartition::new(LedgerRules {
        debit_horizon: 2_000,
        ..Default::default()
    });
    let debit_at = |l: &mut LedgerPartition, i: i64| {
        let id = format!("dc_{i}");
        applied(l.apply_debit(&debit(&id, "a", d("1")), i as u64, src("d", i)));
        if i % 1_000 == 0 {
            l.take_changes();
        }
    };
    for i in 0..125 {
        debit_at(&mut l, i);
    }
    assert!(l.debits.capacity() < 1_000, "small while it is small");
    for i in 125..2_000 {
        debit_at(&mut l, i);
    }
    let sized = (l.debits.capacity(), l.debit_order.capacity());
    assert!(sized.0 >= 4_000, "{sized:?}");
    for i in 2_000..40_000 {
        debit_at(&mut l, i);
    }
    assert_eq!(l.remembered_debits(), 2_001, "offsets o-2000..=o");
    // `capacity()` is entries + spare room: tombstones lower it until an in-place rehash;
    // a grown table would show more.
    assert!(
        l.debits.capacity() <= sized.0 && l.debit_order.capacity() == sized.1,
        "sized once: {sized:?}, now ({}, {})",
        l.debits.capacity(),
        l.debit_order.capacity()
    );
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
