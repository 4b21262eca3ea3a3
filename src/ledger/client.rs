//! Requests and queries of operators and integrations (CLI and HTTP): validated grants and
//! voucher commands out to Kafka (idempotent producer), voucher results back (a follower of
//! `voucher_results`), balances and history from the ClickHouse `ledger` table, voucher
//! definitions from the compacted `voucher_state` changelog.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka;
use crate::ledger::grant::{
    Grant, GrantKind, GrantRules, check_account, check_amount, parse_amount,
};
use crate::ledger::voucher::{VoucherRequest, VoucherResult, VoucherState};
use crate::rejection::{RejectReason, Rejection};

/// Why a request did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Refused before anything was sent; `reason` is the stable code.
    #[error("refused ({}): {}", .0.reason, .0.message)]
    Refused(Rejection),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(
        "no answer from the voucher stage within {0:?}; the request {1} may still be decided (is `run --role ledger` running?)"
    )]
    Timeout(Duration, String),
    #[error("{0}")]
    Other(String),
}

/// A producer for requests: idempotent, acks from all replicas.
pub fn producer(cfg: &Config) -> Result<FutureProducer, KafkaError> {
    let mut c = kafka::client_config(cfg, &[("acks", "all"), ("linger.ms", "0")]);
    for k in [
        "group.instance.id",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "enable.auto.commit",
        "partition.assignment.strategy",
    ] {
        c.remove(k);
    }
    c.set("enable.idempotence", "true");
    c.create()
}

/// Builds and validates a top-up or an adjustment exactly as the ledger will.
pub fn build_grant(
    cfg: &Config,
    kind: GrantKind,
    account_id: &str,
    amount: &str,
    reference: &str,
    reason: Option<&str>,
) -> Result<Grant, Rejection> {
    let (_, rules): (_, GrantRules) = super::rules(cfg);
    check_account(account_id)?;
    if let Some(why) = super::grant::id_problem(reference) {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("reference {why}"),
        ));
    }
    let amount: Decimal = parse_amount(amount.trim())?;
    check_amount(kind, amount, &rules)?;
    if kind == GrantKind::Adjustment && reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(Rejection::new(
            RejectReason::MissingField,
            "an adjustment needs a reason".to_string(),
        ));
    }
    Ok(Grant {
        grant_id: reference.to_string(),
        kind,
        account_id: account_id.to_string(),
        amount,
        occurred_at: chrono::Utc::now(),
        reason: reason.map(str::to_string),
        voucher: None,
    })
}

/// Sends a grant to `credit_grants`, keyed by account (waits for the acknowledgement).
pub async fn send_grant(cfg: &Config, p: &FutureProducer, g: &Grant) -> Result<(), ClientError> {
    let payload = g.encode();
    p.send(
        FutureRecord::to(&cfg.topics.credit_grants)
            .key(&g.account_id)
            .payload(&payload),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| ClientError::Kafka(e))?;
    Ok(())
}

/// Sends a voucher command, keyed by its code hash.
pub async fn send_voucher_request(
    cfg: &Config,
    p: &FutureProducer,
    req: &VoucherRequest,
) -> Result<(), ClientError> {
    let payload = req.encode();
    p.send(
        FutureRecord::to(&cfg.topics.voucher_requests)
            .key(req.code_hash())
            .payload(&payload),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| ClientError::Kafka(e))?;
    Ok(())
}

type Waiters = Mutex<HashMap<String, tokio::sync::oneshot::Sender<VoucherResult>>>;

/// Follows `voucher_results` from its end and hands each result to whoever waits for its
/// request id. Register with [`ResultFollower::wait_for`] *before* sending the request.
pub struct ResultFollower {
    waiters: Arc<Waiters>,
    /// Cancelled when dropped: the follower thread ends.
    stop: CancellationToken,
}

