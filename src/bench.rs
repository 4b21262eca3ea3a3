//! End-to-end benchmark: the running services in; figures (printed, and written as JSON)
//! out. Phases ([`phases`]): preload a generated workload into a fresh usage topic, drain it
//! with a plain consumer (baseline) and with Apache Kafka's own `ConsumerPerformance`
//! ([`java_baseline`], skipped when its jars are missing) and with an exactly-once
//! pass-through copier ([`copier`], the limit of a read-process-write job), drain it with the aggregator from a
//! cold start ([`fleet`]), then a live phase at half the measured rate for debit latency.

pub mod copier;
pub mod fleet;
pub mod java_baseline;
pub mod loader;
pub mod phases;
pub mod restore;

pub use loader::Loader;

use crate::catalog::Catalog;
use crate::config::Config;

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
    /// Seconds between samples of the live phase (rate, RSS, CPU, lag, latency); a long
    /// `--live-seconds` with `--live-rate` is the soak test.
    #[arg(long, default_value_t = 30)]
    pub sample_seconds: u64,
    /// `linger.ms` of the live phase's sending client: its finish → debit latency starts at
    /// the send call, so the default is the clients' own default (librdkafka's and, since
    /// Kafka 4.0, the Java producer's), not the preload's 20 ms.
    #[arg(long, default_value_t = 5)]
    pub live_linger_ms: u32,
    /// Aggregator processes sharing the consumer groups (scale-out run).
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// Stages the measured aggregator runs (pipeline alone isolates the sink's share).
    #[arg(long, default_value = "all")]
    pub role: String,
    /// Instead of the other phases: restore time of one partition holding this many open
    /// executions (written, the pipeline stopped and restarted `--restores` times).
    #[arg(long)]
    pub restore_open: Option<u64>,
    /// Restarts measured by `--restore-open`.
    #[arg(long, default_value_t = 3)]
    pub restores: u32,
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
    /// Kafka's own `ConsumerPerformance` (`fetch.nMsg.sec`); `None` when skipped.
    pub java_consumer_events_per_s: Option<f64>,
    /// Why the Kafka `ConsumerPerformance` baseline was skipped, if it was.
    pub java_consumer_skipped: Option<String>,
    /// The exactly-once pass-through copier ([`copier`]); `None` when skipped.
    pub copier_events_per_s: Option<f64>,
    pub copier_cpu_s_per_million_events: Option<f64>,
    pub copier_skipped: Option<String>,
    pub aggregator_events_per_s: f64,
    pub ratio_to_baseline: f64,
    /// Aggregator rate / Kafka `ConsumerPerformance` rate (the headline ratio).
    pub ratio_to_java_consumer: Option<f64>,
    /// Aggregator rate / copier rate (the "≥ 50 % of the copier" target).
    pub ratio_to_copier: Option<f64>,
    /// Aggregator CPU per event / copier CPU per event.
    pub cpu_ratio_to_copier: Option<f64>,
    pub time_to_drain_s: f64,
    /// The pipeline's commits (transactions) during the cold start and their mean duration.
    pub commits_cold: f64,
    pub commit_ms_mean_cold: f64,
    /// The same during the live phase.
    pub commits_live: f64,
    pub commit_ms_mean_live: f64,
    pub peak_rss_mib: f64,
    pub cpu_s_per_million_events: f64,
    pub clickhouse_rows: u64,
    pub clickhouse_rows_per_s: f64,
    /// CPU seconds of the sink's threads (`sink` and `tokio-rt-worker`) from start to caught up.
    pub sink_cpu_s: f64,
    /// Rows inserted per CPU second of the sink's threads (the "rows/s per core" target).
    pub clickhouse_rows_per_sink_cpu_s: f64,
    /// CPU seconds per million events by thread group from start to caught up (stage
    /// threads by name, `sink` + `tokio-rt-worker` = sink, `librdkafka` = every client's threads).
    pub thread_cpu_s_per_million: std::collections::BTreeMap<String, f64>,
    pub live_rate_events_per_s: f64,
    pub live_events: u64,
    pub debit_latency_samples: usize,
    pub debit_latency_p50_ms: f64,
    pub debit_latency_p99_ms: f64,
    pub rss_at_live_start_mib: f64,
    pub rss_at_live_end_mib: f64,
    /// The live phase sampled every `--sample-seconds` (the soak curve).
    pub live_samples: Vec<phases::LiveSample>,
    /// RSS spread after the first minute of the live phase: (max - min) / 2 / median, in
    /// percent (the soak criterion is within ±10 %); `None` with fewer than two samples.
    pub rss_spread_after_warmup_pct: Option<f64>,
    /// `--restore-open`: seconds each restart took to restore the pipeline's partitions.
    pub restore_s: Vec<f64>,
}

/// One bench run's own topics, groups and ClickHouse database (prefixed with `tag`), and the
/// catalog the workload is generated from.
pub struct BenchEnv {
    pub tag: String,
    pub cfg: Config,
    pub catalog: Catalog,
}

impl BenchEnv {
    /// Creates the run's topics and database and publishes the catalog file.
    pub async fn create(cfg: &Config) -> anyhow::Result<BenchEnv> {
        let tag = format!("bench{}", chrono::Utc::now().format("%m%d%H%M%S"));
        let mut b = cfg.clone();
        // Every topic and group of the run is its own, the ledger's too: a shared one would
        // have the run's sink re-read every earlier run's messages (and count their CPU).
        b.prefix_names(&format!("{tag}."));
        b.clickhouse.database = tag.clone();
        b.http.listen = "127.0.0.1:0".into();
        println!("bench {tag}: topics {tag}.*, clickhouse database {tag}");
        crate::kafka::create_topics(&b).await?;
        let ch = crate::sink::client(&b.clickhouse)?;
        crate::sink::migrate::migrate(&ch, &b.clickhouse).await?;
        let catalog = Catalog::from_json(&std::fs::read(&b.pricing.catalog_file)?)?;
        let versions: Vec<_> = catalog.versions().cloned().collect();
        crate::catalog_feed::publish(&b, &versions).await?;
        Ok(BenchEnv {
            tag,
            cfg: b,
            catalog,
        })
    }
}

/// Runs the end-to-end benchmark on the running services.
pub async fn run(cfg: &Config, args: BenchArgs) -> anyhow::Result<()> {
    let env = BenchEnv::create(cfg).await?;
    let mut r = BenchReport::default();
    let loader = Loader::new(&env.cfg)?;
    if let Some(open) = args.restore_open {
        restore::phase(&env, &loader, &args, open, &mut r).await?;
        std::fs::write(&args.output, serde_json::to_vec_pretty(&r)?)?;
        println!("figures written to {}", args.output.display());
        return Ok(());
    }
    let events = phases::preload(&env, &loader, args.events, &mut r)?;
    phases::baseline(&env, events, &mut r)?;
    java_baseline::phase(&env, events, &mut r);
    copier::phase(&env, events, &mut r).await;
    let fleet = fleet::Fleet::start(&env, &args)?;
    let measured = async {
        let rss = phases::cold_start(&fleet, events, args.role == "pipeline", &mut r).await?;
        let live_loader = Loader::with_linger(&env.cfg, args.live_linger_ms)?;
        phases::live(&env, &live_loader, &fleet, &args, rss, &mut r)
    }
    .await;
    fleet.stop().await; // also when a phase failed: no aggregator is left running
    measured?;
    std::fs::write(&args.output, serde_json::to_vec_pretty(&r)?)?;
    println!("figures written to {}", args.output.display());
    Ok(())
}
