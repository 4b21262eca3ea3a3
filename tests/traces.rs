//! Execution traces, live streams, listings and usage through the real binary, broker and
//! ClickHouse (issue 22 part B):
//! - the worked example traced open (live state) and closed; closed before ClickHouse has it
//!   (no sink running: answered from the committed topics), then from ClickHouse; every
//!   breakdown adds up to the total; listing, usage, conversation, and 400s naming the
//!   parameter;
//! - over a 50k-event workload, every execution's trace equals `rate --lines` on the same
//!   events (calls, costs, totals), closed and open;
//! - a stream survives SIGKILL of the instance serving it: the client reconnects to another
//!   with Last-Event-ID and sees every call and the debit exactly once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::sse::{Sse, SseStream};
use common::*;
use rust_decimal::Decimal;
use serde_json::Value;

fn d(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

fn call(id: &str, exec: &str, asset: &str, q: &str, conv: &str, at: &str) -> String {
    let kind = if asset.starts_with("openai/") {
        "model_call"
    } else {
        "tool_call"
    };
    format!(
        r#"{{"type":"{kind}","event_id":"{id}","occurred_at":"{at}","account_id":"acct-t","execution_id":"{exec}","asset_id":"{asset}","quantities":{q},"dimensions":{{"conversation_id":"{conv}"}}}}"#
    )
}

fn finish(exec: &str) -> String {
    format!(
        r#"{{"type":"execution_finished","event_id":"fin-{exec}","occurred_at":"2026-03-01T10:00:20Z","account_id":"acct-t","execution_id":"{exec}"}}"#
    )
}

/// The JSON answer, or `Null` while the instance does not answer yet (for polling).
fn try_json(addr: &str, path: &str) -> Value {
    serde_json::from_str(&api_get(addr, path).1).unwrap_or(Value::Null)
}

fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = api_get(addr, path);
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path}: {status} {body:?} is not json: {e}"));
    (status, v)
}

/// Every breakdown of a trace ends in a markup line and adds up to the total.
fn assert_adds_up(t: &Value) {
    let total = d(&t["total"]);
    assert_eq!(d(&t["subtotal"]) + d(&t["markup"]), total, "{t}");
    let mut lists = vec![&t["breakdown"]["by_asset"], &t["breakdown"]["by_component"]];
    if let Some(dims) = t["breakdown"]["by_dimension"].as_object() {
        lists.extend(dims.values());
    }
    for list in lists {
        let items = list.as_array().unwrap();
        assert_eq!(items.last().unwrap()["line"], "markup", "{list}");
        let sum: Decimal = items.iter().map(|i| d(&i["amount"])).sum();
        assert_eq!(sum, total, "{list}");
    }
}

