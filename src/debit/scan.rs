//! Fast decoder of the service's own debits: the bytes [`super::json::encode_debit`] writes
//! in, the same [`Debit`] `serde_json::from_slice` builds out, in one pass without serde's
//! visitors, `Decimal::from_str` or chrono's parser; or `None` for anything outside that
//! exact layout, which serde then decodes or refuses with its own message ([`decode`]).
//! Every stage after the pipeline reads every debit (ledger, spend alerts, ClickHouse sink,
//! live streams), so this is the one decoder they share (issue 25).
//!
//! Accepted: the encoder's field order and compact layout, strings without escapes or raw
//! control characters, decimals `-?(0|[1-9][0-9]*)(.[0-9]+)?` of at most 28 digit
//! characters (built as `Decimal::from_str` builds them: mantissa and scale as written,
//! `-0` read as zero without sign), integers without leading zeros, timestamps
//! `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` with a valid date and a second below 60, quantity keys
//! strictly increasing. Everything else (escapes, whitespace, other field orders, unknown
//! or repeated fields, leap seconds, years outside 0000-9999, longer decimals) answers
//! `None`. `None` never means "invalid": [`decode`] gives what serde gives for every input
//! (property-tested below on arbitrary and mutated debits).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::cursor::{Cur, DecimalText};
use super::{BreakdownLine, Components, CorrectionRef, Debit, DebitKind};
use crate::catalog::AssetType;

/// A debit message to its [`Debit`]: this file's fast path ([`scan`]), else serde, which
/// decides every error.
pub fn decode(bytes: &[u8]) -> Result<Debit, serde_json::Error> {
    match scan(bytes) {
        Some(d) => Ok(d),
        None => serde_json::from_slice(bytes),
    }
}

/// The debit in the encoder's layout, or `None` (serde decides).
pub fn scan(bytes: &[u8]) -> Option<Debit> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut c = Cur::new(text);
    c.lit(b"{\"debit_id\":")?;
    let debit_id = c.string()?;
    c.lit(b",\"kind\":")?;
    let kind = match c.str()? {
        "model_call" => DebitKind::ModelCall,
        "tool_call" => DebitKind::ToolCall,
        "agent_execution" => DebitKind::AgentExecution,
        "agent_execution_adjustment" => DebitKind::AgentExecutionAdjustment,
        "correction" => DebitKind::Correction,
        _ => return None,
    };
    c.lit(b",\"account_id\":")?;
    let account_id = c.string()?;
    c.lit(b",\"execution_id\":")?;
    let execution_id = if c.eat_lit(b"null") {
        None
    } else {
        Some(c.string()?)
    };
    c.lit(b",\"plan\":")?;
    let plan = c.string()?;
    let plan_version = c.optional(b",\"plan_version\":", Cur::string)?;
    c.lit(b",\"subtotal\":")?;
    let subtotal = c.decimal()?;
    c.lit(b",\"markup_rate\":")?;
    let markup_rate = c.decimal()?;
    c.lit(b",\"markup\":")?;
    let markup = c.decimal()?;
    c.lit(b",\"total\":")?;
    let total = c.decimal()?;
    c.lit(b",\"calls\":")?;
    let calls = u32::try_from(c.uint()?).ok()?;
    c.lit(b",\"first_event_at\":")?;
    let first_event_at = c.timestamp()?;
    c.lit(b",\"last_event_at\":")?;
    let last_event_at = c.timestamp()?;
    c.lit(b",\"breakdown\":[")?;
    let mut breakdown = Vec::new();
    if !c.eat(b']') {
        loop {
            breakdown.push(c.breakdown_line()?);
            if c.eat(b']') {
                break;
            }
            c.lit(b",")?;
        }
    }
    c.lit(b",\"components\":{\"models\":")?;
    let models = c.decimal()?;
    c.lit(b",\"tools\":")?;
    let tools = c.decimal()?;
    c.lit(b",\"markup\":")?;
    let component_markup = c.decimal()?;
    c.lit(b"}")?;
    let correction = c.optional(b",\"correction\":", Cur::correction)?;
    c.lit(b"}")?;
    if !c.at_end() {
        return None;
    }
    Some(Debit {
        debit_id,
        kind,
        account_id,
        execution_id,
        plan,
        plan_version,
        subtotal,
        markup_rate,
        markup,
        total,
        calls,
        first_event_at,
        last_event_at,
        breakdown,
        components: Components {
            models,
            tools,
            markup: component_markup,
        },
        correction,
    })
}

