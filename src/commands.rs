//! The one-shot commands of the binary (not part of the library): arguments and [`Config`] in,
//! output on stdout and `Err` with one line naming the key and value out. Each checks what
//! it needs (Kafka, topics, ClickHouse, files) before it changes anything.

use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use usage_aggregator::catalog::Catalog;
use usage_aggregator::catalog::check::{self, Change};
use usage_aggregator::catalog_feed::CatalogFeed;
use usage_aggregator::config::Config;
use usage_aggregator::loadgen::{Workload, WorkloadSpec};
use usage_aggregator::offline::{self, Rejects};
use usage_aggregator::preflight::{self, Kafka};
use usage_aggregator::report::{self, ReportError, ReportFilter};
use usage_aggregator::{bench, kafka, sink};

use crate::Exit;

mod catalog_publish;
mod catalog_view;
mod dead_letters;
mod import;
mod plans;
mod rerate;
mod teardown;

pub use catalog_publish::publish;
use catalog_publish::verdict;
pub use catalog_view::{
    ExportArgs, diff as catalog_diff, export as catalog_export, list as catalog_list,
};

pub use dead_letters::{ReplayArgs, replay_dead_letters};
pub use import::{ImportArgs, import_catalog};
pub use plans::{AccountsCommand, PlansCommand, accounts, plans};
pub use rerate::{RerateArgs, rerate};
pub use teardown::teardown;

pub(crate) fn stdout() -> BufWriter<std::io::StdoutLock<'static>> {
    BufWriter::new(std::io::stdout().lock())
}

/// Reads and checks a catalog file; `named` says which argument or key gave the path.
/// A relative path is read from the current directory: the message says which one.
pub(crate) fn read_catalog(path: &Path, named: &str) -> anyhow::Result<Catalog> {
    let bytes = std::fs::read(path).map_err(|e| {
        let cwd = match std::env::current_dir() {
            Ok(d) if path.is_relative() => format!(" (in {})", d.display()),
            _ => String::new(),
        };
        anyhow!("{named} = \"{}\"{cwd}: cannot read: {e}", path.display())
    })?;
    check::check_file(&bytes).map_err(|p| anyhow!("catalog file {}: {p}", path.display()))
}

