//! Vouchers, pure: codes (normalized, hashed, masked), definitions, the create, redeem and
//! revoke commands of the `voucher_requests` topic in; per-code state, a result for the
//! caller and (on success) a voucher [`Grant`] out: promotional credits with the voucher's
//! priority and, when the voucher says so, an expiry (`credits_valid_for` after the
//! redemption, or `credits_expire_at`).
//!
//! Codes are secrets. Only `code_hash` (SHA-256 of the normalized code with a domain prefix)
//! travels in events, state and ClickHouse; logs and results show the masked form
//! (`SPRING-****`) and the first 8 hex digits of the hash. All commands for one code share a
//! partition (keyed by the hash), so redemptions of a code are totally ordered: the first
//! `max_redemptions` distinct accounts in log order win, on every replay.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ledger::core::{Change, hashed_id};
use crate::ledger::grant::{Grant, GrantKind, check_account, id_problem};
use crate::rejection::{RejectReason, Rejection};

mod code;
pub mod follow;
mod revoke;
mod view;

pub use code::{CODE_LEN, code_hash, display, mask, normalize_code};
pub use revoke::Revocation;
pub use view::VoucherView;

/// A voucher definition, as created by an operator (no clear-text code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherDef {
    pub code_hash: String,
    pub masked: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub credits: Decimal,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub max_redemptions: u32,
    /// Only this account may redeem it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default)]
    pub description: String,
    /// The granted credits expire this many seconds after the redemption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_valid_for_secs: Option<u64>,
    /// The granted credits expire at this instant (at or after `valid_until`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_expire_at: Option<DateTime<Utc>>,
    /// Priority of the granted credits (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// Longest `credits_valid_for`: ten years.
pub const MAX_CREDITS_VALID_FOR_SECS: u64 = 3650 * 86_400;

impl VoucherDef {
    /// Checks credits, window and count.
    pub fn validate(&self) -> Result<(), String> {
        if self.credits <= Decimal::ZERO || self.credits.normalize().scale() > 18 {
            return Err(format!(
                "credits must be positive with at most 18 decimals (value {})",
                self.credits
            ));
        }
        if self.credits > crate::ledger::grant::MAX_GRANT_AMOUNT {
            return Err("credits exceed 1e12".into());
        }
        if self.valid_until <= self.valid_from {
            return Err("valid_until must be after valid_from".into());
        }
        if self.max_redemptions == 0 {
            return Err("max_redemptions must be at least 1".into());
        }
        if let Some(a) = &self.account_id
            && let Some(why) = id_problem(a)
        {
            return Err(format!("account_id {why}"));
        }
        if self.code_hash.len() != 64 || !self.code_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("code_hash must be 64 hex digits".into());
        }
        match (self.credits_valid_for_secs, self.credits_expire_at) {
            (Some(_), Some(_)) => {
                return Err("give credits_valid_for or credits_expire_at, not both".into());
            }
            (Some(s), None) if s == 0 || s > MAX_CREDITS_VALID_FOR_SECS => {
                return Err(format!(
                    "credits_valid_for must be from 1 second to 3650 days (value {s} seconds)"
                ));
            }
            (None, Some(t)) if t < self.valid_until => {
                return Err(format!(
                    "credits_expire_at must be at or after valid_until {} (value {}): a redemption must not grant credits that have expired",
                    self.valid_until.to_rfc3339(),
                    t.to_rfc3339()
                ));
            }
            _ => {}
        }
        if self
            .priority
            .is_some_and(|p| p > crate::ledger::funding::MAX_PRIORITY)
        {
            return Err("priority must be from 0 to 100".into());
        }
        Ok(())
    }

    /// When the credits of a redemption at `at` expire.
    pub fn credits_expiry(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match (self.credits_valid_for_secs, self.credits_expire_at) {
            (Some(s), _) => i64::try_from(s)
                .ok()
                .and_then(chrono::Duration::try_seconds)
                .and_then(|d| at.checked_add_signed(d)),
            (None, t) => t,
        }
    }
}

/// A command on the `voucher_requests` topic (key: `code_hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum VoucherRequest {
    Create {
        request_id: String,
        requested_at: DateTime<Utc>,
        voucher: VoucherDef,
    },
    Redeem {
        request_id: String,
        requested_at: DateTime<Utc>,
        code_hash: String,
        masked: String,
        account_id: String,
    },
    /// Later redemptions are refused `revoked`; credits already granted stay.
    Revoke {
        request_id: String,
        requested_at: DateTime<Utc>,
        code_hash: String,
        #[serde(default)]
        reason: String,
    },
}

