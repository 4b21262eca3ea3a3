//! Dead letters for operators, from ClickHouse's `dead_letters` table (the sink's copy of the
//! dead-letter topic): a window of the time each was stored, an optional reason, a page size
//! and an opaque cursor in; the newest first, or a count per reason with the newest as a
//! sample, out. A dead letter is listed once the sink has stored it (its batch age, about a
//! second after it was dead-lettered). Payloads are cut to [`PAYLOAD_EXCERPT`] characters
//! here: `dead-letters replay` reads them whole from the topic.

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use super::page::Cursor;
use super::page::window_secs;
use super::rows::at;
use crate::report::Window;

/// Characters of a payload an answer carries (the rest is left out, `payload_truncated`).
pub const PAYLOAD_EXCERPT: u32 = 500;

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// By the time each was stored, `[from, to)`.
    pub window: Window,
    /// Only this reason code (`unknown_asset`, ...).
    pub reason: Option<String>,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
struct Row {
    dead_letter_id: String,
    reason: String,
    message: String,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
    stored: u32,
    payload: String,
    payload_truncated: u8,
}

/// One dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// `topic/partition/offset` of the rejected event (also its place: `source_*`).
    pub dead_letter_id: String,
    /// The stable reason code (`unknown_asset`, ...) and the message naming field and value.
    pub reason: String,
    pub message: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// When the sink stored it (about when it was dead-lettered), to the second.
    pub dead_lettered_at: DateTime<Utc>,
    /// The first [`PAYLOAD_EXCERPT`] characters of the event as it was sent (base64 when it
    /// was not UTF-8); `payload_truncated` when there is more.
    pub payload: String,
    pub payload_truncated: bool,
}

/// A page, newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Page {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// The dead letters of one reason in the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
    pub last_at: DateTime<Utc>,
    /// The newest of them.
    pub sample: DeadLetter,
}

const COLUMNS: &str = "dead_letter_id, reason, message, source_topic, source_partition, source_offset, toUInt32(ingested_at) AS stored, substringUTF8(payload, 1, ?) AS payload, toUInt8(lengthUTF8(payload) > ?) AS payload_truncated";

fn answer(r: Row) -> DeadLetter {
    DeadLetter {
        dead_lettered_at: at(r.stored, 0),
        dead_letter_id: r.dead_letter_id,
        reason: r.reason,
        message: r.message,
        source_topic: r.source_topic,
        source_partition: r.source_partition,
        source_offset: r.source_offset,
        payload: r.payload,
        payload_truncated: r.payload_truncated != 0,
    }
}

/// One page of dead letters, newest first.
pub async fn list(ch: &clickhouse::Client, q: &Query) -> Result<Page, clickhouse::error::Error> {
    let (from, to) = window_secs(&q.window);
    let (c_at, c_id) = q
        .cursor
        .as_ref()
        .map_or((i64::from(u32::MAX), "\u{10FFFF}".to_string()), |c| {
            (i64::from(c.at), c.id.clone())
        });
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters \
         WHERE ingested_at >= toDateTime(?) AND ingested_at < toDateTime(?) AND (? = '' OR reason = ?) \
         AND (toUInt32(ingested_at), dead_letter_id) < (?, ?) \
         ORDER BY ingested_at DESC, dead_letter_id DESC LIMIT ?"
    );
    let reason = q.reason.clone().unwrap_or_default();
    let rows: Vec<Row> = ch
        .query(&sql)
        .bind(PAYLOAD_EXCERPT)
        .bind(PAYLOAD_EXCERPT)
        .bind(from)
        .bind(to)
        .bind(&reason)
        .bind(&reason)
        .bind(c_at)
        .bind(&c_id)
        .bind(q.limit + 1)
        .fetch_all()
        .await?;
    let more = rows.len() > q.limit as usize;
    let next_cursor = if more {
        rows.get((q.limit as usize).saturating_sub(1)).map(|r| {
            Cursor {
                at: r.stored,
                id: r.dead_letter_id.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Page {
        dead_letters: rows
            .into_iter()
            .take(q.limit as usize)
            .map(answer)
            .collect(),
        next_cursor,
    })
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Count {
    reason: String,
    count: u64,
    last_id: String,
}

/// The dead letters of the window by reason, the most frequent first, each with its newest.
pub async fn by_reason(
    ch: &clickhouse::Client,
    window: Window,
) -> Result<Vec<ReasonCount>, clickhouse::error::Error> {
    let (from, to) = window_secs(&window);
    let counts: Vec<Count> = ch
        .query(
            "SELECT reason, count() AS count, argMax(dead_letter_id, (ingested_at, dead_letter_id)) AS last_id \
             FROM dead_letters WHERE ingested_at >= toDateTime(?) AND ingested_at < toDateTime(?) \
             GROUP BY reason ORDER BY count DESC, reason",
        )
        .bind(from)
        .bind(to)
        .fetch_all()
        .await?;
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = counts.iter().map(|c| c.last_id.as_str()).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE has(?, dead_letter_id) \
         AND ingested_at >= toDateTime(?) AND ingested_at < toDateTime(?) \
         ORDER BY ingested_at DESC"
    );
    let samples: Vec<Row> = ch
        .query(&sql)
        .bind(PAYLOAD_EXCERPT)
        .bind(PAYLOAD_EXCERPT)
        .bind(&ids)
        .bind(from)
        .bind(to)
        .fetch_all()
        .await?;
    Ok(counts
        .into_iter()
        .filter_map(|c| {
            let s = samples
                .iter()
                .find(|s| s.dead_letter_id == c.last_id && s.reason == c.reason)?;
            let sample = answer(s.clone());
            Some(ReasonCount {
                reason: c.reason,
                count: c.count,
                last_at: sample.dead_lettered_at,
                sample,
            })
        })
        .collect())
}
