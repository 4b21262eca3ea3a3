//! Event contract v1: raw Kafka payload bytes in, a validated [`UsageEvent`] or a
//! [`Rejection`] naming the field and value out. No I/O, no panics on any input.

use std::borrow::Cow;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::money::LINE_COST_SCALE;
use crate::rejection::{RejectReason, Rejection, excerpt};

pub mod scan;
pub mod timestamp;

/// Default largest accepted payload, in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest id-like string, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest accepted quantity of one unit in one event.
pub const MAX_QUANTITY: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0); // 1e15
/// Largest `expected_calls`.
pub const MAX_EXPECTED_CALLS: u64 = 1_000_000;
/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    ModelCall,
    ToolCall,
    ExecutionFinished,
    /// Close marker the aggregator writes into the input partition itself (idle timeout).
    ExecutionTimeout,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ModelCall => "model_call",
            EventKind::ToolCall => "tool_call",
            EventKind::ExecutionFinished => "execution_finished",
            EventKind::ExecutionTimeout => "execution_timeout",
        }
    }

    pub fn is_call(self) -> bool {
        matches!(self, EventKind::ModelCall | EventKind::ToolCall)
    }
}

pub mod dimensions;
pub use dimensions::Dimensions;

/// Quantities of one event, in the order they were written.
pub type Quantities = SmallVec<[(String, Decimal); 2]>;

/// A validated usage event.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    pub kind: EventKind,
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub account_id: String,
    pub asset_id: Option<String>,
    pub execution_id: Option<String>,
    pub agent_id: Option<String>,
    pub component: Option<String>,
    pub quantities: Quantities,
    pub expected_calls: Option<u32>,
    pub after_offset: Option<i64>,
    /// Contract v1.1: analytics labels of a call, sorted by key; empty when not given.
    pub dimensions: Dimensions,
}

impl UsageEvent {
    /// Hash of the event's meaning (not its bytes): equal for the same content written with
    /// other key order or number spelling. Used to tell a retry from a conflicting duplicate.
    ///
    /// Every field is named below, without `..`: a field added to [`UsageEvent`] does not
    /// compile until it is hashed here (or ignored here with the reason). The bytes hashed
    /// must not change for existing fields: the duplicate memory of running partitions holds
    /// these hashes (a test pins one).
    pub fn content_hash(&self) -> u64 {
        let UsageEvent {
            kind,
            event_id,
            occurred_at,
            account_id,
            asset_id,
            execution_id,
            agent_id,
            component,
            quantities,
            expected_calls,
            after_offset,
            dimensions,
        } = self;
        // One-shot xxh3 over the concatenation (the same digest as streaming the parts, and
        // several times cheaper for ~20 short parts).
        let h = std::cell::RefCell::new(Vec::<u8>::with_capacity(512));
        let put_bytes = |b: &[u8]| h.borrow_mut().extend_from_slice(b);
        let put = |s: &str| {
            put_bytes(&(s.len() as u64).to_le_bytes());
            put_bytes(s.as_bytes());
        };
        put(kind.as_str());
        put(event_id);
        put(account_id);
        for f in [asset_id, execution_id, agent_id, component] {
            put(f.as_deref().unwrap_or("\u{0}"));
        }
        let mut q: SmallVec<[(&str, Decimal); 4]> = quantities
            .iter()
            .map(|(u, v)| (u.as_str(), v.normalize()))
            .collect();
        q.sort_by(|a, b| a.0.cmp(b.0));
        for (u, v) in q {
            put(u);
            put_bytes(&v.serialize());
        }
        put_bytes(&occurred_at.timestamp_micros().to_le_bytes());
        put_bytes(&expected_calls.map_or(-1, i64::from).to_le_bytes());
        put_bytes(&after_offset.unwrap_or(-1).to_le_bytes());
        // Dimensions are content: a retry with other dimensions is a conflicting duplicate.
        // Absent and `{}` hash alike, and as before v1.1.
        if !dimensions.is_empty() {
            put("dimensions");
            for (k, v) in dimensions {
                put(k);
                put(v);
            }
        }
        xxhash_rust::xxh3::xxh3_64(&h.borrow())
    }
}

