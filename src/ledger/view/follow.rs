//! Keeps a [`LedgerView`] current from Kafka (blocking thread, `read_committed`): at start
//! the ledger stage's compacted changelog (`topics.ledger_state`, account records only) to
//! its end, then the `balances` topic from the last `http.ledger_view_replay` events of
//! each partition, followed for good, and the changelog followed on beside it (which
//! thresholds an account is below is in its account records only). Loaded once every balances partition was read to its
//! end: from then on the view is at most one ledger commit interval (plus one fetch) behind
//! the ledger, whether ClickHouse is up or not.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::LedgerView;
use crate::config::Config;
use crate::kafka::{self, Reader, ReaderContext};
use crate::ledger::core::{BalanceEvent, account_record};
use crate::metrics::METRICS;

/// The view, shared between its follower (one writer) and the HTTP handlers.
#[derive(Debug, Default)]
pub struct SharedLedgerView {
    pub view: RwLock<LedgerView>,
    loaded: AtomicBool,
    /// While not loaded: what it waits for.
    waiting: Mutex<Option<String>>,
}

impl SharedLedgerView {
    pub fn new(keep: usize) -> SharedLedgerView {
        SharedLedgerView {
            view: RwLock::new(LedgerView::new(keep)),
            ..Default::default()
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// What the view waits for while it is not loaded, or how big it is.
    pub fn status(&self) -> String {
        if let Some(w) = self.waiting.lock().expect("view lock").clone() {
            return w;
        }
        let v = self.view.read().expect("view lock");
        format!(
            "ledger view of {} accounts, {} entries",
            v.accounts(),
            v.entries()
        )
    }

    fn waiting(&self, why: impl Into<String>) {
        *self.waiting.lock().expect("view lock") = Some(why.into());
    }

    /// Follows Kafka until `stop` (blocking); see the module doc.
    pub fn follow(&self, cfg: &Config, stop: &CancellationToken) -> anyhow::Result<()> {
        let reader: Reader = {
            let mut rc = kafka::reader_config(cfg);
            rc.set("fetch.wait.max.ms", "100");
            rc.create_with_context(ReaderContext)?
        };
        let t = &cfg.topics;
        self.view
            .write()
            .expect("view lock")
            .set_default_thresholds(crate::ledger::rules(cfg).0.thresholds);
        self.waiting(format!("reading {} (the ledger's state)", t.ledger_state));
        let Some(state_parts) = wait_for_topic(&reader, &t.ledger_state, stop, self) else {
            return Ok(());
        };
        let Some(parts) = wait_for_topic(&reader, &t.balances, stop, self) else {
            return Ok(());
        };
        let started = Instant::now();
        let replay = cfg.http.ledger_view_replay;
        // Where each balances partition is read from: the last `replay` events before now.
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            let (low, high) = kafka::watermarks(&reader, &t.balances, *p, Duration::from_secs(10))?;
            let from = high
                .saturating_sub(i64::try_from(replay).unwrap_or(i64::MAX))
                .max(low);
            tpl.add_partition_offset(&t.balances, *p, Offset::Offset(from))?;
        }
        // Account states: every account, however old its last entry.
        let mut state = TopicPartitionList::new();
        for p in &state_parts {
            state.add_partition_offset(&t.ledger_state, *p, Offset::Beginning)?;
        }
        reader.assign(&state)?;
        let mut at_end = HashSet::new();
        let mut accounts = 0u64;
        while at_end.len() < state_parts.len() {
            if stop.is_cancelled() {
                return Ok(());
            }
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if let Some((account, Some(s))) =
                        account_record(m.key().unwrap_or_default(), m.payload())
                    {
                        self.view.write().expect("view lock").restore(&account, &s);
                        accounts += 1;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "ledger state read"),
                None => {}
            }
        }
        self.waiting(format!("reading the last events of {}", t.balances));
        // The changelog is followed on (its own reader, where it stopped): which thresholds
        // an account is below is in its account records only.
        let states = reader;
        let reader: Reader = {
            let mut rc = kafka::reader_config(cfg);
            rc.set("fetch.wait.max.ms", "100");
            rc.create_with_context(ReaderContext)?
        };
        reader.assign(&tpl)?;
        let mut at_end = HashSet::new();
        let mut events = 0u64;
        let mut gauges = Instant::now();
        while !stop.is_cancelled() {
            for _ in 0..1000 {
                match states.poll(Duration::ZERO) {
                    Some(Ok(m)) => {
                        if let Some((account, Some(s))) =
                            account_record(m.key().unwrap_or_default(), m.payload())
                        {
                            self.view
                                .write()
                                .expect("view lock")
                                .set_below(&account, &s);
                        }
                    }
                    Some(Err(_)) => {}
                    None => break,
                }
            }
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    match serde_json::from_slice::<BalanceEvent>(m.payload().unwrap_or_default()) {
                        Ok(e) => {
                            self.view.write().expect("view lock").apply(e);
                            events += 1;
                        }
                        Err(e) => {
                            tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "balance event not understood; skipped by the ledger view")
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    if !self.is_loaded() && parts.iter().all(|p| at_end.contains(p)) {
                        *self.waiting.lock().expect("view lock") = None;
                        self.loaded.store(true, Ordering::Relaxed);
                        tracing::info!(
                            account_records = accounts,
                            events,
                            ms = started.elapsed().as_millis() as u64,
                            "ledger view loaded: {}",
                            self.status()
                        );
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "balances read"),
                None => {}
            }
            if gauges.elapsed() >= Duration::from_secs(5) {
                gauges = Instant::now();
                let v = self.view.read().expect("view lock");
                METRICS.ledger_view_accounts.set(v.accounts() as i64);
                METRICS.ledger_view_entries.set(v.entries() as i64);
            }
        }
        Ok(())
    }
}

/// One account's state read from the ledger's changelog to its end (blocking; `credits
/// balance`): exact and at most one ledger commit behind, without ClickHouse. Reads every
/// partition (the changelog holds the account's records in the partition its debits and
/// grants hash to, and the partitioner is the producers' choice).
pub fn read_account(
    cfg: &Config,
    account: &str,
    timeout: Duration,
) -> anyhow::Result<Option<crate::ledger::core::AccountState>> {
    let reader: Reader = kafka::reader_config(cfg).create_with_context(ReaderContext)?;
    let topic = &cfg.topics.ledger_state;
    let md = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        anyhow::bail!(
            "topic {topic} (topics.ledger_state) does not exist; run `usage-aggregator setup`"
        );
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let key = format!("a/{account}");
    let mut found = None;
    let mut at_end = HashSet::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < parts.len() {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} reading {topic}");
        }
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.key() == Some(key.as_bytes()) => {
                if let Some((_, s)) = account_record(key.as_bytes(), m.payload()) {
                    found = s;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    Ok(found.filter(|s| s.seq > 0))
}

/// The partitions of `topic`, waiting (saying so once) until it exists; None when stopped.
fn wait_for_topic(
    reader: &Reader,
    topic: &str,
    stop: &CancellationToken,
    view: &SharedLedgerView,
) -> Option<Vec<i32>> {
    let mut warned = false;
    kafka::wait_for_partitions(reader, topic, stop, || {
        if !warned {
            let why = format!("topic {topic} does not exist yet; run `usage-aggregator setup`");
            tracing::warn!("ledger view: {why}");
            view.waiting(why);
            warned = true;
        }
    })
}
