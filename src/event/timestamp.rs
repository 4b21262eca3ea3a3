//! Strict `occurred_at` timestamps: the text of the JSON string in, a UTC instant or the
//! rule it breaks out. Accepts exactly the grammar of contract v1 (docs/event-contract.md),
//! which is also the `pattern` of `$defs/timestamp` in schema/usage-event.v1.json:
//!
//! ```text
//! YYYY-MM-DD "T" hh:mm:ss [ "." 1-9 digits ] ( "Z" | ("+" | "-") hh:mm )
//! ```
//!
//! ASCII digits only; `T` and `Z` upper case; a real calendar date (leap years included);
//! a written year of 2000-2099; hours 00-23, minutes 00-59, seconds 00-59 (no leap second
//! 60); offset hours 00-23 and minutes 00-59 (`-00:00` reads as `Z`). One more rule the
//! schema cannot state: the instant, once the offset is applied, lies in
//! 2000-01-01T00:00:00Z <= t < 2100-01-01T00:00:00Z.
//! A general-purpose RFC 3339 parser is deliberately not used: it accepts more (a space or
//! lower-case `t`, 10+ fraction digits, second 60) than the contract allows.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// First written year the contract accepts.
pub const MIN_YEAR: u32 = 2000;
/// Last written year the contract accepts.
pub const MAX_YEAR: u32 = 2099;
/// Most fraction-of-second digits (nanoseconds).
pub const MAX_FRACTION_DIGITS: usize = 9;

/// Why a timestamp text is refused; the message names the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampError(pub &'static str);

