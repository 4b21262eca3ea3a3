//! The oracle: what the rating core computes on exactly what is in the usage topic, and the
//! checks that the service's debits and ClickHouse rows equal it; workloads to feed it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use usage_aggregator::debit::Debit;
use usage_aggregator::loadgen::{Generated, Workload, WorkloadSpec};
use usage_aggregator::rollup::{Output, PartitionRollup};

use super::{TestEnv, parse_tsv_map};

impl TestEnv {
    /// The rating core's result on exactly what is in the usage topic (markers included).
    pub fn oracle(&self) -> Oracle {
        let catalog = self.catalog();
        let mut o = Oracle::default();
        for (p, msgs) in self.read_topic(&self.cfg.topics.usage_events) {
            let mut r = PartitionRollup::new(self.cfg.rollup_config(), p);
            let mut out = Vec::new();
            for (offset, _, payload) in &msgs {
                // Close markers in these tests are the aggregator's own (the pipeline accepts
                // them by their `ua-marker-mac` header, which read_topic does not return);
                // tests that forge markers do not use the oracle.
                let marker = serde_json::from_slice::<serde_json::Value>(payload)
                    .is_ok_and(|v| v["type"] == "execution_timeout");
                let origin = if marker {
                    usage_aggregator::event::Origin::Aggregator
                } else {
                    usage_aggregator::event::Origin::Producer
                };
                r.process_from(origin, *offset, payload, &catalog, 0, &mut out);
                o.events += 1;
            }
            o.open += r.open_executions();
            for x in out {
                match x {
                    Output::Debit(d) => {
                        o.source.insert(d.debit_id.clone(), p);
                        o.debits.insert(d.debit_id.clone(), d.encode());
                    }
                    Output::Line(l) => {
                        o.lines.insert(l.event_id.clone());
                    }
                    Output::Rejected(_) => o.rejected += 1,
                }
            }
        }
        o
    }

