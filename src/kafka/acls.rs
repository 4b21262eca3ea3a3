//! Least privilege on Kafka: the configuration (topic names, group ids, the transactional
//! ids' prefix) and one principal per role in, the ACLs each role needs out, as arguments of
//! Kafka's own `kafka-acls` tool (`scripts/kafka-acls` applies them; adding an ACL that exists
//! is a no-op, so applying twice changes nothing). The access matrix is documented in
//! docs/operations.md#kafka-acls; `tests/acls.rs` proves it on a broker with KRaft's
//! `StandardAuthorizer`.
//!
//! Roles: `runtime` (platform runtimes: write usage events only), `pipeline` (`run --role
//! pipeline`: rating and spend alerts), `sink` (`run --role sink`), `ledger` (`run --role
//! ledger`: credits ledger and vouchers, and the HTTP top-up and voucher endpoints, which write
//! its inputs), `reader` (analysts, dashboards: read the billing outputs, nothing else).
//! Every `run` process also follows what its HTTP API answers from (API keys, the ledger's
//! state, the committed outputs), so the three service principals share those reads.

use crate::config::Config;

/// The principal of each role, e.g. `User:usage-pipeline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principals {
    pub runtime: String,
    pub pipeline: String,
    pub sink: String,
    pub ledger: String,
    pub reader: String,
    /// Consumer groups of the `reader` principal start with this.
    pub reader_group_prefix: String,
}

impl Default for Principals {
    fn default() -> Self {
        Principals {
            runtime: "User:usage-runtime".into(),
            pipeline: "User:usage-pipeline".into(),
            sink: "User:usage-sink".into(),
            ledger: "User:usage-ledger".into(),
            reader: "User:usage-reader".into(),
            reader_group_prefix: "analytics-".into(),
        }
    }
}

/// What an ACL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Topic,
    Group,
    TransactionalId,
}

/// Operations on `names` (literal, or name prefixes) allowed to each of `principals`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub principals: Vec<String>,
    pub resource: Resource,
    pub prefixed: bool,
    pub names: Vec<String>,
    pub operations: Vec<&'static str>,
}

impl Grant {
    /// The `kafka-acls --add` arguments of this grant (without the connection options).
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for p in &self.principals {
            a.extend(["--allow-principal".to_string(), p.clone()]);
        }
        for op in &self.operations {
            a.extend(["--operation".to_string(), op.to_string()]);
        }
        let flag = match self.resource {
            Resource::Topic => "--topic",
            Resource::Group => "--group",
            Resource::TransactionalId => "--transactional-id",
        };
        for n in &self.names {
            a.extend([flag.to_string(), n.clone()]);
        }
        if self.prefixed {
            a.extend([
                "--resource-pattern-type".to_string(),
                "prefixed".to_string(),
            ]);
        }
        a
    }
}

const READ: [&str; 2] = ["Read", "Describe"];
const WRITE: [&str; 2] = ["Write", "Describe"];

