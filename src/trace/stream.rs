//! The live stream of an execution or a conversation: committed priced lines and debits in
//! (each topic in offset order, history first), the events to send out, each with the
//! running totals and a [`StreamCursor`] as its SSE id.
//!
//! Exactly once across reconnects: a stream sends each topic's messages in offset order, so
//! "everything below the cursor's offsets was decided" holds after every event; a client
//! that reconnects with that id (`Last-Event-ID`) gets the same history replayed silently up
//! to the cursor (it rebuilds the running totals) and then every event after it, whichever
//! instance it reaches.
//!
//! A debit is sent after the calls it bills: the lines and debits topics become visible to a
//! `read_committed` reader one partition at a time, so a debit can be read before the last
//! calls of its execution. A debit waits until as many calls of its execution were sent as
//! the debits so far bill ([`StreamState::release`]; the shell forces it after a few seconds,
//! should a call never come).

use std::collections::{HashMap, HashSet, VecDeque};

use rust_decimal::Decimal;
use serde::Serialize;

use super::{DebitSummary, TraceCall};
use crate::debit::{Components, Debit, DebitKind, PricedLine, direct_debit_id};
use crate::money;

/// Where a stream stands in the account's partition of the committed output topics: the
/// next offset of `priced_usage` and of `debits` not yet decided. Written `P.L.D` (SSE id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StreamCursor {
    pub partition: i32,
    pub lines: i64,
    pub debits: i64,
}

impl StreamCursor {
    /// The start of a partition: everything is still to send.
    pub fn start(partition: i32) -> StreamCursor {
        StreamCursor {
            partition,
            lines: 0,
            debits: 0,
        }
    }
}

impl std::fmt::Display for StreamCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.partition, self.lines, self.debits)
    }
}

impl std::str::FromStr for StreamCursor {
    type Err = String;

    /// `P.L.D`, three non-negative integers.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("\"{s}\" is not an event id of this stream (three numbers P.L.D)");
        let mut it = s.trim().split('.');
        let mut next = || {
            it.next()
                .and_then(|x| x.parse::<i64>().ok())
                .filter(|v| *v >= 0)
        };
        let (p, l, d) = (next(), next(), next());
        match (p, l, d, it.next()) {
            (Some(p), Some(l), Some(d), None) => Ok(StreamCursor {
                partition: i32::try_from(p).map_err(|_| bad())?,
                lines: l,
                debits: d,
            }),
            _ => Err(bad()),
        }
    }
}

/// Which messages a stream follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The calls and debits of one execution.
    Execution {
        account_id: String,
        execution_id: String,
    },
    /// The calls whose dimension `key` is `value`, and the debits of their executions (and of
    /// direct calls) — a conversation (`docs/event-contract.md#conversations`).
    Conversation {
        account_id: String,
        key: String,
        value: String,
    },
}

impl Filter {
    pub fn account_id(&self) -> &str {
        match self {
            Filter::Execution { account_id, .. } | Filter::Conversation { account_id, .. } => {
                account_id
            }
        }
    }
}

/// The totals after an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Running {
    pub calls: u64,
    /// Vendor price of the calls so far.
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    /// The markup they carry (calls of executions; direct calls have none).
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    /// `subtotal + markup`: what the calls so far cost.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Sum of the debits sent so far: what was charged.
    #[serde(with = "rust_decimal::serde::str")]
    pub billed: Decimal,
}

/// One event to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Call {
        id: StreamCursor,
        execution_id: Option<String>,
        call: TraceCall,
        running: Running,
    },
    Debit {
        id: StreamCursor,
        execution_id: Option<String>,
        debit: DebitSummary,
        components: Components,
        running: Running,
    },
}

impl StreamEvent {
    pub fn id(&self) -> StreamCursor {
        match self {
            StreamEvent::Call { id, .. } | StreamEvent::Debit { id, .. } => *id,
        }
    }

