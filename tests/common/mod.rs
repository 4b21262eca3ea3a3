//! Test harness: talks to the real broker and ClickHouse that scripts/services started
//! (USAGE_AGG_TEST_KAFKA, USAGE_AGG_TEST_CLICKHOUSE), gives each test its own topics, groups
//! and database, runs the real binary, and computes the oracle with the rating core.
#![allow(dead_code)]

pub mod cluster;
pub mod ledger;
pub mod sse;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use usage_aggregator::bench::Loader;
use usage_aggregator::catalog::Catalog;
use usage_aggregator::config::Config;
use usage_aggregator::debit::Debit;
use usage_aggregator::loadgen::{Generated, Workload, WorkloadSpec};
use usage_aggregator::rollup::{Output, PartitionRollup};

pub fn kafka_addr() -> String {
    std::env::var("USAGE_AGG_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub fn clickhouse_url() -> String {
    std::env::var("USAGE_AGG_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// Which ClickHouse the private servers of the tests are (`USAGE_AGG_TEST_CLICKHOUSE_SERVER`):
/// `18.16` (Debian's clickhouse-server, the default) or `modern` (ClickHouse 26.9 from
/// chdb-core, `scripts/services clickhouse-modern-run`). scripts/test runs the ClickHouse
/// tests once against each, with USAGE_AGG_TEST_CLICKHOUSE pointing at the matching shared one.
pub fn clickhouse_is_modern() -> bool {
    std::env::var("USAGE_AGG_TEST_CLICKHOUSE_SERVER").is_ok_and(|v| v == "modern")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000;
    format!("{name}_{}_{n}", std::process::id())
}

/// One message read back: offset, key, payload.
pub type Record = (i64, Vec<u8>, Vec<u8>);

/// One isolated test environment.
pub struct TestEnv {
    pub name: String,
    pub cfg: Config,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub children: Vec<Child>,
    /// Extra environment for spawned aggregators and CLI commands (e.g. secrets).
    pub env: Vec<(String, String)>,
    /// Extra librdkafka properties of the harness's own clients (readers, loader), on top of
    /// `cfg.kafka.properties`: e.g. the SASL password that the service reads from its
    /// environment and the config file must not hold.
    pub client_props: Vec<(String, String)>,
}

impl TestEnv {
    pub fn new(name: &str) -> TestEnv {
        let name = unique(name);
        let mut cfg = Config::default();
        cfg.kafka.brokers = kafka_addr();
        cfg.kafka.group_id = format!("{name}-pipeline");
        cfg.kafka.sink_group_id = format!("{name}-sink");
        cfg.kafka.alerts_group_id = format!("{name}-alerts");
        cfg.ledger.group_id = format!("{name}-ledger");
        cfg.ledger.voucher_group_id = format!("{name}-vouchers");
        let t = &mut cfg.topics;
        for (field, base) in [
            (&mut t.usage_events, "usage"),
            (&mut t.price_catalog, "catalog"),
            (&mut t.plans, "plans"),
            (&mut t.debits, "debits"),
            (&mut t.priced_usage, "priced"),
            (&mut t.dead_letter, "dead"),
            (&mut t.alerts, "alerts"),
            (&mut t.alerts_state, "alerts_state"),
            (&mut t.state, "state"),
            (&mut t.credit_grants, "grants"),
            (&mut t.balances, "balances"),
            (&mut t.credit_alerts, "credit_alerts"),
            (&mut t.ledger_state, "ledger_state"),
            (&mut t.ledger_results, "ledger_results"),
            (&mut t.topup_requests, "topup_requests"),
            (&mut t.voucher_requests, "voucher_requests"),
            (&mut t.voucher_results, "voucher_results"),
            (&mut t.voucher_state, "voucher_state"),
            (&mut t.api_keys, "api_keys"),
        ] {
            *field = format!("{name}.{base}");
        }
        cfg.clickhouse.url = clickhouse_url();
        cfg.clickhouse.database = name.replace(['-', '.'], "_");
        cfg.pricing.catalog_file = root().join("config/catalog.json");
        cfg.rollup.execution_idle_timeout = Duration::from_secs(2);
        cfg.pipeline.checkpoint_interval = Duration::from_millis(500);
        cfg.pipeline.drain_timeout = Duration::from_secs(10);
        cfg.sink.batch_age = Duration::from_millis(300);
        cfg.http.listen = format!("127.0.0.1:{}", free_port());
        cfg.http.stall_after = Duration::from_secs(5);
        cfg.log.filter = "info".into();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        let env = TestEnv {
            name,
            cfg,
            dir,
            config_path,
            children: Vec::new(),
            env: vec![("USAGE_AGG_API_TOKEN".into(), OPERATOR_TOKEN.into())],
            client_props: Vec::new(),
        };
        env.write_config();
        env
    }

    pub fn write_config(&self) {
        std::fs::write(&self.config_path, toml::to_string(&self.cfg).unwrap()).unwrap();
    }

    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_usage-aggregator")
    }

    /// Runs a CLI command to completion and returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(Self::bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn setup(&self) {
        self.cli(&["setup"]);
    }

    /// Starts `run --role ROLE`; logs go to the temp dir.
    pub fn spawn(&mut self, role: &str, log_name: &str) -> usize {
        self.spawn_with(role, log_name, &self.cfg.http.listen.clone(), &[])
    }

    pub fn spawn_with(
        &mut self,
        role: &str,
        log_name: &str,
        listen: &str,
        env: &[(&str, &str)],
    ) -> usize {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log_name))
            .unwrap();
        let mut cmd = Command::new(Self::bin());
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(["run", "--role", role])
            .env("USAGE_AGG__HTTP__LISTEN", listen)
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.children.push(cmd.spawn().unwrap());
        self.children.len() - 1
    }

    /// Restarts child `i` (with `role`, logging to `log_name`) if it has exited, as a
    /// supervisor would; returns how many restarts were needed (0 or 1).
    pub fn respawn_if_exited(&mut self, i: usize, role: &str, log_name: &str) -> usize {
        if let Ok(Some(status)) = self.children[i].try_wait() {
            eprintln!("aggregator {i} exited ({status}); restarting it");
            let listen = self.cfg.http.listen.clone();
            self.spawn_with(role, log_name, &listen, &[]);
            let new = self.children.pop().unwrap();
            self.children[i] = new;
            return 1;
        }
        0
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn kill9(&mut self, i: usize) {
        let c = &mut self.children[i];
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.children[i].id();
        Command::new("kill")
            .args(["-s", sig, &pid.to_string()])
            .status()
            .unwrap();
    }

    pub fn terminate(&mut self, i: usize, within: Duration) -> bool {
        self.signal(i, "TERM");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.children[i].try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9(i);
        false
    }

    pub fn catalog(&self) -> Catalog {
        Catalog::from_json(&std::fs::read(&self.cfg.pricing.catalog_file).unwrap()).unwrap()
    }

    pub fn loader(&self) -> Loader {
        let mut cfg = self.cfg.clone();
        cfg.kafka
            .properties
            .extend(self.client_props.iter().cloned());
        Loader::new(&cfg).unwrap()
    }

    fn consumer(&self) -> BaseConsumer {
        let mut c = ClientConfig::new();
        for (k, v) in &self.cfg.kafka.properties {
            c.set(k, v);
        }
        for (k, v) in &self.client_props {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.cfg.kafka.brokers)
            .set("group.id", format!("{}-reader", self.name))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap()
    }

    /// Every committed message of a topic (what a `read_committed` consumer sees), per
    /// partition in offset order. Reads each partition to its end-of-partition event:
    /// transaction markers leave offset gaps, so "until offset high - 1" would hang.
    pub fn read_topic(&self, topic: &str) -> BTreeMap<i32, Vec<Record>> {
        let c = self.consumer();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut out = BTreeMap::new();
        for p in md.topics()[0].partitions() {
            let p = p.id();
            let (low, high) = watermarks(&c, topic, p);
            let mut msgs = Vec::new();
            if high > low {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .unwrap();
                c.assign(&tpl).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(Instant::now() < deadline, "timed out reading {topic}/{p}");
                    match c.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => msgs.push((
                            m.offset(),
                            m.key().unwrap_or_default().to_vec(),
                            m.payload().unwrap_or_default().to_vec(),
                        )),
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(q))) if q == p => break,
                        _ => {}
                    }
                }
                c.unassign().unwrap();
            }
            out.insert(p, msgs);
        }
        out
    }

    /// The debits topic deduplicated by id; panics if a repeated id has different bytes.
    pub fn debits_by_id(&self) -> (BTreeMap<String, Vec<u8>>, usize) {
        let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut n = 0;
        for (_, msgs) in self.read_topic(&self.cfg.topics.debits) {
            for (_, _, payload) in msgs {
                n += 1;
                let d: Debit = serde_json::from_slice(&payload).unwrap();
                if let Some(prev) = by_id.insert(d.debit_id.clone(), payload.clone()) {
                    assert_eq!(
                        prev, payload,
                        "debit {} repeated with different bytes",
                        d.debit_id
                    );
                }
            }
        }
        (by_id, n)
    }

    /// The rating core's result on exactly what is in the usage topic (markers included).
    pub fn oracle(&self) -> Oracle {
        let catalog = self.catalog();
        let mut o = Oracle::default();
        for (p, msgs) in self.read_topic(&self.cfg.topics.usage_events) {
            let mut r = PartitionRollup::new(self.cfg.rollup_config(), p);
            let mut out = Vec::new();
            for (offset, _, payload) in &msgs {
                // Close markers in these tests are the aggregator's own (the pipeline accepts
                // them by their `ua-marker-mac` header, which read_topic does not return);
                // tests that forge markers do not use the oracle.
                let marker = serde_json::from_slice::<serde_json::Value>(payload)
                    .is_ok_and(|v| v["type"] == "execution_timeout");
                let origin = if marker {
                    usage_aggregator::event::Origin::Aggregator
                } else {
                    usage_aggregator::event::Origin::Producer
                };
                r.process_from(origin, *offset, payload, &catalog, 0, &mut out);
                o.events += 1;
            }
            o.open += r.open_executions();
            for x in out {
                match x {
                    Output::Debit(d) => {
                        o.debits.insert(d.debit_id.clone(), d.encode());
                    }
                    Output::Line(l) => {
                        o.lines.insert(l.event_id.clone());
                    }
                    Output::Rejected(_) => o.rejected += 1,
                }
            }
        }
        o
    }

    /// [`Self::wait_for_oracle`] while acting as a supervisor for child `i`: restarted (with
    /// `role`, logging to `log_name`) whenever it has exited. Returns the oracle and the
    /// number of restarts.
    pub fn wait_for_oracle_supervised(
        &mut self,
        i: usize,
        role: &str,
        log_name: &str,
        timeout: Duration,
    ) -> (Oracle, usize) {
        let deadline = Instant::now() + timeout;
        let mut restarts = 0;
        loop {
            restarts += self.respawn_if_exited(i, role, log_name);
            let left = deadline.saturating_duration_since(Instant::now());
            let step = left.min(Duration::from_secs(5));
            if left.is_zero() {
                return (self.wait_for_oracle(Duration::ZERO), restarts);
            }
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.wait_for_oracle(step)
            }));
            if let Ok(o) = done {
                return (o, restarts);
            }
        }
    }

    /// Waits until the debits topic (deduplicated) holds exactly the oracle's debits and no
    /// execution is left open; returns the final oracle.
    pub fn wait_for_oracle(&self, timeout: Duration) -> Oracle {
        let deadline = Instant::now() + timeout;
        loop {
            let oracle = self.oracle();
            let (topic, _) = self.debits_by_id();
            if oracle.open == 0
                && topic.len() == oracle.debits.len()
                && topic.keys().eq(oracle.debits.keys())
            {
                return oracle;
            }
            if Instant::now() > deadline {
                let missing = oracle
                    .debits
                    .keys()
                    .filter(|k| !topic.contains_key(*k))
                    .count();
                let extra = topic
                    .keys()
                    .filter(|k| !oracle.debits.contains_key(*k))
                    .count();
                panic!(
                    "debits never matched the oracle: {missing} missing, {extra} extra, {} executions open",
                    oracle.open
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Number of times the aggregator log says the rating pipeline's consumer was assigned
    /// partitions. The other stages (sink, alerts, ledger) log their own assignments in the
    /// same process; counting those made a takeover look done when only the alerts group had
    /// rebalanced (a CI run "froze" a member for 4 s of a 10 s session timeout).
    pub fn assignments(&self, log: &str) -> usize {
        self.log(log)
            .lines()
            .filter(|l| {
                l.contains("partitions assigned")
                    && (l.contains("usage_aggregator::pipeline:")
                        || l.contains("stage=\"pipeline\""))
            })
            .count()
    }

    pub fn metrics(&self) -> String {
        http_get(&self.cfg.http.listen, "/metrics").1
    }

    /// Waits until `f` holds, polling.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn ch(&self, sql: &str) -> String {
        ch_query(
            &self.cfg.clickhouse.url,
            &sql.replace("{db}", &self.cfg.clickhouse.database),
        )
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let keep = self.dir.path().to_path_buf();
            eprintln!("test logs kept in {}", keep.display());
            for e in std::fs::read_dir(&keep).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("---- {} (last lines) ----", p.display());
                    for l in tail.into_iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
        }
    }
}

#[derive(Debug, Default)]
pub struct Oracle {
    pub events: usize,
    pub debits: BTreeMap<String, Vec<u8>>,
    pub lines: std::collections::BTreeSet<String>,
    pub rejected: usize,
    pub open: usize,
}

impl Oracle {
    pub fn totals_per_account(&self) -> BTreeMap<String, rust_decimal::Decimal> {
        totals_per_account(self.debits.values())
    }
}

pub fn totals_per_account<'a>(
    debits: impl Iterator<Item = &'a Vec<u8>>,
) -> BTreeMap<String, rust_decimal::Decimal> {
    let mut t = BTreeMap::new();
    for d in debits {
        let d: Debit = serde_json::from_slice(d).unwrap();
        *t.entry(d.account_id).or_insert(rust_decimal::Decimal::ZERO) += d.total;
    }
    t.into_iter().map(|(k, v)| (k, v.normalize())).collect()
}