#[test]
fn traces_open_closed_and_before_clickhouse_listing_usage_and_errors() {
    let mut env = TestEnv::new("traces_api");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    env.write_config();
    env.setup();
    // The pipeline only: no sink, so ClickHouse never holds these rows until one starts.
    env.spawn("pipeline", "agg.log");
    let addr = env.cfg.http.listen.clone();
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    // The README's example with the sample catalog's prices: gpt-4o-mini 1M input tokens
    // (0.15), web search 2 requests (0.016), database 5 queries (0.01).
    let events = [
        call(
            "t1",
            "exec-t",
            "openai/gpt-4o-mini",
            r#"{"input_tokens":1000000}"#,
            "conv-1",
            "2026-03-01T10:00:00.250Z",
        ),
        call(
            "t2",
            "exec-t",
            "tavily/web-search",
            r#"{"requests":2}"#,
            "conv-1",
            "2026-03-01T10:00:01Z",
        ),
        call(
            "t3",
            "exec-t",
            "platform/database-query",
            r#"{"queries":5}"#,
            "conv-1",
            "2026-03-01T10:00:02Z",
        ),
    ];
    for e in &events {
        loader.send(&topic, "exec-t", e.as_bytes()).unwrap();
    }
    loader.flush().unwrap();
    let path = "/v1/executions/exec-t?account_id=acct-t";
    env.wait_for("the open trace", Duration::from_secs(60), || {
        try_json(&addr, path)["calls_priced"] == 3
    });
    let (status, open) = get_json(&addr, path);
    assert_eq!(status, 200, "{open}");
    assert_eq!(open["status"], "open");
    assert_eq!(open["source"], "live");
    assert_eq!(d(&open["subtotal"]), "0.176".parse().unwrap());
    assert_eq!(d(&open["total"]), "0.2112".parse().unwrap());
    assert_eq!(
        open["calls"][0]["occurred_at"], "2026-03-01T10:00:00.250Z",
        "{open:#}"
    );
    assert_adds_up(&open);

    loader
        .send(&topic, "exec-t", finish("exec-t").as_bytes())
        .unwrap();
    loader.flush().unwrap();
    env.wait_for("the closed trace", Duration::from_secs(60), || {
        try_json(&addr, path)["status"] == "closed"
    });
    let (_, closed) = get_json(&addr, path);
    assert_eq!(
        env.ch("SELECT count() FROM {db}.debits").trim(),
        "0",
        "no sink: not in clickhouse"
    );
    assert_eq!(closed["source"], "committed");
    assert_eq!(closed["debits"].as_array().unwrap().len(), 1);
    assert_eq!(d(&closed["billed"]), d(&closed["total"]));
    assert_eq!(d(&closed["total"]), "0.2112".parse().unwrap());
    let running: Vec<String> = closed["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["running_subtotal"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(running, ["0.15", "0.166", "0.176"]);
    assert_eq!(closed["calls"][1]["kind"], "tool_call");
    assert_eq!(
        closed["calls"][0]["occurred_at"],
        "2026-03-01T10:00:00.250Z"
    );
    assert_adds_up(&closed);

    // A sink starts: the same trace, now from ClickHouse.
    env.spawn_with(
        "sink",
        "sink.log",
        &format!("127.0.0.1:{}", free_port()),
        &[],
    );
    env.wait_for("the sink", Duration::from_secs(60), || {
        env.ch("SELECT (SELECT count() FROM {db}.debits) + (SELECT count() FROM {db}.usage_transactions)").trim() == "4"
    });
    let (_, from_ch) = get_json(&addr, path);
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("source");
        v
    };
    assert_eq!(
        strip(from_ch),
        strip(closed.clone()),
        "the same trace from clickhouse"
    );

    // Listing, usage, conversation.
    let (status, list) = get_json(&addr, "/v1/accounts/acct-t/executions?limit=10");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["executions"][0]["execution_id"], "exec-t");
    assert_eq!(list["executions"][0]["status"], "closed");
    assert_eq!(list["executions"][0]["total"], closed["total"]);
    let (status, usage) = get_json(
        &addr,
        "/v1/accounts/acct-t/usage?group_by=component&from=2026-03-01&to=2026-03-01",
    );
    assert_eq!(status, 200, "{usage}");
    let groups: Decimal = usage["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| d(&g["amount"]))
        .sum();
    assert_eq!(groups + d(&usage["markup"]), d(&usage["total"]));
    assert_eq!(d(&usage["total"]), d(&closed["total"]));
    let (_, by_asset) = get_json(&addr, "/v1/accounts/acct-t/usage");
    let gpt = by_asset["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == "openai/gpt-4o-mini")
        .unwrap();
    assert_eq!(gpt["quantities"]["input_tokens"], "1000000");
    let (status, conv) = get_json(&addr, "/v1/accounts/acct-t/conversations/conv-1");
    assert_eq!(status, 200, "{conv}");
    assert_eq!(conv["total"], closed["total"]);
    assert_eq!(conv["executions"][0]["status"], "closed");

    // Errors: JSON naming the parameter.
    for (path, param) in [
        ("/v1/accounts/acct-t/executions?limt=5", "limt"),
        ("/v1/accounts/acct-t/executions?limit=0", "limit"),
        ("/v1/accounts/acct-t/usage?from=yesterday", "from"),
        ("/v1/accounts/acct-t/usage?group_by=week", "group_by"),
        ("/v1/accounts/acct-t/transactions?from=2026-13-01", "from"),
        ("/v1/executions/exec-t?account=acct-t", "account"),
        (
            "/v1/executions/exec-t/events?account_id=acct-t&last_event_id=x",
            "last_event_id",
        ),
    ] {
        let (status, e) = get_json(&addr, path);
        assert_eq!(
            (status, &e["parameter"]),
            (400, &Value::from(param)),
            "{path}: {e}"
        );
        assert!(e["error"].as_str().unwrap().contains(param), "{path}: {e}");
    }
    let (status, e) = get_json(&addr, "/v1/executions/nope?account_id=acct-t");
    assert_eq!(status, 404, "{e}");
    assert!(e["error"].is_string());
}

/// Rates `events` as `rate --lines` does (one stream, closed at the end): per (account,
/// execution), the lines in order and the debits.
type Rated = BTreeMap<(String, String), (Vec<Value>, Vec<Value>)>;

fn rate_lines(env: &TestEnv, events: &[Vec<u8>]) -> (Rated, u64) {
    let input: Vec<u8> = events
        .iter()
        .flat_map(|e| e.iter().copied().chain([b'\n']))
        .collect();
    let mut out = Vec::new();
    let summary = usage_aggregator::offline::rate(
        env.cfg.rollup_config(),
        &env.catalog(),
        &input[..],
        &mut out,
        true,
        usage_aggregator::offline::Rejects::To(&mut std::io::sink()),
    )
    .unwrap();
    let mut rated = Rated::new();
    for rec in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(rec).unwrap();
        let (is_line, x) = match (v.get("line"), v.get("debit")) {
            (Some(l), _) => (true, l.clone()),
            (_, Some(d)) => (false, d.clone()),
            _ => continue,
        };
        let Some(exec) = x["execution_id"].as_str() else {
            continue;
        };
        let e = rated
            .entry((
                x["account_id"].as_str().unwrap().to_string(),
                exec.to_string(),
            ))
            .or_default();
        if is_line { e.0.push(x) } else { e.1.push(x) }
    }
    (rated, summary.debits)
}

