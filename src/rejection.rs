//! Why an event was not billed: a stable reason code plus a message naming field and value.

use serde::{Deserialize, Serialize};

/// Stable reason codes; they appear on the dead-letter topic, in ClickHouse and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Oversized,
    InvalidEncoding,
    InvalidJson,
    DuplicateKey,
    UnknownField,
    MissingField,
    InvalidField,
    UnknownEventType,
    InvalidTimestamp,
    InvalidQuantity,
    /// Contract v1.1: the `dimensions` object breaks its rules.
    InvalidDimension,
    UnknownAsset,
    NoPriceAtTime,
    UnknownUnit,
    AccountMismatch,
    ConflictingDuplicate,
    /// The ClickHouse sink could not store an output row (data refused by the server).
    SinkRejected,
    /// Ledger: a grant's account id is not a valid id string.
    InvalidAccount,
    /// Ledger: an amount that is not a decimal, has the wrong sign, too many decimals, or
    /// would take a balance out of its exact range.
    InvalidAmount,
    /// Ledger: a top-up below `ledger.min_topup`.
    TopupBelowMinimum,
    /// Ledger: a grant whose `expires_at` the ledger's clock has already reached.
    AlreadyExpired,
}

impl RejectReason {
    pub const ALL: [RejectReason; 21] = [
        RejectReason::Oversized,
        RejectReason::InvalidEncoding,
        RejectReason::InvalidJson,
        RejectReason::DuplicateKey,
        RejectReason::UnknownField,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::UnknownEventType,
        RejectReason::InvalidTimestamp,
        RejectReason::InvalidQuantity,
        RejectReason::InvalidDimension,
        RejectReason::UnknownAsset,
        RejectReason::NoPriceAtTime,
        RejectReason::UnknownUnit,
        RejectReason::AccountMismatch,
        RejectReason::ConflictingDuplicate,
        RejectReason::SinkRejected,
        RejectReason::InvalidAccount,
        RejectReason::InvalidAmount,
        RejectReason::TopupBelowMinimum,
        RejectReason::AlreadyExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::InvalidEncoding => "invalid_encoding",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::DuplicateKey => "duplicate_key",
            RejectReason::UnknownField => "unknown_field",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::InvalidQuantity => "invalid_quantity",
            RejectReason::InvalidDimension => "invalid_dimension",
            RejectReason::UnknownAsset => "unknown_asset",
            RejectReason::NoPriceAtTime => "no_price_at_time",
            RejectReason::UnknownUnit => "unknown_unit",
            RejectReason::AccountMismatch => "account_mismatch",
            RejectReason::ConflictingDuplicate => "conflicting_duplicate",
            RejectReason::SinkRejected => "sink_rejected",
            RejectReason::InvalidAccount => "invalid_account",
            RejectReason::InvalidAmount => "invalid_amount",
            RejectReason::TopupBelowMinimum => "topup_below_minimum",
            RejectReason::AlreadyExpired => "already_expired",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision not to bill one event: reason and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

/// A short, printable excerpt of an offending value for error messages.
pub fn excerpt(value: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = value
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// The dead-letter record of a rejected event: deterministic (no wall-clock field), so a
/// replay after a crash produces the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: RejectReason,
    pub message: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl DeadLetter {
    pub fn new(
        rejection: &Rejection,
        payload: &[u8],
        source_topic: &str,
        source_partition: i32,
        source_offset: i64,
    ) -> Self {
        use base64::Engine;
        let (text, b64) = match std::str::from_utf8(payload) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        };
        DeadLetter {
            reason: rejection.reason,
            message: rejection.message.clone(),
            source_topic: source_topic.to_owned(),
            source_partition,
            source_offset,
            payload: text,
            payload_base64: b64,
        }
    }

    /// Stable id: where the rejected event sits in its source topic.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.source_topic, self.source_partition, self.source_offset
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_serde() {
        for r in RejectReason::ALL {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(s, format!("\"{}\"", r.as_str()));
            let back: RejectReason = serde_json::from_str(&s).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn dead_letter_keeps_non_utf8_payload_as_base64() {
        let rej = Rejection::new(RejectReason::InvalidEncoding, "not utf-8");
        let dl = DeadLetter::new(&rej, b"\xff\xfe{}", "usage_events", 2, 17);
        assert_eq!(dl.payload, None);
        assert_eq!(dl.payload_base64.as_deref(), Some("//57fQ=="));
        assert_eq!(dl.id(), "usage_events/2/17");
    }

    #[test]
    fn excerpt_truncates_and_hides_control_chars() {
        assert_eq!(excerpt("a\nb"), "a?b");
        assert_eq!(excerpt(&"x".repeat(100)).chars().count(), 65);
    }
}
