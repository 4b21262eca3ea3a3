//! The API keys every instance knows: records of the compacted `api_keys` topic in (read from
//! its beginning, `read_committed`, then followed), "whose key is this?" out. A key created
//! or revoked by `keys create|revoke` reaches every following instance within one fetch
//! (the broker answers a waiting fetch as soon as a record arrives; well under a second).

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{KeyRecord, key_id};
use crate::config::Config;
use crate::kafka::{self, Reader, ReaderContext};

/// What a presented key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A live key of this account.
    Valid {
        account_id: String,
        key_id: String,
    },
    /// Not shaped like a key, no such key id, or the secret does not match.
    Unknown,
    Revoked,
    /// The store has not read the topic to its end yet: the key may exist.
    Loading,
}

/// Key records by key id, and whether the topic was read to its end once.
#[derive(Debug, Default)]
pub struct KeyStore {
    keys: RwLock<HashMap<String, KeyRecord>>,
    loaded: AtomicBool,
}

impl KeyStore {
    /// Checks a presented key: parse its id, look the record up, compare digests in
    /// constant time (also when the id is unknown, against a dummy digest).
    pub fn verify(&self, presented: &str) -> Verdict {
        let Some(id) = key_id(presented) else {
            return Verdict::Unknown;
        };
        let keys = self.keys.read().expect("keys lock");
        match keys.get(id) {
            Some(r) if r.matches(presented) => match r.revoked_at {
                Some(_) => Verdict::Revoked,
                None => Verdict::Valid {
                    account_id: r.account_id.clone(),
                    key_id: r.key_id.clone(),
                },
            },
            Some(_) => Verdict::Unknown,
            None if !self.is_loaded() => Verdict::Loading,
            None => {
                let _ = super::same_secret(presented, "");
                Verdict::Unknown
            }
        }
    }

    /// Marks the topic read to its end (the follower does; tests too).
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Number of keys known (live and revoked).
    pub fn len(&self) -> usize {
        self.keys.read().expect("keys lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record, sorted by account then creation.
    pub fn records(&self) -> Vec<KeyRecord> {
        let mut v: Vec<KeyRecord> = self
            .keys
            .read()
            .expect("keys lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            (&a.account_id, a.created_at, &a.key_id).cmp(&(&b.account_id, b.created_at, &b.key_id))
        });
        v
    }

    /// Applies one record of the topic (a tombstone forgets the key). A record that does not
    /// parse or breaks a rule is skipped with a warning: it names no secret.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) {
        let id = String::from_utf8_lossy(key).into_owned();
        let Some(value) = value else {
            self.keys.write().expect("keys lock").remove(&id);
            return;
        };
        match serde_json::from_slice::<KeyRecord>(value) {
            Ok(r) if r.key_id == id && r.problem().is_none() => {
                self.keys.write().expect("keys lock").insert(id, r);
            }
            Ok(r) => tracing::warn!(
                key = %crate::rejection::excerpt(&id),
                problem = r.problem().unwrap_or_else(|| "its key_id is not the record's key".into()),
                "api key record skipped"
            ),
            Err(e) => tracing::warn!(
                key = %crate::rejection::excerpt(&id),
                error = %e,
                "api key record is not a key record; skipped"
            ),
        }
    }

