//! Spend alerts: debits in (read from the debits topic, where all of an account's debits
//! share a partition), alert events out, once per threshold crossing.
//! Rules: credits per account per clock hour of event time, and credits of one execution.
//! A stage on the stage runtime (`src/stage.rs`): the alerts and the consumer offsets commit
//! in one transaction every [`COMMIT_INTERVAL`], with the changed hourly windows and the
//! debit ids counted since ([`state`]) on the `alerts_state` changelog; a restart or a
//! rebalance restores them, so a crossing is announced once. [`view`]: each account's recent
//! alerts (credit and spend) in memory, for the HTTP API.

pub mod state;
pub mod view;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::debit::{Debit, DebitKind};
use crate::health::Health;
use crate::metrics::METRICS;
use crate::rollup::dedupe::SteadySize;
use crate::stage::{
    Changelog, Guarantee, InputMsg, Outputs, Positions, Processor, Stage, StageSpec,
};

/// An alert event on the alerts topic. Its id is deterministic: a replay repeats it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendAlert {
    pub alert_id: String,
    pub rule: String,
    pub account_id: String,
    pub execution_id: Option<String>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub threshold: Decimal,
}

/// Thresholds; `None` disables a rule.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    pub account_hourly: Option<Decimal>,
    pub execution: Option<Decimal>,
}

impl Thresholds {
    /// The thresholds of `alerts.*` (typed and checked when the configuration loads).
    pub fn from_config(cfg: &Config) -> Thresholds {
        Thresholds {
            account_hourly: cfg.alerts.account_hourly_credits,
            execution: cfg.alerts.execution_credits,
        }
    }
}

/// The alert rules' state of one debits partition: hourly sums per account, and debit ids
/// already counted; plus what changed since the changelog was last written
/// ([`state::Tracked`]).
#[derive(Debug, Default)]
pub struct SpendAlerts {
    thresholds: Thresholds,
    hourly: HashMap<(String, i64), (Decimal, bool)>,
    /// The debit ids counted, as their 128-bit xxh3 digests ([`digest`]): ~40 B a debit
    /// instead of two `String`s (~170 B), so the bounded memory (200 000 per partition) does
    /// not grow RSS by ~130 MB while it fills (issue 25's soak).
    seen: HashSet<u128>,
    seen_order: VecDeque<u128>,
    /// When `seen` and `seen_order` take their steady size.
    seen_sized: SteadySize,
    newest_hour: i64,
    seen_capacity: usize,
    tracked: state::Tracked,
}

/// A debit id's key in the memory of counted debits (128 bits: a collision, which would
/// leave one debit uncounted, is out of reach at any realistic count).
fn digest(debit_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(debit_id.as_bytes())
}

/// Debit ids remembered per partition (a repeated debit is not counted twice).
const SEEN_CAPACITY: usize = 200_000;
/// Hourly windows kept per partition before those 6 hours behind the newest are forgotten.
const MAX_WINDOWS: usize = 100_000;

impl SpendAlerts {
    pub fn new(thresholds: Thresholds) -> Self {
        SpendAlerts {
            thresholds,
            seen_capacity: SEEN_CAPACITY,
            ..Default::default()
        }
    }

    /// Reserves the memory of counted debits' steady size once it holds 1/16 of its
    /// capacity ([`SteadySize`]): from then on it never grows while it churns.
    fn size_seen(&mut self) {
        let lens = (self.seen.len(), self.seen_order.len());
        if let Some((table, queue)) = self.seen_sized.due(lens.0, lens.1, self.seen_capacity) {
            self.seen.reserve(table);
            self.seen_order.reserve(queue);
        }
    }

