//! Authentication of the aggregator's own close markers (`execution_timeout`): a secret key
//! in (environment `USAGE_AGG_MARKER_KEY` or the file `pipeline.marker_key_file`), an
//! HMAC-SHA256 header value out when a marker is written, and an [`Origin`] when a message
//! is read back. Producers cannot forge a marker without the key; the rating core only sees
//! the resulting `Origin` and stays free of I/O.
//!
//! The MAC covers the usage topic's name, the partition the marker was written to and the
//! payload bytes, so a copied marker is valid only where it was written (and there a copy is
//! harmless: a marker names the offset of its execution's last event and is ignored once
//! anything followed it).

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use rdkafka::message::Headers;
use sha2::Sha256;

use crate::config::PipelineConfig;
use crate::event::Origin;

/// Kafka header carrying the marker's MAC, lower-case hex of HMAC-SHA256.
pub const HEADER: &str = "ua-marker-mac";
/// Environment variable holding the key (takes precedence over `pipeline.marker_key_file`).
pub const KEY_ENV: &str = "USAGE_AGG_MARKER_KEY";
/// Shortest accepted key, in bytes (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_KEY_BYTES: usize = 32;
/// The key used when none is configured: public, so it only stops accidental markers.
const DEVELOPMENT_KEY: &[u8] = b"usage-aggregator development marker key - public, not a secret";

/// Errors loading the key; they name the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum MarkerKeyError {
    #[error("cannot read pipeline.marker_key_file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "marker key from {source_name} is {len} bytes, at least {MIN_KEY_BYTES} are required (e.g. `openssl rand -hex 32`)"
    )]
    TooShort {
        source_name: &'static str,
        len: usize,
    },
}

/// The secret that authenticates close markers. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct MarkerKey {
    key: Vec<u8>,
    development: bool,
}

impl std::fmt::Debug for MarkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarkerKey")
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl MarkerKey {
    /// The key from `USAGE_AGG_MARKER_KEY`, else from `pipeline.marker_key_file` (trailing
    /// whitespace trimmed), else the public development key with a WARN log: every
    /// instance of a deployment must share the same key.
    pub fn load(cfg: &PipelineConfig) -> Result<MarkerKey, MarkerKeyError> {
        if let Some(v) = std::env::var_os(KEY_ENV).filter(|v| !v.is_empty()) {
            return Self::from_secret(v.as_encoded_bytes(), KEY_ENV);
        }
        if let Some(path) = &cfg.marker_key_file {
            return Self::from_file(path);
        }
        tracing::warn!(
            env = KEY_ENV,
            config_key = "pipeline.marker_key_file",
            "no marker key configured: close markers are authenticated with the public development key, so anyone who can write to the usage topic can forge one; set a shared secret in production"
        );
        Ok(Self::development())
    }

    fn from_file(path: &Path) -> Result<MarkerKey, MarkerKeyError> {
        let bytes = std::fs::read(path).map_err(|source| MarkerKeyError::File {
            path: path.display().to_string(),
            source,
        })?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::from_secret(&bytes[..end], "pipeline.marker_key_file")
    }

    /// A key from secret bytes; `source_name` names where they came from in errors.
    pub fn from_secret(secret: &[u8], source_name: &'static str) -> Result<Self, MarkerKeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(MarkerKeyError::TooShort {
                source_name,
                len: secret.len(),
            });
        }
        Ok(MarkerKey {
            key: secret.to_vec(),
            development: false,
        })
    }

    /// The public development key (tests, demos).
    pub fn development() -> Self {
        MarkerKey {
            key: DEVELOPMENT_KEY.to_vec(),
            development: true,
        }
    }

    /// True for the public development key.
    pub fn is_development(&self) -> bool {
        self.development
    }

    fn mac(&self, topic: &str, partition: i32, payload: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length");
        m.update(&(topic.len() as u64).to_be_bytes());
        m.update(topic.as_bytes());
        m.update(&partition.to_be_bytes());
        m.update(payload);
        m
    }

    /// The header value for a marker written to `topic`/`partition`: 64 lower-case hex
    /// characters.
    pub fn sign(&self, topic: &str, partition: i32, payload: &[u8]) -> String {
        let tag = self.mac(topic, partition, payload).finalize().into_bytes();
        tag.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// True if `header` is the MAC of this payload at this place (constant-time compare).
    pub fn verify(&self, topic: &str, partition: i32, payload: &[u8], header: &[u8]) -> bool {
        let Some(tag) = from_hex(header) else {
            return false;
        };
        self.mac(topic, partition, payload)
            .verify_slice(&tag)
            .is_ok()
    }

    /// Who wrote a message read from `topic`/`partition`: [`Origin::Aggregator`] only if
    /// its headers carry a valid [`HEADER`].
    pub fn origin<H: Headers>(
        &self,
        topic: &str,
        partition: i32,
        payload: &[u8],
        headers: Option<&H>,
    ) -> Origin {
        let value = headers.and_then(|h| h.iter().find(|x| x.key == HEADER).and_then(|x| x.value));
        match value {
            Some(v) if self.verify(topic, partition, payload, v) => Origin::Aggregator,
            _ => Origin::Producer,
        }
    }
}