    /// Follows the topic until `stop` (blocking): waits for it to exist (one warning naming
    /// `topics.api_keys`), reads it from the beginning, marks the store loaded at the end of
    /// every partition, then keeps applying new records.
    pub fn follow(&self, cfg: &Config, stop: &CancellationToken) -> anyhow::Result<()> {
        let reader = reader(cfg)?;
        let topic = &cfg.topics.api_keys;
        let mut warned = false;
        let parts = loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            match partitions(&reader, topic) {
                Ok(p) if !p.is_empty() => break p,
                Ok(_) | Err(_) => {
                    if !warned {
                        tracing::warn!(topic = %topic, "topics.api_keys does not exist yet; run `usage-aggregator setup`. Until then only the operator token is accepted");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        };
        assign_from_beginning(&reader, topic, &parts)?;
        let mut at_end = HashSet::new();
        while !stop.is_cancelled() {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => self.apply(m.key().unwrap_or_default(), m.payload()),
                Some(Err(e)) if kafka::is_partition_eof(&e) => {
                    if let rdkafka::error::KafkaError::PartitionEOF(p) = e {
                        at_end.insert(p);
                    }
                    if !self.is_loaded() && parts.iter().all(|p| at_end.contains(p)) {
                        self.loaded.store(true, Ordering::Relaxed);
                        tracing::info!(keys = self.len(), "api keys loaded");
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "api keys read"),
                None => {}
            }
        }
        Ok(())
    }

    /// Reads the whole topic once (blocking; `keys list`, `keys revoke`).
    pub fn read_to_end(cfg: &Config, timeout: Duration) -> anyhow::Result<KeyStore> {
        let store = KeyStore::default();
        let reader = reader(cfg)?;
        let topic = &cfg.topics.api_keys;
        let parts = partitions(&reader, topic)?;
        if parts.is_empty() {
            anyhow::bail!(
                "topic {topic} (topics.api_keys) does not exist; run `usage-aggregator setup`"
            );
        }
        assign_from_beginning(&reader, topic, &parts)?;
        let deadline = Instant::now() + timeout;
        let mut at_end = HashSet::new();
        while at_end.len() < parts.len() {
            if Instant::now() > deadline {
                anyhow::bail!("timed out reading {topic} after {timeout:?}");
            }
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => store.apply(m.key().unwrap_or_default(), m.payload()),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                _ => {}
            }
        }
        store.loaded.store(true, Ordering::Relaxed);
        Ok(store)
    }
}

fn reader(cfg: &Config) -> anyhow::Result<Reader> {
    let mut rc = kafka::reader_config(cfg);
    // A waiting fetch returns as soon as a record arrives; this only bounds an idle one.
    rc.set("fetch.wait.max.ms", "500");
    Ok(rc.create_with_context(ReaderContext)?)
}

fn partitions(reader: &Reader, topic: &str) -> anyhow::Result<Vec<i32>> {
    let md = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default())
}

fn assign_from_beginning(reader: &Reader, topic: &str, parts: &[i32]) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn verdicts_follow_the_records() {
        let s = KeyStore::default();
        let k = crate::keys::generate("acct-a", "", Utc::now());
        let id = k.record.key_id.clone();
        assert_eq!(s.verify(&k.key), Verdict::Loading, "not loaded yet");
        s.loaded.store(true, Ordering::Relaxed);
        assert_eq!(s.verify(&k.key), Verdict::Unknown);
        s.apply(id.as_bytes(), Some(&serde_json::to_vec(&k.record).unwrap()));
        assert_eq!(
            s.verify(&k.key),
            Verdict::Valid {
                account_id: "acct-a".into(),
                key_id: id.clone()
            }
        );
        assert_eq!(s.verify(&format!("{}A", k.key)), Verdict::Unknown);
        assert_eq!(s.verify("operator-token"), Verdict::Unknown);
        let mut revoked = k.record.clone();
        revoked.revoked_at = Some(Utc::now());
        s.apply(id.as_bytes(), Some(&serde_json::to_vec(&revoked).unwrap()));
        assert_eq!(s.verify(&k.key), Verdict::Revoked);
        // A record under another key id, or a broken one, changes nothing.
        let other = crate::keys::generate("acct-b", "", Utc::now());
        s.apply(
            id.as_bytes(),
            Some(&serde_json::to_vec(&other.record).unwrap()),
        );
        s.apply(b"x", Some(b"not json"));
        assert_eq!(s.verify(&k.key), Verdict::Revoked);
        assert_eq!(s.len(), 1);
        s.apply(id.as_bytes(), None);
        assert_eq!(s.verify(&k.key), Verdict::Unknown);
    }
}
