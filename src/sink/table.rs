//! What the sink needs to know about one ClickHouse table: the [`Table`] trait (name, id,
//! source topic, row type, parse) in; a type-erased [`Lane`] that buffers that table's rows
//! and inserts them as one batch out. Adding a table is one `impl Table` (see
//! [`super::tables`]) and one migration; the loop in `sink.rs` never names a table.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;

use super::cursor::Cursor;
use super::insert::{Inserter, Refused};
use super::rows::{RowError, Source};
use crate::config::{SinkConfig, TopicsConfig};

/// One ClickHouse table fed from one output topic.
///
/// Rows are written with RowBinary in the column order of the table's migration. Every table
/// must have `src_partition Int32` and `src_offset Int64` columns (the resume point) and an
/// id that is the same for the same message whenever it is produced again (the replay check).
pub trait Table: Send + Sync + 'static {
    /// The row as inserted; field order is the table's column order.
    type Row: Serialize
        + Clone
        + Send
        + Sync
        + 'static
        + for<'a> clickhouse::Row<Value<'a> = Self::Row>;
    /// Table name in the configured database, e.g. `debits`.
    const NAME: &'static str;
    /// SQL expression giving a row's id (a column name, or an expression over columns); must
    /// equal the id [`Table::parse`] returns for the same message.
    const ID_SQL: &'static str;
    /// Whether a message this table refuses is sent to the dead-letter topic (false for the
    /// table that stores the dead-letter topic itself: never loop a dead letter back).
    const DEAD_LETTER_REFUSED: bool = true;
    /// The output topic the table is fed from.
    fn topic(topics: &TopicsConfig) -> &str;
    /// A Kafka payload to its id and row; an error names what is wrong (the message is then
    /// dead-lettered with reason `sink_rejected`).
    fn parse(payload: &[u8], src: Source) -> Result<(String, Self::Row), RowError>;
}

/// Rows read but not yet inserted, with where each came from.
pub struct Batch<R> {
    pub rows: Vec<R>,
    /// (partition, offset) of each row, same index.
    pub sources: Vec<(i32, i64)>,
    /// Payload bytes of the buffered messages (the `sink.batch_bytes` bound).
    pub bytes: usize,
    /// When the first message of this batch was read.
    pub since: Option<Instant>,
}

impl<R> Default for Batch<R> {
    fn default() -> Self {
        Batch {
            rows: Vec::new(),
            sources: Vec::new(),
            bytes: 0,
            since: None,
        }
    }
}

impl<R> Batch<R> {
    /// Empties the batch and keeps the vectors' capacity for the next one.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.sources.clear();
        self.bytes = 0;
        self.since = None;
    }

    pub fn push(&mut self, row: R, partition: i32, offset: i64, bytes: usize, now: Instant) {
        self.since.get_or_insert(now);
        self.rows.push(row);
        self.sources.push((partition, offset));
        self.bytes += bytes;
    }

    /// Drops the rows of a revoked partition: they are not committed, so the next owner
    /// reads them again.
    pub fn drop_partition(&mut self, partition: i32) {
        let mut keep = self.sources.iter().map(|(p, _)| *p != partition);
        self.rows.retain(|_| keep.next().unwrap_or(true));
        self.sources.retain(|(p, _)| *p != partition);
    }

    /// Whether the batch must be written now: `force` (shutdown), or `sink.batch_rows`,
    /// `sink.batch_bytes` or `sink.batch_age` reached. A batch emptied by a revoke still
    /// comes due after `batch_age`, which commits what was skipped.
    pub fn is_due(&self, limits: &SinkConfig, now: Instant, force: bool) -> bool {
        let aged = self
            .since
            .is_some_and(|t| now.saturating_duration_since(t) >= limits.batch_age);
        let rows = self.rows.len();
        if rows == 0 {
            return aged;
        }
        force || rows >= limits.batch_rows || self.bytes >= limits.batch_bytes || aged
    }
}

/// What became of one message offered to a table.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Buffered for the next insert.
    Buffered,
    /// Its id is among the partition's recent rows: a replay, not inserted again.
    Duplicate,
}

/// What a written batch did.
pub struct Written {
    pub rows: usize,
    pub latency: Duration,
    pub refused: Vec<Refused>,
}

