//! The state of one open execution in a partition's rollup: what its debit is made of
//! (snapshotted) and the live-only parts (idle tracking, the live trace; not snapshotted).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::trace::TracedCall;
use crate::catalog::AssetType;
use crate::event::UsageEvent;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AssetAcc {
    pub(super) asset_type: AssetType,
    pub(super) calls: u32,
    pub(super) quantities: BTreeMap<String, Decimal>,
    pub(super) cost: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OpenExecution {
    pub(super) account_id: String,
    pub(super) first_event_id: String,
    pub(super) first_offset: i64,
    pub(super) last_offset: i64,
    pub(super) first_event_at: DateTime<Utc>,
    pub(super) last_event_at: DateTime<Utc>,
    pub(super) calls_seen: u32,
    pub(super) calls_priced: u32,
    pub(super) finished: bool,
    pub(super) expected_calls: Option<u32>,
    pub(super) subtotal: Decimal,
    pub(super) breakdown: BTreeMap<String, AssetAcc>,
    #[serde(skip)]
    pub(super) last_seen_ms: u64,
    #[serde(skip)]
    pub(super) marker_sent_after: Option<i64>,
    /// The first `max_trace_calls` priced calls (the live trace).
    #[serde(skip)]
    pub(super) calls: Vec<TracedCall>,
}

impl AssetAcc {
    pub(super) fn new(asset_type: AssetType) -> AssetAcc {
        AssetAcc {
            asset_type,
            calls: 0,
            quantities: BTreeMap::new(),
            cost: Decimal::ZERO,
        }
    }
}

impl OpenExecution {
    /// An execution opened by `ev` at `offset` with no calls yet (its first call, or a
    /// finish that came before its calls).
    pub(super) fn waiting(ev: &UsageEvent, offset: i64, now_ms: u64) -> OpenExecution {
        OpenExecution {
            account_id: ev.account_id.clone(),
            first_event_id: ev.event_id.clone(),
            first_offset: offset,
            last_offset: offset,
            first_event_at: ev.occurred_at,
            last_event_at: ev.occurred_at,
            calls_seen: 0,
            calls_priced: 0,
            finished: false,
            expected_calls: None,
            subtotal: Decimal::ZERO,
            breakdown: BTreeMap::new(),
            last_seen_ms: now_ms,
            marker_sent_after: None,
            calls: Vec::new(),
        }
    }
}