impl std::fmt::Display for TimestampError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    /// `n` ASCII digits as a number.
    fn digits(&mut self, n: usize, what: &'static str) -> Result<u32, TimestampError> {
        let end = self.i + n;
        let part = self.b.get(self.i..end).ok_or(TimestampError(what))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(TimestampError(what));
        }
        self.i = end;
        Ok(part
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    }

    fn byte(&mut self, want: u8, what: &'static str) -> Result<(), TimestampError> {
        if self.b.get(self.i) == Some(&want) {
            self.i += 1;
            Ok(())
        } else {
            Err(TimestampError(what))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
}

/// Parses `s` by the contract's grammar; returns the instant in UTC (nanosecond precision).
pub fn parse_strict(s: &str) -> Result<DateTime<Utc>, TimestampError> {
    const DATE: &str = "date must be written YYYY-MM-DD";
    const TIME: &str = "time must be written hh:mm:ss";
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let year = c.digits(4, DATE)?;
    c.byte(b'-', DATE)?;
    let month = c.digits(2, DATE)?;
    c.byte(b'-', DATE)?;
    let day = c.digits(2, DATE)?;
    c.byte(
        b'T',
        "date and time must be separated by an upper-case T (not a space or t)",
    )?;
    let hour = c.digits(2, TIME)?;
    c.byte(b':', TIME)?;
    let minute = c.digits(2, TIME)?;
    c.byte(b':', TIME)?;
    let second = c.digits(2, TIME)?;
    let mut nanos = 0u32;
    if c.peek() == Some(b'.') {
        c.i += 1;
        let start = c.i;
        while c.peek().is_some_and(|b| b.is_ascii_digit()) {
            c.i += 1;
        }
        let n = c.i - start;
        if n == 0 || n > MAX_FRACTION_DIGITS {
            return Err(TimestampError(
                "fraction of a second must have 1 to 9 digits",
            ));
        }
        let frac = &c.b[start..c.i];
        nanos = frac
            .iter()
            .chain(std::iter::repeat_n(&b'0', MAX_FRACTION_DIGITS - n))
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    }
    const OFFSET: &str = "offset must be an upper-case Z or +hh:mm / -hh:mm";
    let offset_minutes: i64 = match c.peek() {
        Some(b'Z') => {
            c.i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            c.i += 1;
            let h = c.digits(2, OFFSET)?;
            c.byte(b':', OFFSET)?;
            let m = c.digits(2, OFFSET)?;
            if h > 23 || m > 59 {
                return Err(TimestampError(
                    "offset hours must be 00 to 23 and minutes 00 to 59",
                ));
            }
            let v = i64::from(h * 60 + m);
            if sign == b'-' { -v } else { v }
        }
        _ => return Err(TimestampError(OFFSET)),
    };
    if c.i != c.b.len() {
        return Err(TimestampError(
            "unexpected text after the offset (Z or ±hh:mm ends the timestamp)",
        ));
    }
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return Err(TimestampError("year must be from 2000 to 2099"));
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)
        .ok_or(TimestampError("not a real calendar date"))?;
    if hour > 23 || minute > 59 {
        return Err(TimestampError("hour must be 00 to 23 and minute 00 to 59"));
    }
    if second > 59 {
        return Err(TimestampError(
            "second must be 00 to 59 (leap second 60 is not accepted)",
        ));
    }
    let time =
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos).ok_or(TimestampError(TIME))?;
    let local = NaiveDateTime::new(date, time);
    let utc = (local - Duration::minutes(offset_minutes)).and_utc();
    let lo = NaiveDate::from_ymd_opt(MIN_YEAR as i32, 1, 1).expect("valid date");
    let hi = NaiveDate::from_ymd_opt(MAX_YEAR as i32 + 1, 1, 1).expect("valid date");
    if utc.date_naive() < lo || utc.date_naive() >= hi {
        return Err(TimestampError(
            "instant is out of range (2000-01-01T00:00:00Z to before 2100-01-01T00:00:00Z)",
        ));
    }
    Ok(utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse_strict(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }

    fn err(s: &str) -> &'static str {
        parse_strict(s).expect_err(s).0
    }

    #[test]
    fn accepts_the_contract_grammar() {
        assert_eq!(ok("2026-03-01T10:00:00Z"), "2026-03-01T10:00:00Z");
        assert_eq!(
            ok("2026-03-01T11:00:00.250+01:00"),
            "2026-03-01T10:00:00.250Z"
        );
        assert_eq!(
            ok("2026-03-15T10:00:00.123456789Z"),
            "2026-03-15T10:00:00.123456789Z"
        );
        assert_eq!(ok("2026-03-15T10:00:00.1Z"), "2026-03-15T10:00:00.100Z");
        assert_eq!(ok("2026-03-01T10:00:00-00:00"), "2026-03-01T10:00:00Z");
        assert_eq!(ok("2026-03-01T00:30:00+23:59"), "2026-02-28T00:31:00Z");
        assert_eq!(ok("2024-02-29T12:00:00Z"), "2024-02-29T12:00:00Z");
        assert_eq!(ok("2000-02-29T12:00:00Z"), "2000-02-29T12:00:00Z");
        assert_eq!(ok("2026-03-15T10:17:59Z"), "2026-03-15T10:17:59Z");
        assert_eq!(ok("2000-01-01T00:00:00Z"), "2000-01-01T00:00:00Z");
        assert_eq!(
            ok("2099-12-31T23:59:59.999999999Z"),
            "2099-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn refuses_what_a_general_parser_would_accept() {
        // The five inputs of issue 14, each billed before the strict parser.
        assert!(err("2026-03-15T10:00:00.1234567891Z").contains("1 to 9 digits"));
        assert!(err("2026-03-15 10:00:00Z").contains("upper-case T"));
        assert!(err("2026-03-15t10:00:00z").contains("upper-case T"));
        assert!(err("2026-03-15T10:17:60Z").contains("leap second"));
        assert!(err("2026-06-30T23:59:60Z").contains("leap second"));
        // Their kin.
        assert!(err("2026-03-15T10:00:00z").contains("upper-case Z"));
        assert!(err("2026-03-15T10:00:00.Z").contains("1 to 9 digits"));
        assert!(err("2026-03-15T10:00:00,5Z").contains("offset"));
        assert!(err("2026-03-15T10:00:00+01:00 ").contains("after the offset"));
        assert!(err(" 2026-03-15T10:00:00Z").contains("YYYY-MM-DD"));
        assert!(err("2026-03-15T10:00:00+0100").contains("offset"));
        assert!(err("2026-03-15T10:00:00+01").contains("offset"));
        assert!(err("2026-03-15T10:00:00+24:00").contains("offset hours"));
        assert!(err("2026-03-15T10:00:00+01:60").contains("offset hours"));
        assert!(err("2026-03-15T10:00Z").contains("hh:mm:ss"));
        assert!(err("2026-3-15T10:00:00Z").contains("YYYY-MM-DD"));
        assert!(err("2026-03-15T24:00:00Z").contains("hour"));
        assert!(err("2026-03-15T10:60:00Z").contains("minute"));
        assert!(err("2026-02-29T10:00:00Z").contains("calendar"));
        assert!(err("2100-02-29T10:00:00Z").contains("year"));
        assert!(err("2026-02-30T10:00:00Z").contains("calendar"));
        assert!(err("2026-04-31T10:00:00Z").contains("calendar"));
        assert!(err("2026-13-01T10:00:00Z").contains("calendar"));
        assert!(err("2026-00-10T10:00:00Z").contains("calendar"));
        assert!(err("2026-01-00T10:00:00Z").contains("calendar"));
        assert!(err("1999-12-31T23:59:59Z").contains("year"));
        assert!(err("1999-12-31T23:30:00-01:00").contains("year"));
        assert!(err("2000-01-01T00:30:00+01:00").contains("out of range"));
        assert!(err("2099-12-31T23:30:00-01:00").contains("out of range"));
        assert!(err("+2026-03-15T10:00:00Z").contains("YYYY-MM-DD"));
        assert!(err("２０２６-03-15T10:00:00Z").contains("YYYY-MM-DD"));
        assert!(err("").contains("YYYY-MM-DD"));
    }

    #[test]
    fn every_day_of_the_century_matches_the_calendar() {
        // Strict parsing agrees with chrono's calendar on each (year, month, day) written.
        for year in [2000u32, 2001, 2024, 2025, 2096, 2099] {
            for month in 0..=13u32 {
                for day in 0..=32u32 {
                    let s = format!("{year:04}-{month:02}-{day:02}T12:00:00Z");
                    let real = NaiveDate::from_ymd_opt(year as i32, month, day).is_some();
                    assert_eq!(parse_strict(&s).is_ok(), real, "{s}");
                }
            }
        }
    }
}