impl VoucherRequest {
    pub fn code_hash(&self) -> &str {
        match self {
            VoucherRequest::Create { voucher, .. } => &voucher.code_hash,
            VoucherRequest::Redeem { code_hash, .. } | VoucherRequest::Revoke { code_hash, .. } => {
                code_hash
            }
        }
    }
    pub fn request_id(&self) -> &str {
        match self {
            VoucherRequest::Create { request_id, .. }
            | VoucherRequest::Redeem { request_id, .. }
            | VoucherRequest::Revoke { request_id, .. } => request_id,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a voucher request serializes")
    }
}

/// Why a voucher command was refused. Stable codes the caller can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    Unknown,
    NotYetValid,
    Expired,
    Exhausted,
    WrongAccount,
    AlreadyRedeemed,
    AlreadyExists,
    Invalid,
    /// The voucher was revoked.
    Revoked,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Unknown,
        Refusal::NotYetValid,
        Refusal::Expired,
        Refusal::Exhausted,
        Refusal::WrongAccount,
        Refusal::AlreadyRedeemed,
        Refusal::AlreadyExists,
        Refusal::Invalid,
        Refusal::Revoked,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Expired => "expired",
            Refusal::Exhausted => "exhausted",
            Refusal::WrongAccount => "wrong_account",
            Refusal::AlreadyRedeemed => "already_redeemed",
            Refusal::AlreadyExists => "already_exists",
            Refusal::Invalid => "invalid",
            Refusal::Revoked => "revoked",
        }
    }
}

/// Outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoucherOutcome {
    Created,
    Granted,
    Refused,
    /// The voucher is revoked (now, or by an earlier revoke: once).
    Revoked,
}

/// The answer on the `voucher_results` topic (key: `request_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherResult {
    pub request_id: String,
    pub action: String,
    /// Masked code and short hash, e.g. `SPRING-**** #1a2b3c4d`.
    pub voucher: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub outcome: VoucherOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Refusal>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dec")]
    pub credits: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    pub redemptions_left: u32,
    /// When the granted credits expire (a redemption of a voucher whose credits expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_expire_at: Option<DateTime<Utc>>,
}

mod opt_dec {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&d.to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One successful redemption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    pub request_id: String,
    pub account_id: String,
    pub at: DateTime<Utc>,
    pub grant_id: String,
}

/// A voucher's state: its definition and the redemptions so far (compacted changelog value,
/// key `code_hash`; `vouchers list` reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherState {
    pub def: VoucherDef,
    pub created_request: String,
    pub redemptions: Vec<Redemption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// Id of the grant a redemption creates: one per (code, account).
pub fn voucher_grant_id(code_hash: &str, account_id: &str) -> String {
    hashed_id("vch", &[code_hash, account_id])
}

