//! Kafka ACLs under test: a secured Kafka (one broker or the 3-node cluster) with KRaft's
//! StandardAuthorizer, a super-user PLAINTEXT listener (setup, the harness) and a SASL_SSL one
//! where SCRAM users `usage-<role>` may do only what `scripts/kafka-acls` allowed. The access
//! matrix (docs/operations.md#kafka-acls) is checked the same way on both.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{TestEnv, free_port, readyz, root};

/// Where a secured Kafka listens and where its secrets are.
pub struct Secured {
    /// The PLAINTEXT listener(s): the super user.
    pub admin: String,
    /// The SASL_SSL listener(s).
    pub secure: String,
    pub ca: PathBuf,
    /// Holds `kafka-usage-<role>.password`.
    pub secrets: PathBuf,
}

impl Secured {
    pub fn role_password(&self, role: &str) -> String {
        std::fs::read_to_string(self.secrets.join(format!("kafka-usage-{role}.password")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Client settings of SCRAM user `usage-<role>` on the SASL_SSL listener.
    pub fn as_role(&self, role: &str) -> Vec<(String, String)> {
        vec![
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), format!("usage-{role}")),
            ("sasl.password".into(), self.role_password(role)),
            ("ssl.ca.location".into(), self.ca.display().to_string()),
        ]
    }

    pub fn client(&self, role: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.secure);
        for (k, v) in self.as_role(role) {
            c.set(k, v);
        }
        c
    }

    /// The environment that makes `run` connect as `usage-<role>` on the SASL_SSL listener.
    pub fn role_env(&self, role: &str) -> Vec<(String, String)> {
        let mut vars = vec![("USAGE_AGG__KAFKA__BROKERS".to_string(), self.secure.clone())];
        for (k, v) in self.as_role(role) {
            vars.push((
                format!(
                    "USAGE_AGG_KAFKA_PROP_{}",
                    k.to_uppercase().replace('.', "_")
                ),
                v,
            ));
        }
        vars
    }

    /// Produces one record as `role`; the delivery result.
    pub fn produce(&self, role: &str, topic: &str) -> Result<(), KafkaError> {
        let p: FutureProducer = self
            .client(role)
            .set("message.timeout.ms", "15000")
            .create()
            .unwrap();
        let r = FutureRecord::to(topic).key("acl-test").payload("{}");
        futures::executor::block_on(p.send(r, Duration::ZERO))
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Asserts `role` may not write `topic` (and prints the error it gets).
    pub fn refused(&self, role: &str, topic: &str) {
        let r = self.produce(role, topic);
        eprintln!("{role} -> {topic}: {r:?}");
        assert!(
            matches!(
                r,
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::TopicAuthorizationFailed
                ))
            ),
            "{role} must not write {topic}: {r:?}"
        );
    }

    /// The ACL bindings the brokers hold (AclCommand --list through the super user), one
    /// sorted line per (resource, binding): Kafka lists resources in no fixed order.
    pub fn acl_list(&self) -> String {
        let out = Command::new(root().join("scripts/services"))
            .args([
                "kafka-tool",
                "org.apache.kafka.tools.AclCommand",
                "--bootstrap-server",
                &self.admin,
                "--list",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut resource = "";
        let mut lines: Vec<String> = Vec::new();
        for l in text.lines() {
            if l.starts_with("Current ACLs for resource") {
                resource = l;
            } else if !l.trim().is_empty() {
                lines.push(format!("{resource} {}", l.trim()));
            }
        }
        lines.sort();
        lines.join("\n")
    }

    /// Runs scripts/kafka-acls for `env`'s configuration; how long it took.
    pub fn apply_acls(&self, env: &TestEnv) -> Duration {
        let started = Instant::now();
        let out = Command::new(root().join("scripts/kafka-acls"))
            .args(["--bootstrap-server", &self.admin, "--config"])
            .arg(&env.config_path)
            .env("USAGE_AGG_BIN", TestEnv::bin())
            .current_dir(root())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("ACL sets applied"),
            "scripts/kafka-acls failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    }

    /// The access matrix: the runtime writes usage events and is refused `debits`,
    /// `credit_grants` and the state topics; the reader and the sink write nothing; the
    /// reader joins its `analytics-` group on debits and cannot see raw usage.
    pub fn check_matrix(&self, env: &TestEnv) {
        let t = &env.cfg.topics;
        self.produce("runtime", &t.usage_events)
            .expect("the runtime writes usage events");
        for topic in [&t.debits, &t.credit_grants, &t.state, &t.ledger_state] {
            self.refused("runtime", topic);
        }
        self.refused("reader", &t.debits);
        self.refused("reader", &t.credit_grants);
        self.refused("sink", &t.debits);
        let reader: BaseConsumer = self
            .client("reader")
            .set("group.id", "analytics-acl-test")
            .create()
            .unwrap();
        reader.subscribe(&[&t.debits]).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while reader.assignment().unwrap().count() == 0 {
            if let Some(Err(e)) = reader.poll(Duration::from_millis(200)) {
                panic!("the reader reads debits with its group: {e}");
            }
            assert!(Instant::now() < until, "the reader joined its group");
        }
        let md = self
            .client("reader")
            .create::<BaseConsumer>()
            .unwrap()
            .fetch_metadata(Some(&t.usage_events), Duration::from_secs(10))
            .unwrap();
        let usage_md = md.topics()[0].error();
        eprintln!("reader describes {}: {usage_md:?}", t.usage_events);
        assert!(usage_md.is_some(), "the reader cannot see raw usage");
    }

    /// A missing ACL is named: `run --role pipeline` as the reader (no Describe on
    /// usage_events nor the changelog) says which topic and operation in its log and on
    /// /readyz. Returns the log line.
    pub fn check_missing_acl_named(&self, env: &mut TestEnv) -> String {
        let vars = self.role_env("reader");
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        let listen = format!("127.0.0.1:{}", free_port());
        let i = env.spawn_with("pipeline", "missing-acl.log", &listen, &vars);
        // The first topic of the role it may not describe (usage events or the changelog).
        let want = format!(
            ": operation Describe is not allowed to this principal on {}",
            self.secure
        );
        let until = Instant::now() + Duration::from_secs(90);
        let (mut in_log, mut in_readyz) = (false, false);
        while !(in_log && in_readyz) {
            in_log = in_log || env.log("missing-acl.log").contains(&want);
            if !in_readyz {
                let (status, body) = readyz(&listen);
                in_readyz = status == 503 && body.to_string().contains(&want);
            }
            assert!(
                Instant::now() < until,
                "the missing ACL is named (log {in_log}, /readyz {in_readyz}):\n{}",
                env.log("missing-acl.log")
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        env.kill9(i);
        let line = env
            .log("missing-acl.log")
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains(&format!("topic {}.", env.name)),
            "the line names the topic: {line}"
        );
        line
    }
}
