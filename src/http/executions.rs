//! `GET /v1/executions/{id}?account_id=A`: one execution's trace (`crate::trace`), the same
//! shape open or closed. Open on this instance: from the pipeline's live state (its running
//! totals; the calls committed so far, then those only the live state knows); otherwise from
//! the committed history (`crate::history`: ClickHouse, then the output topics' recent tail),
//! so a just-closed execution is answered from its committed debit before ClickHouse has it.
//!
//! `GET /v1/accounts/{id}/executions?from=&to=&limit=&cursor=`: an account's executions,
//! newest first, with their totals (`crate::history::listing`).

use std::collections::HashSet;
use std::time::Instant;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::auth::Caller;
use super::error::ApiPath;
use super::params::{ApiError, Params, check_id};
use super::traces::{self, TracesApi};
use crate::history::{self, Committed, HistoryError};
use crate::rollup::{OpenExecutionView, TracedCall};
use crate::trace::{self, DebitSummary, ExecutionTrace, Omitted, Source, TraceInput};

pub async fn trace(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let t0 = Instant::now();
    let mut timing = Timing::default();
    match trace_of(&s, &caller, &id, raw.as_deref(), &mut timing).await {
        Ok(t) => {
            let t1 = Instant::now();
            let mut r = Json(t).into_response();
            timing.span("json", t1);
            timing.span("total", t0);
            if let Ok(v) = axum::http::HeaderValue::from_str(&timing.0.join(", ")) {
                r.headers_mut().insert("server-timing", v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

/// The `Server-Timing` header of a trace: where its time went, in ms.
#[derive(Default)]
struct Timing(Vec<String>);

impl Timing {
    fn span(&mut self, name: &str, since: Instant) {
        let ms = since.elapsed().as_secs_f64() * 1000.0;
        self.0.push(format!("{name};dur={ms:.2}"));
    }
}

async fn trace_of(
    s: &HttpState,
    caller: &Caller,
    id: &str,
    raw: Option<&str>,
    timing: &mut Timing,
) -> Result<ExecutionTrace, ApiError> {
    let t = Instant::now();
    check_id("execution_id", id)?;
    let p = Params::parse(raw, &["account_id"])?;
    let requested = p.string("account_id")?;
    if let Some(a) = &requested {
        check_id("account_id", a)?;
    }
    let api = traces::api(s)?;
    // A key reads its own account's executions only: another account's id is the 404 of
    // an unknown execution.
    let account = match caller.scope(requested.as_deref(), || not_found(id))? {
        Some(a) => a,
        None => account_of(api, id).await?,
    };
    timing.span("account", t);
    let t = Instant::now();
    let live = api
        .engine
        .get()
        .and_then(|e| e.open_execution(&account, id));
    // Taken after the live lookup: if the execution had closed, its finish is counted.
    let mark = Handled::mark(api);
    timing.span("live", t);
    let t = Instant::now();
    let read =
        || history::cache::read_execution(&api.history, &api.follower, &api.ch, &account, id);
    let mut committed = read().await;
    timing.span("history", t);
    // Neither open here nor committed yet: it may have closed a moment ago, its debit (and
    // its calls) still in the pipeline's open transaction, or not even sent yet (outputs go
    // out with the transaction). Until a pipeline transaction has surely passed, wait until
    // the follower has read what was written before, then look again.
    let wait = Wait::new(api);
    loop {
        let missing = live.is_none()
            && committed
                .as_ref()
                .is_ok_and(|c| c.lines.is_empty() && c.debits.is_empty());
        if !missing || !wait.again(Instant::now(), mark.pending(api)) {
            break;
        }
        let p = api.follower.partition_of(&account).map_err(unavailable)?;
        api.follower
            .sync(Some(p), SYNC_WAIT)
            .await
            .map_err(unavailable)?;
        committed = read().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let trace = assemble(id, &account, live, committed, api.markup_rate);
    timing.span("assemble", t);
    trace
}

/// How long a lookup waits for the follower to read what was written before it.
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long past its settle time a lookup that finds nothing waits for this instance's
/// pipeline to commit what it had handled: a commit slower than that is a stalled pipeline
/// (`/readyz` says so), and the lookup answers what it found.
const SLOW_COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a lookup that finds nothing keeps looking: two pipeline transactions and a
/// margin, at least 1 s (an unknown id's 404 waits this long), and, on an instance running
/// the pipeline, until what it had handled when the lookup began is committed (at most
/// [`SLOW_COMMIT_WAIT`] more): an execution that closed just before is found also when a
/// commit is slow.
fn settle(api: &TracesApi) -> std::time::Duration {
    let two_commits = api.follower.config().pipeline.checkpoint_interval * 2
        + std::time::Duration::from_millis(300);
    two_commits.max(std::time::Duration::from_secs(1))
}

/// The deadlines of a lookup that found nothing ([`settle`]).
struct Wait {
    settle_until: Instant,
    cap: Instant,
}

impl Wait {
    fn new(api: &TracesApi) -> Wait {
        let settle_until = Instant::now() + settle(api);
        Wait {
            settle_until,
            cap: settle_until + SLOW_COMMIT_WAIT,
        }
    }

    /// Look again at `now`? Until the settle time, and after it while this instance's
    /// pipeline has not committed what it had handled (`pending`), never past the cap.
    fn again(&self, now: Instant, pending: bool) -> bool {
        now < self.cap && (now < self.settle_until || pending)
    }
}

/// What this instance's pipeline had handled when a lookup began (`None`: no pipeline here).
struct Handled(Option<u64>);

impl Handled {
    fn mark(api: &TracesApi) -> Handled {
        Handled(api.engine.get().map(|e| e.progress().handled()))
    }

    /// True while part of it is not committed yet.
    fn pending(&self, api: &TracesApi) -> bool {
        match (self.0, api.engine.get()) {
            (Some(mark), Some(e)) => !e.progress().committed_up_to(mark),
            _ => false,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// The account of an execution the operator asked without `account_id`: the open one on
/// this instance, else those the output topics' recent tail and ClickHouse know (waiting, when
/// none does, for what was written before the request); several accounts answer 409.
async fn account_of(api: &TracesApi, id: &str) -> Result<String, ApiError> {
    if let Some(d) = api.engine.get().and_then(|e| e.running_cost(id, None)) {
        return Ok(d.account_id);
    }
    // After the lookup of open executions, as in `trace_of`.
    let mark = Handled::mark(api);
    api.follower.ensure_started().await.map_err(unavailable)?;
    let mut accounts = api.follower.accounts_of(id).await;
    // The tail names it (its index answers at once): no ClickHouse scan. An id reused by
    // another account whose messages left the tail is not looked for (give account_id).
    let older = if !accounts.is_empty() {
        Ok(Vec::new())
    } else if let Some(known) = api.history.accounts(id) {
        Ok(known)
    } else {
        let a = api
            .ch
            .query(
                "SELECT DISTINCT account_id FROM usage_transactions WHERE execution_id = ? LIMIT 100",
            )
            .bind(id)
            .fetch_all::<String>()
            .await;
        if let Ok(a) = &a {
            api.history.keep_accounts(id, a.clone());
        }
        a
    };
    match older {
        Ok(a) => accounts.extend(a),
        // The recent tail still answers for what it holds.
        Err(e) if !accounts.is_empty() => {
            tracing::debug!(error = %e, "execution lookup in clickhouse failed; answered from the output topics");
        }
        Err(e) => {
            tracing::warn!(error = %e, "execution lookup in clickhouse failed");
            return Err(ApiError::unavailable(
                "clickhouse cannot be reached and the output topics' recent tail does not hold this execution; give account_id to read it from the output topics",
            ));
        }
    }
    // Closed a moment ago: its first committed message may still be on its way.
    let wait = Wait::new(api);
    while accounts.is_empty() && wait.again(Instant::now(), mark.pending(api)) {
        api.follower
            .sync(None, SYNC_WAIT)
            .await
            .map_err(unavailable)?;
        accounts = api.follower.accounts_of(id).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let accounts: Vec<String> = accounts.into_iter().collect();
    match accounts.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(not_found(id)),
        many => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "execution {} exists in {} accounts; ask with ?account_id=",
                crate::rejection::excerpt(id),
                many.len()
            ),
        )),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "execution {} has no priced call and no debit in this account (yet)",
        crate::rejection::excerpt(id)
    ))
}

/// Builds the answer from the live state (if open here) and the committed history.
pub fn assemble(
    id: &str,
    account: &str,
    live: Option<OpenExecutionView>,
    committed: Result<Committed, HistoryError>,
    markup_rate: rust_decimal::Decimal,
) -> Result<ExecutionTrace, ApiError> {
    let committed = committed.map_err(|e| {
        tracing::warn!(error = %e, "execution history unavailable");
        e
    });
    // The committed lines are complete unless ClickHouse could not answer.
    let (lines, debits, complete) = match &committed {
        Ok(c) => {
            let lines = trace::dedupe_lines(c.lines.iter().map(|(_, l)| l.clone()).collect());
            let debits =
                trace::dedupe_debits(c.debits.iter().map(|(_, d)| DebitSummary::of(d)).collect());
            let complete = c.clickhouse_error.is_none()
                || (!debits.is_empty()
                    && debits.iter().map(|d| u64::from(d.calls)).sum::<u64>()
                        == lines.len() as u64);
            (lines, debits, complete)
        }
        Err(_) => (Vec::new(), Vec::new(), false),
    };
    if let Some(v) = live {
        let (lines, live_only, omitted) = if complete {
            let known: HashSet<&str> = lines.iter().map(|l| l.event_id.as_str()).collect();
            let live_only: Vec<TracedCall> = v
                .calls
                .iter()
                .filter(|c| !known.contains(c.event_id.as_str()))
                .cloned()
                .collect();
            let listed = (lines.len() + live_only.len()) as u64;
            let after = u64::from(v.running.calls).saturating_sub(listed);
            let omitted = Omitted {
                before: 0,
                after,
                reason: (after > 0).then(|| {
                    "priced but neither committed yet nor within the calls the pipeline keeps per open execution (rollup.max_trace_calls)".to_string()
                }),
            };
            (lines, live_only, omitted)
        } else {
            let after = u64::from(v.calls_omitted);
            let omitted = Omitted {
                before: 0,
                after,
                reason: (after > 0).then(|| {
                    "beyond the calls the pipeline keeps per open execution (rollup.max_trace_calls), and the committed history is unavailable".to_string()
                }),
            };
            (Vec::new(), v.calls.clone(), omitted)
        };
        return trace::build(&TraceInput {
            execution_id: id,
            account_id: account,
            source: Source::Live,
            lines: &lines,
            live_only: &live_only,
            debits: &[],
            omitted,
            aggregate: Some(&v.running.breakdown),
            markup_rate: v.running.markup_rate,
        })
        .ok_or_else(|| not_found(id));
    }
    let c = match committed {
        Ok(c) => c,
        Err(e) => return Err(ApiError::unavailable(e.to_string())),
    };
    if !complete {
        return Err(ApiError::unavailable(format!(
            "clickhouse cannot be reached ({}) and the output topics' recent tail does not hold all of execution {}",
            c.clickhouse_error.unwrap_or_default(),
            crate::rejection::excerpt(id)
        )));
    }
    trace::build(&TraceInput {
        execution_id: id,
        account_id: account,
        source: Source::Committed,
        lines: &lines,
        live_only: &[],
        debits: &debits,
        omitted: Omitted::default(),
        aggregate: None,
        markup_rate,
    })
    .ok_or_else(|| not_found(id))
}

pub async fn list(
    State(s): State<HttpState>,
    caller: Caller,
    ApiPath(account): ApiPath<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let run = async {
        let api = traces::api(&s)?;
        traces::account_for(&caller, &account, "executions")?;
        let p = Params::parse(raw.as_deref(), &["from", "to", "limit", "cursor"])?;
        let q = history::listing::Query {
            window: p.window()?,
            limit: p.number("limit", 1, 1000)?.unwrap_or(50) as u32,
            cursor: match p.string("cursor")? {
                None => None,
                Some(c) => Some(
                    history::listing::Cursor::parse(&c)
                        .map_err(|e| ApiError::parameter("cursor", Some(&c), e))?,
                ),
            },
        };
        history::listing::executions(&api.ch, &account, &q, api.markup_rate)
            .await
            .map_err(|e| ApiError::clickhouse_down("the execution listing", &e))
    };
    match run.await {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lookup_waits_past_settle_only_while_the_pipeline_has_not_committed() {
        let t0 = Instant::now();
        let w = Wait {
            settle_until: t0 + Duration::from_secs(1),
            cap: t0 + Duration::from_secs(11),
        };
        assert!(w.again(t0, false), "before the settle time");
        assert!(
            !w.again(t0 + Duration::from_secs(2), false),
            "after it, with nothing pending"
        );
        assert!(
            w.again(t0 + Duration::from_secs(2), true),
            "after it, while a slow commit is pending"
        );
        assert!(
            !w.again(t0 + Duration::from_secs(11), true),
            "never past the cap"
        );
    }
}
