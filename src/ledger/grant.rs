//! Credit grants: the JSON of the `credit_grants` topic in, a validated [`Grant`] (or a
//! [`Rejection`] with its reason code) out. Pure; the CLI, the HTTP API and the ledger stage
//! all validate with these functions, so a refusal reads the same everywhere.
//!
//! Wire form (keyed by `account_id` on the topic; amounts are decimal strings):
//! `{"grant_id":"pay_123","kind":"topup","account_id":"acct-1","amount":"25.00",
//!   "occurred_at":"2026-03-01T10:00:00Z"}`; `kind` is `topup`, `voucher` or `adjustment`
//! (which needs a `reason`); voucher grants carry `voucher` (masked code and short hash).
//! Optional terms of a grant that adds credits: `category` (`paid` | `promotional`; top-ups
//! are paid, voucher grants promotional, adjustments default to paid), `priority` (0-100,
//! lower drawn first, default 50) and `expires_at` (RFC 3339, after `occurred_at`); and
//! `request_id`, echoed in the ledger's answer (docs/credits.md, "Answers").

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::MAX_ID_BYTES;
use crate::ledger::funding::{Category, DEFAULT_PRIORITY, MAX_PRIORITY};
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
    /// `paid` or `promotional` as sent; [`Grant::category`] resolves the kind's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    /// 0..=100 as sent; [`Grant::priority`] resolves the default (50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// When the grant's remainder is forfeited (one `expiry` entry); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The caller's request id, echoed in the ledger's answer; not part of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Grant {
    /// A grant of `amount` credits with no reason, voucher, terms or request id (the kind's
    /// defaults); set those with struct update syntax (`Grant { reason, ..Grant::new(..) }`).
    /// Not validated: [`parse`] and the client's builders are.
    pub fn new(
        grant_id: impl Into<String>,
        kind: GrantKind,
        account_id: impl Into<String>,
        amount: Decimal,
        occurred_at: DateTime<Utc>,
    ) -> Grant {
        Grant {
            grant_id: grant_id.into(),
            kind,
            account_id: account_id.into(),
            amount,
            occurred_at,
            reason: None,
            voucher: None,
            category: None,
            priority: None,
            expires_at: None,
            request_id: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a grant always serializes")
    }

    /// What makes two sends of the same `grant_id` the same grant: kind, amount, and the
    /// terms (category, priority, expiry) where they differ from the kind's defaults, so
    /// the hashes of grants without terms are those stored before terms existed. The time,
    /// the reason text and the request id may differ between re-sends (a retried call).
    pub fn content_hash(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.kind.as_str().as_bytes());
        h.update(&[0]);
        h.update(self.amount.normalize().to_string().as_bytes());
        if self.category() != default_category(self.kind) {
            h.update(b"\0category\0");
            h.update(self.category().as_str().as_bytes());
        }
        if self.priority() != DEFAULT_PRIORITY {
            h.update(b"\0priority\0");
            h.update(&[self.priority()]);
        }
        if let Some(t) = self.expires_at {
            h.update(b"\0expires_at\0");
            h.update(&t.timestamp_micros().to_le_bytes());
        }
        h.digest()
    }

    /// The category: as sent, else the kind's default.
    pub fn category(&self) -> Category {
        self.category.unwrap_or(default_category(self.kind))
    }

    /// The priority: as sent, else [`DEFAULT_PRIORITY`].
    pub fn priority(&self) -> u8 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }

    /// True when it adds credits (every kind but a negative adjustment).
    pub fn adds_credits(&self) -> bool {
        self.amount > Decimal::ZERO
    }
}

