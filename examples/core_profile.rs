//! Profiling driver for the rating core (not a benchmark: it prints no timing). Generates the
//! realistic mix of `benches/core.rs`, then runs decode + price + rollup + close and encodes
//! every output as the pipeline does (`PricedLine::encode`, `Debit::encode`), `ROUNDS` times
//! (env, default 3). Meant for `valgrind --tool=callgrind` (stable instruction counts on a
//! busy box) and `perf record`: `cargo build --release --example core_profile`.

use chrono::{DateTime, Utc};
use usage_aggregator::catalog::Catalog;
use usage_aggregator::loadgen::{Workload, WorkloadSpec};
use usage_aggregator::rollup::{Output, PartitionRollup, RollupConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let catalog = Catalog::from_json(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap(),
    )
    .unwrap();
    let spec = WorkloadSpec {
        executions: 4_000,
        direct_calls: 5_000,
        duplicates: 0.01,
        bad: 0.005,
        late: 0.002,
        start: DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        ..Default::default()
    };
    let events: Vec<Vec<u8>> = Workload::new(spec, &catalog).map(|g| g.payload).collect();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let core_only = std::env::var_os("CORE_ONLY").is_some();
    let mut out = Vec::with_capacity(8);
    let (mut bytes, mut outputs) = (0usize, 0usize);
    for _ in 0..rounds {
        let mut r = PartitionRollup::new(RollupConfig::default(), 0);
        for (i, e) in events.iter().enumerate() {
            r.process(i as i64, e, &catalog, 0, &mut out);
            if !core_only {
                for o in &out {
                    bytes += match o {
                        Output::Line(l) => l.encode().len(),
                        Output::Debit(d) => d.encode().len(),
                        Output::Rejected(_) => 0,
                    };
                }
            }
            outputs += out.len();
            out.clear();
        }
        r.close_all(&usage_aggregator::plans::NO_PLANS, &mut out);
        out.clear();
    }
    println!(
        "{} events x {rounds} rounds, {outputs} outputs, {bytes} bytes encoded",
        events.len()
    );
}
