//! Revoking a voucher, pure: a revoke command in; the voucher's revoked state (once: a
//! second revoke answers with the first) and a result out. Redemptions after it are refused
//! `revoked`; credits granted before stay granted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Refusal, VoucherOutcome, VoucherPartition, VoucherResult, display};

/// When and why a voucher was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub request_id: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub reason: String,
}

impl VoucherPartition {
    /// Revokes the voucher `code_hash` at `at` (the request's time), exactly once.
    pub(super) fn revoke(
        &mut self,
        request_id: &str,
        at: DateTime<Utc>,
        code_hash: &str,
        reason: &str,
    ) -> VoucherResult {
        let Some(mut state) = self.get(code_hash).cloned() else {
            return VoucherResult {
                request_id: request_id.to_string(),
                action: "revoke".into(),
                voucher: display("?", code_hash),
                account_id: None,
                outcome: VoucherOutcome::Refused,
                reason: Some(Refusal::Unknown),
                message: "no voucher has this code".into(),
                credits: None,
                grant_id: None,
                redemptions_left: 0,
                credits_expire_at: None,
            };
        };
        let shown = display(&state.def.masked, code_hash);
        let used = state.redemptions.len() as u32;
        let message = match &state.revoked {
            Some(r) => format!(
                "voucher {shown} was revoked at {} ({} of {} redemptions used)",
                r.at.to_rfc3339(),
                used,
                state.def.max_redemptions
            ),
            None => {
                state.revoked = Some(Revocation {
                    request_id: request_id.to_string(),
                    at,
                    reason: reason.to_string(),
                });
                self.put(state.clone());
                format!(
                    "voucher {shown} revoked ({} of {} redemptions used; their credits stay granted)",
                    used, state.def.max_redemptions
                )
            }
        };
        VoucherResult {
            request_id: request_id.to_string(),
            action: "revoke".into(),
            voucher: shown,
            account_id: state.def.account_id.clone(),
            outcome: VoucherOutcome::Revoked,
            reason: None,
            message,
            credits: Some(state.def.credits),
            grant_id: None,
            redemptions_left: 0,
            credits_expire_at: None,
        }
    }
}