/// The trace's calls and totals against `rate`'s lines and debits.
fn assert_trace_equals_rate(t: &Value, lines: &[Value], debits: &[Value], open: bool) {
    let calls = t["calls"].as_array().unwrap();
    assert_eq!(calls.len(), lines.len(), "{t}");
    let mut running = Decimal::ZERO;
    for (c, l) in calls.iter().zip(lines) {
        running += d(&l["cost"]);
        assert_eq!(c["event_id"], l["event_id"]);
        assert_eq!(c["occurred_at"], l["occurred_at"]);
        assert_eq!(c["asset_id"], l["asset_id"]);
        assert_eq!(c["price_version"], l["price_version"]);
        assert_eq!(d(&c["cost"]), d(&l["cost"]), "{c}");
        assert_eq!(d(&c["running_subtotal"]), running, "{c}");
        let units = c["units"].as_array().unwrap();
        let want = l["units"].as_array().unwrap();
        assert_eq!(units.len(), want.len());
        for (u, w) in units.iter().zip(want) {
            assert_eq!(u["unit"], w["unit"]);
            assert_eq!(d(&u["quantity"]), d(&w["quantity"]));
            assert_eq!(d(&u["unit_price"]), d(&w["credits"]));
            assert_eq!(u["per"], w["per"]);
        }
    }
    let total: Decimal = debits.iter().map(|x| d(&x["total"])).sum();
    let markup: Decimal = debits.iter().map(|x| d(&x["markup"])).sum();
    assert_eq!(d(&t["subtotal"]), running, "{t}");
    assert_eq!(d(&t["markup"]), markup, "{t}");
    assert_eq!(d(&t["total"]), total, "{t}");
    assert_eq!(d(&t["billed"]), if open { Decimal::ZERO } else { total });
    assert_eq!(t["status"], if open { "open" } else { "closed" });
    assert_eq!(
        t["debits"].as_array().unwrap().len(),
        if open { 0 } else { debits.len() }
    );
    assert_adds_up(t);
}

