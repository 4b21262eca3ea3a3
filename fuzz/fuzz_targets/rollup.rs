//! Input split on b'\n' into up to 64 events, fed in order to one partition rollup
//! (default config, the shipped catalog), then `close_all`. Never panics, and every debit
//! is internally consistent: total = subtotal + markup, and the breakdown costs sum to the
//! subtotal.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;
use usage_aggregator::catalog::Catalog;
use usage_aggregator::rollup::{Output, PartitionRollup};

const MAX_EVENTS: usize = 64;

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    Catalog::from_json(include_bytes!("../../config/catalog.json"))
        .expect("config/catalog.json loads")
});

fuzz_target!(|data: &[u8]| {
    let catalog = &*CATALOG;
    let mut rollup = PartitionRollup::new(Default::default(), 0);
    let mut out = Vec::new();
    for (offset, payload) in data.split(|&b| b == b'\n').take(MAX_EVENTS).enumerate() {
        rollup.process(offset as i64, payload, catalog, 0, &mut out);
    }
    rollup.close_all(&mut out);
    for o in &out {
        if let Output::Debit(d) = o {
            assert_eq!(d.total, d.subtotal + d.markup, "total != subtotal + markup: {d:?}");
            let sum = d
                .breakdown
                .iter()
                .try_fold(Decimal::ZERO, |acc, b| acc.checked_add(b.cost));
            assert_eq!(sum, Some(d.subtotal), "breakdown costs != subtotal: {d:?}");
        }
    }
});