/// One table as the loop sees it: type-erased, so every table sits in one list.
pub trait Lane: Send + Sync {
    fn name(&self) -> &'static str;
    fn id_sql(&self) -> &'static str;
    fn topic(&self) -> &str;
    fn dead_letter_refused(&self) -> bool;
    /// Parses a message, checks its id against the partition's recent ids and buffers it.
    fn accept(
        &mut self,
        cursor: &mut Cursor,
        payload: &[u8],
        src: Source,
        now: Instant,
    ) -> Result<Accepted, RowError>;
    fn drop_partition(&mut self, partition: i32);
    fn is_due(&self, limits: &SinkConfig, now: Instant, force: bool) -> bool;
    /// Takes the buffered batch and inserts it (retrying transient failures forever);
    /// returns what ClickHouse refused. `None` when the batch was empty.
    fn write<'a>(&'a mut self, inserter: &'a Inserter) -> BoxFuture<'a, Option<Written>>;
}

/// The [`Lane`] of a [`Table`].
pub struct TableLane<T: Table> {
    topic: String,
    batch: Batch<T::Row>,
}

impl<T: Table> TableLane<T> {
    pub fn new(topics: &TopicsConfig) -> Self {
        TableLane {
            topic: T::topic(topics).to_string(),
            batch: Batch::default(),
        }
    }
}

impl<T: Table> Lane for TableLane<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn id_sql(&self) -> &'static str {
        T::ID_SQL
    }
    fn topic(&self) -> &str {
        &self.topic
    }
    fn dead_letter_refused(&self) -> bool {
        T::DEAD_LETTER_REFUSED
    }

    fn accept(
        &mut self,
        cursor: &mut Cursor,
        payload: &[u8],
        src: Source,
        now: Instant,
    ) -> Result<Accepted, RowError> {
        let (id, row) = T::parse(payload, src)?;
        if !cursor.first_sight(&id) {
            return Ok(Accepted::Duplicate);
        }
        self.batch
            .push(row, src.partition, src.offset, payload.len(), now);
        Ok(Accepted::Buffered)
    }

    fn drop_partition(&mut self, partition: i32) {
        self.batch.drop_partition(partition);
    }

    fn is_due(&self, limits: &SinkConfig, now: Instant, force: bool) -> bool {
        self.batch.is_due(limits, now, force)
    }

    fn write<'a>(&'a mut self, inserter: &'a Inserter) -> BoxFuture<'a, Option<Written>> {
        // Written in place and cleared, keeping the vectors' capacity: a fresh batch of up
        // to `sink.batch_rows` rows would otherwise page-fault its memory in again each time
        // (seen as ~9 % of the process's CPU in `clear_page_erms` during a drain).
        let batch = &mut self.batch;
        Box::pin(async move {
            if batch.rows.is_empty() {
                batch.clear();
                return None;
            }
            let started = Instant::now();
            let refused = inserter
                .insert_all(T::NAME, &batch.rows, &batch.sources)
                .await;
            let rows = batch.rows.len();
            batch.clear();
            Some(Written {
                rows,
                latency: started.elapsed(),
                refused,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SinkConfig {
        SinkConfig {
            batch_rows: 3,
            batch_bytes: 100,
            batch_age: Duration::from_secs(1),
            dedupe_window_rows: 10,
            max_backoff: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_batch_comes_due_by_rows_bytes_age_or_force() {
        let l = limits();
        let t0 = Instant::now();
        let mut b: Batch<u8> = Batch::default();
        assert!(
            !b.is_due(&l, t0, true),
            "an empty, never-used batch is never due"
        );
        b.push(1, 0, 10, 10, t0);
        assert!(!b.is_due(&l, t0, false));
        assert!(b.is_due(&l, t0, true));
        assert!(b.is_due(&l, t0 + Duration::from_secs(1), false), "age");
        b.push(2, 0, 11, 10, t0);
        b.push(3, 1, 5, 10, t0);
        assert!(b.is_due(&l, t0, false), "rows");
        let mut big: Batch<u8> = Batch::default();
        big.push(1, 0, 1, 100, t0);
        assert!(big.is_due(&l, t0, false), "bytes");
    }

    #[test]
    fn dropping_a_partition_keeps_rows_and_sources_aligned() {
        let t0 = Instant::now();
        let mut b: Batch<&str> = Batch::default();
        for (row, p, o) in [("a", 0, 1), ("b", 1, 1), ("c", 0, 2), ("d", 2, 7)] {
            b.push(row, p, o, 1, t0);
        }
        b.drop_partition(0);
        assert_eq!(b.rows, ["b", "d"]);
        assert_eq!(b.sources, [(1, 1), (2, 7)]);
        // Emptied by a revoke: still comes due once aged, so skipped offsets get committed.
        b.drop_partition(1);
        b.drop_partition(2);
        assert!(b.rows.is_empty());
        assert!(!b.is_due(&limits(), t0, false));
        assert!(b.is_due(&limits(), t0 + Duration::from_secs(2), false));
    }
}
