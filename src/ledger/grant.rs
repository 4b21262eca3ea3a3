//! Credit grants: the JSON of the `credit_grants` topic in, a validated [`Grant`] (or a
//! [`Rejection`] with its reason code) out. Pure; the CLI, the HTTP API and the ledger stage
//! all validate with these functions, so a refusal reads the same everywhere.
//!
//! Wire form (keyed by `account_id` on the topic; amounts are decimal strings):
//! `{"grant_id":"pay_123","kind":"topup","account_id":"acct-1","amount":"25.00",
//!   "occurred_at":"2026-03-01T10:00:00Z"}`; `kind` is `topup`, `voucher` or `adjustment`
//! (which needs a `reason`); voucher grants carry `voucher` (masked code and short hash).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::MAX_ID_BYTES;
use crate::money::DEBIT_SCALE;
use crate::rejection::{RejectReason, Rejection, excerpt};

/// Largest amount of one grant, credits (either sign).
pub const MAX_GRANT_AMOUNT: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0); // 1e12

/// Where credits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// A purchase; `grant_id` is the payment reference.
    Topup,
    /// A voucher redemption decided by the voucher stage.
    Voucher,
    /// An operator correction, positive or negative, with a reason.
    Adjustment,
}

impl GrantKind {
    pub const ALL: [GrantKind; 3] = [GrantKind::Topup, GrantKind::Voucher, GrantKind::Adjustment];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Topup => "topup",
            GrantKind::Voucher => "voucher",
            GrantKind::Adjustment => "adjustment",
        }
    }
}

/// A validated grant. `grant_id` is the idempotency key, scoped to the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub kind: GrantKind,
    pub account_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Voucher grants: the masked code and short hash (never the code itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher: Option<String>,
}

impl Grant {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a grant always serializes")
    }

    /// What makes two sends of the same `grant_id` the same grant: kind and amount. The
    /// time and the reason text may differ between re-sends (a retried API call).
    pub fn content_hash(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.kind.as_str().as_bytes());
        h.update(&[0]);
        h.update(self.amount.normalize().to_string().as_bytes());
        h.digest()
    }
}

/// Rules a grant is checked against.
#[derive(Debug, Clone)]
pub struct GrantRules {
    /// Smallest top-up (`ledger.min_topup`, 10 by default).
    pub min_topup: Decimal,
}

impl Default for GrantRules {
    fn default() -> Self {
        GrantRules {
            min_topup: Decimal::TEN,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    grant_id: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    account_id: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    occurred_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reason: Option<&'a RawValue>,
    #[serde(borrow, default)]
    voucher: Option<&'a RawValue>,
}

fn reject(reason: RejectReason, message: String) -> Rejection {
    Rejection::new(reason, message)
}

fn required<'a>(field: &str, v: Option<&'a RawValue>) -> Result<&'a RawValue, Rejection> {
    match v {
        Some(v) if v.get() != "null" => Ok(v),
        _ => Err(reject(
            RejectReason::MissingField,
            format!("field {field} is required"),
        )),
    }
}

fn json_string<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, Rejection> {
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|_| {
        reject(
            RejectReason::InvalidField,
            format!(
                "field {field} must be a string (value {})",
                excerpt(raw.get())
            ),
        )
    })
}

/// Checks an id string (grant id, account id): non-empty, at most 256 bytes of UTF-8, no
/// control characters: the event contract's rule, so every account that can be debited can
/// be credited. Returns the problem in words.
pub fn id_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        Some("must not be empty".into())
    } else if s.len() > MAX_ID_BYTES {
        Some(format!("is {} bytes, the limit is {MAX_ID_BYTES}", s.len()))
    } else if s.chars().any(char::is_control) {
        Some("contains control characters".into())
    } else {
        None
    }
}

/// Checks an account id; the rejection has reason `invalid_account`.
pub fn check_account(account_id: &str) -> Result<(), Rejection> {
    match id_problem(account_id) {
        None => Ok(()),
        Some(why) => Err(reject(
            RejectReason::InvalidAccount,
            format!("account_id {why} (value {:?})", excerpt(account_id)),
        )),
    }
}

