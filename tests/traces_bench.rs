//! Benchmarks of traces and streams (issue 22), not timed tests: they print figures.
//! `cargo test --test traces_bench -- --ignored --nocapture` (debug build), or with
//! `--release` for the figures in docs/performance.md.
//! - the trace of a 1,000-call execution: latency of 200 lookups open (live state) and
//!   closed (ClickHouse + the output topics' tail), p50 / p99 / max;
//! - 200 SSE clients following 100 executions while the pipeline rates 20k events/s in the
//!   same account: the service's CPU with and without them, in the same run.
//!
//! `USAGE_AGG_BENCH_BIN=path` runs another build of the service (a "before") under the
//! same harness.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::bench::cpu_seconds;
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

/// `n` lookups of `path`: p50, p99 and max in ms (each answer checked for its calls), the
/// median and p99 of each `Server-Timing` span the service gave (plus `outside`: the
/// client's time minus the service's `total`), and the spans of the slowest lookups.
fn lookups(addr: &str, path: &str, n: usize, calls: usize) -> ((f64, f64, f64), String) {
    let mut ms = Vec::with_capacity(n);
    let mut spans: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut each: Vec<(f64, String)> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let a = http_call(addr, "GET", path, Some(OPERATOR_TOKEN), None);
        let took = t.elapsed().as_secs_f64() * 1000.0;
        ms.push(took);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(
            a.body.contains(&format!("\"calls_listed\":{calls}")),
            "{path}: {}",
            &a.body[..200]
        );
        let header = a.header("server-timing").unwrap_or_default();
        for span in header.split(',') {
            if let Some((name, dur)) = span.trim().split_once(";dur=") {
                let dur: f64 = dur.parse().unwrap_or(0.0);
                if name == "total" {
                    spans.entry("outside".into()).or_default().push(took - dur);
                }
                spans.entry(name.to_string()).or_default().push(dur);
            }
        }
        each.push((took, header.to_string()));
    }
    ms.sort_by(f64::total_cmp);
    each.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slowest = each
        .iter()
        .take(3)
        .map(|(t, h)| format!("{t:.1} ms: {h}"))
        .collect::<Vec<_>>()
        .join(" | ");
    let spans = spans
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            format!("{k} {:.2}/{:.2}", percentile(&v, 0.5), percentile(&v, 0.99))
        })
        .collect::<Vec<_>>()
        .join(", ");
    (
        (
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            *ms.last().unwrap(),
        ),
        format!("{spans}; slowest: {slowest}"),
    )
}

fn send_execution(env: &TestEnv, exec: &str, calls: usize, close: bool) {
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    for n in 1..=calls {
        loader
            .send(&topic, exec, call(exec, &format!("{exec}-c{n}")).as_bytes())
            .unwrap();
    }
    if close {
        loader.send(&topic, exec, finish(exec).as_bytes()).unwrap();
    }
    loader.flush().unwrap();
}