/// Who wrote a message on the usage topic, as established outside the core (the pipeline
/// verifies the marker authentication header, see `crate::marker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Anyone with write access to the usage topic. May not send `execution_timeout`.
    Producer,
    /// The aggregator itself: a message whose marker authentication verified.
    Aggregator,
}

/// Hash of an id, for compact id memory.
pub fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// Raw text of each top-level field, value exactly as written; absent and `null` are `None`.
/// Filled by the fast splitter ([`scan::each_member`]) or, when it declines, by serde.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "raw_text")]
    kind: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    event_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    occurred_at: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    account_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    asset_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    execution_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    agent_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    component: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    quantities: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    expected_calls: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    after_offset: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    dimensions: Option<&'a str>,
}

/// A field's value as its raw JSON text (`null` is `None`).
fn raw_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
    Option::<&'de RawValue>::deserialize(d).map(|v| v.map(RawValue::get))
}

/// The fast path: the payload split by [`scan::object`], or `None` when the splitter declines
/// (or a key is not a contract field), leaving the decision to serde.
fn fast_fields(payload: &[u8]) -> Option<Wire<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut f = Wire::default();
    let mut seen = 0u16;
    scan::each_member(text, true, |key, value| {
        let (bit, slot) = match key {
            "type" => (0, &mut f.kind),
            "event_id" => (1, &mut f.event_id),
            "occurred_at" => (2, &mut f.occurred_at),
            "account_id" => (3, &mut f.account_id),
            "asset_id" => (4, &mut f.asset_id),
            "execution_id" => (5, &mut f.execution_id),
            "agent_id" => (6, &mut f.agent_id),
            "component" => (7, &mut f.component),
            "quantities" => (8, &mut f.quantities),
            "expected_calls" => (9, &mut f.expected_calls),
            "after_offset" => (10, &mut f.after_offset),
            "dimensions" => (11, &mut f.dimensions),
            _ => return None,
        };
        if seen & (1 << bit) != 0 {
            return None;
        }
        seen |= 1 << bit;
        *slot = (value != "null").then_some(value);
        Some(())
    })?;
    Some(f)
}

fn reject(reason: RejectReason, message: String) -> Rejection {
    Rejection::new(reason, message)
}

/// Decodes and validates one payload written by a producer: the reserved type
/// `execution_timeout` is refused as `unknown_event_type`.
pub fn decode(payload: &[u8], max_bytes: usize) -> Result<UsageEvent, Rejection> {
    decode_from(payload, max_bytes, Origin::Producer)
}

/// Decodes and validates one payload; `execution_timeout` is accepted only from
/// [`Origin::Aggregator`].
pub fn decode_from(
    payload: &[u8],
    max_bytes: usize,
    origin: Origin,
) -> Result<UsageEvent, Rejection> {
    if payload.len() > max_bytes {
        return Err(reject(
            RejectReason::Oversized,
            format!(
                "payload is {} bytes, the limit is {max_bytes}; split the event or raise rollup.max_event_bytes",
                payload.len()
            ),
        ));
    }
    let encoding = |payload: &[u8]| {
        std::str::from_utf8(payload).err().map(|e| {
            reject(
                RejectReason::InvalidEncoding,
                format!(
                    "payload is not utf-8 (invalid byte at position {})",
                    e.valid_up_to()
                ),
            )
        })
    };
    let first = payload
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(encoding(payload).unwrap_or_else(|| {
            reject(
                RejectReason::InvalidJson,
                format!(
                    "payload must be a json object, got {}",
                    excerpt(&String::from_utf8_lossy(payload))
                ),
            )
        }));
    }
    if let Some(fields) = fast_fields(payload) {
        return validate(&fields, origin);
    }
    // serde_json checks utf-8 inside strings; everything outside them is ascii by grammar.
    let wire: Wire<'_> = serde_json::from_slice(payload)
        .map_err(|e| encoding(payload).unwrap_or_else(|| classify_json_error(e)))?;
    validate(&wire, origin)
}

