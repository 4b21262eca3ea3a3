//! The cursor of the fast decoders of the service's own messages: [`super::scan`] (debits)
//! and the ClickHouse sink's priced-line scanner (`sink::line_scan`). Each reads the exact
//! compact layout its encoder (`super::json`) writes and answers `None` for anything else,
//! so serde decides every other input; the pieces here are what both layouts share.

use chrono::{DateTime, Utc};

/// A position in the text being decoded.
pub(crate) struct Cur<'a> {
    s: &'a str,
    i: usize,
}

/// A decimal string's parts, checked: `-?(0|[1-9][0-9]*)(.[0-9]+)?`, at most 28 digits.
pub(crate) struct DecimalText<'a> {
    pub neg: bool,
    pub whole: &'a [u8],
    pub frac: &'a [u8],
}

impl<'a> Cur<'a> {
    pub fn new(s: &'a str) -> Self {
        Cur { s, i: 0 }
    }

    /// True once the whole text is read.
    pub fn at_end(&self) -> bool {
        self.i == self.s.len()
    }

    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.i..]
    }

    /// Consumes `l` exactly, or declines.
    pub fn lit(&mut self, l: &[u8]) -> Option<()> {
        self.eat_lit(l).then_some(())
    }

    pub fn eat_lit(&mut self, l: &[u8]) -> bool {
        let hit = self.rest().starts_with(l);
        if hit {
            self.i += l.len();
        }
        hit
    }

    pub fn eat(&mut self, b: u8) -> bool {
        self.eat_lit(&[b])
    }

    /// An optional member: absent (`Some(None)`), present and decoded (`Some(Some(v))`), or
    /// present and declined (`None`).
    pub fn optional<T>(
        &mut self,
        key: &[u8],
        value: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        if self.eat_lit(key) {
            value(self).map(Some)
        } else {
            Some(None)
        }
    }

    /// A string without escapes or raw control characters.
    pub fn str(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let rest = self.rest();
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' || rest[..end].iter().any(|&b| b < 0x20) {
            return None;
        }
        let start = self.i;
        self.i += end + 1;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        Some(&self.s[start..start + end])
    }

    pub fn string(&mut self) -> Option<String> {
        self.str().map(str::to_string)
    }

    /// `null` or a string ([`Cur::str`]).
    pub fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.eat_lit(b"null") {
            return Some(None);
        }
        self.str().map(Some)
    }

    /// `-?(0|[1-9][0-9]*)`: the digits' value and sign; `None` past `u64`.
    fn digits(&mut self) -> Option<(bool, u64)> {
        let neg = self.eat(b'-');
        let rest = self.rest();
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || (n > 1 && rest[0] == b'0') || n > 20 {
            return None;
        }
        let mut v: u64 = 0;
        for &d in &rest[..n] {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += n;
        Some((neg, v))
    }

    /// `0|[1-9][0-9]*` as a `u64`; `None` past it or with a sign.
    pub fn uint(&mut self) -> Option<u64> {
        match self.digits()? {
            (false, v) => Some(v),
            _ => None,
        }
    }

    /// `-?(0|[1-9][0-9]*)` as an `i64`; `-0` is refused (serde_json reads it as a float).
    pub fn int(&mut self) -> Option<i64> {
        match self.digits()? {
            (false, v) => i64::try_from(v).ok(),
            (true, 0) => None,
            (true, v) => 0i64.checked_sub_unsigned(v),
        }
    }

    /// A quoted decimal `-?(0|[1-9][0-9]*)(.[0-9]+)?` of at most 28 digit characters, as its
    /// parts; each decoder builds its own value from them.
    pub fn decimal_text(&mut self) -> Option<DecimalText<'a>> {
        self.lit(b"\"")?;
        let rest = self.rest();
        let end = memchr::memchr(b'"', rest)?;
        let text = &rest[..end];
        let (neg, body) = match text.split_first() {
            Some((b'-', body)) => (true, body),
            _ => (false, text),
        };
        let (whole, frac) = match memchr::memchr(b'.', body) {
            Some(dot) => (&body[..dot], &body[dot + 1..]),
            None => (body, &body[..0]),
        };
        let valid = |d: &[u8]| d.iter().all(u8::is_ascii_digit);
        if whole.is_empty()
            || (whole.len() > 1 && whole[0] == b'0')
            || !valid(whole)
            || !valid(frac)
            || (frac.is_empty() && body.len() != whole.len())
            || whole.len() + frac.len() > 28
        {
            return None;
        }
        self.i += end + 1;
        Some(DecimalText { neg, whole, frac })
    }

    /// `"YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z"` with a valid date and a second below 60.
    pub fn timestamp(&mut self) -> Option<DateTime<Utc>> {
        self.lit(b"\"")?;
        let r = self.rest();
        if r.len() < 21 {
            return None;
        }
        let num = |a: usize, b: usize| -> Option<u32> {
            r[a..b].iter().try_fold(0u32, |v, &d| {
                d.is_ascii_digit().then(|| v * 10 + u32::from(d - b'0'))
            })
        };
        let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
        if seps.iter().any(|&(i, c)| r[i] != c) {
            return None;
        }
        let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
        let (h, mi, s) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        let mut i = 19;
        let mut nanos = 0;
        if r[i] == b'.' {
            let n = r[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return None;
            }
            nanos = num(i + 1, i + 1 + n)? * 10u32.pow(9 - n as u32);
            i += 1 + n;
        }
        if r.get(i..i + 2) != Some(b"Z\"") || s >= 60 {
            return None;
        }
        let at =
            chrono::NaiveDate::from_ymd_opt(y as i32, mo, d)?.and_hms_nano_opt(h, mi, s, nanos)?;
        self.i += i + 2;
        Some(at.and_utc())
    }
}
