//! Offline rating: JSON lines of events in, JSON lines of debits, rejections and (optionally)
//! priced lines out, through the very same rollup the pipeline runs. At end of input every
//! open execution closes, as if idle. Rejections go to their own writer when one is given;
//! the summary counts events, debits, rejections by reason and duplicates.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::Serialize;

use crate::debit::{Debit, PricedLine};
use crate::rating::Pricing;
use crate::rejection::RejectReason;
use crate::rollup::{Outcome, Output, PartitionRollup, RollupConfig};

#[derive(Serialize)]
struct RejectedRecord<'a> {
    line: i64,
    reason: RejectReason,
    message: &'a str,
    payload: String,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Record<'a> {
    Debit(&'a Debit),
    Rejected(RejectedRecord<'a>),
    Line(&'a PricedLine),
}

/// Totals of one offline run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RateSummary {
    /// Non-blank input lines.
    pub events: u64,
    pub debits: u64,
    pub rejected: u64,
    /// Repeats of an event id already seen with the same content (dropped, not billed).
    pub duplicates: u64,
    /// Rejections per reason code.
    pub rejected_by_reason: BTreeMap<String, u64>,
}

impl std::fmt::Display for RateSummary {
    /// `rated 4 events: 1 debits, 1 rejected (invalid_json 1), 0 duplicates`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rated {} events: {} debits, {} rejected",
            self.events, self.debits, self.rejected
        )?;
        if !self.rejected_by_reason.is_empty() {
            let by: Vec<String> = self
                .rejected_by_reason
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            write!(f, " ({})", by.join(", "))?;
        }
        write!(f, ", {} duplicates", self.duplicates)
    }
}

/// Where rejections go: tagged records in the main output, or plain records to their own.
pub enum Rejects<'a> {
    Inline,
    To(&'a mut dyn Write),
}

/// Rates every line of `input` (line number = offset, partition 0) with the catalog and the
/// plans (`rate --plans`), and writes records.
pub fn rate<'a, R: BufRead, W: Write>(
    cfg: RollupConfig,
    pricing: impl Into<Pricing<'a>>,
    input: R,
    mut output: W,
    with_lines: bool,
    mut rejects: Rejects<'_>,
) -> std::io::Result<RateSummary> {
    let pricing = pricing.into();
    let mut rollup = PartitionRollup::new(cfg, 0);
    let mut out = Vec::new();
    let mut summary = RateSummary::default();
    let mut offset = 0i64;
    for line in input.split(b'\n') {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            offset += 1;
            continue;
        }
        summary.events += 1;
        if rollup.process(offset, &line, pricing, 0, &mut out) == Outcome::Duplicate {
            summary.duplicates += 1;
        }
        write_outputs(
            &mut output,
            &mut rejects,
            &mut out,
            offset,
            &line,
            with_lines,
            &mut summary,
        )?;
        offset += 1;
    }
    rollup.close_all(pricing.plans, &mut out);
    write_outputs(
        &mut output,
        &mut rejects,
        &mut out,
        offset,
        b"",
        with_lines,
        &mut summary,
    )?;
    output.flush()?;
    if let Rejects::To(w) = &mut rejects {
        w.flush()?;
    }
    Ok(summary)
}

fn write_outputs<W: Write>(
    w: &mut W,
    rejects: &mut Rejects<'_>,
    out: &mut Vec<Output>,
    offset: i64,
    payload: &[u8],
    with_lines: bool,
    summary: &mut RateSummary,
) -> std::io::Result<()> {
    for o in out.drain(..) {
        let rec = match &o {
            Output::Debit(d) => {
                summary.debits += 1;
                Record::Debit(d)
            }
            Output::Line(l) if with_lines => Record::Line(l),
            Output::Line(_) => continue,
            Output::Rejected(r) => {
                summary.rejected += 1;
                *summary
                    .rejected_by_reason
                    .entry(r.reason.as_str().to_string())
                    .or_default() += 1;
                let rec = RejectedRecord {
                    line: offset + 1,
                    reason: r.reason,
                    message: &r.message,
                    payload: String::from_utf8_lossy(payload).into_owned(),
                };
                if let Rejects::To(to) = rejects {
                    serde_json::to_writer(&mut **to, &rec)?;
                    to.write_all(b"\n")?;
                    continue;
                }
                Record::Rejected(rec)
            }
        };
        serde_json::to_writer(&mut *w, &rec)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}