impl ResultFollower {
    /// Positions a reader at the current end of every partition (returns once it is, retrying
    /// for up to 30 s while partition leaders are not known yet) and follows in a thread until
    /// dropped. Blocking.
    pub fn start(cfg: &Config) -> Result<ResultFollower, ClientError> {
        let mut rc = kafka::reader_config(cfg);
        rc.set("isolation.level", "read_committed");
        let reader: BaseConsumer = rc.create()?;
        let topic = cfg.topics.voucher_results.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let tpl = loop {
            match end_offsets(&reader, &topic) {
                Ok(tpl) => break tpl,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "voucher results not readable yet; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        };
        reader.assign(&tpl)?;
        let waiters: Arc<Waiters> = Arc::default();
        let stop = CancellationToken::new();
        let (w, s) = (waiters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("voucher-results".into())
            .spawn(move || {
                while !s.is_cancelled() {
                    let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let Ok(r) =
                        serde_json::from_slice::<VoucherResult>(m.payload().unwrap_or_default())
                    else {
                        continue;
                    };
                    if let Some(tx) = w.lock().expect("waiters").remove(&r.request_id) {
                        let _ = tx.send(r);
                    }
                }
            })
            .map_err(|e| ClientError::Other(e.to_string()))?;
        Ok(ResultFollower { waiters, stop })
    }

    /// Registers interest in a request's result.
    pub fn wait_for(&self, request_id: &str) -> tokio::sync::oneshot::Receiver<VoucherResult> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .insert(request_id.to_string(), tx);
        rx
    }

    /// Sends `req` and waits up to `timeout` for its result.
    pub async fn request(
        &self,
        cfg: &Config,
        p: &FutureProducer,
        req: &VoucherRequest,
        timeout: Duration,
    ) -> Result<VoucherResult, ClientError> {
        let rx = self.wait_for(req.request_id());
        send_voucher_request(cfg, p, req).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            _ => {
                self.waiters
                    .lock()
                    .expect("waiters")
                    .remove(req.request_id());
                Err(ClientError::Timeout(timeout, req.request_id().to_string()))
            }
        }
    }
}

impl Drop for ResultFollower {
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
        let (_, high) = reader.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
    }
    if tpl.count() == 0 {
        return Err(ClientError::Other(format!(
            "topic {topic} does not exist; run `usage-aggregator setup`"
        )));
    }
    Ok(tpl)
}

/// A random request id (or reference), 128 bits, hex.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// Every voucher in the compacted `voucher_state` changelog (blocking).
pub fn list_vouchers(cfg: &Config) -> Result<Vec<VoucherState>, ClientError> {
    let mut rc = kafka::reader_config(cfg);
    rc.set("isolation.level", "read_committed");
    rc.set("enable.partition.eof", "true");
    let reader: BaseConsumer<crate::stage::ReaderContext> =
        rc.create_with_context(crate::stage::ReaderContext)?;
    let topic = &cfg.topics.voucher_state;
    let md = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut done = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while done.len() < parts.len() {
        if std::time::Instant::now() > deadline {
            return Err(ClientError::Other(format!("timed out reading {topic}")));
        }
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = m.key().unwrap_or_default().to_vec();
                if key != crate::stage::OFFSETS_KEY {
                    latest.insert(key, m.payload().map(<[u8]>::to_vec));
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            _ => {}
        }
    }
    let mut out: Vec<VoucherState> = latest
        .into_values()
        .flatten()
        .filter_map(|v| serde_json::from_slice(&v).ok())
        .collect();
    out.sort_by(|a, b| {
        a.def
            .valid_from
            .cmp(&b.def.valid_from)
            .then(a.def.masked.cmp(&b.def.masked))
    });
    Ok(out)
}

/// The latest balance of an account, from ClickHouse.
#[derive(Debug, Clone, Serialize)]
pub struct Balance {
    pub account_id: String,
    pub balance: String,
    pub entries: u64,
    pub last_entry_at: String,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct BalanceRecord {
    balance_after: i128,
    seq: u64,
    occurred_at: u32,
}

fn dec(v: i128, scale: u32) -> String {
    Decimal::try_from_i128_with_scale(v, scale)
        .map(|d| d.normalize().to_string())
        .unwrap_or_else(|_| "overflow".into())
}

fn ts(secs: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(secs), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The balance after the account's last entry; `None` when it has none.
pub async fn balance(
    ch: &clickhouse::Client,
    account_id: &str,
) -> Result<Option<Balance>, ClientError> {
    let rows: Vec<BalanceRecord> = ch
        .query("SELECT balance_after, seq, occurred_at FROM ledger WHERE account_id = ? ORDER BY seq DESC LIMIT 1")
        .bind(account_id)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().next().map(|r| Balance {
        account_id: account_id.to_string(),
        balance: dec(r.balance_after, 18),
        entries: r.seq,
        last_entry_at: ts(r.occurred_at),
    }))
}

/// One line of an account's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryEntry {
    pub seq: u64,
    pub date: String,
    pub kind: String,
    pub reference: String,
    pub description: String,
    pub credit: String,
    pub debit: String,
    pub balance: String,
    pub assets: Vec<serde_json::Value>,
}