fn classify_json_error(e: serde_json::Error) -> Rejection {
    let msg = e.to_string();
    if e.is_data() {
        if let Some(rest) = msg.strip_prefix("unknown field ") {
            let field = rest.split(',').next().unwrap_or(rest);
            return reject(
                RejectReason::UnknownField,
                format!("unknown field {field}; contract v1.1 accepts only its documented fields"),
            );
        }
        if msg.starts_with("duplicate field") {
            return reject(RejectReason::DuplicateKey, msg);
        }
        if msg.starts_with("invalid type") {
            return reject(
                RejectReason::InvalidJson,
                format!("payload must be a json object: {msg}"),
            );
        }
    }
    reject(RejectReason::InvalidJson, format!("invalid json: {msg}"))
}

fn raw_excerpt(raw: &str) -> String {
    excerpt(raw)
}

fn required<'a>(field: &str, v: Option<&'a str>) -> Result<&'a str, Rejection> {
    v.ok_or_else(|| {
        reject(
            RejectReason::MissingField,
            format!("missing field {field} (absent or null)"),
        )
    })
}

fn forbidden(field: &str, v: Option<&str>, kind: EventKind) -> Result<(), Rejection> {
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

fn json_string<'a>(field: &str, raw: &'a str) -> Result<Cow<'a, str>, Rejection> {
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