/// Number of rows of `{db}.table`.
pub fn ch_count(env: &TestEnv, table: &str) -> usize {
    env.ch(&format!("SELECT count() FROM {{db}}.{table}"))
        .trim()
        .parse()
        .unwrap()
}

/// ClickHouse holds every debit and priced line of the oracle exactly once
/// (`count() = uniqExact(id)`), and the sums per account equal the oracle's to the last digit.
pub fn assert_clickhouse_exact(env: &TestEnv, oracle: &Oracle) {
    let n = oracle.debits.len();
    assert_eq!(
        env.ch("SELECT count(), uniqExact(debit_id) FROM {db}.debits")
            .trim(),
        format!("{n}\t{n}"),
        "debits in clickhouse: count, distinct ids"
    );
    let l = oracle.lines.len();
    assert_eq!(
        env.ch("SELECT count(), uniqExact(event_id) FROM {db}.usage_transactions")
            .trim(),
        format!("{l}\t{l}"),
        "priced lines in clickhouse: count, distinct ids"
    );
    let sums = parse_tsv_map(
        &env.ch("SELECT account_id, toString(sum(total)) FROM {db}.debits GROUP BY account_id"),
    );
    for (account, total) in oracle.totals_per_account() {
        assert_eq!(
            sums[&account]
                .parse::<rust_decimal::Decimal>()
                .unwrap()
                .normalize(),
            total,
            "{account}"
        );
    }
}

