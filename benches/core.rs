//! Core benchmarks on a realistic mix (about 70% model calls with token quantities, 25% tool
//! calls, 5% finishes; executions of 1 to 50 calls; 1% duplicates; 0.5% bad events):
//! decode + validate, pricing lookup, the whole rollup (decode + price + rollup + close),
//! debit encoding, and the sink's ledger rows from the ledger's balance entries for those
//! debits. Criterion prints events/s (throughput in elements; rows/s for the ledger rows).

use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use usage_aggregator::catalog::Catalog;
use usage_aggregator::event::{DEFAULT_MAX_EVENT_BYTES, decode};
use usage_aggregator::loadgen::{Workload, WorkloadSpec};
use usage_aggregator::rating::price_call;
use usage_aggregator::rollup::{Output, PartitionRollup, RollupConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn catalog() -> Catalog {
    Catalog::from_json(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/config/catalog.json")).unwrap(),
    )
    .unwrap()
}

fn events() -> Vec<Vec<u8>> {
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
    Workload::new(spec, &catalog()).map(|g| g.payload).collect()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let catalog = catalog();
    let n = events.len() as u64;
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(n));
    g.sample_size(20);

    g.bench_function("decode_validate", |b| {
        b.iter(|| {
            for e in &events {
                let _ = black_box(decode(black_box(e), DEFAULT_MAX_EVENT_BYTES));
            }
        })
    });

    let decoded: Vec<_> = events
        .iter()
        .filter_map(|e| decode(e, DEFAULT_MAX_EVENT_BYTES).ok())
        .filter(|e| e.kind.is_call())
        .collect();
    g.throughput(Throughput::Elements(decoded.len() as u64));
    g.bench_function("price_lookup_and_cost", |b| {
        b.iter(|| {
            for e in &decoded {
                let _ = black_box(price_call(black_box(e), &catalog, 0, 0));
            }
        })
    });

    g.throughput(Throughput::Elements(n));
    g.bench_function("decode_price_rollup", |b| {
        let mut out = Vec::with_capacity(8);
        b.iter(|| {
            let mut r = PartitionRollup::new(RollupConfig::default(), 0);
            for (i, e) in events.iter().enumerate() {
                r.process(i as i64, e, &catalog, 0, &mut out);
                out.clear();
            }
            r.close_all(&usage_aggregator::plans::NO_PLANS, &mut out);
            out.clear();
        })
    });

    let mut r = PartitionRollup::new(RollupConfig::default(), 0);
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        r.process(i as i64, e, &catalog, 0, &mut out);
    }
    r.close_all(&usage_aggregator::plans::NO_PLANS, &mut out);
    let debits: Vec<_> = out
        .iter()
        .filter_map(|o| {
            if let Output::Debit(d) = o {
                Some(d.clone())
            } else {
                None
            }
        })
        .collect();
    g.throughput(Throughput::Elements(debits.len() as u64));
    g.bench_function("debit_encode", |b| {
        b.iter(|| {
            for d in &debits {
                black_box(d.encode());
            }
        })
    });
    for (name, topup) in [("ledger_row_overdraft", false), ("ledger_row_funded", true)] {
        let entries = balance_entries(&debits, topup);
        g.throughput(Throughput::Elements(entries.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                for (i, e) in entries.iter().enumerate() {
                    let src = usage_aggregator::sink::rows::Source {
                        partition: 0,
                        offset: i as i64,
                        ingested_at: 0,
                    };
                    black_box(
                        usage_aggregator::sink::ledger_rows::ledger_row(black_box(e), src).unwrap(),
                    );
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// Balance entries as the ledger writes them for the workload's debits: each account first
/// tops up 1,000 credits (an open grant, a funding line per debit), or not (overdraft only,
/// the shape of `bench`'s runs).
fn balance_entries(debits: &[usage_aggregator::debit::Debit], topup: bool) -> Vec<Vec<u8>> {
    use usage_aggregator::ledger::core::{EntrySource, LedgerPartition};
    use usage_aggregator::ledger::grant::{Grant, GrantKind};
    let mut ledger = LedgerPartition::new(Default::default());
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, d) in debits.iter().enumerate() {
        let src = |o: usize| EntrySource {
            topic: "debits".into(),
            partition: 0,
            offset: o as i64,
        };
        if topup && seen.insert(d.account_id.clone()) {
            let g = Grant::new(
                format!("pay-{}", d.account_id),
                GrantKind::Topup,
                d.account_id.clone(),
                rust_decimal::Decimal::from(1000),
                d.last_event_at,
            );
            ledger.apply_grant(&g, src(i));
        }
        for e in ledger.apply_debit(d, i as u64, src(i)).entries {
            out.push(serde_json::to_vec(&e).unwrap());
        }
    }
    out
}
