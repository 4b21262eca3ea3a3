//! The restore phase (`bench --restore-open N`): N executions opened on partition 0 of a
//! fresh usage topic in; the time the rating pipeline takes to restore its partitions after
//! a restart, measured `--restores` times, out. Each restart is a new process (SIGTERM, which
//! commits first, then a fresh start), so the figure is what a rebalance or a crash recovery
//! pays for that state before consuming again.

use std::time::{Duration, Instant};

use super::fleet::Fleet;
use super::{BenchArgs, BenchEnv, BenchReport, Loader};
use crate::loadgen::{Workload, WorkloadSpec};

/// Opens `open` executions (one call each, never finished) on partition 0, lets the pipeline
/// consume and commit them, then restarts it `args.restores` times and records the restore
/// time of each restart (`r.restore_s`).
pub async fn phase(
    env: &BenchEnv,
    loader: &Loader,
    args: &BenchArgs,
    open: u64,
    r: &mut BenchReport,
) -> anyhow::Result<()> {
    let spec = WorkloadSpec {
        executions: open,
        direct_calls: 0,
        duplicates: 0.0,
        bad: 0.0,
        late: 0.0,
        max_calls: 1,
        concurrency: open as usize,
        run_id: format!("{}-restore", env.tag),
        ..Default::default()
    };
    let topic = &env.cfg.topics.usage_events;
    let mut sent = 0u64;
    // Every execution's call, none of its finishes: all stay open.
    for g in Workload::new(spec, &env.catalog).filter(|g| g.finish_of.is_none()) {
        loader.send_to(topic, 0, &g.key, &g.payload)?;
        sent += 1;
    }
    loader.flush()?;
    r.events = sent;
    r.partitions = env.cfg.topics.partitions;
    println!("restore phase: {sent} executions opened on partition 0");
    // No idle close while measuring; only the pipeline's stage (with alerts) runs.
    let extra = [("USAGE_AGG__ROLLUP__EXECUTION_IDLE_TIMEOUT", "1h")];
    let fleet = Fleet::start_with(env, args, "pipeline", &extra)?;
    let t = Instant::now();
    while fleet.metric("usage_agg_pipeline_events_consumed_total") < sent as f64 {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "the pipeline did not consume the {sent} events within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "restore phase: consumed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // A few commits after the last event, then a clean stop (which commits too).
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.stop().await;
    for i in 0..args.restores.max(1) {
        let fleet = Fleet::start_with(env, args, "pipeline", &extra)?;
        let t = Instant::now();
        let parts = f64::from(env.cfg.topics.partitions);
        let measured = loop {
            let (secs, count) = fleet.pipeline_restores();
            let open_now = fleet.metric("usage_agg_rollup_open_executions");
            if count >= parts && open_now >= sent as f64 {
                break Ok((secs, t.elapsed().as_secs_f64(), open_now));
            }
            if t.elapsed() > Duration::from_secs(300) {
                break Err(anyhow::anyhow!(
                    "restart {i}: {count} of {parts} partitions restored, {open_now} open executions after 300 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        fleet.stop().await;
        let (secs, wall, open_now) = measured?;
        println!(
            "restore phase: restart {}: partitions restored in {:.3} s ({open_now} open executions; {:.1} s from process start)",
            i + 1,
            secs,
            wall
        );
        r.restore_s.push(secs);
    }
    Ok(())
}