/// The vouchers of one partition.
#[derive(Debug, Default)]
pub struct VoucherPartition {
    vouchers: HashMap<String, VoucherState>,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl VoucherPartition {
    pub fn get(&self, code_hash: &str) -> Option<&VoucherState> {
        self.vouchers.get(code_hash)
    }

    pub fn len(&self) -> usize {
        self.vouchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vouchers.is_empty()
    }

    /// Decides one command (in log order). Returns the result and, for a new successful
    /// redemption, the grant to send.
    pub fn handle(&mut self, req: &VoucherRequest) -> (VoucherResult, Option<Grant>) {
        match req {
            VoucherRequest::Create {
                request_id,
                voucher,
                ..
            } => (self.create(request_id, voucher), None),
            VoucherRequest::Revoke {
                request_id,
                requested_at,
                code_hash,
                reason,
            } => (
                self.revoke(request_id, *requested_at, code_hash, reason),
                None,
            ),
            VoucherRequest::Redeem {
                request_id,
                requested_at,
                code_hash,
                masked,
                account_id,
            } => self.redeem(request_id, *requested_at, code_hash, masked, account_id),
        }
    }

    fn create(&mut self, request_id: &str, def: &VoucherDef) -> VoucherResult {
        let shown = display(&def.masked, &def.code_hash);
        let result = |outcome, reason: Option<Refusal>, message: String, left| VoucherResult {
            request_id: request_id.to_string(),
            action: "create".into(),
            voucher: shown.clone(),
            account_id: def.account_id.clone(),
            outcome,
            reason,
            message,
            credits: Some(def.credits),
            grant_id: None,
            redemptions_left: left,
            credits_expire_at: None,
        };
        if let Err(why) = def.validate() {
            return result(VoucherOutcome::Refused, Some(Refusal::Invalid), why, 0);
        }
        if let Some(s) = self.vouchers.get(&def.code_hash) {
            let left = s
                .def
                .max_redemptions
                .saturating_sub(s.redemptions.len() as u32);
            // A retried create (same request id) or the same definition: the original answer.
            return if s.created_request == request_id || s.def == *def {
                // A re-sent create: same answer, nothing changes.
                result(
                    VoucherOutcome::Created,
                    None,
                    format!("voucher {shown} exists"),
                    left,
                )
            } else {
                result(
                    VoucherOutcome::Refused,
                    Some(Refusal::AlreadyExists),
                    format!("voucher {shown} already exists with another definition"),
                    left,
                )
            };
        }
        let state = VoucherState {
            def: def.clone(),
            created_request: request_id.to_string(),
            redemptions: Vec::new(),
            revoked: None,
        };
        self.put(state);
        result(
            VoucherOutcome::Created,
            None,
            format!("voucher {shown} created"),
            def.max_redemptions,
        )
    }

    fn redeem(
        &mut self,
        request_id: &str,
        at: DateTime<Utc>,
        code_hash: &str,
        masked: &str,
        account_id: &str,
    ) -> (VoucherResult, Option<Grant>) {
        let shown = display(masked, code_hash);
        let mut result = VoucherResult {
            request_id: request_id.to_string(),
            action: "redeem".into(),
            voucher: shown.clone(),
            account_id: Some(account_id.to_string()),
            outcome: VoucherOutcome::Refused,
            reason: None,
            message: String::new(),
            credits: None,
            grant_id: None,
            redemptions_left: 0,
            credits_expire_at: None,
        };
        let refuse = |mut r: VoucherResult, reason: Refusal, message: String| {
            r.reason = Some(reason);
            r.message = message;
            (r, None)
        };
        if let Err(rej) = check_account(account_id) {
            return refuse(result, Refusal::Invalid, rej.message);
        }
        let Some(mut state) = self.vouchers.get(code_hash).cloned() else {
            return refuse(
                result,
                Refusal::Unknown,
                format!("voucher {shown} does not exist"),
            );
        };
        let def = state.def.clone();
        let left = def
            .max_redemptions
            .saturating_sub(state.redemptions.len() as u32);
        result.redemptions_left = left;
        result.credits = Some(def.credits);
        if let Some(r) = state
            .redemptions
            .iter()
            .find(|r| r.account_id == account_id)
        {
            if r.request_id == request_id {
                // A re-sent request: the same answer again, no second grant.
                result.outcome = VoucherOutcome::Granted;
                result.grant_id = Some(r.grant_id.clone());
                result.message = format!("voucher {shown} redeemed for {} credits", def.credits);
                return (result, None);
            }
            return refuse(
                result,
                Refusal::AlreadyRedeemed,
                format!("voucher {shown} was already redeemed by this account"),
            );
        }
        if let Some(r) = &state.revoked {
            return refuse(
                result,
                Refusal::Revoked,
                format!("voucher {shown} was revoked at {}", r.at.to_rfc3339()),
            );
        }
        if def.account_id.as_deref().is_some_and(|a| a != account_id) {
            return refuse(
                result,
                Refusal::WrongAccount,
                format!("voucher {shown} is reserved for another account"),
            );
        }
        if at < def.valid_from {
            return refuse(
                result,
                Refusal::NotYetValid,
                format!(
                    "voucher {shown} is valid from {}",
                    def.valid_from.to_rfc3339()
                ),
            );
        }
        if at >= def.valid_until {
            return refuse(
                result,
                Refusal::Expired,
                format!(
                    "voucher {shown} expired at {}",
                    def.valid_until.to_rfc3339()
                ),
            );
        }
        if left == 0 {
            return refuse(
                result,
                Refusal::Exhausted,
                format!(
                    "voucher {shown} has been redeemed {} times, its limit",
                    def.max_redemptions
                ),
            );
        }
        let grant_id = voucher_grant_id(code_hash, account_id);
        let grant = Grant {
            voucher: Some(shown.clone()),
            priority: def.priority,
            expires_at: def.credits_expiry(at),
            ..Grant::new(
                grant_id.clone(),
                GrantKind::Voucher,
                account_id,
                def.credits,
                at,
            )
        };
        state.redemptions.push(Redemption {
            request_id: request_id.to_string(),
            account_id: account_id.to_string(),
            at,
            grant_id: grant_id.clone(),
        });
        self.put(state);
        result.outcome = VoucherOutcome::Granted;
        result.redemptions_left = left - 1;
        result.grant_id = Some(grant_id);
        result.credits_expire_at = grant.expires_at;
        result.message = format!("voucher {shown} redeemed for {} credits", def.credits);
        (result, Some(grant))
    }

    pub(crate) fn put(&mut self, state: VoucherState) {
        let key = state.def.code_hash.clone();
        self.changes.insert(
            key.clone().into_bytes(),
            Some(serde_json::to_vec(&state).expect("voucher state serializes")),
        );
        self.vouchers.insert(key, state);
    }

    /// Changelog records since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes).into_iter().collect()
    }

    /// Applies one changelog record while restoring.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key = String::from_utf8(key.to_vec()).map_err(|_| "voucher key is not utf-8")?;
        match value {
            Some(v) => {
                let s: VoucherState =
                    serde_json::from_slice(v).map_err(|e| format!("voucher state: {e}"))?;
                self.vouchers.insert(key, s);
            }
            None => {
                self.vouchers.remove(&key);
            }
        }
        Ok(())
    }

    /// Ends a restore.
    pub fn restored(&mut self) {
        self.changes.clear();
    }
}

/// Parses a `voucher_requests` message; bad ones become a dead letter.
pub fn parse_request(bytes: &[u8]) -> Result<VoucherRequest, Rejection> {
    let req: VoucherRequest = serde_json::from_slice(bytes).map_err(|e| {
        Rejection::new(
            RejectReason::InvalidJson,
            format!("voucher request is not valid: {e}"),
        )
    })?;
    if let Some(why) = id_problem(req.request_id()) {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("request_id {why}"),
        ));
    }
    Ok(req)
}

#[cfg(test)]
#[path = "voucher_tests.rs"]
mod tests;
