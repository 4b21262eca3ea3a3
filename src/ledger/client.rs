//! Requests of operators and integrations (CLI and HTTP): validated grants, ledger commands
//! and voucher commands out to Kafka (idempotent producer); the answers back through a
//! [`follower::Follower`] of `ledger_results` or `voucher_results`; reads of ClickHouse and
//! of the compacted `voucher_state` changelog in [`queries`].

pub mod follower;
pub mod queries;

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rust_decimal::Decimal;

use crate::config::Config;
use crate::kafka;
use crate::kafka::acked::{AckContext, AckedProducer, send_acked};
use crate::ledger::command::Request;
use crate::ledger::grant::{
    Grant, GrantKind, GrantRules, Terms, check_account, check_amount, check_terms, parse_amount,
};
use crate::ledger::voucher::VoucherRequest;
use crate::rejection::{RejectReason, Rejection};

pub use follower::{Follower, LedgerFollower, ResultFollower};
pub use queries::{
    Balance, HistoryEntry, HistoryPage, OpenGrantRow, balance, dates_out_of_order, history,
    list_vouchers,
};

/// Why a request did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Refused before anything was sent; `reason` is the stable code.
    #[error("refused ({}): {}", .0.reason, .0.message)]
    Refused(Rejection),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// Sent, but no answer within the wait: the request may still be decided.
    #[error(
        "no answer within {0:?} to request {1}: it was sent and may still be decided (is `run --role ledger` running?)"
    )]
    Timeout(Duration, String),
    #[error("{0}")]
    Other(String),
}

/// The configuration of a request producer: idempotent, acks from all replicas, no group.
pub fn producer_config(cfg: &Config) -> ClientConfig {
    let mut c = kafka::client_config(cfg, &[("acks", "all"), ("linger.ms", "0")]);
    for k in [
        "group.instance.id",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "enable.auto.commit",
        "partition.assignment.strategy",
    ] {
        c.remove(k);
    }
    c.set("enable.idempotence", "true");
    c
}

/// A producer for requests.
pub fn producer(cfg: &Config) -> Result<AckedProducer, KafkaError> {
    producer_config(cfg).create_with_context(AckContext)
}

/// A grant as a caller gives it (CLI arguments, HTTP body): texts, checked by
/// [`build_grant`] exactly as the ledger will check them.
#[derive(Debug, Clone)]
pub struct GrantInput<'a> {
    pub kind: GrantKind,
    pub account: &'a str,
    pub amount: &'a str,
    /// The grant id: the idempotency key (a payment reference for a top-up).
    pub reference: &'a str,
    pub reason: Option<&'a str>,
    pub terms: Terms<'a>,
}

/// Builds and validates a grant exactly as the ledger will; `occurred_at` is now and the
/// request id is new.
pub fn build_grant(cfg: &Config, input: &GrantInput<'_>) -> Result<Grant, Rejection> {
    let (_, rules): (_, GrantRules) = super::rules(cfg);
    check_account(input.account)?;
    if let Some(why) = super::grant::id_problem(input.reference) {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("reference {why}"),
        ));
    }
    let amount: Decimal = parse_amount(input.amount.trim())?;
    check_amount(input.kind, amount, &rules)?;
    if input.kind == GrantKind::Adjustment && input.reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(Rejection::new(
            RejectReason::MissingField,
            "an adjustment needs a reason".to_string(),
        ));
    }
    let now = Utc::now();
    let (category, priority, expires_at) = check_terms(input.kind, amount, now, &input.terms)?;
    Ok(Grant {
        reason: input.reason.map(str::to_string),
        category,
        priority,
        expires_at,
        request_id: Some(new_id("req")),
        ..Grant::new(input.reference, input.kind, input.account, amount, now)
    })
}

/// A reference derived from a command's arguments: the same arguments give the same
/// reference, so re-running the command after a timeout applies it once.
pub fn derived_reference(prefix: &str, parts: &[&str]) -> String {
    let h = crate::ledger::core::hashed_id(prefix, parts);
    // hashed_id is "<prefix>_<32 hex>"; 20 hex digits (80 bits) are plenty for one account.
    h[..prefix.len() + 21].to_string()
}

/// `now + d` as an RFC 3339 instant (an `--expires-in` argument).
pub fn instant_after(d: Duration) -> Result<DateTime<Utc>, String> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .ok_or_else(|| format!("{d:?} from now is out of range"))
}