/// The operator token every test aggregator gets (`USAGE_AGG_API_TOKEN`, see [`TestEnv::new`]).
pub const OPERATOR_TOKEN: &str = "test-operator-token-5c1d9e27";

/// A GET of the aggregator's API with the operator token: (status, body).
pub fn api_get(addr: &str, path: &str) -> (u16, String) {
    http_get_as(addr, path, Some(OPERATOR_TOKEN))
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_as(addr, path, None)
}

/// A minimal HTTP/1.0 GET with `Authorization: Bearer <credential>` when given.
pub fn http_get_as(addr: &str, path: &str, credential: Option<&str>) -> (u16, String) {
    let a = http_call(addr, "GET", path, credential, None);
    (a.status, a.body)
}

/// `/readyz`: (status, body as JSON; Null when the server did not answer).
pub fn readyz(addr: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, "/readyz");
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The detail of a stage that `/readyz` reports not ready, if it does.
pub fn not_ready_detail(readyz: &serde_json::Value, stage: &str) -> Option<String> {
    let s = &readyz["stages"][stage];
    (s["ready"] == false).then(|| s["detail"].as_str().unwrap_or_default().to_string())
}

/// An HTTP answer: status (0 when the connection failed), header lines, body.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of a header (name case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// A minimal HTTP/1.0 request: `body` is sent as JSON; `credential` as a bearer token.
pub fn http_call(
    addr: &str,
    method: &str,
    path: &str,
    credential: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let auth = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_request(addr, method, path, &headers, body)
}

