//! Fast path of the sink's `priced_usage` decoder: the bytes of a priced line as
//! `debit::json::encode_line` writes them in; the ClickHouse row out, in one pass, without
//! serde, `Decimal` or chrono's parser; or `None` for anything outside that exact layout,
//! which the serde path ([`super::rows::transaction_row_serde`]) then decodes or refuses with its
//! own message.
//!
//! Accepted: the encoder's field order and compact layout, strings without escapes or raw
//! control characters, decimals `-?(0|[1-9][0-9]*)(.[0-9]+)?` of at most 28 digits that fit
//! the column's scale, integers without leading zeros (`-0` is serde's float, refused),
//! timestamps `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` with a valid date and a second below 60,
//! dimension keys strictly increasing. Everything else (escapes, whitespace, other field
//! orders, unknown or repeated fields, `null` where the encoder never writes one, leap
//! seconds, years outside 0000-9999, decimals needing rounding) answers `None`. `None` never
//! means "invalid": both paths give the same row or the same refusal for every input
//! (property-tested below on arbitrary and mutated lines).

use super::rows::{RowError, Source, TransactionRow, transaction_row_serde, ts};
use crate::money::LINE_COST_SCALE;

/// A `priced_usage` message to its id and row: this file's fast path ([`scan`]), else serde,
/// which decides every error.
pub fn transaction_row(bytes: &[u8], src: Source) -> Result<(String, TransactionRow), RowError> {
    match scan(bytes, src) {
        Some(r) => Ok(r),
        None => transaction_row_serde(bytes, src),
    }
}

/// The row of a priced line in the encoder's layout, or `None` (the serde path decides).
pub fn scan(bytes: &[u8], src: Source) -> Option<(String, TransactionRow)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut c = Cur { s: text, i: 0 };
    c.lit(b"{\"event_id\":")?;
    let event_id = c.str()?;
    c.lit(b",\"kind\":")?;
    let kind = match c.str()? {
        k @ ("model_call" | "tool_call") => k,
        _ => return None,
    };
    c.lit(b",\"occurred_at\":")?;
    let (secs, nanos) = c.timestamp()?;
    c.lit(b",\"account_id\":")?;
    let account_id = c.str()?;
    c.lit(b",\"execution_id\":")?;
    let execution_id = c.opt_str()?;
    c.lit(b",\"agent_id\":")?;
    let agent_id = c.opt_str()?;
    c.lit(b",\"component\":")?;
    let component = c.opt_str()?;
    c.lit(b",\"asset_id\":")?;
    let asset_id = c.str()?;
    let asset_name_sent = c.optional(b",\"asset_name_sent\":", Cur::str)?;
    c.lit(b",\"asset_type\":")?;
    let asset_type = match c.str()? {
        t @ ("model" | "tool" | "integration") => t,
        _ => return None,
    };
    c.lit(b",\"vendor\":")?;
    let vendor = c.str()?;
    c.lit(b",\"price_version\":")?;
    let price_version = c.str()?;
    let tier = c.optional(b",\"tier\":", Cur::str)?;
    c.lit(b",\"plan\":")?;
    let plan = c.str()?;
    let plan_version = c.optional(b",\"plan_version\":", Cur::str)?;
    let plan_rule = c.optional(b",\"plan_rule\":", Cur::str)?;
    let discount = c.optional(b",\"discount_percent\":", Cur::decimal)?;
    c.lit(b",\"units\":[")?;
    let (mut units, mut quantities, mut credits, mut per) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if !c.eat(b']') {
        loop {
            c.lit(b"{\"unit\":")?;
            units.push(c.str()?.to_string());
            c.lit(b",\"quantity\":")?;
            quantities.push(c.decimal()?);
            c.lit(b",\"credits\":")?;
            credits.push(c.decimal()?);
            c.lit(b",\"per\":")?;
            per.push(c.uint()?);
            c.lit(b"}")?;
            if c.eat(b']') {
                break;
            }
            c.lit(b",")?;
        }
    }
    c.lit(b",\"cost\":")?;
    let cost = c.decimal()?;
    let (mut dim_keys, mut dim_values) = (Vec::<String>::new(), Vec::new());
    if c.eat_lit(b",\"dimensions\":{") && !c.eat(b'}') {
        loop {
            let k = c.str()?;
            if dim_keys.last().is_some_and(|last| last.as_str() >= k) {
                return None; // serde's map would sort and merge
            }
            c.lit(b":")?;
            dim_keys.push(k.to_string());
            dim_values.push(c.str()?.to_string());
            if c.eat(b'}') {
                break;
            }
            c.lit(b",")?;
        }
    }
    c.lit(b",\"event_partition\":")?;
    let event_partition = i32::try_from(c.int()?).ok()?;
    c.lit(b",\"event_offset\":")?;
    let event_offset = c.int()?;
    c.lit(b"}")?;
    if c.i != text.len() {
        return None;
    }
    let execution = execution_id.unwrap_or_default();
    let id = crate::debit::line_id(account_id, execution, event_id);
    let row = TransactionRow {
        event_id: event_id.to_string(),
        kind: kind.to_string(),
        occurred_at: ts(secs),
        occurred_at_nanos: nanos,
        account_id: account_id.to_string(),
        execution_id: execution.to_string(),
        agent_id: agent_id.unwrap_or_default().to_string(),
        component: component.unwrap_or_default().to_string(),
        dimension_keys: dim_keys,
        dimension_values: dim_values,
        asset_id: asset_id.to_string(),
        asset_name_sent: asset_name_sent.unwrap_or(asset_id).to_string(),
        asset_type: asset_type.to_string(),
        vendor: vendor.to_string(),
        units,
        quantities,
        unit_credits: credits,
        unit_per: per,
        cost,
        price_version: price_version.to_string(),
        tier: tier.unwrap_or_default().to_string(),
        plan: plan.to_string(),
        plan_version: plan_version.unwrap_or_default().to_string(),
        plan_rule: plan_rule.unwrap_or_default().to_string(),
        discount_percent: discount.unwrap_or(0),
        event_partition,
        event_offset,
        src_partition: src.partition,
        src_offset: src.offset,
        ingested_at: src.ingested_at,
    };
    Some((id, row))
}

