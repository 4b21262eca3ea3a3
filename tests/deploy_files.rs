//! Deployment files: docker-compose, Prometheus rules, Grafana provisioning and dashboards
//! parse, reference files that exist, use config keys that exist, and name only metrics the
//! service exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| ext.iter().any(|e| x == *e)) {
            out.push(p);
        }
    }
}

fn metric_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("usage_agg_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_json_and_yaml_file_parses() {
    let mut paths = Vec::new();
    files(&root().join("deploy"), &["json", "yml", "yaml"], &mut paths);
    paths.push(root().join("docker-compose.yml"));
    assert!(paths.len() >= 8, "{paths:?}");
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        if p.extension().unwrap() == "json" {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        } else {
            serde_yaml::from_str::<serde_yaml::Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

#[test]
fn dashboards_and_rules_name_only_exported_metrics() {
    usage_aggregator::app::init_labels(&usage_aggregator::config::Config::default());
    let exported: BTreeSet<String> = usage_aggregator::metrics::metric_names()
        .into_iter()
        .collect();
    let mut paths = Vec::new();
    files(&root().join("deploy/grafana"), &["json", "yml"], &mut paths);
    files(
        &root().join("deploy/prometheus/rules"),
        &["yml"],
        &mut paths,
    );
    let mut checked = 0;
    for p in paths {
        for m in metric_refs(&std::fs::read_to_string(&p).unwrap()) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s).filter(|b| exported.contains(*b)))
                .unwrap_or(&m);
            assert!(
                exported.contains(base),
                "{} names {m}, which the service does not export",
                p.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} metric references found");
    let dashboards: Vec<String> = ["spend", "pipeline"]
        .iter()
        .map(|d| {
            std::fs::read_to_string(root().join(format!("deploy/grafana/dashboards/{d}.json")))
                .unwrap()
        })
        .collect();
    assert!(dashboards[0].contains("\"Spend\"") && dashboards[1].contains("\"Pipeline\""));
}

/// A prefixed deployment (`kafka.prefix = "trial1-"` gives the database `trial1_usage`) must
/// see its own rows: no dashboard or Grafana rule names the database (issue 23 item 7).
#[test]
fn dashboards_take_the_database_and_datasources_as_variables() {
    for d in ["spend", "credits", "pipeline"] {
        let text =
            std::fs::read_to_string(root().join(format!("deploy/grafana/dashboards/{d}.json")))
                .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let vars: Vec<&str> = doc["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for uid in ["clickhouse", "prometheus"] {
            assert!(
                !text.contains(&format!("\"uid\": \"{uid}\"")),
                "{d}.json names the {uid} datasource by uid: use ${{{uid}}}"
            );
            if text.contains(&format!("\"uid\": \"${{{uid}}}\"")) {
                assert!(vars.contains(&uid), "{d}.json: no {uid} variable");
            }
        }
        let sql = text.matches("\"rawSql\"").count();
        assert_eq!(
            text.matches("FROM ${database}.").count(),
            sql,
            "{d}.json: every ClickHouse query reads FROM ${{database}}.<table>"
        );
        if sql > 0 {
            assert!(vars.contains(&"database"), "{d}.json: no database variable");
        }
    }
    let rules =
        std::fs::read_to_string(root().join("deploy/grafana/provisioning/alerting/rules.yml"))
            .unwrap();
    assert!(rules.contains("FROM debits") && !rules.contains("usage."));
    let ds = std::fs::read_to_string(
        root().join("deploy/grafana/provisioning/datasources/datasources.yml"),
    )
    .unwrap();
    assert!(ds.contains("defaultDatabase: ${GRAFANA_USAGE_DATABASE}"));
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(compose.contains("GRAFANA_USAGE_DATABASE: ${GRAFANA_USAGE_DATABASE:-usage}"));
}

#[test]
fn compose_services_ports_mounts_and_env_match_the_project() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = doc["services"].as_mapping().unwrap();
    for s in [
        "kafka",
        "clickhouse",
        "prometheus",
        "grafana",
        "aggregator",
        "setup",
    ] {
        assert!(services.contains_key(s), "service {s}");
    }
    // Every bind-mounted path exists in the repo.
    for (name, svc) in services {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let v = v.as_str().unwrap();
            if let Some(src) = v.split(':').next().filter(|s| s.starts_with("./")) {
                assert!(
                    root().join(src).exists(),
                    "{name:?} mounts {src}, which does not exist"
                );
            }
        }
        if let Some(df) = svc["build"]["dockerfile"].as_str() {
            assert!(root().join(df).exists(), "{df}");
        }
    }
    // The aggregator's port is the configured HTTP port, and every env key is a config key.
    let default = usage_aggregator::config::Config::default();
    let port = default.http.listen.rsplit(':').next().unwrap().to_string();
    let agg = &services["aggregator"];
    let ports: Vec<String> = agg["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "{ports:?}"
    );
    let cfg_toml = toml::to_string(&default).unwrap();
    let cfg: toml::Value = toml::from_str(&cfg_toml).unwrap();
    let env = agg["environment"].as_mapping().unwrap();
    for (k, _) in env {
        let k = k.as_str().unwrap();
        let Some(path) = k.strip_prefix("USAGE_AGG__") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
        let mut v = &cfg;
        for p in &parts {
            v = v
                .get(p)
                .unwrap_or_else(|| panic!("{k} is not a configuration key"));
        }
    }
    let prom = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap();
    assert!(
        prom.contains(&format!("aggregator:{port}")),
        "prometheus scrapes the aggregator port"
    );
}

#[test]
fn migrations_avoid_what_the_test_server_lacks() {
    for (_, name, sql) in usage_aggregator::sink::migrate::MIGRATIONS {
        let upper = sql.to_uppercase();
        for bad in [
            "LOWCARDINALITY",
            "DATETIME64",
            "MAP(",
            " TTL ",
            "CODEC(",
            "IF NOT EXISTS COLUMN",
        ] {
            let code: String = upper
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(!code.contains(bad), "migration {name} uses {bad}");
        }
    }
}

/// Issue 23: the Alertmanager example is valid for Alertmanager itself and routes each kind
/// of alert where its comments say (amtool from Debian's prometheus-alertmanager, installed
/// by scripts/services).
#[test]
fn alertmanager_example_is_valid_and_routes_spend_alerts_by_account() {
    let amtool = Path::new("/usr/bin/amtool");
    assert!(
        amtool.exists(),
        "scripts/services installs prometheus-alertmanager (amtool)"
    );
    let cfg = root().join("deploy/alertmanager/alertmanager.yml");
    let out = std::process::Command::new(amtool)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (labels, receiver) in [
        (
            "alertname=SpendAlert rule=execution_credits account_id=acct-1 execution_id=x",
            "billing",
        ),
        (
            "alertname=SpendAlert rule=account_hourly_credits account_id=acct-enterprise-7",
            "account-managers",
        ),
        ("alertname=HighAccountSpend severity=warning", "billing"),
        ("alertname=NoProgress severity=critical", "pager"),
        ("alertname=SinkLag severity=warning", "ops"),
    ] {
        let out = std::process::Command::new(amtool)
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", cfg.display()))
            .args(labels.split(' '))
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(got.trim(), receiver, "{labels}");
    }
}