/// A minimal HTTP/1.0 request with these headers; `body` is sent as JSON.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Answer::default();
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let content = body
        .map(|b| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}{content}\r\n{}",
        body.unwrap_or_default()
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    Answer { status, head, body }
}

/// Runs a ClickHouse query over HTTP; panics on error. Returns the TSV body.
pub fn ch_query(url: &str, sql: &str) -> String {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).unwrap_or("0").to_string();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    assert_eq!(status, "200", "clickhouse query failed: {sql}\n{body}");
    body
}

/// The value of a metric line (first series whose name and labels start with `prefix`).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn parse_tsv_map(tsv: &str) -> HashMap<String, String> {
    tsv.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A private ClickHouse server (for outage tests), configured like scripts/services does.
pub struct PrivateClickHouse {
    pub url: String,
    /// `https://127.0.0.1:PORT` when started with [`PrivateClickHouse::start_https`].
    pub https_url: Option<String>,
    dir: PathBuf,
    http: u16,
    tcp: u16,
    https: Option<(u16, PathBuf)>,
    child: Option<Child>,
}

impl PrivateClickHouse {
    /// Starts `scripts/services clickhouse-run DIR/clickhouse HTTP TCP`: data, logs and the
    /// generated password of user `usage_writer` live under DIR/clickhouse (a test may mount a
    /// small filesystem at DIR/clickhouse/data first).
    pub fn start(dir: &Path) -> PrivateClickHouse {
        Self::start_with(dir, None)
    }

