//! The `usage-aggregator` command line: arguments in, one of the commands run (the service,
//! setup, catalog publish/check, offline rating, dead-letter replay, load generation, spend
//! report, benchmark),
//! and an exit status out: 0 done, 1 failed (one `error:` line naming the key and value),
//! 2 usage or configuration error, 3 `rate --strict` rejected events, 75 a credits command
//! was sent but the ledger gave no verdict in time, 130 interrupted.
//! A closed stdout (`| head`) ends a command quietly.

// Output is written with `writeln!(..)?` (a closed pipe ends the command): no `println!`.
#![deny(clippy::print_stdout)]

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rust_decimal::Decimal;
use usage_aggregator::app::Role;
use usage_aggregator::bench;
use usage_aggregator::config::{Config, ConfigError, LogFormat};
use usage_aggregator::logging::{self, LogSettings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "usage-aggregator",
    version,
    about = "Prices AI-agent usage events from Kafka, rolls them up per execution (+markup), emits debits and writes analytics to ClickHouse.",
    after_help = "Configuration: built-in defaults (config/default.toml) < --config FILE < environment USAGE_AGG__SECTION__KEY.\nExit status: 0 done, 1 failed, 2 usage or configuration error, 3 rate --strict rejected events, 130 interrupted."
)]
struct Cli {
    /// Configuration file (TOML); relative paths in it are resolved against its directory.
    /// Environment variables USAGE_AGG__SECTION__KEY override it.
    #[arg(long, global = true, env = "USAGE_AGG_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write logs and the final error as JSON lines (same as log.format = "json").
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

/// One principal per role (`User:NAME` as the broker's authenticator names it).
#[derive(clap::Args)]
struct AclsArgs {
    /// Platform runtimes: write usage events only.
    #[arg(long, default_value = "User:usage-runtime")]
    runtime: String,
    /// `run --role pipeline` (rating pipeline, spend alerts).
    #[arg(long, default_value = "User:usage-pipeline")]
    pipeline: String,
    /// `run --role sink` (ClickHouse sink).
    #[arg(long, default_value = "User:usage-sink")]
    sink: String,
    /// `run --role ledger` (credits ledger, vouchers, top-up and voucher endpoints).
    #[arg(long, default_value = "User:usage-ledger")]
    ledger: String,
    /// Analysts and dashboards: read the billing outputs.
    #[arg(long, default_value = "User:usage-reader")]
    reader: String,
    /// Consumer groups of the reader principal start with this.
    #[arg(long, default_value = "analytics-")]
    reader_group_prefix: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: rating pipeline, ClickHouse sink, spend alerts, HTTP endpoints.
    Run {
        /// Which stages this process runs.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Create the Kafka topics and apply ClickHouse migrations (idempotent). Checks that
    /// both are reachable before changing anything.
    Setup {
        /// Only create Kafka topics.
        #[arg(long, conflicts_with = "clickhouse_only")]
        kafka_only: bool,
        /// Only apply ClickHouse migrations.
        #[arg(long)]
        clickhouse_only: bool,
    },
    /// Remove what a prefixed deployment (kafka.prefix, e.g. a trial) made: its Kafka topics,
    /// consumer groups and ClickHouse database. Lists them; deletes only with --yes; refused
    /// without a prefix and while a group has members; never touches another prefix.
    Teardown {
        /// Delete what is listed.
        #[arg(long)]
        yes: bool,
    },
    /// Print the Kafka ACLs of each role (one principal per role), one `kafka-acls --add`
    /// argument list per line, for `scripts/kafka-acls` (docs/operations.md#kafka-acls).
    Acls(AclsArgs),
    /// Price catalog operations.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Rate a JSON-lines file of events offline with the same core (stdin -> stdout).
    /// Output lines are tagged: {"debit":..}, {"rejected":..}, {"line":..}.
    Rate {
        /// Catalog file (JSON array of price versions).
        #[arg(long, value_name = "FILE")]
        catalog: PathBuf,
        /// Plans file (plan versions and account assignments), as published to the plans
        /// topic: the same file gives the live pipeline's amounts. Without it every account
        /// is on the `default` plan.
        #[arg(long, value_name = "FILE")]
        plans: Option<PathBuf>,
        /// Markup rate for agent executions, a decimal such as 0.2 (default: rollup.markup_rate).
        #[arg(long, value_name = "RATE", value_parser = parse_decimal)]
        markup_rate: Option<Decimal>,
        /// Also write every priced usage line ({"line":..}).
        #[arg(long)]
        lines: bool,
        /// Exit with status 3 if any event was rejected.
        #[arg(long)]
        strict: bool,
        /// Write rejected events to FILE (one JSON object per line) instead of stdout.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
    },
    /// Plans and negotiated prices: check, publish, list (docs/price-catalog.md#plans).
    Plans {
        #[command(subcommand)]
        command: commands::PlansCommand,
    },
    /// Accounts: assign a plan.
    Accounts {
        #[command(subcommand)]
        command: commands::AccountsCommand,
    },
    /// Re-rate what was billed in a published price correction's windows and emit the
    /// differences as correction debits, exactly once (docs/price-catalog.md#re-rating-rerate).
    Rerate(commands::RerateArgs),
    /// Dead-letter operations.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Generate a realistic workload into the usage topic (or a file).
    Loadgen(commands::LoadgenArgs),
    /// Print a spend summary from ClickHouse, e.g. for a billing period.
    Report(commands::ReportArgs),
    /// End-to-end benchmark against the running services; prints figures and writes JSON.
    Bench(bench::BenchArgs),
    /// Credits ledger: top-ups, adjustments, redemptions, balances, history.
    Credits {
        #[command(subcommand)]
        command: usage_aggregator::credits::CreditsCommand,
    },
    /// Vouchers: create and list.
    Vouchers {
        #[command(subcommand)]
        command: usage_aggregator::credits::VouchersCommand,
    },
    /// Account-scoped API keys of the HTTP API: create (shown once), list, revoke.
    Keys {
        #[command(subcommand)]
        command: usage_aggregator::keys::cli::KeysCommand,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Publish the price versions of a catalog file that the catalog topic does not have.
    /// The topic must exist and be compacted (run `setup`). A version that takes effect in
    /// the past reprices past events and is refused unless --allow-retroactive.
    Publish {
        /// Catalog file (JSON array of price versions).
        file: PathBuf,
        /// Publish versions that take effect in the past (reprices events; see
        /// docs/price-catalog.md).
        #[arg(long)]
        allow_retroactive: bool,
        /// Publish the file's versions as correction ID of past prices: each replaces the
        /// published version at its instant (or adds one in the past); see
        /// docs/price-catalog.md#corrections.
        #[arg(long, value_name = "ID", requires = "reason")]
        correction: Option<String>,
        /// Why the correction is made (with --correction).
        #[arg(long, requires = "correction")]
        reason: Option<String>,
    },
    /// Validate a catalog file and list its versions with their prices; reports every
    /// problem with its path.
    Check {
        /// Catalog file (JSON array of price versions).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: commands::CheckFormat,
        /// Also compare with the catalog topic, as `publish` would (needs Kafka).
        #[arg(long)]
        against_topic: bool,
        /// With --against-topic: accept versions that take effect in the past.
        #[arg(long, requires = "against_topic")]
        allow_retroactive: bool,
    },
    /// Convert a price list kept in another tool's format into price versions.
    Import(commands::ImportArgs),
    /// List the versions published on the catalog topic (what the service prices with).
    List {
        /// Output format (json: a catalog file, as `export` writes it).
        #[arg(long, value_enum, default_value = "text")]
        format: commands::CheckFormat,
    },
    /// Write the catalog topic's versions as a catalog file (to edit and publish back).
    Export(commands::ExportArgs),
    /// Compare a catalog file with the catalog topic, version by version, as `publish`
    /// would judge it. Exit status 0: the same; 1: they differ.
    Diff {
        /// Catalog file (JSON array of price versions).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: commands::CheckFormat,
    },
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// Re-publish rejected events' original payloads to the usage topic (e.g. after adding
    /// a missing price). Safe to repeat: what was billed once is a duplicate.
    Replay(commands::ReplayArgs),
}

fn parse_decimal(s: &str) -> Result<Decimal, String> {
    Decimal::from_str_exact(s.trim()).map_err(|_| format!("\"{s}\" is not a decimal such as 0.2"))
}

/// A command's verdict other than plain failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

fn config_message(e: &ConfigError) -> String {
    match e {
        ConfigError::Load(lines) if lines.len() > 1 => format!(
            "invalid configuration ({} problems):\n  {}",
            lines.len(),
            lines.join("\n  ")
        ),
        other => format!("invalid configuration: {other}"),
    }
}

/// An error and its causes, each message once (a cause already quoted by its parent is
/// not repeated).
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let m = c.to_string();
        if out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(BrokenPipe)
    })
}

