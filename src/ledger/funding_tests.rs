//! Tests of the draw-down order: worked examples, and a property test of [`Funds`] against a
//! small reference model that picks the next grant by comparing two grants rule by rule.

use std::str::FromStr;

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn day(n: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, n, 0, 0, 0).unwrap()
}

fn g(id: &str, cat: Category, prio: u8, exp: Option<u32>, seq: u64, amount: &str) -> OpenGrant {
    OpenGrant {
        grant_id: id.into(),
        category: cat,
        priority: prio,
        expires_at: exp.map(day),
        seq,
        amount: d(amount),
        remaining: d(amount),
        warned: false,
    }
}

fn ids(f: &Funds) -> Vec<&str> {
    f.grants.iter().map(|g| g.grant_id.as_str()).collect()
}

fn line(id: Option<&str>, c: FundingCategory, a: &str) -> FundingLine {
    FundingLine {
        grant_id: id.map(str::to_string),
        category: c,
        amount: d(a),
    }
}

#[test]
fn the_order_is_priority_then_expiry_then_promotional_then_oldest() {
    use Category::*;
    let mut f = Funds::default();
    for x in [
        g("paid-never", Paid, 50, None, 1, "10"),
        g("promo-never", Promotional, 50, None, 2, "10"),
        g("paid-day9", Paid, 50, Some(9), 3, "10"),
        g("promo-day9", Promotional, 50, Some(9), 4, "10"),
        g("paid-day5", Paid, 50, Some(5), 5, "10"),
        g("paid-prio10-never", Paid, 10, None, 6, "10"),
        g("promo-day9-older", Promotional, 50, Some(9), 0, "10"),
    ] {
        f.credit(x);
    }
    assert_eq!(
        ids(&f),
        [
            "paid-prio10-never",
            "paid-day5",
            "promo-day9-older",
            "promo-day9",
            "paid-day9",
            "promo-never",
            "paid-never"
        ]
    );
}

#[test]
fn the_worked_example_of_the_docs() {
    // docs/credits.md, "The draw-down order": a paid top-up of 20 (never expires), a
    // promotional voucher of 15 expiring on the 31st, a paid grant of 5 at priority 10.
    use Category::*;
    use FundingCategory as F;
    let mut f = Funds::default();
    f.credit(g("pay_1", Paid, 50, None, 1, "20"));
    f.credit(g("vch_1", Promotional, 50, Some(31), 2, "15"));
    f.credit(g("adj_1", Paid, 10, None, 3, "5"));
    assert_eq!(f.balance(), d("40"));
    let (lines, closed) = f.draw(d("12"));
    assert_eq!(
        lines,
        [
            line(Some("adj_1"), F::Paid, "-5"),
            line(Some("vch_1"), F::Promotional, "-7")
        ]
    );
    assert_eq!(closed.len(), 1);
    assert_eq!(sum(&lines), d("-12"));
    let (lines, _) = f.draw(d("30"));
    assert_eq!(
        lines,
        [
            line(Some("vch_1"), F::Promotional, "-8"),
            line(Some("pay_1"), F::Paid, "-20"),
            line(None, F::Overdraft, "-2")
        ]
    );
    assert_eq!((f.balance(), f.overdraft), (d("-2"), d("2")));
    assert!(f.grants.is_empty());
    // The next grant repays the overdraft first.
    let (lines, opened) = f.credit(g("pay_2", Paid, 50, None, 6, "25"));
    assert!(opened);
    assert_eq!(
        lines,
        [
            line(None, F::Overdraft, "2"),
            line(Some("pay_2"), F::Paid, "23")
        ]
    );
    assert_eq!(f.grants[0].remaining, d("23"));
    assert_eq!(f.grants[0].amount, d("25"));
    assert_eq!(f.balance(), d("23"));
}

#[test]
fn a_grant_smaller_than_the_overdraft_never_opens() {
    let mut f = Funds::default();
    f.draw(d("10"));
    let (lines, opened) = f.credit(g("p", Category::Paid, 50, None, 2, "4"));
    assert!(!opened);
    assert_eq!(lines, [line(None, FundingCategory::Overdraft, "4")]);
    assert_eq!((f.balance(), f.grants.len()), (d("-6"), 0));
}

#[test]
fn expiry_forfeits_the_remainder_once() {
    let mut f = Funds::default();
    f.credit(g("v", Category::Promotional, 50, Some(2), 1, "15"));
    f.credit(g("p", Category::Paid, 50, None, 2, "10"));
    f.draw(d("4"));
    let (gone, line) = f.expire("v").unwrap();
    assert_eq!(gone.remaining, d("11"));
    assert_eq!(line.amount, d("-11"));
    assert!(f.expire("v").is_none());
    assert_eq!(f.balance(), d("10"));
    assert!(f.next_expiry().is_none());
}

#[test]
fn a_zero_draw_has_no_lines() {
    let mut f = Funds::default();
    f.credit(g("p", Category::Paid, 50, None, 1, "10"));
    let (lines, closed) = f.draw(Decimal::ZERO);
    assert!(lines.is_empty() && closed.is_empty());
    assert_eq!(f.balance(), d("10"));
}

// ---- the reference model ------------------------------------------------------------

/// A grant of the model: (id, category, priority, expiry day, seq, remaining).
#[derive(Debug, Clone)]
struct MGrant {
    id: String,
    promotional: bool,
    priority: u8,
    expires: Option<u32>,
    seq: u64,
    remaining: Decimal,
}

