//! Field-level parsing of the event contract: one raw JSON member text in, a typed value or a
//! [`Rejection`] naming the field and value out (ids, kinds, timestamps, quantities, counts).

use std::borrow::Cow;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{EventKind, MAX_ID_BYTES, MAX_QUANTITY, Origin, Quantities, reject, scan, timestamp};
use crate::money::LINE_COST_SCALE;
use crate::rejection::{RejectReason, Rejection, excerpt};

pub(super) fn raw_excerpt(raw: &str) -> String {
    excerpt(raw)
}

pub(super) fn required<'a>(field: &str, v: Option<&'a str>) -> Result<&'a str, Rejection> {
    v.ok_or_else(|| {
        reject(
            RejectReason::MissingField,
            format!("missing field {field} (absent or null)"),
        )
    })
}

pub(super) fn forbidden(field: &str, v: Option<&str>, kind: EventKind) -> Result<(), Rejection> {
    match v {
        None => Ok(()),
        Some(raw) => Err(reject(
            RejectReason::InvalidField,
            format!(
                "field {field} is not allowed on {} events (got {})",
                kind.as_str(),
                raw_excerpt(raw)
            ),
        )),
    }
}

pub(super) fn json_string<'a>(field: &str, raw: &'a str) -> Result<Cow<'a, str>, Rejection> {
    let text = raw;
    if !text.starts_with('"') {
        return Err(reject(
            RejectReason::InvalidField,
            format!("field {field} must be a string, got {}", excerpt(text)),
        ));
    }
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| {
            reject(
                RejectReason::InvalidField,
                format!("field {field} is not a valid string: {e}"),
            )
        })
}

/// True when `s` holds a control character (`char::is_control`, Unicode category Cc).
/// Printable ASCII, the common case, is decided by one byte scan.
pub(crate) fn has_control(s: &str) -> bool {
    !s.bytes().all(|b| (0x20..0x7f).contains(&b)) && s.chars().any(char::is_control)
}

pub(super) fn id_field(field: &str, raw: &str) -> Result<String, Rejection> {
    let s = json_string(field, raw)?;
    if s.is_empty() {
        return Err(reject(
            RejectReason::InvalidField,
            format!("field {field} must not be empty"),
        ));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(reject(
            RejectReason::InvalidField,
            format!(
                "field {field} is {} bytes, the limit is {MAX_ID_BYTES} (value {})",
                s.len(),
                excerpt(&s)
            ),
        ));
    }
    if has_control(&s) {
        return Err(reject(
            RejectReason::InvalidField,
            format!(
                "field {field} contains control characters (value {})",
                excerpt(&s)
            ),
        ));
    }
    Ok(s.into_owned())
}

pub(super) fn optional_id(field: &str, raw: Option<&str>) -> Result<Option<String>, Rejection> {
    raw.map(|r| id_field(field, r)).transpose()
}

pub(super) fn parse_kind(raw: &str, origin: Origin) -> Result<EventKind, Rejection> {
    let s = json_string("type", raw).map_err(|_| {
        reject(
            RejectReason::UnknownEventType,
            format!(
                "field type must be a string event type, got {}",
                raw_excerpt(raw)
            ),
        )
    })?;
    match s.as_ref() {
        "model_call" => Ok(EventKind::ModelCall),
        "tool_call" => Ok(EventKind::ToolCall),
        "execution_finished" => Ok(EventKind::ExecutionFinished),
        "execution_timeout" if origin == Origin::Aggregator => Ok(EventKind::ExecutionTimeout),
        "execution_timeout" => Err(reject(
            RejectReason::UnknownEventType,
            "field type execution_timeout is reserved for the aggregator's own close markers (this message carries no valid marker authentication); send execution_finished".to_string(),
        )),
        other => Err(reject(
            RejectReason::UnknownEventType,
            format!(
                "field type has unknown value {}; expected model_call, tool_call or execution_finished",
                excerpt(other)
            ),
        )),
    }
}

