//! Benchmarks of traces and streams (issue 22), not timed tests: they print figures.
//! `cargo test --test traces_bench -- --ignored --nocapture` (debug build), or with
//! `--release` for the figures in docs/performance.md.
//! - the trace of a 1,000-call execution: latency of 200 lookups open (live state) and
//!   closed (ClickHouse + the output topics' tail), p50 / p99 / max;
//! - 200 SSE clients following one execution while the pipeline rates a steady load in the
//!   same account: the server's CPU with and without them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const ACCOUNT: &str = "acct-bench";

fn call(exec: &str, id: &str) -> String {
    format!(
        r#"{{"type":"tool_call","event_id":"{id}","occurred_at":"2026-03-01T10:00:00Z","account_id":"{ACCOUNT}","execution_id":"{exec}","asset_id":"tavily/web-search","quantities":{{"requests":1}},"dimensions":{{"conversation_id":"conv-{exec}"}}}}"#
    )
}

fn finish(exec: &str) -> String {
    format!(
        r#"{{"type":"execution_finished","event_id":"fin-{exec}","occurred_at":"2026-03-01T11:00:00Z","account_id":"{ACCOUNT}","execution_id":"{exec}"}}"#
    )
}

fn start(name: &str) -> (TestEnv, String) {
    let mut env = TestEnv::new(name);
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    env.cfg.rollup.max_trace_calls = 2000;
    env.write_config();
    env.setup();
    env.spawn("all", "all.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("the instance", Duration::from_secs(60), || {
        api_get(&addr, "/v1/whoami").0 == 200
    });
    (env, addr)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `n` lookups of `path`: p50, p99 and max in ms (each answer checked for its calls).
fn lookups(addr: &str, path: &str, n: usize, calls: usize) -> (f64, f64, f64) {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = api_get(addr, path);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            body.contains(&format!("\"calls_listed\":{calls}")),
            "{path}: {}",
            &body[..200]
        );
    }
    ms.sort_by(f64::total_cmp);
    (
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        *ms.last().unwrap(),
    )
}

#[test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
fn bench_trace_of_a_1000_call_execution() {
    const CALLS: usize = 1000;
    let (env, addr) = start("bench_trace");
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let (open, closed) = ("exec-bench-open", "exec-bench-closed");
    for exec in [open, closed] {
        for n in 1..=CALLS {
            loader
                .send(&topic, exec, call(exec, &format!("{exec}-c{n}")).as_bytes())
                .unwrap();
        }
    }
    loader
        .send(&topic, closed, finish(closed).as_bytes())
        .unwrap();
    loader.flush().unwrap();
    let path = |e: &str| format!("/v1/executions/{e}?account_id={ACCOUNT}");
    let listed = format!("\"calls_listed\":{CALLS}");
    env.wait_for("both traces", Duration::from_secs(120), || {
        let o = api_get(&addr, &path(open));
        let c = api_get(&addr, &path(closed));
        o.1.contains(&listed) && c.1.contains(&listed) && c.1.contains("\"status\":\"closed\"")
    });
    // The sink has written the closed one: it comes from ClickHouse, as an older one would.
    thread::sleep(Duration::from_secs(3));
    let o = lookups(&addr, &path(open), 200, CALLS);
    let c = lookups(&addr, &path(closed), 200, CALLS);
    let n = lookups(&addr, &format!("/v1/executions/{closed}"), 200, CALLS);
    eprintln!(
        "trace of a {CALLS}-call execution, 200 sequential lookups each (ms p50 / p99 / max):\n  open (live state): {:.1} / {:.1} / {:.1}\n  closed (ClickHouse + tail): {:.1} / {:.1} / {:.1}\n  closed, operator without account_id: {:.1} / {:.1} / {:.1}",
        o.0, o.1, o.2, c.0, c.1, c.2, n.0, n.1, n.2
    );
}

/// CPU seconds (user + system) the process has used so far (/proc/PID/stat, clock ticks).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// A raw SSE client: counts `call` events until `stop`; false if the stream ended early
/// (then it says what the stream sent last).
fn follow(
    addr: String,
    path: String,
    calls: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> bool {
    let mut last = Vec::new();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => {
                eprintln!("a stream ended early; its last lines: {last:?}");
                return false;
            }
            Ok(_) if line.ends_with('\n') => {
                if !line.starts_with("data: {\"call") {
                    last.push(line.clone());
                    if last.len() > 6 {
                        last.remove(0);
                    }
                }
                if line.starts_with("event: call") {
                    calls.fetch_add(1, Ordering::Relaxed);
                } else if line.starts_with("event: open") {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                line.clear();
            }
            _ => {}
        }
    }
    true
}

#[test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
fn bench_200_stream_clients_following_one_execution() {
    const CLIENTS: usize = 200;
    const RATE: usize = 200; // calls per second in the account
    const FOLLOWED_EVERY: usize = 20; // one call in 20 is the followed execution's
    const SECS: u64 = 20;
    let (env, addr) = start("bench_streams");
    let pid = env.children[0].id();
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let run = |tag: &str| {
        let start_cpu = cpu_seconds(pid);
        let t0 = Instant::now();
        let mut sent = 0usize;
        while t0.elapsed() < Duration::from_secs(SECS) {
            let due = (t0.elapsed().as_secs_f64() * RATE as f64) as usize;
            while sent < due {
                let exec = if sent.is_multiple_of(FOLLOWED_EVERY) {
                    format!("{tag}-followed")
                } else {
                    format!("{tag}-other-{}", sent % 50)
                };
                let e = call(&exec, &format!("{tag}-{sent}"));
                loader.send(&topic, &exec, e.as_bytes()).unwrap();
                sent += 1;
            }
            loader.flush().unwrap();
            thread::sleep(Duration::from_millis(20));
        }
        let cpu = cpu_seconds(pid) - start_cpu;
        (sent, cpu / t0.elapsed().as_secs_f64())
    };
    let _ = run("warm");
    let (sent0, cpu0) = run("none");
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let path = format!("/v1/executions/with-followed/events?account_id={ACCOUNT}&follow=true");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (a, p, c, s) = (addr.clone(), path.clone(), calls.clone(), stop.clone());
            let o = opened.clone();
            thread::spawn(move || follow(a, p, c, o, s))
        })
        .collect();
    env.wait_for("every stream open", Duration::from_secs(120), || {
        opened.load(Ordering::Relaxed) == CLIENTS as u64
    });
    thread::sleep(Duration::from_secs(1));
    let before = calls.load(Ordering::Relaxed);
    let (sent1, cpu1) = run("with");
    thread::sleep(Duration::from_secs(2));
    let delivered = calls.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let ended = clients
        .into_iter()
        .map(|c| c.join().unwrap_or(false))
        .filter(|ok| !ok)
        .count();
    let lagged = metric(&env.metrics(), "usage_agg_api_streams_lagged_total");
    let followed = sent1.div_ceil(FOLLOWED_EVERY) as u64;
    eprintln!(
        "{CLIENTS} SSE clients following one execution ({SECS} s at {RATE} calls/s in the account, 1 in {FOLLOWED_EVERY} the followed execution's):\n  no client: {:.1} % of a core ({sent0} calls)\n  {CLIENTS} clients: {:.1} % of a core ({sent1} calls; {delivered} call events delivered of {} expected; {ended} streams ended early; queues overflowed {lagged} times)\n  the clients' share: {:.1} % of a core",
        cpu0 * 100.0,
        cpu1 * 100.0,
        followed * CLIENTS as u64,
        (cpu1 - cpu0) * 100.0
    );
}
