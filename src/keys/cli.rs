//! The `keys` command: `create ACCOUNT` (prints the new key once), `list [ACCOUNT]` (id,
//! account, dates, prefix; never a key), `revoke ACCOUNT KEY_ID`. Records go to the compacted
//! `api_keys` topic (idempotent producer, acks from all replicas); lists read it to its end.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;

use super::store::KeyStore;
use super::{KEY_PREFIX, KeyRecord};
use crate::config::Config;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key for an account and print it once (only its SHA-256 digest is
    /// kept). The key reads and acts on that account only; every instance accepts it within
    /// a second.
    Create {
        /// Account the key belongs to.
        account: String,
        /// Free text kept with the key (who or what uses it).
        #[arg(long, default_value = "")]
        description: String,
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
    },
    /// List keys: id, account, created, revoked, prefix (never the key).
    List {
        /// Only this account's keys.
        account: Option<String>,
        /// Output format.
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
    },
    /// Revoke a key: every instance refuses it within a second. Repeating it is harmless.
    Revoke {
        /// Account the key belongs to.
        account: String,
        /// The key's id as `keys list` shows it (16 hex digits, or the prefix uak_<id>).
        key_id: String,
    },
}

const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn keys(cfg: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let topic = [("topics.api_keys", cfg.topics.api_keys.as_str())];
    crate::credits::require_kafka(cfg, &topic).await?;
    match cmd {
        KeysCommand::Create {
            account,
            description,
            format,
        } => {
            if let Err(r) = crate::ledger::grant::check_account(&account) {
                anyhow::bail!("refused ({}): {}", r.reason, r.message);
            }
            let new = super::generate(&account, &description, Utc::now());
            publish(cfg, &new.record).await?;
            let r = &new.record;
            let mut out = std::io::stdout();
            if format == "json" {
                let v = serde_json::json!({
                    "key": new.key,
                    "key_id": r.key_id,
                    "account_id": r.account_id,
                    "created_at": r.created_at,
                    "prefix": r.prefix,
                    "description": r.description,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(out, "{}", new.key)?;
                writeln!(
                    out,
                    "key {} for account {}: shown once, store it now (only its digest is kept); send it as `Authorization: Bearer <key>`",
                    r.key_id, r.account_id
                )?;
            }
            Ok(())
        }
        KeysCommand::List { account, format } => {
            let list: Vec<KeyRecord> = read(cfg)
                .await?
                .records()
                .into_iter()
                .filter(|r| account.as_ref().is_none_or(|a| *a == r.account_id))
                .collect();
            let mut out = std::io::stdout();
            if format == "json" {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<16}  {:<24}  {:<20}  {:<20}  {:<20}  description",
                "key_id", "account", "created", "revoked", "prefix"
            )?;
            let t = |d: chrono::DateTime<Utc>| d.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            for r in &list {
                writeln!(
                    out,
                    "{:<16}  {:<24}  {:<20}  {:<20}  {:<20}  {}",
                    r.key_id,
                    r.account_id,
                    t(r.created_at),
                    r.revoked_at.map(t).unwrap_or_else(|| "-".into()),
                    r.prefix,
                    r.description
                )?;
            }
            let live = list.iter().filter(|r| r.revoked_at.is_none()).count();
            writeln!(out, "{} keys ({live} live)", list.len())?;
            Ok(())
        }
        KeysCommand::Revoke { account, key_id } => {
            let id = key_id.trim().trim_start_matches(KEY_PREFIX);
            let id = id.split('_').next().unwrap_or_default().to_string();
            let store = read(cfg).await?;
            let record = store
                .records()
                .into_iter()
                .find(|r| r.key_id == id && r.account_id == account)
                .with_context(|| {
                    format!(
                        "account {} has no key {} (see `keys list {}`)",
                        crate::rejection::excerpt(&account),
                        crate::rejection::excerpt(&id),
                        crate::rejection::excerpt(&account)
                    )
                })?;
            let mut out = std::io::stdout();
            if let Some(at) = record.revoked_at {
                writeln!(
                    out,
                    "key {id} of {account} was already revoked at {}",
                    at.to_rfc3339()
                )?;
                return Ok(());
            }
            let revoked = KeyRecord {
                revoked_at: Some(Utc::now()),
                ..record
            };
            publish(cfg, &revoked).await?;
            writeln!(
                out,
                "revoked key {id} of {account}; every instance refuses it within a second"
            )?;
            Ok(())
        }
    }
}

async fn read(cfg: &Config) -> anyhow::Result<KeyStore> {
    let c = cfg.clone();
    tokio::task::spawn_blocking(move || KeyStore::read_to_end(&c, READ_TIMEOUT)).await?
}

/// Writes a record (keyed by its id) and waits for the acknowledgement.
async fn publish(cfg: &Config, r: &KeyRecord) -> anyhow::Result<()> {
    let producer = crate::ledger::client::producer(cfg)?;
    let payload = serde_json::to_vec(r)?;
    let topic = &cfg.topics.api_keys;
    crate::kafka::acked::send_acked(
        &producer,
        topic,
        r.key_id.as_bytes(),
        &payload,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("cannot write to {} (topics.api_keys)", cfg.topics.api_keys))?;
    Ok(())
}
