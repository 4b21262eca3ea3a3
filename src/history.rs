//! The committed history of an execution or a conversation: the priced lines and debits of
//! one account, from ClickHouse below the sink's committed position and from the output
//! topics (the follower's tail, or Kafka) from there up to a given position, each in offset
//! order and each message once. So a just-closed execution whose debit is not in ClickHouse
//! yet is found all the same (no 404 between the pipeline's memory and ClickHouse), on any
//! instance.
//!
//! ClickHouse holds `[0, sink)` and the topics `[sink, upto)` of the account's partition
//! (`sink`: the sink group's committed offsets; every message below them is in ClickHouse).
//!
//! Also the other reads of the HTTP API that only ClickHouse answers: an account's
//! executions ([`listing`]), usage ([`usage`]) and the dead letters ([`dead_letters`]), the
//! listings paged alike ([`page`]).

pub mod batch;
pub mod cache;
pub mod dead_letters;
pub mod listing;
pub mod page;
pub mod rows;
pub mod usage;

use std::sync::Arc;

use crate::debit::{Debit, PricedLine};
use crate::follow::{FollowError, Followed, Follower, Positions};
use crate::trace::stream::Filter;

/// What [`read`] found, with where it stopped.
#[derive(Debug, Default)]
pub struct Committed {
    pub partition: i32,
    /// Everything of the account below these offsets is in `lines` and `debits`.
    pub upto: Positions,
    /// (offset in `priced_usage`, line) in offset order, the filter's only.
    pub lines: Vec<(i64, PricedLine)>,
    /// (offset in `debits`, debit) in offset order: the execution's, or for a conversation
    /// every debit of the account from the topic part and those of its executions from
    /// ClickHouse.
    pub debits: Vec<(i64, Debit)>,
    /// Why ClickHouse could not answer, when it could not: then only the topic part is here.
    pub clickhouse_error: Option<String>,
}

/// Why history cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Follow(#[from] FollowError),
}

/// Reads the committed history of `filter` up to `upto` (the follower's position when
/// `None`).
pub async fn read(
    follower: &Follower,
    ch: &clickhouse::Client,
    filter: &Filter,
    upto: Option<Positions>,
) -> Result<Committed, HistoryError> {
    follower.ensure_started().await?;
    let account = filter.account_id();
    let p = follower.partition_of(account)?;
    let upto = upto.unwrap_or_else(|| follower.position(p));
    let sink = match follower.sink_positions(p).await? {
        Some(s) => Ok(s),
        None => rows::held_positions(ch, p).await,
    };
    let (from, clickhouse_error) = match sink {
        Ok(s) => (
            Positions {
                lines: s.lines.min(upto.lines),
                debits: s.debits.min(upto.debits),
            },
            None,
        ),
        // ClickHouse unreachable and no committed sink offsets: the topics from the start.
        Err(e) => (Positions::default(), Some(e.to_string())),
    };
    let execution = match filter {
        Filter::Execution { execution_id, .. } => Some(execution_id.as_str()),
        Filter::Conversation { .. } => None,
    };
    let tail = follower
        .read(p, account.as_bytes(), execution, from, upto)
        .await?;
    let mut c = Committed {
        partition: p,
        upto,
        clickhouse_error,
        ..Committed::default()
    };
    if c.clickhouse_error.is_none() {
        let got = match filter {
            Filter::Execution {
                account_id,
                execution_id,
            } => {
                batch::BATCHER
                    .execution(ch, account_id, execution_id, p, from)
                    .await
            }
            Filter::Conversation { .. } => rows::read(ch, filter, p, from)
                .await
                .map_err(|e| e.to_string()),
        };
        match got {
            Ok((lines, debits)) => {
                c.lines = lines;
                c.debits = debits;
            }
            Err(e) => c.clickhouse_error = Some(e),
        }
    }
    c.lines
        .extend(decode_all(&tail.lines).filter(|(_, l)| line_matches(filter, l)));
    let executions: std::collections::HashSet<String> = c
        .lines
        .iter()
        .filter_map(|(_, l)| l.execution_id.clone())
        .collect();
    c.debits
        .extend(decode_all::<Debit>(&tail.debits).filter(|(_, d)| {
            match filter {
                Filter::Execution { execution_id, .. } => {
                    d.execution_id.as_deref() == Some(execution_id)
                }
                // The stream decides which debits belong to the conversation.
                Filter::Conversation { .. } => d
                    .execution_id
                    .as_ref()
                    .is_none_or(|e| executions.contains(e)),
            }
        }));
    Ok(c)
}

/// Whether a line is one of `filter`'s.
pub fn line_matches(filter: &Filter, l: &PricedLine) -> bool {
    match filter {
        Filter::Execution {
            account_id,
            execution_id,
        } => l.account_id == *account_id && l.execution_id.as_deref() == Some(execution_id),
        Filter::Conversation {
            account_id,
            key,
            value,
        } => l.account_id == *account_id && l.dimensions.get(key) == Some(value),
    }
}

/// The messages that decode (an output message that does not is logged and skipped: the
/// sink dead-letters it too).
pub fn decode_all<'a, T: serde::de::DeserializeOwned + 'a>(
    msgs: &'a [Arc<Followed>],
) -> impl Iterator<Item = (i64, T)> + 'a {
    msgs.iter().filter_map(|m| match serde_json::from_slice(&m.payload) {
        Ok(v) => Some((m.offset, v)),
        Err(e) => {
            tracing::warn!(partition = m.partition, offset = m.offset, error = %e, "output message does not decode; left out of traces");
            None
        }
    })
}