    /// [`Self::wait_for_oracle`] while acting as a supervisor for child `i`: restarted (with
    /// `role`, logging to `log_name`) whenever it has exited. Returns the oracle and the
    /// number of restarts.
    pub fn wait_for_oracle_supervised(
        &mut self,
        i: usize,
        role: &str,
        log_name: &str,
        timeout: Duration,
    ) -> (Oracle, usize) {
        let deadline = Instant::now() + timeout;
        let mut restarts = 0;
        loop {
            restarts += self.respawn_if_exited(i, role, log_name);
            let left = deadline.saturating_duration_since(Instant::now());
            let step = left.min(Duration::from_secs(5));
            if left.is_zero() {
                return (self.wait_for_oracle(Duration::ZERO), restarts);
            }
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.wait_for_oracle(step)
            }));
            if let Ok(o) = done {
                return (o, restarts);
            }
        }
    }

    /// Waits until the debits topic (deduplicated) holds exactly the oracle's debits and no
    /// execution is left open; returns the final oracle.
    pub fn wait_for_oracle(&self, timeout: Duration) -> Oracle {
        let deadline = Instant::now() + timeout;
        loop {
            let oracle = self.oracle();
            let (topic, _) = self.debits_by_id();
            if oracle.open == 0
                && topic.len() == oracle.debits.len()
                && topic.keys().eq(oracle.debits.keys())
            {
                return oracle;
            }
            if Instant::now() > deadline {
                let missing = oracle
                    .debits
                    .keys()
                    .filter(|k| !topic.contains_key(*k))
                    .count();
                let extra = topic
                    .keys()
                    .filter(|k| !oracle.debits.contains_key(*k))
                    .count();
                panic!(
                    "debits never matched the oracle: {missing} missing, {extra} extra, {} executions open",
                    oracle.open
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[derive(Debug, Default)]
pub struct Oracle {
    pub events: usize,
    pub debits: BTreeMap<String, Vec<u8>>,
    pub lines: std::collections::BTreeSet<String>,
    pub rejected: usize,
    pub open: usize,
    /// Debit id -> the usage_events partition it was rated from.
    pub source: BTreeMap<String, i32>,
}

impl Oracle {
    pub fn totals_per_account(&self) -> BTreeMap<String, rust_decimal::Decimal> {
        totals_per_account(self.debits.values())
    }
}

pub fn totals_per_account<'a>(
    debits: impl Iterator<Item = &'a Vec<u8>>,
) -> BTreeMap<String, rust_decimal::Decimal> {
    let mut t = BTreeMap::new();
    for d in debits {
        let d: Debit = serde_json::from_slice(d).unwrap();
        *t.entry(d.account_id).or_insert(rust_decimal::Decimal::ZERO) += d.total;
    }
    t.into_iter().map(|(k, v)| (k, v.normalize())).collect()
}

/// Number of rows of `{db}.table`.
pub fn ch_count(env: &TestEnv, table: &str) -> usize {
    env.ch(&format!("SELECT count() FROM {{db}}.{table}"))
        .trim()
        .parse()
        .unwrap()
}

/// The output topics as a `read_committed` reader sees them hold the oracle's debits (byte
/// for byte), priced lines and dead letters each once, and ClickHouse holds them exactly
/// once ([`assert_clickhouse_exact`]).
pub fn assert_outputs_exactly_once(env: &TestEnv, oracle: &Oracle) {
    let (by_id, raw) = env.debits_by_id();
    assert_eq!(
        raw,
        oracle.debits.len(),
        "read_committed: 0 repeated debits"
    );
    for (id, bytes) in &oracle.debits {
        assert_eq!(by_id.get(id), Some(bytes), "debit {id} equals the oracle");
    }
    let count = |t: &str| -> usize { env.read_topic(t).values().map(Vec::len).sum() };
    assert_eq!(
        count(&env.cfg.topics.priced_usage),
        oracle.lines.len(),
        "read_committed: each priced line once"
    );
    assert_eq!(
        count(&env.cfg.topics.dead_letter),
        oracle.rejected,
        "read_committed: each dead letter once"
    );
    assert_clickhouse_exact(env, oracle);
}

/// ClickHouse holds every debit and priced line of the oracle exactly once
/// (`count() = uniqExact(id)`), and the sums per account equal the oracle's to the last digit.
pub fn assert_clickhouse_exact(env: &TestEnv, oracle: &Oracle) {
    let n = oracle.debits.len();
    assert_eq!(
        env.ch("SELECT count(), uniqExact(debit_id) FROM {db}.debits")
            .trim(),
        format!("{n}\t{n}"),
        "debits in clickhouse: count, distinct ids"
    );
    let l = oracle.lines.len();
    assert_eq!(
        env.ch("SELECT count(), uniqExact(event_id) FROM {db}.usage_transactions")
            .trim(),
        format!("{l}\t{l}"),
        "priced lines in clickhouse: count, distinct ids"
    );
    let sums = parse_tsv_map(
        &env.ch("SELECT account_id, toString(sum(total)) FROM {db}.debits GROUP BY account_id"),
    );
    for (account, total) in oracle.totals_per_account() {
        assert_eq!(
            sums[&account]
                .parse::<rust_decimal::Decimal>()
                .unwrap()
                .normalize(),
            total,
            "{account}"
        );
    }
}

/// A generated workload for `env` (its run id keeps event ids unique): `executions` agent
/// executions and `direct` direct calls over `accounts` accounts, starting at `start`
/// (RFC 3339), reproducible by `seed`.
pub fn workload_for(
    env: &TestEnv,
    executions: u64,
    direct: u64,
    seed: u64,
    accounts: u32,
    start: &str,
) -> Vec<Generated> {
    let spec = WorkloadSpec {
        executions,
        direct_calls: direct,
        accounts,
        seed,
        start: chrono::DateTime::parse_from_rfc3339(start)
            .unwrap()
            .with_timezone(&chrono::Utc),
        run_id: env.name.clone(),
        ..Default::default()
    };
    Workload::new(spec, &env.catalog()).collect()
}
