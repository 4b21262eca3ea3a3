//! The two stage processors: `debits` + `credit_grants` in -> `balances`, `credit_alerts`,
//! `ledger_results`, `topup_requests`, `dead_letter` out (ledger), and `voucher_requests` in
//! -> `voucher_results`, `credit_grants`, `dead_letter` out (vouchers). Glue only: decoding,
//! clock-marker authentication, the pure cores ([`super::core`], [`super::voucher`]),
//! encoding, counters, and the deadlines the clock needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::config::TopicsConfig;
use crate::debit::Debit;
use crate::ledger::clock::Deadlines;
use crate::ledger::command::{Command, Ids, clock_signed_bytes, parse_command};
use crate::ledger::core::{AlertKind, Change, Effects, EntrySource, LedgerPartition, LedgerRules};
use crate::ledger::grant::GrantRules;
use crate::ledger::stage::{InputMsg, OutRecord, Processor};
use crate::ledger::thresholds::Threshold;
use crate::ledger::voucher::{VoucherOutcome, VoucherPartition, parse_request};
use crate::marker::MarkerKey;
use crate::metrics::METRICS;
use crate::rejection::{DeadLetter, RejectReason, Rejection};

fn dead_letter(
    out: &mut Vec<OutRecord>,
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
    out.push(OutRecord {
        topic: topic.to_string(),
        key: dl.id().into_bytes(),
        payload: serde_json::to_vec(&dl).expect("dead letter serializes"),
    });
}

/// The ledger stage's processor.
pub struct LedgerProcessor {
    topics: TopicsConfig,
    rules: LedgerRules,
    grant_rules: GrantRules,
    /// Authenticates clock markers.
    key: MarkerKey,
    /// Each owned partition's next deadline, for the clock.
    deadlines: Arc<Deadlines>,
    parts: HashMap<i32, LedgerPartition>,
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
        deadlines: Arc<Deadlines>,
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
            deadlines,
            parts: HashMap::new(),
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
    fn emit(&mut self, fx: Effects, kind: &str, msg: &InputMsg<'_>, out: &mut Vec<OutRecord>) {
        let m = &METRICS.ledger;
        for e in &fx.entries {
            m.entries.with_label_values(&[e.kind.as_str()]).inc();
            m.credits
                .with_label_values(&[e.kind.as_str()])
                .inc_by(e.amount.abs().to_f64().unwrap_or(0.0));
            out.push(OutRecord {
                topic: self.topics.balances.clone(),
                key: e.account_id.clone().into_bytes(),
                payload: serde_json::to_vec(e).expect("balance event serializes"),
            });
        }
        for a in &fx.alerts {
            let (threshold, crossing) = match (a.alert, a.crossing) {
                (AlertKind::GrantExpiring, _) => (String::new(), "grant_expiring"),
                (AlertKind::LowBalance, c) => {
                    let t = a.rule.clone().or(a.threshold.map(|t| t.to_string()));
                    let label = t
                        .filter(|t| self.defaults.iter().any(|(_, d)| d == t))
                        .unwrap_or_else(|| "account".into());
                    (label, c.map_or("below", |c| c.as_str()))
                }
            };
            m.alerts.with_label_values(&[&threshold, crossing]).inc();
            out.push(OutRecord {
                topic: self.topics.credit_alerts.clone(),
                key: a.account_id.clone().into_bytes(),
                payload: serde_json::to_vec(a).expect("alert serializes"),
            });
        }
        for t in &fx.topups {
            m.topup_requests.inc();
            out.push(OutRecord {
                topic: self.topics.topup_requests.clone(),
                key: t.account_id.clone().into_bytes(),
                payload: serde_json::to_vec(t).expect("top-up request serializes"),
            });
        }
        if let Some(a) = &fx.answer {
            m.answers
                .with_label_values(&[a.command.as_str(), a.verdict.as_str()])
                .inc();
            out.push(OutRecord {
                topic: self.topics.ledger_results.clone(),
                key: a.account_id.clone().into_bytes(),
                payload: serde_json::to_vec(a).expect("answer serializes"),
            });
        }
        if fx.duplicate {
            m.duplicates.with_label_values(&[kind]).inc();
        }
        if let Some(r) = &fx.refused {
            dead_letter(out, &self.topics.dead_letter, r, msg, &mut self.warned);
        }
    }

    fn publish_deadline(&self, p: i32) {
        self.deadlines.set(
            p,
            self.parts.get(&p).and_then(LedgerPartition::next_deadline),
        );
    }
}

impl Processor for LedgerProcessor {
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Vec<OutRecord>) {
        let source = EntrySource {
            topic: msg.topic.to_string(),
            partition: msg.partition,
            offset: msg.offset,
        };
        let (fx, kind) = if msg.topic == self.topics.debits {
            match serde_json::from_slice::<Debit>(msg.payload) {
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
                Ok(Command::Clock { at, mac }) => {
                    let signed = clock_signed_bytes(at);
                    if self
                        .key
                        .verify(msg.topic, msg.partition, &signed, mac.as_bytes())
                    {
                        (self.part(msg.partition).tick(at, source), "clock")
                    } else {
                        let r = Rejection::new(
                            RejectReason::InvalidField,
                            "clock marker with a MAC that does not verify (another marker key, or forged); ignored",
                        );
                        (
                            self.part(msg.partition).refuse_message(&Ids::default(), r),
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

    fn snapshot(&mut self, partition: i32) -> Vec<Change> {
        self.parts
            .get_mut(&partition)
            .map(LedgerPartition::take_changes)
            .unwrap_or_default()
    }

    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.part(partition).restore(key, value)
    }

    fn restored(&mut self, partition: i32) {
        self.part(partition).restored();
        self.publish_deadline(partition);
        self.gauges_at = None;
        self.update_gauges();
    }

    fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
        self.deadlines.set(partition, None);
        self.gauges_at = None;
        self.update_gauges();
    }

    fn committed(&mut self) {
        let parts: Vec<i32> = self.parts.keys().copied().collect();
        for p in parts {
            self.publish_deadline(p);
        }
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
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Vec<OutRecord>) {
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
            out.push(OutRecord {
                topic: self.topics.credit_grants.clone(),
                key: g.account_id.clone().into_bytes(),
                payload: g.encode(),
            });
        }
        out.push(OutRecord {
            topic: self.topics.voucher_results.clone(),
            key: result.request_id.clone().into_bytes(),
            payload: serde_json::to_vec(&result).expect("voucher result serializes"),
        });
    }

    fn snapshot(&mut self, partition: i32) -> Vec<Change> {
        self.parts
            .get_mut(&partition)
            .map(VoucherPartition::take_changes)
            .unwrap_or_default()
    }

    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.parts.entry(partition).or_default().restore(key, value)
    }

    fn restored(&mut self, partition: i32) {
        self.parts.entry(partition).or_default().restored();
    }

    fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }
}
