//! Wiring: the whole topology of `run` in one place. Catalog feed -> rating pipeline (thread)
//! -> output topics; ClickHouse sink (task) and spend alerts (thread) read those topics;
//! the HTTP server reports on all of them. One shutdown path: SIGTERM/SIGINT stops intake,
//! each stage drains within `pipeline.drain_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::catalog_feed::{self, CatalogFeed};
use crate::config::Config;
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::metrics::METRICS;
use crate::pipeline::Pipeline;
use crate::sink::{self, Sink};

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Pipeline, sink and alerts.
    All,
    /// Rating pipeline and alerts only.
    Pipeline,
    /// ClickHouse sink only.
    Sink,
    /// Credits ledger and voucher stages only (docs/credits.md).
    Ledger,
}

/// Runs until SIGTERM/SIGINT (or a fatal stage error).
pub async fn run(cfg: Config, role: Role) -> anyhow::Result<()> {
    crate::metrics::init_labels();
    let health = Arc::new(Health::default());
    let stop = Arc::new(AtomicBool::new(false));
    let token = CancellationToken::new();
    let engine = Arc::new(OnceLock::new());
    let with_pipeline = matches!(role, Role::All | Role::Pipeline);
    let with_sink = matches!(role, Role::All | Role::Sink);
    // The credits ledger needs Kafka transactions: `all` leaves it out when the pipeline runs
    // without them (a broker that lacks them); `--role ledger` always runs it.
    let with_ledger = role == Role::Ledger
        || (role == Role::All && cfg.pipeline.delivery == crate::config::Delivery::ExactlyOnce);
    if role == Role::All && !with_ledger {
        tracing::warn!(
            "pipeline.delivery = at_least_once: the credits ledger (it needs Kafka transactions) is not started"
        );
    }

    let listener = crate::preflight::bind_http(&cfg)?;
    crate::preflight::announce(&cfg, &format!("{role:?}").to_lowercase());
    let ch = sink::client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database);
    let ledger_api = {
        let (c, ch) = (cfg.clone(), ch.clone());
        let api = tokio::task::spawn_blocking(move || crate::ledger::api::LedgerApi::new(&c, ch));
        Some(Arc::new(api.await??))
    };
    let http_state = HttpState {
        health: health.clone(),
        engine: engine.clone(),
        clickhouse: Some(ch),
        stall_after: cfg.http.stall_after,
        ledger: ledger_api,
    };
    let http_task = {
        let t = token.clone();
        tokio::spawn(async move { http::serve(listener, http_state, t).await })
    };

    {
        let (stop, token) = (stop.clone(), token.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested; draining");
            stop.store(true, Ordering::Relaxed);
            token.cancel();
        });
    }
    if !crate::preflight::wait_for_kafka(&cfg, &token).await {
        return Ok(());
    }
    if with_sink {
        tokio::spawn(crate::preflight::report_clickhouse(cfg.clone()));
    }

    let mut threads: Vec<(&'static str, std::thread::JoinHandle<anyhow::Result<()>>)> = Vec::new();
    if with_pipeline {
        health.pipeline_enabled.store(true, Ordering::Relaxed);
        let (c, s, h) = (cfg.clone(), stop.clone(), health.clone());
        threads.push((
            "kafka-probe",
            std::thread::Builder::new()
                .name("kafka-probe".into())
                .spawn(move || kafka_probe(&c, &s, &h))?,
        ));
        let catalog = start_catalog(&cfg, &health, &stop, &mut threads).await?;
        let pipeline = {
            let (cfg, h) = (cfg.clone(), health.clone());
            tokio::task::spawn_blocking(move || Pipeline::new(&cfg, catalog, h)).await??
        };
        let _ = engine.set(pipeline.handle());
        let s = stop.clone();
        let t = token.clone();
        threads.push(("pipeline", std::thread::Builder::new().name("pipeline".into()).spawn(move || {
            let r = pipeline.run(s);
            if let Err(e) = &r {
                tracing::error!(error = %e, "rating pipeline stopped; restart resumes from the last snapshot");
            }
            t.cancel();
            r.map_err(anyhow::Error::from)
        })?));
        let (c, s) = (cfg.clone(), stop.clone());
        threads.push((
            "alerts",
            std::thread::Builder::new()
                .name("alerts".into())
                .spawn(move || crate::alerts::run(&c, s))?,
        ));
    }
    if with_ledger {
        // Credits ledger and vouchers: each a transactional stage in its own thread; a
        // failure stops the process (a restart restores from the changelogs).
        for (name, run) in [
            (
                "ledger",
                crate::ledger::run_ledger as fn(&Config, &AtomicBool) -> _,
            ),
            ("vouchers", crate::ledger::run_vouchers),
        ] {
            let (c, s, t) = (cfg.clone(), stop.clone(), token.clone());
            threads.push((name, std::thread::Builder::new().name(name.into()).spawn(move || {
                let r = run(&c, &s);
                if let Err(e) = &r {
                    tracing::error!(stage = name, error = %e, "ledger stage stopped; a restart resumes from its changelog");
                }
                t.cancel();
                r.map_err(anyhow::Error::from)
            })?));
        }
    }
    let sink_task = if with_sink {
        let sink = Sink::new(&cfg, health.clone())?;
        let t = token.clone();
        Some(tokio::spawn(async move {
            let r = sink.run(t.clone()).await;
            if r.is_err() {
                t.cancel();
            }
            r
        }))
    } else {
        None
    };

    token.cancelled().await;
    stop.store(true, Ordering::Relaxed);
    let mut result = Ok(());
    for (name, t) in threads {
        let r = tokio::task::spawn_blocking(move || t.join()).await?;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e.context(format!("{name} failed"))),
            Err(_) => result = Err(anyhow::anyhow!("{name} panicked")),
        }
    }
    if let Some(t) = sink_task {
        match tokio::time::timeout(cfg.pipeline.drain_timeout, t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => result = Err(e.context("sink failed")),
            Ok(Err(e)) => result = Err(anyhow::anyhow!("sink panicked: {e}")),
            Err(_) => {
                tracing::warn!("sink did not drain in time; unflushed rows are re-read on restart")
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    result
}

/// Loads the catalog (bootstrapping an empty topic from the configured file), waits until it
/// has at least one version, and follows it in a thread.
async fn start_catalog(
    cfg: &Config,
    health: &Arc<Health>,
    stop: &Arc<AtomicBool>,
    threads: &mut Vec<(&'static str, std::thread::JoinHandle<anyhow::Result<()>>)>,
) -> anyhow::Result<crate::catalog::CatalogHandle> {
    let (feed, handle) = CatalogFeed::new(cfg)?;
    let feed = Arc::new(feed);
    let load = |f: Arc<CatalogFeed>| {
        tokio::task::spawn_blocking(move || f.load_initial(Duration::from_secs(15)))
    };
    let mut n = load(feed.clone()).await??;
    let file = &cfg.pricing.catalog_file;
    if n == 0 && !file.as_os_str().is_empty() && !file.exists() {
        tracing::error!(topic = %cfg.topics.price_catalog, "the catalog topic is empty and pricing.catalog_file = \"{}\" does not exist, so it cannot be seeded", file.display());
    }
    if n == 0 && !file.as_os_str().is_empty() && file.exists() {
        let bytes = std::fs::read(&cfg.pricing.catalog_file)?;
        let file = Catalog::from_json(&bytes).with_context(|| {
            format!(
                "pricing.catalog_file {}",
                cfg.pricing.catalog_file.display()
            )
        })?;
        let versions: Vec<_> = file.versions().cloned().collect();
        let sent = catalog_feed::publish(cfg, &versions).await?;
        tracing::info!(versions = sent, file = %cfg.pricing.catalog_file.display(), "catalog topic was empty; published the bootstrap file");
        n = load(feed.clone()).await??;
    }
    while n == 0 {
        tracing::error!(topic = %cfg.topics.price_catalog, "price catalog is empty; nothing is billed until a catalog is published (usage-aggregator catalog publish FILE)");
        if stop.load(Ordering::Relaxed) {
            anyhow::bail!("stopped while waiting for a price catalog");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        n = load(feed.clone()).await??;
    }
    health.catalog_ok.store(true, Ordering::Relaxed);
    METRICS.catalog_versions.set(n as i64);
    tracing::info!(versions = n, "price catalog loaded");
    let s = stop.clone();
    let feed = Arc::into_inner(feed).expect("no other catalog feed users");
    threads.push((
        "catalog",
        std::thread::Builder::new()
            .name("catalog".into())
            .spawn(move || {
                feed.follow(s);
                Ok(())
            })?,
    ));
    Ok(handle)
}

/// Asks the brokers for metadata every 2 s; readiness fails when they do not answer.
fn kafka_probe(cfg: &Config, stop: &AtomicBool, health: &Health) -> anyhow::Result<()> {
    use rdkafka::consumer::Consumer;
    let mut c = crate::kafka::reader_config(cfg);
    c.set("socket.timeout.ms", "3000");
    let probe: crate::kafka::Reader = c.create_with_context(crate::kafka::ReaderContext)?;
    while !stop.load(Ordering::Relaxed) {
        let ok = probe
            .fetch_metadata(Some(&cfg.topics.usage_events), Duration::from_secs(3))
            .is_ok();
        if ok != health.kafka_ok.swap(ok, Ordering::Relaxed) {
            if ok {
                tracing::info!("kafka reachable");
            } else {
                tracing::warn!(
                    "kafka.brokers = \"{}\" does not answer metadata requests; retrying",
                    cfg.kafka.brokers
                );
            }
        }
        for _ in 0..20 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
