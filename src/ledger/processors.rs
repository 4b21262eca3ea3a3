//! The two stage processors: `debits` + `credit_grants` in -> `balances`, `credit_alerts`,
//! `ledger_results`, `topup_requests`, `dead_letter` out, and clock markers back to
//! `credit_grants` (ledger); `voucher_requests` in -> `voucher_results`, `credit_grants`,
//! `dead_letter` out (vouchers). Glue only: decoding, clock-marker signing and checking,
//! the pure cores ([`super::core`], [`super::voucher`]), encoding, counters.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::config::TopicsConfig;
use crate::event::Origin;
use crate::ledger::command::{Command, Ids, clock_marker, parse_command};
use crate::ledger::core::{AlertKind, Change, Effects, EntrySource, LedgerPartition, LedgerRules};
use crate::ledger::grant::GrantRules;
use crate::ledger::thresholds::Threshold;
use crate::ledger::voucher::{VoucherOutcome, VoucherPartition, parse_request};
use crate::marker::{self, MarkerKey};
use crate::metrics::METRICS;
use crate::rejection::{DeadLetter, RejectReason, Rejection};
use crate::stage::{ChangeSink, Changelog, InputMsg, Outputs, Positions, Processor, Record};

/// A clock marker still not read back this long after it was written (its transaction
/// aborted, or the stage lagging) is written again; another marker changes nothing.
pub const CLOCK_RESEND_MS: u64 = 10_000;

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

/// The partitions due a clock marker at `now`: a deadline reached, and no marker written
/// for that deadline within `resend_ms` (`marked`: partition -> (deadline, written at ms)).
pub fn due_partitions(
    deadlines: impl Iterator<Item = (i32, DateTime<Utc>)>,
    marked: &HashMap<i32, (DateTime<Utc>, u64)>,
    now: DateTime<Utc>,
    now_ms: u64,
    resend_ms: u64,
) -> Vec<i32> {
    let mut due: Vec<i32> = deadlines
        .filter(|(_, d)| *d <= now)
        .filter(|(p, d)| {
            !marked
                .get(p)
                .is_some_and(|(md, at)| md == d && now_ms.saturating_sub(*at) < resend_ms)
        })
        .map(|(p, _)| p)
        .collect();
    due.sort_unstable();
    due
}

/// The ledger stage's processor.
pub struct LedgerProcessor {
    topics: TopicsConfig,
    rules: LedgerRules,
    grant_rules: GrantRules,
    /// Signs and checks clock markers.
    key: MarkerKey,
    parts: HashMap<i32, LedgerPartition>,
    /// Clock markers written and not yet read back: partition -> (deadline, written at ms).
    marked: HashMap<i32, (DateTime<Utc>, u64)>,
    /// Metric label of each default threshold.
    defaults: Vec<(Threshold, String)>,
    warned: u64,
    gauges_at: Option<Instant>,
}

impl LedgerProcessor {
    pub fn new(
        topics: TopicsConfig,
        rules: LedgerRules,
        grant_rules: GrantRules,
        key: MarkerKey,
    ) -> Self {
        let defaults: Vec<(Threshold, String)> = rules
            .thresholds
            .iter()
            .map(|t| (*t, t.to_string()))
            .collect();
        for (_, t) in &defaults {
            METRICS.ledger.accounts_below.with_label_values(&[t]);
            METRICS.ledger.alerts.with_label_values(&[t, "below"]);
        }
        LedgerProcessor {
            topics,
            rules,
            grant_rules,
            key,
            parts: HashMap::new(),
            marked: HashMap::new(),
            defaults,
            warned: 0,
            gauges_at: None,
        }
    }

    /// The state of a partition (tests, telemetry).
    pub fn partition(&self, p: i32) -> Option<&LedgerPartition> {
        self.parts.get(&p)
    }

    fn part(&mut self, p: i32) -> &mut LedgerPartition {
        self.parts
            .entry(p)
            .or_insert_with(|| LedgerPartition::new(self.rules.clone()))
    }

