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
use crate::debit::cursor::{Cur, DecimalText};
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
    let mut c = Cur::new(text);
    c.lit(b"{\"event_id\":")?;
    let event_id = c.str()?;
    c.lit(b",\"kind\":")?;
    let kind = match c.str()? {
        k @ ("model_call" | "tool_call") => k,
        _ => return None,
    };
    c.lit(b",\"occurred_at\":")?;
    let at = c.timestamp()?;
    let (secs, nanos) = (at.timestamp(), at.timestamp_subsec_nanos());
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
    if !c.at_end() {
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

/// What only a priced line's row needs: decimals as the column's scaled integer.
trait LineFields {
    fn decimal(&mut self) -> Option<i128>;
}

impl LineFields for Cur<'_> {
    /// A decimal string as the scaled integer of a `Decimal(38, LINE_COST_SCALE)` column:
    /// the value `to_scaled_i128(Decimal::from_str(s), LINE_COST_SCALE)` gives; `None` when
    /// that would be an error or the text is not in the encoder's form.
    fn decimal(&mut self) -> Option<i128> {
        let DecimalText { neg, whole, frac } = self.decimal_text()?;
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
        Some(if neg { -v } else { v })
    }
}
