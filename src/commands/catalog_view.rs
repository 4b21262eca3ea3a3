//! What is published: the catalog topic in; `catalog list` (text or JSON), `catalog export`
//! (a catalog file `check` and `publish` accept) and `catalog diff FILE` (the file against
//! the topic, version by version, as `publish` would judge it) out.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use usage_aggregator::catalog::check::{self, Change};
use usage_aggregator::catalog::{Catalog, PriceVersion};
use usage_aggregator::config::Config;
use usage_aggregator::preflight::Kafka;

use super::{CheckFormat, published_catalog, read_catalog, stdout};
use crate::Exit;

/// One version as `catalog check` and `catalog list` print it.
pub(crate) fn version_line(v: &PriceVersion) -> String {
    let mut aliases = v.aliases.clone();
    aliases.extend(v.alias_patterns.iter().map(|p| format!("/{p}/")));
    let aliases = if aliases.is_empty() {
        String::new()
    } else {
        format!("  aliases: {}", aliases.join(" "))
    };
    format!(
        "{:<32} {:<12} {:<22} {}{aliases}",
        v.asset_id,
        v.asset_type.as_str(),
        v.version_label(),
        check::prices_text(v)
    )
}

/// The catalog on the topic (which must exist).
async fn topic_catalog(cfg: &Config) -> anyhow::Result<Catalog> {
    let k = Kafka::connect(cfg).await?;
    k.require_topic("topics.price_catalog", &cfg.topics.price_catalog, false)
        .await?;
    published_catalog(cfg).await
}

/// `catalog list`: every version on the topic, the newest message of each key.
pub async fn list(cfg: &Config, format: CheckFormat) -> anyhow::Result<()> {
    let c = topic_catalog(cfg).await?;
    let versions: Vec<&PriceVersion> = c.versions().collect();
    let mut out = stdout();
    if format == CheckFormat::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&versions)?)?;
    } else {
        for v in &versions {
            writeln!(out, "{}", version_line(v))?;
        }
        let assets: std::collections::BTreeSet<&str> =
            versions.iter().map(|v| v.asset_id.as_str()).collect();
        writeln!(
            out,
            "{} versions of {} assets on {}",
            versions.len(),
            assets.len(),
            cfg.topics.price_catalog
        )?;
    }
    out.flush()?;
    Ok(())
}

/// `catalog export [-o FILE]`: the topic's catalog as a catalog file (a JSON array of price
/// versions, asset by asset, oldest first): edit it and publish it back.
pub async fn export(cfg: &Config, output: Option<&Path>) -> anyhow::Result<()> {
    let c = topic_catalog(cfg).await?;
    let versions: Vec<&PriceVersion> = c.versions().collect();
    let text = format!("{}\n", serde_json::to_string_pretty(&versions)?);
    match output {
        Some(p) => {
            std::fs::write(p, text)
                .map_err(|e| anyhow!("--output \"{}\": cannot write: {e}", p.display()))?;
            usage_aggregator::logging::stderr_line(&format!(
                "exported {} versions from {} to {}",
                versions.len(),
                cfg.topics.price_catalog,
                p.display()
            ));
        }
        None => {
            let mut out = stdout();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `catalog diff FILE`: each version of the file against the topic (`=` on the topic as is,
/// `+` new, `+aliases` republished with aliases added, `!` refused by `publish`: an edit,
/// or retroactive without --allow-retroactive), then `-` the topic's versions the file does
/// not have (publishing never removes them). Exit 0 when the file adds nothing and lacks
/// nothing, 1 when they differ (as diff(1)); errors exit 1 too, on stderr.
pub async fn diff(cfg: &Config, file: &Path, format: CheckFormat) -> anyhow::Result<()> {
    let c = read_catalog(file, "FILE")?;
    let published = topic_catalog(cfg).await?;
    let changes = check::changes(&c, &published, chrono::Utc::now());
    let in_file: std::collections::HashSet<String> =
        c.versions().map(PriceVersion::topic_key).collect();
    let only_on_topic: Vec<&PriceVersion> = published
        .versions()
        .filter(|v| !in_file.contains(&v.topic_key()))
        .collect();
    let same = changes
        .iter()
        .all(|ch| matches!(ch, Change::Unchanged { .. }))
        && only_on_topic.is_empty();
    let mut out = stdout();
    if format == CheckFormat::Json {
        let v = serde_json::json!({
            "file": file,
            "topic": cfg.topics.price_catalog,
            "same": same,
            "changes": changes,
            "only_on_topic": only_on_topic.iter().map(|v| v.topic_key()).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let (mut new, mut refused) = (0, 0);
        for ch in &changes {
            let line = match ch {
                Change::Unchanged { key } => format!("=  {key}"),
                Change::Future { key } => {
                    new += 1;
                    format!("+  {key}")
                }
                Change::Backfill { key, what } => {
                    new += 1;
                    format!("+  {key}: {what}")
                }
                Change::AliasesAdded { key, added } => {
                    new += 1;
                    format!("+aliases  {key}: {}", added.join(" "))
                }
                Change::Retroactive { key, what } => {
                    refused += 1;
                    format!("!  {key}: retroactive (publish needs --allow-retroactive): {what}")
                }
                Change::Edit { key, what } => {
                    refused += 1;
                    format!("!  {key}: edits the published version: {what}")
                }
            };
            writeln!(out, "{line}")?;
        }
        for v in &only_on_topic {
            writeln!(out, "-  {}  (only on the topic)", v.topic_key())?;
        }
        writeln!(
            out,
            "{}: {} versions; {} new to publish, {} publish would refuse, {} only on {}",
            file.display(),
            changes.len(),
            new,
            refused,
            only_on_topic.len(),
            cfg.topics.price_catalog
        )?;
    }
    out.flush()?;
    if same {
        Ok(())
    } else {
        Err(Exit {
            code: 1,
            message: format!("{} and {} differ", file.display(), cfg.topics.price_catalog),
        }
        .into())
    }
}

/// Arguments of `catalog export`.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Write the catalog file here instead of to stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}