/// What only a debit has: its decimals as `Decimal`, breakdown lines, the correction.
trait DebitFields {
    fn decimal(&mut self) -> Option<Decimal>;
    fn breakdown_line(&mut self) -> Option<BreakdownLine>;
    fn correction(&mut self) -> Option<CorrectionRef>;
}

impl DebitFields for Cur<'_> {
    /// A decimal string as `Decimal::from_str` reads it (`rust_decimal::serde::str`): the
    /// digits as the mantissa, the fraction's length as the scale (trailing zeros kept), the
    /// sign (none on a zero). At most 28 digit characters, so nothing is rounded.
    fn decimal(&mut self) -> Option<Decimal> {
        let DecimalText { neg, whole, frac } = self.decimal_text()?;
        let mut m: i128 = 0;
        for &d in whole.iter().chain(frac) {
            m = m * 10 + i128::from(d - b'0');
        }
        let mut d = Decimal::try_from_i128_with_scale(m, u32::try_from(frac.len()).ok()?).ok()?;
        // `from_str` builds through `Decimal::from_parts`, which drops the sign of a zero.
        d.set_sign_negative(neg && m != 0);
        Some(d)
    }

    fn breakdown_line(&mut self) -> Option<BreakdownLine> {
        self.lit(b"{\"asset_id\":")?;
        let asset_id = self.string()?;
        self.lit(b",\"asset_type\":")?;
        let asset_type = match self.str()? {
            "model" => AssetType::Model,
            "tool" => AssetType::Tool,
            "integration" => AssetType::Integration,
            _ => return None,
        };
        let price_version = self
            .optional(b",\"price_version\":", Cur::string)?
            .unwrap_or_default();
        self.lit(b",\"calls\":")?;
        let calls = u32::try_from(self.uint()?).ok()?;
        self.lit(b",\"quantities\":{")?;
        let mut quantities = BTreeMap::new();
        let mut last: Option<&str> = None;
        if !self.eat(b'}') {
            loop {
                let k = self.str()?;
                if last.is_some_and(|l| l >= k) {
                    return None; // serde's map would sort or merge
                }
                last = Some(k);
                self.lit(b":")?;
                quantities.insert(k.to_string(), self.decimal()?);
                if self.eat(b'}') {
                    break;
                }
                self.lit(b",")?;
            }
        }
        self.lit(b",\"cost\":")?;
        let cost = self.decimal()?;
        self.lit(b"}")?;
        Some(BreakdownLine {
            asset_id,
            asset_type,
            price_version,
            calls,
            quantities,
            cost,
        })
    }

    fn correction(&mut self) -> Option<CorrectionRef> {
        self.lit(b"{\"correction_id\":")?;
        let correction_id = self.string()?;
        self.lit(b",\"reason\":")?;
        let reason = self.string()?;
        self.lit(b",\"corrects\":[")?;
        let mut corrects = Vec::new();
        if !self.eat(b']') {
            loop {
                corrects.push(self.string()?);
                if self.eat(b']') {
                    break;
                }
                self.lit(b",")?;
            }
        }
        self.lit(b"}")?;
        Some(CorrectionRef {
            correction_id,
            reason,
            corrects,
        })
    }
}

#[cfg(test)]
#[path = "tests_scan.rs"]
mod tests;
