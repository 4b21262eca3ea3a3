//! The stall watchdog: the process's [`Health`] in, an error out once a Kafka stage has had
//! input waiting and made no progress for `pipeline.stall_exit_after`. The error shuts every
//! stage down (one shutdown path) and the process exits with status 1, so its supervisor
//! restarts it and it resumes from the last committed transaction.
//!
//! Why: a client stuck inside librdkafka (e.g. a coordinator request waiting on a broker
//! handle that was decommissioned after a SIGKILL, confluentinc/librdkafka#5511) neither
//! fails nor progresses; a fresh process finds the new coordinators at once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Checks `health` every second until `stop`; `after` zero: never fires.
pub async fn run(
    health: Arc<Health>,
    after: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if after.is_zero() {
        stop.cancelled().await;
        return Ok(());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Some(why) = health.stalled(after) {
            anyhow::bail!(
                "{why} (pipeline.stall_exit_after = {}); exiting so the supervisor restarts the process from the last commit",
                crate::config::values::show_duration(after)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn a_stalled_pipeline_ends_the_watchdog_with_the_reason() {
        let h = Arc::new(Health::default());
        h.pipeline_enabled.store(true, Ordering::Relaxed);
        h.pipeline_lag.store(3, Ordering::Relaxed);
        h.last_progress_ms
            .store(crate::health::now_ms() - 5_000, Ordering::Relaxed);
        let e = run(h, Duration::from_secs(2), CancellationToken::new())
            .await
            .unwrap_err();
        let e = e.to_string();
        // 5 s, or more if this thread was held up before the watchdog's first look.
        let secs: u64 = e
            .strip_prefix("pipeline made no progress for ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{e}"));
        assert!(
            (5..60).contains(&secs)
                && e.contains(" s while 3 events wait (pipeline.stall_exit_after = 2s)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn stops_with_the_process() {
        let stop = CancellationToken::new();
        stop.cancel();
        let h = Arc::new(Health::default());
        run(h, Duration::from_secs(2), stop).await.unwrap();
    }
}