impl HistoryEntry {
    /// The history line of a balance event, as [`history`] reads it back from ClickHouse:
    /// the date to the second, zero credit or debit as "0", decimals normalized. The ledger
    /// view serves these from memory; `tests/faults.rs` compares both.
    pub fn from_event(e: &crate::ledger::core::BalanceEvent) -> HistoryEntry {
        let (credit, debit) = if e.amount.is_sign_negative() {
            (Decimal::ZERO, -e.amount)
        } else {
            (e.amount, Decimal::ZERO)
        };
        let text = |d: Decimal| d.normalize().to_string();
        HistoryEntry {
            seq: e.seq,
            date: e
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            kind: e.kind.as_str().to_string(),
            reference: e.reference.clone(),
            description: e.description.clone(),
            credit: text(credit),
            debit: text(debit),
            balance: text(e.balance_after),
            assets: e
                .lines
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "asset_id": l.asset_id,
                        "calls": l.calls,
                        "quantities": l.quantities,
                        "cost": text(l.cost),
                    })
                })
                .collect(),
        }
    }
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct HistoryRecord {
    seq: u64,
    occurred_at: u32,
    kind: String,
    reference: String,
    description: String,
    credit: i128,
    debit: i128,
    balance_after: i128,
    assets: Vec<String>,
    asset_calls: Vec<u32>,
    asset_quantities: Vec<String>,
    asset_costs: Vec<i128>,
}

/// Entries newest first with `seq < before_seq` (keyset paging), at most `limit`.
/// For entries in ledger order, newest first (as [`history`] returns them): whether each is
/// dated earlier than an entry applied before it (a smaller `seq`, further down the list).
/// Dates are event times, so ledger order and date order can differ; the CLI marks those.
pub fn dates_out_of_order(newest_first: &[HistoryEntry]) -> Vec<bool> {
    let mut marks = vec![false; newest_first.len()];
    let mut latest_below: Option<&str> = None;
    for (i, e) in newest_first.iter().enumerate().rev() {
        // RFC 3339 UTC strings of one format compare in time order.
        if latest_below.is_some_and(|d| e.date.as_str() < d) {
            marks[i] = true;
        }
        if latest_below.is_none_or(|d| e.date.as_str() > d) {
            latest_below = Some(e.date.as_str());
        }
    }
    marks
}

pub async fn history(
    ch: &clickhouse::Client,
    account_id: &str,
    limit: u32,
    before_seq: Option<u64>,
) -> Result<Vec<HistoryEntry>, ClientError> {
    let rows: Vec<HistoryRecord> = ch
        .query("SELECT seq, occurred_at, kind, reference, description, credit, debit, balance_after, assets, asset_calls, asset_quantities, asset_costs FROM ledger WHERE account_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?")
        .bind(account_id)
        .bind(before_seq.unwrap_or(u64::MAX))
        .bind(limit.clamp(1, 1000))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| HistoryEntry {
            seq: r.seq,
            date: ts(r.occurred_at),
            kind: r.kind,
            reference: r.reference,
            description: r.description,
            credit: dec(r.credit, 18),
            debit: dec(r.debit, 18),
            balance: dec(r.balance_after, 18),
            assets: r
                .assets
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let q: serde_json::Value = r
                        .asset_quantities
                        .get(i)
                        .and_then(|q| serde_json::from_str(q).ok())
                        .unwrap_or_default();
                    serde_json::json!({
                        "asset_id": a,
                        "calls": r.asset_calls.get(i).copied().unwrap_or(0),
                        "quantities": q,
                        "cost": dec(r.asset_costs.get(i).copied().unwrap_or(0), 12),
                    })
                })
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_that_go_back_in_ledger_order_are_marked() {
        let e = |seq: u64, date: &str| HistoryEntry {
            seq,
            date: date.into(),
            kind: "debit".into(),
            reference: String::new(),
            description: String::new(),
            credit: "0".into(),
            debit: "1".into(),
            balance: "0".into(),
            assets: vec![],
        };
        let h = [
            e(5, "2026-11-04T00:00:00Z"),
            e(4, "2026-11-01T00:00:00Z"),
            e(3, "2026-11-03T00:00:00Z"),
            e(2, "2026-11-02T00:00:00Z"),
            e(1, "2026-11-02T00:00:00Z"),
        ];
        assert_eq!(dates_out_of_order(&h), [false, true, false, false, false]);
        assert!(dates_out_of_order(&[]).is_empty());
    }
}
