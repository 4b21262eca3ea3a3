//! Wiring: the whole topology of `run` on one screen. Catalog and plans feeds -> rating pipeline
//! (thread) -> output topics; ClickHouse sink (thread), spend alerts (thread) and the credits
//! ledger and vouchers (threads) read those topics; the HTTP server reports on all of them. One shutdown token: SIGTERM/SIGINT, or any
//! stage ending on its own, cancels it; each stage then drains within `pipeline.drain_timeout`.

pub mod catalog;
pub mod kafka_probe;
pub mod stages;
pub mod watchdog;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::http::{self, HttpState};
use crate::ledger::view::follow::SharedLedgerView;
use crate::pipeline::Pipeline;
use crate::sink;
use stages::Stages;

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

/// Creates the labelled series of every stage (core, sink, ledger), so dashboards and alert
/// rules see zeros instead of missing series. The sink's lag series carry the configured
/// (prefixed) topic names.
pub fn init_labels(cfg: &Config) {
    crate::metrics::init_labels();
    crate::sink::init_labels(&cfg.topics);
    crate::ledger::init_labels();
    crate::http::init_labels();
}

/// Runs until SIGTERM/SIGINT (or a stage fails).
pub async fn run(cfg: Config, role: Role) -> anyhow::Result<()> {
    init_labels(&cfg);
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    // Leaving early (a start-up error) stops whatever already started.
    let _stop_on_exit = shutdown.clone().drop_guard();
    let mut stages = Stages::new(shutdown.clone());
    let engine = Arc::new(OnceLock::new());
    let with_pipeline = matches!(role, Role::All | Role::Pipeline);
    let with_sink = matches!(role, Role::All | Role::Sink);
    let with_ledger = matches!(role, Role::All | Role::Ledger);

    let listener = crate::preflight::bind_http(&cfg)?;
    crate::preflight::announce(&cfg, &format!("{role:?}").to_lowercase());
    let ch = sink::client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database);
    let (c, ch_api) = (cfg.clone(), ch.clone());
    let view = Arc::new(SharedLedgerView::new(cfg.http.recent_entries));
    let v = view.clone();
    let ledger_api =
        tokio::task::spawn_blocking(move || crate::http::accounts::LedgerApi::new(&c, ch_api, v));
    let traces = Arc::new(http::traces::TracesApi::new(
        &cfg,
        ch.clone(),
        engine.clone(),
        shutdown.clone(),
    ));
    let keys = Arc::new(crate::keys::store::KeyStore::default());
    let ledger_api = Arc::new(ledger_api.await??);
    let alerts_view = ledger_api.alerts.clone();
    let voucher_list = ledger_api.voucher_list.clone();
    let http_state = HttpState {
        health: health.clone(),
        engine: engine.clone(),
        clickhouse: Some(ch),
        stall_after: cfg.http.stall_after,
        ledger: Some(ledger_api),
        traces: Some(traces.clone()),
        auth: Arc::new(crate::http::auth::Auth::from_config(&cfg, keys.clone())?),
    };
    let http = tokio::spawn(http::serve(listener, http_state, shutdown.clone()));
    tokio::spawn(stages::cancel_on_signal(shutdown.clone()));
    if !crate::preflight::wait_for_kafka(&cfg, &shutdown, &health).await {
        return Ok(());
    }
    if with_sink {
        tokio::spawn(crate::preflight::report_clickhouse(cfg.clone()));
    }
    if cfg.traces.follow_on_start {
        // Failing here (say the topics are not set up yet) is retried on first use.
        let follower = traces.follower.clone();
        tokio::spawn(async move {
            if let Err(e) = follower.ensure_started().await {
                tracing::warn!(error = %e, "the output follower did not start; retried on the first trace or stream");
            }
        });
    }
    // Every instance knows every API key (the compacted api_keys topic) and every balance
    // (the ledger's changelog and balances topic): the API answers without ClickHouse.
    let c = cfg.clone();
    stages.thread("api-keys", move |stop| keys.follow(&c, &stop))?;
    let c = cfg.clone();
    stages.thread("ledger-view", move |stop| view.follow(&c, &stop))?;
    // Each account's recent alerts, both kinds, for the API (no ClickHouse either).
    use crate::alerts::view::follow::Source;
    for (name, source) in [
        ("credit-alerts-view", Source::Credit),
        ("spend-alerts-view", Source::Spend),
    ] {
        let (c, a) = (cfg.clone(), alerts_view.clone());
        stages.thread(name, move |stop| a.follow(&c, source, &stop))?;
    }
    let c = cfg.clone();
    stages.thread("voucher-list", move |stop| voucher_list.follow(&c, &stop))?;

    if with_pipeline {
        health.pipeline_enabled.store(true, Ordering::Relaxed);
        let (c, h) = (cfg.clone(), health.clone());
        stages.thread("kafka-probe", move |stop| kafka_probe::run(&c, &h, &stop))?;
        let Some((prices, feed)) = catalog::load(&cfg, &health, &shutdown).await? else {
            // Stopped while waiting for a catalog: the stages so far drain as on any stop.
            return stages
                .join(cfg.pipeline.drain_timeout, stop_within(&cfg))
                .await;
        };
        stages.thread("catalog", move |stop| {
            feed.follow(&stop);
            Ok(())
        })?;
        let (plans, plans_feed) = catalog::load_plans(&cfg).await?;
        stages.thread("plans", move |stop| {
            plans_feed.follow(&stop);
            Ok(())
        })?;
        let pricing = crate::rating::PricingHandle {
            catalog: prices,
            plans,
        };
        let (c, h) = (cfg.clone(), health.clone());
        let pipeline = tokio::task::spawn_blocking(move || Pipeline::new(&c, pricing, h)).await??;
        let _ = engine.set(pipeline.handle());
        stages.thread("pipeline", move |stop| Ok(pipeline.run(stop)?))?;
        let (c, h) = (cfg.clone(), health.clone());
        stages.thread("alerts", move |stop| {
            crate::alerts::run_with(&c, Some(h), &stop)
        })?;
    }
    if with_ledger {
        // Each a transactional stage; a restart restores from its changelog.
        let (c, h) = (cfg.clone(), health.clone());
        stages.thread("ledger", move |stop| {
            Ok(crate::ledger::run_ledger(&c, Some(h), &stop)?)
        })?;
        let (c, h) = (cfg.clone(), health.clone());
        stages.thread("vouchers", move |stop| {
            Ok(crate::ledger::run_vouchers(&c, Some(h), &stop)?)
        })?;
    }
    if with_sink {
        let (c, h, rt) = (
            cfg.clone(),
            health.clone(),
            tokio::runtime::Handle::current(),
        );
        stages.thread("sink", move |stop| sink::run(&c, h, rt, &stop))?;
    }

    let h = health.clone();
    let after = cfg.pipeline.stall_exit_after;
    stages.task("watchdog", move |stop| watchdog::run(h, after, stop));

    shutdown.cancelled().await;
    // A stage the watchdog found stuck (e.g. blocked in a transaction call) will not return:
    // the others get the drain deadline, not the stuck one's commit and abort deadlines too.
    let within = match health.stalled(cfg.pipeline.stall_exit_after) {
        Some(_) => cfg.pipeline.drain_timeout,
        None => stop_within(&cfg),
    };
    let result = stages.join(cfg.pipeline.drain_timeout, within).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    result
}

/// How long the stage threads have, in all, to stop after shutdown: a drain, then a commit
/// and an abort of the open transaction, each bounded by `pipeline.transaction_timeout`.
fn stop_within(cfg: &Config) -> Duration {
    cfg.pipeline.drain_timeout + cfg.pipeline.transaction_timeout * 3
}