/// A usage error found by clap, written as the final error of any other failure: with
/// `--log-json` (or `USAGE_AGG__LOG__FORMAT=json`) one JSON object, not clap's text. Help and
/// version go to stdout as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    let json = std::env::args_os().any(|a| a == "--log-json")
        || std::env::var("USAGE_AGG__LOG__FORMAT").is_ok_and(|v| v.trim() == "json");
    if !json || !e.use_stderr() {
        e.exit();
    }
    let text = e.render().to_string();
    // "error: <message>\n\n<usage or tip>": the message, without the prefix.
    let message = text.split("\n\n").next().unwrap_or(&text);
    let message = message.strip_prefix("error: ").unwrap_or(message).trim();
    logging::early_error(message, true);
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            logging::early_error(&config_message(&e), cli.log_json);
            return ExitCode::from(2);
        }
    };
    let json = cli.log_json || cfg.log.format == LogFormat::Json;
    let mut guard = logging::init(&LogSettings {
        filter: &cfg.log.filter,
        json,
        quiet_kafka: !matches!(cli.command, Command::Run { .. }),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let result = rt.block_on(dispatch(cli.command, cfg));
    // Blocking tasks still running (a stuck write) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<Exit>()
                .map(|x| x.code)
                .or_else(|| {
                    e.downcast_ref::<usage_aggregator::credits::CliExit>()
                        .map(|x| x.code)
                })
                .unwrap_or(1);
            guard.error(&render(&e));
            ExitCode::from(code)
        }
    }
}

