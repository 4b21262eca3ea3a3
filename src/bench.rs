//! End-to-end benchmark: preloads a generated workload into the usage topic, measures a plain
//! consumer's drain rate (baseline), then the aggregator from a cold start; prints figures
//! and writes them as JSON.

use std::time::Duration;

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::Config;
use crate::kafka;

/// A fast producer for preloading events, with backpressure on a full queue.
pub struct Loader {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Loader {
    pub fn new(cfg: &Config) -> anyhow::Result<Loader> {
        let mut c = kafka::producer_config(cfg);
        c.set("linger.ms", "20").set("batch.num.messages", "10000");
        Ok(Loader {
            producer: c.create()?,
        })
    }

    pub fn send(&self, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.send_record(BaseRecord::to(topic).key(key.as_bytes()).payload(payload))
    }

    pub fn send_to(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.send_record(
            BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(payload)
                .partition(partition),
        )
    }

    fn send_record(&self, rec: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
        kafka::send_with_backpressure(&self.producer, rec).map_err(Into::into)
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        self.producer.flush(Duration::from_secs(120))?;
        Ok(())
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Events to preload into a fresh usage topic.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Seconds of the live phase at half the measured rate (debit latency, steady RSS).
    #[arg(long, default_value_t = 20)]
    pub live_seconds: u64,
    /// Events/s of the live phase; default: half the measured drain rate.
    #[arg(long)]
    pub live_rate: Option<f64>,
    /// Aggregator processes sharing the consumer groups (scale-out run).
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// Stages the measured aggregator runs (pipeline alone isolates the sink's share).
    #[arg(long, default_value = "all")]
    pub role: String,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results.json")]
    pub output: std::path::PathBuf,
}

/// What one bench run measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub events: u64,
    pub instances: u32,
    pub partitions: i32,
    pub preload_events_per_s: f64,
    pub baseline_consumer_events_per_s: f64,
    pub aggregator_events_per_s: f64,
    pub ratio_to_baseline: f64,
    pub time_to_drain_s: f64,
    pub peak_rss_mib: f64,
    pub cpu_s_per_million_events: f64,
    pub clickhouse_rows: u64,
    pub clickhouse_rows_per_s: f64,
    pub live_rate_events_per_s: f64,
    pub live_events: u64,
    pub debit_latency_samples: usize,
    pub debit_latency_p50_ms: f64,
    pub debit_latency_p99_ms: f64,
    pub rss_at_live_start_mib: f64,
    pub rss_at_live_end_mib: f64,
}

fn proc_stats(pid: u32) -> (f64, f64, f64) {
    // (current RSS MiB, peak RSS MiB, cpu seconds)
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks of 1/100 s).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0, cpu)
}