/// Traces of `keys` fetched 4 at a time.
fn traces(addr: &str, keys: &[(String, String)]) -> Vec<Value> {
    let chunks: Vec<&[(String, String)]> = keys.chunks(keys.len().div_ceil(4).max(1)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(a, e)| {
                            let (status, v) =
                                get_json(addr, &format!("/v1/executions/{e}?account_id={a}"));
                            assert_eq!(status, 200, "{a}/{e}: {v}");
                            v
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
fn every_trace_of_a_50k_event_workload_equals_rate_lines_closed_and_open() {
    let mut env = TestEnv::new("traces_50k");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    env.write_config();
    env.setup();
    env.spawn("all", "agg.log");
    let closed = workload_for(&env, 1_800, 5_000, 22, 40, "2026-03-01T00:00:00Z");
    // Executions that never finish: open until the end of the test.
    let spec = usage_aggregator::loadgen::WorkloadSpec {
        executions: 60,
        direct_calls: 0,
        accounts: 10,
        seed: 23,
        start: "2026-03-02T00:00:00Z".parse().unwrap(),
        run_id: format!("{}-open", env.name),
        ..Default::default()
    };
    let open: Vec<_> = usage_aggregator::loadgen::Workload::new(spec, &env.catalog())
        .filter(|g| g.finish_of.is_none())
        .collect();
    let all: Vec<_> = closed.iter().chain(&open).collect();
    eprintln!(
        "{} events ({} of never-finished executions)",
        all.len(),
        open.len()
    );
    assert!(all.len() >= 50_000, "{}", all.len());
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    for g in &all {
        loader.send(&topic, &g.key, &g.payload).unwrap();
    }
    loader.flush().unwrap();
    let (rated_closed, want_debits) = rate_lines(
        &env,
        &closed.iter().map(|g| g.payload.clone()).collect::<Vec<_>>(),
    );
    let (rated_all, _) = rate_lines(
        &env,
        &all.iter().map(|g| g.payload.clone()).collect::<Vec<_>>(),
    );
    let open_keys: Vec<(String, String)> = rated_all
        .keys()
        .filter(|k| !rated_closed.contains_key(*k))
        .cloned()
        .collect();
    env.wait_for(
        "every closed execution's debits",
        Duration::from_secs(180),
        || env.debits_by_id().0.len() as u64 == want_debits,
    );
    let started = Instant::now();
    let keys: Vec<(String, String)> = rated_closed.keys().cloned().collect();
    for (t, k) in traces(&env.cfg.http.listen, &keys).iter().zip(&keys) {
        let (lines, debits) = &rated_closed[k];
        assert_trace_equals_rate(t, lines, debits, false);
    }
    eprintln!("{} closed traces in {:?}", keys.len(), started.elapsed());
    for (t, k) in traces(&env.cfg.http.listen, &open_keys)
        .iter()
        .zip(&open_keys)
    {
        let (lines, debits) = &rated_all[k];
        assert_eq!(t["source"], "live", "{t}");
        assert_trace_equals_rate(t, lines, debits, true);
    }
    assert!(open_keys.len() >= 50, "{}", open_keys.len());
}

fn sse_call(n: u32, exec: &str) -> String {
    call(
        &format!("{exec}-c{n}"),
        exec,
        "tavily/web-search",
        &format!(r#"{{"requests":{n}}}"#),
        "conv-s",
        &format!("2026-03-01T10:00:{n:02}Z"),
    )
}

#[test]
fn a_stream_survives_sigkill_of_its_instance_resuming_elsewhere_with_last_event_id() {
    let mut env = TestEnv::new("traces_sse");
    env.cfg.rollup.execution_idle_timeout = Duration::from_secs(3600);
    env.write_config();
    env.setup();
    // Two instances in one consumer group: each rates some partitions and serves any stream.
    let serving = env.spawn("all", "serving.log");
    let first = env.cfg.http.listen.clone();
    let other = format!("127.0.0.1:{}", free_port());
    env.spawn_with("all", "other.log", &other, &[]);
    for addr in [&first, &other] {
        env.wait_for("the instance", Duration::from_secs(60), || {
            api_get(addr, "/v1/whoami").0 == 200
        });
    }
    let exec = "exec-s";
    let path = format!("/v1/executions/{exec}/events?account_id=acct-t");
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let send = |events: &[String]| {
        for e in events {
            loader.send(&topic, exec, e.as_bytes()).unwrap();
        }
        loader.flush().unwrap();
    };

    // Session 1 on the first instance: calls 1-5 arrive live.
    let mut s1 = None;
    env.wait_for(
        "the stream on the first instance",
        Duration::from_secs(30),
        || {
            s1 = SseStream::open(&first, &path, None);
            s1.is_some()
        },
    );
    let mut s1 = s1.unwrap();
    let opened = s1.next(Duration::from_secs(30)).expect("the open event");
    assert_eq!(opened.event, "open", "{opened:?}");
    send(&(1..=5).map(|n| sse_call(n, exec)).collect::<Vec<_>>());
    let mut seen: Vec<Sse> = Vec::new();
    while seen.len() < 5 {
        let e = s1
            .next(Duration::from_secs(60))
            .expect("calls 1-5 on the first instance");
        assert_eq!(e.event, "call", "{e:?}");
        seen.push(e);
    }
    let last_id = seen.last().unwrap().id.clone().unwrap();

    // The serving instance dies mid-execution (it may also be the one rating it).
    env.kill9(serving);
    assert!(
        s1.next(Duration::from_secs(10)).is_none(),
        "the stream broke"
    );
    send(
        &(6..=10)
            .map(|n| sse_call(n, exec))
            .chain([finish(exec)])
            .collect::<Vec<_>>(),
    );

    // Session 2 on the other instance, resumed after the last event seen.
    let mut s2 =
        SseStream::open(&other, &path, Some(&last_id)).expect("the stream on the other instance");
    let opened = s2.next(Duration::from_secs(30)).expect("the open event");
    assert_eq!(opened.event, "open", "{opened:?}");
    assert_eq!(opened.data["position"], last_id.as_str(), "{opened:?}");
    let ended = loop {
        let e = s2
            .next(Duration::from_secs(120))
            .expect("calls 6-10, the debit and the end (the other instance takes over rating)");
        match e.event.as_str() {
            "end" => break e,
            "call" | "debit" => seen.push(e),
            other => panic!("unexpected {other}: {e:?}"),
        }
    };

    // Every call once, in order, then the debit once; running totals without a gap.
    let calls: Vec<&Sse> = seen.iter().filter(|e| e.event == "call").collect();
    let ids: Vec<&str> = calls
        .iter()
        .map(|e| e.data["call"]["event_id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (1..=10).map(|n| format!("{exec}-c{n}")).collect();
    assert_eq!(ids, want, "every call exactly once, in order");
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(c.data["running"]["calls"], i as u64 + 1, "{c:?}");
    }
    let debits: Vec<&Sse> = seen.iter().filter(|e| e.event == "debit").collect();
    assert_eq!(debits.len(), 1, "the debit exactly once: {debits:?}");
    assert_eq!(
        seen.last().unwrap().event,
        "debit",
        "the debit after its calls"
    );
    // 55 requests at 0.008 = 0.44, markup 0.088.
    let debit = &debits[0].data;
    assert_eq!(
        d(&debit["debit"]["subtotal"]),
        "0.44".parse().unwrap(),
        "{debit}"
    );
    assert_eq!(
        d(&debit["debit"]["total"]),
        "0.528".parse().unwrap(),
        "{debit}"
    );
    assert_eq!(d(&debit["running"]["billed"]), d(&debit["debit"]["total"]));
    assert_eq!(d(&debit["running"]["total"]), d(&debit["debit"]["total"]));
    assert_eq!(
        d(&ended.data["running"]["billed"]),
        "0.528".parse().unwrap()
    );
    let event_ids: Vec<&str> = seen.iter().map(|e| e.id.as_deref().unwrap()).collect();
    let unique: std::collections::HashSet<&&str> = event_ids.iter().collect();
    assert_eq!(
        unique.len(),
        event_ids.len(),
        "event ids are unique: {event_ids:?}"
    );

    // The same stream from the start, on the surviving instance: the same events and ids.
    let mut full = SseStream::open(&other, &path, None).unwrap();
    let mut replay = Vec::new();
    loop {
        let e = full.next(Duration::from_secs(60)).expect("the replay");
        match e.event.as_str() {
            "end" => break,
            "call" | "debit" => replay.push(e),
            _ => {}
        }
    }
    let shape = |v: &[Sse]| -> Vec<(String, Option<String>, Value)> {
        v.iter()
            .map(|e| (e.event.clone(), e.id.clone(), e.data.clone()))
            .collect()
    };
    assert_eq!(
        shape(&replay),
        shape(&seen),
        "a resumed stream equals an uninterrupted one"
    );

    // The conversation's stream and view: the ten calls and the debit, the same total.
    let conv = "/v1/accounts/acct-t/conversations/conv-s";
    let mut cs = SseStream::open(&other, &format!("{conv}/events"), None).unwrap();
    let (mut conv_calls, mut conv_debits) = (0, 0);
    while conv_calls < 10 || conv_debits < 1 {
        let e = cs
            .next(Duration::from_secs(30))
            .expect("the conversation's events");
        match e.event.as_str() {
            "call" => conv_calls += 1,
            "debit" => {
                conv_debits += 1;
                assert_eq!(
                    d(&e.data["running"]["billed"]),
                    "0.528".parse().unwrap(),
                    "{e:?}"
                );
            }
            _ => {}
        }
    }
    let (status, v) = get_json(&other, conv);
    assert_eq!(status, 200, "{v}");
    assert_eq!(d(&v["total"]), "0.528".parse().unwrap(), "{v}");
}
