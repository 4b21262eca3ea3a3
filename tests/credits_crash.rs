//! The ledger (and the voucher stage, in the same process) under a kill -9 storm of at least
//! 50 SIGKILLs while a mix arrives: top-ups of several priorities and expiries, positive
//! (promotional, some expiring during the run) and negative adjustments, voucher
//! redemptions (races for a limited voucher, double redemptions, retried requests; one
//! voucher's credits expire during the run), automatic top-ups (a simulated payment
//! service pays each `topup_requested` as it reads it) and debits, some repeated. Refusals
//! are mixed in: top-ups under the minimum of 10 and re-sends of a payment reference with
//! another amount.
//!
//! Checked against models of the test's own, fed with what was sent and the order the log
//! holds (never with the ledger's state): every entry once, the balance chain, every final
//! balance; the funding of every entry (`funded_by`) recomputed by an independent draw-down
//! model, each expiry once and only of a grant with credits left; every voucher decision;
//! one top-up request per crossing; and every refusal still a refusal (dead-lettered once
//! per send, answered `refused` once per send, its status `refused`, never an entry).
//!
//! Here the run and its checks; credits_crash/model.rs the independent draw-down model,
//! credits_crash/send.rs what is sent (the plan's steps, the feeder, the payment service).

mod common;
#[path = "credits_crash/model.rs"]
mod model;
#[path = "credits_crash/send.rs"]
mod send;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::ledger::*;
use common::*;
use model::*;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use send::*;
use usage_aggregator::debit::Debit;
use usage_aggregator::ledger::answer::{LedgerAnswer, Verdict};
use usage_aggregator::ledger::client;
use usage_aggregator::ledger::command::Request;
use usage_aggregator::ledger::core::{BalanceEvent, EntryKind, GrantTerms, TopupRequest};
use usage_aggregator::ledger::funding::Category;
use usage_aggregator::ledger::grant::{Grant, GrantKind};
use usage_aggregator::ledger::thresholds::AutoTopup;
use usage_aggregator::ledger::voucher::{self, VoucherOutcome, VoucherRequest, VoucherResult};

const ACCOUNTS: usize = 30;
/// Accounts 0..AUTO have an automatic top-up rule: below 10, buy 25.
const AUTO: usize = 8;
const KILLS: usize = 50;

