//! The sink's rebalances (the stage runtime's rule: a revocation drops every buffered row, an
//! assignment loads the resume points from ClickHouse before it assigns): a second sink
//! joins mid-stream, then the first is killed with SIGKILL; ClickHouse ends up holding every
//! debit and priced line exactly once, with the oracle's sums.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn sinks_joining_and_dying_mid_stream_store_every_row_once() {
    let mut env = TestEnv::new("sink_rebalance");
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("pipeline", "pipeline.log");
    let first = env.spawn_with(
        "sink",
        "sink1.log",
        &format!("127.0.0.1:{}", free_port()),
        &[],
    );
    let events = workload_for(&env, 600, 2000, 7, 25, "2026-05-01T00:00:00Z");
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    let n = events.len();
    let producer = std::thread::spawn(move || {
        for (i, g) in events.iter().enumerate() {
            loader.send(&topic, &g.key, &g.payload).unwrap();
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(60));
            }
        }
        loader.flush().unwrap();
    });
    env.wait_for("rows in clickhouse", Duration::from_secs(90), || {
        ch_count(&env, "usage_transactions") > 0
    });
    // A second member: the group rebalances while rows flow.
    env.spawn_with(
        "sink",
        "sink2.log",
        &format!("127.0.0.1:{}", free_port()),
        &[],
    );
    env.wait_for("the second sink assigned", Duration::from_secs(60), || {
        env.log("sink2.log").contains("partitions assigned")
    });
    // The first has taken its share of the new assignment (restored from ClickHouse).
    env.wait_for("the first sink reassigned", Duration::from_secs(60), || {
        env.log("sink1.log").matches("partitions assigned").count() >= 2
    });
    // The first dies without a word: its partitions move to the second.
    env.kill9(first);
    producer.join().unwrap();
    let oracle = env.wait_for_oracle(Duration::from_secs(180));
    let (debits, lines) = (oracle.debits.len(), oracle.lines.len());
    env.wait_for("every row in clickhouse", Duration::from_secs(180), || {
        ch_count(&env, "debits") >= debits && ch_count(&env, "usage_transactions") >= lines
    });
    assert_clickhouse_exact(&env, &oracle);
    // The group did move: the second sink was assigned twice (joining, then taking over).
    let assigned = |log: &str| {
        env.log(log)
            .lines()
            .filter(|l| l.contains("partitions assigned"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (one, two) = (assigned("sink1.log"), assigned("sink2.log"));
    eprintln!("sink 1: {one:#?}\nsink 2: {two:#?}");
    assert!(
        one.len() >= 2,
        "the first sink rebalanced when the second joined"
    );
    assert!(
        two.len() >= 2,
        "the second sink took over the first's partitions"
    );
    eprintln!("{n} events, {debits} debits, {lines} priced lines: each stored once");
}