    /// Also HTTPS, its certificate (for IP 127.0.0.1) signed by the throwaway CA in `ca_dir`
    /// (e.g. a secured broker's `tls` dir, to share its CA; made there when missing).
    pub fn start_https(dir: &Path, ca_dir: &Path) -> PrivateClickHouse {
        Self::start_with(dir, Some(ca_dir.to_path_buf()))
    }

    fn start_with(dir: &Path, ca_dir: Option<PathBuf>) -> PrivateClickHouse {
        let dir = dir.join("clickhouse");
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let https = ca_dir.map(|ca| (free_port(), ca));
        let mut ch = PrivateClickHouse {
            url: String::new(),
            https_url: https
                .as_ref()
                .map(|(p, _)| format!("https://127.0.0.1:{p}")),
            dir,
            http: free_port(),
            tcp: free_port(),
            https,
            child: None,
        };
        ch.url = format!("http://127.0.0.1:{}", ch.http);
        ch.resume();
        ch
    }

    /// The file holding the password of user `usage_writer` (made by scripts/services).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("secrets/usage_writer.password")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// users.xml (ClickHouse 18.16 reloads it within seconds when it changes; 26.9 from
    /// chdb-core reads it once at start: restart it with `stop` + `resume`).
    pub fn users_file(&self) -> PathBuf {
        self.dir.join("users.xml")
    }

    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log/stdout.log"))
            .unwrap();
        let modern = clickhouse_is_modern();
        // ClickHouse 26.9 from chdb-core has no HTTPS listener: a TLS test needs a terminator
        // in front of it (docs/analytics.md#clickhouse-versions), so it runs on 18.16 only.
        assert!(
            !(modern && self.https.is_some()),
            "HTTPS is tested on ClickHouse 18.16 only: chdb-core's 26.9 has no HTTPS listener"
        );
        let mut args = vec![
            if modern {
                "clickhouse-modern-run"
            } else {
                "clickhouse-run"
            }
            .to_string(),
            self.dir.to_str().unwrap().to_string(),
            self.http.to_string(),
            self.tcp.to_string(),
        ];
        if let Some((port, ca)) = &self.https {
            args.push(port.to_string());
            args.push(ca.to_str().unwrap().to_string());
        }
        let child = Command::new(root().join("scripts/services"))
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&addr, "/ping").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "private clickhouse did not start; see {}",
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Apache Kafka broker (for broker restart, freeze and full-disk tests), started
/// by `scripts/services kafka-run DIR PORT [SECURE_PORT]`, configured like the shared one.
/// Its log dir survives `stop`/`kill` and `resume`.
pub struct PrivateBroker {
    pub addr: String,
    /// The SASL_SSL (SCRAM-SHA-512) listener, when started with [`PrivateBroker::start_secure`].
    pub secure_addr: Option<String>,
    pub dir: PathBuf,
    port: u16,
    secure_port: Option<u16>,
    /// KRaft's StandardAuthorizer and one SCRAM user per role (`USAGE_AGG_KAFKA_AUTHORIZER`).
    acls: bool,
    pub child: Option<Child>,
}

impl PrivateBroker {
    pub fn start(dir: &Path) -> PrivateBroker {
        Self::start_with(dir, false)
    }