#[test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
fn bench_trace_of_a_1000_call_execution() {
    const CALLS: usize = 1000;
    const COLD: usize = 20;
    let (env, addr) = start("bench_trace");
    let (open, closed) = ("exec-bench-open", "exec-bench-closed");
    send_execution(&env, open, CALLS, false);
    send_execution(&env, closed, CALLS, true);
    let colds: Vec<String> = (0..COLD).map(|i| format!("exec-bench-cold-{i}")).collect();
    for c in &colds {
        send_execution(&env, c, CALLS, true);
    }
    let path = |e: &str| format!("/v1/executions/{e}?account_id={ACCOUNT}");
    let listed = format!("\"calls_listed\":{CALLS}");
    env.wait_for("both traces", Duration::from_secs(180), || {
        let o = api_get(&addr, &path(open));
        let c = api_get(&addr, &path(closed));
        o.1.contains(&listed) && c.1.contains(&listed) && c.1.contains("\"status\":\"closed\"")
    });
    // The sink has written the closed ones: they come from ClickHouse, as older ones would.
    env.wait_for("the sink", Duration::from_secs(120), || {
        let q = format!(
            "SELECT count() FROM {{db}}.usage_transactions WHERE execution_id = '{}'",
            colds.last().unwrap()
        );
        env.ch(&q).trim() == CALLS.to_string()
    });
    thread::sleep(Duration::from_secs(2));
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // Each cold execution looked up once: its first lookup, ClickHouse then the tail.
    let mut cold_ms = Vec::new();
    for c in &colds {
        let t = Instant::now();
        let (status, body) = api_get(&addr, &path(c));
        cold_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&listed) && body.contains("\"status\":\"closed\""));
    }
    cold_ms.sort_by(f64::total_cmp);
    let (o, os) = lookups(&addr, &path(open), 200, CALLS);
    let (c, cs) = lookups(&addr, &path(closed), 200, CALLS);
    let (n, ns) = lookups(&addr, &format!("/v1/executions/{closed}"), 200, CALLS);
    // The open one again while the pipeline rates other executions of the account (its
    // live state is then read beside the rating loop).
    let busy_rate = env_or("TRACES_BENCH_BUSY_RATE", 5_000);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, loader) = (stop.clone(), env.loader());
        let topic = env.cfg.topics.usage_events.clone();
        thread::spawn(move || {
            let t0 = Instant::now();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let due = (t0.elapsed().as_secs_f64() * busy_rate as f64) as usize;
                while sent < due {
                    let exec = format!("exec-busy-{}", sent / 50);
                    let e = call(&exec, &format!("busy-{sent}"));
                    loader.send(&topic, &exec, e.as_bytes()).unwrap();
                    sent += 1;
                }
                loader.flush().unwrap();
                thread::sleep(Duration::from_millis(10));
            }
            sent as f64 / t0.elapsed().as_secs_f64()
        })
    };
    thread::sleep(Duration::from_secs(2));
    let (b, bs) = lookups(&addr, &path(open), 200, CALLS);
    let busy_load = load();
    stop.store(true, Ordering::Relaxed);
    let busy_sent = sender.join().unwrap();
    eprintln!(
        "trace of a {CALLS}-call execution, 200 sequential lookups each (ms p50 / p99 / max; Server-Timing spans p50/p99), load {}:\n  open (live state): {:.1} / {:.1} / {:.1}  [{os}]\n  open, while {busy_sent:.0} events/s are sent (load {}): {:.1} / {:.1} / {:.1}  [{bs}]\n  closed: {:.1} / {:.1} / {:.1}  [{cs}]\n  closed, operator without account_id: {:.1} / {:.1} / {:.1}  [{ns}]\n  first lookup of {COLD} other closed ones (ClickHouse): p50 {:.1} / max {:.1}",
        load().trim(),
        o.0,
        o.1,
        o.2,
        busy_load.trim(),
        b.0,
        b.1,
        b.2,
        c.0,
        c.1,
        c.2,
        n.0,
        n.1,
        n.2,
        percentile(&cold_ms, 0.5),
        cold_ms.last().unwrap(),
    );
}

/// A raw SSE client: counts `call` events until `stop`; false if the stream ended early
/// (then it says what the stream sent last); the calls it got.
fn follow(
    addr: String,
    path: String,
    calls: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (bool, u64) {
    let mut mine = 0;
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
                return (false, mine);
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
                    mine += 1;
                } else if line.starts_with("event: open") {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                line.clear();
            }
            _ => {}
        }
    }
    (true, mine)
}

