//! Arbitrary bytes as a catalog file and as one catalog-topic message: both parsers must
//! return Ok or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usage_aggregator::catalog::Catalog;

fuzz_target!(|data: &[u8]| {
    let _ = Catalog::from_json(data);
    let _ = Catalog::parse_version(data);
});