    /// The SSE event name: `call` or `debit`.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Call { .. } => "call",
            StreamEvent::Debit { .. } => "debit",
        }
    }

    /// The SSE data: one JSON object, written straight from the event (no intermediate
    /// `Value`: a stream writes one per client per call). Keys in alphabetical order.
    pub fn data(&self) -> String {
        let mut out = Vec::new();
        self.write_data(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`StreamEvent::data`] appended to `out` (compact JSON: no line break in it).
    pub fn write_data(&self, out: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct CallData<'a> {
            call: &'a TraceCall,
            execution_id: &'a Option<String>,
            running: &'a Running,
        }
        #[derive(Serialize)]
        struct DebitData<'a> {
            components: &'a Components,
            debit: &'a DebitSummary,
            execution_id: &'a Option<String>,
            running: &'a Running,
        }
        let written = match self {
            StreamEvent::Call {
                execution_id,
                call,
                running,
                ..
            } => serde_json::to_writer(
                &mut *out,
                &CallData {
                    call,
                    execution_id,
                    running,
                },
            ),
            StreamEvent::Debit {
                execution_id,
                debit,
                components,
                running,
                ..
            } => serde_json::to_writer(
                &mut *out,
                &DebitData {
                    components,
                    debit,
                    execution_id,
                    running,
                },
            ),
        };
        // Serializing these types into a Vec cannot fail (no map with non-string keys).
        debug_assert!(written.is_ok());
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    /// Calls of the execution counted (sent, or below the resume cursor).
    lines: u64,
    /// Calls billed by its debits counted.
    billed: u64,
}

/// A stream's state: what was sent, the running totals, the debits waiting for their calls.
#[derive(Debug)]
pub struct StreamState {
    filter: Filter,
    rate: Decimal,
    resume: StreamCursor,
    next: StreamCursor,
    running: Running,
    markup_base: Decimal,
    lines_seen: HashSet<String>,
    debits_seen: HashSet<String>,
    /// Per execution id (`""` for direct calls): calls and billed calls counted.
    coverage: HashMap<String, Coverage>,
    /// Direct calls of a conversation: their debit ids.
    direct_debits: HashSet<String>,
    held: VecDeque<(i64, Debit)>,
    execution_billed: bool,
}

impl StreamState {
    /// A stream of `filter` that resumes after `resume` (its start for a new stream);
    /// `markup_rate` prices the running markup of calls not billed yet.
    pub fn new(filter: Filter, markup_rate: Decimal, resume: StreamCursor) -> StreamState {
        StreamState {
            filter,
            rate: markup_rate,
            resume,
            next: resume,
            running: Running {
                calls: 0,
                subtotal: Decimal::ZERO,
                markup: Decimal::ZERO,
                total: Decimal::ZERO,
                billed: Decimal::ZERO,
            },
            markup_base: Decimal::ZERO,
            lines_seen: HashSet::new(),
            debits_seen: HashSet::new(),
            coverage: HashMap::new(),
            direct_debits: HashSet::new(),
            held: VecDeque::new(),
            execution_billed: false,
        }
    }

    /// The cursor after everything decided so far.
    pub fn cursor(&self) -> StreamCursor {
        self.next
    }

    pub fn running(&self) -> &Running {
        &self.running
    }

    /// True once the execution's own debit (`agent_execution`) was sent or lies below the
    /// resume cursor: a stream without `follow` ends there.
    pub fn execution_billed(&self) -> bool {
        self.execution_billed
    }