fn from_hex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    fn key() -> MarkerKey {
        MarkerKey::from_secret(&[7u8; 32], "test").unwrap()
    }

    fn headers(v: &str) -> OwnedHeaders {
        OwnedHeaders::new().insert(Header {
            key: HEADER,
            value: Some(v),
        })
    }

    #[test]
    fn a_signed_marker_verifies_only_where_it_was_written() {
        let k = key();
        let mac = k.sign("usage", 3, b"{\"type\":\"execution_timeout\"}");
        assert_eq!(mac.len(), 64);
        let h = headers(&mac);
        let payload = b"{\"type\":\"execution_timeout\"}";
        assert_eq!(k.origin("usage", 3, payload, Some(&h)), Origin::Aggregator);
        // Another partition, topic, payload or key: a producer.
        assert_eq!(k.origin("usage", 4, payload, Some(&h)), Origin::Producer);
        assert_eq!(k.origin("other", 3, payload, Some(&h)), Origin::Producer);
        assert_eq!(
            k.origin("usage", 3, b"{\"type\":\"execution_timeout\" }", Some(&h)),
            Origin::Producer
        );
        assert_eq!(
            MarkerKey::development().origin("usage", 3, payload, Some(&h)),
            Origin::Producer
        );
        // No header, a garbled one, an upper-case one.
        assert_eq!(
            k.origin::<OwnedHeaders>("usage", 3, payload, None),
            Origin::Producer
        );
        assert_eq!(
            k.origin("usage", 3, payload, Some(&headers("zz"))),
            Origin::Producer
        );
        assert_eq!(
            k.origin("usage", 3, payload, Some(&headers(&mac.to_uppercase()))),
            Origin::Producer
        );
    }

    #[test]
    fn keys_come_from_secrets_of_sufficient_length_and_never_show() {
        let e = MarkerKey::from_secret(b"short", KEY_ENV).unwrap_err();
        assert!(e.to_string().contains(KEY_ENV) && e.to_string().contains("5 bytes"));
        assert!(!e.to_string().contains("short"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, format!("{}\n", "ab".repeat(32))).unwrap();
        let from_file = MarkerKey::from_file(&f).unwrap();
        let direct = MarkerKey::from_secret("ab".repeat(32).as_bytes(), "x").unwrap();
        assert_eq!(from_file.sign("t", 0, b"p"), direct.sign("t", 0, b"p"));
        assert!(!format!("{from_file:?}").contains("abab"));
        assert!(!from_file.is_development() && MarkerKey::development().is_development());
        let missing = MarkerKey::from_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("pipeline.marker_key_file"));
    }
}
