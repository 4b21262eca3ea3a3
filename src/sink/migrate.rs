//! Schema migrations: the SQL files in deploy/clickhouse (embedded at build time) in, applied
//! once each and recorded in `{db}.schema_migrations` out. Idempotent.

use crate::config::ClickHouseConfig;

/// Migrations in order: (version, name, sql with `{db}` placeholders).
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "tables",
        include_str!("../../deploy/clickhouse/0001_tables.sql"),
    ),
    (
        2,
        "rollups",
        include_str!("../../deploy/clickhouse/0002_rollups.sql"),
    ),
    (
        3,
        "aliases_dimensions",
        include_str!("../../deploy/clickhouse/0003_aliases_dimensions.sql"),
    ),
    (
        4,
        "ledger",
        include_str!("../../deploy/clickhouse/0004_ledger.sql"),
    ),
    (
        5,
        "pricing",
        include_str!("../../deploy/clickhouse/0005_pricing.sql"),
    ),
    (
        6,
        "ledger_grants",
        include_str!("../../deploy/clickhouse/0006_ledger_grants.sql"),
    ),
    (
        7,
        "components_traces",
        include_str!("../../deploy/clickhouse/0007_components_traces.sql"),
    ),
];

/// True when re-running `stmt` failed only because an earlier, interrupted run of the same
/// migration already added the column (18.16 has no `ADD COLUMN IF NOT EXISTS`).
fn already_applied(stmt: &str, error: &str) -> bool {
    let s = stmt
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ");
    s.trim_start().starts_with("ALTER TABLE")
        && s.contains("ADD COLUMN")
        && error.contains("already exists")
}

/// Splits a migration file into statements: a statement ends at a line ending with `;`.
pub fn statements(sql: &str, db: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line.trim_end().ends_with(';') {
            let s = cur.trim().trim_end_matches(';').replace("{db}", db);
            let has_code = s
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"));
            if has_code {
                out.push(s);
            }
            cur.clear();
        }
    }
    out
}

/// Creates the database and applies missing migrations; returns the versions applied now.
pub async fn migrate(
    client: &clickhouse::Client,
    cfg: &ClickHouseConfig,
) -> anyhow::Result<Vec<u32>> {
    let db = &cfg.database;
    anyhow::ensure!(
        !db.is_empty() && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "clickhouse.database {db:?} must be letters, digits and underscores"
    );
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime) ENGINE = MergeTree() ORDER BY version"
        ))
        .execute()
        .await?;
    let applied: Vec<u32> = client
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all()
        .await?;
    let mut now = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for stmt in statements(sql, db) {
            match client.query(&stmt).execute().await {
                Ok(()) => {}
                Err(e) if already_applied(&stmt, &e.to_string()) => {
                    tracing::info!(version, "column already added by an interrupted run");
                }
                Err(e) => anyhow::bail!("migration {version} ({name}) failed: {e}"),
            }
        }
        client
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES (?, ?, now())"
            ))
            .bind(*version)
            .bind(*name)
            .execute()
            .await?;
        now.push(*version);
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_substitutes_the_database() {
        let s = statements(
            "-- c\nCREATE TABLE {db}.a (x UInt8)\nENGINE = Log;\n\nSELECT 1;\n-- end\n",
            "usage",
        );
        assert_eq!(
            s,
            [
                "-- c\nCREATE TABLE usage.a (x UInt8)\nENGINE = Log",
                "SELECT 1"
            ]
        );
        for (_, _, sql) in MIGRATIONS {
            assert!(!statements(sql, "usage").is_empty());
        }
    }

    #[test]
    fn only_a_repeated_add_column_counts_as_applied() {
        let add = "-- c\nALTER TABLE usage.t\n    ADD COLUMN x String";
        let dup = "Code: 44, e.displayText() = DB::Exception: Cannot add column x: column with this name already exists";
        assert!(already_applied(add, dup));
        assert!(!already_applied(
            add,
            "Code: 60. Table usage.t doesn't exist"
        ));
        assert!(!already_applied(
            "CREATE TABLE usage.t (x String) ENGINE = Log",
            dup
        ));
    }
}
