//! ClickHouse reads of executions' histories, batched: the requests for executions of one
//! account and output partition that wait at the same time become one query
//! (`has(ids, execution_id)`, below the highest position asked), split per request after.
//! At most [`CONCURRENT`] such queries run at once per process. So 200 streams opened at
//! once cost a few queries, not 400 (ClickHouse refuses past its own limit of simultaneous
//! queries, and the sink's inserts with them).
//!
//! One batcher per process ([`BATCHER`]), like the follower: the requests of the trace and
//! stream endpoints meet there.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use tokio::sync::{Semaphore, oneshot};

use crate::debit::{Debit, PricedLine};
use crate::follow::Positions;

/// ClickHouse history queries run at once by one process.
pub const CONCURRENT: usize = 4;

/// An execution's lines and debits below a position, each in offset order.
pub type Rows = (Vec<(i64, PricedLine)>, Vec<(i64, Debit)>);

struct Waiter {
    execution: String,
    below: Positions,
    tx: oneshot::Sender<Result<Rows, String>>,
}

/// Requests waiting for a query, per (account, partition).
pub struct Batcher {
    pending: Mutex<HashMap<(String, i32), Vec<Waiter>>>,
    permits: Semaphore,
}

/// The process's batcher.
pub static BATCHER: LazyLock<Batcher> = LazyLock::new(|| Batcher {
    pending: Mutex::default(),
    permits: Semaphore::new(CONCURRENT),
});

impl Batcher {
    /// `account`'s `execution`: its lines and debits in partition `p` below `below`, from
    /// ClickHouse, in one query with the other requests of the account and partition that
    /// wait meanwhile. The error is ClickHouse's, as text.
    pub async fn execution(
        &'static self,
        ch: &clickhouse::Client,
        account: &str,
        execution: &str,
        p: i32,
        below: Positions,
    ) -> Result<Rows, String> {
        let (tx, rx) = oneshot::channel();
        let key = (account.to_string(), p);
        let lead = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let list = pending.entry(key.clone()).or_default();
            list.push(Waiter {
                execution: execution.to_string(),
                below,
                tx,
            });
            list.len() == 1
        };
        if lead {
            // Its own task: the batch is answered even when this request goes away.
            let ch = ch.clone();
            tokio::spawn(async move { self.run(ch, key).await });
        }
        rx.await
            .unwrap_or_else(|_| Err("the history query was dropped".into()))
    }

    async fn run(&self, ch: clickhouse::Client, key: (String, i32)) {
        let _permit = self.permits.acquire().await.ok();
        // Whoever came while waiting for the permit is in this batch too.
        let batch = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .unwrap_or_default();
        if batch.is_empty() {
            return;
        }
        let mut ids: Vec<String> = batch.iter().map(|w| w.execution.clone()).collect();
        ids.sort();
        ids.dedup();
        let below = batch.iter().fold(Positions::default(), |a, w| Positions {
            lines: a.lines.max(w.below.lines),
            debits: a.debits.max(w.below.debits),
        });
        let got = super::rows::read_executions(&ch, &key.0, &ids, key.1, below).await;
        for w in batch {
            let answer = match &got {
                Ok((lines, debits)) => Ok(split(lines, debits, &w.execution, w.below)),
                Err(e) => Err(e.to_string()),
            };
            let _ = w.tx.send(answer);
        }
    }
}

/// One request's rows of a batch's.
fn split(
    lines: &[(i64, PricedLine)],
    debits: &[(i64, Debit)],
    execution: &str,
    below: Positions,
) -> Rows {
    (
        lines
            .iter()
            .filter(|(o, l)| *o < below.lines && l.execution_id.as_deref() == Some(execution))
            .cloned()
            .collect(),
        debits
            .iter()
            .filter(|(o, d)| *o < below.debits && d.execution_id.as_deref() == Some(execution))
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(exec: &str, n: u32) -> PricedLine {
        serde_json::from_str(&format!(
            r#"{{"event_id":"{exec}-{n}","kind":"tool_call","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"{exec}","asset_id":"search","asset_type":"tool","vendor":"v","price_version":"1","units":[],"cost":"0.1","event_partition":0,"event_offset":{n}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_batch_is_split_by_execution_and_each_requests_position() {
        let lines: Vec<(i64, PricedLine)> = (0..6)
            .map(|o| (o, line(if o % 2 == 0 { "x" } else { "y" }, o as u32)))
            .collect();
        let at = |lines: i64| Positions { lines, debits: 0 };
        let ids = |r: &Rows| r.0.iter().map(|(o, _)| *o).collect::<Vec<_>>();
        assert_eq!(ids(&split(&lines, &[], "x", at(6))), [0, 2, 4]);
        assert_eq!(ids(&split(&lines, &[], "x", at(4))), [0, 2]);
        assert_eq!(ids(&split(&lines, &[], "y", at(6))), [1, 3, 5]);
        assert!(split(&lines, &[], "z", at(6)).0.is_empty());
    }
}
