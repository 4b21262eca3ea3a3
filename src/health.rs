//! Health: what each stage reports (progress, lag, reachability) in, the readiness verdict
//! the HTTP server serves out. A stalled consumer with growing lag is not ready.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::METRICS;

/// Wall time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Default)]
pub struct Health {
    pub pipeline_enabled: AtomicBool,
    pub sink_enabled: AtomicBool,
    pub last_progress_ms: AtomicU64,
    pub pipeline_lag: AtomicI64,
    pub kafka_ok: AtomicBool,
    pub catalog_ok: AtomicBool,
    pub clickhouse_ok: AtomicBool,
    /// Why ClickHouse is not usable (the last failed request, in the operator's terms), while
    /// `clickhouse_ok` is false.
    pub clickhouse_error: Mutex<Option<String>>,
    pub sink_last_progress_ms: AtomicU64,
    pub sink_lag: AtomicI64,
    /// While `run` waits for Kafka at start: why it cannot connect (preflight's line).
    pub kafka_wait: Mutex<Option<String>>,
    /// What each stage on the stage runtime last reported, by stage name.
    pub stages: Mutex<BTreeMap<&'static str, StageStatus>>,
}

/// What a stage on the stage runtime (`src/stage.rs`) reports: when it last handled input,
/// its lag (input messages behind the high watermarks of its partitions), and the Kafka
/// client call its thread is inside, if any, with when that call began (ms since the epoch).
///
/// `in_call` exists because the lag cannot tell a stuck stage: librdkafka serves a consumer's
/// statistics (the lag's source) only when its thread polls, so a thread blocked in a
/// transaction call keeps reporting its last lag, typically 0 (confluentinc/librdkafka#5511:
/// `send_offsets_to_transaction` waiting without end on a coordinator whose node was
/// SIGKILLed; seen in `tests/cluster.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStatus {
    pub last_progress_ms: u64,
    pub lag: i64,
    pub in_call: Option<(&'static str, u64)>,
}

impl Health {
    pub fn progressed(&self) {
        let now = now_ms();
        self.last_progress_ms.store(now, Ordering::Relaxed);
        METRICS.last_progress.set(now as f64 / 1000.0);
    }

    /// A stage started (it is reported from now on).
    pub fn stage_started(&self, stage: &'static str) {
        self.stages
            .lock()
            .expect("health lock")
            .entry(stage)
            .or_insert(StageStatus {
                last_progress_ms: now_ms(),
                lag: 0,
                in_call: None,
            });
    }

    /// A stage's thread enters a Kafka client call that may block (`Some(call)`, e.g.
    /// `"commit"`), or has left it (`None`).
    pub fn stage_in_call(&self, stage: &'static str, call: Option<&'static str>) {
        self.stages
            .lock()
            .expect("health lock")
            .entry(stage)
            .or_default()
            .in_call = call.map(|c| (c, now_ms()));
    }

    /// A stage handled input just now. The rating pipeline's progress is also the service's
    /// (`last_progress_ms`, the readiness rule).
    pub fn stage_progressed(&self, stage: &'static str) {
        if stage == "pipeline" {
            self.progressed();
        }
        let now = now_ms();
        self.stages
            .lock()
            .expect("health lock")
            .entry(stage)
            .or_default()
            .last_progress_ms = now;
    }

    /// A stage's lag now; the rating pipeline's is also `pipeline_lag`.
    pub fn stage_lag(&self, stage: &'static str, lag: i64) {
        if stage == "pipeline" {
            self.pipeline_lag.store(lag, Ordering::Relaxed);
        }
        self.stages
            .lock()
            .expect("health lock")
            .entry(stage)
            .or_default()
            .lag = lag;
    }

    /// Records whether ClickHouse answered, and why not.
    pub fn clickhouse(&self, result: Result<(), String>) {
        let ok = result.is_ok();
        *self.clickhouse_error.lock().expect("health lock") = result.err();
        self.clickhouse_ok.store(ok, Ordering::Relaxed);
    }

