//! A voucher as operators see it listed (CLI, HTTP): its state in, no code out.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Revocation, VoucherState, display};

/// A voucher as listed (CLI, HTTP): no code, its id (the first 16 hex digits of its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherView {
    pub id: String,
    pub voucher: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub credits: Decimal,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub max_redemptions: u32,
    pub redeemed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_valid_for_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_expire_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

impl From<&VoucherState> for VoucherView {
    fn from(s: &VoucherState) -> Self {
        let d = &s.def;
        VoucherView {
            id: d.code_hash.chars().take(16).collect(),
            voucher: display(&d.masked, &d.code_hash),
            credits: d.credits,
            valid_from: d.valid_from,
            valid_until: d.valid_until,
            max_redemptions: d.max_redemptions,
            redeemed: s.redemptions.len() as u32,
            account_id: d.account_id.clone(),
            description: d.description.clone(),
            credits_valid_for_secs: d.credits_valid_for_secs,
            credits_expire_at: d.credits_expire_at,
            priority: d.priority,
            revoked: s.revoked.clone(),
        }
    }
}
