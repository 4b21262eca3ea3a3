//! A private 3-node Apache Kafka cluster (KRaft, controller quorum of 3) for failover tests:
//! three `scripts/services cluster-node DIR BASE N` children, each node's JVM the child itself
//! so a test can SIGKILL one node and restart it on its own log dir.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};

use super::{TestEnv, root};

pub const NODES: i32 = 3;

pub struct PrivateCluster {
    pub dir: PathBuf,
    base: u16,
    children: BTreeMap<i32, Child>,
    /// KRaft's StandardAuthorizer and a SASL_SSL listener with one SCRAM user per role
    /// (`USAGE_AGG_KAFKA_AUTHORIZER`).
    acls: bool,
}

impl PrivateCluster {
    /// Starts the three nodes together (the quorum needs a majority before any is ready)
    /// and waits until each has started.
    pub fn start(dir: &Path) -> PrivateCluster {
        Self::start_with(dir, false)
    }

    /// [`Self::start`] with KRaft's StandardAuthorizer on every node: the PLAINTEXT listeners
    /// are the super user; each node's SASL_SSL listener (its client port + 2) has SCRAM users
    /// `usage-<role>` that may do only what an ACL allows ([`Self::secured`]).
    pub fn start_with_acls(dir: &Path) -> PrivateCluster {
        Self::start_with(dir, true)
    }

    /// The listeners and secrets of a cluster started with [`Self::start_with_acls`].
    pub fn secured(&self) -> super::acls::Secured {
        assert!(self.acls, "a cluster started with ACLs");
        super::acls::Secured {
            admin: self.bootstrap(),
            secure: (1..=NODES)
                .map(|n| format!("127.0.0.1:{}", self.port(n) + 2))
                .collect::<Vec<_>>()
                .join(","),
            ca: self.dir.join("tls/ca.pem"),
            secrets: self.dir.join("secrets"),
        }
    }

    fn start_with(dir: &Path, acls: bool) -> PrivateCluster {
        let dir = dir.join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        // Node N uses BASE + 3(N-1) (clients), the next port (controller) and the one after
        // (SASL_SSL, with ACLs). Below the
        // kernel's ephemeral range (32768+), so no outgoing connection takes one of them
        // while the nodes format their storage before they bind.
        let base = loop {
            let b = 21000 + (rand::random::<u16>() % 7900);
            if (0..NODES as u16).all(|i| {
                [0, 1, 2]
                    .iter()
                    .all(|o| std::net::TcpListener::bind(("127.0.0.1", b + 3 * i + o)).is_ok())
            }) {
                break b;
            }
        };
        let mut c = PrivateCluster {
            dir,
            base,
            children: BTreeMap::new(),
            acls,
        };
        let before: Vec<usize> = (1..=NODES).map(|n| c.started_count(n)).collect();
        for n in 1..=NODES {
            c.spawn(n);
        }
        for n in 1..=NODES {
            c.wait_started(n, before[n as usize - 1]);
        }
        c
    }

    pub fn port(&self, n: i32) -> u16 {
        self.base + 3 * (n as u16 - 1)
    }

