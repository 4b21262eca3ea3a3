//! Operator experience through the binary, one test per kind of failure: unreachable broker,
//! bad ClickHouse URL or password file, HTTP port taken, relative paths, closed pipes, `rate`
//! for scripts, error text, catalog rules, the topic prefix. Kafka and ClickHouse are the
//! real services (USAGE_AGG_TEST_KAFKA, USAGE_AGG_TEST_CLICKHOUSE).
//!
//! One binary, one file a job under tests/operator/: unreachable.rs (a service or port that
//! is not there), not_set_up.rs (a trial before `setup`, the topic prefix, waiting for a
//! catalog), files_and_pipes.rs (relative paths, closed pipes, `rate` for scripts),
//! messages.rs (error text and quiet success).

mod common;
#[path = "operator/files_and_pipes.rs"]
mod files_and_pipes;
#[path = "operator/messages.rs"]
mod messages;
#[path = "operator/not_set_up.rs"]
mod not_set_up;
#[path = "support/bin.rs"]
mod support;
#[path = "operator/unreachable.rs"]
mod unreachable;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use support::wait_or_kill;

/// SIGTERM to a `run` started with piped stderr; its exit and everything it wrote to stderr
/// (killed and failed if it has not stopped within 30 s).
fn stop_run(mut child: std::process::Child) -> (std::process::Output, String) {
    Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (wait_or_kill(child, Duration::from_secs(30), &["run"]), err)
}
