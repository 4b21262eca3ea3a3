//! Keeps an [`AlertsView`] current from Kafka: one blocking thread per alerts topic
//! (`credit_alerts`, `alerts`; `read_committed`), each from the last
//! `http.ledger_view_replay` messages of each partition, followed for good. Loaded once both
//! topics were read to their end: then the view is at most one commit interval of the stage
//! that writes them (plus one fetch) behind, whether ClickHouse is up or not.

use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::DateTime;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{AlertRow, AlertsView, KEEP};
use crate::alerts::SpendAlert;
use crate::config::Config;
use crate::kafka::{self, Reader, ReaderContext};
use crate::ledger::entry::CreditAlert;

/// Which alerts topic a follower reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Credit,
    Spend,
}

/// The view, shared between its two followers and the HTTP handlers.
#[derive(Debug)]
pub struct SharedAlertsView {
    pub view: RwLock<AlertsView>,
    credit_loaded: AtomicBool,
    spend_loaded: AtomicBool,
}

impl Default for SharedAlertsView {
    fn default() -> Self {
        SharedAlertsView {
            view: RwLock::new(AlertsView::new(KEEP)),
            credit_loaded: AtomicBool::new(false),
            spend_loaded: AtomicBool::new(false),
        }
    }
}

impl SharedAlertsView {
    fn flag(&self, source: Source) -> &AtomicBool {
        match source {
            Source::Credit => &self.credit_loaded,
            Source::Spend => &self.spend_loaded,
        }
    }

    /// Both topics were read to their end once.
    pub fn is_loaded(&self) -> bool {
        self.credit_loaded.load(Ordering::Relaxed) && self.spend_loaded.load(Ordering::Relaxed)
    }

    /// Follows one alerts topic until `stop` (blocking); see the module doc.
    pub fn follow(
        &self,
        cfg: &Config,
        source: Source,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let topic = match source {
            Source::Credit => &cfg.topics.credit_alerts,
            Source::Spend => &cfg.topics.alerts,
        };
        let reader: Reader = {
            let mut rc = kafka::reader_config(cfg);
            rc.set("fetch.wait.max.ms", "100");
            rc.create_with_context(ReaderContext)?
        };
        let Some(parts) = kafka::wait_for_partitions(&reader, topic, stop, || {}) else {
            return Ok(());
        };
        let replay = i64::try_from(cfg.http.ledger_view_replay).unwrap_or(i64::MAX);
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            let (low, high) =
                crate::kafka::watermarks(&reader, topic, *p, Duration::from_secs(10))?;
            tpl.add_partition_offset(
                topic,
                *p,
                Offset::Offset(high.saturating_sub(replay).max(low)),
            )?;
        }
        reader.assign(&tpl)?;
        let mut at_end = HashSet::new();
        while !stop.is_cancelled() {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let payload = m.payload().unwrap_or_default();
                    let row = match source {
                        Source::Credit => serde_json::from_slice::<CreditAlert>(payload)
                            .ok()
                            .map(|a| (a.account_id.clone(), AlertRow::from_credit(&a))),
                        Source::Spend => {
                            serde_json::from_slice::<SpendAlert>(payload).ok().map(|a| {
                                let at = m
                                    .timestamp()
                                    .to_millis()
                                    .and_then(DateTime::from_timestamp_millis);
                                (a.account_id.clone(), AlertRow::from_spend(&a, at))
                            })
                        }
                    };
                    match row {
                        Some((account, row)) => {
                            self.view.write().expect("alerts lock").add(&account, row)
                        }
                        None => tracing::warn!(
                            topic,
                            partition = m.partition(),
                            offset = m.offset(),
                            "alert not understood; skipped by the alerts view"
                        ),
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    if parts.iter().all(|p| at_end.contains(p)) {
                        self.flag(source).store(true, Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, topic, "alerts read"),
                None => {}
            }
        }
        Ok(())
    }
}
