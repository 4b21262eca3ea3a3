//! Console benchmarks (figures printed, nothing timed is asserted; `#[ignore]`d, run with
//! `cargo test --test console_bench -- --ignored --nocapture`) against the real service,
//! broker and ClickHouse in headless Chromium:
//! - first paint of Transactions for an account with 10,000 ledger entries (navigation start
//!   to first contentful paint, and to the table shown: the console's `ready:transactions`
//!   User Timing mark), cold and warm (ETag revalidation);
//! - the service's CPU while 50 consoles follow live executions (50 server-sent event
//!   streams, one per console, as the Live page opens them) during a steady workload, against
//!   the same workload with no console open.

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use browser::Browser;
use serde_json::{Value, json};

fn direct_call(id: &str, account: &str, exec: Option<&str>, i: usize) -> String {
    let mut e = json!({
        "type": "model_call", "event_id": id,
        "occurred_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "account_id": account, "asset_id": "openai/gpt-4o-mini",
        "quantities": {"input_tokens": 100 + i, "output_tokens": 20},
    });
    if let Some(x) = exec {
        e["execution_id"] = json!(x);
        e["agent_id"] = json!("bench-bot");
    }
    e.to_string()
}

fn start(name: &str) -> (common::TestEnv, String) {
    let mut env = common::TestEnv::new(name);
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(600);
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("the service's http", Duration::from_secs(60), || {
        common::http_get(&addr, "/healthz").0 == 200
    });
    (env, addr)
}

/// Milliseconds from navigation start to first contentful paint and to `ready:transactions`.
async fn first_paint(b: &Browser, url: &str) -> (f64, f64) {
    b.goto("about:blank").await;
    b.goto(url).await;
    b.wait(
        "the transactions table",
        "performance.getEntriesByName('ready:transactions').length > 0",
        Duration::from_secs(60),
    )
    .await;
    let v = b
        .js(
            "return [(performance.getEntriesByName('first-contentful-paint')[0] || {startTime: -1}).startTime, performance.getEntriesByName('ready:transactions')[0].startTime]",
            vec![],
        )
        .await;
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
async fn bench_transactions_first_paint_10000_entries() {
    const N: usize = 10_000;
    let account = "acct-bench";
    let (env, addr) = tokio::task::block_in_place(|| start("console_bench_paint"));
    let t0 = Instant::now();
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    for i in 0..N {
        let id = format!("bench-{i}");
        loader
            .send(&topic, &id, direct_call(&id, account, None, i).as_bytes())
            .unwrap();
    }
    loader.flush().unwrap();
    tokio::task::block_in_place(|| {
        env.wait_for(
            &format!("{N} ledger entries"),
            Duration::from_secs(600),
            || {
                let (s, b) = common::api_get(&addr, &format!("/v1/accounts/{account}/balance"));
                s == 200
                    && serde_json::from_str::<Value>(&b).unwrap()["entries"].as_u64()
                        == Some(N as u64)
            },
        )
    });
    eprintln!(
        "seeded {N} ledger entries in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let b = Browser::start().await;
    let base = format!("http://{addr}");
    b.goto(&format!("{base}/console/")).await;
    b.sign_in(common::OPERATOR_TOKEN, Some(account)).await;
    let _ = b.ready("transactions", 0).await;
    let url = format!("{base}/console/#/transactions?account={account}");
    let mut runs = Vec::new();
    for _ in 0..7 {
        runs.push(first_paint(&b, &url).await);
    }
    let rows = b.texts("#entries tbody tr:not(.detail)").await.len();
    let summary = b.text("#summary").await;
    b.close().await;
    let mut fcp: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let mut ready: Vec<f64> = runs.iter().map(|r| r.1).collect();
    fcp.sort_by(f64::total_cmp);
    ready.sort_by(f64::total_cmp);
    eprintln!(
        "transactions of an account with {N} entries ({rows} rows on the first page; {summary}):\n  first contentful paint ms: first load {:.0}, median of 7 {:.0}\n  table shown (ready:transactions) ms: first load {:.0}, median of 7 {:.0}, max {:.0}",
        runs[0].0, fcp[3], runs[0].1, ready[3], ready[6]
    );
}

/// One console's Live page as the service sees it: the SSE stream of an execution, resumed
/// with `Last-Event-ID` when the service ends it (`dropped`), as the page does; counts the
/// `call` events and the reconnections.
fn follow(
    addr: String,
    path: String,
    calls: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut last_id: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let resume = last_id
            .as_ref()
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n{resume}\r\n",
            common::OPERATOR_TOKEN
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while line.is_empty() && !stop.load(Ordering::Relaxed) {
            let _ = r.read_line(&mut line);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        assert!(line.contains(" 200 "), "{path}: {line}");
        while !stop.load(Ordering::Relaxed) {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) if line.starts_with("event: call") => {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) if line.starts_with("id: ") => last_id = Some(line[4..].trim().to_string()),
                _ => {}
            }
        }
        if !stop.load(Ordering::Relaxed) {
            reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
async fn bench_live_cpu_with_50_consoles() {
    const CONSOLES: usize = 50;
    const RATE: usize = 50; // calls per second, spread over the followed executions
    const SECS: u64 = 20;
    let (env, addr) = tokio::task::block_in_place(|| start("console_bench_live"));
    let probe = common::api_get(&addr, "/v1/accounts/acct-probe/usage");
    if probe.0 == 404 && probe.1.contains("no endpoint") {
        eprintln!("SKIPPED: this build has no traces API (the execution event stream)");
        return;
    }
    let pid = env.children[0].id();
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let account = "acct-live-bench";
    // A steady workload for `SECS` seconds: RATE calls per second over CONSOLES executions.
    let run = |tag: &str| {
        common::bench::steady_load(&loader, &topic, RATE, SECS, pid, |n| {
            let exec = format!("{tag}-exec-{}", n % CONSOLES);
            let id = format!("{tag}-{n}");
            let e = direct_call(&id, account, Some(&exec), n);
            (exec, e)
        })
    };
    // Warm up (partitions assigned, follower caught up), then no console.
    let _ = tokio::task::block_in_place(|| run("warm"));
    let (sent0, cpu0) = tokio::task::block_in_place(|| run("none"));
    // 50 consoles, each following one of the executions the workload feeds.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let followers: Vec<_> = (0..CONSOLES)
        .map(|i| {
            let (a, c, s) = (addr.clone(), calls.clone(), stop.clone());
            let re = reconnects.clone();
            let path = format!("/v1/executions/with-exec-{i}/events?account_id={account}");
            std::thread::spawn(move || follow(a, path, c, re, s))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let (sent1, cpu1) = tokio::task::block_in_place(|| run("with"));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for f in followers {
        let _ = f.join();
    }
    eprintln!(
        "live page CPU in the service ({} s at {RATE} calls/s over {CONSOLES} executions, role all, debug build):\n  no console: {:.1} % of a core ({sent0} calls)\n  {CONSOLES} consoles following: {:.1} % of a core ({sent1} calls, {} call events delivered, {} reconnections after `dropped`)\n  the consoles' share: {:.1} % of a core",
        SECS,
        cpu0 * 100.0,
        cpu1 * 100.0,
        calls.load(Ordering::Relaxed),
        reconnects.load(Ordering::Relaxed),
        (cpu1 - cpu0) * 100.0
    );
}
