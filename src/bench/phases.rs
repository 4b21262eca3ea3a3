//! The bench phases, in order: preload a generated workload, drain it with a plain consumer
//! (baseline), drain it with the aggregator from a cold start, then a live phase measuring
//! debit latency. Each takes the bench environment and writes its figures into the report.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use super::fleet::Fleet;
use super::{BenchArgs, BenchEnv, BenchReport, Loader};
use crate::loadgen::{Workload, WorkloadSpec};

/// Phase 1, preload: ~`events` generated events (90 % in executions, 10 % direct calls) into the
/// fresh usage topic. Returns how many were sent.
pub fn preload(
    env: &BenchEnv,
    loader: &Loader,
    events: u64,
    r: &mut BenchReport,
) -> anyhow::Result<u64> {
    let spec = WorkloadSpec {
        executions: events * 9 / 10 / 27,
        direct_calls: events / 10,
        run_id: format!("{}-pre", env.tag),
        ..Default::default()
    };
    let t = Instant::now();
    let mut sent = 0u64;
    for g in Workload::new(spec, &env.catalog) {
        loader.send(&env.cfg.topics.usage_events, &g.key, &g.payload)?;
        sent += 1;
    }
    loader.flush()?;
    r.events = sent;
    r.partitions = env.cfg.topics.partitions;
    r.preload_events_per_s = sent as f64 / t.elapsed().as_secs_f64();
    println!(
        "preloaded {sent} events at {:.0} events/s",
        r.preload_events_per_s
    );
    Ok(sent)
}

