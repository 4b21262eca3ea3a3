//! Test harness: talks to the real broker and ClickHouse that scripts/services started
//! (USAGE_AGG_TEST_KAFKA, USAGE_AGG_TEST_CLICKHOUSE), gives each test its own topics, groups
//! and database, runs the real binary, and computes the oracle with the rating core.
//!
//! One job per file, all re-exported here so a test imports `common::*` (or `common::NAME`):
//! test_env.rs (the environment and its processes), topics.rs (reading topics back),
//! oracle.rs (the rating core's expected result, workloads), ports.rs (reserved ports for
//! the processes a test starts), http.rs (API calls, metrics),
//! clickhouse.rs (queries, a private ClickHouse), broker.rs (a private broker), and the helpers
//! of some tests: acls.rs, bench.rs, cluster.rs, ledger.rs, sse.rs.
#![allow(dead_code)]

pub mod acls;
pub mod bench;
mod broker;
mod clickhouse;
pub mod cluster;
mod http;
pub mod ledger;
mod oracle;
mod ports;
pub mod sse;
mod test_env;
mod topics;

#[allow(unused_imports)] // each test binary uses a part of the harness
pub use broker::*;
#[allow(unused_imports)]
pub use clickhouse::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use oracle::*;
#[allow(unused_imports)]
pub use ports::*;
#[allow(unused_imports)]
pub use test_env::*;
#[allow(unused_imports)]
pub use topics::*;

use std::path::PathBuf;

pub fn kafka_addr() -> String {
    std::env::var("USAGE_AGG_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub fn clickhouse_url() -> String {
    std::env::var("USAGE_AGG_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// Which ClickHouse the private servers of the tests are (`USAGE_AGG_TEST_CLICKHOUSE_SERVER`):
/// `18.16` (Debian's clickhouse-server, the default) or `modern` (ClickHouse 26.9 from
/// chdb-core, `scripts/services clickhouse-modern-run`). scripts/test runs the ClickHouse
/// tests once against each, with USAGE_AGG_TEST_CLICKHOUSE pointing at the matching shared one.
pub fn clickhouse_is_modern() -> bool {
    std::env::var("USAGE_AGG_TEST_CLICKHOUSE_SERVER").is_ok_and(|v| v == "modern")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000;
    format!("{name}_{}_{n}", std::process::id())
}