async fn send(
    p: &AckedProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<(), ClientError> {
    send_acked(p, topic, key.as_bytes(), payload, Duration::from_secs(30))
        .await
        .map_err(ClientError::Kafka)?;
    Ok(())
}

/// Sends a grant to `credit_grants`, keyed by account (waits for the acknowledgement).
pub async fn send_grant(cfg: &Config, p: &AckedProducer, g: &Grant) -> Result<(), ClientError> {
    send(p, &cfg.topics.credit_grants, &g.account_id, &g.encode()).await
}

/// Sends a ledger command to `credit_grants`, keyed by its account.
pub async fn send_command(
    cfg: &Config,
    p: &AckedProducer,
    req: &Request,
) -> Result<(), ClientError> {
    let account = req.account_id().unwrap_or_default();
    send(p, &cfg.topics.credit_grants, account, &req.encode()).await
}

/// Sends a voucher command, keyed by its code hash.
pub async fn send_voucher_request(
    cfg: &Config,
    p: &AckedProducer,
    req: &VoucherRequest,
) -> Result<(), ClientError> {
    send(
        p,
        &cfg.topics.voucher_requests,
        req.code_hash(),
        &req.encode(),
    )
    .await
}

/// A random request id (or reference), 128 bits, hex.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// A voucher as an operator defines it (CLI arguments, HTTP body).
#[derive(Debug, Clone, Default)]
pub struct VoucherInput {
    /// The code; a random one (80 bits) is generated when absent.
    pub code: Option<String>,
    pub credits: String,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    /// Validity when `valid_until` is absent.
    pub valid_for: Duration,
    pub max_redemptions: u32,
    pub account: Option<String>,
    pub description: String,
    /// The granted credits expire this long after each redemption.
    pub credits_valid_for: Option<Duration>,
    /// The granted credits expire at this instant.
    pub credits_expire_at: Option<DateTime<Utc>>,
    pub priority: Option<u8>,
    /// The client's request id: a create re-sent with it answers the original.
    pub request_id: Option<String>,
}

/// A create command ready to send.
#[derive(Debug, Clone)]
pub struct BuiltVoucher {
    /// The normalized code (to show once when generated).
    pub code: String,
    pub generated: bool,
    /// True when the request id was derived from the arguments (a given code, no id).
    pub derived_request_id: bool,
    pub request: VoucherRequest,
}

/// A random code: 16 characters from a 32-letter alphabet (80 bits), in groups of four.
pub fn generate_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let chars: String = (0..16)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!(
        "{}-{}-{}-{}",
        &chars[0..4],
        &chars[4..8],
        &chars[8..12],
        &chars[12..16]
    )
}

/// Builds and checks a voucher create command. Without a request id, one is derived from
/// the arguments as given when the code is given (so re-running the same command answers
/// the original voucher even though "now" moved), else a random one.
pub fn build_voucher(input: &VoucherInput) -> Result<BuiltVoucher, Rejection> {
    use crate::ledger::voucher::{self, VoucherDef};
    let invalid = |m: String| Rejection::new(RejectReason::InvalidField, m);
    let generated = input.code.is_none();
    let code = input.code.clone().unwrap_or_else(generate_code);
    let code = voucher::normalize_code(&code).map_err(invalid)?;
    let credits = parse_amount(input.credits.trim())?;
    let from = input.valid_from.unwrap_or_else(Utc::now);
    let until = match input.valid_until {
        Some(t) => t,
        None => {
            from + chrono::Duration::from_std(input.valid_for)
                .map_err(|_| invalid("valid_for is out of range".into()))?
        }
    };
    let def = VoucherDef {
        code_hash: voucher::code_hash(&code),
        masked: voucher::mask(&code),
        credits,
        valid_from: from,
        valid_until: until,
        max_redemptions: input.max_redemptions,
        account_id: input.account.clone(),
        description: input.description.clone(),
        credits_valid_for_secs: input.credits_valid_for.map(|d| d.as_secs()),
        credits_expire_at: input.credits_expire_at,
        priority: input.priority,
    };
    def.validate().map_err(invalid)?;
    let derived = input.request_id.is_none() && !generated;
    let request_id = match (&input.request_id, generated) {
        (Some(id), _) => id.clone(),
        (None, true) => new_id("create"),
        (None, false) => {
            let show = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
            derived_reference(
                "create",
                &[
                    &def.code_hash,
                    &credits.to_string(),
                    &show(input.valid_from),
                    &show(input.valid_until),
                    &input.valid_for.as_secs().to_string(),
                    &input.max_redemptions.to_string(),
                    input.account.as_deref().unwrap_or(""),
                    &input.description,
                    &input
                        .credits_valid_for
                        .map(|d| d.as_secs().to_string())
                        .unwrap_or_default(),
                    &show(input.credits_expire_at),
                    &input.priority.map(|p| p.to_string()).unwrap_or_default(),
                ],
            )
        }
    };
    if let Some(why) = super::grant::id_problem(&request_id) {
        return Err(invalid(format!("request_id {why}")));
    }
    Ok(BuiltVoucher {
        code,
        generated,
        derived_request_id: derived,
        request: VoucherRequest::Create {
            request_id,
            requested_at: Utc::now(),
            voucher: def,
        },
    })
}

/// The voucher whose id (the hex digits `vouchers list` shows, at least 8) starts with
/// `id`, from the `voucher_state` changelog (blocking). Refused `unknown` when none is,
/// `invalid_field` when several are.
pub fn find_voucher(
    cfg: &Config,
    id: &str,
) -> Result<crate::ledger::voucher::VoucherState, ClientError> {
    let id = id.trim().trim_start_matches('#').to_ascii_lowercase();
    if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Refused(Rejection::new(
            RejectReason::InvalidField,
            format!(
                "a voucher id is at least 8 hex digits as `vouchers list` shows it (value {id:?})"
            ),
        )));
    }
    let mut found: Vec<_> = list_vouchers(cfg)?
        .into_iter()
        .filter(|s| s.def.code_hash.starts_with(&id))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ClientError::Other(format!(
            "refused (unknown): no voucher has id {id}"
        ))),
        n => Err(ClientError::Refused(Rejection::new(
            RejectReason::InvalidField,
            format!("{n} vouchers have ids starting with {id}: give more digits"),
        ))),
    }
}