/// The category of a kind when none is sent: top-ups paid, voucher grants promotional,
/// adjustments paid.
pub fn default_category(kind: GrantKind) -> Category {
    match kind {
        GrantKind::Voucher => Category::Promotional,
        GrantKind::Topup | GrantKind::Adjustment => Category::Paid,
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
    #[serde(borrow, default)]
    category: Option<&'a RawValue>,
    #[serde(borrow, default)]
    priority: Option<&'a RawValue>,
    #[serde(borrow, default)]
    expires_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_id: Option<&'a RawValue>,
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
    let voucher = optional_string("voucher", w.voucher)?;
    let terms = Terms {
        category: optional_string("category", w.category)?,
        priority: w.priority.filter(|r| r.get() != "null").map(RawValue::get),
        expires_at: optional_string("expires_at", w.expires_at)?,
    };
    let (category, priority, expires_at) = check_terms(kind, amount, occurred_at, &terms)?;
    let request_id = optional_string("request_id", w.request_id)?;
    if let Some(why) = request_id.as_deref().and_then(id_problem) {
        return Err(reject(
            RejectReason::InvalidField,
            format!("request_id {why}"),
        ));
    }
    Ok(Grant {
        grant_id,
        kind,
        account_id: account_id.into_owned(),
        amount,
        occurred_at,
        reason,
        voucher,
        category,
        priority,
        expires_at,
        request_id,
    })
}

fn optional_string(field: &str, v: Option<&RawValue>) -> Result<Option<String>, Rejection> {
    match v.filter(|r| r.get() != "null") {
        Some(r) => Ok(Some(json_string(field, r)?.into_owned())),
        None => Ok(None),
    }
}

/// The terms of a grant as texts (from JSON, the CLI or the HTTP API), before checking.
#[derive(Debug, Clone, Default)]
pub struct Terms<'a> {
    pub category: Option<String>,
    /// The JSON text or argument of the priority.
    pub priority: Option<&'a str>,
    pub expires_at: Option<String>,
}

/// Checked grant terms: category, priority, expiry (each `None` when not given).
pub type CheckedTerms = (Option<Category>, Option<u8>, Option<DateTime<Utc>>);

/// Checks the terms of a grant: `category` is `paid` or `promotional` (a top-up is paid, a
/// voucher grant promotional), `priority` an integer 0..=100, `expires_at` RFC 3339 after
/// `occurred_at`; none of them on a negative adjustment (it takes credits, in draw-down
/// order). Reasons `invalid_field`, `invalid_timestamp`.
pub fn check_terms(
    kind: GrantKind,
    amount: Decimal,
    occurred_at: DateTime<Utc>,
    t: &Terms<'_>,
) -> Result<CheckedTerms, Rejection> {
    let category = match t.category.as_deref() {
        None => None,
        Some("paid") => Some(Category::Paid),
        Some("promotional") => Some(Category::Promotional),
        Some(other) => {
            return Err(reject(
                RejectReason::InvalidField,
                format!(
                    "category must be paid or promotional (value {:?})",
                    excerpt(other)
                ),
            ));
        }
    };
    match (kind, category) {
        (GrantKind::Topup, Some(Category::Promotional)) => {
            return Err(reject(
                RejectReason::InvalidField,
                "category of a top-up is paid (a purchase); give promotional credits as an adjustment or a voucher (value \"promotional\")".into(),
            ));
        }
        (GrantKind::Voucher, Some(Category::Paid)) => {
            return Err(reject(
                RejectReason::InvalidField,
                "category of a voucher grant is promotional (value \"paid\")".into(),
            ));
        }
        _ => {}
    }
    let priority = match t.priority {
        None => None,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= MAX_PRIORITY => Some(n),
            _ => {
                return Err(reject(
                    RejectReason::InvalidField,
                    format!(
                        "priority must be an integer from 0 to {MAX_PRIORITY}, lower drawn first (value {})",
                        excerpt(p)
                    ),
                ));
            }
        },
    };
    let expires_at = match t.expires_at.as_deref() {
        None => None,
        Some(s) => {
            let at = DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    reject(
                        RejectReason::InvalidTimestamp,
                        format!("expires_at must be RFC 3339 (value {})", excerpt(s)),
                    )
                })?
                .with_timezone(&Utc);
            if at <= occurred_at {
                return Err(reject(
                    RejectReason::InvalidField,
                    format!(
                        "expires_at must be after occurred_at {} (value {s})",
                        occurred_at.to_rfc3339()
                    ),
                ));
            }
            Some(at)
        }
    };
    if amount < Decimal::ZERO && (category.is_some() || priority.is_some() || expires_at.is_some())
    {
        return Err(reject(
            RejectReason::InvalidField,
            "category, priority and expires_at apply to grants that add credits; a negative adjustment takes credits in draw-down order".into(),
        ));
    }
    Ok((category, priority, expires_at))
}

#[cfg(test)]
#[path = "grant_tests.rs"]
mod tests;