    /// Counts one debit; returns the alerts it raises.
    pub fn record(&mut self, d: &Debit) -> Vec<SpendAlert> {
        self.size_seen();
        let h = digest(&d.debit_id);
        if !self.seen.insert(h) {
            return Vec::new();
        }
        self.seen_order.push_back(h);
        self.tracked.fresh.push(d.debit_id.clone());
        self.tracked.seen_pushed += 1;
        if self.seen_order.len() > self.seen_capacity
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
            self.tracked.seen_popped += 1;
        }
        let mut alerts = Vec::new();
        if let (Some(t), DebitKind::AgentExecution) = (self.thresholds.execution, d.kind)
            && d.total >= t
        {
            alerts.push(SpendAlert {
                alert_id: format!("execution:{}", d.debit_id),
                rule: "execution_credits".into(),
                account_id: d.account_id.clone(),
                execution_id: d.execution_id.clone(),
                window_start: d.first_event_at,
                window_end: d.last_event_at,
                amount: d.total,
                threshold: t,
            });
        }
        if let Some(t) = self.thresholds.account_hourly {
            let at = d.first_event_at;
            let hour = at.timestamp() - i64::from(at.minute()) * 60 - i64::from(at.second());
            self.newest_hour = self.newest_hour.max(hour);
            let window = (d.account_id.clone(), hour);
            self.tracked.changed.insert(window.clone());
            let e = self.hourly.entry(window).or_insert((Decimal::ZERO, false));
            e.0 += d.total;
            if !e.1 && e.0 >= t {
                e.1 = true;
                let start = Utc.timestamp_opt(hour, 0).single().unwrap_or(at);
                alerts.push(SpendAlert {
                    alert_id: format!("account_hour:{}:{}", d.account_id, hour),
                    rule: "account_hourly_credits".into(),
                    account_id: d.account_id.clone(),
                    execution_id: None,
                    window_start: start,
                    window_end: start + chrono::Duration::hours(1),
                    amount: e.0,
                    threshold: t,
                });
            }
            // Forget hours far behind the newest one seen (late debits beyond that are rare).
            let horizon = self.newest_hour - 6 * 3600;
            if self.hourly.len() > MAX_WINDOWS {
                let removed = &mut self.tracked.removed;
                self.hourly.retain(|w, _| {
                    let keep = w.1 >= horizon;
                    if !keep {
                        removed.push(w.clone());
                    }
                    keep
                });
            }
        }
        alerts
    }
}

/// The alerts stage's commit interval: alerts become visible this long after their debit at
/// most (plus the commit).
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The alerts stage's processor: one [`SpendAlerts`] per owned debits partition.
pub struct AlertsProcessor {
    thresholds: Thresholds,
    topic: String,
    parts: HashMap<i32, SpendAlerts>,
}

impl AlertsProcessor {
    pub fn new(thresholds: Thresholds, alerts_topic: String) -> Self {
        AlertsProcessor {
            thresholds,
            topic: alerts_topic,
            parts: HashMap::new(),
        }
    }

    fn part(&mut self, p: i32) -> &mut SpendAlerts {
        let t = &self.thresholds;
        self.parts
            .entry(p)
            .or_insert_with(|| SpendAlerts::new(t.clone()))
    }
}

impl Processor for AlertsProcessor {
    fn process(&mut self, msg: &InputMsg<'_>, out: &mut Outputs<'_>) {
        // Not a debit: nothing to count (the rating pipeline writes only debits there).
        let Ok(d) = crate::debit::scan::decode(msg.payload) else {
            return;
        };
        for a in self.part(msg.partition).record(&d) {
            announce(&a);
            let payload = serde_json::to_vec(&a).expect("alert serializes");
            out.send(&self.topic, a.account_id.as_bytes(), &payload);
        }
    }

    fn changes(&mut self, partition: i32, log: &mut Changelog<'_>) {
        if let Some(part) = self.parts.get_mut(&partition) {
            part.write_changes(log);
        }
    }

    fn restore(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.part(partition).restore_record(key, value)
    }

    fn restored(&mut self, partition: i32, _: &Positions) -> Result<(), String> {
        self.part(partition).restored();
        Ok(())
    }

    fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }
}

/// Counts and logs one alert as it is sent.
fn announce(a: &SpendAlert) {
    METRICS.alerts_fired.with_label_values(&[&a.rule]).inc();
    // Who and what, so the operator can act on the line alone (never a metric label).
    tracing::info!(
        rule = %a.rule,
        account_id = %a.account_id,
        execution_id = %a.execution_id.as_deref().unwrap_or("-"),
        amount = %a.amount,
        threshold = %a.threshold,
        window_start = %a.window_start.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        alert_id = %a.alert_id,
        "spend alert"
    );
}

/// Runs the alert rules over the debits topic until `stop` is cancelled (the stage runtime,
/// group `kafka.alerts_group_id`, changelog `topics.alerts_state`). Blocking: call it on its
/// own thread.
pub fn run(cfg: &Config, stop: CancellationToken) -> anyhow::Result<()> {
    run_with(cfg, None, &stop)
}

/// [`run`], reporting progress and lag to `health`.
pub fn run_with(
    cfg: &Config,
    health: Option<Arc<Health>>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let spec = StageSpec {
        name: "alerts",
        group_id: cfg.kafka.alerts_group_id.clone(),
        inputs: vec![cfg.topics.debits.clone()],
        guarantee: Guarantee::Transactional {
            changelog: cfg.topics.alerts_state.clone(),
        },
        commit_interval: COMMIT_INTERVAL,
        max_batch: usize::MAX,
        punctuate_every: None,
        consumer: Vec::new(),
        health,
    };
    let p = AlertsProcessor::new(Thresholds::from_config(cfg), cfg.topics.alerts.clone());
    Stage::new(cfg, spec, p)?.run(stop)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn debit(id: &str, account: &str, total: &str, at: &str, kind: DebitKind) -> Debit {
        let t = DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&Utc);
        let total = Decimal::from_str(total).unwrap();
        Debit {
            debit_id: id.into(),
            kind,
            account_id: account.into(),
            execution_id: Some("x".into()),
            plan: "default".into(),
            plan_version: None,
            subtotal: total,
            markup_rate: Decimal::ZERO,
            markup: Decimal::ZERO,
            total,
            calls: 1,
            first_event_at: t,
            last_event_at: t,
            breakdown: vec![],
            components: Default::default(),
            correction: None,
        }
    }

    #[test]
    fn the_memory_of_counted_debits_never_grows_while_it_churns() {
        let mut a = SpendAlerts::new(Thresholds::default());
        a.seen_capacity = 2_000;
        let at = "2026-03-01T10:05:00Z";
        let record = |a: &mut SpendAlerts, i: usize| {
            a.record(&debit(
                &i.to_string(),
                "acct",
                "1",
                at,
                DebitKind::ModelCall,
            ));
        };
        for i in 0..125 {
            record(&mut a, i);
        }
        assert!(a.seen.capacity() < 1_000, "small while it is small");
        for i in 125..2_000 {
            record(&mut a, i);
        }
        let sized = (a.seen.capacity(), a.seen_order.capacity());
        assert!(sized.0 >= 4_000, "{sized:?}");
        for i in 2_000..40_000 {
            record(&mut a, i);
        }
        assert_eq!(a.seen.len(), 2_000);
        // `capacity()` is entries + spare room: tombstones lower it until an in-place
        // rehash; a grown table would show more.
        assert!(
            a.seen.capacity() <= sized.0 && a.seen_order.capacity() == sized.1,
            "sized once: {sized:?}, now ({}, {})",
            a.seen.capacity(),
            a.seen_order.capacity()
        );
    }

    #[test]
    fn hourly_threshold_fires_once_per_crossing() {
        let mut a = SpendAlerts::new(Thresholds {
            account_hourly: Some(Decimal::from(10)),
            execution: None,
        });
        assert!(
            a.record(&debit(
                "1",
                "acct",
                "6",
                "2026-03-01T10:05:00Z",
                DebitKind::ModelCall
            ))
            .is_empty()
        );
        let fired = a.record(&debit(
            "2",
            "acct",
            "5",
            "2026-03-01T10:55:00Z",
            DebitKind::ModelCall,
        ));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].amount, Decimal::from(11));
        assert_eq!(
            fired[0].window_start.to_rfc3339(),
            "2026-03-01T10:00:00+00:00"
        );
        assert!(
            a.record(&debit(
                "3",
                "acct",
                "5",
                "2026-03-01T10:56:00Z",
                DebitKind::ModelCall
            ))
            .is_empty()
        );
        // The same debit again (a replay) is not counted twice.
        assert!(
            a.record(&debit(
                "1",
                "acct",
                "60",
                "2026-03-01T11:05:00Z",
                DebitKind::ModelCall
            ))
            .is_empty()
        );
        // Another hour, another account: separate windows.
        assert!(
            a.record(&debit(
                "4",
                "acct",
                "9",
                "2026-03-01T11:05:00Z",
                DebitKind::ModelCall
            ))
            .is_empty()
        );
        assert!(
            a.record(&debit(
                "5",
                "other",
                "9",
                "2026-03-01T10:05:00Z",
                DebitKind::ModelCall
            ))
            .is_empty()
        );
    }

    #[test]
    fn execution_threshold() {
        let mut a = SpendAlerts::new(Thresholds {
            account_hourly: None,
            execution: Some(Decimal::from(2)),
        });
        assert!(
            a.record(&debit(
                "1",
                "acct",
                "1.99",
                "2026-03-01T10:05:00Z",
                DebitKind::AgentExecution
            ))
            .is_empty()
        );
        let f = a.record(&debit(
            "2",
            "acct",
            "2",
            "2026-03-01T10:05:00Z",
            DebitKind::AgentExecution,
        ));
        assert_eq!(f[0].rule, "execution_credits");
        assert!(
            a.record(&debit(
                "3",
                "acct",
                "9",
                "2026-03-01T10:05:00Z",
                DebitKind::ToolCall
            ))
            .is_empty()
        );
    }

    #[test]
    fn a_restore_from_the_changelog_decides_the_next_debits_identically() {
        let t = Thresholds {
            account_hourly: Some(Decimal::from(10)),
            execution: Some(Decimal::from(2)),
        };
        let d = |i: u32, total: &str, minute: u32| {
            let at = format!("2026-03-01T10:{minute:02}:00Z");
            debit(
                &format!("d{i}"),
                &format!("a{}", i % 3),
                total,
                &at,
                DebitKind::ModelCall,
            )
        };
        let small = |t: &Thresholds| SpendAlerts {
            seen_capacity: 8,
            ..SpendAlerts::new(t.clone())
        };
        let mut live = small(&t);
        let mut log = crate::stage::CompactedLog::default();
        for i in 0..30 {
            live.record(&d(i, "0.5", i));
            if i % 7 == 6 {
                live.write_changes(&mut log);
            }
        }
        live.write_changes(&mut log);
        // Chunks whose ids all left the memory are deleted: 3 windows, at most 3 chunks.
        assert!(log.len() <= 6, "{} live records", log.len());
        let mut restored = small(&t);
        for (k, v) in log.records() {
            restored.restore_record(k, Some(v)).unwrap();
        }
        restored.restored();
        assert_eq!(restored.hourly, live.hourly);
        assert_eq!(restored.seen, live.seen);
        assert_eq!(restored.newest_hour, live.newest_hour);
        // A debit counted before the restart stays counted once; new ones cross alike.
        for i in [3, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40] {
            assert_eq!(
                restored.record(&d(i, "0.7", 59)),
                live.record(&d(i, "0.7", 59))
            );
        }
        assert!(restored.record(&d(38, "99", 1)).is_empty());
    }
}
