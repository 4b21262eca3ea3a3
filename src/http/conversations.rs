//! `GET /v1/accounts/{id}/conversations/{cid}`: a conversation's executions and direct calls
//! with their totals and the running total across them. A conversation is the calls whose
//! dimension `traces.conversation_dimension` (default `conversation_id`, contract v1.1) is
//! `cid`; an execution is in it through those of its calls (docs/event-contract.md,
//! Conversations). From the committed history (`crate::history`), so no gap after a call
//! commits.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::HttpState;
use super::auth::Caller;
use super::error::ApiPath;
use super::params::{ApiError, Params, check_id};
use super::traces;
use crate::debit::DebitKind;
use crate::history;
use crate::money;
use crate::trace::stream::Filter;
use crate::trace::{self, Status};

/// One execution (or, with `execution_id` null, the direct calls) of a conversation.
#[derive(Debug, Serialize)]
pub struct ConversationPart {
    pub execution_id: Option<String>,
    pub status: Status,
    /// Calls of the conversation in it.
    pub calls: u64,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Running total of the conversation after this part (parts in order of first call).
    #[serde(with = "rust_decimal::serde::str")]
    pub running_total: Decimal,
}

/// The answer: parts in order of their first call; `subtotal + markup = total`.
#[derive(Debug, Serialize)]
pub struct Conversation {
    pub account_id: String,
    pub conversation_id: String,
    pub dimension: String,
    pub executions: Vec<ConversationPart>,
    pub calls: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

pub async fn view(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath((account, cid)): ApiPath<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let run = async {
        let api = traces::api(&s)?;
        traces::account_for(&caller, &account, "conversations")?;
        check_id("conversation_id", &cid)?;
        Params::parse(raw.as_deref(), &[])?;
        let filter = Filter::Conversation {
            account_id: account.clone(),
            key: api.cfg.conversation_dimension.clone(),
            value: cid.clone(),
        };
        let h = history::read(&api.follower, &api.ch, &filter, None)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if let Some(e) = &h.clickhouse_error {
            return Err(ApiError::unavailable(format!(
                "the conversation's history is unavailable: clickhouse cannot be reached ({e})"
            )));
        }
        let lines = trace::dedupe_lines(h.lines.into_iter().map(|(_, l)| l).collect());
        if lines.is_empty() {
            return Err(ApiError::not_found(format!(
                "no call of account {} has {} = {} (yet)",
                crate::rejection::excerpt(&account),
                api.cfg.conversation_dimension,
                crate::rejection::excerpt(&cid)
            )));
        }
        let mut parts: BTreeMap<Option<String>, ConversationPart> = BTreeMap::new();
        for l in &lines {
            let p = parts
                .entry(l.execution_id.clone())
                .or_insert_with(|| ConversationPart {
                    execution_id: l.execution_id.clone(),
                    status: if l.execution_id.is_some() {
                        Status::Open
                    } else {
                        Status::Closed
                    },
                    calls: 0,
                    first_event_at: l.occurred_at,
                    last_event_at: l.occurred_at,
                    subtotal: Decimal::ZERO,
                    markup: Decimal::ZERO,
                    total: Decimal::ZERO,
                    running_total: Decimal::ZERO,
                });
            p.calls += 1;
            p.subtotal += l.cost;
            p.first_event_at = p.first_event_at.min(l.occurred_at);
            p.last_event_at = p.last_event_at.max(l.occurred_at);
        }
        for (_, d) in &h.debits {
            if d.kind == DebitKind::AgentExecution
                && let Some(p) = parts.get_mut(&d.execution_id)
            {
                p.status = Status::Closed;
            }
        }
        let mut list: Vec<ConversationPart> = parts.into_values().collect();
        list.sort_by(|a, b| {
            (a.first_event_at, &a.execution_id).cmp(&(b.first_event_at, &b.execution_id))
        });
        let (mut subtotal, mut markup) = (Decimal::ZERO, Decimal::ZERO);
        for p in &mut list {
            // Markup on the calls of executions only, at the rate (exact and linear, so the
            // executions' debits charge the same for these calls).
            if p.execution_id.is_some() {
                p.markup = money::debit_markup(p.subtotal, api.markup_rate);
            }
            p.subtotal = p.subtotal.normalize();
            p.markup = p.markup.normalize();
            p.total = (p.subtotal + p.markup).normalize();
            subtotal += p.subtotal;
            markup += p.markup;
            p.running_total = (subtotal + markup).normalize();
        }
        Ok(Conversation {
            account_id: account.clone(),
            conversation_id: cid.clone(),
            dimension: api.cfg.conversation_dimension.clone(),
            calls: list.iter().map(|p| p.calls).sum(),
            executions: list,
            subtotal: subtotal.normalize(),
            markup: markup.normalize(),
            total: (subtotal + markup).normalize(),
        })
    };
    match run.await {
        Ok(c) => Json(c).into_response(),
        Err(e) => e.into_response(),
    }
}