    fn update_gauges(&mut self) {
        if self.gauges_at.is_some_and(|t| t.elapsed().as_secs() < 5) {
            return;
        }
        self.gauges_at = Some(Instant::now());
        let mut n = 0i64;
        let mut sum = Decimal::ZERO;
        let mut below = vec![0i64; self.defaults.len()];
        for part in self.parts.values() {
            for (_, a) in part.accounts() {
                n += 1;
                sum += a.balance;
                for (i, (t, _)) in self.defaults.iter().enumerate() {
                    if t.value(a.last_topup).is_some_and(|v| a.balance < v) {
                        below[i] += 1;
                    }
                }
            }
        }
        let m = &METRICS.ledger;
        m.accounts.set(n);
        m.balance_sum.set(sum.to_f64().unwrap_or(0.0));
        for (i, (_, t)) in self.defaults.iter().enumerate() {
            m.accounts_below.with_label_values(&[t]).set(below[i]);
        }
    }

    /// Sends what one input did, and counts it.
    fn emit(&mut self, fx: Effects, kind: &str, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        let m = &METRICS.ledger;
        let t = &self.topics;
        for e in &fx.entries {
            m.entries.with_label_values(&[e.kind.as_str()]).inc();
            m.credits
                .with_label_values(&[e.kind.as_str()])
                .inc_by(e.amount.abs().to_f64().unwrap_or(0.0));
            let payload = serde_json::to_vec(e).expect("balance event serializes");
            out.send(&t.balances, e.account_id.as_bytes(), &payload);
        }
        for a in &fx.alerts {
            let (threshold, crossing) = match (a.alert, a.crossing) {
                (AlertKind::GrantExpiring, _) => (String::new(), "grant_expiring"),
                (AlertKind::LowBalance, c) => {
                    let text = a.rule.clone().or(a.threshold.map(|t| t.to_string()));
                    let label = text
                        .filter(|x| self.defaults.iter().any(|(_, d)| d == x))
                        .unwrap_or_else(|| "account".into());
                    (label, c.map_or("below", |c| c.as_str()))
                }
            };
            m.alerts.with_label_values(&[&threshold, crossing]).inc();
            let payload = serde_json::to_vec(a).expect("alert serializes");
            out.send(&t.credit_alerts, a.account_id.as_bytes(), &payload);
        }
        for r in &fx.topups {
            m.topup_requests.inc();
            let payload = serde_json::to_vec(r).expect("top-up request serializes");
            out.send(&t.topup_requests, r.account_id.as_bytes(), &payload);
        }
        if let Some(a) = &fx.answer {
            m.answers
                .with_label_values(&[a.command.as_str(), a.verdict.as_str()])
                .inc();
            let payload = serde_json::to_vec(a).expect("answer serializes");
            out.send(&t.ledger_results, a.account_id.as_bytes(), &payload);
        }
        if fx.duplicate {
            m.duplicates.with_label_values(&[kind]).inc();
        }
        if let Some(r) = &fx.refused {
            let topic = t.dead_letter.clone();
            dead_letter(out, &topic, r, msg, &mut self.warned);
        }
    }
}

