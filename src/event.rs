//! Event contract v1: raw Kafka payload bytes in, a validated [`UsageEvent`] or a
//! [`Rejection`] naming the field and value out. No I/O, no panics on any input.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::rejection::{RejectReason, Rejection, excerpt};

mod fields;
pub mod scan;
pub mod timestamp;

pub(crate) use fields::has_control;
pub use fields::parse_timestamp;
use fields::{
    forbidden, id_field, optional_id, parse_kind, parse_quantities, parse_uint, required,
};

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
pub(crate) mod tests_scan;

#[cfg(test)]
mod tests;
