//! Dead-letter replay (`usage-aggregator dead-letters replay`): the dead-letter topic in,
//! read to its end (read_committed, end found by partition EOF, never by counting offsets),
//! filtered by reason, rejection time and account; the original payload bytes out,
//! re-published to the usage topic with the producers' key (execution_id, else account_id)
//! into the partition they were first read from, so a replayed call meets its execution.
//!
//! Replaying is safe to repeat: the rating core remembers only billed events, so a replay
//! bills a once-rejected event exactly once, and a second replay is a duplicate (within
//! `rollup.dedupe_horizon` offsets of the first; beyond it the direct or adjustment debit
//! repeats its deterministic `debit_id`, which the ledger applies once).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use serde::Serialize;

use crate::config::Config;
use crate::rejection::{DeadLetter, RejectReason};

/// Reasons replayed when none is named: those a catalog fix can cure. Every other reason is
/// a function of the payload alone, so its replay is rejected again (name it to force it).
pub const DEFAULT_REASONS: [RejectReason; 3] = [
    RejectReason::UnknownAsset,
    RejectReason::NoPriceAtTime,
    RejectReason::UnknownUnit,
];

/// Which dead letters to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Empty: [`DEFAULT_REASONS`].
    pub reasons: Vec<RejectReason>,
    /// Rejected at or after (the dead-letter message's timestamp).
    pub from: Option<DateTime<Utc>>,
    /// Rejected before.
    pub to: Option<DateTime<Utc>>,
    /// Only events whose `account_id` is this.
    pub account: Option<String>,
}

/// One dead letter as read from the topic.
#[derive(Debug, Clone)]
pub struct ReadLetter {
    pub letter: DeadLetter,
    /// Kafka timestamp of the dead-letter message: when the event was rejected.
    pub rejected_at: Option<DateTime<Utc>>,
}

/// One payload to re-publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replay {
    pub dead_letter_id: String,
    pub reason: RejectReason,
    pub rejected_at: Option<DateTime<Utc>>,
    pub partition: i32,
    /// The producers' key; `None` if the payload names neither execution nor account.
    pub key: Option<String>,
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Picks the dead letters to replay: of the usage topic, matching the filter, each source
/// event once (a dead letter repeated by a pipeline replay counts once), in source order.
pub fn select(
    letters: &[ReadLetter],
    filter: &ReplayFilter,
    usage_topic: &str,
) -> anyhow::Result<Vec<Replay>> {
    use base64::Engine;
    let reasons: &[RejectReason] = if filter.reasons.is_empty() {
        &DEFAULT_REASONS
    } else {
        &filter.reasons
    };
    if reasons.contains(&RejectReason::SinkRejected) {
        anyhow::bail!(
            "--reason sink_rejected cannot be replayed: those dead letters hold output rows, not usage events"
        );
    }
    let mut seen = HashSet::new();
    let mut out = BTreeMap::new();
    for r in letters {
        let dl = &r.letter;
        if dl.source_topic != usage_topic
            || !reasons.contains(&dl.reason)
            || filter
                .from
                .is_some_and(|f| r.rejected_at.is_none_or(|t| t < f))
            || filter
                .to
                .is_some_and(|t| r.rejected_at.is_none_or(|at| at >= t))
            || !seen.insert(dl.id())
        {
            continue;
        }
        let payload = match (&dl.payload, &dl.payload_base64) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("dead letter {} has invalid payload_base64", dl.id()))?,
            (None, None) => continue,
        };
        let fields = serde_json::from_slice::<serde_json::Value>(&payload).ok();
        let field = |name: &str| {
            fields
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let account = field("account_id");
        if filter.account.is_some() && filter.account != account {
            continue;
        }
        out.insert(
            (dl.source_partition, dl.source_offset),
            Replay {
                dead_letter_id: dl.id(),
                reason: dl.reason,
                rejected_at: r.rejected_at,
                partition: dl.source_partition,
                key: field("execution_id").or(account),
                payload,
            },
        );
    }
    Ok(out.into_values().collect())
}

