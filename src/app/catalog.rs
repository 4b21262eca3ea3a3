//! Catalog and plans start-up: the catalog topic (seeded from `pricing.catalog_file` when
//! empty) and the plans topic in; a loaded [`CatalogHandle`] and [`PlansHandle`] and the
//! feeds that keep them current out. Waits while no catalog exists: nothing is ever billed
//! without prices (no plans is fine: every account on `default`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogHandle};
use crate::catalog_feed::{self, CatalogFeed};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::METRICS;
use crate::plans::PlansHandle;
use crate::plans_feed::PlansFeed;

/// Loads the plans topic to its end; returns the handle the pipeline prices with and the
/// feed to follow on its own thread.
pub async fn load_plans(cfg: &Config) -> anyhow::Result<(PlansHandle, PlansFeed)> {
    let (feed, handle) = PlansFeed::plans(cfg)?;
    let feed = Arc::new(feed);
    let f = feed.clone();
    let n = tokio::task::spawn_blocking(move || f.load_initial(Duration::from_secs(15))).await??;
    METRICS.plans_records.set(n as i64);
    tracing::info!(records = n, topic = %cfg.topics.plans, "plans loaded");
    let feed = Arc::into_inner(feed).expect("no other plans feed users");
    Ok((handle, feed))
}

/// How often the wait for a catalog says so again (once at first, then at this period).
const EMPTY_CATALOG_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Loads the catalog (bootstrapping an empty topic from the configured file) and waits until
/// it has at least one version. Returns the handle the pipeline prices with and the feed to
/// follow (on its own thread: [`CatalogFeed::follow`]); `None` when a shutdown was
/// requested during the wait (a requested stop, not a failure).
pub async fn load(
    cfg: &Config,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(CatalogHandle, CatalogFeed)>> {
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
    let waiting_since = std::time::Instant::now();
    let mut said: Option<std::time::Instant> = None;
    while n == 0 {
        if said.is_none_or(|t| t.elapsed() >= EMPTY_CATALOG_LOG_PERIOD) {
            tracing::error!(topic = %cfg.topics.price_catalog, waiting_s = waiting_since.elapsed().as_secs(), "price catalog is empty; nothing is billed until a catalog is published (usage-aggregator catalog publish FILE)");
            said = Some(std::time::Instant::now());
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::info!("stopped while waiting for a price catalog");
                return Ok(None);
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        n = load(feed.clone()).await??;
    }
    health.catalog_ok.store(true, Ordering::Relaxed);
    METRICS.catalog_versions.set(n as i64);
    tracing::info!(versions = n, "price catalog loaded");
    let feed = Arc::into_inner(feed).expect("no other catalog feed users");
    Ok(Some((handle, feed)))
}