    /// A broker with a second listener, SASL_SSL with SCRAM-SHA-512: its throwaway CA is
    /// [`PrivateBroker::ca_file`], user `usage-aggregator`'s password [`PrivateBroker::password`].
    pub fn start_secure(dir: &Path) -> PrivateBroker {
        Self::start_with(dir, true)
    }

    /// [`PrivateBroker::start_secure`] with KRaft's StandardAuthorizer: the plaintext listener
    /// is the super user, the SASL_SSL one has SCRAM users `usage-<role>` (passwords:
    /// [`PrivateBroker::role_password`]) that may do only what an ACL allows.
    pub fn start_with_acls(dir: &Path) -> PrivateBroker {
        let mut b = Self::start_with_options(dir, true, true);
        b.resume();
        b
    }

    /// The password of SCRAM user `usage-<role>` of a broker with ACLs.
    pub fn role_password(&self, role: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .join(format!("secrets/kafka-usage-{role}.password")),
        )
        .unwrap()
        .trim()
        .to_string()
    }

    fn start_with(dir: &Path, secure: bool) -> PrivateBroker {
        let mut b = Self::start_with_options(dir, secure, false);
        b.resume();
        b
    }

    fn start_with_options(dir: &Path, secure: bool, acls: bool) -> PrivateBroker {
        let dir = dir.join("broker");
        std::fs::create_dir_all(&dir).unwrap();
        // Two consecutive free ports: the broker's and its KRaft controller's.
        let port = loop {
            let p = free_port();
            if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let secure_port = secure.then(|| {
            loop {
                let p = free_port();
                if p != port && p != port + 1 {
                    break p;
                }
            }
        });
        PrivateBroker {
            addr: format!("127.0.0.1:{port}"),
            secure_addr: secure_port.map(|p| format!("127.0.0.1:{p}")),
            dir,
            port,
            secure_port,
            acls,
            child: None,
        }
    }

    /// The throwaway CA that signed the secured listener's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// The password of SCRAM user `usage-aggregator` (generated by scripts/services).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("secrets/kafka-usage-aggregator.password")
    }

    pub fn password(&self) -> String {
        std::fs::read_to_string(self.password_file())
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .unwrap();
        let mut args = vec![
            "kafka-run".to_string(),
            self.dir.to_str().unwrap().to_string(),
            self.port.to_string(),
        ];
        args.extend(self.secure_port.map(|p| p.to_string()));
        let mut cmd = Command::new(root().join("scripts/services"));
        if self.acls {
            cmd.env("USAGE_AGG_KAFKA_AUTHORIZER", "1");
        }
        let child = cmd
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        let server_log = self.dir.join("logs/server.log");
        let started_before = std::fs::read_to_string(&server_log)
            .unwrap_or_default()
            .matches("Kafka Server started")
            .count();
        loop {
            let started = std::fs::read_to_string(&server_log)
                .unwrap_or_default()
                .matches("Kafka Server started")
                .count();
            if started > started_before && TcpStream::connect(&self.addr).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "private broker did not start; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Graceful stop (SIGTERM), SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, as a crash: the log dir is recovered on `resume`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args(["-s", sig, &c.id().to_string()])
                .status()
                .unwrap();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// A generated workload for `env` (its run id keeps event ids unique): `executions` agent
/// executions and `direct` direct calls over `accounts` accounts, starting at `start`
/// (RFC 3339), reproducible by `seed`.
pub fn workload_for(
    env: &TestEnv,
    executions: u64,
    direct: u64,
    seed: u64,
    accounts: u32,
    start: &str,
) -> Vec<Generated> {
    let spec = WorkloadSpec {
        executions,
        direct_calls: direct,
        accounts,
        seed,
        start: chrono::DateTime::parse_from_rfc3339(start)
            .unwrap()
            .with_timezone(&chrono::Utc),
        run_id: env.name.clone(),
        ..Default::default()
    };
    Workload::new(spec, &env.catalog()).collect()
}

/// A partition's (low, high) watermarks. A leader that moves or a metadata cache that lags
/// (a topic just created, a loaded broker) answers `NotLeaderForPartition` or
/// `UnknownTopicOrPartition` for a moment: retried for up to 30 s, then the last error.
pub fn watermarks(c: &BaseConsumer, topic: &str, partition: i32) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return w,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {topic}[{partition}]: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("watermarks of {topic}[{partition}]: {e}"),
        }
    }
}