fn topics(p: &[&String], names: &[&String], ops: &[&'static str]) -> Grant {
    Grant {
        principals: p.iter().map(|s| s.to_string()).collect(),
        resource: Resource::Topic,
        prefixed: false,
        names: names.iter().map(|s| s.to_string()).collect(),
        operations: ops.to_vec(),
    }
}

fn groups(p: &[&String], names: &[&String], prefixed: bool) -> Grant {
    Grant {
        principals: p.iter().map(|s| s.to_string()).collect(),
        resource: Resource::Group,
        prefixed,
        names: names.iter().map(|s| s.to_string()).collect(),
        operations: vec!["Read", "Describe"],
    }
}

/// Transactional ids `<kafka.group_id>-<stage>-` (src/kafka.rs `transactional_id`).
fn txn_ids(cfg: &Config, p: &str, stages: &[&str]) -> Grant {
    Grant {
        principals: vec![p.to_string()],
        resource: Resource::TransactionalId,
        prefixed: true,
        names: stages
            .iter()
            .map(|s| format!("{}-{s}-", cfg.kafka.group_id))
            .collect(),
        operations: vec!["Write", "Describe"],
    }
}

/// Every ACL of every role (see the module documentation).
pub fn grants(cfg: &Config, who: &Principals) -> Vec<Grant> {
    let t = &cfg.topics;
    let k = &cfg.kafka;
    let mut out = vec![
        topics(&[&who.runtime], &[&t.usage_events], &WRITE),
        topics(
            &[&who.reader],
            &[&t.debits, &t.priced_usage, &t.balances, &t.credit_alerts],
            &READ,
        ),
        groups(&[&who.reader], &[&who.reader_group_prefix], true),
    ];
    // What every `run` process reads: its HTTP API's sources (API keys, the ledger's state
    // and answers, the committed outputs, both alerts topics, prices and plans), and the readers' groups
    // (`<kafka.group_id>-reader`, `-follower`, the feeds'), which only track positions.
    let shared = [
        &t.api_keys,
        &t.ledger_state,
        &t.ledger_results,
        &t.voucher_results,
        &t.voucher_state,
        &t.debits,
        &t.priced_usage,
        &t.balances,
        &t.alerts,
        &t.credit_alerts,
        &t.price_catalog,
        &t.plans,
    ];
    let service = [&who.pipeline, &who.sink, &who.ledger];
    out.push(topics(&service, &shared, &READ));
    out.push(groups(&service, &[&k.group_id], true));
    // `run` checks at start that every configured topic exists (metadata only).
    let every: Vec<&String> = t.all().into_iter().map(|(_, name)| name).collect();
    out.push(topics(&service, &every, &["Describe"]));
    // Rating pipeline and spend alerts.
    let p = &who.pipeline;
    out.push(topics(
        &[p],
        &[&t.usage_events, &t.state, &t.alerts_state],
        &READ,
    ));
    out.push(topics(
        &[p],
        &[
            // Close markers go back to the usage topic; the catalog file is published when
            // the catalog topic is empty.
            &t.usage_events,
            &t.priced_usage,
            &t.debits,
            &t.dead_letter,
            &t.state,
            &t.alerts,
            &t.alerts_state,
            &t.price_catalog,
        ],
        &WRITE,
    ));
    out.push(groups(&[p], &[&k.alerts_group_id], false));
    out.push(txn_ids(cfg, p, &["pipeline", "alerts"]));
    // ClickHouse sink.
    let p = &who.sink;
    out.push(topics(&[p], &[&t.dead_letter], &READ));
    out.push(groups(&[p], &[&k.sink_group_id], false));
    // Credits ledger and vouchers.
    let p = &who.ledger;
    out.push(topics(
        &[p],
        &[&t.credit_grants, &t.voucher_requests],
        &READ,
    ));
    out.push(topics(
        &[p],
        &[
            &t.credit_grants,
            &t.voucher_requests,
            &t.ledger_state,
            &t.voucher_state,
            &t.balances,
            &t.credit_alerts,
            &t.topup_requests,
            &t.ledger_results,
            &t.voucher_results,
            &t.dead_letter,
        ],
        &WRITE,
    ));
    out.push(groups(
        &[p],
        &[&cfg.ledger.group_id, &cfg.ledger.voucher_group_id],
        false,
    ));
    out.push(txn_ids(cfg, p, &["ledger", "vouchers"]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writers_of(g: &[Grant], topic: &str) -> Vec<String> {
        let mut w: Vec<String> = g
            .iter()
            .filter(|g| {
                g.resource == Resource::Topic
                    && g.operations.contains(&"Write")
                    && g.names.iter().any(|n| n == topic)
            })
            .flat_map(|g| g.principals.clone())
            .collect();
        w.sort();
        w
    }

    #[test]
    fn only_the_ledger_writes_grants_and_only_the_pipeline_writes_debits() {
        let cfg = Config::default();
        let g = grants(&cfg, &Principals::default());
        let t = &cfg.topics;
        assert_eq!(writers_of(&g, &t.credit_grants), ["User:usage-ledger"]);
        assert_eq!(writers_of(&g, &t.debits), ["User:usage-pipeline"]);
        assert_eq!(writers_of(&g, &t.state), ["User:usage-pipeline"]);
        assert_eq!(writers_of(&g, &t.ledger_state), ["User:usage-ledger"]);
        assert_eq!(
            writers_of(&g, &t.usage_events),
            ["User:usage-pipeline", "User:usage-runtime"]
        );
        // The reader and the sink write nothing.
        for p in ["User:usage-reader", "User:usage-sink"] {
            assert!(
                !g.iter().any(|g| g.principals.iter().any(|x| x == p)
                    && g.operations.contains(&"Write")),
                "{p} writes"
            );
        }
        // The runtime has exactly one ACL.
        let runtime: Vec<_> = g
            .iter()
            .filter(|g| g.principals.iter().any(|x| x == "User:usage-runtime"))
            .collect();
        assert_eq!(runtime.len(), 1);
        assert_eq!(
            runtime[0].args(),
            [
                "--allow-principal",
                "User:usage-runtime",
                "--operation",
                "Write",
                "--operation",
                "Describe",
                "--topic",
                &t.usage_events
            ]
        );
    }

    #[test]
    fn transactional_ids_are_prefixed_by_stage() {
        let mut cfg = Config::default();
        cfg.kafka.group_id = "g".into();
        let g = grants(&cfg, &Principals::default());
        let ids: Vec<_> = g
            .iter()
            .filter(|g| g.resource == Resource::TransactionalId)
            .map(|g| {
                (
                    g.principals[0].as_str(),
                    g.names.clone(),
                    g.args().last().cloned(),
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                (
                    "User:usage-pipeline",
                    vec!["g-pipeline-".to_string(), "g-alerts-".to_string()],
                    Some("prefixed".to_string())
                ),
                (
                    "User:usage-ledger",
                    vec!["g-ledger-".to_string(), "g-vouchers-".to_string()],
                    Some("prefixed".to_string())
                ),
            ]
        );
        // And they match what the stages use.
        assert!(crate::kafka::transactional_id(&cfg, "pipeline").starts_with("g-pipeline-"));
    }
}
