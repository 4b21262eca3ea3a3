//! Every voucher as operators list it (`GET /v1/vouchers`), held in memory: the vouchers
//! stage's compacted changelog (`topics.voucher_state`) read from its beginning at start and
//! followed for good (blocking thread, `read_committed`), one [`VoucherView`] per voucher (no
//! code, no redemption list: its size does not grow with redemptions, about 0.5 KB per
//! voucher). A list first waits until the view has read what was committed before the
//! request ([`SharedVoucherList::sync`]), so a voucher just created or revoked is in it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{VoucherState, VoucherView};
use crate::config::Config;
use crate::kafka::{self, Reader, ReaderContext};

#[derive(Debug, Default)]
struct Inner {
    vouchers: HashMap<Vec<u8>, VoucherView>,
    /// Next offset to read per partition (past the transactions' control records once idle).
    positions: HashMap<i32, i64>,
    partitions: Vec<i32>,
    loaded: bool,
}

/// The vouchers, shared between their follower (one writer) and the HTTP handlers.
#[derive(Default)]
pub struct SharedVoucherList {
    inner: Mutex<Inner>,
    /// A reader for the high watermarks of [`Self::sync`] (made on first use).
    watermarks: Mutex<Option<Reader>>,
}

impl SharedVoucherList {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("voucher list lock")
    }

    /// The changelog was read to its end once.
    pub fn is_loaded(&self) -> bool {
        self.lock().loaded
    }

    /// Every voucher, the oldest first (`valid_from`, then the masked code).
    pub fn all(&self) -> Vec<VoucherView> {
        let mut v: Vec<VoucherView> = self.lock().vouchers.values().cloned().collect();
        v.sort_by(|a, b| (a.valid_from, &a.voucher, &a.id).cmp(&(b.valid_from, &b.voucher, &b.id)));
        v
    }

    /// Waits (blocking, at most `max`) until the view has read every partition up to its
    /// high watermark of now; false when it has not by then.
    pub fn sync(&self, cfg: &Config, max: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + max;
        let parts = self.lock().partitions.clone();
        let highs: Vec<(i32, i64)> = {
            let mut w = self.watermarks.lock().expect("watermark lock");
            if w.is_none() {
                *w = Some(kafka::reader_config(cfg).create_with_context(ReaderContext)?);
            }
            let r = w.as_ref().expect("made above");
            parts
                .iter()
                .map(|p| {
                    crate::kafka::watermarks(
                        r,
                        &cfg.topics.voucher_state,
                        *p,
                        Duration::from_secs(5),
                    )
                    .map(|(_, high)| (*p, high))
                })
                .collect::<Result<_, _>>()?
        };
        loop {
            let done = {
                let s = self.lock();
                highs
                    .iter()
                    .all(|(p, h)| s.positions.get(p).copied().unwrap_or(0) >= *h)
            };
            if done {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Follows the changelog until `stop` (blocking); see the module doc.
    pub fn follow(&self, cfg: &Config, stop: &CancellationToken) -> anyhow::Result<()> {
        let topic = &cfg.topics.voucher_state;
        let reader: Reader = {
            let mut rc = kafka::reader_config(cfg);
            rc.set("fetch.wait.max.ms", "100");
            rc.create_with_context(ReaderContext)?
        };
        let Some(parts) = kafka::wait_for_partitions(&reader, topic, stop, || {}) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
        reader.assign(&tpl)?;
        self.lock().partitions = parts.clone();
        let mut at_end = std::collections::HashSet::new();
        while !stop.is_cancelled() {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = m.key().unwrap_or_default();
                    let mut s = self.lock();
                    s.positions.insert(m.partition(), m.offset() + 1);
                    if key == crate::stage::OFFSETS_KEY {
                        continue;
                    }
                    match m.payload().map(serde_json::from_slice::<VoucherState>) {
                        Some(Ok(v)) => {
                            s.vouchers.insert(key.to_vec(), VoucherView::from(&v));
                        }
                        None => {
                            s.vouchers.remove(key);
                        }
                        Some(Err(e)) => tracing::warn!(
                            partition = m.partition(),
                            offset = m.offset(),
                            error = %e,
                            "voucher state not understood; left out of the voucher list"
                        ),
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    self.advance(&reader);
                    if parts.iter().all(|p| at_end.contains(p)) {
                        self.lock().loaded = true;
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "voucher state read"),
                // Idle: the positions move past the transactions' control records.
                None => self.advance(&reader),
            }
        }
        Ok(())
    }

    fn advance(&self, reader: &Reader) {
        let Ok(tpl) = reader.position() else {
            return;
        };
        let mut s = self.lock();
        for e in tpl.elements() {
            if let Offset::Offset(o) = e.offset() {
                let at = s.positions.entry(e.partition()).or_insert(0);
                *at = (*at).max(o);
            }
        }
    }
}
