//! Generated runs of the ledger core against an independent reference model of the draw-down
//! order: funding of every entry, restore from the changelog at any point, and low-balance
//! alerts at exactly the crossings of the balance path.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::tests::{d, day, debit, funding, src, termed};
use super::*;
use crate::ledger::funding::{self, Category};

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
