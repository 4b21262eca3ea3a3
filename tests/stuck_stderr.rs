//! The service's own writes never block processing: `run` at debug level with stderr into a
//! pipe that nobody reads (it fills at 64 KiB, then every write would block) still rates every
//! event, and SIGTERM still stops it promptly.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use usage_aggregator::loadgen::{Workload, WorkloadSpec};

#[test]
fn stderr_that_nobody_reads_never_blocks_processing() {
    let mut env = TestEnv::new("stuck_stderr");
    env.cfg.log.filter = "debug".into();
    // Plenty to write: one INFO line per execution debit, and librdkafka's fetch debugging
    // from the consumers' own threads.
    env.cfg.alerts.execution_credits = Some("0.000001".parse().unwrap());
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let mut child = Command::new(TestEnv::bin())
        .arg("--config")
        .arg(&env.config_path)
        .args(["run", "--role", "all"])
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("USAGE_AGG_KAFKA_PROP_DEBUG", "fetch,msg")
        .spawn()
        .unwrap();
    // Hold the read end open and do not read it while the service works: the pipe fills.
    let mut unread = child.stderr.take().unwrap();
    env.children.push(child);

    let spec = WorkloadSpec {
        executions: 300,
        direct_calls: 1500,
        accounts: 10,
        seed: 44,
        run_id: env.name.clone(),
        ..Default::default()
    };
    let loader = env.loader();
    for g in Workload::new(spec, &env.catalog()) {
        loader
            .send(&env.cfg.topics.usage_events, &g.key, &g.payload)
            .unwrap();
    }
    loader.flush().unwrap();
    // Debug logging writes far more than 64 KiB for this many events: the pipe is full long
    // before the end, yet every debit comes out.
    let oracle = env.wait_for_oracle(Duration::from_secs(120));
    env.wait_for("clickhouse to catch up", Duration::from_secs(60), || {
        ch_count(&env, "debits") >= oracle.debits.len()
    });
    let (status, body) = http_get(&env.cfg.http.listen, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        env.terminate(0, Duration::from_secs(60)),
        "SIGTERM stops the service promptly and cleanly even with stderr stuck"
    );
    // What the pipe held: within one log line of its 64 KiB capacity, so it was full while
    // the service worked (a line that does not fit waits, and the logger dropped the rest).
    let mut written = Vec::new();
    unread.read_to_end(&mut written).unwrap();
    assert!(
        written.len() > 60 * 1024,
        "the service wrote {} bytes: not enough to fill a pipe",
        written.len()
    );
    eprintln!(
        "stuck stderr: {} debits, {} lines rated with an unread stderr pipe",
        oracle.debits.len(),
        oracle.lines.len()
    );
}
