//! `teardown` through the binary on the real broker and ClickHouse (issue 23 item 8): it
//! lists what a prefixed deployment made, deletes nothing without `--yes`, refuses without a
//! prefix, deletes exactly that deployment's topics, consumer groups and database with
//! `--yes`, and leaves a second prefix that starts the same way untouched.

mod common;
#[path = "support/bin.rs"]
mod support;

use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::*;

/// A committed offset of `group` on `topic`: the group then exists on the broker.
fn make_group(brokers: &str, group: &str, topic: &str) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

fn topics(brokers: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    md.topics().iter().map(|t| t.name().to_string()).collect()
}

fn groups(brokers: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let l = c.fetch_group_list(None, Duration::from_secs(10)).unwrap();
    l.groups().iter().map(|g| g.name().to_string()).collect()
}

#[test]
fn teardown_removes_one_prefix_and_nothing_else() {
    let env = TestEnv::new("teardown");
    let brokers = env.cfg.kafka.brokers.clone();
    let cfg = env.config_path.to_str().unwrap().to_string();
    let mine = "trial1-";
    let other = "trial1-b-";
    let run = |prefix: &str, args: &[&str]| {
        let mut all = vec!["--config", cfg.as_str()];
        all.extend_from_slice(args);
        let env_vars: Vec<(&str, &str)> = if prefix.is_empty() {
            vec![]
        } else {
            vec![("USAGE_AGG__KAFKA__PREFIX", prefix)]
        };
        let o = run_bin(&root(), &all, &env_vars, Duration::from_secs(120));
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr(&o),
        )
    };
    for p in [mine, other] {
        let (code, _, err) = run(p, &["setup"]);
        assert_eq!(code, Some(0), "{err}");
    }
    let name = |p: &str, n: &str| format!("{p}{n}");
    let db = |p: &str| format!("{}{}", p.replace('-', "_"), env.cfg.clickhouse.database);
    let events = |p: &str| name(p, &env.cfg.topics.usage_events);
    let group = |p: &str| name(p, &format!("{}-catalog", env.cfg.kafka.group_id));
    for p in [mine, other] {
        make_group(&brokers, &group(p), &events(p));
    }
    let all_topics = |p: &str| -> Vec<String> {
        env.cfg
            .topics
            .all()
            .iter()
            .map(|(_, t)| name(p, t))
            .collect()
    };
    let db_exists = |d: &str| {
        env.ch(&format!(
            "SELECT count() FROM system.databases WHERE name = '{d}'"
        ))
        .trim()
            == "1"
    };

    // No prefix: refused, whatever the flags.
    let (code, _, err) = run("", &["teardown", "--yes"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("kafka.prefix is empty"), "{err}");

    // Without --yes: the list, and nothing deleted.
    let (code, out, err) = run(mine, &["teardown"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("nothing deleted: run again with --yes"),
        "{err}"
    );
    assert!(
        out.contains("teardown of kafka.prefix = \"trial1-\""),
        "{out}"
    );
    for t in all_topics(mine) {
        assert!(out.contains(&t), "lists {t}: {out}");
    }
    assert!(out.contains(&group(mine)), "{out}");
    assert!(!out.contains(&group(other)), "{out}");
    assert!(
        out.contains(&format!("clickhouse database: {} (", db(mine))),
        "{out}"
    );
    assert!(db_exists(&db(mine)));

    // --yes: exactly this prefix's topics, groups and database.
    let (code, out, err) = run(mine, &["teardown", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deleted "), "{out}");
    env.wait_for("the topics to go", Duration::from_secs(60), || {
        let now = topics(&brokers);
        all_topics(mine).iter().all(|t| !now.contains(t))
    });
    let now = topics(&brokers);
    for t in all_topics(other) {
        assert!(now.contains(&t), "{t} of the other prefix is kept");
    }
    let g = groups(&brokers);
    assert!(
        !g.contains(&group(mine)) && g.contains(&group(other)),
        "{g:?}"
    );
    assert!(!db_exists(&db(mine)) && db_exists(&db(other)));

    // Again: nothing left to delete.
    let (code, out, err) = run(mine, &["teardown", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("nothing to delete"), "{out}");

    // Clean up the other prefix the same way.
    let (code, _, err) = run(other, &["teardown", "--yes"]);
    assert_eq!(code, Some(0), "{err}");
}