pub async fn setup(cfg: &Config, kafka_part: bool, clickhouse_part: bool) -> anyhow::Result<()> {
    // Both reachable first: a half-done setup is worse than none.
    if kafka_part {
        Kafka::connect(cfg).await?;
    }
    if clickhouse_part {
        preflight::clickhouse(cfg).await?;
    }
    let mut out = stdout();
    if kafka_part {
        let created = kafka::create_topics(cfg)
            .await
            .with_context(|| format!("kafka.brokers = \"{}\"", cfg.kafka.brokers))?;
        writeln!(
            out,
            "kafka topics created: {}",
            if created.is_empty() {
                "none (all exist)".into()
            } else {
                created.join(", ")
            }
        )?;
    }
    if clickhouse_part {
        let ch = sink::client(&cfg.clickhouse)?;
        let applied = sink::migrate::migrate(&ch, &cfg.clickhouse).await?;
        writeln!(
            out,
            "clickhouse migrations applied: {applied:?} (database {})",
            cfg.clickhouse.database
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The catalog as published on the topic.
pub(crate) async fn published_catalog(cfg: &Config) -> anyhow::Result<Catalog> {
    plans::published(
        cfg,
        CatalogFeed::new,
        "topics.price_catalog",
        &cfg.topics.price_catalog,
    )
    .await
}

/// Output of `catalog check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

pub async fn check(
    cfg: &Config,
    file: &Path,
    format: CheckFormat,
    against_topic: bool,
    allow_retroactive: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file)
        .map_err(|e| anyhow!("FILE = \"{}\": cannot read: {e}", file.display()))?;
    let parsed = check::check_file(&bytes);
    let mut out = stdout();
    let c = match parsed {
        Ok(c) => c,
        Err(p) => {
            if format == CheckFormat::Json {
                let v = serde_json::json!({"file": file, "ok": false, "problems": p.0});
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                out.flush()?;
            }
            return Err(anyhow!("catalog file {}: {p}", file.display()));
        }
    };
    let now = chrono::Utc::now();
    let changes = if against_topic {
        let k = Kafka::connect(cfg).await?;
        k.require_topic("topics.price_catalog", &cfg.topics.price_catalog, true)
            .await?;
        Some(check::changes(&c, &published_catalog(cfg).await?, now))
    } else {
        None
    };
    let verdict = changes
        .as_deref()
        .map(|ch| verdict(ch, allow_retroactive, false))
        .transpose();
    let versions: Vec<_> = c.versions().collect();
    let past = versions.iter().filter(|v| v.effective_from < now).count();
    if format == CheckFormat::Json {
        let v = serde_json::json!({
            "file": file,
            "ok": verdict.is_ok(),
            "versions": versions,
            "problems": [],
            "changes": changes,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        for v in &versions {
            writeln!(out, "{}", catalog_view::version_line(v))?;
        }
        let assets: std::collections::BTreeSet<&str> =
            versions.iter().map(|v| v.asset_id.as_str()).collect();
        writeln!(
            out,
            "{} versions of {} assets {}",
            versions.len(),
            assets.len(),
            // Not "ok" when the comparison with the topic refuses them (the error follows).
            if verdict.is_ok() {
                "ok"
            } else {
                "well-formed, but refused against the topic"
            }
        )?;
        if !against_topic && past > 0 {
            writeln!(
                out,
                "note: {past} versions take effect in the past: fine to seed an empty catalog topic, but `catalog publish` refuses those a populated topic does not have unless --allow-retroactive (compare with --against-topic)"
            )?;
        }
        if let Some(ch) = &changes {
            let new = ch
                .iter()
                .filter(|c| !matches!(c, Change::Unchanged { .. }))
                .count();
            writeln!(
                out,
                "against {}: {new} versions to publish",
                cfg.topics.price_catalog
            )?;
        }
    }
    out.flush()?;
    verdict.map(|_| ())
}

pub fn rate(
    mut cfg: Config,
    catalog: &Path,
    plans_file: Option<&Path>,
    markup_rate: Option<Decimal>,
    lines: bool,
    strict: bool,
    rejects: Option<&Path>,
) -> anyhow::Result<()> {
    let c = read_catalog(catalog, "--catalog")?;
    let book = match plans_file {
        Some(p) => plans::read_plans(p, "--plans", None)?,
        None => usage_aggregator::plans::PlanBook::default(),
    };
    if let Some(r) = markup_rate {
        cfg.rollup.markup_rate = r;
        cfg.validate()
            .map_err(|e| anyhow!("--markup-rate {r}: {e}"))?;
    }
    let mut rejects_file = match rejects {
        Some(p) => Some(BufWriter::new(std::fs::File::create(p).map_err(|e| {
            anyhow!("--rejects \"{}\": cannot create: {e}", p.display())
        })?)),
        None => None,
    };
    let sink = match rejects_file.as_mut() {
        Some(f) => Rejects::To(f),
        None => Rejects::Inline,
    };
    let summary = offline::rate(
        cfg.rollup_config(),
        usage_aggregator::rating::Pricing {
            catalog: &c,
            plans: &book,
        },
        BufReader::new(std::io::stdin().lock()),
        stdout(),
        lines,
        sink,
    )?;
    usage_aggregator::logging::stderr_line(&summary.to_string());
    if strict && summary.rejected > 0 {
        return Err(Exit {
            code: 3,
            message: format!(
                "{} of {} events rejected (--strict)",
                summary.rejected, summary.events
            ),
        }
        .into());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct LoadgenArgs {
    /// Agent executions to generate (~26 events each).
    #[arg(long, default_value_t = 1000)]
    executions: u64,
    /// Direct model and tool calls (outside executions) to generate.
    #[arg(long, default_value_t = 1000)]
    direct_calls: u64,
    /// Fraction of events repeated (producer retries).
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    /// Fraction of malformed or unpriceable events.
    #[arg(long, default_value_t = 0.005)]
    bad: f64,
    /// Fraction of calls arriving after their execution finished.
    #[arg(long, default_value_t = 0.002)]
    late: f64,
    /// Number of distinct accounts.
    #[arg(long, default_value_t = 50)]
    accounts: u32,
    /// Random seed: the same seed gives the same events.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Events per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Prefix of ids (keeps runs apart).
    #[arg(long, default_value = "demo")]
    run_id: String,
    /// Catalog whose assets the events use (default: pricing.catalog_file).
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// Write JSON lines to FILE instead of producing to Kafka.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub async fn loadgen(cfg: &Config, a: LoadgenArgs) -> anyhow::Result<()> {
    let catalog = match &a.catalog {
        Some(p) => read_catalog(p, "--catalog")?,
        None => read_catalog(&cfg.pricing.catalog_file, "pricing.catalog_file").map_err(|e| {
            anyhow!("{e}; give --catalog FILE, or set pricing.catalog_file (in a config file, relative to its directory)")
        })?,
    };
    let producer = match &a.output {
        Some(_) => None,
        None => {
            let k = Kafka::connect(cfg).await?;
            k.require_topic("topics.usage_events", &cfg.topics.usage_events, false)
                .await?;
            Some(bench::Loader::new(cfg)?)
        }
    };
    let spec = WorkloadSpec {
        executions: a.executions,
        direct_calls: a.direct_calls,
        duplicates: a.duplicates,
        bad: a.bad,
        late: a.late,
        accounts: a.accounts,
        seed: a.seed,
        run_id: a.run_id,
        ..Default::default()
    };
    let interrupted = CancellationToken::new();
    {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.cancel();
            }
        });
    }
    let estimate = a.executions * 26 + a.direct_calls;
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(estimate);
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/~{len} events  {per_sec}  eta {eta}",
            )
            .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let mut last_note = Instant::now();
    let mut n = 0u64;
    let mut file = match &a.output {
        Some(p) => Some(BufWriter::new(std::fs::File::create(p).map_err(|e| {
            anyhow!("--output \"{}\": cannot create: {e}", p.display())
        })?)),
        None => None,
    };
    for g in Workload::new(spec, &catalog) {
        if interrupted.is_cancelled() {
            break;
        }
        match (&mut file, &producer) {
            (Some(w), _) => {
                w.write_all(&g.payload)?;
                w.write_all(b"\n")?;
            }
            (None, Some(p)) => p.send(&cfg.topics.usage_events, &g.key, &g.payload)?,
            (None, None) => unreachable!("a file or a producer"),
        }
        n += 1;
        bar.inc(1);
        if !terminal && last_note.elapsed() >= Duration::from_secs(10) {
            tracing::info!(events = n, "loadgen progress");
            last_note = Instant::now();
        }
        if a.rate > 0 {
            let due = Duration::from_secs_f64(n as f64 / a.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    if let Some(mut w) = file {
        w.flush()?;
    }
    if let Some(p) = &producer {
        p.flush()?;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let target = match &a.output {
        Some(p) => p.display().to_string(),
        None => cfg.topics.usage_events.clone(),
    };
    let mut out = stdout();
    writeln!(
        out,
        "generated {n} events into {target} in {secs:.1} s ({:.0} events/s)",
        n as f64 / secs.max(1e-9)
    )?;
    out.flush()?;
    if interrupted.is_cancelled() {
        return Err(Exit {
            code: 130,
            message: format!("interrupted after {n} events"),
        }
        .into());
    }
    Ok(())
}

/// Output of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned tables, amounts rounded for display.
    Table,
    /// The whole report, amounts exact.
    Json,
    /// Spend per account, amounts exact.
    Csv,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Events from this time on (event time): a UTC date (2026-10-01) or RFC 3339.
    #[arg(long, value_name = "TIME", value_parser = parse_from)]
    from: Option<Bound>,
    /// Events before this time (event time); a date includes that whole day, so
    /// --from 2026-10-01 --to 2026-10-31 is October.
    #[arg(long, value_name = "TIME", value_parser = parse_to)]
    to: Option<Bound>,
    /// Only what was ingested in this recent period (ingestion time), e.g. 1h, 2d.
    #[arg(long, value_parser = usage_aggregator::config::values::parse_duration, value_name = "DURATION")]
    since: Option<Duration>,
    /// Only this account (an unknown account is an error).
    #[arg(long)]
    account: Option<String>,
    /// Rows in the top lists; 0 = all.
    #[arg(long, default_value_t = 10)]
    top: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    /// Also spend per value of a dimension: dimension:KEY (repeatable).
    #[arg(long = "group-by", value_parser = report::dimension::parse_group_by)]
    group_by: Vec<String>,
}

/// A `--from`/`--to` argument: the time it selects and the text as written (for messages).
#[derive(Clone, Debug)]
pub struct Bound {
    at: chrono::DateTime<chrono::Utc>,
    written: String,
}

fn parse_from(s: &str) -> Result<Bound, String> {
    report::parse_instant(s, false).map(|at| Bound {
        at,
        written: s.to_string(),
    })
}

fn parse_to(s: &str) -> Result<Bound, String> {
    report::parse_instant(s, true).map(|at| Bound {
        at,
        written: s.to_string(),
    })
}

pub async fn report(cfg: &Config, a: ReportArgs) -> anyhow::Result<()> {
    if let (Some(f), Some(t)) = (&a.from, &a.to)
        && f.at >= t.at
    {
        // A usage error, like a malformed time: exit 2.
        return Err(Exit {
            code: 2,
            message: format!(
                "--from {} is not before --to {} (the window is {} .. {})",
                f.written,
                t.written,
                f.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                t.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
        }
        .into());
    }
    let (from, to) = (a.from.map(|b| b.at), a.to.map(|b| b.at));
    preflight::clickhouse(cfg).await?;
    let ch = sink::client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database);
    let f = ReportFilter {
        from,
        to,
        ingested_since: a.since.map(|d| {
            chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
        }),
        account: a.account,
        top: a.top,
    };
    let mut r = report::build(&ch, &f).await.map_err(|e| match e {
        ReportError::ClickHouse(e) => anyhow!(preflight::clickhouse_error(cfg, &e)),
        other => anyhow!(other),
    })?;
    for key in &a.group_by {
        r.groups.push(report::dimension::build(&ch, &f, key).await?);
    }
    let mut out = stdout();
    match a.format {
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &r)?;
            writeln!(out)?;
        }
        ReportFormat::Csv => report::write_csv(&r, &mut out)?,
        ReportFormat::Table => out.write_all(report::render_text(&r).as_bytes())?,
    }
    out.flush()?;
    Ok(())
}