impl Processor for LedgerProcessor {
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        let source = EntrySource {
            topic: msg.topic.to_string(),
            partition: msg.partition,
            offset: msg.offset,
        };
        let (fx, kind) = if msg.topic == self.topics.debits {
            match crate::debit::scan::decode(msg.payload) {
                Ok(d) => {
                    let hash = xxhash_rust::xxh3::xxh3_64(msg.payload);
                    (
                        self.part(msg.partition).apply_debit(&d, hash, source),
                        "debit",
                    )
                }
                Err(e) => (
                    Effects {
                        refused: Some(Rejection::new(
                            RejectReason::InvalidJson,
                            format!("debit is not valid: {e}"),
                        )),
                        ..Default::default()
                    },
                    "debit",
                ),
            }
        } else {
            match parse_command(msg.payload, &self.grant_rules) {
                Ok(Command::Clock { at }) => {
                    let origin =
                        self.key
                            .origin(msg.topic, msg.partition, msg.payload, msg.headers);
                    if origin == Origin::Aggregator {
                        self.marked.remove(&msg.partition);
                        (self.part(msg.partition).tick(at, source), "clock")
                    } else {
                        let r = Rejection::new(
                            RejectReason::InvalidField,
                            "clock marker without a valid MAC (another marker key, or forged): the ledger's clock did not move",
                        );
                        (
                            Effects {
                                refused: Some(r),
                                ..Default::default()
                            },
                            "clock",
                        )
                    }
                }
                Ok(cmd) => {
                    let kind = match &cmd {
                        Command::Grant(g) => g.kind.as_str(),
                        _ => "command",
                    };
                    (self.part(msg.partition).apply(cmd, source), kind)
                }
                Err(r) => {
                    let ids = Ids::read(msg.payload);
                    (self.part(msg.partition).refuse_message(&ids, r), "grant")
                }
            }
        };
        self.emit(fx, kind, msg, out);
    }

    /// Writes a clock marker (signed, into the stage's transaction) to each owned partition
    /// whose next expiry or warning the wall clock has reached.
    fn punctuate(&mut self, now_ms: u64, out: &mut Outputs<'_>) {
        let Some(now) = DateTime::<Utc>::from_timestamp_millis(now_ms as i64) else {
            return;
        };
        let deadlines: Vec<(i32, DateTime<Utc>)> = self
            .parts
            .iter()
            .filter_map(|(p, part)| part.next_deadline().map(|d| (*p, d)))
            .collect();
        let topic = self.topics.credit_grants.clone();
        for p in due_partitions(
            deadlines.iter().copied(),
            &self.marked,
            now,
            now_ms,
            CLOCK_RESEND_MS,
        ) {
            let payload = clock_marker(now);
            let mac = self.key.sign(&topic, p, &payload);
            let headers = OwnedHeaders::new().insert(Header {
                key: marker::HEADER,
                value: Some(mac.as_bytes()),
            });
            out.send_record(Record {
                topic: &topic,
                key: b"",
                payload: Some(&payload),
                partition: Some(p),
                headers: Some(headers),
            });
            let deadline = deadlines
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(now, |(_, d)| *d);
            self.marked.insert(p, (deadline, now_ms));
            METRICS.ledger.clock_markers.inc();
        }
    }

    fn changes(&mut self, partition: i32, log: &mut Changelog<'_>) {
        if let Some(part) = self.parts.get_mut(&partition) {
            write_changes(part.take_changes(), log);
        }
    }

    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.part(partition).restore(key, value)
    }

    fn restored(&mut self, partition: i32, _: &Positions) -> Result<(), String> {
        self.part(partition).restored();
        self.gauges_at = None;
        self.update_gauges();
        Ok(())
    }

    fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
        self.marked.remove(&partition);
        self.gauges_at = None;
        self.update_gauges();
    }

    fn committed(&mut self) {
        self.update_gauges();
    }

    fn aborted(&mut self) {
        // The markers of the aborted transaction are gone: write them again when due.
        self.marked.clear();
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
            (VoucherOutcome::Revoked, _) => "revoked",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_partition_is_marked_once_per_deadline_until_resend() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let later = t0 + chrono::Duration::seconds(60);
        let deadlines = [(0, t0), (1, later)];
        let mut marked = HashMap::new();
        assert_eq!(
            due_partitions(deadlines.into_iter(), &marked, t0, 0, 10_000),
            [0]
        );
        marked.insert(0, (t0, 0));
        assert!(due_partitions(deadlines.into_iter(), &marked, t0, 5_000, 10_000).is_empty());
        // Another deadline of the same partition is marked at once.
        let moved = [(0, t0 + chrono::Duration::seconds(1))];
        assert_eq!(
            due_partitions(moved.into_iter(), &marked, later, 6_000, 10_000),
            [0]
        );
        // The same deadline after the resend time: again, and every due partition.
        assert_eq!(
            due_partitions(deadlines.into_iter(), &marked, later, 10_000, 10_000),
            [0, 1]
        );
    }
}
