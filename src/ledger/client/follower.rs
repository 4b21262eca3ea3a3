//! Answers back to the caller: a reader of a results topic (`ledger_results`,
//! `voucher_results`; `read_committed`, so only answers the stage committed) positioned at
//! its end, handing each answer to whoever waits for its request id. Register with
//! [`Follower::wait_for`] *before* sending the request.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{ClientError, send_command, send_grant, send_voucher_request};
use crate::config::Config;
use crate::kafka;
use crate::kafka::acked::AckedProducer;
use crate::ledger::answer::LedgerAnswer;
use crate::ledger::command::Request;
use crate::ledger::grant::Grant;
use crate::ledger::voucher::{VoucherRequest, VoucherResult};

/// An answer on a results topic, found by its request id.
pub trait Answer: DeserializeOwned + Send + 'static {
    /// The results topic.
    fn topic(cfg: &Config) -> &str;
    fn request_id(&self) -> Option<&str>;
}

impl Answer for VoucherResult {
    fn topic(cfg: &Config) -> &str {
        &cfg.topics.voucher_results
    }
    fn request_id(&self) -> Option<&str> {
        Some(&self.request_id)
    }
}

impl Answer for LedgerAnswer {
    fn topic(cfg: &Config) -> &str {
        &cfg.topics.ledger_results
    }
    fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

type Waiters<A> = Mutex<HashMap<String, tokio::sync::oneshot::Sender<A>>>;

/// Follows a results topic from its end until dropped.
pub struct Follower<A: Answer> {
    waiters: Arc<Waiters<A>>,
    /// Cancelled when dropped: the follower thread ends.
    stop: CancellationToken,
    _answer: PhantomData<A>,
}

/// The voucher stage's results.
pub type ResultFollower = Follower<VoucherResult>;
/// The ledger's answers.
pub type LedgerFollower = Follower<LedgerAnswer>;

impl<A: Answer> Follower<A> {
    /// Positions a reader at the current end of every partition (returns once it is,
    /// retrying for up to 30 s while partition leaders are not known yet) and follows in a
    /// thread until dropped. Blocking.
    pub fn start(cfg: &Config) -> Result<Self, ClientError> {
        let mut rc = kafka::reader_config(cfg);
        rc.set("isolation.level", "read_committed");
        let reader: BaseConsumer = rc.create()?;
        let topic = A::topic(cfg).to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let tpl = loop {
            match end_offsets(&reader, &topic) {
                Ok(tpl) => break tpl,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, topic, "results not readable yet; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        };
        reader.assign(&tpl)?;
        let waiters: Arc<Waiters<A>> = Arc::default();
        let stop = CancellationToken::new();
        let (w, s) = (waiters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("results-follower".into())
            .spawn(move || {
                while !s.is_cancelled() {
                    let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let Ok(r) = serde_json::from_slice::<A>(m.payload().unwrap_or_default()) else {
                        continue;
                    };
                    let Some(id) = r.request_id() else {
                        continue;
                    };
                    let tx = w.lock().expect("waiters").remove(id);
                    if let Some(tx) = tx {
                        let _ = tx.send(r);
                    }
                }
            })
            .map_err(|e| ClientError::Other(e.to_string()))?;
        Ok(Follower {
            waiters,
            stop,
            _answer: PhantomData,
        })
    }

    /// Registers interest in a request's answer.
    pub fn wait_for(&self, request_id: &str) -> tokio::sync::oneshot::Receiver<A> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .insert(request_id.to_string(), tx);
        rx
    }

    /// Waits up to `timeout` on `rx` (from [`Follower::wait_for`]).
    pub async fn wait(
        &self,
        rx: tokio::sync::oneshot::Receiver<A>,
        request_id: &str,
        timeout: Duration,
    ) -> Result<A, ClientError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            _ => {
                self.waiters.lock().expect("waiters").remove(request_id);
                Err(ClientError::Timeout(timeout, request_id.to_string()))
            }
        }
    }
}

impl Follower<VoucherResult> {
    /// Sends `req` and waits up to `timeout` for its result.
    pub async fn request(
        &self,
        cfg: &Config,
        p: &AckedProducer,
        req: &VoucherRequest,
        timeout: Duration,
    ) -> Result<VoucherResult, ClientError> {
        let rx = self.wait_for(req.request_id());
        send_voucher_request(cfg, p, req).await?;
        self.wait(rx, req.request_id(), timeout).await
    }
}

impl Follower<LedgerAnswer> {
    /// Sends grant `g` (it must carry a request id) and waits up to `timeout` for the
    /// ledger's verdict.
    pub async fn grant(
        &self,
        cfg: &Config,
        p: &AckedProducer,
        g: &Grant,
        timeout: Duration,
    ) -> Result<LedgerAnswer, ClientError> {
        let id = g.request_id.clone().ok_or_else(|| {
            ClientError::Other("a grant sent for an answer needs a request_id".into())
        })?;
        let rx = self.wait_for(&id);
        send_grant(cfg, p, g).await?;
        self.wait(rx, &id, timeout).await
    }

    /// Sends a command and waits up to `timeout` for the ledger's answer.
    pub async fn command(
        &self,
        cfg: &Config,
        p: &AckedProducer,
        req: &Request,
        timeout: Duration,
    ) -> Result<LedgerAnswer, ClientError> {
        let id = req.request_id().unwrap_or_default().to_string();
        let rx = self.wait_for(&id);
        send_command(cfg, p, req).await?;
        self.wait(rx, &id, timeout).await
    }
}

impl<A: Answer> Drop for Follower<A> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The current end (last stable offset) of every partition of `topic`.
fn end_offsets(reader: &BaseConsumer, topic: &str) -> Result<TopicPartitionList, ClientError> {
    let md = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md
        .topics()
        .first()
        .map(|t| t.partitions())
        .unwrap_or_default()
    {
        let (_, high) = crate::kafka::watermarks(reader, topic, p.id(), Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
    }
    if tpl.count() == 0 {
        return Err(ClientError::Other(format!(
            "topic {topic} does not exist; run `usage-aggregator setup`"
        )));
    }
    Ok(tpl)
}
