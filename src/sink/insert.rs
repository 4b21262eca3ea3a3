//! Insert and retry: a batch of rows in; the rows inserted (each once) and the rows ClickHouse
//! refuses, isolated one by one, out. The decision after a failed insert is one pure function
//! ([`decide`]): retry a transient fault forever with backoff, bisect a refused batch, give
//! up on (dead-letter) a single refused row.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::health::Health;
use crate::metrics::METRICS;

/// How an insert failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Network, timeouts, overload, a missing column: retry with backoff.
    Transient,
    /// The rows themselves are refused: not retried; isolated and dead-lettered.
    Data,
}

/// ClickHouse server error codes that refuse the data itself: CANNOT_PARSE_* (6, 27, 38, 41),
/// TYPE_MISMATCH (53), CANNOT_CONVERT_TYPE (69, 72), INCORRECT_DATA (117), TOO_LARGE_STRING_SIZE
/// (131), DECIMAL_OVERFLOW (407), VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE (321).
pub const DATA_ERROR_CODES: [u32; 11] = [6, 27, 38, 41, 53, 69, 72, 117, 131, 407, 321];

/// The server's error code in a ClickHouse error response (`Code: 53. DB::Exception: ...`).
pub fn server_code(message: &str) -> Option<u32> {
    message
        .split("Code: ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Classifies a ClickHouse error: data errors by server code, or a row the client itself
/// cannot encode; everything else is transient.
pub fn classify(e: &clickhouse::error::Error) -> FailureKind {
    use clickhouse::error::Error as E;
    match e {
        E::BadResponse(msg) => match server_code(msg) {
            Some(code) if DATA_ERROR_CODES.contains(&code) => FailureKind::Data,
            _ => FailureKind::Transient,
        },
        E::SchemaMismatch(_) | E::Custom(_) => FailureKind::Data,
        _ => FailureKind::Transient,
    }
}

/// What to do after an insert of `rows` rows failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transient: wait (backoff) and insert the same rows again, forever.
    Retry,
    /// Refused data in a batch of several rows: insert each half on its own.
    Bisect,
    /// One refused row: give up on it and dead-letter it (reason `sink_rejected`).
    DeadLetter,
}

/// The retry decision, in one place.
pub fn decide(kind: FailureKind, rows: usize) -> Action {
    match kind {
        FailureKind::Transient => Action::Retry,
        FailureKind::Data if rows > 1 => Action::Bisect,
        FailureKind::Data => Action::DeadLetter,
    }
}

/// The next wait after `current`: doubled, at most `max`.
pub fn next_backoff(current: Duration, max: Duration) -> Duration {
    (current * 2).min(max)
}

/// First wait after a transient failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The ranges of a batch still to insert: the whole batch first, then the halves of every
/// refused range, left before right (rows keep their order).
pub struct Bisection {
    todo: Vec<Range<usize>>,
}

impl Bisection {
    pub fn new(rows: usize) -> Self {
        Bisection {
            todo: (rows > 0).then_some(0..rows).into_iter().collect(),
        }
    }

    /// The next range to insert.
    pub fn next_range(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    /// Splits a refused range of two or more rows into halves to insert next.
    pub fn split(&mut self, r: Range<usize>) {
        let mid = r.start + r.len() / 2;
        self.todo.push(mid..r.end);
        self.todo.push(r.start..mid);
    }
}

/// A row ClickHouse refused, to dead-letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Output-topic position of the message the row came from.
    pub partition: i32,
    pub offset: i64,
    /// The row as JSON (what the dead letter carries).
    pub row: Vec<u8>,
    pub error: String,
}

/// Inserts batches into one ClickHouse database; reports health and retries.
pub struct Inserter {
    pub ch: clickhouse::Client,
    /// For naming the server and user when it fails (never the password).
    pub clickhouse: crate::config::ClickHouseConfig,
    pub health: Arc<Health>,
    pub max_backoff: Duration,
}

impl Inserter {
    /// Inserts `rows` into `table`, retrying transient failures forever with backoff and
    /// bisecting refused batches down to the refused rows, which are returned. `sources[i]`
    /// is where `rows[i]` came from.
    pub async fn insert_all<R>(
        &self,
        table: &'static str,
        rows: &[R],
        sources: &[(i32, i64)],
    ) -> Vec<Refused>
    where
        R: Serialize + Send + Sync + 'static,
        for<'a> R: clickhouse::Row<Value<'a> = R>,
    {
        let mut refused = Vec::new();
        let mut plan = Bisection::new(rows.len());
        while let Some(r) = plan.next_range() {
            let mut backoff = FIRST_BACKOFF;
            // After a transient failure the outcome is unknown: the server may have stored
            // the batch and then lost the answer (killed, a full disk on a view). What landed
            // is looked up by (partition, offset) before the next try and left out of it.
            let mut landed: Option<HashSet<(i32, i64)>> = None;
            loop {
                // Borrowed: a batch is serialized straight from the caller's rows.
                let attempt: Vec<&R> = match &landed {
                    None => rows[r.clone()].iter().collect(),
                    Some(l) => r
                        .clone()
                        .filter(|i| !sources.get(*i).is_some_and(|s| l.contains(s)))
                        .map(|i| &rows[i])
                        .collect(),
                };
                if attempt.is_empty() {
                    self.health.clickhouse(Ok(()));
                    break;
                }
                let e = match insert_rows(&self.ch, table, &attempt).await {
                    Ok(()) => {
                        self.health.clickhouse(Ok(()));
                        break;
                    }
                    Err(e) => e,
                };
                match decide(classify(&e), r.len()) {
                    Action::Bisect => {
                        plan.split(r);
                        break;
                    }
                    Action::DeadLetter => {
                        let (partition, offset) = sources.get(r.start).copied().unwrap_or((-1, -1));
                        refused.push(Refused {
                            partition,
                            offset,
                            row: serde_json::to_vec(&rows[r.start]).unwrap_or_default(),
                            error: e.to_string(),
                        });
                        break;
                    }
                    Action::Retry => {
                        let why = super::errors::describe(&self.clickhouse, &e);
                        METRICS.sink_retries.with_label_values(&[table]).inc();
                        tracing::warn!(
                            table,
                            rows = r.len(),
                            backoff_ms = backoff.as_millis() as u64,
                            "clickhouse insert failed; retrying: {why}"
                        );
                        self.health.clickhouse(Err(why));
                        tokio::time::sleep(backoff).await;
                        backoff = next_backoff(backoff, self.max_backoff);
                        // Still unreachable: keep what is known, ask again next time.
                        if let Ok(l) = stored(&self.ch, table, &sources[r.clone()]).await {
                            if !l.is_empty() {
                                tracing::warn!(
                                    table,
                                    rows = l.len(),
                                    "rows of a failed insert were stored after all; they are not inserted again"
                                );
                            }
                            landed = Some(l);
                        }
                    }
                }
            }
        }
        refused
    }
}

/// Which of `sources` (partition, offset) `table` holds.
async fn stored(
    ch: &clickhouse::Client,
    table: &str,
    sources: &[(i32, i64)],
) -> Result<HashSet<(i32, i64)>, clickhouse::error::Error> {
    let mut ranges: std::collections::BTreeMap<i32, (i64, i64)> = Default::default();
    for (p, o) in sources {
        let e = ranges.entry(*p).or_insert((*o, *o));
        e.0 = e.0.min(*o);
        e.1 = e.1.max(*o);
    }
    let wanted: HashSet<(i32, i64)> = sources.iter().copied().collect();
    let mut found = HashSet::new();
    for (p, (lo, hi)) in ranges {
        let offsets: Vec<i64> = ch
            .query(&format!(
                "SELECT src_offset FROM {table} WHERE src_partition = ? AND src_offset BETWEEN ? AND ?"
            ))
            .bind(p)
            .bind(lo)
            .bind(hi)
            .fetch_all()
            .await?;
        found.extend(
            offsets
                .into_iter()
                .map(|o| (p, o))
                .filter(|s| wanted.contains(s)),
        );
    }
    Ok(found)
}

/// One INSERT of `rows` (RowBinary), atomic for a batch within one partition of the table.
async fn insert_rows<R>(
    ch: &clickhouse::Client,
    table: &str,
    rows: &[&R],
) -> Result<(), clickhouse::error::Error>
where
    R: Serialize + Send + Sync + 'static,
    for<'a> R: clickhouse::Row<Value<'a> = R>,
{
    let mut ins = ch.insert::<R>(table).await?;
    for r in rows {
        ins.write(*r).await?;
    }
    ins.end().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error as E;

    fn bad(msg: &str) -> E {
        E::BadResponse(msg.to_string())
    }

    #[test]
    fn server_codes_are_read_from_the_response() {
        assert_eq!(
            server_code("Code: 53. DB::Exception: Type mismatch (version 24.8)"),
            Some(53)
        );
        assert_eq!(
            server_code("Code: 241, e.displayText() = DB::Exception: Memory limit"),
            Some(241)
        );
        assert_eq!(server_code("Service Unavailable"), None);
        assert_eq!(server_code("Code: x"), None);
    }

    #[test]
    fn refused_data_is_a_data_error_and_everything_else_is_retried() {
        for code in DATA_ERROR_CODES {
            assert_eq!(
                classify(&bad(&format!("Code: {code}. DB::Exception: refused"))),
                FailureKind::Data,
                "code {code}"
            );
        }
        // A missing column (16 NO_SUCH_COLUMN_IN_TABLE), an unknown table (60), memory (241),
        // too many parts (252), a server going down (210 NETWORK_ERROR): transient, retried.
        for code in [16, 60, 241, 252, 210, 159] {
            assert_eq!(
                classify(&bad(&format!("Code: {code}. DB::Exception: x"))),
                FailureKind::Transient,
                "code {code}"
            );
        }
        assert_eq!(classify(&bad("502 Bad Gateway")), FailureKind::Transient);
        assert_eq!(classify(&E::TimedOut), FailureKind::Transient);
        assert_eq!(
            classify(&E::Network("connection refused".into())),
            FailureKind::Transient
        );
        assert_eq!(
            classify(&E::SchemaMismatch("column count".into())),
            FailureKind::Data
        );
        assert_eq!(
            classify(&E::Custom("cannot serialize".into())),
            FailureKind::Data
        );
    }

    #[test]
    fn the_decision_retries_bisects_or_gives_up() {
        assert_eq!(decide(FailureKind::Transient, 1000), Action::Retry);
        assert_eq!(decide(FailureKind::Transient, 1), Action::Retry);
        assert_eq!(decide(FailureKind::Data, 2), Action::Bisect);
        assert_eq!(decide(FailureKind::Data, 1), Action::DeadLetter);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(1);
        let mut b = FIRST_BACKOFF;
        let mut seen = vec![b];
        for _ in 0..6 {
            b = next_backoff(b, max);
            seen.push(b);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    /// Drives a bisection against a table that refuses some rows, as `insert_all` does.
    fn run(rows: usize, refused: &[usize]) -> (Vec<usize>, Vec<usize>, usize) {
        let mut inserted = Vec::new();
        let mut dead = Vec::new();
        let mut attempts = 0;
        let mut plan = Bisection::new(rows);
        while let Some(r) = plan.next_range() {
            attempts += 1;
            if !r.clone().any(|i| refused.contains(&i)) {
                inserted.extend(r);
                continue;
            }
            match decide(FailureKind::Data, r.len()) {
                Action::Bisect => plan.split(r),
                Action::DeadLetter => dead.push(r.start),
                Action::Retry => unreachable!(),
            }
        }
        (inserted, dead, attempts)
    }

    #[test]
    fn bisection_isolates_exactly_the_refused_rows_and_inserts_the_rest_once_in_order() {
        let (inserted, dead, attempts) = run(10, &[3, 7]);
        assert_eq!(dead, [3, 7]);
        assert_eq!(inserted, [0, 1, 2, 4, 5, 6, 8, 9]);
        assert!(attempts <= 2 * 2 * 4 + 1, "{attempts} inserts");
        let (inserted, dead, attempts) = run(1000, &[]);
        assert_eq!((inserted.len(), dead.len(), attempts), (1000, 0, 1));
        let all: Vec<usize> = (0..16).collect();
        let (inserted, dead, _) = run(16, &all);
        assert!(inserted.is_empty());
        assert_eq!(dead, all);
        assert_eq!(run(0, &[]), (vec![], vec![], 0));
        let (inserted, dead, _) = run(1, &[0]);
        assert_eq!((inserted.len(), dead), (0, vec![0]));
    }
}