/// Reads every dead letter committed so far. Each partition is read until librdkafka
/// reports its end (partition EOF: for a read_committed consumer, the last stable offset),
/// so transaction markers and aborted records never leave it waiting for an offset that
/// will not come.
pub fn read_dead_letters(cfg: &Config, timeout: Duration) -> anyhow::Result<Vec<ReadLetter>> {
    let topic = &cfg.topics.dead_letter;
    let mut c = crate::kafka::reader_config(cfg);
    c.set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set(
            "group.id",
            format!("{}-replay-{}", cfg.kafka.group_id, std::process::id()),
        );
    let consumer: BaseConsumer = c.create()?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(
        !partitions.is_empty(),
        "dead-letter topic {topic} does not exist; run `usage-aggregator setup`"
    );
    let mut out = Vec::new();
    crate::kafka::read_to_end(
        &consumer,
        topic,
        &partitions,
        timeout,
        &format!("timed out reading {topic}"),
        |_, _, _| Ok(()),
        |m| {
            let Some(bytes) = m.payload() else {
                return Ok(());
            };
            match serde_json::from_slice::<DeadLetter>(bytes) {
                Ok(letter) => out.push(ReadLetter {
                    letter,
                    rejected_at: m
                        .timestamp()
                        .to_millis()
                        .and_then(DateTime::from_timestamp_millis),
                }),
                Err(e) => tracing::warn!(
                    partition = m.partition(),
                    offset = m.offset(),
                    error = %e,
                    "skipping a message of the dead-letter topic that is not a dead letter"
                ),
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// Re-publishes the payloads to the usage topic; returns how many.
pub fn publish(cfg: &Config, replays: &[Replay]) -> anyhow::Result<usize> {
    let loader = crate::bench::Loader::new(cfg)?;
    for r in replays {
        loader.send_to(
            &cfg.topics.usage_events,
            r.partition,
            r.key.as_deref().unwrap_or_default(),
            &r.payload,
        )?;
    }
    loader.flush()?;
    Ok(replays.len())
}

/// A time for `--from`/`--to`: RFC 3339 (`2026-03-01T10:00:00Z`) or an age (`2h` ago).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor an age such as 2h"))?;
    Ok(Utc::now() - chrono::Duration::from_std(age).map_err(|e| e.to_string())?)
}

/// A reason code for `--reason`.
pub fn parse_reason(s: &str) -> Result<RejectReason, String> {
    RejectReason::ALL
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| {
            let all: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown reason {s:?}; one of {}", all.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::Rejection;

    fn letter(reason: RejectReason, payload: &[u8], p: i32, o: i64, at: i64) -> ReadLetter {
        ReadLetter {
            letter: DeadLetter::new(&Rejection::new(reason, "m"), payload, "usage", p, o),
            rejected_at: DateTime::from_timestamp(at, 0),
        }
    }

    const DIRECT: &[u8] = br#"{"type":"tool_call","event_id":"e1","account_id":"acct-a","asset_id":"x","quantities":{"requests":1}}"#;
    const IN_EXEC: &[u8] = br#"{"type":"tool_call","event_id":"e2","account_id":"acct-b","execution_id":"x-9","asset_id":"x","quantities":{"requests":1}}"#;

    #[test]
    fn selects_by_reason_time_and_account_once_each_in_source_order() {
        let letters = vec![
            letter(RejectReason::UnknownAsset, IN_EXEC, 1, 7, 200),
            letter(RejectReason::UnknownAsset, DIRECT, 0, 3, 100),
            // A pipeline replay repeated the dead letter: counted once.
            letter(RejectReason::UnknownAsset, DIRECT, 0, 3, 150),
            letter(RejectReason::InvalidJson, b"{", 0, 4, 100),
            letter(RejectReason::InvalidEncoding, b"\xff{", 0, 5, 100),
            // Another topic's dead letter (the sink's).
            ReadLetter {
                letter: DeadLetter::new(
                    &Rejection::new(RejectReason::UnknownAsset, "m"),
                    DIRECT,
                    "debits",
                    0,
                    1,
                ),
                rejected_at: None,
            },
        ];
        let all = select(&letters, &ReplayFilter::default(), "usage").unwrap();
        let got: Vec<(&str, Option<&str>, i32)> = all
            .iter()
            .map(|r| (r.dead_letter_id.as_str(), r.key.as_deref(), r.partition))
            .collect();
        assert_eq!(
            got,
            [
                ("usage/0/3", Some("acct-a"), 0),
                ("usage/1/7", Some("x-9"), 1)
            ]
        );
        assert_eq!(all[0].payload, DIRECT);
        let f = ReplayFilter {
            account: Some("acct-b".into()),
            ..Default::default()
        };
        assert_eq!(select(&letters, &f, "usage").unwrap().len(), 1);
        let f = ReplayFilter {
            from: DateTime::from_timestamp(101, 0),
            to: DateTime::from_timestamp(201, 0),
            ..Default::default()
        };
        let late = select(&letters, &f, "usage").unwrap();
        assert_eq!(late.len(), 2, "the repeat at 150 stands for usage/0/3");
        let f = ReplayFilter {
            reasons: vec![RejectReason::InvalidJson, RejectReason::InvalidEncoding],
            ..Default::default()
        };
        let bad = select(&letters, &f, "usage").unwrap();
        assert_eq!(bad.len(), 2);
        assert_eq!(
            bad[1].payload, b"\xff{",
            "base64 payloads come back as bytes"
        );
        assert_eq!(bad[0].key, None);
        let f = ReplayFilter {
            reasons: vec![RejectReason::SinkRejected],
            ..Default::default()
        };
        assert!(select(&letters, &f, "usage").is_err());
    }

    #[test]
    fn times_and_reasons_parse() {
        assert_eq!(
            parse_time("2026-03-01T10:00:00+01:00").unwrap(),
            DateTime::from_timestamp(1_772_355_600, 0).unwrap()
        );
        let ago = Utc::now() - parse_time("2h").unwrap();
        assert!((7190..7210).contains(&ago.num_seconds()), "{ago}");
        assert!(parse_time("soon").unwrap_err().contains("soon"));
        assert_eq!(
            parse_reason("unknown_asset").unwrap(),
            RejectReason::UnknownAsset
        );
        assert!(parse_reason("nope").unwrap_err().contains("unknown_unit"));
    }
}
