//! Full disks, for real: ClickHouse's data directory and the broker's log directory on a
//! small tmpfs that this test mounts (root only) and fills mid-run with a filler file, then
//! frees. Money and rows are checked against the oracle afterwards: nothing lost, nothing
//! doubled. Named `fault_*`: they run one at a time (.config/nextest.toml).
//!
//! When `mount` is refused with EPERM (no root, or a container without CAP_SYS_ADMIN), each
//! test prints why and returns without asserting; any other mount failure fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use usage_aggregator::loadgen::Generated;

/// A size-limited tmpfs mounted at a directory; unmounted (lazily, so a server still
/// holding it cannot keep it) when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts `size` (e.g. "64m") at `path`; None when mounting is not permitted here.
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("the mount command exists");
        if out.status.success() {
            return Some(SmallDisk {
                path: path.to_path_buf(),
            });
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let denied = err.contains("permission denied")
            || err.contains("Operation not permitted")
            || err.contains("must be superuser");
        assert!(denied, "mount tmpfs at {} failed: {err}", path.display());
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here ({}); the full-disk tests need root",
            err.trim()
        );
        None
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes a filler file until the filesystem is full (ENOSPC ends `dd`).
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", self.filler().display()))
            .stderr(std::process::Stdio::null())
            .status();
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .unwrap();
        eprintln!(
            "filled {}: {} bytes left",
            self.path.display(),
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .unwrap_or("?")
                .trim()
        );
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn workload(env: &TestEnv, executions: u64, direct: u64, seed: u64) -> Vec<Generated> {
    workload_for(env, executions, direct, seed, 20, "2026-07-01T00:00:00Z")
}