/// CPU seconds (user + system) of the threads of process `pid` named `name`.
fn thread_cpu_seconds(pid: u32, name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| {
            let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .collect();
            (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
        })
        .sum()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 200 SSE clients following 100 executions (2 each, `follow=true`) while the pipeline rates
/// `TRACES_BENCH_RATE` events/s (default 20,000) in the same account: each followed execution
/// gets 10 calls/s (1,000/s in all, 2,000 events/s to the clients); the rest go to other
/// executions of the account, 50 calls each then their finish (so debits flow too). Three
/// phases of `TRACES_BENCH_SECS` s (default 20) in one run: a warm-up, without clients,
/// with clients. "The clients' cost" is the service's CPU (user + system, /proc) per second
/// with clients minus without, over the CPU without: the extra CPU in % of the service's.
/// Then `TRACES_BENCH_ROUNDS` (default 5) adjacent pairs of phases with the clients
/// connected: their executions silent, then getting their calls (same total rate); the
/// median pair is the steadier figure (the three phases drift apart with the shared
/// services' state).
#[test]
#[ignore = "benchmark: prints figures; run with --ignored --nocapture"]
fn bench_200_stream_clients_following_executions() {
    const CLIENTS: usize = 200;
    const FOLLOWED: usize = 100;
    const FOLLOWED_RATE: usize = 10; // calls per second per followed execution
    const CALLS_PER_OTHER: usize = 50;
    let rate = env_or("TRACES_BENCH_RATE", 20_000);
    let secs = env_or("TRACES_BENCH_SECS", 20) as u64;
    let (env, addr) = start("bench_streams");
    let pid = env.children[0].id();
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let priced = |env: &TestEnv| metric(&env.metrics(), "usage_agg_rating_events_priced_total");
    // `quiet`: the followed executions get no calls (their share goes to the others), so
    // the clients, connected or not, receive nothing.
    let run = |tag: &str, quiet: bool| {
        let start_cpu = cpu_seconds(pid);
        let start_follower = thread_cpu_seconds(pid, "follower");
        let start_priced = priced(&env);
        let t0 = Instant::now();
        let (mut sent, mut followed_sent, mut other, mut in_other) = (0usize, 0usize, 0usize, 0);
        let followed_every = rate / (FOLLOWED * FOLLOWED_RATE);
        while t0.elapsed() < Duration::from_secs(secs) {
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as usize;
            while sent < due {
                if !quiet && followed_every > 0 && sent.is_multiple_of(followed_every) {
                    let exec = format!("{tag}-f{}", followed_sent % FOLLOWED);
                    let e = call(&exec, &format!("{tag}-{sent}"));
                    loader.send(&topic, &exec, e.as_bytes()).unwrap();
                    followed_sent += 1;
                } else {
                    let exec = format!("{tag}-o{other}");
                    let e = call(&exec, &format!("{tag}-{sent}"));
                    loader.send(&topic, &exec, e.as_bytes()).unwrap();
                    in_other += 1;
                    if in_other == CALLS_PER_OTHER {
                        loader
                            .send(&topic, &exec, finish(&exec).as_bytes())
                            .unwrap();
                        other += 1;
                        in_other = 0;
                    }
                }
                sent += 1;
            }
            loader.flush().unwrap();
            thread::sleep(Duration::from_millis(10));
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - start_cpu;
        let follower = thread_cpu_seconds(pid, "follower") - start_follower;
        let rated = priced(&env) - start_priced;
        (
            sent,
            followed_sent,
            cpu / elapsed,
            rated / elapsed,
            follower / elapsed,
        )
    };
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = run("warm", false);
    let (sent0, _, cpu0, rated0, follower0) = run("none", false);
    let load0 = load();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let reads = |env: &TestEnv| metric(&env.metrics(), "usage_agg_api_follow_kafka_reads_total");
    let reads0 = reads(&env);
    let opening = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = format!(
                "/v1/executions/with-f{}/events?account_id={ACCOUNT}&follow=true",
                i % FOLLOWED
            );
            let (a, c, s) = (addr.clone(), calls.clone(), stop.clone());
            let o = opened.clone();
            thread::spawn(move || follow(a, path, c, o, s))
        })
        .collect();
    env.wait_for("every stream open", Duration::from_secs(120), || {
        opened.load(Ordering::Relaxed) == CLIENTS as u64
    });
    let open_s = opening.elapsed().as_secs_f64();
    let open_reads = reads(&env) - reads0;
    thread::sleep(Duration::from_secs(1));
    let before = calls.load(Ordering::Relaxed);
    let (sent1, followed1, cpu1, rated1, follower1) = run("with", false);
    let load1 = load();
    // Everything sent reaches the clients (the pipeline's commit interval, then the stream).
    let expected = (followed1 * CLIENTS / FOLLOWED) as u64;
    let t = Instant::now();
    while calls.load(Ordering::Relaxed) - before < expected && t.elapsed() < Duration::from_secs(30)
    {
        thread::sleep(Duration::from_millis(100));
    }
    let delivered = calls.load(Ordering::Relaxed) - before;
    // Paired rounds with the clients connected: followed executions silent, then getting
    // their calls, same total rate; each pair's difference is what delivering costs. The
    // phases above are minutes apart and the shared broker and ClickHouse drift between
    // them (the same build gave +3 to +8 % of a core); adjacent short pairs cancel most of it.
    let rounds = env_or("TRACES_BENCH_ROUNDS", 5);
    let mut pairs = Vec::new();
    for k in 0..rounds {
        let (_, _, quiet, ..) = run(&format!("q{k}"), true);
        let (_, _, busy, ..) = run(&format!("b{k}"), false);
        pairs.push((quiet, busy));
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(bool, u64)> = clients
        .into_iter()
        .map(|c| c.join().unwrap_or((false, 0)))
        .collect();
    let ended = results.iter().filter(|(ok, _)| !ok).count();
    let got: Vec<u64> = results.iter().map(|(_, n)| *n).collect();
    let (least, most) = (
        got.iter().min().copied().unwrap_or(0),
        got.iter().max().copied().unwrap_or(0),
    );
    let lagged = metric(&env.metrics(), "usage_agg_api_streams_lagged_total");
    eprintln!(
        "{CLIENTS} SSE clients following {FOLLOWED} executions ({FOLLOWED_RATE} calls/s each), {secs} s per phase at {rate} events/s sent in one account:\n  no client: service CPU {:.1} % of a core (follower thread {:.1} %); {sent0} events sent, {rated0:.0} events/s rated; load {}\n  opening: {CLIENTS} streams open in {open_s:.1} s, {open_reads} history reads from kafka\n  {CLIENTS} clients: service CPU {:.1} % of a core (follower thread {:.1} %); {sent1} events sent, {rated1:.0} events/s rated; {delivered} call events delivered of {expected} expected ({} per client expected, got {least}..{most}); {ended} streams ended early; queues overflowed {lagged} times; load {}\n  the clients' cost: {:+.1} % of a core = {:+.1} % of the service's CPU without them",
        cpu0 * 100.0,
        follower0 * 100.0,
        load0.trim(),
        cpu1 * 100.0,
        follower1 * 100.0,
        followed1 / FOLLOWED,
        load1.trim(),
        (cpu1 - cpu0) * 100.0,
        (cpu1 - cpu0) / cpu0 * 100.0,
    );
    let mut costs: Vec<f64> = pairs.iter().map(|(q, b)| (b - q) / q * 100.0).collect();
    for (k, (q, b)) in pairs.iter().enumerate() {
        eprintln!(
            "  pair {k}: clients silent {:.1} %, receiving {:.1} % of a core: {:+.1} % of a core = {:+.1} %",
            q * 100.0,
            b * 100.0,
            (b - q) * 100.0,
            costs[k]
        );
    }
    costs.sort_by(f64::total_cmp);
    if !costs.is_empty() {
        eprintln!(
            "  the clients' cost, median of {} adjacent pairs: {:+.1} % of the service's CPU (range {:+.1} to {:+.1})",
            costs.len(),
            costs[costs.len() / 2],
            costs[0],
            costs[costs.len() - 1]
        );
    }
}