    /// The readiness of each stage this process runs (pipeline, sink, and the stages on the
    /// stage runtime: ledger, vouchers, alerts), by name; the HTTP server adds its own
    /// (`api`). While `run` waits for Kafka at start, every stage says so.
    pub fn stage_readiness(&self, stall_after: Duration) -> BTreeMap<&'static str, StageReadiness> {
        let now = now_ms();
        let stall = stall_after.as_millis() as u64;
        let idle_for = |last: u64| now.saturating_sub(last) / 1000;
        let mut out = BTreeMap::new();
        let waiting = self
            .kafka_wait
            .lock()
            .expect("health lock")
            .clone()
            .map(|why| StageReadiness::not_ready(format!("waiting for kafka: {why}")));
        for (name, st) in self.stages.lock().expect("health lock").iter() {
            let r = if let Some((call, since)) = st.in_call
                && now.saturating_sub(since) > stall
            {
                StageReadiness::not_ready(format!(
                    "inside one kafka {call} call for {} s",
                    idle_for(since)
                ))
            } else if st.lag > 0 && now.saturating_sub(st.last_progress_ms) > stall {
                StageReadiness::not_ready(format!(
                    "made no progress for {} s while {} messages wait",
                    idle_for(st.last_progress_ms),
                    st.lag
                ))
            } else {
                StageReadiness::ready(format!("{} messages behind", st.lag.max(0)))
            };
            out.insert(*name, r);
        }
        if self.pipeline_enabled.load(Ordering::Relaxed) {
            let lag = self.pipeline_lag.load(Ordering::Relaxed);
            let last = self.last_progress_ms.load(Ordering::Relaxed);
            let r = if !self.kafka_ok.load(Ordering::Relaxed) {
                StageReadiness::not_ready("kafka is not reachable")
            } else if !self.catalog_ok.load(Ordering::Relaxed) {
                StageReadiness::not_ready(
                    "price catalog is empty; publish one with `catalog publish`",
                )
            } else if let Some(r) = out.get("pipeline").filter(|r| !r.ready) {
                r.clone() // the stage runtime's verdict, e.g. blocked in a commit
            } else if lag > 0 && now.saturating_sub(last) > stall {
                StageReadiness::not_ready(format!(
                    "pipeline made no progress for {} s while {lag} events wait",
                    idle_for(last)
                ))
            } else {
                StageReadiness::ready(format!("{} events behind", lag.max(0)))
            };
            out.insert("pipeline", r);
        }
        if self.sink_enabled.load(Ordering::Relaxed) {
            let lag = self.sink_lag.load(Ordering::Relaxed);
            let last = self.sink_last_progress_ms.load(Ordering::Relaxed);
            let r = if !self.clickhouse_ok.load(Ordering::Relaxed) {
                let why = self.clickhouse_error.lock().expect("health lock").clone();
                StageReadiness::not_ready(
                    why.unwrap_or_else(|| "clickhouse is not reachable".into()),
                )
            } else if lag > 0 && now.saturating_sub(last) > stall {
                StageReadiness::not_ready(format!(
                    "clickhouse sink made no progress for {} s while {lag} rows wait",
                    idle_for(last)
                ))
            } else {
                StageReadiness::ready(format!("{} rows behind", lag.max(0)))
            };
            out.insert("sink", r);
        }
        if let Some(w) = waiting {
            for r in out.values_mut() {
                *r = w.clone();
            }
        }
        out
    }

    /// The first Kafka stage (the rating pipeline, or one on the stage runtime) that has had
    /// input waiting and made no progress for longer than `after`, and why in the
    /// operator's terms; `None` while every one moves (or `after` is zero). The ClickHouse
    /// sink is not judged here: it waits out a ClickHouse outage by design.
    pub fn stalled(&self, after: Duration) -> Option<String> {
        if after.is_zero() || self.kafka_wait.lock().expect("health lock").is_some() {
            return None;
        }
        let now = now_ms();
        let limit = after.as_millis() as u64;
        let stuck = |lag: i64, last: u64| lag > 0 && now.saturating_sub(last) > limit;
        let idle = |last: u64| now.saturating_sub(last) / 1000;
        if self.pipeline_enabled.load(Ordering::Relaxed) {
            let lag = self.pipeline_lag.load(Ordering::Relaxed);
            let last = self.last_progress_ms.load(Ordering::Relaxed);
            if stuck(lag, last) {
                return Some(format!(
                    "pipeline made no progress for {} s while {lag} events wait",
                    idle(last)
                ));
            }
        }
        let stages = self.stages.lock().expect("health lock");
        let in_call = stages.iter().find_map(|(name, st)| {
            let (call, since) = st.in_call?;
            (now.saturating_sub(since) > limit).then(|| {
                format!(
                    "stage {name} has been inside one kafka {call} call for {} s",
                    idle(since)
                )
            })
        });
        if in_call.is_some() {
            return in_call;
        }
        stages.iter().find_map(|(name, st)| {
            stuck(st.lag, st.last_progress_ms).then(|| {
                format!(
                    "stage {name} made no progress for {} s while {} messages wait",
                    idle(st.last_progress_ms),
                    st.lag
                )
            })
        })
    }

    /// While `run` waits for Kafka at start: why.
    pub fn waiting_for_kafka(&self) -> Option<String> {
        self.kafka_wait.lock().expect("health lock").clone()
    }
}