/// Phase 2, baseline: a plain consumer drains the same topic doing nothing.
pub fn baseline(env: &BenchEnv, events: u64, r: &mut BenchReport) -> anyhow::Result<()> {
    let base: BaseConsumer = crate::kafka::client_config(
        &env.cfg,
        &[
            ("group.id", &format!("{}-baseline", env.tag)),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("fetch.max.bytes", "16777216"),
            (
                "fetch.queue.backoff.ms",
                super::copier::FETCH_QUEUE_BACKOFF_MS,
            ),
        ],
    )
    .create()?;
    base.subscribe(&[&env.cfg.topics.usage_events])?;
    let t = Instant::now();
    let mut seen = 0u64;
    let mut first: Option<Instant> = None;
    while seen < events && t.elapsed() < Duration::from_secs(600) {
        if let Some(Ok(_)) = base.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    drop(base);
    let since_first = first.map_or(t.elapsed(), |f| f.elapsed());
    r.baseline_consumer_events_per_s = seen as f64 / since_first.as_secs_f64();
    println!(
        "baseline plain consumer: {:.0} events/s",
        r.baseline_consumer_events_per_s
    );
    Ok(())
}

/// Phase 3, the aggregator from a cold start: waits until the pipeline consumed every preloaded
/// event and (unless it runs the pipeline alone) the sink caught up; throughput, RSS, CPU.
/// Returns the RSS (MiB) when drained.
pub async fn cold_start(
    fleet: &Fleet,
    events: u64,
    pipeline_only: bool,
    r: &mut BenchReport,
) -> anyhow::Result<f64> {
    r.instances = fleet.instances();
    let t0 = Instant::now();
    let mut drained_at = None;
    let mut sink_done_at = None;
    let mut rows = 0.0;
    let mut first_event_at = None;
    let mut rows_changed_at = Duration::ZERO;
    let settle = fleet.sink_batch_age() + Duration::from_secs(1);
    let deadline = Duration::from_secs(900);
    while t0.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let consumed = fleet.metric("usage_agg_pipeline_events_consumed_total");
        if consumed > 0.0 && first_event_at.is_none() {
            first_event_at = Some(t0.elapsed());
        }
        if drained_at.is_none() && consumed >= events as f64 {
            drained_at = Some(t0.elapsed());
        }
        let now_rows = fleet.metric("usage_agg_sink_rows_inserted_total");
        if now_rows != rows {
            rows_changed_at = t0.elapsed();
        }
        rows = now_rows;
        // Caught up: every partition of this run's output topics at most one behind (with
        // transactional outputs the last offset is a commit marker, never read as a message),
        // and no new rows for longer than a sink batch may wait (`sink.batch_age`); done when
        // the rows last grew.
        if drained_at.is_some()
            && sink_done_at.is_none()
            && rows > 0.0
            && t0.elapsed() > rows_changed_at + settle
            && fleet.sink_caught_up()
        {
            sink_done_at = Some(rows_changed_at);
        }
        if drained_at.is_some() && pipeline_only {
            sink_done_at = drained_at;
        }
        if drained_at.is_some() && sink_done_at.is_some() {
            break;
        }
    }
    let (rss_now, peak, cpu) = fleet.proc_stats();
    let drained = drained_at
        .ok_or_else(|| anyhow::anyhow!("the aggregator did not drain within {deadline:?}"))?;
    let start = first_event_at.unwrap_or_default();
    r.time_to_drain_s = drained.as_secs_f64();
    // Sampled every 200 ms: a drain shorter than a few samples has no meaningful rate.
    let span = (drained - start).as_secs_f64();
    if span < 2.0 {
        println!(
            "note: the drain took {span:.1} s after the first event; rates need a longer run (more --events)"
        );
    }
    r.aggregator_events_per_s = events as f64 / span.max(0.2);
    r.ratio_to_baseline = r.aggregator_events_per_s / r.baseline_consumer_events_per_s;
    r.ratio_to_java_consumer = r
        .java_consumer_events_per_s
        .map(|j| r.aggregator_events_per_s / j);
    r.ratio_to_copier = r.copier_events_per_s.map(|c| r.aggregator_events_per_s / c);
    r.peak_rss_mib = peak;
    let (commit_s, commits) = fleet.pipeline_commits();
    r.commits_cold = commits;
    r.commit_ms_mean_cold = commit_s / commits.max(1.0) * 1000.0;
    r.cpu_s_per_million_events = cpu / (events as f64 / 1e6);
    r.cpu_ratio_to_copier = r
        .copier_cpu_s_per_million_events
        .map(|c| r.cpu_s_per_million_events / c);
    r.clickhouse_rows = rows as u64;
    let per_million = events as f64 / 1e6;
    r.thread_cpu_s_per_million = fleet
        .threads_cpu_s()
        .into_iter()
        .map(|(k, v)| (k, v / per_million))
        .collect();
    let sink_cpu = fleet.sink_cpu_s();
    r.sink_cpu_s = sink_cpu;
    r.clickhouse_rows_per_sink_cpu_s = if sink_cpu > 0.0 {
        rows / sink_cpu
    } else {
        f64::NAN
    };
    r.clickhouse_rows_per_s = rows
        / sink_done_at
            .unwrap_or(drained)
            .saturating_sub(start)
            .as_secs_f64()
            .max(1e-3);
    println!(
        "aggregator ({} instance(s)): drained {events} events in {:.1} s ({:.0} events/s sustained, {:.0}% of the plain consumer), peak RSS {:.0} MiB, {:.1} CPU s per 1M events; clickhouse {} rows at {:.0} rows/s",
        r.instances,
        r.time_to_drain_s,
        r.aggregator_events_per_s,
        r.ratio_to_baseline * 100.0,
        peak,
        r.cpu_s_per_million_events,
        r.clickhouse_rows,
        r.clickhouse_rows_per_s
    );
    println!(
        "pipeline commits (cold start): {:.0}, {:.1} ms each on average",
        r.commits_cold, r.commit_ms_mean_cold
    );
    let by_thread: Vec<String> = r
        .thread_cpu_s_per_million
        .iter()
        .filter(|(_, v)| **v >= 0.05)
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    println!(
        "CPU s per 1M events by thread (cold start): {}",
        by_thread.join(", ")
    );
    if !pipeline_only {
        println!(
            "clickhouse sink: {} rows for {:.1} CPU s of its threads = {:.0} rows/s per core of sink CPU",
            r.clickhouse_rows, sink_cpu, r.clickhouse_rows_per_sink_cpu_s
        );
    }
    match (r.ratio_to_copier, r.cpu_ratio_to_copier) {
        (Some(q), Some(c)) => println!(
            "aggregator / exactly-once copier: {:.0}% of its rate ({:.0} / {:.0} events/s), {:.1}x its CPU per event ({:.2} / {:.2} CPU s per 1M)",
            q * 100.0,
            r.aggregator_events_per_s,
            r.copier_events_per_s.unwrap_or_default(),
            c,
            r.cpu_s_per_million_events,
            r.copier_cpu_s_per_million_events.unwrap_or_default()
        ),
        _ => println!("aggregator / exactly-once copier: not measured (baseline skipped)"),
    }
    match r.ratio_to_java_consumer {
        Some(q) => println!(
            "aggregator / Kafka ConsumerPerformance: {:.0}% ({:.0} / {:.0} events/s)",
            q * 100.0,
            r.aggregator_events_per_s,
            r.java_consumer_events_per_s.unwrap_or_default()
        ),
        None => {
            println!("aggregator / Kafka ConsumerPerformance: not measured (baseline skipped)")
        }
    }
    Ok(rss_now)
}

