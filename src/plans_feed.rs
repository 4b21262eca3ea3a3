//! Plans feed: plan versions and account assignments from the compacted plans topic in (read
//! fully at start, then followed live), a whole new [`PlanBook`] swapped into the shared
//! handle out, beside the catalog's. Also publishes plans records (`plans publish`,
//! `accounts assign-plan`).

use crate::config::Config;
use crate::feed::{FeedState, TopicFeed};
use crate::metrics::METRICS;
use crate::plans::{PlanBook, PlansHandle, PlansRecord};

/// Publishes records in the order given (plans before the assignments that name them: the
/// topic has one partition, so the feed applies them in that order); returns how many.
pub async fn publish(cfg: &Config, records: &[PlansRecord]) -> anyhow::Result<usize> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        out.push((r.topic_key(), serde_json::to_vec(r)?));
    }
    crate::feed::publish(cfg, &cfg.topics.plans, &out).await
}

impl FeedState for PlanBook {
    const WHAT: &'static str = "plans record";

    fn apply(&mut self, payload: &[u8]) -> Result<bool, String> {
        let r: PlansRecord = serde_json::from_slice(payload)
            .map_err(|e| format!("plans message is not a plan version or an assignment: {e}"))?;
        PlanBook::apply(self, r).map_err(|e| e.to_string())
    }

    fn touch(&mut self, now: chrono::DateTime<chrono::Utc>) {
        self.updated_at = Some(now);
    }

    fn updated_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.updated_at
    }

    fn count(&self) -> usize {
        self.record_count()
    }

    fn on_update(&self) {
        METRICS.plans_records.set(self.record_count() as i64);
        METRICS.plans_updates.inc();
    }

    fn on_refused() {
        METRICS.plans_rejected.inc();
    }
}

/// Follows the plans topic in a thread, applying records to its handle.
pub type PlansFeed = TopicFeed<PlanBook>;

impl TopicFeed<PlanBook> {
    /// The feed of `topics.plans` and the handle it keeps current.
    pub fn plans(cfg: &Config) -> anyhow::Result<(PlansFeed, PlansHandle)> {
        TopicFeed::open(cfg, &cfg.topics.plans, "plans")
    }
}
