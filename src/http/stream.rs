//! Live streams as server-sent events: `GET /v1/executions/{id}/events?account_id=A` and
//! `GET /v1/accounts/{id}/conversations/{cid}/events`. Each committed priced call and debit
//! of the execution (or conversation) is one event with the running totals
//! (`crate::trace::stream`); history first, then live from the process's one follower of
//! the output topics (`crate::follow`), so any instance serves any stream, also after a
//! restart.
//!
//! Events: `call` and `debit` (with `id: P.L.D`, the position to resume after), `open` once
//! the history is sent, `end` after the execution's debit (unless `follow=true`),
//! `error` when the stream cannot go on (it reconnects with `Last-Event-ID` and misses
//! nothing). A slow client is never cut off and never misses an event: when its queue of
//! followed messages is full, it reads what it missed from the follower's tail (or Kafka)
//! once it has caught up ([`Subscription::gap`]). A comment every 15 s keeps idle
//! connections open.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use memchr::memmem::Finder;
use serde_json::json;
use tokio::sync::mpsc;

use super::HttpState;
use super::auth::Caller;
use super::error::ApiPath;
use super::params::{ApiError, Params, check_id};
use super::traces::{self, TracesApi};
use crate::debit::PricedLine;
use crate::follow::{Followed, Interest, OutputTopic, Subscription};
use crate::history::{self, Committed};
use crate::trace::stream::{Filter, StreamCursor, StreamEvent, StreamState};

