//! Keyset paging of the ClickHouse listings (an account's executions, the dead letters): the
//! opaque cursor a page hands out, and a window's bounds as the `DateTime` seconds ClickHouse
//! compares (also [`usage`](super::usage)'s window).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use crate::report::Window;

/// Where a page starts: after the row that ended the previous one, by the time (seconds)
/// and id the listing orders by (an execution's first call and id; a dead letter's stored
/// time and id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: u32,
    pub id: String,
}

impl Cursor {
    /// The opaque text a page hands out (`next_cursor`).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.at, self.id))
    }

    pub fn parse(text: &str) -> Result<Cursor, String> {
        let bad = || "cursor is not one this API handed out (next_cursor of a page)".to_string();
        let raw = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (at, id) = raw.split_once(':').ok_or_else(bad)?;
        Ok(Cursor {
            at: at.parse().map_err(|_| bad())?,
            id: id.to_string(),
        })
    }
}

/// `[from, to)` in seconds, clamped to ClickHouse's `DateTime` range (0 ..= u32::MAX); an
/// open end is that range's end.
pub fn window_secs(window: &Window) -> (i64, i64) {
    (secs(window.0, 0), secs(window.1, i64::from(u32::MAX)))
}

fn secs(t: Option<DateTime<Utc>>, or: i64) -> i64 {
    t.map_or(or, |t| t.timestamp())
        .clamp(0, i64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for c in [
            Cursor {
                at: 1_700_000_000,
                id: "usage_events/2/17".into(),
            },
            // An execution id may hold the separator and any character.
            Cursor {
                at: 1_772_359_200,
                id: "exec:1/é".into(),
            },
        ] {
            assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        }
        assert!(Cursor::parse("not-a-cursor!").is_err());
        assert!(Cursor::parse("nope!").is_err());
        assert!(Cursor::parse(&URL_SAFE_NO_PAD.encode("x:y")).is_err());
    }

    #[test]
    fn window_bounds_are_clamped_to_clickhouse_datetime() {
        assert_eq!(window_secs(&(None, None)), (0, i64::from(u32::MAX)));
        let before_1970 = DateTime::from_timestamp(-5, 0);
        let t = DateTime::from_timestamp(1_772_359_200, 0);
        assert_eq!(window_secs(&(before_1970, t)), (0, 1_772_359_200));
    }
}