/// Parses `occurred_at` by the contract's strict grammar ([`timestamp::parse_strict`]).
pub fn parse_timestamp(field: &str, raw: &str) -> Result<DateTime<Utc>, Rejection> {
    let s = json_string(field, raw).map_err(|_| {
        reject(
            RejectReason::InvalidTimestamp,
            format!(
                "field {field} must be an RFC 3339 string with offset, got {}",
                raw_excerpt(raw)
            ),
        )
    })?;
    timestamp::parse_strict(&s).map_err(|e| {
        reject(
            RejectReason::InvalidTimestamp,
            format!(
                "field {field} is not a contract timestamp such as 2026-03-01T10:00:00Z ({e}): {}",
                excerpt(&s)
            ),
        )
    })
}

/// Parses one quantity: a JSON number or a decimal string, non-negative, exact.
pub(super) fn parse_quantity(unit: &str, raw: &str) -> Result<Decimal, Rejection> {
    let text = raw;
    let bad = |why: &str| {
        reject(
            RejectReason::InvalidQuantity,
            format!("quantities.{} {why}, got {}", excerpt(unit), excerpt(text)),
        )
    };
    let literal: Cow<'_, str> = if text.starts_with('"') {
        let s =
            json_string("quantity", raw).map_err(|_| bad("must be a number or decimal string"))?;
        let plain = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && s.bytes().filter(|b| *b == b'.').count() <= 1
            && !s.starts_with('.')
            && !s.ends_with('.')
            && !(s.len() > 1 && s.starts_with('0') && !s.starts_with("0."));
        if !plain {
            return Err(bad(
                "must be a plain decimal string (digits and one point, no sign or exponent)",
            ));
        }
        s
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Cow::Borrowed(text)
    } else {
        return Err(bad("must be a number or decimal string"));
    };
    let lit = literal.trim();
    if lit.is_empty()
        || !lit
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return Err(bad("must be a finite decimal number"));
    }
    let value = if lit.contains(['e', 'E']) {
        Decimal::from_scientific(lit)
    } else {
        Decimal::from_str_exact(lit)
    }
    .map_err(|_| bad("is not a representable decimal (at most 1e15, 12 decimals)"))?
    .normalize();
    if value.is_sign_negative() && !value.is_zero() {
        return Err(bad("must not be negative"));
    }
    if value > MAX_QUANTITY {
        return Err(bad("exceeds the limit of 1e15"));
    }
    if value.scale() > LINE_COST_SCALE {
        return Err(bad("has more than 12 decimals"));
    }
    // Whether the unit takes only whole numbers is catalog data, checked by
    // `rating::check_whole_units` once the catalog is known.
    Ok(value.abs())
}

pub(super) fn parse_quantities(raw: &str) -> Result<Quantities, Rejection> {
    if !raw.starts_with('{') {
        return Err(reject(
            RejectReason::InvalidQuantity,
            format!(
                "field quantities must be an object of unit to quantity, got {}",
                raw_excerpt(raw)
            ),
        ));
    }
    let map = scan::nested_object(
        raw,
        "unit",
        "an object of unit name to quantity",
        usize::MAX,
    )
    .map_err(|e| {
        let m = e.to_string();
        if m.starts_with("duplicate unit") {
            reject(
                RejectReason::DuplicateKey,
                format!("quantities: {}", m.split(" at line").next().unwrap_or(&m)),
            )
        } else {
            reject(
                RejectReason::InvalidQuantity,
                format!("field quantities is not a valid object: {m}"),
            )
        }
    })?;
    if map.is_empty() {
        return Err(reject(
            RejectReason::InvalidQuantity,
            "field quantities must name at least one unit".to_string(),
        ));
    }
    let mut out = Quantities::with_capacity(map.len());
    for (unit, v) in map {
        if unit.is_empty() || unit.len() > MAX_ID_BYTES || has_control(&unit) {
            return Err(reject(
                RejectReason::InvalidQuantity,
                format!("quantities has an invalid unit name {}", excerpt(&unit)),
            ));
        }
        let q = parse_quantity(&unit, v)?;
        out.push((unit.into_owned(), q));
    }
    Ok(out)
}

pub(super) fn parse_uint(field: &str, raw: &str, max: u64) -> Result<u64, Rejection> {
    let text = raw;
    u64::from_str(text)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| {
            reject(
                RejectReason::InvalidField,
                format!(
                    "field {field} must be a whole number from 0 to {max}, got {}",
                    excerpt(text)
                ),
            )
        })
}