async fn dispatch(command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Run { role } => usage_aggregator::app::run(cfg, role).await,
        Command::Setup {
            kafka_only,
            clickhouse_only,
        } => commands::setup(&cfg, !clickhouse_only, !kafka_only).await,
        Command::Catalog {
            command:
                CatalogCommand::Publish {
                    file,
                    allow_retroactive,
                    correction,
                    reason,
                },
        } => {
            let fix = correction
                .zip(reason)
                .map(|(id, reason)| usage_aggregator::catalog::VersionCorrection { id, reason });
            commands::publish(&cfg, &file, allow_retroactive, fix).await
        }
        Command::Catalog {
            command:
                CatalogCommand::Check {
                    file,
                    format,
                    against_topic,
                    allow_retroactive,
                },
        } => commands::check(&cfg, &file, format, against_topic, allow_retroactive).await,
        Command::Catalog {
            command: CatalogCommand::Import(a),
        } => commands::import_catalog(&cfg, a).await,
        Command::Teardown { yes } => commands::teardown(&cfg, yes).await,
        Command::Acls(a) => {
            let who = usage_aggregator::kafka::acls::Principals {
                runtime: a.runtime,
                pipeline: a.pipeline,
                sink: a.sink,
                ledger: a.ledger,
                reader: a.reader,
                reader_group_prefix: a.reader_group_prefix,
            };
            let mut out = std::io::stdout().lock();
            for g in usage_aggregator::kafka::acls::grants(&cfg, &who) {
                std::io::Write::write_all(
                    &mut out,
                    format!("{}\n", g.args().join(" ")).as_bytes(),
                )?;
            }
            Ok(())
        }
        Command::Catalog {
            command: CatalogCommand::List { format },
        } => commands::catalog_list(&cfg, format).await,
        Command::Catalog {
            command: CatalogCommand::Export(a),
        } => commands::catalog_export(&cfg, a.output.as_deref()).await,
        Command::Catalog {
            command: CatalogCommand::Diff { file, format },
        } => commands::catalog_diff(&cfg, &file, format).await,
        Command::Rate {
            catalog,
            plans,
            markup_rate,
            lines,
            strict,
            rejects,
        } => commands::rate(
            cfg,
            &catalog,
            plans.as_deref(),
            markup_rate,
            lines,
            strict,
            rejects.as_deref(),
        ),
        Command::Plans { command } => commands::plans(&cfg, command).await,
        Command::Accounts { command } => commands::accounts(&cfg, command).await,
        Command::Rerate(a) => commands::rerate(&cfg, a).await,
        Command::DeadLetters {
            command: DeadLettersCommand::Replay(a),
        } => commands::replay_dead_letters(&cfg, a).await,
        Command::Loadgen(a) => commands::loadgen(&cfg, a).await,
        Command::Report(a) => commands::report(&cfg, a).await,
        Command::Bench(a) => {
            usage_aggregator::preflight::Kafka::connect(&cfg).await?;
            bench::run(&cfg, a).await
        }
        Command::Credits { command } => usage_aggregator::credits::credits(&cfg, command).await,
        Command::Vouchers { command } => usage_aggregator::credits::vouchers(&cfg, command).await,
        Command::Keys { command } => usage_aggregator::keys::cli::keys(&cfg, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_printed_once() {
        let inner = anyhow::anyhow!("connection refused");
        let e = inner
            .context("cannot connect: connection refused")
            .context("setup");
        assert_eq!(render(&e), "setup: cannot connect: connection refused");
    }

    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        fn walk(c: &clap::Command, path: &str) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(a.get_help().is_some(), "{path} --{id} has no help");
            }
            for s in c.get_subcommands() {
                assert!(
                    s.get_about().is_some(),
                    "{path} {} has no help",
                    s.get_name()
                );
                walk(s, &format!("{path} {}", s.get_name()));
            }
        }
        walk(&Cli::command(), "usage-aggregator");
    }
}