/// One stage's readiness on `/readyz`: ready or not, and why in the operator's terms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageReadiness {
    pub ready: bool,
    pub detail: String,
}

impl StageReadiness {
    pub fn ready(detail: impl Into<String>) -> StageReadiness {
        StageReadiness {
            ready: true,
            detail: detail.into(),
        }
    }

    pub fn not_ready(detail: impl Into<String>) -> StageReadiness {
        StageReadiness {
            ready: false,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_ready(h: &Health) -> Vec<(&'static str, String)> {
        h.stage_readiness(Duration::from_secs(30))
            .into_iter()
            .filter(|(_, r)| !r.ready)
            .map(|(n, r)| (n, r.detail))
            .collect()
    }

    #[test]
    fn stalled_with_lag_is_not_ready() {
        let h = Health::default();
        h.pipeline_enabled.store(true, Ordering::Relaxed);
        h.kafka_ok.store(true, Ordering::Relaxed);
        h.catalog_ok.store(true, Ordering::Relaxed);
        h.progressed();
        assert_eq!(not_ready(&h), vec![]);
        h.pipeline_lag.store(10, Ordering::Relaxed);
        h.last_progress_ms
            .store(now_ms() - 60_000, Ordering::Relaxed);
        let r = not_ready(&h);
        assert!(
            r[0].0 == "pipeline" && r[0].1.contains("no progress"),
            "{r:?}"
        );
        // Idle without lag is healthy.
        h.pipeline_lag.store(0, Ordering::Relaxed);
        assert_eq!(not_ready(&h), vec![]);
        h.kafka_ok.store(false, Ordering::Relaxed);
        assert_eq!(not_ready(&h)[0].0, "pipeline");
    }

    #[test]
    fn a_kafka_stage_stuck_past_the_limit_is_stalled_the_sink_never() {
        let h = Health::default();
        let limit = Duration::from_secs(60);
        h.pipeline_enabled.store(true, Ordering::Relaxed);
        h.sink_enabled.store(true, Ordering::Relaxed);
        h.progressed();
        h.pipeline_lag.store(28, Ordering::Relaxed);
        assert_eq!(h.stalled(limit), None, "waiting, but not for long");
        h.last_progress_ms
            .store(now_ms() - 90_000, Ordering::Relaxed);
        assert_eq!(
            h.stalled(limit).as_deref(),
            Some("pipeline made no progress for 90 s while 28 events wait")
        );
        assert_eq!(h.stalled(Duration::ZERO), None, "0s: never");
        // Idle without input waiting is not stuck.
        h.pipeline_lag.store(0, Ordering::Relaxed);
        assert_eq!(h.stalled(limit), None);
        // A ClickHouse sink waiting out an outage is not judged.
        h.sink_lag.store(500, Ordering::Relaxed);
        assert_eq!(h.stalled(limit), None);
        // A stage on the stage runtime is.
        h.stage_started("ledger");
        h.stage_lag("ledger", 5);
        h.stages
            .lock()
            .unwrap()
            .get_mut("ledger")
            .unwrap()
            .last_progress_ms = now_ms() - 61_000;
        assert_eq!(
            h.stalled(limit).as_deref(),
            Some("stage ledger made no progress for 61 s while 5 messages wait")
        );
        // While Kafka is unreachable at start, `run` waits by design.
        *h.kafka_wait.lock().unwrap() = Some("connection refused".into());
        assert_eq!(h.stalled(limit), None);
    }

    #[test]
    fn a_stage_blocked_in_a_kafka_call_is_stalled_whatever_its_lag_says() {
        let h = Health::default();
        let limit = Duration::from_secs(30);
        h.stage_started("pipeline");
        h.stage_lag("pipeline", 0);
        h.stage_in_call("pipeline", Some("commit"));
        assert_eq!(h.stalled(limit), None, "inside a call, but not for long");
        let begun = |ago: u64| {
            h.stages
                .lock()
                .unwrap()
                .get_mut("pipeline")
                .unwrap()
                .in_call = Some(("commit", now_ms() - ago));
        };
        begun(31_000);
        assert_eq!(
            h.stalled(limit).as_deref(),
            Some("stage pipeline has been inside one kafka commit call for 31 s"),
            "lag 0 (a blocked thread's statistics are not served) does not hide it"
        );
        assert_eq!(
            h.stage_readiness(limit)["pipeline"],
            StageReadiness::not_ready("inside one kafka commit call for 31 s")
        );
        // The pipeline's own readiness (kafka, catalog, lag) keeps that verdict.
        h.pipeline_enabled.store(true, Ordering::Relaxed);
        h.kafka_ok.store(true, Ordering::Relaxed);
        h.catalog_ok.store(true, Ordering::Relaxed);
        h.progressed();
        assert!(!h.stage_readiness(limit)["pipeline"].ready);
        h.stage_in_call("pipeline", None);
        assert_eq!(h.stalled(limit), None, "the call returned");
        assert!(h.stage_readiness(limit)["pipeline"].ready);
    }

    #[test]
    fn a_clickhouse_outage_names_the_sink_only() {
        let h = Health::default();
        h.pipeline_enabled.store(true, Ordering::Relaxed);
        h.sink_enabled.store(true, Ordering::Relaxed);
        h.kafka_ok.store(true, Ordering::Relaxed);
        h.catalog_ok.store(true, Ordering::Relaxed);
        h.stage_started("ledger");
        h.clickhouse(Err(
            "clickhouse.url = \"http://ch:8123\": connection refused".into(),
        ));
        let r = h.stage_readiness(Duration::from_secs(30));
        assert_eq!(
            r.keys().copied().collect::<Vec<_>>(),
            ["ledger", "pipeline", "sink"]
        );
        assert_eq!(
            not_ready(&h),
            vec![(
                "sink",
                "clickhouse.url = \"http://ch:8123\": connection refused".to_string()
            )]
        );
        // A ledger stage stalled while input waits is named too.
        h.stage_lag("ledger", 5);
        h.stages
            .lock()
            .unwrap()
            .get_mut("ledger")
            .unwrap()
            .last_progress_ms = now_ms() - 60_000;
        assert_eq!(not_ready(&h).len(), 2);
        // Waiting for Kafka at start: every stage says so.
        *h.kafka_wait.lock().unwrap() = Some("connection refused".into());
        assert!(
            not_ready(&h)
                .iter()
                .all(|(_, d)| d.starts_with("waiting for kafka"))
        );
    }
}
