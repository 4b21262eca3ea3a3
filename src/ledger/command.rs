//! The `credit_grants` topic is the ledger's command log: grants (no `command` field, the
//! format since the first build), and commands with a `command` field, all keyed by
//! `account_id` except the clock. Bytes in; a typed [`Command`] (or a [`Rejection`] plus
//! whatever could be read of the caller's ids, so a refusal can still be answered) out. Pure.
//!
//! ```json
//! {"command":"grant_status","request_id":"r-1","account_id":"acct-1","grant_id":"pay_1"}
//! {"command":"account_status","request_id":"r-2","account_id":"acct-1"}
//! {"command":"set_thresholds","request_id":"r-3","account_id":"acct-1","thresholds":["50","20%","0"],"expiry_warning_secs":604800}
//! {"command":"set_auto_topup","request_id":"r-4","account_id":"acct-1","rule":{"below":"10","refill_to":"100"}}
//! {"command":"clock","at":"2026-03-01T10:00:00Z"}   (+ header ua-marker-mac)
//! ```
//! In `set_thresholds`, a field left out keeps its value and `null` restores the default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ledger::grant::{Grant, GrantRules, check_account, id_problem, parse_grant};
use crate::ledger::thresholds::{AutoTopup, Threshold};
use crate::rejection::{RejectReason, Rejection};

/// Most thresholds an account can have.
pub const MAX_THRESHOLDS: usize = 10;
/// Longest expiry warning window: ten years, in seconds.
pub const MAX_WARNING_SECS: u64 = 3650 * 86_400;

/// One message of the command log, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Grant(Grant),
    /// A status query or a settings change, its ids and limits checked by
    /// [`parse_command`]; never [`Request::Clock`] (that is [`Command::Clock`]).
    Request(Request),
    /// The ledger's clock for this partition reached `at`; the marker's MAC header is
    /// checked by the processor (it needs the topic, partition and headers), not here.
    Clock {
        at: DateTime<Utc>,
    },
}

/// Distinguishes a field left out (`None`) from `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A command as it travels (what the CLI and the HTTP API send; [`parse_command`] checks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    GrantStatus {
        request_id: String,
        account_id: String,
        grant_id: String,
    },
    AccountStatus {
        request_id: String,
        account_id: String,
    },
    SetThresholds {
        request_id: String,
        account_id: String,
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        thresholds: Option<Option<Vec<Threshold>>>,
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        expiry_warning_secs: Option<Option<u64>>,
    },
    SetAutoTopup {
        request_id: String,
        account_id: String,
        rule: Option<AutoTopup>,
    },
    Clock {
        at: DateTime<Utc>,
    },
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ledger command serializes")
    }

    /// The account it is about (its key on the topic); none for a clock marker.
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Request::GrantStatus { account_id, .. }
            | Request::AccountStatus { account_id, .. }
            | Request::SetThresholds { account_id, .. }
            | Request::SetAutoTopup { account_id, .. } => Some(account_id),
            Request::Clock { .. } => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Request::GrantStatus { request_id, .. }
            | Request::AccountStatus { request_id, .. }
            | Request::SetThresholds { request_id, .. }
            | Request::SetAutoTopup { request_id, .. } => Some(request_id),
            Request::Clock { .. } => None,
        }
    }
}

/// The ids a refused message carried, read leniently (for its answer and its memory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Ids {
    #[serde(default, deserialize_with = "lenient")]
    pub command: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub request_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub account_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub grant_id: Option<String>,
}

fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

impl Ids {
    /// The ids of `bytes`, or none when it is not a JSON object.
    pub fn read(bytes: &[u8]) -> Ids {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// The account the answer goes to, when it is a valid account id.
    pub fn account(&self) -> Option<&str> {
        self.account_id
            .as_deref()
            .filter(|a| check_account(a).is_ok())
    }
}

fn check_ids(request_id: &str, account_id: &str) -> Result<(), Rejection> {
    if let Some(why) = id_problem(request_id) {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("request_id {why}"),
        ));
    }
    check_account(account_id)
}

/// Parses one `credit_grants` message: a grant when it has no `command` field.
pub fn parse_command(bytes: &[u8], rules: &GrantRules) -> Result<Command, Rejection> {
    let ids = Ids::read(bytes);
    if ids.command.is_none() {
        return parse_grant(bytes, rules).map(Command::Grant);
    }
    let w: Request = serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let reason = if msg.contains("unknown field") {
            RejectReason::UnknownField
        } else if msg.contains("missing field") {
            RejectReason::MissingField
        } else if msg.contains("unknown variant") {
            RejectReason::InvalidField
        } else {
            RejectReason::InvalidJson
        };
        Rejection::new(reason, format!("command is not valid: {msg}"))
    })?;
    if let Request::Clock { at } = w {
        return Ok(Command::Clock { at });
    }
    check_request(&w, rules)?;
    Ok(Command::Request(w))
}

