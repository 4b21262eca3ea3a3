//! The pipeline's outputs as Kafka records: one rollup [`Output`] in (with the input event
//! it came from), its topic, key and bytes out, into the stage's open transaction; and the
//! counts of one transaction (events, prices, rejections, debits), added to the metrics only
//! once it commits.

use std::collections::HashMap;

use rust_decimal::prelude::ToPrimitive;

use crate::catalog::AssetType;
use crate::config::TopicsConfig;
use crate::metrics::METRICS;
use crate::rejection::DeadLetter;
use crate::rollup::{Outcome, Output};
use crate::stage::{InputMsg, Outputs};

/// What one transaction did, for the metrics.
#[derive(Default)]
pub struct Counts {
    consumed: u64,
    priced: [u64; AssetType::ALL.len()],
    duplicates: u64,
    rejected: HashMap<&'static str, u64>,
    debits: HashMap<&'static str, (u64, f64)>,
}

impl Counts {
    pub fn event(&mut self, outcome: Outcome) {
        self.consumed += 1;
        match outcome {
            Outcome::Priced(t) => self.priced[t as usize] += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Rejected(r) => *self.rejected.entry(r.as_str()).or_default() += 1,
            _ => {}
        }
    }

    /// The transaction committed: into the metrics.
    pub fn flush(&mut self) {
        METRICS.events_consumed.inc_by(self.consumed);
        for t in AssetType::ALL {
            let n = self.priced[t as usize];
            if n > 0 {
                METRICS
                    .events_priced
                    .with_label_values(&[t.as_str()])
                    .inc_by(n);
            }
        }
        METRICS.events_duplicate.inc_by(self.duplicates);
        for (r, n) in self.rejected.drain() {
            METRICS.events_rejected.with_label_values(&[r]).inc_by(n);
        }
        for (k, (n, credits)) in self.debits.drain() {
            METRICS.debits.with_label_values(&[k]).inc_by(n);
            METRICS
                .credits_debited
                .with_label_values(&[k])
                .inc_by(credits);
        }
        self.consumed = 0;
        self.priced = [0; AssetType::ALL.len()];
        self.duplicates = 0;
    }
}

/// Encodes and sends the outputs of one input event.
pub struct Emitter {
    pub topics: TopicsConfig,
    pub counts: Counts,
    /// Reused encoding buffer (no allocation per output).
    buf: Vec<u8>,
    warned_rejects: u64,
}

impl Emitter {
    pub fn new(topics: TopicsConfig) -> Emitter {
        Emitter {
            topics,
            counts: Counts::default(),
            buf: Vec::with_capacity(4096),
            warned_rejects: 0,
        }
    }

    /// Sends `output` of the event `msg` into the open transaction.
    pub fn emit(&mut self, output: &Output, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        let topics = &self.topics;
        let buf = &mut self.buf;
        buf.clear();
        let dead_letter_key;
        let (topic, key): (&str, &[u8]) = match output {
            Output::Line(l) => {
                crate::debit::json::encode_line(buf, l);
                (&topics.priced_usage, l.account_id.as_bytes())
            }
            Output::Debit(d) => {
                let e = self.counts.debits.entry(d.kind.as_str()).or_default();
                e.0 += 1;
                e.1 += d.total.to_f64().unwrap_or(0.0);
                crate::debit::json::encode_debit(buf, d);
                (&topics.debits, d.account_id.as_bytes())
            }
            Output::Rejected(r) => {
                self.warned_rejects += 1;
                if self.warned_rejects.is_power_of_two() {
                    tracing::warn!(reason = %r.reason, partition = msg.partition, offset = msg.offset, rejected_so_far = self.warned_rejects, "event rejected to dead letter (logged at powers of two)");
                }
                let dl = DeadLetter::new(r, msg.payload, msg.topic, msg.partition, msg.offset);
                serde_json::to_writer(&mut *buf, &dl).expect("dead letter serializes");
                dead_letter_key = dl.id().into_bytes();
                (&topics.dead_letter, &dead_letter_key)
            }
        };
        out.send(topic, key, buf);
    }
}
