//! Live streams and just-closed traces through the real binary and broker (issues 22, 23):
//! - every stream client sees every call and debit of its execution exactly once, in order,
//!   also when it falls behind its queue (`traces.stream_buffer`) under a burst: it is never
//!   cut off, it reads what it missed from the follower's tail;
//! - a trace polled while its execution closes is found at every poll (no 404 between the
//!   live state and the committed debit).

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::sse::{Sse, SseStream};
use common::*;
use rust_decimal::Decimal;
use serde_json::Value;

const ACCOUNT: &str = "acct-streams";

fn call(exec: &str, n: u32) -> String {
    format!(
        r#"{{"type":"tool_call","event_id":"{exec}-c{n}","occurred_at":"2026-03-01T10:{:02}:{:02}Z","account_id":"{ACCOUNT}","execution_id":"{exec}","asset_id":"tavily/web-search","quantities":{{"requests":1}}}}"#,
        n / 60,
        n % 60
    )
}

fn finish(exec: &str) -> String {
    format!(
        r#"{{"type":"execution_finished","event_id":"fin-{exec}","occurred_at":"2026-03-01T11:00:00Z","account_id":"{ACCOUNT}","execution_id":"{exec}"}}"#
    )
}

fn d(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

/// Reads a stream to its `end`, `pause` between events (a slow client); every event.
fn read_to_end(mut s: SseStream, pause: Duration) -> Vec<Sse> {
    let mut got = Vec::new();
    loop {
        let e = s
            .next(Duration::from_secs(120))
            .unwrap_or_else(|| panic!("the stream broke or stalled after {} events", got.len()));
        let end = e.event == "end";
        got.push(e);
        if end {
            return got;
        }
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
}

/// One execution's stream, as a client saw it: `open`, then its `calls` calls in order with
/// running counts 1..=calls, then its debit once, then `end`; nothing else.
fn assert_every_event(exec: &str, calls: u32, events: &[Sse], history: bool) {
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let at = |what: &str| format!("{exec}: {what} in {names:?}");
    let open = names
        .iter()
        .position(|n| *n == "open")
        .expect("an open event");
    if !history {
        assert_eq!(open, 0, "{}", at("open first"));
    }
    let body: Vec<&Sse> = events.iter().filter(|e| e.event != "open").collect();
    assert_eq!(
        body.len() as u32,
        calls + 2,
        "{}",
        at("calls + debit + end")
    );
    for (i, e) in body[..calls as usize].iter().enumerate() {
        assert_eq!(e.event, "call", "{}", at("a call"));
        let n = i as u32 + 1;
        assert_eq!(
            e.data["call"]["event_id"],
            format!("{exec}-c{n}"),
            "{exec}: {e:?}"
        );
        assert_eq!(e.data["running"]["calls"], n, "{exec}: {e:?}");
    }
    let debit = body[calls as usize];
    assert_eq!(debit.event, "debit", "{}", at("the debit after the calls"));
    let subtotal = Decimal::from(calls) * "0.008".parse::<Decimal>().unwrap();
    assert_eq!(d(&debit.data["debit"]["subtotal"]), subtotal, "{debit:?}");
    assert_eq!(
        d(&debit.data["debit"]["total"]),
        subtotal * "1.2".parse::<Decimal>().unwrap(),
        "{debit:?}"
    );
    assert_eq!(body[calls as usize + 1].event, "end", "{}", at("end"));
    let ids: std::collections::HashSet<&str> = body[..=calls as usize]
        .iter()
        .map(|e| e.id.as_deref().unwrap())
        .collect();
    assert_eq!(ids.len() as u32, calls + 1, "{}", at("unique event ids"));
}

#[test]
fn every_stream_client_gets_every_event_also_when_it_falls_behind() {
    const EXECS: usize = 6;
    const CALLS: u32 = 80;
    let mut env = TestEnv::new("streams_lag");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    // A queue of 2 messages per client: the burst below overflows every queue many times.
    env.cfg.traces.stream_buffer = 2;
    env.write_config();
    env.setup();
    env.spawn("all", "all.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("the instance", Duration::from_secs(60), || {
        api_get(&addr, "/v1/whoami").0 == 200
    });
    let execs: Vec<String> = (0..EXECS).map(|i| format!("exec-lag-{i}")).collect();
    let path = |exec: &str| format!("/v1/executions/{exec}/events?account_id={ACCOUNT}");
    let mut s0 = None;
    env.wait_for("the first stream", Duration::from_secs(30), || {
        s0 = SseStream::open(&addr, &path(&execs[0]), None);
        s0.is_some()
    });
    drop(s0);

    // Per execution: a client reading as fast as it can and one pausing 10 ms per event,
    // both open before the first call.
    let barrier = Arc::new(Barrier::new(2 * EXECS + 1));
    let mut clients = Vec::new();
    for exec in &execs {
        for pause in [Duration::ZERO, Duration::from_millis(10)] {
            let mut s = SseStream::open(&addr, &path(exec), None).expect("the stream");
            let open = s.next(Duration::from_secs(30)).expect("the open event");
            assert_eq!(open.event, "open", "{open:?}");
            let (b, exec) = (barrier.clone(), exec.clone());
            clients.push((
                exec.clone(),
                false,
                thread::spawn(move || {
                    b.wait();
                    let mut events = vec![open];
                    events.extend(read_to_end(s, pause));
                    events
                }),
            ));
        }
    }
    barrier.wait();

    // A burst: every call of every execution at once, interleaved, then the finishes.
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let half = CALLS / 2;
    for n in 1..=CALLS {
        for exec in &execs {
            loader.send(&topic, exec, call(exec, n).as_bytes()).unwrap();
        }
        if n == half {
            loader.flush().unwrap();
        }
    }
    loader.flush().unwrap();
    // A late client of the first execution: history, then live, while the burst goes on.
    let late = SseStream::open(&addr, &path(&execs[0]), None).expect("the late stream");
    clients.push((
        execs[0].clone(),
        true,
        thread::spawn(move || read_to_end(late, Duration::ZERO)),
    ));
    for exec in &execs {
        loader.send(&topic, exec, finish(exec).as_bytes()).unwrap();
    }
    loader.flush().unwrap();

    let started = Instant::now();
    let n = clients.len();
    for (exec, history, c) in clients {
        let events = c.join().expect("a client");
        assert_every_event(&exec, CALLS, &events, history);
    }
    let lagged = metric(&env.metrics(), "usage_agg_api_streams_lagged_total");
    eprintln!(
        "{n} clients, {} calls each: every event once, in order, in {:.1} s; queues overflowed {lagged} times",
        CALLS,
        started.elapsed().as_secs_f64()
    );
    assert!(
        lagged > 0.0,
        "the burst should have overflowed the 2-message queues (the path under test)"
    );
}

/// Polls `path` until `stop`; every answer's status and body.
fn poll(
    addr: String,
    path: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(u16, String)> {
    let mut seen = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seen.push(api_get(&addr, &path));
        thread::sleep(Duration::from_millis(5));
    }
    seen
}

#[test]
fn a_trace_polled_while_its_execution_closes_is_found_at_every_poll() {
    let mut env = TestEnv::new("streams_close");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    env.write_config();
    env.setup();
    env.spawn("all", "all.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("the instance", Duration::from_secs(60), || {
        api_get(&addr, "/v1/whoami").0 == 200
    });
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    // Two executions: one whose calls are committed before it closes, one whose calls and
    // finish arrive together (nothing of it committed before it closes).
    let (slow, quick) = ("exec-close-slow", "exec-close-quick");
    for n in 1..=3 {
        loader.send(&topic, slow, call(slow, n).as_bytes()).unwrap();
    }
    loader.flush().unwrap();
    let with_account = |e: &str| format!("/v1/executions/{e}?account_id={ACCOUNT}");
    env.wait_for("the open trace", Duration::from_secs(60), || {
        api_get(&addr, &with_account(slow)).0 == 200
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = [with_account(slow), format!("/v1/executions/{slow}")]
        .into_iter()
        .map(|p| {
            let (a, s) = (addr.clone(), stop.clone());
            thread::spawn(move || poll(a, p, s))
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    loader.send(&topic, slow, finish(slow).as_bytes()).unwrap();
    for n in 1..=3 {
        loader
            .send(&topic, quick, call(quick, n).as_bytes())
            .unwrap();
    }
    loader
        .send(&topic, quick, finish(quick).as_bytes())
        .unwrap();
    loader.flush().unwrap();
    // The quick one: polled from its first answer on.
    let started = Instant::now();
    let mut quick_seen = Vec::new();
    loop {
        let r = api_get(&addr, &with_account(quick));
        if r.0 == 200 || !quick_seen.is_empty() {
            quick_seen.push(r);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the quick execution never showed"
        );
        if quick_seen.len() > 50 && started.elapsed() > Duration::from_secs(6) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    // Past the close (and the sink's write to ClickHouse): the slow one is billed.
    env.wait_for(
        "the slow execution's debit",
        Duration::from_secs(60),
        || {
            let (s, b) = api_get(&addr, &with_account(slow));
            s == 200 && b.contains("\"debits\":[{")
        },
    );
    thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = quick_seen;
    let mut open_then_closed = 0;
    for p in pollers {
        let seen = p.join().unwrap();
        let billed = seen
            .iter()
            .filter(|(_, b)| b.contains("\"debits\":[{"))
            .count();
        open_then_closed += usize::from(billed > 0 && billed < seen.len());
        all.extend(seen);
    }
    let bad: Vec<&(u16, String)> = all.iter().filter(|(s, _)| *s != 200).collect();
    eprintln!(
        "{} polls during the closes, {} not 200",
        all.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "every poll finds the trace: {bad:?}");
    assert_eq!(
        open_then_closed, 2,
        "both pollers saw the slow execution open, then billed"
    );
}

/// The follower knows which executions the messages it let go of named: a stream of an
/// execution with none there (here one not begun yet) opens without reading Kafka, though
/// its history range (from the sink's position: no sink runs here) lies far below the
/// follower's 2-message tail. Before, every such stream scanned that range from Kafka.
/// An execution whose calls left the tail still gets all of them (from Kafka).
#[test]
fn a_new_executions_stream_reads_no_history_from_kafka() {
    const CALLS: u32 = 5;
    let mut env = TestEnv::new("streams_new");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    env.cfg.traces.follow_buffer = 8;
    env.write_config();
    env.setup();
    env.spawn("pipeline", "pipeline.log");
    let addr = env.cfg.http.listen.clone();
    env.wait_for("the instance", Duration::from_secs(60), || {
        api_get(&addr, "/v1/whoami").0 == 200
    });
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let send = |exec: &str, calls: u32| {
        for n in 1..=calls {
            loader.send(&topic, exec, call(exec, n).as_bytes()).unwrap();
        }
        loader.send(&topic, exec, finish(exec).as_bytes()).unwrap();
        loader.flush().unwrap();
    };
    let (old, new) = ("exec-evicted", "exec-new");
    send(old, 30);
    env.wait_for("the old execution's debit", Duration::from_secs(60), || {
        let (s, b) = api_get(&addr, &format!("/v1/executions/{old}?account_id={ACCOUNT}"));
        s == 200 && b.contains("\"debits\":[{")
    });
    let reads = || metric(&env.metrics(), "usage_agg_api_follow_kafka_reads_total");
    let before = reads();
    let path = |exec: &str| format!("/v1/executions/{exec}/events?account_id={ACCOUNT}");
    let mut s = SseStream::open(&addr, &path(new), None).expect("the new execution's stream");
    let open = s.next(Duration::from_secs(30)).expect("the open event");
    assert_eq!(open.event, "open", "{open:?}");
    assert_eq!(open.data["history_events"], 0, "{open:?}");
    assert_eq!(
        reads(),
        before,
        "opening a new execution's stream read Kafka"
    );
    send(new, CALLS);
    let mut events = vec![open];
    events.extend(read_to_end(s, Duration::ZERO));
    assert_every_event(new, CALLS, &events, false);
    assert_eq!(reads(), before, "following a new execution read Kafka");

    // Executions whose messages left the tail: everything, from Kafka.
    for (exec, calls) in [(old, 30), (new, CALLS)] {
        let s = SseStream::open(&addr, &path(exec), None).expect("the stream");
        assert_every_event(exec, calls, &read_to_end(s, Duration::ZERO), true);
    }
    assert!(
        reads() > before,
        "the evicted executions' history came from Kafka"
    );
}