#[test]
fn credits_kill9_storm_mixed_grants_vouchers_autotopups_and_refusals_stay_exact() {
    let mut env = ledger_env("ccrash");
    let cfg = env.cfg.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(27);
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|i| format!("{}-acct-{i:02}", env.name))
        .collect();
    // Vouchers: a race (5 of many), a plain one, one whose credits expire 25 s after each
    // redemption (priority 95: drawn late, so that they expire with credits left).
    let vouchers = [
        ("RACE-CRASH-0001", "7.5", 5u32, None, None),
        ("PLAIN-CRASH-0002", "4", 30, None, None),
        ("SHORT-CRASH-0003", "3", 30, Some("25s"), Some("95")),
    ];
    let mut ledger = env.spawn("ledger", "ledger.log");
    let assigned = |env: &TestEnv| {
        env.log("ledger.log")
            .matches("partitions assigned stage=\"ledger\"")
            .count()
    };
    env.wait_for("the ledger to be assigned", Duration::from_secs(60), || {
        assigned(&env) > 0
    });
    for (code, credits, max, valid_for, prio) in vouchers {
        let max = max.to_string();
        let mut args = vec![
            "vouchers",
            "create",
            code,
            "--credits",
            credits,
            "--max-redemptions",
            &max,
        ];
        if let Some(v) = valid_for {
            args.extend(["--credits-valid-for", v]);
        }
        if let Some(p) = prio {
            args.extend(["--priority", p]);
        }
        let out = env.cli(&args);
        assert!(out.contains("created"), "{out}");
    }
    // The plan. Grants: top-ups (priority 0-100, a third expiring long after the run),
    // adjustments (promotional with an expiry 15-40 s after they are sent, or negative).
    let mut grants: Vec<(Grant, Option<u64>)> = Vec::new();
    for i in 0..360 {
        let account = accounts[rng.random_range(0..ACCOUNTS)].clone();
        let amount = Decimal::new(rng.random_range(1_000..6_000), 2);
        let mut g = Grant::new(
            format!("pay-{i}"),
            GrantKind::Topup,
            account,
            amount,
            Utc::now(),
        );
        let mut expires_in = None;
        match i % 6 {
            0 => g.priority = Some(rng.random_range(0..=100)),
            1 => g.expires_at = Some(Utc::now() + chrono::Duration::days(400)),
            2 => {
                g.kind = GrantKind::Adjustment;
                g.grant_id = format!("adj-{i}");
                g.reason = Some("goodwill".into());
                g.category = Some(Category::Promotional);
                // Drawn last: most still hold credits when they expire.
                g.priority = Some(100);
                g.amount = Decimal::new(rng.random_range(100..2_000), 2);
                expires_in = Some(rng.random_range(15..40));
            }
            3 if i % 4 == 3 => {
                g.kind = GrantKind::Adjustment;
                g.grant_id = format!("adj-{i}");
                g.reason = Some("refund fee".into());
                g.amount = Decimal::new(-rng.random_range(100..3_000), 2);
            }
            _ => {}
        }
        grants.push((g, expires_in));
    }
    let debits: Vec<Debit> = (0..3_000)
        .map(|i| {
            let account = &accounts[rng.random_range(0..ACCOUNTS)];
            let cost = Decimal::new(rng.random_range(1..8_000_000_000_000i64), 12);
            debit(&format!("dc_{}_{i}", env.name), account, cost)
        })
        .collect();
    // Redemptions: (request id, account, voucher); some accounts ask twice (a second
    // request id: refused already_redeemed), some requests are retried (the same id).
    let mut redeems: Vec<(String, usize, usize)> = Vec::new();
    for i in 0..90 {
        let who = if i % 9 == 8 {
            redeems[rng.random_range(0..redeems.len())].1
        } else {
            rng.random_range(0..ACCOUNTS)
        };
        redeems.push((format!("rd-{i}"), who, rng.random_range(0..vouchers.len())));
    }
    let mut plan: Vec<Step> = Vec::new();
    for i in 0..grants.len() {
        for _ in 0..rng.random_range(1..=3) {
            plan.push(Step::Grant(i));
        }
    }
    for i in 0..40 {
        plan.push(Step::Bad(i));
        if i % 3 == 0 {
            plan.push(Step::Bad(i));
        }
    }
    for i in (0..grants.len()).step_by(24) {
        plan.push(Step::Conflict(i));
    }
    for i in 0..debits.len() {
        plan.push(Step::Debit(i));
        if i % 7 == 0 {
            plan.push(Step::Debit(i));
        }
    }
    for i in 0..redeems.len() {
        plan.push(Step::Redeem(i));
        if i % 10 == 4 {
            plan.push(Step::Redeem(i));
        }
    }
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.random_range(0..=i));
    }
    let sends = plan.len();

    let rt = tokio::runtime::Runtime::new().unwrap();
    // The automatic top-up rules, answered before the storm (each account is at 0, below
    // 10: one request each at once).
    rt.block_on(async {
        let f = client::LedgerFollower::start(&cfg).unwrap();
        let p = client::producer(&cfg).unwrap();
        for a in &accounts[..AUTO] {
            let req = Request::SetAutoTopup {
                request_id: client::new_id("auto"),
                account_id: a.clone(),
                rule: Some(AutoTopup {
                    below: Decimal::TEN,
                    fixed: Some(Decimal::from(25)),
                    refill_to: None,
                }),
            };
            let a = f
                .command(&cfg, &p, &req, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(a.verdict, Verdict::Answered, "{a:?}");
        }
    });

    // The payment service: pays every top-up request it reads (grant id = request id).
    let stop = Arc::new(AtomicBool::new(false));
    let payer = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        let name = env.name.clone();
        std::thread::spawn(move || pay_requests(&cfg, &name, &stop))
    };
    let feeder = {
        let cfg = cfg.clone();
        let grants = grants.clone();
        let debits = debits.clone();
        let redeems = redeems.clone();
        let accounts = accounts.clone();
        let codes: Vec<String> = vouchers.iter().map(|v| v.0.to_string()).collect();
        std::thread::spawn(move || feed(&cfg, plan, &grants, &debits, &redeems, &accounts, &codes))
    };

    let started = Instant::now();
    let mut kills = 0;
    let mut seen = assigned(&env);
    while kills < KILLS || !feeder.is_finished() {
        env.wait_for(
            "the restarted ledger to be assigned",
            Duration::from_secs(60),
            || assigned(&env) >= seen,
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(200..1_500)));
        env.kill9(ledger);
        kills += 1;
        seen = assigned(&env) + 1;
        ledger = env.spawn("ledger", "ledger.log");
    }
    let sent = feeder.join().unwrap();
    let stormed = started.elapsed();

    // The voucher decisions, modelled from the request log in its order.
    let code_of: HashMap<String, usize> = vouchers
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                voucher::code_hash(&voucher::normalize_code(v.0).unwrap()),
                i,
            )
        })
        .collect();
    let mut winners: Vec<Vec<(String, String)>> = vec![Vec::new(); vouchers.len()];
    let mut decided: Vec<(String, VoucherOutcome, Option<&str>)> = Vec::new();
    for (_, _, _, v) in read_all(&env, &cfg.topics.voucher_requests) {
        let VoucherRequest::Redeem {
            request_id,
            code_hash,
            account_id,
            ..
        } = serde_json::from_slice(&v).unwrap()
        else {
            continue;
        };
        let i = code_of[&code_hash];
        let w = &mut winners[i];
        let outcome = match w.iter().find(|(_, a)| *a == account_id) {
            Some((r, _)) if *r == request_id => (VoucherOutcome::Granted, None),
            Some(_) => (VoucherOutcome::Refused, Some("already_redeemed")),
            None if w.len() as u32 >= vouchers[i].2 => (VoucherOutcome::Refused, Some("exhausted")),
            None => {
                w.push((request_id.clone(), account_id));
                (VoucherOutcome::Granted, None)
            }
        };
        decided.push((request_id, outcome.0, outcome.1));
    }
    let voucher_grants: HashMap<String, (usize, String)> = winners
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            let hash = code_of.iter().find(|(_, j)| **j == i).unwrap().0.clone();
            w.iter()
                .map(move |(_, a)| (voucher::voucher_grant_id(&hash, a), (i, a.clone())))
        })
        .collect();

    // Settle: every planned entry in, the payer idle, every due expiry done, nothing new.
    let planned: HashMap<(String, String), &Grant> = sent
        .grants
        .iter()
        .map(|g| ((g.account_id.clone(), g.grant_id.clone()), g))
        .collect();
    let distinct_debits: HashSet<&str> = debits.iter().map(|d| d.debit_id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = usize::MAX;
    let mut missing = String::new();
    let (events, requests) = loop {
        assert!(
            Instant::now() < deadline,
            "the ledger did not settle in 300 s; at the last look: {missing}"
        );
        std::thread::sleep(Duration::from_secs(3));
        let events = balance_events(&env);
        let requests: Vec<TopupRequest> = read_all(&env, &cfg.topics.topup_requests)
            .into_iter()
            .map(|(_, _, _, v)| serde_json::from_slice(&v).unwrap())
            .collect();
        let refs: HashSet<&str> = events.iter().map(|(_, e)| e.reference.as_str()).collect();
        let now = Utc::now() - chrono::Duration::seconds(5);
        let due_open = expiring_open(&events, now);
        let lacking = |ids: Vec<&str>| -> String {
            let n = ids.iter().filter(|i| !refs.contains(*i)).count();
            let some: Vec<&&str> = ids.iter().filter(|i| !refs.contains(*i)).take(5).collect();
            format!("{n} (e.g. {some:?})")
        };
        missing = format!(
            "{} entries; planned grants without an entry: {}; debits without an entry: {}; \
             voucher grants without an entry: {}; top-up requests unpaid: {}; open grants past \
             their expiry: {} {:?}; top-up requests on the topic: {}",
            events.len(),
            lacking(planned.keys().map(|(_, g)| g.as_str()).collect()),
            lacking(distinct_debits.iter().copied().collect()),
            lacking(voucher_grants.keys().map(String::as_str).collect()),
            lacking(requests.iter().map(|r| r.request_id.as_str()).collect()),
            due_open.len(),
            due_open.iter().take(5).collect::<Vec<_>>(),
            requests.len(),
        );
        let done = planned.keys().all(|(_, g)| refs.contains(g.as_str()))
            && distinct_debits.iter().all(|d| refs.contains(d))
            && voucher_grants.keys().all(|g| refs.contains(g.as_str()))
            && requests
                .iter()
                .all(|r| refs.contains(r.request_id.as_str()))
            && due_open.is_empty();
        if done && events.len() == last {
            break (events, requests);
        }
        last = if done { events.len() } else { usize::MAX };
    };
    stop.store(true, Ordering::Relaxed);
    let paid = payer.join().unwrap();
    let settled = started.elapsed();

    // Every entry once; per account a gapless seq and a balance chain.
    let ids: HashSet<&str> = events.iter().map(|(_, e)| e.entry_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        events.len(),
        "an entry twice on the balances topic"
    );
    let mut by_account: BTreeMap<&str, Vec<&BalanceEvent>> = BTreeMap::new();
    for (_, e) in &events {
        by_account.entry(e.account_id.as_str()).or_default().push(e);
    }
    // The independent oracle: what was sent, in the log's order per account.
    let requested: HashMap<&str, &TopupRequest> = requests
        .iter()
        .map(|r| (r.request_id.as_str(), r))
        .collect();
    assert_eq!(requested.len(), requests.len(), "a top-up request twice");
    let debit_of: HashMap<&str, &Debit> = debits.iter().map(|d| (d.debit_id.as_str(), d)).collect();
    let mut expiries = 0;
    let mut funding_lines = 0;
    for (account, entries) in &by_account {
        let mut model = Model::default();
        let mut pending = false;
        let mut crossings = 0;
        let has_rule = accounts[..AUTO].iter().any(|a| a.as_str() == *account);
        if has_rule {
            // Set at 0 before any entry: below 10 at once.
            pending = true;
            crossings = 1;
        }
        let mut granted = HashSet::new();
        for (n, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, n as u64 + 1, "{account} seq");
            let before = entries
                .get(n.wrapping_sub(1))
                .map_or(Decimal::ZERO, |p| p.balance_after);
            assert_eq!(e.balance_before, before, "{account} seq {}", e.seq);
            let key = (account.to_string(), e.reference.clone());
            let lines = match e.kind {
                EntryKind::Debit => {
                    let d = debit_of[e.reference.as_str()];
                    assert_eq!(e.amount, (-d.total).normalize());
                    model.draw(d.total)
                }
                EntryKind::Expiry => {
                    expiries += 1;
                    model.expire(&e.reference).unwrap_or_else(|| {
                        panic!("{account}: expiry of a closed grant {}", e.reference)
                    })
                }
                kind => {
                    assert!(
                        granted.insert(e.reference.clone()),
                        "{account}: {} applied twice",
                        e.reference
                    );
                    let terms = e.grant.clone();
                    let (amount, want_terms) = if let Some(g) = planned.get(&key) {
                        assert_eq!(g.kind.as_str(), kind.as_str());
                        let t = g.adds_credits().then(|| GrantTerms {
                            category: g.category(),
                            priority: g.priority(),
                            expires_at: g.expires_at,
                        });
                        (g.amount, t)
                    } else if let Some((i, a)) = voucher_grants.get(&e.reference) {
                        assert_eq!((kind, *a == **account), (EntryKind::Voucher, true));
                        let prio = vouchers[*i].4.map_or(50, |p| p.parse().unwrap());
                        let t = terms.clone().unwrap();
                        assert_eq!((t.category, t.priority), (Category::Promotional, prio));
                        assert_eq!(t.expires_at.is_some(), vouchers[*i].3.is_some());
                        (vouchers[*i].1.parse().unwrap(), Some(t))
                    } else if let Some(r) = requested.get(e.reference.as_str()) {
                        assert_eq!((kind, r.account_id.as_str()), (EntryKind::Topup, *account));
                        (
                            r.amount,
                            Some(GrantTerms {
                                category: Category::Paid,
                                priority: 50,
                                expires_at: None,
                            }),
                        )
                    } else {
                        panic!("{account}: an entry nobody sent: {e:?}");
                    };
                    assert_eq!(e.amount, amount.normalize(), "{account} {}", e.reference);
                    assert_eq!(terms, want_terms, "{account} {}", e.reference);
                    match want_terms {
                        Some(t) => model.credit(&e.reference, &t, amount, e.seq),
                        None => model.draw(-amount),
                    }
                }
            };
            let got: Vec<Line> = e
                .funded_by
                .iter()
                .map(|l| (l.grant_id.clone(), l.category, l.amount))
                .collect();
            funding_lines += got.len();
            assert_eq!(norm(got), norm(lines), "{account} seq {} funded_by", e.seq);
            assert_eq!(
                e.balance_after,
                model.balance().normalize(),
                "{account} seq {}",
                e.seq
            );
            assert_eq!(
                e.overdraft,
                model.overdraft.normalize(),
                "{account} seq {}",
                e.seq
            );
            if has_rule {
                if e.balance_after >= Decimal::TEN {
                    pending = false;
                } else if !pending {
                    pending = true;
                    crossings += 1;
                }
            }
        }
        let asked = requests.iter().filter(|r| r.account_id == *account).count();
        assert_eq!(
            asked, crossings,
            "{account}: one top-up request per crossing"
        );
    }
    // Every account that was sent something has entries; the payer paid each request once.
    assert_eq!(paid.len(), requests.len());
    // Every expiry due has happened (the settle loop), and only once (ids unique above).

    // Voucher answers: one per request sent, each the modelled decision.
    let mut results: HashMap<String, Vec<(VoucherOutcome, Option<String>)>> = HashMap::new();
    for (_, _, _, v) in read_all(&env, &cfg.topics.voucher_results) {
        let r: VoucherResult = serde_json::from_slice(&v).unwrap();
        if r.action == "redeem" {
            results
                .entry(r.request_id.clone())
                .or_default()
                .push((r.outcome, r.reason.map(|x| x.as_str().to_string())));
        }
    }
    let mut want: HashMap<String, Vec<(VoucherOutcome, Option<String>)>> = HashMap::new();
    for (id, o, r) in &decided {
        want.entry(id.clone())
            .or_default()
            .push((*o, r.map(str::to_string)));
    }
    for v in results.values_mut().chain(want.values_mut()) {
        v.sort_by_key(|(o, r)| (format!("{o:?}"), r.clone()));
    }
    assert_eq!(results, want, "voucher decisions");
    let double = decided
        .iter()
        .filter(|d| d.2 == Some("already_redeemed"))
        .count();
    let exhausted = decided.iter().filter(|d| d.2 == Some("exhausted")).count();
    assert!(
        double > 0 && exhausted > 0,
        "{double} doubles, {exhausted} exhausted"
    );

    // Refusals stay refusals: dead-lettered and answered once per send, never an entry.
    let dead: Vec<serde_json::Value> = read_all(&env, &cfg.topics.dead_letter)
        .into_iter()
        .map(|(_, _, _, v)| serde_json::from_slice(&v).unwrap())
        .collect();
    let count = |reason: &str| dead.iter().filter(|d| d["reason"] == reason).count();
    assert_eq!(count("topup_below_minimum"), sent.bad_sends);
    assert_eq!(count("conflicting_duplicate"), sent.conflict_sends);
    let answers: Vec<LedgerAnswer> = read_all(&env, &cfg.topics.ledger_results)
        .into_iter()
        .map(|(_, _, _, v)| serde_json::from_slice(&v).unwrap())
        .collect();
    let refused = |reason: &str| {
        answers
            .iter()
            .filter(|a| {
                a.verdict == Verdict::Refused && a.reason.is_some_and(|r| r.as_str() == reason)
            })
            .count()
    };
    assert_eq!(refused("topup_below_minimum"), sent.bad_sends);
    assert_eq!(refused("conflicting_duplicate"), sent.conflict_sends);
    // Each planned grant: applied once, every re-send answered already_applied.
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for a in &answers {
        if a.verdict == Verdict::Applied
            && let Some(g) = &a.grant
        {
            *applied.entry(g.grant_id.as_str()).or_default() += 1;
        }
    }
    for g in &sent.grants {
        assert_eq!(
            applied.get(g.grant_id.as_str()),
            Some(&1),
            "{} applied",
            g.grant_id
        );
    }
    assert!(events.iter().all(|(_, e)| !e.reference.starts_with("bad-")));
    // And asked afterwards, over HTTP: each bad top-up is `refused` with its reason.
    let addr = cfg.http.listen.clone();
    env.wait_for("http", Duration::from_secs(60), || {
        http_get(&addr, "/healthz").0 == 200
    });
    for i in 0..40 {
        let account = &accounts[i % ACCOUNTS];
        let path = format!("/v1/grants/bad-{i}?account_id={account}");
        let mut v = serde_json::Value::Null;
        env.wait_for("a grant status", Duration::from_secs(30), || {
            let (s, b) = api_get(&addr, &path);
            v = serde_json::from_str(&b).unwrap_or_default();
            s == 200
        });
        assert_eq!(v["grant"]["state"], "refused", "{v}");
        assert_eq!(
            v["grant"]["refusal"]["reason"], "topup_below_minimum",
            "{v}"
        );
    }
    eprintln!(
        "credits crash test: {sends} sends ({} grants, {} debits, {} redemptions, {} refused \
         sends), {kills} SIGKILLs in {:.0}s, settled in {:.0}s: {} entries ({expiries} expiries, \
         {} automatic top-ups paid, {funding_lines} funding lines checked), {} voucher grants, \
         {double} double and {exhausted} exhausted redemptions refused",
        sent.grants.len(),
        debits.len(),
        redeems.len(),
        sent.bad_sends + sent.conflict_sends,
        stormed.as_secs_f64(),
        settled.as_secs_f64(),
        events.len(),
        requests.len(),
        voucher_grants.len(),
    );
    assert!(kills >= KILLS);
    assert!(expiries > 0, "no grant expired during the run");
}

/// Open grants whose expiry is before `now`, as the latest entry of each account shows:
/// (account, grant id, expires at).
fn expiring_open(
    events: &[(i32, BalanceEvent)],
    now: DateTime<Utc>,
) -> Vec<(String, String, DateTime<Utc>)> {
    let mut last: HashMap<&str, &BalanceEvent> = HashMap::new();
    for (_, e) in events {
        let l = last.entry(e.account_id.as_str()).or_insert(e);
        if e.seq > l.seq {
            *l = e;
        }
    }
    last.values()
        .flat_map(|e| e.grants.iter().map(move |g| (e, g)))
        .filter_map(|(e, g)| {
            g.expires_at
                .filter(|t| *t < now)
                .map(|t| (e.account_id.clone(), g.grant_id.clone(), t))
        })
        .collect()
}