fn id_field(field: &str, raw: &str) -> Result<String, Rejection> {
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

fn optional_id(field: &str, raw: Option<&str>) -> Result<Option<String>, Rejection> {
    raw.map(|r| id_field(field, r)).transpose()
}

fn parse_kind(raw: &str, origin: Origin) -> Result<EventKind, Rejection> {
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
fn parse_quantity(unit: &str, raw: &str) -> Result<Decimal, Rejection> {
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

fn parse_quantities(raw: &str) -> Result<Quantities, Rejection> {
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

fn parse_uint(field: &str, raw: &str, max: u64) -> Result<u64, Rejection> {
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

fn validate(w: &Wire<'_>, origin: Origin) -> Result<UsageEvent, Rejection> {
    let kind = parse_kind(required("type", w.kind)?, origin)?;
    let event_id = id_field("event_id", required("event_id", w.event_id)?)?;
    let occurred_at = parse_timestamp("occurred_at", required("occurred_at", w.occurred_at)?)?;
    let account_id = id_field("account_id", required("account_id", w.account_id)?)?;
    let asset_id = if kind.is_call() {
        Some(id_field("asset_id", required("asset_id", w.asset_id)?)?)
    } else {
        forbidden("asset_id", w.asset_id, kind)?;
        None
    };
    let execution_id = match kind {
        EventKind::ExecutionFinished | EventKind::ExecutionTimeout => Some(id_field(
            "execution_id",
            required("execution_id", w.execution_id)?,
        )?),
        _ => optional_id("execution_id", w.execution_id)?,
    };
    let agent_id = optional_id("agent_id", w.agent_id)?;
    let component = optional_id("component", w.component)?;
    let quantities = if kind.is_call() {
        parse_quantities(required("quantities", w.quantities)?)?
    } else {
        forbidden("quantities", w.quantities, kind)?;
        Quantities::new()
    };
    let dimensions = if kind.is_call() {
        w.dimensions
            .map(dimensions::parse)
            .transpose()?
            .unwrap_or_default()
    } else {
        forbidden("dimensions", w.dimensions, kind)?;
        Dimensions::new()
    };
    let expected_calls = if kind == EventKind::ExecutionFinished {
        w.expected_calls
            .map(|r| parse_uint("expected_calls", r, MAX_EXPECTED_CALLS))
            .transpose()?
            .map(|v| v as u32)
    } else {
        forbidden("expected_calls", w.expected_calls, kind)?;
        None
    };
    let after_offset = if kind == EventKind::ExecutionTimeout {
        Some(parse_uint(
            "after_offset",
            required("after_offset", w.after_offset)?,
            i64::MAX as u64,
        )? as i64)
    } else {
        forbidden("after_offset", w.after_offset, kind)?;
        None
    };
    Ok(UsageEvent {
        kind,
        event_id,
        occurred_at,
        account_id,
        asset_id,
        execution_id,
        agent_id,
        component,
        quantities,
        expected_calls,
        after_offset,
        dimensions,
    })
}

/// Encodes an idle-timeout close marker for the input partition.
pub fn encode_timeout_marker(
    execution_id: &str,
    account_id: &str,
    after_offset: i64,
    at: DateTime<Utc>,
) -> Vec<u8> {
    serde_json::json!({
        "type": "execution_timeout",
        "event_id": format!("timeout:{after_offset}:{}", crate::event::id_hash(execution_id)),
        "occurred_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "account_id": account_id,
        "execution_id": execution_id,
        "after_offset": after_offset,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests_scan;

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> UsageEvent {
        decode(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap()
    }
    fn err(s: &[u8]) -> Rejection {
        decode(s, DEFAULT_MAX_EVENT_BYTES).unwrap_err()
    }

    const CALL: &str = r#"{"type":"model_call","event_id":"e1","occurred_at":"2026-03-01T10:00:00+02:00","account_id":"acct","asset_id":"openai/gpt-4o-mini","execution_id":"x1","agent_id":"a","component":"planner","quantities":{"input_tokens":1200,"output_tokens":"350"}}"#;

    #[test]
    fn decodes_a_model_call() {
        let e = ok(CALL);
        assert_eq!(e.kind, EventKind::ModelCall);
        assert_eq!(e.occurred_at.to_rfc3339(), "2026-03-01T08:00:00+00:00");
        assert_eq!(e.execution_id.as_deref(), Some("x1"));
        assert_eq!(
            e.quantities[0],
            ("input_tokens".into(), Decimal::from(1200))
        );
        assert_eq!(
            e.quantities[1],
            ("output_tokens".into(), Decimal::from(350))
        );
    }

    #[test]
    fn null_execution_means_direct_use() {
        let e = ok(
            r#"{"type":"tool_call","event_id":"e","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","asset_id":"t","execution_id":null,"quantities":{"audio_minutes":"1.5"}}"#,
        );
        assert_eq!(e.execution_id, None);
        assert_eq!(e.quantities[0].1, Decimal::new(15, 1));
    }

    #[test]
    fn content_hash_ignores_key_order_and_number_spelling() {
        let a = ok(CALL);
        let b = ok(
            r#"{"quantities":{"output_tokens":350,"input_tokens":"1200.0"},"type":"model_call","event_id":"e1","occurred_at":"2026-03-01T08:00:00Z","account_id":"acct","asset_id":"openai/gpt-4o-mini","execution_id":"x1","agent_id":"a","component":"planner"}"#,
        );
        assert_eq!(a.content_hash(), b.content_hash());
        let c = ok(&CALL.replace("1200", "1201"));
        assert_ne!(a.content_hash(), c.content_hash());
    }

    #[test]
    fn content_hash_bytes_are_stable() {
        // Pinned: the duplicate memory in running partitions and snapshots holds these hashes,
        // so adding or reordering what is hashed for existing fields must fail here.
        let dims = r#"{"type":"tool_call","event_id":"e2","occurred_at":"2026-03-01T10:00:00Z","account_id":"acct","asset_id":"t","quantities":{"audio_minutes":"1.5"},"dimensions":{"team":"x","env":"prod"}}"#;
        let fin = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","expected_calls":3}"#;
        assert_eq!(ok(CALL).content_hash(), 0x0c5d_3951_e1d4_9a4a);
        assert_eq!(ok(dims).content_hash(), 0xc365_36ad_dbb1_89fc);
        assert_eq!(ok(fin).content_hash(), 0x0592_0878_61cc_4b98);
    }

    #[test]
    fn reasons_name_field_and_value() {
        let cases: &[(&str, RejectReason, &str)] = &[
            ("{", RejectReason::InvalidJson, "invalid json"),
            ("[1]", RejectReason::InvalidJson, "json object"),
            (
                &CALL.replace("\"agent_id\"", "\"colour\":1,\"agent_id\""),
                RejectReason::UnknownField,
                "colour",
            ),
            (
                &CALL.replace(
                    "\"account_id\":\"acct\",",
                    "\"account_id\":\"acct\",\"account_id\":\"b\",",
                ),
                RejectReason::DuplicateKey,
                "account_id",
            ),
            (
                &CALL.replace("\"event_id\":\"e1\",", ""),
                RejectReason::MissingField,
                "event_id",
            ),
            (
                &CALL.replace("\"e1\"", "5"),
                RejectReason::InvalidField,
                "event_id must be a string, got 5",
            ),
            (
                &CALL.replace("model_call", "gpu_call"),
                RejectReason::UnknownEventType,
                "gpu_call",
            ),
            (
                &CALL.replace("2026-03-01T10:00:00+02:00", "2026-03-01T10:00:00"),
                RejectReason::InvalidTimestamp,
                "2026-03-01T10:00:00",
            ),
            (
                &CALL.replace("2026-03-01T10:00:00+02:00", "2100-01-01T00:00:00Z"),
                RejectReason::InvalidTimestamp,
                "2000 to 2099",
            ),
            (
                &CALL.replace("1200", "-3"),
                RejectReason::InvalidQuantity,
                "negative",
            ),
            (
                &CALL.replace("1200", "\"NaN\""),
                RejectReason::InvalidQuantity,
                "NaN",
            ),
            (
                &CALL.replace("1200", "1e400"),
                RejectReason::InvalidQuantity,
                "1e400",
            ),
            (
                &CALL.replace("1200", "1e16"),
                RejectReason::InvalidQuantity,
                "1e15",
            ),
            (
                &CALL.replace("1200", "true"),
                RejectReason::InvalidQuantity,
                "true",
            ),
            (
                &CALL.replace("\"output_tokens\":\"350\"", "\"input_tokens\":1"),
                RejectReason::DuplicateKey,
                "input_tokens",
            ),
            (
                &CALL.replace("{\"input_tokens\":1200,\"output_tokens\":\"350\"}", "{}"),
                RejectReason::InvalidQuantity,
                "at least one",
            ),
            (
                &CALL.replace("\"acct\"", "\"\""),
                RejectReason::InvalidField,
                "account_id must not be empty",
            ),
        ];
        for (input, reason, needle) in cases {
            let r = err(input.as_bytes());
            assert_eq!(r.reason, *reason, "{input}: {}", r.message);
            assert!(r.message.contains(needle), "{input}: {}", r.message);
        }
    }

    #[test]
    fn dimensions_are_optional_bounded_and_part_of_the_content() {
        let plain = ok(CALL);
        assert!(plain.dimensions.is_empty());
        let with = |d: &str| {
            CALL.replace(
                "\"quantities\"",
                &format!("\"dimensions\":{d},\"quantities\""),
            )
        };
        let a = ok(&with(r#"{"project":"apollo","end_user":"u1"}"#));
        assert_eq!(a.dimensions.len(), 2);
        assert_eq!(a.dimensions["project"], "apollo");
        // Key order does not matter; `{}` and null are no dimensions, hashed as in v1.
        let b = ok(&with(r#"{"end_user":"u1","project":"apollo"}"#));
        assert_eq!(a.content_hash(), b.content_hash());
        assert_eq!(ok(&with("{}")).content_hash(), plain.content_hash());
        assert_eq!(ok(&with("null")).content_hash(), plain.content_hash());
        // Other dimensions are other content (a retry with them conflicts).
        let c = ok(&with(r#"{"end_user":"u1","project":"zeus"}"#));
        assert_ne!(a.content_hash(), c.content_hash());
        assert_ne!(a.content_hash(), plain.content_hash());
        // Moving a value between keys changes the hash too (length-prefixed parts).
        let d = ok(&with(r#"{"a":"bc"}"#));
        let e = ok(&with(r#"{"ab":"c"}"#));
        assert_ne!(d.content_hash(), e.content_hash());
        let r = err(with(r#"{"Project":"x"}"#).as_bytes());
        assert_eq!(r.reason, RejectReason::InvalidDimension);
        // Not allowed on execution_finished.
        let f = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","dimensions":{"project":"p"}}"#;
        let r = err(f.as_bytes());
        assert_eq!(r.reason, RejectReason::InvalidField);
        assert!(r.message.contains("dimensions"), "{}", r.message);
    }

    #[test]
    fn whole_units_are_not_the_decoders_business() {
        // 1.5 tokens decodes; the catalog says tokens are whole (rating::check_whole_units).
        let e = ok(&CALL.replace("1200", "1.5"));
        assert_eq!(e.quantities[0].1, Decimal::new(15, 1));
    }

    #[test]
    fn fractional_units_accept_decimals_but_not_too_many() {
        let ev = CALL
            .replace("input_tokens", "audio_minutes")
            .replace("1200", "0.25");
        assert_eq!(ok(&ev).quantities[0].1, Decimal::new(25, 2));
        let ev = ev.replace("0.25", "\"0.0000000000001\"");
        assert_eq!(err(ev.as_bytes()).reason, RejectReason::InvalidQuantity);
    }

    #[test]
    fn finish_rules() {
        let f = r#"{"type":"execution_finished","event_id":"f","occurred_at":"2026-03-01T10:00:00Z","account_id":"a","execution_id":"x","expected_calls":3}"#;
        assert_eq!(ok(f).expected_calls, Some(3));
        let r = err(f.replace("\"execution_id\":\"x\",", "").as_bytes());
        assert_eq!(r.reason, RejectReason::MissingField);
        let r = err(f.replace("3}", "\"3\"}").as_bytes());
        assert_eq!(r.reason, RejectReason::InvalidField);
        let r = err(f.replace("3}", "-1}").as_bytes());
        assert_eq!(r.reason, RejectReason::InvalidField);
        let r = err(f.replace("\"a\",", "\"a\",\"asset_id\":\"m\",").as_bytes());
        assert_eq!(r.reason, RejectReason::InvalidField);
    }

    #[test]
    fn size_and_encoding_come_first() {
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
        assert_eq!(err(big.as_bytes()).reason, RejectReason::Oversized);
        assert_eq!(
            err(b"{\"type\":\"\xff\"}").reason,
            RejectReason::InvalidEncoding
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(err(deep.as_bytes()).reason, RejectReason::InvalidJson);
    }

    #[test]
    fn timeout_marker_round_trips() {
        let at = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let m = encode_timeout_marker("x\"1", "a", 42, at);
        let e = decode_from(&m, DEFAULT_MAX_EVENT_BYTES, Origin::Aggregator).unwrap();
        assert_eq!(e.kind, EventKind::ExecutionTimeout);
        assert_eq!(e.execution_id.as_deref(), Some("x\"1"));
        assert_eq!(e.after_offset, Some(42));
        // The same bytes from a producer are refused: the type is reserved.
        let r = decode(&m, DEFAULT_MAX_EVENT_BYTES).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownEventType);
        assert!(r.message.contains("reserved"), "{}", r.message);
        // Type is checked first: a forged marker with other defects still names the type.
        let bad = String::from_utf8(m)
            .unwrap()
            .replace("2026-03-01T10:00:00.000Z", "soon");
        let r = decode(bad.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownEventType);
    }

    #[test]
    fn max_quantity_constant_is_1e15() {
        assert_eq!(MAX_QUANTITY, Decimal::from(1_000_000_000_000_000u64));
    }
}
