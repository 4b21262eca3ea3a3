//! Health: what each stage reports (progress, lag, reachability) in, the readiness verdict
//! the HTTP server serves out. A stalled consumer with growing lag is not ready.

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
}

impl Health {
    pub fn progressed(&self) {
        let now = now_ms();
        self.last_progress_ms.store(now, Ordering::Relaxed);
        METRICS.last_progress.set(now as f64 / 1000.0);
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