/// Parses a decimal amount: a JSON string or number, digits with an optional leading `-`
/// and at most one `.`, at most 18 decimals, |amount| <= 1e12. Reason `invalid_amount`.
pub fn parse_amount(text: &str) -> Result<Decimal, Rejection> {
    let bad = |why: &str| {
        reject(
            RejectReason::InvalidAmount,
            format!("amount {why} (value {})", excerpt(text)),
        )
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (digits.contains('.') && frac.is_empty())
    {
        return Err(bad("must be a decimal number such as \"25.00\""));
    }
    if frac.len() > DEBIT_SCALE as usize {
        return Err(bad("has more than 18 decimals"));
    }
    let d = Decimal::from_str_exact(text).map_err(|_| bad("is out of range"))?;
    if d.abs() > MAX_GRANT_AMOUNT {
        return Err(bad("exceeds 1e12 credits"));
    }
    Ok(d.normalize())
}

/// Checks the amount rules of a kind: top-ups at least the minimum, voucher grants
/// positive, adjustments non-zero.
pub fn check_amount(kind: GrantKind, amount: Decimal, rules: &GrantRules) -> Result<(), Rejection> {
    match kind {
        GrantKind::Topup | GrantKind::Voucher if amount <= Decimal::ZERO => Err(reject(
            RejectReason::InvalidAmount,
            format!(
                "amount of a {} must be positive (value {amount})",
                kind.as_str()
            ),
        )),
        GrantKind::Topup if amount < rules.min_topup => Err(reject(
            RejectReason::TopupBelowMinimum,
            format!(
                "a top-up must be at least {} credits (value {amount})",
                rules.min_topup
            ),
        )),
        GrantKind::Adjustment if amount.is_zero() => Err(reject(
            RejectReason::InvalidAmount,
            "amount of an adjustment must not be zero".into(),
        )),
        _ => Ok(()),
    }
}

/// Validates one `credit_grants` message. Checks in order: JSON, fields present, grant_id,
/// kind, account_id, amount (format, then the kind's rule), occurred_at, reason.
pub fn parse_grant(bytes: &[u8], rules: &GrantRules) -> Result<Grant, Rejection> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        reject(
            RejectReason::InvalidEncoding,
            "grant is not valid UTF-8".into(),
        )
    })?;
    let w: Wire<'_> = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let reason = if msg.contains("unknown field") {
            RejectReason::UnknownField
        } else {
            RejectReason::InvalidJson
        };
        reject(reason, format!("grant is not a valid grant object: {msg}"))
    })?;
    let grant_id = json_string("grant_id", required("grant_id", w.grant_id)?)?.into_owned();
    if let Some(why) = id_problem(&grant_id) {
        return Err(reject(
            RejectReason::InvalidField,
            format!("grant_id {why} (value {:?})", excerpt(&grant_id)),
        ));
    }
    let kind_raw = required("kind", w.kind)?;
    let kind: GrantKind = serde_json::from_str(kind_raw.get()).map_err(|_| {
        reject(
            RejectReason::InvalidField,
            format!(
                "kind must be topup, voucher or adjustment (value {})",
                excerpt(kind_raw.get())
            ),
        )
    })?;
    let account_id = json_string("account_id", required("account_id", w.account_id)?)?;
    check_account(&account_id)?;
    let amount_raw = required("amount", w.amount)?;
    let amount_text = match serde_json::from_str::<Cow<'_, str>>(amount_raw.get()) {
        Ok(s) => s,
        Err(_) => Cow::Borrowed(amount_raw.get()),
    };
    let amount = parse_amount(&amount_text)?;
    check_amount(kind, amount, rules)?;
    let at = json_string("occurred_at", required("occurred_at", w.occurred_at)?)?;
    let occurred_at = DateTime::parse_from_rfc3339(&at)
        .map_err(|_| {
            reject(
                RejectReason::InvalidTimestamp,
                format!("occurred_at must be RFC 3339 (value {})", excerpt(&at)),
            )
        })?
        .with_timezone(&Utc);
    let reason = match w.reason.filter(|r| r.get() != "null") {
        Some(r) => Some(json_string("reason", r)?.into_owned()),
        None => None,
    };
    if kind == GrantKind::Adjustment && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(reject(
            RejectReason::MissingField,
            "an adjustment needs a reason".into(),
        ));
    }
    let voucher = match w.voucher.filter(|r| r.get() != "null") {
        Some(r) => Some(json_string("voucher", r)?.into_owned()),
        None => None,
    };
    Ok(Grant {
        grant_id,
        kind,
        account_id: account_id.into_owned(),
        amount,
        occurred_at,
        reason,
        voucher,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(kind: &str, amount: &str) -> String {
        format!(
            r#"{{"grant_id":"pay-1","kind":"{kind}","account_id":"acct-1","amount":{amount},"occurred_at":"2026-03-01T10:00:00Z","reason":"goodwill"}}"#
        )
    }

    fn reason(bytes: &str) -> RejectReason {
        parse_grant(bytes.as_bytes(), &GrantRules::default())
            .unwrap_err()
            .reason
    }

    #[test]
    fn max_grant_constant_is_1e12() {
        assert_eq!(MAX_GRANT_AMOUNT, Decimal::from(1_000_000_000_000u64));
    }

    #[test]
    fn a_valid_topup_round_trips() {
        let g = parse_grant(
            grant("topup", "\"25.50\"").as_bytes(),
            &GrantRules::default(),
        )
        .unwrap();
        assert_eq!(g.amount, Decimal::new(255, 1));
        assert_eq!(g.kind, GrantKind::Topup);
        let back = parse_grant(&g.encode(), &GrantRules::default()).unwrap();
        assert_eq!(back, g);
        // Numbers are read from their text, exactly.
        let n = parse_grant(grant("topup", "10.1").as_bytes(), &GrantRules::default()).unwrap();
        assert_eq!(n.amount.to_string(), "10.1");
    }

    #[test]
    fn refusals_carry_their_reason() {
        assert_eq!(
            reason(&grant("topup", "\"9.99\"")),
            RejectReason::TopupBelowMinimum
        );
        assert_eq!(
            reason(&grant("topup", "\"-20\"")),
            RejectReason::InvalidAmount
        );
        assert_eq!(
            reason(&grant("voucher", "\"0\"")),
            RejectReason::InvalidAmount
        );
        assert_eq!(
            reason(&grant("adjustment", "\"0\"")),
            RejectReason::InvalidAmount
        );
        assert_eq!(
            reason(&grant("topup", "\"1e3\"")),
            RejectReason::InvalidAmount
        );
        assert_eq!(
            reason(&grant("topup", "\"12.\"")),
            RejectReason::InvalidAmount
        );
        assert_eq!(
            reason(&grant("topup", "\"10.0000000000000000001\"")),
            RejectReason::InvalidAmount
        );
        assert_eq!(
            reason(&grant("topup", "\"1000000000001\"")),
            RejectReason::InvalidAmount
        );
        assert_eq!(reason(&grant("gift", "\"20\"")), RejectReason::InvalidField);
        assert_eq!(reason("{"), RejectReason::InvalidJson);
        assert_eq!(
            reason(&grant("topup", "\"20\"").replace("\"reason\"", "\"extra\"")),
            RejectReason::UnknownField
        );
        let bad_account = grant("topup", "\"20\"").replace("acct-1", "acct\\u0007");
        assert_eq!(reason(&bad_account), RejectReason::InvalidAccount);
        let empty_account = grant("topup", "\"20\"").replace("acct-1", "");
        assert_eq!(reason(&empty_account), RejectReason::InvalidAccount);
        let no_reason = grant("adjustment", "\"-5\"").replace(",\"reason\":\"goodwill\"", "");
        assert_eq!(reason(&no_reason), RejectReason::MissingField);
        let bad_time = grant("topup", "\"20\"").replace("2026-03-01T10:00:00Z", "yesterday");
        assert_eq!(reason(&bad_time), RejectReason::InvalidTimestamp);
    }

    #[test]
    fn negative_adjustments_and_the_minimum_itself_are_accepted() {
        let rules = GrantRules::default();
        assert!(parse_grant(grant("adjustment", "\"-5.25\"").as_bytes(), &rules).is_ok());
        assert!(parse_grant(grant("topup", "\"10\"").as_bytes(), &rules).is_ok());
        assert!(parse_grant(grant("voucher", "\"0.01\"").as_bytes(), &rules).is_ok());
    }

    #[test]
    fn content_hash_ignores_time_and_reason_but_not_amount() {
        let rules = GrantRules::default();
        let a = parse_grant(grant("topup", "\"20\"").as_bytes(), &rules).unwrap();
        let mut b = a.clone();
        b.occurred_at = Utc::now();
        b.reason = None;
        b.amount = Decimal::new(2000, 2);
        assert_eq!(a.content_hash(), b.content_hash());
        b.amount = Decimal::new(21, 0);
        assert_ne!(a.content_hash(), b.content_hash());
    }
}
