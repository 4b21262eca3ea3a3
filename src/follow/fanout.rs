//! The follower's fan-out to the streams: a stream subscribes to one key (the account) of
//! one partition, either to all its messages (a conversation) or to those of one execution
//! (an execution's stream). The follower reads each message's execution ids once
//! ([`execution_ids`]) and hands it only to that execution's streams, so 200 streams of one
//! busy account do not each receive, wake up for and discard the account's other calls.
//!
//! Each stream has a bounded queue (`traces.stream_buffer`). A stream whose queue is full is
//! never dropped and never allowed to grow memory: the follower stops queueing for it and
//! notes where it stopped ([`Subscription::gap`]); once the stream has taken what was queued
//! it reads the gap from the tail (or Kafka) and is queued again, so no message is missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use memchr::memmem::Finder;
use tokio::sync::mpsc;

use super::{FollowError, Followed, Follower, Positions, State, Tail};

/// What a stream wants of its key's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    /// Every message of the key (a conversation's stream decides itself).
    All,
    /// The messages naming this execution id (an execution's stream).
    Execution(String),
}

pub(super) struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<Followed>>,
    /// Set when its queue was full: the positions of the first message not queued; nothing
    /// is queued for it until the stream takes the gap ([`Subscription::gap`]).
    paused_from: Option<Positions>,
    lagging: Arc<AtomicBool>,
}

/// The streams of one key.
#[derive(Default)]
pub(super) struct KeySubscribers {
    all: Vec<Subscriber>,
    by_execution: HashMap<String, Vec<Subscriber>>,
}

impl KeySubscribers {
    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_execution.is_empty()
    }

    fn find(&mut self, id: u64) -> Option<&mut Subscriber> {
        self.all
            .iter_mut()
            .chain(self.by_execution.values_mut().flatten())
            .find(|x| x.id == id)
    }

    fn remove(&mut self, id: u64) {
        self.all.retain(|x| x.id != id);
        self.by_execution.retain(|_, list| {
            list.retain(|x| x.id != id);
            !list.is_empty()
        });
    }
}

/// `"execution_id":"`, the start of the member [`execution_ids`] looks for.
const KEY: &[u8] = b"\"execution_id\":\"";

/// The searcher of [`KEY`], built once: `memmem::find_iter` builds one per call, which was
/// 17 % of the follower thread's samples in a cold drain (docs/performance.md).
static KEY_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY));

/// The execution ids a message names: the value of every `"execution_id":"..."` member in
/// its (compact) JSON, each once, in order. The top-level one is among them; a nested one
/// (say a dimension of that name) only sends the message to a stream that then finds it is
/// not its own.
pub fn execution_ids(payload: &[u8]) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for at in KEY_FINDER.find_iter(payload) {
        let rest = &payload[at + KEY.len()..];
        // The string's end: the first quote not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, b) in rest.iter().enumerate() {
            match b {
                b'\\' if !escaped => escaped = true,
                b'"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { continue };
        let raw = &rest[..end];
        let unescaped;
        let id: Option<&str> = if raw.contains(&b'\\') {
            unescaped = serde_json::from_slice::<String>(
                &payload[at + KEY.len() - 1..at + KEY.len() + end + 1],
            )
            .ok();
            unescaped.as_deref()
        } else {
            std::str::from_utf8(raw).ok()
        };
        if let Some(id) = id
            && !out.iter().any(|x| &**x == id)
        {
            out.push(Arc::from(id));
        }
    }
    out
}

/// A stream's subscription: the messages of its key (or of its execution) from `from` on.
/// Dropping it unsubscribes.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Followed>>,
    /// Every message of the key at or after these offsets that the stream wants comes
    /// through `rx`, or, after a lag, through [`Subscription::gap`].
    pub from: Positions,
    /// Set when the queue was full and messages were left out of it: take [`Subscription::gap`]
    /// once `rx` is empty.
    lagging: Arc<AtomicBool>,
    id: u64,
    key: (i32, Box<[u8]>),
    follower: Follower,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut s = self.follower.lock();
        s.streams = s.streams.saturating_sub(1);
        if let Some(keys) = s.subscribers.get_mut(&self.key.0)
            && let Some(subs) = keys.get_mut(&self.key.1)
        {
            subs.remove(self.id);
            if subs.is_empty() {
                keys.remove(&self.key.1);
            }
        }
        crate::metrics::METRICS.api_streams.set(s.streams as i64);
    }
}

