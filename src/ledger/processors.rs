//! The two stage processors: `debits` + `credit_grants` in -> `balances`, `credit_alerts`,
//! `dead_letter` out (ledger), and `voucher_requests` in -> `voucher_results`,
//! `credit_grants`, `dead_letter` out (vouchers). Glue only: decoding, the pure cores
//! ([`super::core`], [`super::voucher`]), encoding, counters.

use std::collections::HashMap;
use std::time::Instant;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::config::TopicsConfig;
use crate::debit::Debit;
use crate::ledger::core::{Change, EntrySource, LedgerPartition, LedgerRules, Outcome};
use crate::ledger::grant::{GrantRules, parse_grant};
use crate::ledger::voucher::{VoucherOutcome, VoucherPartition, parse_request};
use crate::metrics::METRICS;
use crate::rejection::{DeadLetter, RejectReason, Rejection};
use crate::stage::{ChangeSink, Changelog, InputMsg, Outputs, Positions, Processor};

fn dead_letter(
    out: &mut Outputs<'_>,
    topic: &str,
    r: &Rejection,
    msg: &InputMsg<'_>,
    warned: &mut u64,
) {
    *warned += 1;
    if warned.is_power_of_two() {
        tracing::warn!(reason = %r.reason, topic = msg.topic, partition = msg.partition, offset = msg.offset, rejected_so_far = *warned, "ledger input dead-lettered (logged at powers of two)");
    }
    METRICS
        .ledger
        .rejected
        .with_label_values(&[r.reason.as_str()])
        .inc();
    let dl = DeadLetter::new(r, msg.payload, msg.topic, msg.partition, msg.offset);
    let payload = serde_json::to_vec(&dl).expect("dead letter serializes");
    out.send(topic, dl.id().as_bytes(), &payload);
}

/// Writes a core's changes (last value per key; `None` deletes) to the changelog.
fn write_changes(changes: Vec<Change>, log: &mut Changelog<'_>) {
    for (k, v) in changes {
        match v {
            Some(v) => log.put(&k, &v),
            None => log.delete(&k),
        }
    }
}

/// The ledger stage's processor.
pub struct LedgerProcessor {
    topics: TopicsConfig,
    rules: LedgerRules,
    grant_rules: GrantRules,
    parts: HashMap<i32, LedgerPartition>,
    warned: u64,
    gauges_at: Option<Instant>,
}

impl LedgerProcessor {
    pub fn new(topics: TopicsConfig, rules: LedgerRules, grant_rules: GrantRules) -> Self {
        for t in &rules.thresholds {
            let t = t.to_string();
            METRICS.ledger.accounts_below.with_label_values(&[&t]);
            METRICS.ledger.alerts.with_label_values(&[&t, "below"]);
        }
        LedgerProcessor {
            topics,
            rules,
            grant_rules,
            parts: HashMap::new(),
            warned: 0,
            gauges_at: None,
        }
    }

    /// The state of a partition (tests, telemetry).
    pub fn partition(&self, p: i32) -> Option<&LedgerPartition> {
        self.parts.get(&p)
    }

    fn update_gauges(&mut self) {
        if self.gauges_at.is_some_and(|t| t.elapsed().as_secs() < 5) {
            return;
        }
        self.gauges_at = Some(Instant::now());
        let mut n = 0i64;
        let mut sum = Decimal::ZERO;
        let mut below = vec![0i64; self.rules.thresholds.len()];
        for part in self.parts.values() {
            for (_, a) in part.accounts() {
                n += 1;
                sum += a.balance;
                for (i, t) in self.rules.thresholds.iter().enumerate() {
                    if a.balance < *t {
                        below[i] += 1;
                    }
                }
            }
        }
        let m = &METRICS.ledger;
        m.accounts.set(n);
        m.balance_sum.set(sum.to_f64().unwrap_or(0.0));
        for (i, t) in self.rules.thresholds.iter().enumerate() {
            m.accounts_below
                .with_label_values(&[&t.to_string()])
                .set(below[i]);
        }
    }
}

