//! Dashboards and alert rules against real services: a Prometheus started here scrapes the
//! running aggregator and evaluates the rules in deploy/prometheus/rules; every panel query
//! of the Grafana dashboards and the Grafana alert rules runs against that Prometheus and the
//! real ClickHouse, in the test's own database as a prefixed deployment has (issue 23 item 7).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn dashboards_and_rules_run_against_prometheus_and_clickhouse() {
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(prometheus.exists(), "scripts/services installs prometheus");
    // A database other than `usage`, as kafka.prefix gives (trial1_usage): the dashboards'
    // `database` variable and the datasource's default database name it.
    let mut env = TestEnv::new("dashboards");
    assert_ne!(env.cfg.clickhouse.database, "usage");
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    env.spawn("all", "agg.log");
    env.cli(&[
        "loadgen",
        "--executions",
        "100",
        "--direct-calls",
        "200",
        "--run-id",
        &env.name.clone(),
    ]);

    let port = free_port();
    let dir = env.dir.path().to_path_buf();
    let rules = root().join("deploy/prometheus/rules/usage-aggregator.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: usage-aggregator\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            env.cfg.http.listen
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let prom_addr = format!("127.0.0.1:{port}");
    let result = std::panic::catch_unwind(|| {
        env.wait_for(
            "prometheus to scrape the aggregator",
            Duration::from_secs(60),
            || {
                let (s, body) = http_get(
                    &prom_addr,
                    "/api/v1/query?query=usage_agg_pipeline_events_consumed_total",
                );
                s == 200 && body.contains("\"value\"") && !body.contains("\"0\"]")
            },
        );
        env.wait_for("clickhouse rows", Duration::from_secs(60), || {
            env.ch("SELECT count() FROM {db}.debits").trim() != "0"
        });
        std::thread::sleep(Duration::from_secs(3));
        let (s, rules) = http_get(&prom_addr, "/api/v1/rules");
        assert_eq!(s, 200);
        assert!(
            rules.matches("\"health\":\"ok\"").count() >= 9,
            "every rule evaluates: {rules}"
        );
        let out = Command::new("python3")
            .arg(root().join("scripts/check-dashboards"))
            .arg("--require-all")
            .env("PROM_URL", format!("http://{prom_addr}"))
            .env("CH_URL", &env.cfg.clickhouse.url)
            .env("CH_DATABASE", &env.cfg.clickhouse.database)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "a dashboard query failed");
        assert!(text.lines().filter(|l| l.starts_with("ok")).count() >= 10);
        // The panels show this deployment's rows, not an empty or another database's.
        let rows = |panel: &str| {
            text.lines()
                .find(|l| l.starts_with("ok") && l.contains(panel))
                .and_then(|l| l.rsplit("rows=").next())
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no ok line for {panel}: {text}"))
        };
        assert_eq!(rows("\"Top 10 accounts by credits\""), 10, "{text}");
        assert!(rows("\"Spend per asset type\"") >= 2, "{text}");
        assert!(rows("rules.yml  rule query #1") >= 1, "{text}");
    });
    let _ = prom.kill();
    let _ = prom.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
