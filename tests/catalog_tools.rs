//! Catalog rules enforced by the tools, through the binary on the real broker: `check` lists
//! prices and speaks JSON; `publish` needs an existing compacted topic, sends only new
//! versions and refuses retroactive ones unless allowed, saying what they change.

mod common;
#[path = "support/bin.rs"]
mod support;

use std::time::Duration;

use common::*;
use support::*;

#[test]
fn catalog_check_lists_prices_and_speaks_json() {
    let o = run_bin(
        &root(),
        &["catalog", "check", "config/catalog.json"],
        &[],
        Duration::from_secs(30),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        out.contains("input_tokens 0.15/1000000, output_tokens 0.6/1000000"),
        "{out}"
    );
    let o = run_bin(
        &root(),
        &[
            "catalog",
            "check",
            "config/catalog.json",
            "--format",
            "json",
        ],
        &[],
        Duration::from_secs(30),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["versions"][0]["prices"].as_object().map(|p| p.is_empty()),
        Some(false)
    );
}

#[test]
fn catalog_publish_checks_the_topic_and_refuses_retroactive_versions() {
    let env = TestEnv::new("catrules");
    let cfgp = env.config_path.to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", cfgp.as_str()];
        all.extend_from_slice(args);
        let o = run_bin(&root(), &all, &[], Duration::from_secs(120));
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr(&o),
        )
    };
    // The topic does not exist yet.
    let (code, _, err) = cli(&["catalog", "publish", "config/catalog.json"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "topics.price_catalog = \"{}\": the topic does not exist",
            env.cfg.topics.price_catalog
        )),
        "{err}"
    );
    env.cli(&["setup", "--kafka-only"]);
    // Seeding the empty topic is not repricing.
    let (code, out, err) = cli(&["catalog", "publish", "config/catalog.json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("published 15 new price versions"), "{out}");
    let (_, out, _) = cli(&["catalog", "publish", "config/catalog.json"]);
    assert!(
        out.contains("published 0 new price versions") && out.contains("(15 already there)"),
        "{out}"
    );
    // A new version in the past reprices: refused with what it changes, unless allowed.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("new.json");
    std::fs::write(
        &f,
        r#"[{"asset_id":"openai/gpt-4o","asset_type":"model","vendor":"openai","effective_from":"2025-01-01T00:00:00Z","prices":{"input_tokens":{"credits":"2","per":1000000},"output_tokens":{"credits":"8","per":1000000}}}]"#,
    )
    .unwrap();
    let fp = f.to_str().unwrap();
    let (code, _, err) = cli(&["catalog", "publish", fp]);
    assert_eq!(code, Some(1));
    assert!(err.contains("openai/gpt-4o@2025-01-01T00:00:00Z: events of openai/gpt-4o from 2025-01-01T00:00:00Z to"), "{err}");
    assert!(
        err.contains("input_tokens 2.5/1000000") && err.contains("--allow-retroactive"),
        "{err}"
    );
    let (code, _, _) = cli(&["catalog", "check", fp, "--against-topic"]);
    assert_eq!(code, Some(1), "check agrees with publish");
    let (code, out, err) = cli(&["catalog", "publish", fp, "--allow-retroactive"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("published 1 new price versions"), "{out}");
    // A published version may gain aliases (issue 23 item 2), and only that.
    let gpt4o = r#"{"asset_id":"openai/gpt-4o","asset_type":"model","vendor":"openai","effective_from":"2024-01-01T00:00:00Z","prices":{"input_tokens":{"credits":"2.5","per":1000000},"output_tokens":{"credits":"10","per":1000000}},"aliases":["gpt-4o",ALIAS],"alias_patterns":["(openai/)?gpt-4o-[0-9]{4}-[0-9]{2}-[0-9]{2}"]}"#;
    let write = |name: &str, body: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("[{body}]")).unwrap();
        p.to_str().unwrap().to_string()
    };
    let added = write("alias.json", gpt4o.replace("ALIAS", r#""gpt-4o-latest""#));
    let (code, out, err) = cli(&["catalog", "publish", &added]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("published 1 new price versions")
            && out.contains("1 of the new ones republished with aliases added"),
        "{out}"
    );
    assert!(
        err.contains(
            "note: openai/gpt-4o@2024-01-01T00:00:00Z: republished with aliases added: gpt-4o-latest"
        ),
        "{err}"
    );
    // The feed took it: the topic's version now is the file's.
    let (code, out, err) = cli(&["catalog", "publish", &added]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("published 0 new price versions") && out.contains("(1 already there)"),
        "{out}"
    );
    // Removing it again, or changing a price with it, is refused, naming what differs.
    let (code, _, err) = cli(&["catalog", "publish", "config/catalog.json"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("openai/gpt-4o@2024-01-01T00:00:00Z: aliases removed: gpt-4o-latest")
            && err.contains("it may only gain aliases or alias_patterns"),
        "{err}"
    );
    let repriced = write(
        "repriced.json",
        gpt4o
            .replace("ALIAS", r#""gpt-4o-latest","gpt-4o-new""#)
            .replace("\"10\"", "\"12\""),
    );
    let (code, _, err) = cli(&["catalog", "publish", &repriced, "--allow-retroactive"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("openai/gpt-4o@2024-01-01T00:00:00Z: prices input_tokens 2.5/1000000, output_tokens 10/1000000 -> input_tokens 2.5/1000000, output_tokens 12/1000000"),
        "{err}"
    );
    // The same change as a correction (issue 28): it replaces the version at its instant,
    // under its own key, and the topic then prices with it.
    let (code, _, err) = cli(&["catalog", "publish", &repriced, "--correction", "fix-1"]);
    assert_ne!(code, Some(0), "a correction needs a reason");
    assert!(err.contains("--reason"), "{err}");
    let fix = [
        "catalog",
        "publish",
        &repriced,
        "--correction",
        "fix-1",
        "--reason",
        "output price typo",
    ];
    let (code, out, err) = cli(&fix);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("published 1 new price versions"), "{out}");
    assert!(
        err.contains("correction: openai/gpt-4o@2024-01-01T00:00:00Z#fix-1"),
        "{err}"
    );
    let (_, out, _) = cli(&fix);
    assert!(
        out.contains("published 0 new price versions"),
        "idempotent: {out}"
    );
    let (_, list, _) = cli(&["catalog", "list", "--format", "json"]);
    assert!(
        list.contains(r#""id": "fix-1""#)
            && list.contains("output price typo")
            && list.contains(r#""credits": "12""#),
        "{list}"
    );
    // A topic that is not compacted is refused.
    let mut env2 = TestEnv::new("catdel");
    env2.cfg.topics.price_catalog = env.cfg.topics.debits.clone();
    env2.write_config();
    let o = run_bin(
        &root(),
        &[
            "--config",
            env2.config_path.to_str().unwrap(),
            "catalog",
            "publish",
            "config/catalog.json",
        ],
        &[],
        Duration::from_secs(60),
    );
    let err = stderr(&o);
    assert!(
        err.contains("cleanup.policy is \"delete\", not compact"),
        "{err}"
    );
}

/// Issue 23 item 3: what is published can be seen (`catalog list`), taken back as a file
/// (`catalog export`) and compared with a file (`catalog diff`), through the binary on the
/// real broker; the running service says each version it accepts at INFO.
#[test]
fn catalog_list_export_diff_and_the_service_says_what_it_accepts() {
    let mut env = TestEnv::new("catview");
    env.setup();
    env.cli(&["catalog", "publish", "config/catalog.json"]);
    let list = env.cli(&["catalog", "list"]);
    assert!(
        list.contains(&format!(
            "15 versions of 14 assets on {}",
            env.cfg.topics.price_catalog
        )),
        "{list}"
    );
    assert!(
        list.contains("openai/gpt-4o ") && list.contains("aliases: gpt-4o /"),
        "{list}"
    );
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("published.json");
    let ex = exported.to_str().unwrap();
    env.cli(&["catalog", "export", "--output", ex]);
    // The export is a catalog file: check accepts it, and it equals the topic.
    env.cli(&["catalog", "check", ex]);
    let same = env.cli(&["catalog", "diff", ex]);
    assert!(
        same.contains("15 versions; 0 new to publish, 0 publish would refuse, 0 only on"),
        "{same}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&env.cli(&["catalog", "list", "--format", "json"])).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    assert_eq!(listed, file);

    env.spawn("pipeline", "agg.log");
    env.wait_for("the catalog to load", Duration::from_secs(60), || {
        env.log("agg.log").contains("price catalog loaded")
    });
    // One new price in the exported file: diff says it, exits 1, publish takes it.
    let mut versions: Vec<serde_json::Value> = serde_json::from_value(file).unwrap();
    let mut newer = versions
        .iter()
        .find(|v| v["asset_id"] == "openai/gpt-4o")
        .unwrap()
        .clone();
    newer["effective_from"] = "2030-01-01T00:00:00Z".into();
    newer["prices"]["output_tokens"]["credits"] = "9".into();
    versions.push(newer);
    std::fs::write(&exported, serde_json::to_string(&versions).unwrap()).unwrap();
    let o = support::run_bin(
        &root(),
        &[
            "--config",
            env.config_path.to_str().unwrap(),
            "catalog",
            "diff",
            ex,
        ],
        &[],
        Duration::from_secs(60),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("+  openai/gpt-4o@2030-01-01T00:00:00Z")
            && out.contains("16 versions; 1 new to publish, 0 publish would refuse"),
        "{out}"
    );
    env.cli(&["catalog", "publish", ex]);
    env.wait_for("the INFO line of the new version", Duration::from_secs(30), || {
        env.log("agg.log").contains("price version accepted: model openai input_tokens 2.5/1000000, output_tokens 9/1000000")
    });
    let log = env.log("agg.log");
    assert!(
        log.contains("openai/gpt-4o@2030-01-01T00:00:00Z") && log.contains("INFO"),
        "{log}"
    );
    // The sample file now lacks a version the topic has: said, not removed.
    let o = support::run_bin(
        &root(),
        &[
            "--config",
            env.config_path.to_str().unwrap(),
            "catalog",
            "diff",
            "config/catalog.json",
        ],
        &[],
        Duration::from_secs(60),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("-  openai/gpt-4o@2030-01-01T00:00:00Z  (only on the topic)"),
        "{out}"
    );
}