impl Processor for LedgerProcessor {
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        let part = self
            .parts
            .entry(msg.partition)
            .or_insert_with(|| LedgerPartition::new(self.rules.clone()));
        let source = EntrySource {
            topic: msg.topic.to_string(),
            partition: msg.partition,
            offset: msg.offset,
        };
        let (outcome, kind) = if msg.topic == self.topics.debits {
            match serde_json::from_slice::<Debit>(msg.payload) {
                Ok(d) => {
                    let hash = xxhash_rust::xxh3::xxh3_64(msg.payload);
                    (part.apply_debit(&d, hash, source), "debit")
                }
                Err(e) => (
                    Outcome::Refused(Rejection::new(
                        RejectReason::InvalidJson,
                        format!("debit is not valid: {e}"),
                    )),
                    "debit",
                ),
            }
        } else {
            match parse_grant(msg.payload, &self.grant_rules) {
                Ok(g) => {
                    let kind = g.kind.as_str();
                    (part.apply_grant(&g, source), kind)
                }
                Err(r) => (Outcome::Refused(r), "grant"),
            }
        };
        let m = &METRICS.ledger;
        match outcome {
            Outcome::Applied(e, alerts) => {
                m.entries.with_label_values(&[e.kind.as_str()]).inc();
                m.credits
                    .with_label_values(&[e.kind.as_str()])
                    .inc_by(e.amount.abs().to_f64().unwrap_or(0.0));
                for a in &alerts {
                    m.alerts
                        .with_label_values(&[&a.threshold.to_string(), a.crossing.as_str()])
                        .inc();
                    let payload = serde_json::to_vec(a).expect("alert serializes");
                    out.send(
                        &self.topics.credit_alerts,
                        a.account_id.as_bytes(),
                        &payload,
                    );
                }
                let payload = serde_json::to_vec(&e).expect("balance event serializes");
                out.send(&self.topics.balances, e.account_id.as_bytes(), &payload);
            }
            Outcome::Duplicate => m.duplicates.with_label_values(&[kind]).inc(),
            Outcome::Refused(r) => {
                dead_letter(out, &self.topics.dead_letter, &r, msg, &mut self.warned)
            }
        }
    }

    fn changes(&mut self, partition: i32, log: &mut Changelog<'_>) {
        if let Some(part) = self.parts.get_mut(&partition) {
            write_changes(part.take_changes(), log);
        }
    }

    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.parts
            .entry(partition)
            .or_insert_with(|| LedgerPartition::new(self.rules.clone()))
            .restore(key, value)
    }

    fn restored(&mut self, partition: i32, _: &Positions) -> Result<(), String> {
        self.parts
            .entry(partition)
            .or_insert_with(|| LedgerPartition::new(self.rules.clone()))
            .restored();
        self.gauges_at = None;
        self.update_gauges();
        Ok(())
    }

    fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
        self.gauges_at = None;
        self.update_gauges();
    }

    fn committed(&mut self) {
        self.update_gauges();
    }
}

/// The voucher stage's processor.
pub struct VoucherProcessor {
    topics: TopicsConfig,
    parts: HashMap<i32, VoucherPartition>,
    warned: u64,
}

impl VoucherProcessor {
    pub fn new(topics: TopicsConfig) -> Self {
        VoucherProcessor {
            topics,
            parts: HashMap::new(),
            warned: 0,
        }
    }
}

impl Processor for VoucherProcessor {
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        let req = match parse_request(msg.payload) {
            Ok(r) => r,
            Err(r) => {
                return dead_letter(out, &self.topics.dead_letter, &r, msg, &mut self.warned);
            }
        };
        if msg.key != Some(req.code_hash().as_bytes()) {
            // Ordering per code holds only when every command of a code shares a partition.
            let r = Rejection::new(
                RejectReason::InvalidField,
                "voucher request must be keyed by its code_hash".to_string(),
            );
            return dead_letter(out, &self.topics.dead_letter, &r, msg, &mut self.warned);
        }
        let part = self.parts.entry(msg.partition).or_default();
        let (result, grant) = part.handle(&req);
        let label = match (result.outcome, result.reason) {
            (VoucherOutcome::Refused, Some(r)) => r.as_str(),
            (VoucherOutcome::Refused, None) => "refused",
            (VoucherOutcome::Created, _) => "created",
            (VoucherOutcome::Granted, _) => "granted",
        };
        METRICS
            .ledger
            .voucher_results
            .with_label_values(&[&result.action, label])
            .inc();
        tracing::info!(
            action = %result.action,
            voucher = %result.voucher,
            result = label,
            partition = msg.partition,
            offset = msg.offset,
            "voucher command decided"
        );
        if let Some(g) = grant {
            out.send(
                &self.topics.credit_grants,
                g.account_id.as_bytes(),
                &g.encode(),
            );
        }
        let payload = serde_json::to_vec(&result).expect("voucher result serializes");
        out.send(
            &self.topics.voucher_results,
            result.request_id.as_bytes(),
            &payload,
        );
    }

    fn changes(&mut self, partition: i32, log: &mut Changelog<'_>) {
        if let Some(part) = self.parts.get_mut(&partition) {
            write_changes(part.take_changes(), log);
        }
    }

    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.parts.entry(partition).or_default().restore(key, value)
    }

    fn restored(&mut self, partition: i32, _: &Positions) -> Result<(), String> {
        self.parts.entry(partition).or_default().restored();
        Ok(())
    }

    fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }
}