/// Sends `events` from a thread, a slice every 100 ms, so that the service works while the
/// test changes the disk under it.
fn feed(env: &TestEnv, events: Vec<Generated>) -> std::thread::JoinHandle<()> {
    let loader = env.loader();
    let topic = env.cfg.topics.usage_events.clone();
    std::thread::spawn(move || {
        for (i, g) in events.iter().enumerate() {
            loader.send(&topic, &g.key, &g.payload).unwrap();
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        loader.flush().unwrap();
    })
}

#[test]
fn fault_clickhouse_disk_full_then_freed_lands_every_row_once() {
    let mut env = TestEnv::new("ch_disk_full");
    let Some(disk) = SmallDisk::mount(&env.dir.path().join("clickhouse/data"), "64m") else {
        return;
    };
    let ch = PrivateClickHouse::start(env.dir.path());
    env.cfg.clickhouse.url = ch.url.clone();
    env.write_config();
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let events = workload(&env, 900, 3000, 31);
    let (first, second) = events.split_at(events.len() / 3);
    let feeder = feed(&env, first.to_vec());
    env.wait_for("rows in clickhouse", Duration::from_secs(60), || {
        ch_count(&env, "debits") > 0
    });

    // The disk fills up while events keep coming.
    disk.fill();
    feeder.join().unwrap();
    let (before, _) = env.debits_by_id();
    let feeder = feed(&env, second.to_vec());
    let listen = env.cfg.http.listen.clone();
    let mut why = String::new();
    env.wait_for(
        "/readyz to say the disk is full",
        Duration::from_secs(60),
        || {
            // The sink is not ready, the instance stays in rotation (200).
            let (status, body) = readyz(&listen);
            why = not_ready_detail(&body, "sink").unwrap_or_default();
            status == 200 && why.contains("disk is full")
        },
    );
    eprintln!("/readyz while full: {why}");
    let retries = |env: &TestEnv| metric(&env.metrics(), "usage_agg_sink_retries_total");
    let r0 = retries(&env);
    env.wait_for("insert retries", Duration::from_secs(60), || {
        retries(&env) > r0 + 1.0
    });
    feeder.join().unwrap();
    let full_since = Instant::now();
    env.wait_for(
        "debits to keep flowing to kafka",
        Duration::from_secs(60),
        || env.debits_by_id().0.len() > before.len() + 100,
    );
    let stored_while_full = ch_count(&env, "debits");
    eprintln!(
        "disk full for {:.0} s: {} debits in kafka, {stored_while_full} in clickhouse",
        full_since.elapsed().as_secs_f64(),
        env.debits_by_id().0.len()
    );

    // Space comes back: every row lands, once.
    disk.free();
    let oracle = env.wait_for_oracle(Duration::from_secs(180));
    env.wait_for("clickhouse to catch up", Duration::from_secs(180), || {
        ch_count(&env, "debits") >= oracle.debits.len()
            && ch_count(&env, "usage_transactions") >= oracle.lines.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_clickhouse_exact(&env, &oracle);
    env.wait_for("/readyz 200", Duration::from_secs(30), || {
        http_get(&listen, "/readyz").0 == 200
    });
    eprintln!(
        "clickhouse disk full: {} debits and {} lines, each once after the disk was freed",
        oracle.debits.len(),
        oracle.lines.len()
    );
    drop(ch);
}

#[test]
fn fault_broker_disk_full_stops_then_resumes_without_loss_or_repeat() {
    let mut env = TestEnv::new("broker_disk_full");
    let Some(disk) = SmallDisk::mount(&env.dir.path().join("broker/data"), "96m") else {
        return;
    };
    let mut broker = PrivateBroker::start(env.dir.path());
    env.cfg.kafka.brokers = broker.addr.clone();
    env.write_config();
    env.env.push((
        "USAGE_AGG_KAFKA_PROP_SOCKET_TIMEOUT_MS".into(),
        "3000".into(),
    ));
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    let events = workload(&env, 600, 2500, 32);
    let (first, second) = events.split_at(events.len() / 3);
    let feeder = feed(&env, first.to_vec());
    let listen = env.cfg.http.listen.clone();
    env.wait_for("debits", Duration::from_secs(60), || {
        !env.debits_by_id().0.is_empty()
    });

    // The log dir fills up while the pipeline produces.
    let feeder2 = {
        feeder.join().unwrap();
        disk.fill();
        feed(&env, second.to_vec())
    };
    let mut why = String::new();
    let full_since = Instant::now();
    env.wait_for("/readyz to fail", Duration::from_secs(90), || {
        let (status, body) = http_get(&listen, "/readyz");
        why = body;
        status == 503
    });
    eprintln!(
        "/readyz {:.0} s after the disk filled: {why}",
        full_since.elapsed().as_secs_f64()
    );
    let server_log = std::fs::read_to_string(broker.dir.join("logs/server.log")).unwrap();
    let exited = broker
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().unwrap().is_some());
    let what_kafka_did: Vec<&str> = server_log
        .lines()
        .filter(|l| {
            l.contains("No space left")
                || l.contains("offline")
                || l.contains("Shutdown broker because")
                || l.contains("Halting")
        })
        .take(4)
        .collect();
    eprintln!(
        "broker exited by itself: {exited}; it said:\n{}",
        what_kafka_did.join("\n")
    );

    // Space comes back; the broker is restarted (Apache Kafka halts when its only log dir
    // fails), as a supervisor would.
    disk.free();
    if exited || !what_kafka_did.is_empty() {
        broker.kill();
        broker.resume();
    }
    feeder2.join().unwrap();
    // A transaction that failed for good stops the pipeline (a restart resumes from the last
    // committed one): restart it when it exits, as a supervisor would, until the money is in.
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        restarts += env.respawn_if_exited(0, "all", "agg.log");
        let oracle = env.oracle();
        let (topic, _) = env.debits_by_id();
        if oracle.open == 0 && topic.keys().eq(oracle.debits.keys()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "debits never matched the oracle: {} of {} after {restarts} restart(s)",
            topic.len(),
            oracle.debits.len()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let oracle = env.wait_for_oracle(Duration::from_secs(10));
    let (_, raw) = env.debits_by_id();
    assert_eq!(
        raw,
        oracle.debits.len(),
        "a read_committed reader sees each debit once across the full disk"
    );
    env.wait_for("clickhouse to catch up", Duration::from_secs(120), || {
        ch_count(&env, "debits") >= oracle.debits.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_clickhouse_exact(&env, &oracle);
    let mut last = String::new();
    let ready = (0..240).any(|_| {
        let (status, body) = http_get(&listen, "/readyz");
        last = body;
        std::thread::sleep(Duration::from_millis(250));
        status == 200
    });
    assert!(ready, "/readyz never recovered: {last}");
    eprintln!(
        "broker disk full: {} debits equal the oracle, zero repeats; the aggregator was restarted {restarts} time(s)",
        oracle.debits.len()
    );
}
