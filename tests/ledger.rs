//! Credits ledger against the real broker and ClickHouse: balances equal an independent
//! oracle (sum of distinct grants minus sum of distinct debits, to the last digit) after a
//! kill -9 storm of the ledger stage; every entry exactly once on the balances topic and in
//! ClickHouse, with running totals equal to the stream's balances; the voucher race; and
//! refusals (each with its reason, nothing applied).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::ledger::*;
use common::*;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use usage_aggregator::debit::Debit;
use usage_aggregator::ledger::client;
use usage_aggregator::ledger::core::EntryKind;
use usage_aggregator::ledger::grant::{Grant, GrantKind};
use usage_aggregator::ledger::voucher::{self, VoucherOutcome, VoucherRequest, VoucherResult};

#[test]
fn ledger_crash_kill9_storm_balances_equal_the_oracle_exactly_once() {
    let mut env = ledger_env("ledgercrash");
    let cfg = env.cfg.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let accounts: Vec<String> = (0..40)
        .map(|i| format!("{}-acct-{i:02}", env.name))
        .collect();
    // The plan: valid grants (re-sent 1-3 times), invalid top-ups, debits (some twice).
    let mut grants: Vec<Grant> = Vec::new();
    for i in 0..500 {
        let account = accounts[rng.random_range(0..30)].clone(); // 10 accounts never funded
        let (kind, amount, reason) = if i % 10 == 9 {
            let cents: i64 = rng.random_range(-5_000..5_000);
            (
                GrantKind::Adjustment,
                Decimal::new(if cents == 0 { 1 } else { cents }, 2),
                Some("correction".to_string()),
            )
        } else {
            (
                GrantKind::Topup,
                Decimal::new(rng.random_range(1_000..50_000), 2),
                None,
            )
        };
        grants.push(Grant {
            reason,
            ..Grant::new(
                format!("pay-{i}"),
                kind,
                account,
                amount,
                chrono::Utc::now(),
            )
        });
    }
    let debits: Vec<Debit> = (0..4_000)
        .map(|i| {
            let account = &accounts[rng.random_range(0..accounts.len())];
            let cost = Decimal::new(rng.random_range(1..5_000_000_000_000i64), 12);
            debit(&format!("dc_{}_{i}", env.name), account, cost)
        })
        .collect();
    let mut oracle: BTreeMap<String, Decimal> = BTreeMap::new();
    for g in grants.iter() {
        *oracle.entry(g.account_id.clone()).or_default() += g.amount;
    }
    for d in &debits {
        *oracle.entry(d.account_id.clone()).or_default() -= d.total;
    }
    // Interleave: each grant 1-3 times, each debit once or twice (the repeat nearby, as a
    // pipeline replay would), and 40 top-ups below the minimum.
    enum Send {
        Grant(usize),
        Bad(usize),
        Debit(usize),
    }
    let mut plan: Vec<Send> = Vec::new();
    for i in 0..grants.len() {
        for _ in 0..rng.random_range(1..=3) {
            plan.push(Send::Grant(i));
        }
    }
    for i in 0..40 {
        plan.push(Send::Bad(i));
    }
    for i in 0..debits.len() {
        plan.push(Send::Debit(i));
    }
    // Shuffle, then add the debit repeats close to their original.
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.random_range(0..=i));
    }
    let mut with_repeats = Vec::new();
    for s in plan {
        let repeat = matches!(s, Send::Debit(i) if i % 5 == 0);
        if let Send::Debit(i) = s {
            with_repeats.push(Send::Debit(i));
            if repeat {
                with_repeats.push(Send::Debit(i));
            }
        } else {
            with_repeats.push(s);
        }
    }
    let plan = with_repeats;
    let sends = plan.len();

    // Each process needs its own HTTP port (a taken `http.listen` fails the start).
    env.spawn_with(
        "sink",
        "sink.log",
        &format!("127.0.0.1:{}", free_port()),
        &[],
    );
    let mut ledger = env.spawn("ledger", "ledger.log");
    let assigned = |env: &TestEnv| {
        env.log("ledger.log")
            .matches("partitions assigned stage=\"ledger\"")
            .count()
    };
    env.wait_for("the ledger to be assigned", Duration::from_secs(60), || {
        assigned(&env) >= 1
    });

    let producer_cfg = cfg.clone();
    let (n_grants, n_debits) = (grants.len(), debits.len());
    let started = Instant::now();
    let feeder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Grants through the project's grant producer, debits like the rating pipeline's.
        let gp = client::producer(&producer_cfg).unwrap();
        let loader = usage_aggregator::bench::Loader::new(&producer_cfg).unwrap();
        for (n, s) in plan.iter().enumerate() {
            match s {
                Send::Grant(i) => rt
                    .block_on(client::send_grant(&producer_cfg, &gp, &grants[*i]))
                    .unwrap(),
                Send::Bad(i) => {
                    let mut g = grants[0].clone();
                    g.grant_id = format!("bad-{i}");
                    g.kind = GrantKind::Topup;
                    g.amount = Decimal::new(999, 2);
                    rt.block_on(client::send_grant(&producer_cfg, &gp, &g))
                        .unwrap();
                }
                Send::Debit(i) => loader
                    .send(
                        &producer_cfg.topics.debits,
                        &debits[*i].account_id,
                        &debits[*i].encode(),
                    )
                    .unwrap(),
            }
            if n % 100 == 99 {
                loader.flush().unwrap();
                std::thread::sleep(Duration::from_millis(60));
            }
        }
        loader.flush().unwrap();
    });

    let mut kills = 0;
    let mut seen = assigned(&env);
    while kills < 12 || !feeder.is_finished() {
        env.wait_for(
            "the restarted ledger to be assigned",
            Duration::from_secs(60),
            || assigned(&env) > seen - 1,
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2_000)));
        env.kill9(ledger);
        kills += 1;
        seen = assigned(&env) + 1;
        ledger = env.spawn("ledger", "ledger.log");
    }
    feeder.join().unwrap();
    let fed_in = started.elapsed();
    let expected_entries = n_grants + n_debits;

    // The stream: every entry exactly once, balances equal the oracle.
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while events.len() < expected_entries {
        assert!(
            Instant::now() < deadline,
            "balances topic holds {} of {expected_entries} entries",
            events.len()
        );
        std::thread::sleep(Duration::from_secs(2));
        events = balance_events(&env);
    }
    let settled_in = started.elapsed();
    let ids: HashSet<&str> = events.iter().map(|(_, e)| e.entry_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        events.len(),
        "an entry appears twice on the balances topic"
    );
    assert_eq!(events.len(), expected_entries);
    let mut last: HashMap<&str, (i32, u64, Decimal)> = HashMap::new();
    for (p, e) in &events {
        let (part, seq, bal) =
            last.get(e.account_id.as_str())
                .copied()
                .unwrap_or((*p, 0, Decimal::ZERO));
        assert_eq!(part, *p, "account {} seen on two partitions", e.account_id);
        assert_eq!(e.seq, seq + 1, "account {} seq", e.account_id);
        assert_eq!(e.balance_before, bal);
        assert_eq!(e.balance_after, (bal + e.amount).normalize());
        last.insert(&e.account_id, (*p, e.seq, e.balance_after));
    }
    for (account, want) in &oracle {
        assert_eq!(
            last.get(account.as_str()).map(|x| x.2),
            Some(want.normalize()),
            "balance of {account}"
        );
    }
    // Each grant applied once.
    let grant_refs: Vec<&str> = events
        .iter()
        .filter(|(_, e)| e.kind != usage_aggregator::ledger::core::EntryKind::Debit)
        .map(|(_, e)| e.reference.as_str())
        .collect();
    assert_eq!(grant_refs.len(), n_grants);
    // The invalid top-ups went to the dead-letter topic with their reason, each send once.
    let dead: Vec<serde_json::Value> = read_all(&env, &cfg.topics.dead_letter)
        .into_iter()
        .map(|(_, _, _, v)| serde_json::from_slice(&v).unwrap())
        .collect();
    assert_eq!(
        dead.iter()
            .filter(|d| d["reason"] == "topup_below_minimum")
            .count(),
        40
    );
    let alerts = read_all(&env, &cfg.topics.credit_alerts).len();
    assert!(alerts > 0, "unfunded accounts went below 0");

    // ClickHouse: each row once, balances and running totals equal the stream's.
    env.wait_for(
        "clickhouse to hold the ledger",
        Duration::from_secs(120),
        || {
            env.ch("SELECT count() FROM {db}.ledger")
                .trim()
                .parse::<usize>()
                .unwrap_or(0)
                >= expected_entries
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let counts = env.ch("SELECT count(), uniqExact(entry_id) FROM {db}.ledger FORMAT TSV");
    assert_eq!(
        counts.trim(),
        format!("{expected_entries}\t{expected_entries}")
    );
    let finals = parse_tsv_map(&env.ch(
        "SELECT account_id, toString(argMax(balance_after, seq)) FROM {db}.ledger GROUP BY account_id FORMAT TSV",
    ));
    for (account, want) in &oracle {
        let got = Decimal::from_str(&finals[account]).unwrap();
        assert_eq!(
            got.normalize(),
            want.normalize(),
            "clickhouse balance of {account}"
        );
    }
    // Running totals recomputed in SQL (docs/analytics.md; 18.16 has no window functions and
    // no array sums of Decimal) equal the stream's balance_after on every row.
    let running = env.ch(
        "SELECT count(), countIf(b != running) FROM (SELECT account_id, seq, any(balance_after) AS b, sum(amount) AS running FROM (SELECT account_id, seq, balance_after FROM {db}.ledger) ALL INNER JOIN (SELECT account_id, seq AS upto, credit - debit AS amount FROM {db}.ledger) USING account_id WHERE upto <= seq GROUP BY account_id, seq) FORMAT TSV",
    );
    assert_eq!(running.trim(), format!("{expected_entries}\t0"));
    // And every row carries the stream's balance for its entry.
    let by_entry: HashMap<&str, Decimal> = events
        .iter()
        .map(|(_, e)| (e.entry_id.as_str(), e.balance_after))
        .collect();
    let rows = env.ch("SELECT entry_id, toString(balance_after) FROM {db}.ledger FORMAT TSV");
    for (id, bal) in parse_tsv_map(&rows) {
        assert_eq!(
            Decimal::from_str(&bal).unwrap().normalize(),
            by_entry[id.as_str()]
        );
    }
    let aborted = env.log("ledger.log").matches("transaction aborted").count();
    // A restarted instance found its predecessor's transaction open and aborted it.
    let fenced = env
        .log("ledger.log")
        .matches("Failed to acquire transactional PID")
        .count();
    eprintln!(
        "ledger crash test: {sends} sends ({} grants, {} debits, 40 invalid), {kills} SIGKILLs, \
         fed in {:.1}s, settled in {:.1}s, {} entries, {alerts} alerts, {aborted} aborts logged, {fenced} open transactions fenced at restart",
        n_grants,
        n_debits,
        fed_in.as_secs_f64(),
        settled_in.as_secs_f64(),
        events.len()
    );
    assert!(kills >= 10);
}

#[test]
fn voucher_race_fifty_accounts_exactly_three_win_in_log_order() {
    let mut env = ledger_env("vrace");
    env.spawn("ledger", "ledger.log");
    let cfg = env.cfg.clone();
    let out = env.cli(&[
        "vouchers",
        "create",
        "RACE-2026-ABCD",
        "--credits",
        "7.5",
        "--max-redemptions",
        "3",
    ]);
    assert!(out.contains("created"), "{out}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results: Vec<VoucherResult> = rt.block_on(async {
        let follower = client::ResultFollower::start(&cfg).unwrap();
        let p = client::producer(&cfg).unwrap();
        let code = voucher::normalize_code("race-2026-abcd").unwrap();
        let reqs: Vec<VoucherRequest> = (0..50)
            .map(|i| VoucherRequest::Redeem {
                request_id: format!("race-{i}"),
                requested_at: chrono::Utc::now(),
                code_hash: voucher::code_hash(&code),
                masked: voucher::mask(&code),
                account_id: format!("{}-acct-{i}", env.name),
            })
            .collect();
        let futs = reqs
            .iter()
            .map(|r| follower.request(&cfg, &p, r, Duration::from_secs(60)));
        futures::future::join_all(futs)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    });
    let winners: Vec<&VoucherResult> = results
        .iter()
        .filter(|r| r.outcome == VoucherOutcome::Granted)
        .collect();
    assert_eq!(winners.len(), 3, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|r| r.outcome != VoucherOutcome::Granted)
            .all(|r| r.reason == Some(voucher::Refusal::Exhausted))
    );
    // Deterministic: the winners are the first three requests in the code's partition.
    let log: Vec<String> = read_all(&env, &cfg.topics.voucher_requests)
        .into_iter()
        .filter_map(
            |(_, _, _, v)| match serde_json::from_slice::<VoucherRequest>(&v).unwrap() {
                VoucherRequest::Redeem { request_id, .. } => Some(request_id),
                _ => None,
            },
        )
        .collect();
    let mut won: Vec<String> = winners.iter().map(|r| r.request_id.clone()).collect();
    won.sort_by_key(|id| log.iter().position(|x| x == id));
    assert_eq!(won, log[..3].to_vec());
    // Exactly three voucher grants reach the ledger.
    env.wait_for("three voucher entries", Duration::from_secs(60), || {
        balance_events(&env)
            .iter()
            .filter(|(_, e)| e.kind == usage_aggregator::ledger::core::EntryKind::Voucher)
            .count()
            == 3
    });
    let list = env.cli(&["vouchers", "list"]);
    assert!(list.contains("3/3") && list.contains("RACE-****"), "{list}");
    assert!(
        !list.contains("ABCD"),
        "the code never appears in clear: {list}"
    );
    assert!(!env.log("ledger.log").contains("RACE-2026-ABCD"));
}

