//! Account-scoped API keys: a new key (random, shown once) in; its record (id, account,
//! dates, a SHA-256 digest, never the key) out to the compacted `api_keys` topic, which every
//! instance follows ([`store`]) to answer "whose key is this?" in constant time.
//!
//! A key reads `uak_<id>_<secret>`: `id` is 16 hex digits (64 random bits), the record's
//! Kafka key and the prefix `keys list` shows; `secret` is 32 random bytes (256 bits,
//! base64url). Only `SHA-256("usage-aggregator api key v1\0" ‖ key)` is stored. A fast hash
//! is enough here, unlike for passwords: the secret is machine-generated with 256 bits of
//! entropy, so there is nothing to guess from a stolen digest (a slow hash such as argon2
//! exists to stretch low-entropy secrets), and checking a request costs about a microsecond
//! instead of tens of milliseconds of CPU an attacker could make us spend. Digests are
//! compared with `subtle`'s constant-time equality.

pub mod cli;
pub mod store;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with (also how a key is told from an operator token).
pub const KEY_PREFIX: &str = "uak_";
const DIGEST_DOMAIN: &[u8] = b"usage-aggregator api key v1\0";

/// A key's record on the `api_keys` topic (Kafka key: `key_id`). Revoking writes the
/// record again with `revoked_at`; records are never deleted, so `keys list` shows revoked
/// keys too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// 16 lowercase hex digits.
    pub key_id: String,
    pub account_id: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// `uak_<key_id>`: what lists and logs show of a key.
    pub prefix: String,
    /// Hex SHA-256 of the domain-prefixed key.
    pub sha256: String,
    /// Free text from `keys create --description`.
    #[serde(default)]
    pub description: String,
}

/// A key just made: the secret (print it once) and its record (publish it).
pub struct NewKey {
    pub key: String,
    pub record: KeyRecord,
}

/// Makes a key for `account_id` from 40 random bytes (8 for the id, 32 for the secret).
pub fn generate(account_id: &str, description: &str, now: DateTime<Utc>) -> NewKey {
    let id: [u8; 8] = rand::random();
    let secret: [u8; 32] = rand::random();
    let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let key = format!(
        "{KEY_PREFIX}{key_id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let record = KeyRecord {
        prefix: format!("{KEY_PREFIX}{key_id}"),
        sha256: hex(&digest(&key)),
        key_id,
        account_id: account_id.to_string(),
        created_at: now,
        revoked_at: None,
        description: description.to_string(),
    };
    NewKey { key, record }
}

/// The key id of something shaped like a key (`uak_<16 hex>_<secret>`), else None.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && !secret.is_empty())
    .then_some(id)
}

/// SHA-256 of the domain-prefixed text.
pub fn digest(text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DIGEST_DOMAIN);
    h.update(text.as_bytes());
    h.finalize().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl KeyRecord {
    /// Whether `presented` is this record's key: digests compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let d = hex(&digest(presented));
        d.as_bytes().ct_eq(self.sha256.as_bytes()).into()
    }

    /// Problems of a record read from the topic (a hand-written one, say), if any.
    pub fn problem(&self) -> Option<String> {
        if key_id(&format!("{}_x", self.prefix)) != Some(self.key_id.as_str()) {
            return Some(format!(
                "prefix {} does not name key_id {}",
                crate::rejection::excerpt(&self.prefix),
                crate::rejection::excerpt(&self.key_id)
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some("sha256 is not 64 hex digits".into());
        }
        crate::ledger::grant::check_account(&self.account_id)
            .err()
            .map(|r| r.message)
    }
}

/// Constant-time equality of two secrets of any length (their SHA-256 digests compared).
pub fn same_secret(a: &str, b: &str) -> bool {
    digest(a).ct_eq(&digest(b)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_matches_its_record_and_nothing_else() {
        let now = Utc::now();
        let k = generate("acct-a", "ci", now);
        assert_eq!(key_id(&k.key), Some(k.record.key_id.as_str()));
        assert!(k.key.starts_with(&k.record.prefix));
        assert!(k.record.matches(&k.key));
        assert!(!k.record.matches(&format!("{}x", k.key)));
        assert!(!k.record.matches(&k.key[..k.key.len() - 1]));
        assert_eq!(k.record.problem(), None);
        // The record never holds the secret.
        let json = serde_json::to_string(&k.record).unwrap();
        let secret = &k.key[KEY_PREFIX.len() + 17..];
        assert!(!json.contains(secret), "{json}");
        // 256-bit secret: 43 base64url characters.
        assert_eq!(secret.len(), 43);
        let other = generate("acct-a", "", now);
        assert_ne!(other.key, k.key);
        assert!(!k.record.matches(&other.key));
    }

    #[test]
    fn only_key_shaped_text_has_a_key_id() {
        assert_eq!(key_id("uak_0123456789abcdef_s"), Some("0123456789abcdef"));
        for bad in [
            "",
            "token",
            "uak_",
            "uak_0123456789abcdef",
            "uak_0123456789abcdef_",
            "uak_0123456789ABCDEF_s",
            "uak_0123456789abcde_s",
            "Bearer uak_0123456789abcdef_s",
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret("operator-token", "operator-token"));
        assert!(!same_secret("operator-token", "operator-tokeN"));
        assert!(!same_secret("operator-token", "operator-token2"));
        assert!(!same_secret("", "x"));
    }
}
