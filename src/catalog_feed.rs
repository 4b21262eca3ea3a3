//! Catalog feed: price versions from the compacted catalog topic in (read fully at start,
//! then followed live), a whole new [`Catalog`] swapped into the shared handle out.
//! Also publishes catalog files to the topic (`catalog publish`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogHandle, PriceVersion};
use crate::config::Config;
use crate::kafka;
use crate::metrics::METRICS;

/// Publishes every version of a catalog file; returns how many were sent.
pub async fn publish(cfg: &Config, versions: &[PriceVersion]) -> anyhow::Result<usize> {
    let producer: FutureProducer = kafka::producer_config(cfg).create()?;
    for v in versions {
        v.validate()?;
        let key = v.topic_key();
        let payload = serde_json::to_vec(v)?;
        producer
            .send(
                FutureRecord::to(&cfg.topics.price_catalog)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("cannot publish price version {key}: {e}"))?;
    }
    Ok(versions.len())
}

/// Follows the catalog topic in a thread, applying versions to `handle`.
pub struct CatalogFeed {
    consumer: kafka::Reader,
    handle: CatalogHandle,
    topic: String,
}

impl CatalogFeed {
    pub fn new(cfg: &Config) -> anyhow::Result<(CatalogFeed, CatalogHandle)> {
        let mut c = kafka::reader_config(cfg);
        c.set("group.id", format!("{}-catalog", cfg.kafka.group_id));
        let consumer: kafka::Reader = c.create_with_context(kafka::ReaderContext)?;
        let handle: CatalogHandle = Arc::new(ArcSwap::from_pointee(Catalog::default()));
        Ok((
            CatalogFeed {
                consumer,
                handle: handle.clone(),
                topic: cfg.topics.price_catalog.clone(),
            },
            handle,
        ))
    }

    /// Assigns every partition from the beginning and reads up to the current end (the
    /// end-of-partition event: a compacted topic has offset gaps). Returns the number of
    /// versions loaded.
    pub fn load_initial(&self, timeout: Duration) -> anyhow::Result<usize> {
        let md = self.consumer.fetch_metadata(Some(&self.topic), timeout)?;
        let parts: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut pending = std::collections::HashSet::new();
        for p in &parts {
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)?;
            let (low, high) = kafka::watermarks(&self.consumer, &self.topic, *p, timeout)?;
            if high > low {
                pending.insert(*p);
            }
        }
        self.consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        while !pending.is_empty() && Instant::now() < deadline {
            if let Some(p) = self.poll_once(Duration::from_millis(200), false) {
                pending.remove(&p);
            }
        }
        Ok(self.handle.load().version_count())
    }

    /// Applies at most one message; returns the partition that reached its end, if any.
    /// `following`: after the initial load, each accepted version is logged at INFO.
    fn poll_once(&self, wait: Duration, following: bool) -> Option<i32> {
        match self.consumer.poll(wait) {
            Some(Ok(m)) => {
                let payload = m.payload()?;
                match Catalog::parse_version(payload) {
                    Ok(v) => {
                        let mut next = Catalog::clone(&self.handle.load());
                        // Said per version once following (the start-up load is summed up
                        // in one line by its caller): what an operator publishing expects.
                        let said = following.then(|| accepted_text(&next, &v));
                        match next.insert(v) {
                            Ok(true) => {
                                next.updated_at = Some(chrono::Utc::now());
                                METRICS.catalog_versions.set(next.version_count() as i64);
                                METRICS.catalog_updates.inc();
                                self.handle.store(Arc::new(next));
                                if let Some((key, what)) = said {
                                    tracing::info!(version = %key, offset = m.offset(), "price version accepted: {what}");
                                }
                            }
                            Ok(false) => {}
                            Err(e) => {
                                METRICS.catalog_rejected.inc();
                                tracing::error!(error = %e, offset = m.offset(), "price version refused");
                            }
                        }
                    }
                    Err(e) => {
                        METRICS.catalog_rejected.inc();
                        tracing::error!(error = %e, offset = m.offset(), "catalog message is not a valid price version");
                    }
                }
                None
            }
            Some(Err(KafkaError::PartitionEOF(p))) => Some(p),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "catalog read error");
                None
            }
            None => None,
        }
    }

    /// Follows the topic until `stop` is cancelled. Blocking: call it on its own thread.
    pub fn follow(self, stop: &CancellationToken) {
        while !stop.is_cancelled() {
            self.poll_once(Duration::from_millis(250), true);
            if let Some(t) = self.handle.load().updated_at {
                let age = (chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0;
                METRICS.catalog_age.set(age);
            }
        }
    }
}

/// The topic key of `v` and what accepting it does to `current`: a new version (its prices),
/// or the same version republished with aliases added.
fn accepted_text(current: &Catalog, v: &PriceVersion) -> (String, String) {
    let republished = current
        .lookup(&v.asset_id, v.effective_from)
        .ok()
        .filter(|p| p.effective_from == v.effective_from);
    let what = match republished {
        Some(p) => {
            let added: Vec<&str> = v
                .aliases
                .iter()
                .chain(&v.alias_patterns)
                .filter(|a| !p.spec.aliases.contains(a) && !p.spec.alias_patterns.contains(a))
                .map(String::as_str)
                .collect();
            format!("republished with aliases added: {}", added.join(" "))
        }
        None => format!(
            "{} {} {}",
            v.asset_type.as_str(),
            v.vendor,
            crate::catalog::check::prices_text(v)
        ),
    };
    (v.topic_key(), what)
}