    /// `bootstrap.servers` naming all three nodes.
    pub fn bootstrap(&self) -> String {
        (1..=NODES)
            .map(|n| format!("127.0.0.1:{}", self.port(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn server_log(&self, n: i32) -> PathBuf {
        self.dir.join(format!("node{n}/logs/server.log"))
    }

    fn started_count(&self, n: i32) -> usize {
        std::fs::read_to_string(self.server_log(n))
            .unwrap_or_default()
            .matches("Kafka Server started")
            .count()
    }

    fn spawn(&mut self, n: i32) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{n}.out")))
            .unwrap();
        let mut cmd = Command::new(root().join("scripts/services"));
        if self.acls {
            cmd.env("USAGE_AGG_KAFKA_AUTHORIZER", "1");
        }
        let child = cmd
            .args([
                "cluster-node",
                self.dir.to_str().unwrap(),
                &self.base.to_string(),
                &n.to_string(),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.insert(n, child);
    }

    fn wait_started(&mut self, n: i32, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let addr = format!("127.0.0.1:{}", self.port(n));
        loop {
            if self.started_count(n) > before && TcpStream::connect(&addr).is_ok() {
                return;
            }
            if let Some(Ok(Some(s))) = self.children.get_mut(&n).map(Child::try_wait) {
                let out = self.dir.join(format!("node{n}.out"));
                let text = std::fs::read_to_string(&out).unwrap_or_default()
                    + &std::fs::read_to_string(self.server_log(n)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                panic!(
                    "cluster node {n} exited ({s}); last lines of {}:\n{}",
                    out.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "cluster node {n} did not start; see {}",
                self.server_log(n).display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL node `n`, as a crash (its log dir is recovered by [`Self::resume`]).
    pub fn kill(&mut self, n: i32) {
        if let Some(mut c) = self.children.remove(&n) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `n` again on its log dir and waits until it has started.
    pub fn resume(&mut self, n: i32) {
        let before = self.started_count(n);
        self.spawn(n);
        self.wait_started(n, before);
    }

    fn admin(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap()
    }

    /// Partition -> leader node of `topic` (leaders < 0 while a partition has none).
    pub fn leaders(&self, topic: &str) -> BTreeMap<i32, i32> {
        let md = self
            .admin()
            .fetch_metadata(Some(topic), Duration::from_secs(20))
            .unwrap();
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| (p.id(), p.leader()))
            .collect()
    }

    /// The node that leads the most partitions of `topic` (the lowest id on a tie).
    pub fn leader_of_most(&self, topic: &str) -> i32 {
        let mut count: BTreeMap<i32, usize> = BTreeMap::new();
        for leader in self.leaders(topic).into_values().filter(|l| *l > 0) {
            *count.entry(leader).or_default() += 1;
        }
        let max = *count.values().max().expect("no partition has a leader");
        *count.iter().find(|(_, c)| **c == max).unwrap().0
    }

    /// The transaction coordinator of `transactional_id`: the leader of its partition of
    /// `__transaction_state`, which Kafka picks as `abs(javaHashCode(id)) % partitions`
    /// (TransactionStateManager.partitionFor; 4 partitions, as scripts/services configures).
    pub fn transaction_coordinator(&self, transactional_id: &str) -> i32 {
        let leaders = self.leaders("__transaction_state");
        let p = transaction_state_partition(transactional_id, leaders.len() as i32);
        leaders[&p]
    }
}

/// Kafka's partition of `__transaction_state` for a transactional id: Java's
/// `String.hashCode` (UTF-16 units, wrapping), `Utils.abs` (MIN_VALUE -> 0), modulo.
pub fn transaction_state_partition(transactional_id: &str, partitions: i32) -> i32 {
    let h = transactional_id
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Counts the debits a `read_committed` consumer of every debits partition has received:
/// a consumer follows leader changes, where a watermark query to a dead leader only fails.
pub struct DebitWatch {
    consumer: BaseConsumer,
    pub seen: usize,
    /// The latest produce time (ms since the epoch) among the debits received.
    pub newest_ms: i64,
    /// The same per debits partition.
    pub newest_per_partition: BTreeMap<i32, i64>,
    /// Every debit received: (debit id, produce time, receive time), in ms since the epoch.
    pub received: Vec<(String, i64, i64)>,
}

impl DebitWatch {
    pub fn new(env: &TestEnv) -> DebitWatch {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &env.cfg.kafka.brokers)
            .set("group.id", format!("{}-watch", env.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..env.cfg.topics.output_partitions {
            tpl.add_partition_offset(&env.cfg.topics.debits, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        DebitWatch {
            consumer,
            seen: 0,
            newest_ms: 0,
            newest_per_partition: BTreeMap::new(),
            received: Vec::new(),
        }
    }

    /// Polls for up to `d`; returns the debits received so far.
    pub fn poll(&mut self, d: Duration) -> usize {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(20)) {
                self.seen += 1;
                if let Some(ts) = m.timestamp().to_millis() {
                    self.newest_ms = self.newest_ms.max(ts);
                    let p = self.newest_per_partition.entry(m.partition()).or_default();
                    *p = (*p).max(ts);
                    if let Ok(d) = serde_json::from_slice::<usage_aggregator::debit::Debit>(
                        m.payload().unwrap_or_default(),
                    ) {
                        self.received.push((d.debit_id, ts, wall_ms()));
                    }
                }
            }
        }
        self.seen
    }
}

/// Milliseconds since the Unix epoch (debits' produce timestamps are in these).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