    /// Debits waiting for their calls.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn wanted_line(&mut self, l: &PricedLine) -> bool {
        match &self.filter {
            Filter::Execution {
                account_id,
                execution_id,
            } => l.account_id == *account_id && l.execution_id.as_deref() == Some(execution_id),
            Filter::Conversation {
                account_id,
                key,
                value,
            } => {
                let hit = l.account_id == *account_id && l.dimensions.get(key) == Some(value);
                if hit && l.execution_id.is_none() {
                    self.direct_debits
                        .insert(direct_debit_id(&l.account_id, &l.event_id));
                }
                hit
            }
        }
    }

    /// Whether a debit belongs to the stream: `Some(true/false)`, or `None` while it cannot
    /// be told yet (a conversation's debit of an execution none of whose calls came yet).
    fn wanted_debit(&self, d: &Debit) -> Option<bool> {
        match &self.filter {
            Filter::Execution {
                account_id,
                execution_id,
            } => {
                Some(d.account_id == *account_id && d.execution_id.as_deref() == Some(execution_id))
            }
            Filter::Conversation { account_id, .. } => {
                if d.account_id != *account_id {
                    return Some(false);
                }
                match &d.execution_id {
                    Some(e) => self.coverage.contains_key(e).then_some(true),
                    None => self.direct_debits.contains(&d.debit_id).then_some(true),
                }
            }
        }
    }

    /// Bytes the JSON of every line this stream wants holds (lines are written compact, as
    /// `serde_json` writes them): a line without them is skipped unparsed
    /// ([`StreamState::skip_line`]), so a stream pays little for its account's other calls.
    pub fn line_needle(&self) -> Vec<u8> {
        let j = |v: &str| serde_json::to_string(v).unwrap_or_default();
        match &self.filter {
            Filter::Execution { execution_id, .. } => {
                format!("\"execution_id\":{}", j(execution_id)).into_bytes()
            }
            Filter::Conversation { key, value, .. } => {
                format!("{}:{}", j(key), j(value)).into_bytes()
            }
        }
    }

    /// A priced line at `offset` that is not the stream's (see [`StreamState::line_needle`]):
    /// only the cursor moves, as [`StreamState::line`] does for a line it does not want.
    pub fn skip_line(&mut self, offset: i64) {
        if offset >= self.resume.lines && offset >= self.next.lines {
            self.next.lines = offset + 1;
        }
    }

    /// A priced line at `offset` of the lines topic (in offset order).
    pub fn line(&mut self, offset: i64, l: &PricedLine, out: &mut Vec<StreamEvent>) {
        if offset < self.next.lines && offset >= self.resume.lines {
            return; // already decided (a message read twice)
        }
        let silent = offset < self.resume.lines;
        if !silent {
            self.next.lines = offset + 1;
        }
        if !self.wanted_line(l) || !self.lines_seen.insert(l.line_id()) {
            return;
        }
        let exec = l.execution_id.clone().unwrap_or_default();
        self.coverage.entry(exec).or_default().lines += 1;
        self.running.calls += 1;
        self.running.subtotal += l.cost;
        if l.execution_id.is_some() {
            self.markup_base += l.cost;
        }
        self.running.markup = money::debit_markup(self.markup_base, self.rate);
        self.running.total = self.running.subtotal + self.running.markup;
        if !silent {
            out.push(StreamEvent::Call {
                id: self.next,
                execution_id: l.execution_id.clone(),
                call: TraceCall::of(l, self.running.calls, self.running.subtotal),
                running: self.normalized(),
            });
        }
        self.release(false, out);
    }

    /// A debit at `offset` of the debits topic (in offset order).
    pub fn debit(&mut self, offset: i64, d: &Debit, out: &mut Vec<StreamEvent>) {
        if offset < self.next.debits && offset >= self.resume.debits {
            return;
        }
        if offset < self.resume.debits {
            // Sent before the reconnect: count it.
            if self.wanted_debit(d) == Some(true) && self.debits_seen.insert(d.debit_id.clone()) {
                self.count_debit(d);
            }
            return;
        }
        if self.held.iter().any(|(o, _)| *o == offset) {
            return;
        }
        self.held.push_back((offset, d.clone()));
        self.release(false, out);
    }

    fn count_debit(&mut self, d: &Debit) {
        let exec = d.execution_id.clone().unwrap_or_default();
        self.coverage.entry(exec).or_default().billed += u64::from(d.calls);
        self.running.billed += d.total;
        if d.kind == DebitKind::AgentExecution {
            self.execution_billed = true;
        }
    }

    /// Sends the waiting debits whose calls were all sent, in order; with `force`, also
    /// those still waiting (their calls did not come in time) and drops a conversation's
    /// debits it cannot place.
    pub fn release(&mut self, force: bool, out: &mut Vec<StreamEvent>) {
        while let Some((offset, d)) = self.held.front() {
            let (offset, wanted) = (*offset, self.wanted_debit(d));
            let ready = match wanted {
                Some(false) => true,
                None => force,
                Some(true) => {
                    let exec = d.execution_id.clone().unwrap_or_default();
                    let c = self.coverage.get(&exec).copied().unwrap_or_default();
                    force || c.lines >= c.billed + u64::from(d.calls)
                }
            };
            if !ready {
                break;
            }
            let (_, d) = self.held.pop_front().expect("front exists");
            self.next.debits = offset + 1;
            if wanted != Some(true) || !self.debits_seen.insert(d.debit_id.clone()) {
                continue;
            }
            self.count_debit(&d);
            out.push(StreamEvent::Debit {
                id: self.next,
                execution_id: d.execution_id.clone(),
                debit: DebitSummary::of(&d),
                components: if d.components == Components::default() {
                    Components::of(&d.breakdown, d.markup)
                } else {
                    d.components
                },
                running: self.normalized(),
            });
        }
    }

    fn normalized(&self) -> Running {
        Running {
            calls: self.running.calls,
            subtotal: self.running.subtotal.normalize(),
            markup: self.running.markup.normalize(),
            total: self.running.total.normalize(),
            billed: self.running.billed.normalize(),
        }
    }
}

#[cfg(test)]
mod tests;
