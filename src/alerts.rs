//! Spend alerts: debits in (read from the debits topic, where all of an account's debits
//! share a partition), alert events out, once per threshold crossing.
//! Rules: credits per account per clock hour of event time, and credits of one execution.
//! Offsets are committed every [`COMMIT_INTERVAL`] while debits flow, at once when the topic
//! goes idle, and on shutdown, each time after the alerts sent so far are acknowledged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Timelike, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::debit::{Debit, DebitKind};
use crate::kafka;
use crate::metrics::METRICS;

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

/// The alert rules' state: hourly sums per account, and debit ids already counted.
#[derive(Debug, Default)]
pub struct SpendAlerts {
    thresholds: Thresholds,
    hourly: HashMap<(String, i64), (Decimal, bool)>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    newest_hour: i64,
}

const SEEN_CAPACITY: usize = 200_000;

impl SpendAlerts {
    pub fn new(thresholds: Thresholds) -> Self {
        SpendAlerts {
            thresholds,
            ..Default::default()
        }
    }

    /// Counts one debit; returns the alerts it raises.
    pub fn record(&mut self, d: &Debit) -> Vec<SpendAlert> {
        if !self.seen.insert(d.debit_id.clone()) {
            return Vec::new();
        }
        self.seen_order.push_back(d.debit_id.clone());
        if self.seen_order.len() > SEEN_CAPACITY
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
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
            let e = self
                .hourly
                .entry((d.account_id.clone(), hour))
                .or_insert((Decimal::ZERO, false));
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
            if self.hourly.len() > 100_000 {
                self.hourly.retain(|(_, h), _| *h >= horizon);
            }
        }
        alerts
    }
}

/// Longest time between offset commits while debits keep arriving.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Whether to commit now: something was read since the last commit, and either the interval
/// has passed or the last poll came back empty (the topic is idle).
pub fn commit_due(read_since_commit: u64, since_last_commit: Duration, idle: bool) -> bool {
    read_since_commit > 0 && (idle || since_last_commit >= COMMIT_INTERVAL)
}

/// Runs the alert rules over the debits topic until `stop` is cancelled. Blocking: call it
/// on its own thread.
pub fn run(cfg: &Config, stop: CancellationToken) -> anyhow::Result<()> {
    let c = kafka::group_config(cfg, &cfg.kafka.alerts_group_id, "alerts", &[]);
    let consumer: BaseConsumer = c.create()?;
    consumer.subscribe(&[&cfg.topics.debits])?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::producer_config(cfg).create()?;
    let mut rules = SpendAlerts::new(Thresholds::from_config(cfg));
    let mut read_since_commit = 0u64;
    let mut last_commit = Instant::now();
    // Alerts sent so far are acknowledged, then the offsets of the debits behind them commit.
    let commit = |mode: CommitMode| -> anyhow::Result<()> {
        kafka::await_in_flight(&producer, Instant::now() + Duration::from_secs(10));
        producer.flush(Duration::from_secs(10))?;
        if let Err(e) = consumer.commit_consumer_state(mode) {
            tracing::warn!(error = %e, "alerts offset commit failed; uncommitted debits are read again after a restart (alerts are idempotent by alert_id)");
        }
        Ok(())
    };
    while !stop.is_cancelled() {
        let polled = consumer.poll(Duration::from_millis(200));
        let idle = polled.is_none();
        match polled {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "alerts consumer error"),
            Some(Ok(m)) => {
                if let Some(Ok(d)) = m.payload().map(serde_json::from_slice::<Debit>) {
                    for a in rules.record(&d) {
                        send_alert(cfg, &producer, &a)?;
                    }
                }
                read_since_commit += 1;
                consumer.store_offset_from_message(&m).ok();
            }
        }
        if commit_due(read_since_commit, last_commit.elapsed(), idle) {
            commit(CommitMode::Async)?;
            read_since_commit = 0;
            last_commit = Instant::now();
        }
    }
    if read_since_commit > 0 {
        commit(CommitMode::Sync)?;
    } else {
        producer.flush(Duration::from_secs(10))?;
    }
    Ok(())
}

fn send_alert(
    cfg: &Config,
    producer: &ThreadedProducer<DefaultProducerContext>,
    a: &SpendAlert,
) -> anyhow::Result<()> {
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
    let payload = serde_json::to_vec(a)?;
    let rec = BaseRecord::to(&cfg.topics.alerts)
        .key(a.account_id.as_bytes())
        .payload(payload.as_slice());
    kafka::send_with_backpressure(producer, rec)?;
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
            subtotal: total,
            markup_rate: Decimal::ZERO,
            markup: Decimal::ZERO,
            total,
            calls: 1,
            first_event_at: t,
            last_event_at: t,
            breakdown: vec![],
        }
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
    fn commits_on_an_interval_under_steady_load_and_at_once_when_idle() {
        let short = COMMIT_INTERVAL / 4;
        // Steady load: polls never come back empty, yet the interval forces a commit.
        assert!(!commit_due(500, short, false));
        assert!(commit_due(500, COMMIT_INTERVAL, false));
        // Idle: commit what was read without waiting for the interval.
        assert!(commit_due(1, short, true));
        // Nothing read since the last commit: nothing to commit.
        assert!(!commit_due(0, COMMIT_INTERVAL * 10, true));
        assert!(!commit_due(0, COMMIT_INTERVAL * 10, false));
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
}