/// Checks a query or settings change: its ids, and the limits of what it sets.
fn check_request(w: &Request, rules: &GrantRules) -> Result<(), Rejection> {
    let (Some(request_id), Some(account_id)) = (w.request_id(), w.account_id()) else {
        return Ok(());
    };
    check_ids(request_id, account_id)?;
    match w {
        Request::GrantStatus { grant_id, .. } => {
            if let Some(why) = id_problem(grant_id) {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!("grant_id {why}"),
                ));
            }
        }
        Request::SetThresholds {
            thresholds,
            expiry_warning_secs,
            ..
        } => {
            if let Some(Some(list)) = thresholds
                && list.len() > MAX_THRESHOLDS
            {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!(
                        "thresholds has {} entries, at most {MAX_THRESHOLDS}",
                        list.len()
                    ),
                ));
            }
            if let Some(Some(w)) = *expiry_warning_secs
                && w > MAX_WARNING_SECS
            {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!(
                        "expiry_warning_secs is at most {MAX_WARNING_SECS} (ten years) (value {w})"
                    ),
                ));
            }
        }
        Request::SetAutoTopup { rule: Some(r), .. } => {
            r.validate(rules.min_topup)
                .map_err(|m| Rejection::new(RejectReason::InvalidField, m))?;
        }
        Request::AccountStatus { .. } | Request::SetAutoTopup { .. } | Request::Clock { .. } => {}
    }
    Ok(())
}

/// The instant as a clock marker writes it (RFC 3339, UTC, microseconds).
pub fn clock_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A clock marker's JSON (its MAC travels in a header, as the pipeline's close markers').
pub fn clock_marker(at: DateTime<Utc>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"command": "clock", "at": clock_text(at)}))
        .expect("a clock marker serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, Rejection> {
        parse_command(s.as_bytes(), &GrantRules::default())
    }

    #[test]
    fn commands_parse_and_a_grant_has_no_command() {
        let g = parse(
            r#"{"grant_id":"p1","kind":"topup","account_id":"a","amount":"10","occurred_at":"2026-03-01T10:00:00Z"}"#,
        );
        assert!(matches!(g, Ok(Command::Grant(_))));
        let s = parse(r#"{"command":"set_thresholds","request_id":"r","account_id":"a","thresholds":["50","20%"]}"#).unwrap();
        match s {
            Command::Request(Request::SetThresholds {
                thresholds: Some(Some(t)),
                expiry_warning_secs: None,
                ..
            }) => assert_eq!(t.len(), 2),
            other => panic!("{other:?}"),
        }
        let reset = parse(r#"{"command":"set_thresholds","request_id":"r","account_id":"a","thresholds":null,"expiry_warning_secs":null}"#).unwrap();
        assert!(matches!(
            reset,
            Command::Request(Request::SetThresholds {
                thresholds: Some(None),
                expiry_warning_secs: Some(None),
                ..
            })
        ));
        let at = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let m = parse_command(&clock_marker(at), &GrantRules::default()).unwrap();
        assert_eq!(m, Command::Clock { at });
    }

    #[test]
    fn bad_commands_are_refused_with_their_reason_and_their_ids_read() {
        let r = |s: &str| parse(s).unwrap_err().reason;
        assert_eq!(
            r(r#"{"command":"explode","request_id":"r","account_id":"a"}"#),
            RejectReason::InvalidField
        );
        assert_eq!(
            r(r#"{"command":"account_status","request_id":"r","account_id":"a","x":1}"#),
            RejectReason::UnknownField
        );
        assert_eq!(
            r(r#"{"command":"account_status","account_id":"a"}"#),
            RejectReason::MissingField
        );
        assert_eq!(
            r(
                r#"{"command":"set_thresholds","request_id":"r","account_id":"a","thresholds":["ten"]}"#
            ),
            RejectReason::InvalidJson
        );
        assert_eq!(
            r(
                r#"{"command":"set_auto_topup","request_id":"r","account_id":"a","rule":{"below":"10","fixed":"1"}}"#
            ),
            RejectReason::InvalidField
        );
        let ids = Ids::read(br#"{"grant_id":"g","account_id":"a","request_id":7}"#);
        assert_eq!(
            (
                ids.account(),
                ids.grant_id.as_deref(),
                ids.request_id.as_deref()
            ),
            (Some("a"), Some("g"), None)
        );
    }
}