fn scrape(listen: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(listen) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {listen}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the end-to-end benchmark on the running services.
pub async fn run(cfg: &Config, args: BenchArgs) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use std::time::Instant;

    let tag = format!("bench{}", chrono::Utc::now().format("%m%d%H%M%S"));
    let mut b = cfg.clone();
    for t in [
        &mut b.topics.usage_events,
        &mut b.topics.price_catalog,
        &mut b.topics.debits,
        &mut b.topics.priced_usage,
        &mut b.topics.dead_letter,
        &mut b.topics.alerts,
        &mut b.topics.state,
    ] {
        *t = format!("{tag}.{t}");
    }
    b.kafka.group_id = format!("{tag}-pipeline");
    b.kafka.sink_group_id = format!("{tag}-sink");
    b.kafka.alerts_group_id = format!("{tag}-alerts");
    b.clickhouse.database = tag.clone();
    b.http.listen = "127.0.0.1:19464".into();
    println!("bench {tag}: topics {}.*, clickhouse database {tag}", tag);
    crate::kafka::create_topics(&b).await?;
    let ch = crate::sink::client(&b.clickhouse)?;
    crate::sink::migrate::migrate(&ch, &b.clickhouse).await?;
    let catalog = crate::catalog::Catalog::from_json(&std::fs::read(&b.pricing.catalog_file)?)?;
    let versions: Vec<_> = catalog.versions().cloned().collect();
    crate::catalog_feed::publish(&b, &versions).await?;

    // 1. Preload.
    let n_exec = args.events * 9 / 10 / 27;
    let spec = crate::loadgen::WorkloadSpec {
        executions: n_exec,
        direct_calls: args.events / 10,
        run_id: format!("{tag}-pre"),
        ..Default::default()
    };
    let loader = Loader::new(&b)?;
    let t = Instant::now();
    let mut events = 0u64;
    for g in crate::loadgen::Workload::new(spec, &catalog) {
        loader.send(&b.topics.usage_events, &g.key, &g.payload)?;
        events += 1;
    }
    loader.flush()?;
    let mut r = BenchReport {
        events,
        partitions: b.topics.partitions,
        preload_events_per_s: events as f64 / t.elapsed().as_secs_f64(),
        ..Default::default()
    };
    println!(
        "preloaded {events} events at {:.0} events/s",
        r.preload_events_per_s
    );

    // 2. Baseline: a plain consumer drains the same topic doing nothing.
    let base: BaseConsumer = crate::kafka::client_config(
        &b,
        &[
            ("group.id", &format!("{tag}-baseline")),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("fetch.max.bytes", "16777216"),
        ],
    )
    .create()?;
    base.subscribe(&[&b.topics.usage_events])?;
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

    // 3. The aggregator from a cold start.
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    if let Ok(c) = std::env::var("USAGE_AGG_CONFIG") {
        cmd.arg("--config").arg(c);
    }
    let envs = [
        (
            "USAGE_AGG__TOPICS__USAGE_EVENTS",
            b.topics.usage_events.clone(),
        ),
        (
            "USAGE_AGG__TOPICS__PRICE_CATALOG",
            b.topics.price_catalog.clone(),
        ),
        ("USAGE_AGG__TOPICS__DEBITS", b.topics.debits.clone()),
        (
            "USAGE_AGG__TOPICS__PRICED_USAGE",
            b.topics.priced_usage.clone(),
        ),
        (
            "USAGE_AGG__TOPICS__DEAD_LETTER",
            b.topics.dead_letter.clone(),
        ),
        ("USAGE_AGG__TOPICS__ALERTS", b.topics.alerts.clone()),
        ("USAGE_AGG__TOPICS__STATE", b.topics.state.clone()),
        ("USAGE_AGG__KAFKA__GROUP_ID", b.kafka.group_id.clone()),
        (
            "USAGE_AGG__KAFKA__SINK_GROUP_ID",
            b.kafka.sink_group_id.clone(),
        ),
        (
            "USAGE_AGG__KAFKA__ALERTS_GROUP_ID",
            b.kafka.alerts_group_id.clone(),
        ),
        (
            "USAGE_AGG__CLICKHOUSE__DATABASE",
            b.clickhouse.database.clone(),
        ),
        ("USAGE_AGG__HTTP__LISTEN", b.http.listen.clone()),
        ("USAGE_AGG__LOG__FILTER", "warn".into()),
    ];
    let log = std::fs::File::create(std::env::temp_dir().join(format!("{tag}.log")))?;
    cmd.args(["run", "--role", &args.role])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut children = Vec::new();
    let mut listens = Vec::new();
    for i in 0..args.instances.max(1) {
        let listen = format!("127.0.0.1:{}", 19464 + i);
        children.push(cmd.env("USAGE_AGG__HTTP__LISTEN", &listen).spawn()?);
        listens.push(listen);
    }
    r.instances = args.instances.max(1);
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let scrape_all = || {
        listens
            .iter()
            .map(|l| scrape(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let stats_all = || {
        pids.iter()
            .map(|p| proc_stats(*p))
            .fold((0.0, 0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1, a.2 + s.2))
    };
    let t0 = Instant::now();
    let mut drained_at = None;
    let mut sink_done_at = None;
    let mut rows = 0.0;
    let mut first_event_at = None;
    let deadline = Duration::from_secs(900);
    while t0.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = scrape_all();
        let consumed = metric(&m, "usage_agg_pipeline_events_consumed_total");
        if consumed > 0.0 && first_event_at.is_none() {
            first_event_at = Some(t0.elapsed());
        }
        if drained_at.is_none() && consumed >= events as f64 {
            drained_at = Some(t0.elapsed());
        }
        rows = metric(&m, "usage_agg_sink_rows_inserted_total");
        let sink_lag = metric(&m, "usage_agg_sink_lag_messages");
        if drained_at.is_some() && sink_done_at.is_none() && rows > 0.0 && sink_lag == 0.0 {
            sink_done_at = Some(t0.elapsed());
        }
        if drained_at.is_some() && args.role == "pipeline" {
            sink_done_at = drained_at;
        }
        if drained_at.is_some() && sink_done_at.is_some() {
            break;
        }
    }
    let (rss_now, peak, cpu) = stats_all();
    let drained = drained_at
        .ok_or_else(|| anyhow::anyhow!("the aggregator did not drain within {deadline:?}"))?;
    let start = first_event_at.unwrap_or_default();
    r.time_to_drain_s = drained.as_secs_f64();
    r.aggregator_events_per_s = events as f64 / (drained - start).as_secs_f64().max(1e-3);
    r.ratio_to_baseline = r.aggregator_events_per_s / r.baseline_consumer_events_per_s;
    r.peak_rss_mib = peak;
    r.cpu_s_per_million_events = cpu / (events as f64 / 1e6);
    r.clickhouse_rows = rows as u64;
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

    // 4. Live phase at half the max rate: debit latency after execution_finished.
    r.live_rate_events_per_s = args
        .live_rate
        .unwrap_or((r.aggregator_events_per_s / 2.0).min(r.preload_events_per_s / 2.0));
    r.rss_at_live_start_mib = rss_now;
    let spec = crate::loadgen::WorkloadSpec {
        executions: u64::MAX / 4,
        direct_calls: 0,
        duplicates: 0.0,
        bad: 0.0,
        late: 0.0,
        run_id: format!("{tag}-live"),
        ..Default::default()
    };
    let live = Instant::now();
    let mut sent = 0u64;
    let mut finishes: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    let (obs_tx, mut latencies) = (
        crate::kafka::client_config(
            &b,
            &[
                ("group.id", &format!("{tag}-observer")),
                ("auto.offset.reset", "latest"),
                ("fetch.wait.max.ms", "5"),
                ("enable.auto.commit", "false"),
            ],
        )
        .create::<BaseConsumer>()?,
        Vec::new(),
    );
    obs_tx.subscribe(&[&b.topics.debits])?;
    // Let the observer join before sending.
    let join = Instant::now();
    while obs_tx.assignment().map(|a| a.count()).unwrap_or(0) == 0
        && join.elapsed() < Duration::from_secs(20)
    {
        obs_tx.poll(Duration::from_millis(100));
    }
    for g in crate::loadgen::Workload::new(spec, &catalog) {
        if live.elapsed() >= Duration::from_secs(args.live_seconds) {
            break;
        }
        loader.send(&b.topics.usage_events, &g.key, &g.payload)?;
        if let Some(x) = g.finish_of {
            finishes.insert(x, Instant::now());
        }
        sent += 1;
        let due = Duration::from_secs_f64(sent as f64 / r.live_rate_events_per_s);
        if let Some(w) = due.checked_sub(live.elapsed())
            && w > Duration::from_millis(1)
        {
            // Poll the observer while pacing.
            let until = Instant::now() + w;
            while Instant::now() < until {
                observe(
                    &obs_tx,
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
            &obs_tx,
            &mut finishes,
            &mut latencies,
            Duration::from_millis(50),
        );
    }
    r.live_events = sent;
    let (rss_end, _, _) = stats_all();
    r.rss_at_live_end_mib = rss_end;
    latencies.sort_by(|a: &f64, b| a.total_cmp(b));
    r.debit_latency_samples = latencies.len();
    r.debit_latency_p50_ms = percentile(&latencies, 0.50);
    r.debit_latency_p99_ms = percentile(&latencies, 0.99);
    println!(
        "live phase: {sent} events at {:.0} events/s for {} s; debit latency after execution_finished p50 {:.1} ms, p99 {:.1} ms ({} samples, {} open at end of observation); RSS {:.0} -> {:.0} MiB",
        r.live_rate_events_per_s,
        args.live_seconds,
        r.debit_latency_p50_ms,
        r.debit_latency_p99_ms,
        latencies.len(),
        finishes.len(),
        rss_now,
        rss_end
    );
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::task::spawn_blocking(move || {
        for mut c in children {
            let _ = c.wait();
        }
    })
    .await;
    std::fs::write(&args.output, serde_json::to_vec_pretty(&r)?)?;
    println!("figures written to {}", args.output.display());
    fn observe(
        c: &BaseConsumer,
        finishes: &mut std::collections::HashMap<String, Instant>,
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
    Ok(())
}
