//! Arbitrary bytes as one Kafka message value: `event::decode` must return Ok or a
//! rejection, never panic; an accepted event must also hash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usage_aggregator::event;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = event::decode(data, event::DEFAULT_MAX_EVENT_BYTES) {
        let _ = ev.content_hash();
    }
});
