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

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use memchr::memmem::Finder;
use serde_json::json;

use super::HttpState;
use super::auth::Caller;
use super::error::ApiPath;
use super::params::{ApiError, Params, check_id};
use super::traces::{self, TracesApi};
use crate::debit::PricedLine;
use crate::follow::{Followed, Interest, OutputTopic, Subscription};
use crate::history;
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
    let mut state = StreamState::new(
        filter,
        api.markup_rate,
        resume.unwrap_or(StreamCursor::start(p)),
    );
    // The history and `open` are the body's first chunk.
    let mut out = Vec::new();
    // Debits first: each waits for its calls, which then come in order.
    for (o, d) in &hist.debits {
        state.debit(*o, d, &mut out);
    }
    for (o, l) in &hist.lines {
        state.line(*o, l, &mut out);
    }
    let mut first = Vec::new();
    let history = out.len();
    for e in out.drain(..) {
        frame(&mut first, &e);
    }
    let opened = json!({"partition": hist.partition, "history_events": history, "follow": follow, "position": state.cursor().to_string()});
    named(&mut first, "open", &opened);
    let needle = Finder::new(&state.line_needle()).into_owned();
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        state,
        sub,
        needle,
        follow,
        debit_wait: api.cfg.debit_wait,
        held_since: None,
        keep_alive,
        out,
        done: false,
    };
    // One task per stream: the connection's. hyper polls the body when it can write, the
    // body waits on the follower's queue (no task and channel between them: a hand-over
    // per event between two tasks was most of a stream's CPU). The client leaving drops
    // the body, and with it the subscription.
    let body = futures::stream::once(std::future::ready(Ok::<Bytes, Infallible>(Bytes::from(
        first,
    ))))
    .chain(futures::stream::unfold(live, Live::next_chunk));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// How often an idle stream sends a comment, so proxies keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event in the SSE wire format (event, id, data; the data is compact JSON, one line).
fn frame(buf: &mut Vec<u8>, e: &StreamEvent) {
    use std::io::Write;
    let _ = write!(buf, "event: {}\nid: {}\ndata: ", e.name(), e.id());
    e.write_data(buf);
    buf.extend_from_slice(b"\n\n");
}

/// An event without id (`open`, `end`, `error`).
fn named(buf: &mut Vec<u8>, name: &str, data: &serde_json::Value) {
    use std::io::Write;
    let _ = write!(buf, "event: {name}\ndata: {data}\n\n");
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

/// A stream after its history: live messages until the end or the client leaves.
struct Live {
    state: StreamState,
    sub: Subscription,
    needle: Finder<'static>,
    follow: bool,
    debit_wait: Duration,
    /// Since when a debit is held for its last calls: released after `debit_wait` at most.
    held_since: Option<Instant>,
    keep_alive: tokio::time::Interval,
    out: Vec<StreamEvent>,
    /// The last chunk (`end` or `error`) was given.
    done: bool,
}

impl Live {
    /// The body's next chunk: every event that is ready, as one write to the client; `None`
    /// after `end` or `error`.
    async fn next_chunk(mut self) -> Option<(Result<Bytes, Infallible>, Live)> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        while buf.is_empty() {
            self.step(&mut buf).await;
        }
        Some((Ok(Bytes::from(buf)), self))
    }

    /// Waits for the next thing to happen and writes what it makes to `buf`.
    async fn step(&mut self, buf: &mut Vec<u8>) {
        let ended = !self.follow && self.state.execution_billed() && self.state.held() == 0;
        if ended {
            let running = json!({"reason": "billed", "running": self.state.running()});
            named(buf, "end", &running);
            self.done = true;
            return;
        }
        // No timer while nothing is held: an idle stream wakes for its messages and the
        // keep-alive only.
        let held_since = self.held_since;
        let wait = self.debit_wait;
        let release = async move {
            match held_since {
                Some(t) => tokio::time::sleep_until((t + wait).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = self.sub.rx.recv() => {
                let Some(m) = m else {
                    let why = "the output follower stopped; reconnect with Last-Event-ID to resume";
                    self.fail(buf, why.to_string());
                    return;
                };
                apply(&mut self.state, &self.needle, &m, &mut self.out);
                // A pipeline commit comes as a batch: what the follower queued meanwhile
                // goes out with it, in one write to the client rather than one each.
                tokio::task::yield_now().await;
                while let Ok(m) = self.sub.rx.try_recv() {
                    apply(&mut self.state, &self.needle, &m, &mut self.out);
                }
                // Fell behind: once the queue is taken, what was left out of it, in order.
                if self.sub.lagging() && self.sub.rx.is_empty() {
                    match self.sub.gap().await {
                        Ok(Some(gap)) => {
                            for m in gap.debits.iter().chain(&gap.lines) {
                                apply(&mut self.state, &self.needle, m, &mut self.out);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let why = format!("the stream fell behind and what it missed cannot be read ({e}); reconnect with Last-Event-ID to resume");
                            self.fail(buf, why);
                            return;
                        }
                    }
                }
            }
            () = release => {
                self.state.release(true, &mut self.out);
            }
            _ = self.keep_alive.tick() => {
                buf.extend_from_slice(b": keep-alive\n\n");
            }
        }
        if self.state.held() == 0 {
            self.held_since = None;
        } else if self.held_since.is_none() {
            self.held_since = Some(Instant::now());
        }
        for e in self.out.drain(..) {
            frame(buf, &e);
        }
    }

    /// The events so far, then `error` with the position to resume after; the last chunk.
    fn fail(&mut self, buf: &mut Vec<u8>, why: String) {
        for e in self.out.drain(..) {
            frame(buf, &e);
        }
        let err = json!({"error": why, "last_event_id": self.state.cursor().to_string()});
        named(buf, "error", &err);
        self.done = true;
    }
}