#[test]
fn a_redemption_decided_after_its_credits_expired_is_granted_then_forfeited() {
    // The voucher stage decides from the request's time; when it lags so that the credits
    // of a redemption have expired by the ledger's clock, the redemption still stands
    // (answered granted) and the ledger applies it and forfeits it at once, never refuses.
    let mut env = ledger_env("vlate");
    env.spawn("ledger", "ledger.log");
    let cfg = env.cfg.clone();
    let acct = format!("{}-acct", env.name);
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let out = env.cli(&[
        "vouchers",
        "create",
        "LATE-2026-WXYZ",
        "--credits",
        "3",
        "--valid-from",
        &hour_ago,
        "--credits-valid-for",
        "10s",
    ]);
    assert!(out.contains("created"), "{out}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = client::producer(&cfg).unwrap();
    // Move the clock of the account's partition: a grant expiring 2 s from now, expired.
    let mut g = Grant::new(
        "moves-the-clock",
        GrantKind::Adjustment,
        acct.clone(),
        Decimal::ONE,
        chrono::Utc::now(),
    );
    g.reason = Some("goodwill".into());
    g.category = Some(usage_aggregator::ledger::funding::Category::Promotional);
    g.expires_at = Some(chrono::Utc::now() + chrono::Duration::seconds(2));
    rt.block_on(client::send_grant(&cfg, &p, &g)).unwrap();
    env.wait_for(
        "the clock past the first expiry",
        Duration::from_secs(60),
        || {
            balance_events(&env)
                .iter()
                .any(|(_, e)| e.kind == EntryKind::Expiry && e.reference == "moves-the-clock")
        },
    );
    // A redemption requested 30 s ago: its credits expired 20 s ago.
    let requested_at = chrono::Utc::now() - chrono::Duration::seconds(30);
    let code = voucher::normalize_code("LATE-2026-WXYZ").unwrap();
    let req = VoucherRequest::Redeem {
        request_id: "late-1".into(),
        requested_at,
        code_hash: voucher::code_hash(&code),
        masked: voucher::mask(&code),
        account_id: acct.clone(),
    };
    let r = rt.block_on(async {
        let follower = client::ResultFollower::start(&cfg).unwrap();
        follower
            .request(&cfg, &p, &req, Duration::from_secs(60))
            .await
            .unwrap()
    });
    assert_eq!(r.outcome, VoucherOutcome::Granted, "{r:?}");
    let grant_id = r.grant_id.clone().unwrap();
    let mine =
        |env: &TestEnv| -> Vec<(EntryKind, Decimal, Decimal, chrono::DateTime<chrono::Utc>)> {
            balance_events(env)
                .into_iter()
                .filter(|(_, e)| e.reference == grant_id)
                .map(|(_, e)| (e.kind, e.amount, e.balance_after, e.occurred_at))
                .collect()
        };
    env.wait_for(
        "the voucher's entry and its expiry",
        Duration::from_secs(60),
        || mine(&env).len() == 2,
    );
    let expired_at = requested_at + chrono::Duration::seconds(10);
    let got = mine(&env);
    assert_eq!(
        got,
        [
            (
                EntryKind::Voucher,
                Decimal::from(3),
                Decimal::from(3),
                requested_at
            ),
            (
                EntryKind::Expiry,
                Decimal::from(-3),
                Decimal::ZERO,
                expired_at
            ),
        ],
        "applied, then forfeited whole, dated its expiry"
    );
    let dead = read_all(&env, &cfg.topics.dead_letter);
    assert!(
        dead.iter()
            .all(|(_, _, _, v)| !String::from_utf8_lossy(v).contains("already_expired")),
        "nothing refused"
    );
}

#[test]
fn refusals_carry_their_reason_and_apply_nothing() {
    let mut env = ledger_env("lrefuse");
    // The ledger role serves the whole HTTP API; the sink (another port) fills ClickHouse.
    env.spawn("ledger", "agg.log");
    let sink_listen = format!("127.0.0.1:{}", free_port());
    env.spawn_with("sink", "sink.log", &sink_listen, &[]);
    let addr = env.cfg.http.listen.clone();
    let token = Some(OPERATOR_TOKEN);
    env.wait_for("http", Duration::from_secs(60), || {
        http_get(&addr, "/healthz").0 == 200
    });
    let acct = format!("{}-a", env.name);
    let topup = |amount: &str, reference: &str, token: Option<&str>| {
        http_post(
            &addr,
            &format!("/v1/accounts/{acct}/topups"),
            token,
            &format!(r#"{{"amount":"{amount}","reference":"{reference}"}}"#),
        )
    };
    // Without the token: 401, and nothing is sent.
    assert_eq!(topup("50", "pay-noauth", None).0, 401);
    assert_eq!(topup("50", "pay-noauth", Some("wrong")).0, 401);
    let (s, b) = topup("9.99", "pay-small", token);
    assert_eq!(s, 422);
    assert!(b.contains("topup_below_minimum"), "{b}");
    let (s, b) = topup("-20", "pay-neg", token);
    assert_eq!(s, 422);
    assert!(b.contains("invalid_amount"), "{b}");
    let (s, b) = http_post(
        &addr,
        "/v1/accounts/bad%07account/topups",
        token,
        r#"{"amount":"20","reference":"pay-badacct"}"#,
    );
    assert_eq!(s, 422);
    assert!(b.contains("invalid_account"), "{b}");
    // One valid top-up, sent twice: applied, then already applied (the original entry).
    let (s, b) = topup("25.50", "pay-ok", token);
    assert_eq!(s, 201, "{b}");
    assert!(b.contains(r#""verdict":"applied""#), "{b}");
    let (s, b) = topup("25.50", "pay-ok", token);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(r#""verdict":"already_applied""#), "{b}");
    // The same reference with another amount: the ledger's refusal, not a hope.
    let (s, b) = topup("30", "pay-ok", token);
    assert_eq!(s, 422, "{b}");
    assert!(
        b.contains("conflicting_duplicate") && b.contains(r#""error""#),
        "{b}"
    );
    // An expired voucher is refused with its reason.
    let out = env.cli(&[
        "vouchers",
        "create",
        "OLD-PROMO-2020",
        "--credits",
        "100",
        "--valid-from",
        "2020-01-01T00:00:00Z",
        "--valid-until",
        "2020-02-01T00:00:00Z",
    ]);
    assert!(out.contains("created"), "{out}");
    let (s, b) = http_post(
        &addr,
        &format!("/v1/accounts/{acct}/redemptions"),
        token,
        r#"{"code":"old-promo-2020"}"#,
    );
    assert_eq!(s, 422, "{b}");
    assert!(
        b.contains("\"expired\"") && !b.contains("OLD-PROMO-2020"),
        "{b}"
    );
    // The same refusals through Kafka directly: dead letters with their reason.
    let loader = env.loader();
    let grant = |amount: &str, account: &str, id: &str| {
        format!(
            r#"{{"grant_id":"{id}","kind":"topup","account_id":"{account}","amount":"{amount}","occurred_at":"2026-03-01T10:00:00Z"}}"#
        )
    };
    for (payload, key) in [
        (grant("5", &acct, "k-small"), acct.clone()),
        (grant("-30", &acct, "k-neg"), acct.clone()),
        (grant("30", "", "k-empty"), acct.clone()),
        (grant("30", &"x".repeat(300), "k-long"), acct.clone()),
    ] {
        loader
            .send(&env.cfg.topics.credit_grants, &key, payload.as_bytes())
            .unwrap();
    }
    loader.flush().unwrap();
    env.wait_for("four dead letters", Duration::from_secs(60), || {
        read_all(&env, &env.cfg.topics.dead_letter).len() >= 4
    });
    let reasons: Vec<String> = read_all(&env, &env.cfg.topics.dead_letter)
        .into_iter()
        .map(|(_, _, _, v)| {
            let d: serde_json::Value = serde_json::from_slice(&v).unwrap();
            d["reason"].as_str().unwrap().to_string()
        })
        .collect();
    for r in ["topup_below_minimum", "invalid_amount", "invalid_account"] {
        assert!(reasons.iter().any(|x| x == r), "{reasons:?}");
    }
    // Nothing applied but the one valid top-up.
    env.wait_for("the balance", Duration::from_secs(60), || {
        api_get(&addr, &format!("/v1/accounts/{acct}/balance")).0 == 200
    });
    std::thread::sleep(Duration::from_secs(2));
    let (s, b) = api_get(&addr, &format!("/v1/accounts/{acct}/balance"));
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (v["balance"].as_str(), v["entries"].as_u64()),
        (Some("25.5"), Some(1))
    );
    let (s, b) = api_get(&addr, &format!("/v1/accounts/{acct}/transactions?limit=10"));
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["transactions"].as_array().unwrap().len(), 1);
    assert_eq!(v["transactions"][0]["kind"], "topup");
    // `credits history` reads ClickHouse, which the sink fills in its own time.
    env.wait_for(
        "the top-up in credits history",
        Duration::from_secs(60),
        || env.cli(&["credits", "history", &acct]).contains("25.5"),
    );
    // Secrets stay out of the log.
    let log = env.log("agg.log");
    assert!(!log.contains(OPERATOR_TOKEN) && !log.contains("OLD-PROMO-2020"));
}

/// `credits history` lists in ledger order (seq, newest first; the balance follows it) and
/// says so; an entry dated before one applied earlier (a late call's debit) is marked and
/// the mark explained (issue 23 item 9).
#[test]
fn history_is_in_ledger_order_and_marks_dates_that_go_back() {
    let env = TestEnv::new("history-order");
    env.cli(&["setup", "--clickhouse-only"]);
    let row = |seq: u32, at: &str, kind: &str, credit: &str, debit: &str, balance: &str| {
        format!(
            "('e{seq}','acct-h',{seq},'{at}','{kind}','r{seq}','',{credit},{debit},{balance},[],[],[],[],0,{seq},'2026-11-29 00:00:00')"
        )
    };
    env.ch(&format!(
        // Columns named: later migrations add columns between these (0006: grant terms,
        // funding, open grants), which take their defaults here.
        "INSERT INTO {{db}}.ledger (entry_id, account_id, seq, occurred_at, kind, reference, description, credit, debit, balance_after, assets, asset_calls, asset_quantities, asset_costs, src_partition, src_offset, ingested_at) VALUES {}",
        [
            row(1, "2026-11-01 09:00:00", "topup", "50", "0", "50"),
            row(2, "2026-11-02 10:00:00", "debit", "0", "1.5", "48.5"),
            // Billed after seq 2, but its calls happened the day before.
            row(3, "2026-11-01 12:00:00", "debit", "0", "0.5", "48"),
            row(4, "2026-11-03 08:00:00", "debit", "0", "2", "46"),
        ]
        .join(",")
    ));
    let out = env.cli(&["credits", "history", "acct-h"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Ledger order, newest first"), "{out}");
    let seqs: Vec<&str> = lines[2..6]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(seqs, ["4", "3", "2", "1"], "{out}");
    assert!(lines[3].contains("2026-11-01T12:00:00Z*"), "{out}");
    for l in [lines[2], lines[4], lines[5]] {
        assert!(!l.contains("Z*"), "only seq 3 goes back: {out}");
    }
    assert!(
        lines[6].starts_with("* dated before an entry applied earlier"),
        "{out}"
    );
    // In order: no mark, no note.
    let out = env.cli(&["credits", "history", "acct-h", "--before-seq", "3"]);
    assert!(!out.contains('*'), "{out}");
}
