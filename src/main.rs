//! The `usage-aggregator` command line: run the service, set up topics and schema, publish a
//! catalog, rate a file offline, replay dead letters, generate load, print a spend report,
//! benchmark.

use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use usage_aggregator::app::{self, Role};
use usage_aggregator::catalog::Catalog;
use usage_aggregator::config::Config;
use usage_aggregator::loadgen::{Workload, WorkloadSpec};
use usage_aggregator::rejection::RejectReason;
use usage_aggregator::{bench, catalog_feed, kafka, offline, replay, report, sink};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "usage-aggregator",
    version,
    about = "Prices AI-agent usage events from Kafka, rolls them up per execution (+markup), emits debits and writes analytics to ClickHouse."
)]
struct Cli {
    /// Configuration file (TOML). Environment USAGE_AGG__SECTION__KEY overrides it.
    #[arg(long, global = true, env = "USAGE_AGG_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: rating pipeline, ClickHouse sink, spend alerts, HTTP endpoints.
    Run {
        /// Which stages to run in this process.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Create the Kafka topics and apply ClickHouse migrations (idempotent).
    Setup {
        /// Only Kafka topics.
        #[arg(long)]
        kafka_only: bool,
        /// Only ClickHouse migrations.
        #[arg(long)]
        clickhouse_only: bool,
    },
    /// Price catalog operations.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Rate a JSON-lines file of events offline with the same core (stdin -> stdout).
    Rate {
        /// Catalog file (JSON array of price versions).
        #[arg(long)]
        catalog: PathBuf,
        /// Markup rate for agent executions (decimal string).
        #[arg(long)]
        markup_rate: Option<String>,
        /// Also write every priced usage line.
        #[arg(long)]
        lines: bool,
    },
    /// Dead-letter operations.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Generate a realistic workload into the usage topic (or a file).
    Loadgen(LoadgenArgs),
    /// Print a spend summary from ClickHouse.
    Report {
        /// Only what was ingested in this recent period (e.g. 1h, 2d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// Rows in the top lists.
        #[arg(long, default_value_t = 10)]
        top: u32,
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
        /// Also spend per value of a dimension: dimension:KEY (repeatable).
        #[arg(long = "group-by", value_parser = report::dimension::parse_group_by)]
        group_by: Vec<String>,
    },
    /// End-to-end benchmark against the running services; prints figures and writes JSON.
    Bench(bench::BenchArgs),
    /// Credits ledger: top-ups, adjustments, redemptions, balances, history.
    Credits {
        #[command(subcommand)]
        command: usage_aggregator::ledger::cli::CreditsCommand,
    },
    /// Vouchers: create and list.
    Vouchers {
        #[command(subcommand)]
        command: usage_aggregator::ledger::cli::VouchersCommand,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Publish every price version of a catalog file to the catalog topic.
    Publish { file: PathBuf },
    /// Validate a catalog file and list its versions.
    Check { file: PathBuf },
    /// Convert a price list kept in another tool's format into price versions.
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ImportArgs {
    /// Format of FILE: `litellm` (model_prices_and_context_window.json).
    #[arg(long, value_parser = ["litellm"])]
    format: String,
    /// The price list to convert.
    file: PathBuf,
    /// When the imported versions take effect (RFC 3339, e.g. 2026-07-01T00:00:00Z).
    #[arg(long)]
    effective_from: String,
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

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// Re-publish rejected events' original payloads to the usage topic (e.g. after adding
    /// a missing price). Safe to repeat: what was billed once is a duplicate.
    Replay(ReplayArgs),
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Only this reason (repeatable). Default: unknown_asset, no_price_at_time, unknown_unit.
    #[arg(long = "reason", value_parser = replay::parse_reason)]
    reasons: Vec<RejectReason>,
    /// Only dead letters written at or after this time (RFC 3339, or an age such as 2h).
    #[arg(long, value_parser = replay::parse_time)]
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Only dead letters written before this time (RFC 3339, or an age such as 30m).
    #[arg(long, value_parser = replay::parse_time)]
    to: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events of this account_id.
    #[arg(long)]
    account: Option<String>,
    /// Print what would be re-sent (one JSON line each) and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Longest wait to read the dead-letter topic to its end.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    timeout: Duration,
}

#[derive(clap::Args)]
struct LoadgenArgs {
    #[arg(long, default_value_t = 1000)]
    executions: u64,
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
    #[arg(long, default_value_t = 50)]
    accounts: u32,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Events per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Prefix of ids (keeps runs apart).
    #[arg(long, default_value = "demo")]
    run_id: String,
    /// Write JSON lines here instead of producing to Kafka.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn init_logging(cfg: &Config, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json || cfg.log.format == "json" {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    init_logging(&cfg, cli.log_json);
    match cli.command {
        Command::Run { role } => app::run(cfg, role).await,
        Command::Setup {
            kafka_only,
            clickhouse_only,
        } => {
            if !clickhouse_only {
                let created = kafka::create_topics(&cfg).await?;
                println!(
                    "kafka topics created: {}",
                    if created.is_empty() {
                        "none (all exist)".into()
                    } else {
                        created.join(", ")
                    }
                );
            }
            if !kafka_only {
                let ch = sink::client(&cfg.clickhouse)?;
                let applied = sink::migrate::migrate(&ch, &cfg.clickhouse).await?;
                println!(
                    "clickhouse migrations applied: {applied:?} (database {})",
                    cfg.clickhouse.database
                );
            }
            Ok(())
        }
        Command::Catalog {
            command: CatalogCommand::Publish { file },
        } => {
            let c = read_catalog(&file)?;
            let versions: Vec<_> = c.versions().cloned().collect();
            let now = chrono::Utc::now();
            for v in versions.iter().filter(|v| v.effective_from < now) {
                tracing::debug!(asset = %v.asset_id, "version takes effect in the past: replays of older events may price differently");
            }
            let n = catalog_feed::publish(&cfg, &versions).await?;
            println!(
                "published {n} price versions to {}",
                cfg.topics.price_catalog
            );
            Ok(())
        }
        Command::Catalog {
            command: CatalogCommand::Import(a),
        } => import_catalog(&cfg, a).await,
        Command::Catalog {
            command: CatalogCommand::Check { file },
        } => {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("cannot read catalog file {}", file.display()))?;
            let (c, errors) = Catalog::from_json_all_errors(&bytes)
                .with_context(|| format!("catalog file {}", file.display()))?;
            for v in c.versions() {
                let mut aliases = v.aliases.clone();
                aliases.extend(v.alias_patterns.iter().map(|p| format!("/{p}/")));
                println!(
                    "{:<32} {:<12} {}  {}{}",
                    v.asset_id,
                    v.asset_type.as_str(),
                    v.version_label(),
                    v.prices.keys().cloned().collect::<Vec<_>>().join(","),
                    if aliases.is_empty() {
                        String::new()
                    } else {
                        format!("  aliases: {}", aliases.join(" "))
                    }
                );
            }
            for e in &errors {
                eprintln!("refused: {e}");
            }
            anyhow::ensure!(
                errors.is_empty(),
                "{} of the versions in {} are refused (listed above)",
                errors.len(),
                file.display()
            );
            println!("{} versions ok", c.version_count());
            Ok(())
        }
        Command::Rate {
            catalog,
            markup_rate,
            lines,
        } => {
            let c = read_catalog(&catalog)?;
            let mut cfg = cfg;
            if let Some(r) = markup_rate {
                cfg.rollup.markup_rate = r;
                cfg.validate()?;
            }
            let summary = offline::rate(
                cfg.rollup_config(),
                &c,
                BufReader::new(std::io::stdin().lock()),
                BufWriter::new(std::io::stdout().lock()),
                lines,
            )?;
            eprintln!(
                "rated {} events: {} debits, {} rejected",
                summary.events, summary.debits, summary.rejected
            );
            Ok(())
        }
        Command::DeadLetters {
            command: DeadLettersCommand::Replay(a),
        } => replay_dead_letters(&cfg, a),
        Command::Loadgen(a) => loadgen(&cfg, a).await,
        Command::Report {
            since,
            account,
            top,
            format,
            group_by,
        } => {
            let ch = sink::client(&cfg.clickhouse)?.with_database(&cfg.clickhouse.database);
            let f = report::ReportFilter {
                since: since.map(|d| chrono::Utc::now().timestamp() - d.as_secs() as i64),
                account,
                top,
            };
            let mut r = report::build(&ch, &f).await?;
            for key in &group_by {
                r.groups.push(report::dimension::build(&ch, &f, key).await?);
            }
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", report::render_text(&r));
            }
            Ok(())
        }
        Command::Bench(a) => bench::run(&cfg, a).await,
        Command::Credits { command } => usage_aggregator::ledger::cli::credits(&cfg, command).await,
        Command::Vouchers { command } => {
            usage_aggregator::ledger::cli::vouchers(&cfg, command).await
        }
    }
}

fn replay_dead_letters(cfg: &Config, a: ReplayArgs) -> anyhow::Result<()> {
    let filter = replay::ReplayFilter {
        reasons: a.reasons,
        from: a.from,
        to: a.to,
        account: a.account,
    };
    let letters = tokio::task::block_in_place(|| replay::read_dead_letters(cfg, a.timeout))?;
    let chosen = replay::select(&letters, &filter, &cfg.topics.usage_events)?;
    if a.dry_run {
        for r in &chosen {
            let mut v = serde_json::to_value(r)?;
            v["payload"] = String::from_utf8_lossy(&r.payload).into_owned().into();
            println!("{v}");
        }
        eprintln!(
            "dry run: would re-send {} of {} dead letters to {}",
            chosen.len(),
            letters.len(),
            cfg.topics.usage_events
        );
        return Ok(());
    }
    let n = tokio::task::block_in_place(|| replay::publish(cfg, &chosen))?;
    println!(
        "re-sent {n} of {} dead letters to {}",
        letters.len(),
        cfg.topics.usage_events
    );
    Ok(())
}

/// `catalog import`: converts, reports every skipped model on stderr, writes, publishes.
async fn import_catalog(cfg: &Config, a: ImportArgs) -> anyhow::Result<()> {
    use usage_aggregator::catalog::litellm;
    let effective_from = chrono::DateTime::parse_from_rfc3339(&a.effective_from)
        .with_context(|| format!("--effective-from {} is not RFC 3339", a.effective_from))?
        .with_timezone(&chrono::Utc);
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let opts = litellm::ImportOptions {
        effective_from,
        providers: a.providers.iter().cloned().collect(),
    };
    let (mut versions, mut report) =
        litellm::import(&bytes, &opts).with_context(|| format!("{}", a.file.display()))?;
    if let Some(path) = &a.with_catalog {
        let mut base = read_catalog(path)?;
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
        eprintln!("skipped {key}: {why}");
    }
    for (key, n) in &report.not_imported_rates {
        eprintln!("not imported: {key} on {n} models (the standard rate is imported)");
    }
    if !report.zero_priced.is_empty() {
        eprintln!(
            "priced 0 as written in the file: {}",
            report.zero_priced.join(", ")
        );
    }
    eprintln!(
        "imported {} models as {} price versions effective from {}; skipped {}",
        report.imported.len(),
        versions.len(),
        a.effective_from,
        report.skipped.len()
    );
    let json = serde_json::to_string_pretty(&versions)? + "\n";
    // The written file must load as a catalog on its own.
    Catalog::from_json(json.as_bytes()).context("imported catalog does not load")?;
    match &a.output {
        Some(path) => std::fs::write(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{json}"),
    }
    if a.publish {
        let n = catalog_feed::publish(cfg, &versions).await?;
        eprintln!(
            "published {n} price versions to {}",
            cfg.topics.price_catalog
        );
    }
    Ok(())
}

fn read_catalog(path: &std::path::Path) -> anyhow::Result<Catalog> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read catalog file {}", path.display()))?;
    Catalog::from_json(&bytes).with_context(|| format!("catalog file {}", path.display()))
}

async fn loadgen(cfg: &Config, a: LoadgenArgs) -> anyhow::Result<()> {
    let catalog = read_catalog(&cfg.pricing.catalog_file)?;
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
    let estimate = a.executions * 26 + a.direct_calls;
    let bar = indicatif::ProgressBar::new(estimate);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
            )
            .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let mut n = 0u64;
    if let Some(path) = a.output {
        use std::io::Write;
        let mut w = BufWriter::new(std::fs::File::create(&path)?);
        for g in Workload::new(spec, &catalog) {
            w.write_all(&g.payload)?;
            w.write_all(b"\n")?;
            n += 1;
            bar.inc(1);
        }
        w.flush()?;
    } else {
        let producer = bench::Loader::new(cfg)?;
        for g in Workload::new(spec, &catalog) {
            producer.send(&cfg.topics.usage_events, &g.key, &g.payload)?;
            n += 1;
            bar.inc(1);
            if a.rate > 0 {
                let due = Duration::from_secs_f64(n as f64 / a.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        producer.flush()?;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "generated {n} events in {secs:.1} s ({:.0} events/s)",
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}