/// Phase 4, live at half the max rate (or `--live-rate`): the time from sending an
/// `execution_finished` to reading its debit, and RSS over the phase.
pub fn live(
    env: &BenchEnv,
    loader: &Loader,
    fleet: &Fleet,
    args: &BenchArgs,
    rss_at_start: f64,
    r: &mut BenchReport,
) -> anyhow::Result<()> {
    r.live_rate_events_per_s = args
        .live_rate
        .unwrap_or((r.aggregator_events_per_s / 2.0).min(r.preload_events_per_s / 2.0));
    r.rss_at_live_start_mib = rss_at_start;
    let spec = WorkloadSpec {
        executions: u64::MAX / 4,
        direct_calls: 0,
        duplicates: 0.0,
        bad: 0.0,
        late: 0.0,
        run_id: format!("{}-live", env.tag),
        ..Default::default()
    };
    let observer = crate::kafka::client_config(
        &env.cfg,
        &[
            ("group.id", &format!("{}-observer", env.tag)),
            ("auto.offset.reset", "latest"),
            ("fetch.wait.max.ms", "5"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create::<BaseConsumer>()?;
    observer.subscribe(&[&env.cfg.topics.debits])?;
    // Let the observer join before sending.
    let join = Instant::now();
    while observer.assignment().map(|a| a.count()).unwrap_or(0) == 0
        && join.elapsed() < Duration::from_secs(20)
    {
        observer.poll(Duration::from_millis(100));
    }
    let commits_before = fleet.pipeline_commits();
    let live = Instant::now();
    let mut sent = 0u64;
    let mut finishes: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let every = Duration::from_secs(args.sample_seconds.max(1));
    let mut window = Window::start(fleet, every);
    for g in Workload::new(spec, &env.catalog) {
        if live.elapsed() >= Duration::from_secs(args.live_seconds) {
            break;
        }
        loader.send(&env.cfg.topics.usage_events, &g.key, &g.payload)?;
        if let Some(x) = g.finish_of {
            finishes.insert(x, Instant::now());
        }
        sent += 1;
        if window.due() {
            r.live_samples
                .push(window.sample(fleet, live, sent, &latencies, finishes.len()));
        }
        let due = Duration::from_secs_f64(sent as f64 / r.live_rate_events_per_s);
        if let Some(w) = due.checked_sub(live.elapsed())
            && w > Duration::from_millis(1)
        {
            // Poll the observer while pacing.
            let until = Instant::now() + w;
            while Instant::now() < until {
                observe(
                    &observer,
                    &mut finishes,
                    &mut latencies,
                    Duration::from_millis(1),
                );
            }
        }
    }
    loader.flush()?;
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(5) && !finishes.is_empty() {
        observe(
            &observer,
            &mut finishes,
            &mut latencies,
            Duration::from_millis(50),
        );
    }
    r.live_events = sent;
    let (rss_end, _, _) = fleet.proc_stats();
    r.rss_at_live_end_mib = rss_end;
    latencies.sort_by(|a: &f64, b| a.total_cmp(b));
    r.debit_latency_samples = latencies.len();
    r.debit_latency_p50_ms = percentile(&latencies, 0.50);
    r.debit_latency_p99_ms = percentile(&latencies, 0.99);
    let commits_after = fleet.pipeline_commits();
    r.commits_live = commits_after.1 - commits_before.1;
    r.commit_ms_mean_live = (commits_after.0 - commits_before.0) / r.commits_live.max(1.0) * 1000.0;
    r.rss_spread_after_warmup_pct = rss_spread(&r.live_samples, 60.0);
    if let Some(spread) = r.rss_spread_after_warmup_pct {
        println!("live phase: RSS after the first minute within ±{spread:.1} % of its median");
    }
    println!(
        "live phase: {:.0} pipeline commits, {:.1} ms each on average",
        r.commits_live, r.commit_ms_mean_live
    );
    println!(
        "live phase: {sent} events at {:.0} events/s for {} s; debit latency after execution_finished p50 {:.1} ms, p99 {:.1} ms ({} samples, {} open at end of observation); RSS {:.0} -> {:.0} MiB",
        r.live_rate_events_per_s,
        args.live_seconds,
        r.debit_latency_p50_ms,
        r.debit_latency_p99_ms,
        latencies.len(),
        finishes.len(),
        rss_at_start,
        rss_end
    );
    Ok(())
}

/// One sample of the live phase, over the window since the previous one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveSample {
    /// Seconds since the live phase started.
    pub t_s: f64,
    /// Events sent in the window, per second.
    pub sent_per_s: f64,
    pub rss_mib: f64,
    /// CPU seconds of the aggregator processes in the window, per million events sent.
    pub cpu_s_per_million: f64,
    /// `usage_agg_stage_consumer_lag_messages{stage="pipeline"}`, summed over partitions.
    pub pipeline_lag: f64,
    /// `usage_agg_sink_lag_messages`, summed over topics and partitions.
    pub sink_lag: f64,
    /// Debit latency of the executions whose debit arrived in the window, ms.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Finished executions still waiting for their debit at the sample.
    pub waiting: usize,
}

/// The window a [`LiveSample`] covers.
struct Window {
    every: Duration,
    started: Instant,
    sent: u64,
    latencies: usize,
    cpu_s: f64,
}

impl Window {
    fn start(fleet: &Fleet, every: Duration) -> Window {
        Window {
            every,
            started: Instant::now(),
            sent: 0,
            latencies: 0,
            cpu_s: fleet.proc_stats().2,
        }
    }

    fn due(&self) -> bool {
        self.started.elapsed() >= self.every
    }

    /// Closes the window (printing its line) and opens the next one.
    fn sample(
        &mut self,
        fleet: &Fleet,
        live: Instant,
        sent: u64,
        latencies: &[f64],
        waiting: usize,
    ) -> LiveSample {
        let secs = self.started.elapsed().as_secs_f64();
        let (rss, _, cpu_s) = fleet.proc_stats();
        let events = (sent - self.sent) as f64;
        let mut lat = latencies[self.latencies..].to_vec();
        lat.sort_by(f64::total_cmp);
        let s = LiveSample {
            t_s: live.elapsed().as_secs_f64(),
            sent_per_s: events / secs,
            rss_mib: rss,
            cpu_s_per_million: if events > 0.0 {
                (cpu_s - self.cpu_s) / events * 1e6
            } else {
                f64::NAN
            },
            pipeline_lag: fleet.metric_with(
                "usage_agg_stage_consumer_lag_messages",
                "stage=\"pipeline\"",
            ),
            sink_lag: fleet.metric("usage_agg_sink_lag_messages"),
            latency_p50_ms: percentile(&lat, 0.50),
            latency_p99_ms: percentile(&lat, 0.99),
            waiting,
        };
        println!(
            "live t={:>5.0} s: {:>7.0} events/s, RSS {:>6.1} MiB, {:>5.1} CPU s per 1M, lag pipeline {:>6.0} sink {:>6.0}, debit latency p50 {:>7.1} ms p99 {:>7.1} ms, {} waiting",
            s.t_s,
            s.sent_per_s,
            s.rss_mib,
            s.cpu_s_per_million,
            s.pipeline_lag,
            s.sink_lag,
            s.latency_p50_ms,
            s.latency_p99_ms,
            s.waiting
        );
        *self = Window {
            every: self.every,
            started: Instant::now(),
            sent,
            latencies: latencies.len(),
            cpu_s,
        };
        s
    }
}

/// (max - min) / 2 / median of the RSS samples taken at `warmup_s` or later, in percent.
pub fn rss_spread(samples: &[LiveSample], warmup_s: f64) -> Option<f64> {
    let mut rss: Vec<f64> = samples
        .iter()
        .filter(|s| s.t_s >= warmup_s)
        .map(|s| s.rss_mib)
        .collect();
    if rss.len() < 2 {
        return None;
    }
    rss.sort_by(f64::total_cmp);
    let median = percentile(&rss, 0.5);
    Some((rss[rss.len() - 1] - rss[0]) / 2.0 / median * 100.0)
}

/// Reads at most one debit; records the latency of an execution whose finish was sent.
fn observe(
    c: &BaseConsumer,
    finishes: &mut HashMap<String, Instant>,
    out: &mut Vec<f64>,
    wait: Duration,
) {
    if let Some(Ok(m)) = c.poll(wait) {
        let Some(Ok(d)) = m
            .payload()
            .map(serde_json::from_slice::<crate::debit::Debit>)
        else {
            return;
        };
        if let Some(sent) = d.execution_id.and_then(|x| finishes.remove(&x)) {
            out.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_spread_skips_the_warmup_and_halves_the_range() {
        let at = |t_s: f64, rss_mib: f64| LiveSample {
            t_s,
            sent_per_s: 0.0,
            rss_mib,
            cpu_s_per_million: 0.0,
            pipeline_lag: 0.0,
            sink_lag: 0.0,
            latency_p50_ms: 0.0,
            latency_p99_ms: 0.0,
            waiting: 0,
        };
        let s = [
            at(30.0, 500.0),
            at(60.0, 190.0),
            at(90.0, 200.0),
            at(120.0, 210.0),
        ];
        assert_eq!(rss_spread(&s, 60.0), Some(5.0));
        assert_eq!(rss_spread(&s[..2], 60.0), None);
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 51.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
