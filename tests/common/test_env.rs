//! One isolated test environment: its own topics, consumer groups and ClickHouse database on
//! the shared services, a config file, and the real binary run as CLI commands or services.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use usage_aggregator::bench::Loader;
use usage_aggregator::catalog::Catalog;
use usage_aggregator::config::Config;

use super::{
    OPERATOR_TOKEN, ch_query, clickhouse_url, free_port, http_get, kafka_addr, root, unique,
};

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
        // The HTTP API's wait for the ledger's verdict (then a 202): long enough for a
        // loaded CI machine, where a first top-up also waits for the ledger to join.
        cfg.ledger.answer_timeout = Duration::from_secs(60);
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

    /// The binary `cli` and `spawn` run: this build's, or `USAGE_AGG_BENCH_BIN` (a
    /// benchmark's "before": another build of the service under the same harness).
    pub fn service_bin() -> String {
        std::env::var("USAGE_AGG_BENCH_BIN").unwrap_or_else(|_| Self::bin().to_string())
    }

    /// Runs a CLI command to completion and returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(Self::service_bin())
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
        let mut cmd = Command::new(Self::service_bin());
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

impl TestEnv {
    /// Deletes this environment's topics and ClickHouse database on the shared services
    /// (best effort, a few seconds at most): a dev box's broker that keeps every test's
    /// ~80 partitions reaches its open-file limit after a few full runs of the suite.
    fn delete_what_it_made(&self) {
        if self.cfg.kafka.brokers == kafka_addr() {
            let mut c = rdkafka::ClientConfig::new();
            c.set("bootstrap.servers", &self.cfg.kafka.brokers);
            for (k, v) in &self.client_props {
                c.set(k, v);
            }
            let topics: Vec<String> = self
                .cfg
                .topics
                .all()
                .iter()
                .map(|(_, t)| t.to_string())
                .collect();
            // On a thread of its own: Drop may run inside a test's tokio runtime.
            let _ = std::thread::spawn(move || {
                let Ok(admin) = c.create::<rdkafka::admin::AdminClient<_>>() else {
                    return;
                };
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                let opts = rdkafka::admin::AdminOptions::new()
                    .operation_timeout(Some(Duration::from_secs(5)));
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(8),
                        admin.delete_topics(&names, &opts),
                    )
                    .await;
                });
            })
            .join();
        }
        if self.cfg.clickhouse.url == clickhouse_url() {
            let addr = self.cfg.clickhouse.url.trim_start_matches("http://");
            let addr = addr.trim_end_matches('/');
            let sql = format!("DROP DATABASE IF EXISTS `{}`", self.cfg.clickhouse.database);
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(
                    s,
                    "POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{sql}",
                    sql.len()
                );
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            self.delete_what_it_made();
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
