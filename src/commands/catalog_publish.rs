//! `catalog publish`: the versions of a catalog file the topic lacks in, judged as
//! `catalog check --against-topic` judges them (edits refused, retroactive versions only when
//! allowed, a correction replacing what it corrects), sent to the catalog topic out.

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use usage_aggregator::catalog::check::{self, Change};
use usage_aggregator::catalog::{Catalog, PriceVersion, VersionCorrection};
use usage_aggregator::catalog_feed;
use usage_aggregator::config::Config;
use usage_aggregator::preflight::Kafka;

use super::{published_catalog, read_catalog, stdout};

/// Refuses edits (unless the versions are a correction: it replaces the version at its
/// instant) and retroactive versions unless allowed (a correction is); returns the
/// retroactive ones accepted.
pub(super) fn verdict(
    changes: &[Change],
    allow_retroactive: bool,
    correction: bool,
) -> anyhow::Result<Vec<String>> {
    let edits: Vec<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Edit { key, what } => Some(format!("{key}: {what}")),
            _ => None,
        })
        .collect();
    if !edits.is_empty() && !correction {
        anyhow::bail!(
            "{} version(s) differ from the published version at the same instant:\n  {}\na published version is never edited, it may only gain aliases or alias_patterns: add a new version with a later effective_from (see docs/price-catalog.md#aliases)",
            edits.len(),
            edits.join("\n  ")
        );
    }
    let retro: Vec<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Retroactive { key, what } => Some(format!("{key}: {what}")),
            _ => None,
        })
        .collect();
    if !retro.is_empty() && !allow_retroactive && !correction {
        anyhow::bail!(
            "{} version(s) take effect in the past and would reprice past events:\n  {}\ngive them a future effective_from, or pass --allow-retroactive (see docs/price-catalog.md)",
            retro.len(),
            retro.join("\n  ")
        );
    }
    Ok(retro)
}

/// `catalog publish FILE [--allow-retroactive] [--correction ID --reason TEXT]`. With a
/// correction, every version of the file is published as a version of correction `ID`
/// (docs/price-catalog.md#corrections): it replaces the published version at its instant,
/// or adds one in the past.
pub async fn publish(
    cfg: &Config,
    file: &Path,
    allow_retroactive: bool,
    correction: Option<VersionCorrection>,
) -> anyhow::Result<()> {
    let mut c = read_catalog(file, "FILE")?;
    if let Some(fix) = &correction {
        let mut marked = Catalog::default();
        for v in c.versions() {
            let v = PriceVersion {
                correction: Some(fix.clone()),
                ..v.clone()
            };
            v.validate()
                .map_err(|e| anyhow!("--correction {}: {e}", fix.id))?;
            marked.insert(v)?;
        }
        c = marked;
    }
    let k = Kafka::connect(cfg).await?;
    k.require_topic("topics.price_catalog", &cfg.topics.price_catalog, true)
        .await?;
    let published = published_catalog(cfg).await?;
    let changes = check::changes(&c, &published, chrono::Utc::now());
    let retro = verdict(&changes, allow_retroactive, correction.is_some())?;
    for c in changes.iter().filter(|_| correction.is_some()) {
        if let Change::Edit { key, what } = c {
            usage_aggregator::logging::stderr_line(&format!("correction: {key}: {what}"));
        }
    }
    for r in &retro {
        tracing::warn!("publishing a retroactive version (--allow-retroactive): {r}");
    }
    let mut gained = 0;
    for c in &changes {
        match c {
            Change::Backfill { key, what } => {
                usage_aggregator::logging::stderr_line(&format!("note: {key}: {what}"))
            }
            Change::AliasesAdded { key, added } => {
                gained += 1;
                usage_aggregator::logging::stderr_line(&format!(
                    "note: {key}: republished with aliases added: {}",
                    added.join(" ")
                ))
            }
            _ => {}
        }
    }
    let unchanged: std::collections::HashSet<&str> = changes
        .iter()
        .filter_map(|ch| match ch {
            Change::Unchanged { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let versions: Vec<_> = c
        .versions()
        .filter(|v| !unchanged.contains(v.topic_key().as_str()))
        .cloned()
        .collect();
    let n = catalog_feed::publish(cfg, &versions).await?;
    let mut out = stdout();
    writeln!(
        out,
        "published {n} new price versions to {} ({} already there{})",
        cfg.topics.price_catalog,
        unchanged.len(),
        if gained > 0 {
            format!(", {gained} of the new ones republished with aliases added")
        } else {
            String::new()
        }
    )?;
    out.flush()?;
    Ok(())
}