pub async fn execution_events(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let start = async {
        let api = traces::api(&s)?;
        check_id("execution_id", &id)?;
        let p = Params::parse(raw.as_deref(), &["account_id", "follow", "last_event_id"])?;
        let requested = p.string("account_id")?;
        if let Some(a) = &requested {
            check_id("account_id", a)?;
        }
        // A key streams its own account's executions only (default: its account).
        let not_found = || {
            ApiError::not_found(format!(
                "execution {} has no priced call and no debit in this account (yet)",
                crate::rejection::excerpt(&id)
            ))
        };
        let Some(account) = caller.scope(requested.as_deref(), not_found)? else {
            return Err(ApiError::parameter(
                "account_id",
                None,
                "account_id is required: execution ids are scoped by account",
            ));
        };
        let filter = Filter::Execution {
            account_id: account,
            execution_id: id.clone(),
        };
        let follow = p.flag("follow")?;
        open(api, filter, follow, resume_from(&p, &headers)?).await
    };
    start.await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn conversation_events(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath((account, conversation)): ApiPath<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let start = async {
        let api = traces::api(&s)?;
        traces::account_for(&caller, &account, "conversations")?;
        check_id("conversation_id", &conversation)?;
        let p = Params::parse(raw.as_deref(), &["last_event_id"])?;
        let filter = Filter::Conversation {
            account_id: account,
            key: api.cfg.conversation_dimension.clone(),
            value: conversation,
        };
        open(api, filter, true, resume_from(&p, &headers)?).await
    };
    start.await.unwrap_or_else(IntoResponse::into_response)
}

/// The cursor to resume after: the `Last-Event-ID` header (what an `EventSource` sends when
/// it reconnects), else the `last_event_id` query parameter.
fn resume_from(p: &Params, headers: &HeaderMap) -> Result<Option<StreamCursor>, ApiError> {
    let (name, value) = match headers.get("last-event-id") {
        Some(v) => (
            "Last-Event-ID",
            v.to_str().unwrap_or("\u{fffd}").to_string(),
        ),
        None => match p.get("last_event_id") {
            Some(v) => ("last_event_id", v.to_string()),
            None => return Ok(None),
        },
    };
    value
        .parse::<StreamCursor>()
        .map(Some)
        .map_err(|e| ApiError::parameter(name, Some(&value), format!("{name}: {e}")))
}

/// Subscribes, reads the history up to the subscription's start, and starts the stream's
/// task; errors before the first byte are JSON answers.
async fn open(
    api: &Arc<TracesApi>,
    filter: Filter,
    follow: bool,
    resume: Option<StreamCursor>,
) -> Result<Response, ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| ApiError::unavailable(e.to_string());
    api.follower
        .ensure_started()
        .await
        .map_err(|e| unavailable(&e))?;
    let p = api
        .follower
        .partition_of(filter.account_id())
        .map_err(|e| unavailable(&e))?;
    if let Some(c) = resume
        && c.partition != p
    {
        return Err(ApiError::parameter(
            "Last-Event-ID",
            Some(&c.to_string()),
            "this event id is not of this stream (another account's partition)",
        ));
    }
    // An execution's stream gets only that execution's messages.
    let interest = match &filter {
        Filter::Execution { execution_id, .. } => Interest::Execution(execution_id.clone()),
        Filter::Conversation { .. } => Interest::All,
    };
    let sub = api
        .follower
        .subscribe(p, filter.account_id().as_bytes(), interest)
        .map_err(|e| unavailable(&e))?;
    let hist = history::read(&api.follower, &api.ch, &filter, Some(sub.from))
        .await
        .map_err(|e| unavailable(&e))?;
    if let Some(e) = &hist.clickhouse_error {
        return Err(ApiError::unavailable(format!(
            "the stream's history is unavailable: clickhouse cannot be reached ({e})"
        )));
    }
    let state = StreamState::new(
        filter,
        api.markup_rate,
        resume.unwrap_or(StreamCursor::start(p)),
    );
    let (tx, rx) = mpsc::channel::<Event>(64);
    let wait = api.cfg.debit_wait;
    tokio::spawn(run(state, hist, sub, follow, wait, tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    // The keep-alive comment comes from the stream's task (every KEEP_ALIVE): axum's would
    // re-arm a timer at every event.
    Ok(Sse::new(body).into_response())
}

/// How often an idle stream sends a comment, so proxies keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn sse(e: &StreamEvent) -> Event {
    Event::default()
        .event(e.name())
        .id(e.id().to_string())
        .data(e.data())
}

fn named(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Sends `events`; false once the client is gone.
async fn send_all(tx: &mpsc::Sender<Event>, events: &mut Vec<StreamEvent>) -> bool {
    for e in events.drain(..) {
        if tx.send(sse(&e)).await.is_err() {
            return false;
        }
    }
    true
}

/// A followed message into the stream's state; a line without the stream's needle (see
/// [`StreamState::line_needle`]) is skipped unparsed.
fn apply(state: &mut StreamState, needle: &Finder, m: &Followed, out: &mut Vec<StreamEvent>) {
    match m.topic {
        OutputTopic::Lines if needle.find(&m.payload).is_none() => state.skip_line(m.offset),
        OutputTopic::Lines => {
            if let Ok(l) = serde_json::from_slice::<PricedLine>(&m.payload) {
                state.line(m.offset, &l, out);
            }
        }
        OutputTopic::Debits => {
            if let Ok(d) = crate::debit::scan::decode(&m.payload) {
                state.debit(m.offset, &d, out);
            }
        }
    }
}

/// The stream's task: history, then live messages until the end or the client leaves.
async fn run(
    mut state: StreamState,
    hist: Committed,
    mut sub: Subscription,
    follow: bool,
    debit_wait: Duration,
    tx: mpsc::Sender<Event>,
) {
    let mut out = Vec::new();
    // Debits first: each waits for its calls, which then come in order.
    for (o, d) in &hist.debits {
        state.debit(*o, d, &mut out);
    }
    for (o, l) in &hist.lines {
        state.line(*o, l, &mut out);
    }
    let history = out.len();
    if !send_all(&tx, &mut out).await {
        return;
    }
    let opened = json!({"partition": hist.partition, "history_events": history, "follow": follow, "position": state.cursor().to_string()});
    if tx.send(named("open", opened)).await.is_err() {
        return;
    }
    let needle = state.line_needle();
    let needle = Finder::new(&needle);
    let ended = |s: &StreamState| !follow && s.execution_billed() && s.held() == 0;
    // Since when a debit is held for its last calls: released after `debit_wait` at most.
    let mut held_since: Option<Instant> = None;
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    loop {
        if ended(&state) {
            let _ = tx
                .send(named(
                    "end",
                    json!({"reason": "billed", "running": state.running()}),
                ))
                .await;
            return;
        }
        // No timer while nothing is held: an idle stream wakes for its messages, its
        // client leaving and the keep-alive only.
        let release = async {
            match held_since {
                Some(t) => tokio::time::sleep_until((t + debit_wait).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = sub.rx.recv() => {
                let Some(m) = m else {
                    let why = "the output follower stopped; reconnect with Last-Event-ID to resume";
                    let _ = tx.send(named("error", json!({"error": why, "last_event_id": state.cursor().to_string()}))).await;
                    return;
                };
                apply(&mut state, &needle, &m, &mut out);
                // A pipeline commit comes as a batch: what the follower queued meanwhile
                // goes out with it, in one write to the client rather than one each.
                tokio::task::yield_now().await;
                while let Ok(m) = sub.rx.try_recv() {
                    apply(&mut state, &needle, &m, &mut out);
                }
                // Fell behind: once the queue is taken, what was left out of it, in order.
                if sub.lagging() && sub.rx.is_empty() {
                    match sub.gap().await {
                        Ok(Some(gap)) => {
                            for m in gap.debits.iter().chain(&gap.lines) {
                                apply(&mut state, &needle, m, &mut out);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let why = format!("the stream fell behind and what it missed cannot be read ({e}); reconnect with Last-Event-ID to resume");
                            let _ = send_all(&tx, &mut out).await;
                            let _ = tx.send(named("error", json!({"error": why, "last_event_id": state.cursor().to_string()}))).await;
                            return;
                        }
                    }
                }
            }
            () = release => {
                state.release(true, &mut out);
            }
            _ = keep_alive.tick() => {
                if tx.send(Event::default().comment("keep-alive")).await.is_err() {
                    return;
                }
            }
            () = tx.closed() => return,
        }
        if state.held() == 0 {
            held_since = None;
        } else if held_since.is_none() {
            held_since = Some(Instant::now());
        }
        if !send_all(&tx, &mut out).await {
            return;
        }
    }
}
