//! `teardown [--yes]`: removes what a prefixed trial made (its Kafka topics, consumer
//! groups and ClickHouse database) and nothing else. The configuration's names in, a list of
//! what it would delete (and, with `--yes`, deletes) out. Scoped by construction: topics by
//! their exact configured names, groups equal to or derived from (`<group id>-...`) the
//! configured group ids, the database by its exact name; refused without `kafka.prefix`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, anyhow};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use usage_aggregator::config::Config;
use usage_aggregator::preflight::{self, Kafka};
use usage_aggregator::{kafka, sink};

use super::stdout;
use crate::Exit;

/// What a teardown would delete (only what exists).
struct Plan {
    topics: Vec<String>,
    /// (group, members connected now)
    groups: Vec<(String, usize)>,
    /// (database, its tables)
    database: Option<(String, u64)>,
}

/// Whether `group` is one of the configured `ids` or derived from one (`<id>-catalog`,
/// `<id>-replay-<pid>`, ...).
fn owned_group(group: &str, ids: &[&str]) -> bool {
    ids.iter().any(|id| {
        group == *id
            || group
                .strip_prefix(id)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

async fn plan(cfg: &Config, admin: &AdminClient<DefaultClientContext>) -> anyhow::Result<Plan> {
    let timeout = cfg.kafka.connect_timeout;
    let md = admin
        .inner()
        .fetch_metadata(None, timeout)
        .context("cannot list topics")?;
    let existing: std::collections::HashSet<&str> = md.topics().iter().map(|t| t.name()).collect();
    let mut topics: Vec<String> = cfg
        .topics
        .all()
        .iter()
        .map(|(_, name)| name.to_string())
        .filter(|n| existing.contains(n.as_str()))
        .collect();
    topics.sort();
    topics.dedup();
    let k = &cfg.kafka;
    let ids = [
        k.group_id.as_str(),
        k.sink_group_id.as_str(),
        k.alerts_group_id.as_str(),
        cfg.ledger.group_id.as_str(),
        cfg.ledger.voucher_group_id.as_str(),
    ];
    let list = admin
        .inner()
        .fetch_group_list(None, timeout)
        .context("cannot list consumer groups")?;
    let mut groups: Vec<(String, usize)> = list
        .groups()
        .iter()
        .filter(|g| owned_group(g.name(), &ids))
        .map(|g| (g.name().to_string(), g.members().len()))
        .collect();
    groups.sort();
    let db = &cfg.clickhouse.database;
    let database = if cfg.clickhouse.url.is_empty() {
        None
    } else {
        preflight::clickhouse(cfg).await?;
        let ch = sink::client(&cfg.clickhouse)?;
        let dbs: u64 = ch
            .query("SELECT count() FROM system.databases WHERE name = ?")
            .bind(db)
            .fetch_one()
            .await?;
        if dbs == 0 {
            None
        } else {
            let tables: u64 = ch
                .query("SELECT count() FROM system.tables WHERE database = ?")
                .bind(db)
                .fetch_one()
                .await?;
            Some((db.clone(), tables))
        }
    };
    Ok(Plan {
        topics,
        groups,
        database,
    })
}

pub async fn teardown(cfg: &Config, yes: bool) -> anyhow::Result<()> {
    let prefix = &cfg.kafka.applied_prefix;
    if prefix.is_empty() {
        anyhow::bail!(
            "kafka.prefix is empty: teardown only removes a prefixed deployment (a trial: USAGE_AGG__KAFKA__PREFIX=trial1-); it never deletes an unprefixed one"
        );
    }
    Kafka::connect(cfg).await?;
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(cfg, &[]).create()?;
    let p = plan(cfg, &admin).await?;
    let mut out = stdout();
    writeln!(
        out,
        "teardown of kafka.prefix = \"{prefix}\" ({}):",
        cfg.kafka.brokers
    )?;
    let names: Vec<&str> = p.groups.iter().map(|(g, _)| g.as_str()).collect();
    writeln!(out, "{}", listed("kafka topics", &p.topics))?;
    writeln!(out, "{}", listed("kafka consumer groups", &names))?;
    match &p.database {
        Some((db, tables)) => writeln!(out, "  clickhouse database: {db} ({tables} tables)")?,
        None => writeln!(
            out,
            "  clickhouse database: none ({} does not exist)",
            cfg.clickhouse.database
        )?,
    }
    out.flush()?;
    if p.topics.is_empty() && p.groups.is_empty() && p.database.is_none() {
        writeln!(out, "nothing to delete")?;
        out.flush()?;
        return Ok(());
    }
    let busy: Vec<String> = p
        .groups
        .iter()
        .filter(|(_, m)| *m > 0)
        .map(|(g, m)| format!("{g} ({m} members)"))
        .collect();
    if !busy.is_empty() {
        return Err(anyhow!(
            "consumer groups have members connected: {}; stop the service of this prefix first (nothing deleted)",
            busy.join(", ")
        ));
    }
    if !yes {
        return Err(Exit {
            code: 1,
            message: "nothing deleted: run again with --yes to delete the above".into(),
        }
        .into());
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if !names.is_empty() {
        for r in admin.delete_groups(&names, &opts).await? {
            if let Err((g, e)) = r {
                anyhow::bail!("consumer group {g}: cannot delete: {e}");
            }
        }
    }
    let topics: Vec<&str> = p.topics.iter().map(String::as_str).collect();
    if !topics.is_empty() {
        for r in admin.delete_topics(&topics, &opts).await? {
            if let Err((t, e)) = r {
                anyhow::bail!("topic {t}: cannot delete: {e}");
            }
        }
    }
    if let Some((db, _)) = &p.database {
        sink::client(&cfg.clickhouse)?
            .query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .execute()
            .await
            .with_context(|| format!("clickhouse.database = \"{db}\": cannot drop"))?;
    }
    writeln!(
        out,
        "deleted {} topics, {} consumer groups{}",
        topics.len(),
        names.len(),
        p.database
            .as_ref()
            .map(|(db, _)| format!(" and the database {db}"))
            .unwrap_or_default()
    )?;
    out.flush()?;
    Ok(())
}

/// `  WHAT (N): a b c`, or `  WHAT (0): none` (no trailing space).
fn listed(what: &str, names: &[impl AsRef<str>]) -> String {
    if names.is_empty() {
        return format!("  {what} (0): none");
    }
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    format!("  {what} ({}): {}", names.len(), names.join(" "))
}

#[cfg(test)]
mod tests {
    use super::{listed, owned_group};

    #[test]
    fn an_empty_list_says_none_without_a_trailing_space() {
        assert_eq!(
            listed("kafka consumer groups", &[] as &[&str]),
            "  kafka consumer groups (0): none"
        );
        assert_eq!(
            listed("kafka topics", &["a", "b"]),
            "  kafka topics (2): a b"
        );
    }

    #[test]
    fn only_configured_groups_and_their_derived_ones_are_owned() {
        let ids = ["trial1-usage-aggregator", "trial1-usage-sink"];
        assert!(owned_group("trial1-usage-aggregator", &ids));
        assert!(owned_group("trial1-usage-aggregator-catalog", &ids));
        assert!(owned_group("trial1-usage-sink", &ids));
        // Another prefix that starts the same way is not ours.
        assert!(!owned_group("trial1-usage-aggregatorx", &ids));
        assert!(!owned_group("trial10-usage-aggregator", &ids));
        assert!(!owned_group("usage-aggregator", &ids));
    }
}
