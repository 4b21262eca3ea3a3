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
/// and its lag (input messages behind the high watermarks of its partitions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStatus {
    pub last_progress_ms: u64,
    pub lag: i64,
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
            });
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

    /// Why the service is not ready, or None when it is.
    pub fn not_ready_reason(&self, stall_after: Duration) -> Option<String> {
        let now = now_ms();
        let stall = stall_after.as_millis() as u64;
        if let Some(why) = self.kafka_wait.lock().expect("health lock").clone() {
            return Some(format!("waiting for kafka: {why}"));
        }
        if self.pipeline_enabled.load(Ordering::Relaxed) {
            if !self.kafka_ok.load(Ordering::Relaxed) {
                return Some("kafka is not reachable".into());
            }
            if !self.catalog_ok.load(Ordering::Relaxed) {
                return Some("price catalog is empty; publish one with `catalog publish`".into());
            }
            let lag = self.pipeline_lag.load(Ordering::Relaxed);
            let last = self.last_progress_ms.load(Ordering::Relaxed);
            if lag > 0 && now.saturating_sub(last) > stall {
                return Some(format!(
                    "pipeline made no progress for {} s while {lag} events wait",
                    now.saturating_sub(last) / 1000
                ));
            }
        }
        if self.sink_enabled.load(Ordering::Relaxed) {
            if !self.clickhouse_ok.load(Ordering::Relaxed) {
                let why = self.clickhouse_error.lock().expect("health lock").clone();
                return Some(why.unwrap_or_else(|| "clickhouse is not reachable".into()));
            }
            let lag = self.sink_lag.load(Ordering::Relaxed);
            let last = self.sink_last_progress_ms.load(Ordering::Relaxed);
            if lag > 0 && now.saturating_sub(last) > stall {
                return Some(format!(
                    "clickhouse sink made no progress for {} s while {lag} rows wait",
                    now.saturating_sub(last) / 1000
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_with_lag_is_not_ready() {
        let h = Health::default();
        h.pipeline_enabled.store(true, Ordering::Relaxed);
        h.kafka_ok.store(true, Ordering::Relaxed);
        h.catalog_ok.store(true, Ordering::Relaxed);
        h.progressed();
        assert_eq!(h.not_ready_reason(Duration::from_secs(30)), None);
        h.pipeline_lag.store(10, Ordering::Relaxed);
        h.last_progress_ms
            .store(now_ms() - 60_000, Ordering::Relaxed);
        let r = h.not_ready_reason(Duration::from_secs(30)).unwrap();
        assert!(r.contains("no progress"), "{r}");
        // Idle without lag is healthy.
        h.pipeline_lag.store(0, Ordering::Relaxed);
        assert_eq!(h.not_ready_reason(Duration::from_secs(30)), None);
        h.kafka_ok.store(false, Ordering::Relaxed);
        assert!(h.not_ready_reason(Duration::from_secs(30)).is_some());
    }
}