/// True when `a` is drawn before `b`: the rules of the issue, one at a time.
fn drawn_before(a: &MGrant, b: &MGrant) -> bool {
    if a.priority != b.priority {
        return a.priority < b.priority;
    }
    match (a.expires, b.expires) {
        (Some(x), Some(y)) if x != y => return x < y,
        (Some(_), None) => return true,
        (None, Some(_)) => return false,
        _ => {}
    }
    if a.promotional != b.promotional {
        return a.promotional;
    }
    a.seq < b.seq
}

#[derive(Debug, Default)]
struct Model {
    grants: Vec<MGrant>,
    debt: Decimal,
}

impl Model {
    /// (grant id or "overdraft", signed amount) per line.
    fn draw(&mut self, amount: Decimal) -> Vec<(String, Decimal)> {
        let mut out = Vec::new();
        let mut left = amount;
        while left > Decimal::ZERO {
            let Some(i) = (0..self.grants.len()).reduce(|best, i| {
                if drawn_before(&self.grants[i], &self.grants[best]) {
                    i
                } else {
                    best
                }
            }) else {
                break;
            };
            let take = left.min(self.grants[i].remaining);
            self.grants[i].remaining -= take;
            left -= take;
            out.push((self.grants[i].id.clone(), -take));
            if self.grants[i].remaining.is_zero() {
                self.grants.remove(i);
            }
        }
        if left > Decimal::ZERO {
            self.debt += left;
            out.push(("overdraft".into(), -left));
        }
        out
    }

    fn credit(&mut self, mut g: MGrant) -> Vec<(String, Decimal)> {
        let mut out = Vec::new();
        let repay = self.debt.min(g.remaining);
        if repay > Decimal::ZERO {
            self.debt -= repay;
            g.remaining -= repay;
            out.push(("overdraft".into(), repay));
        }
        if g.remaining > Decimal::ZERO {
            out.push((g.id.clone(), g.remaining));
            self.grants.push(g);
        }
        out
    }

    /// Expires every grant due by `day`, soonest first.
    fn expire(&mut self, day: u32) -> Vec<(String, Decimal)> {
        let mut due: Vec<MGrant> = self
            .grants
            .iter()
            .filter(|g| g.expires.is_some_and(|e| e <= day))
            .cloned()
            .collect();
        due.sort_by(|a, b| {
            a.expires
                .cmp(&b.expires)
                .then_with(|| drawn_before(b, a).cmp(&drawn_before(a, b)))
        });
        self.grants.retain(|g| g.expires.is_none_or(|e| e > day));
        due.into_iter().map(|g| (g.id, -g.remaining)).collect()
    }

    fn balance(&self) -> Decimal {
        self.grants.iter().map(|g| g.remaining).sum::<Decimal>() - self.debt
    }
}

#[derive(Debug, Clone)]
enum Op {
    Grant {
        promotional: bool,
        priority: u8,
        expires: Option<u32>,
        cents: i64,
    },
    Draw(i64),
    Expire(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            any::<bool>(),
            prop::sample::select(vec![0u8, 10, 50, 50, 100]),
            prop::option::of(1u32..28),
            1i64..5_000
        )
            .prop_map(|(promotional, priority, expires, cents)| Op::Grant {
                promotional,
                priority,
                expires,
                cents
            }),
        (0i64..6_000).prop_map(Op::Draw),
        (1u32..28).prop_map(Op::Expire),
    ]
}

fn lines_of(lines: &[FundingLine]) -> Vec<(String, Decimal)> {
    lines
        .iter()
        .map(|l| {
            (
                l.grant_id.clone().unwrap_or_else(|| "overdraft".into()),
                l.amount,
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any interleaving of grants, draws and expiries: every line equals the model's, the
    /// lines sum to the change, and the invariants hold after each step.
    #[test]
    fn funds_follow_the_reference_model(ops in prop::collection::vec(op(), 0..80)) {
        let mut f = Funds::default();
        let mut m = Model::default();
        for (seq, op) in ops.iter().enumerate() {
            let seq = seq as u64 + 1;
            match op {
                Op::Grant { promotional, priority, expires, cents } => {
                    let amount = Decimal::new(*cents, 2);
                    let cat = if *promotional { Category::Promotional } else { Category::Paid };
                    let id = format!("g{seq}");
                    let (lines, _) = f.credit(g(&id, cat, *priority, *expires, seq, &amount.to_string()));
                    prop_assert_eq!(sum(&lines), amount.normalize());
                    let want = m.credit(MGrant { id, promotional: *promotional, priority: *priority, expires: *expires, seq, remaining: amount });
                    prop_assert_eq!(lines_of(&lines), want);
                }
                Op::Draw(cents) => {
                    let amount = Decimal::new(*cents, 2);
                    let (lines, _) = f.draw(amount);
                    prop_assert_eq!(sum(&lines), (-amount).normalize());
                    prop_assert_eq!(lines_of(&lines), m.draw(amount));
                }
                Op::Expire(day_n) => {
                    // The core expires due grants soonest first, ties in draw-down order.
                    let mut due: Vec<&OpenGrant> = f.grants.iter().filter(|x| x.expires_at.is_some_and(|e| e <= day(*day_n))).collect();
                    due.sort_by_key(|x| (x.expires_at, x.order_key()));
                    let due: Vec<String> = due.into_iter().map(|x| x.grant_id.clone()).collect();
                    let mut got = Vec::new();
                    for id in due {
                        let (_, l) = f.expire(&id).unwrap();
                        got.push(l);
                    }
                    prop_assert_eq!(lines_of(&got), m.expire(*day_n));
                }
            }
            prop_assert_eq!(f.balance(), m.balance().normalize());
            prop_assert!(f.overdraft.is_zero() || f.grants.is_empty());
            prop_assert!(f.grants.iter().all(|x| x.remaining > Decimal::ZERO));
            prop_assert!(f.grants.windows(2).all(|w| w[0].order_key() < w[1].order_key()));
        }
    }
}