impl Follower {
    /// Subscribes to the messages of `key` in partition `p` that `interest` names, from the
    /// follower's position on.
    pub fn subscribe(
        &self,
        p: i32,
        key: &[u8],
        interest: Interest,
    ) -> Result<Subscription, FollowError> {
        let cap = self.0.cfg.traces.stream_buffer.max(1);
        let mut s = self.lock();
        if s.streams >= self.0.cfg.traces.max_streams {
            return Err(FollowError::TooManyStreams(s.streams));
        }
        let (tx, rx) = mpsc::channel(cap);
        let id = self
            .0
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lagging = Arc::new(AtomicBool::new(false));
        let k = (p, Box::<[u8]>::from(key));
        let sub = Subscriber {
            id,
            tx,
            paused_from: None,
            lagging: lagging.clone(),
        };
        let subs = s
            .subscribers
            .entry(p)
            .or_default()
            .entry(k.1.clone())
            .or_default();
        match interest {
            Interest::All => subs.all.push(sub),
            Interest::Execution(e) => subs.by_execution.entry(e).or_default().push(sub),
        }
        s.streams += 1;
        crate::metrics::METRICS.api_streams.set(s.streams as i64);
        let from = s.positions.get(p as usize).copied().unwrap_or_default();
        drop(s);
        Ok(Subscription {
            rx,
            from,
            lagging,
            id,
            key: k,
            follower: self.clone(),
        })
    }
}

/// Queues `msg` for the streams that want it; `before`: the partition's positions before it.
/// A subscriber whose queue is full is paused at this message, never dropped.
pub(super) fn deliver(s: &mut State, msg: &Arc<Followed>, before: Positions) {
    let Some(keys) = s.subscribers.get_mut(&msg.partition) else {
        return;
    };
    let Some(subs) = keys.get_mut(&*msg.key) else {
        return;
    };
    let offer = |list: &mut Vec<Subscriber>| {
        list.retain_mut(|sub| {
            if sub.paused_from.is_some() {
                return !sub.tx.is_closed();
            }
            match sub.tx.try_send(msg.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Everything from here on (both topics) is read back from the tail.
                    let mut from = before;
                    from.set(msg.topic, before.get(msg.topic).min(msg.offset));
                    sub.paused_from = Some(from);
                    sub.lagging.store(true, Ordering::Release);
                    crate::metrics::METRICS.api_streams_lagged.inc();
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    };
    offer(&mut subs.all);
    if !subs.by_execution.is_empty() {
        for e in msg.execution_ids.iter() {
            if let Some(list) = subs.by_execution.get_mut(&**e) {
                offer(list);
                if list.is_empty() {
                    subs.by_execution.remove(&**e);
                }
            }
        }
    }
    if subs.is_empty() {
        keys.remove(&*msg.key);
    }
}

impl Subscription {
    /// True when the queue was full and messages were left out of `rx`.
    pub fn lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    /// After a lag, once `rx` is empty: the messages of the key left out of the queue, from
    /// the tail (or Kafka), each topic in offset order (all of the key's: the stream picks
    /// its own); from then on they come through `rx` again. `None` when there is no gap.
    pub async fn gap(&mut self) -> Result<Option<Tail>, FollowError> {
        let range = {
            let mut s = self.follower.lock();
            let to = s
                .positions
                .get(self.key.0 as usize)
                .copied()
                .unwrap_or_default();
            let sub = s
                .subscribers
                .get_mut(&self.key.0)
                .and_then(|keys| keys.get_mut(&self.key.1))
                .and_then(|subs| subs.find(self.id));
            self.lagging.store(false, Ordering::Release);
            // Unpaused under the lock: every message from `to` on is queued again.
            sub.and_then(|x| x.paused_from.take())
                .map(|from| (from, to))
        };
        let Some((from, to)) = range else {
            return Ok(None);
        };
        self.follower
            .read(self.key.0, &self.key.1, None, from, to)
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::execution_ids;

    #[test]
    fn execution_ids_reads_every_member_and_unescapes() {
        let ids = |s: &str| -> Vec<String> {
            execution_ids(s.as_bytes())
                .into_iter()
                .map(|id| id.to_string())
                .collect()
        };
        assert_eq!(
            ids(
                r#"{"event_id":"e","account_id":"a","execution_id":"x-1","dimensions":{"execution_id":"y"}}"#
            ),
            ["x-1", "y"]
        );
        assert_eq!(ids(r#"{"execution_id":null}"#), Vec::<String>::new());
        assert_eq!(ids(r#"{"execution_id":"a\"b\\","k":"v"}"#), ["a\"b\\"]);
        // A string value holding the key's text is escaped, so never taken for a member.
        assert_eq!(
            ids(r#"{"note":"\"execution_id\":\"z\"","execution_id":"q"}"#),
            ["q"]
        );
        assert_eq!(
            ids(r#"{"execution_id":"x","e":{"execution_id":"x"}}"#),
            ["x"]
        );
    }
}