/// A position in the text being decoded.
struct Cur<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cur<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.s.as_bytes()[self.i..]
    }

    /// Consumes `l` exactly, or declines.
    fn lit(&mut self, l: &[u8]) -> Option<()> {
        self.eat_lit(l).then_some(())
    }

    fn eat_lit(&mut self, l: &[u8]) -> bool {
        let hit = self.rest().starts_with(l);
        if hit {
            self.i += l.len();
        }
        hit
    }

    fn eat(&mut self, b: u8) -> bool {
        self.eat_lit(&[b])
    }

    /// An optional member: absent (`Some(None)`), present and decoded (`Some(Some(v))`), or
    /// present and declined (`None`).
    fn optional<T>(
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
    fn str(&mut self) -> Option<&'a str> {
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

    fn opt_str(&mut self) -> Option<Option<&'a str>> {
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

    fn uint(&mut self) -> Option<u64> {
        match self.digits()? {
            (false, v) => Some(v),
            _ => None,
        }
    }

    fn int(&mut self) -> Option<i64> {
        match self.digits()? {
            (false, v) => i64::try_from(v).ok(),
            // serde_json reads `-0` as a float.
            (true, 0) => None,
            (true, v) => 0i64.checked_sub_unsigned(v),
        }
    }

    /// A decimal string as the scaled integer of a `Decimal(38, LINE_COST_SCALE)` column:
    /// the value `to_scaled_i128(Decimal::from_str(s), LINE_COST_SCALE)` gives; `None` when
    /// that would be an error or the text is not in the encoder's form.
    fn decimal(&mut self) -> Option<i128> {
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
        // `to_scaled_i128` normalizes first: trailing zeros of the fraction do not count.
        let kept = frac.len() - frac.iter().rev().take_while(|&&d| d == b'0').count();
        let scale = u32::try_from(kept).ok()?;
        if scale > LINE_COST_SCALE {
            return None;
        }
        let mut v: i128 = 0;
        for &d in whole.iter().chain(&frac[..kept]) {
            v = v * 10 + i128::from(d - b'0');
        }
        let v = v.checked_mul(10i128.pow(LINE_COST_SCALE - scale))?;
        self.i += end + 1;
        Some(if neg { -v } else { v })
    }

    /// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` as (Unix seconds, nanoseconds).
    fn timestamp(&mut self) -> Option<(i64, u32)> {
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
        Some((at.and_utc().timestamp(), nanos))
    }
}
