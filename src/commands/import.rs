//! `catalog import`: a price list in another tool's format in, price versions out (file or
//! stdout), every skipped model reported; `--publish` checks Kafka and the topic first.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use usage_aggregator::catalog::Catalog;
use usage_aggregator::catalog_feed;
use usage_aggregator::config::Config;
use usage_aggregator::preflight::Kafka;

use super::{read_catalog, stdout};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Format of FILE: `litellm` (model_prices_and_context_window.json).
    #[arg(long, value_parser = ["litellm"])]
    format: String,
    /// The price list to convert.
    file: PathBuf,
    /// When the imported versions take effect (RFC 3339, e.g. 2026-07-01T00:00:00Z).
    #[arg(long, value_parser = usage_aggregator::config::values::parse_instant)]
    effective_from: chrono::DateTime<chrono::Utc>,
    /// Write the catalog (JSON array of price versions) here; stdout when absent.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Only models of this litellm_provider (repeatable).
    #[arg(long = "provider")]
    providers: Vec<String>,
    /// Check the import together with this catalog (e.g. the one already published):
    /// versions it would refuse (alias ambiguity, conflicting version) are reported and left out.
    #[arg(long)]
    with_catalog: Option<PathBuf>,
    /// Also publish the imported versions to the catalog topic.
    #[arg(long)]
    publish: bool,
}

/// `catalog import`: converts, reports every skipped model on stderr, writes, publishes.
pub async fn import_catalog(cfg: &Config, a: ImportArgs) -> anyhow::Result<()> {
    use usage_aggregator::catalog::litellm;
    let effective_from = a.effective_from;
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let opts = litellm::ImportOptions {
        effective_from,
        providers: a.providers.iter().cloned().collect(),
    };
    let (mut versions, mut report) =
        litellm::import(&bytes, &opts).with_context(|| format!("{}", a.file.display()))?;
    if let Some(path) = &a.with_catalog {
        let mut base = read_catalog(path, "--with-catalog")?;
        versions.retain(|v| match base.insert(v.clone()) {
            Ok(_) => true,
            Err(e) => {
                report.imported.retain(|_, asset| *asset != v.asset_id);
                report.skipped.insert(
                    v.asset_id.clone(),
                    format!("refused next to {}: {e}", path.display()),
                );
                false
            }
        });
    }
    for (key, why) in &report.skipped {
        usage_aggregator::logging::stderr_line(&format!("skipped {key}: {why}"));
    }
    for (key, n) in &report.not_imported_rates {
        usage_aggregator::logging::stderr_line(&format!(
            "not imported: {key} on {n} models (the standard rate is imported)"
        ));
    }
    for (dated, canonical) in &report.dated.folded {
        usage_aggregator::logging::stderr_line(&format!(
            "{dated} is an alias of {canonical} (same prices)"
        ));
    }
    for (dated, canonical) in &report.dated.apart {
        usage_aggregator::logging::stderr_line(&format!(
            "{dated} stays an asset of its own: its prices differ from {canonical}'s"
        ));
    }
    if !report.zero_priced.is_empty() {
        usage_aggregator::logging::stderr_line(&format!(
            "priced 0 as written in the file: {}",
            report.zero_priced.join(", ")
        ));
    }
    usage_aggregator::logging::stderr_line(&format!(
        "imported {} models as {} price versions effective from {}; skipped {}",
        report.imported.len(),
        versions.len(),
        effective_from.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        report.skipped.len()
    ));
    let json = serde_json::to_string_pretty(&versions)? + "\n";
    // The written file must load as a catalog on its own.
    Catalog::from_json(json.as_bytes()).context("imported catalog does not load")?;
    match &a.output {
        Some(path) => std::fs::write(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut out = stdout();
            out.write_all(json.as_bytes())?;
            out.flush()?;
        }
    }
    if a.publish {
        let k = Kafka::connect(cfg).await?;
        k.require_topic("topics.price_catalog", &cfg.topics.price_catalog, true)
            .await?;
        let n = catalog_feed::publish(cfg, &versions).await?;
        usage_aggregator::logging::stderr_line(&format!(
            "published {n} price versions to {}",
            cfg.topics.price_catalog
        ));
    }
    Ok(())
}
