//! `plans check|publish|list` and `accounts assign-plan`: a plans file (or one assignment) in,
//! checked like the catalog (every problem with its path, edits refused, past-dated records
//! refused unless `--allow-retroactive`), published to the compacted plans topic; the
//! published book listed, per account with the plan in force at an instant.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use usage_aggregator::config::Config;
use usage_aggregator::feed::{FeedState, Opened};
use usage_aggregator::plans::check::{self, PlanChange};
use usage_aggregator::plans::{PlanAssignment, PlanBook, PlansRecord};
use usage_aggregator::plans_feed::{self, PlansFeed};
use usage_aggregator::preflight::Kafka;

use super::{CheckFormat, read_catalog, stdout};

#[derive(clap::Subcommand)]
pub enum PlansCommand {
    /// Validate a plans file (plan versions and assignments) and list it; reports every
    /// problem with its path.
    Check {
        /// Plans file: {"plans": [...], "assignments": [...]}.
        file: PathBuf,
        /// Also name rules that can never apply with this catalog file.
        #[arg(long, value_name = "FILE")]
        catalog: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
    },
    /// Publish the records of a plans file that the plans topic does not have (plans
    /// before assignments). A record taking effect in the past is refused unless
    /// --allow-retroactive; a different record at a published instant always is.
    Publish {
        /// Plans file.
        file: PathBuf,
        /// Publish records that take effect in the past (billed events are not re-priced).
        #[arg(long)]
        allow_retroactive: bool,
    },
    /// List the published plans and assignments; with --account, that account's
    /// assignments and the plan in force at --at.
    List {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// The instant for "in force" (RFC 3339; default now).
        #[arg(long, value_parser = usage_aggregator::config::values::parse_instant)]
        at: Option<DateTime<Utc>>,
    },
}

#[derive(clap::Subcommand)]
pub enum AccountsCommand {
    /// Assign an account to a plan from an instant on (published to the plans topic). The
    /// plan must have a version in force then.
    AssignPlan {
        /// The account.
        #[arg(long)]
        account: String,
        /// The plan id (`default` to end a negotiated plan).
        #[arg(long)]
        plan: String,
        /// When the assignment takes effect (RFC 3339).
        #[arg(long, value_parser = usage_aggregator::config::values::parse_instant)]
        effective_from: DateTime<Utc>,
        /// Allow an instant in the past (billed events are not re-priced).
        #[arg(long)]
        allow_retroactive: bool,
    },
}

/// Reads the value a compacted topic holds (the published catalog, the published plans).
pub(crate) async fn published<T: FeedState>(
    cfg: &Config,
    open: fn(&Config) -> anyhow::Result<Opened<T>>,
    key: &str,
    topic: &str,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + cfg.kafka.connect_timeout;
    loop {
        let (feed, handle) = open(cfg)?;
        let wait = cfg.kafka.connect_timeout + Duration::from_secs(10);
        match tokio::task::spawn_blocking(move || feed.load_initial(wait)).await? {
            Ok(_) => return Ok(T::clone(&handle.load())),
            // A topic just created may not have a leader yet.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => {
                return Err(e.context(format!(
                    "{key} = \"{topic}\": cannot read what is published"
                )));
            }
        }
    }
}

/// The plan book as published on the plans topic (checked to exist first).
pub(crate) async fn published_plans(cfg: &Config) -> anyhow::Result<PlanBook> {
    let k = Kafka::connect(cfg).await?;
    k.require_topic("topics.plans", &cfg.topics.plans, true)
        .await?;
    published(cfg, PlansFeed::plans, "topics.plans", &cfg.topics.plans).await
}

/// Reads and checks a plans file (with the catalog, if given, for dead rules).
pub(crate) fn read_plans(
    path: &Path,
    named: &str,
    catalog: Option<&usage_aggregator::catalog::Catalog>,
) -> anyhow::Result<PlanBook> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow!("{named} = \"{}\": cannot read: {e}", path.display()))?;
    check::check_file(&bytes, catalog).map_err(|p| anyhow!("plans file {}: {p}", path.display()))
}

fn show_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn plan_line(p: &usage_aggregator::plans::PlanVersion) -> String {
    let markup = p
        .markup_rate
        .map_or("configured".to_string(), |m| m.to_string());
    let rules: Vec<String> = p
        .rules
        .iter()
        .map(|r| match r.discount_percent {
            Some(d) => format!("{} -{d}%", r.applies_to.label()),
            None => format!(
                "{} {}",
                r.applies_to.label(),
                r.unit_prices
                    .iter()
                    .map(|(u, x)| format!("{u} {}/{}", x.credits, x.per))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
        .collect();
    format!(
        "{:<24} {:<22} markup {:<10} {}",
        p.plan_id,
        p.version_label(),
        markup,
        if rules.is_empty() {
            "no rules".to_string()
        } else {
            rules.join("; ")
        }
    )
}

fn write_book(out: &mut impl Write, book: &PlanBook) -> std::io::Result<()> {
    for p in book.plans() {
        writeln!(out, "plan       {}", plan_line(p))?;
    }
    for a in book.assignments() {
        writeln!(
            out,
            "assignment {:<24} {:<22} from {}",
            a.account_id,
            a.plan_id,
            show_instant(a.effective_from)
        )?;
    }
    Ok(())
}

pub async fn plans(cfg: &Config, command: PlansCommand) -> anyhow::Result<()> {
    match command {
        PlansCommand::Check {
            file,
            catalog,
            format,
        } => {
            let c = catalog
                .as_deref()
                .map(|p| read_catalog(p, "--catalog"))
                .transpose()?;
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow!("FILE = \"{}\": cannot read: {e}", file.display()))?;
            let mut out = stdout();
            match check::check_file(&bytes, c.as_ref()) {
                Ok(book) => {
                    if format == CheckFormat::Json {
                        let plans: Vec<_> = book.plans().collect();
                        let assignments: Vec<_> = book.assignments().collect();
                        let v = serde_json::json!({"file": file, "ok": true, "plans": plans, "assignments": assignments, "problems": []});
                        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                    } else {
                        write_book(&mut out, &book)?;
                        writeln!(
                            out,
                            "{} plan versions, {} assignments ok",
                            book.plans().count(),
                            book.assignments().count()
                        )?;
                    }
                    out.flush()?;
                    Ok(())
                }
                Err(p) => {
                    if format == CheckFormat::Json {
                        let v = serde_json::json!({"file": file, "ok": false, "problems": p.0});
                        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                        out.flush()?;
                    }
                    Err(anyhow!("plans file {}: {p}", file.display()))
                }
            }
        }
        PlansCommand::Publish {
            file,
            allow_retroactive,
        } => {
            let new = read_plans(&file, "FILE", None)?;
            let published = published_plans(cfg).await?;
            let records = to_publish(&new, &published, allow_retroactive)?;
            let n = plans_feed::publish(cfg, &records).await?;
            let mut out = stdout();
            writeln!(
                out,
                "published {n} plans records to {} ({} already there)",
                cfg.topics.plans,
                new.record_count() - n
            )?;
            out.flush()?;
            Ok(())
        }
        PlansCommand::List { account, at } => {
            let book = published_plans(cfg).await?;
            let at = at.unwrap_or_else(Utc::now);
            let mut out = stdout();
            match account {
                None => {
                    write_book(&mut out, &book)?;
                    writeln!(
                        out,
                        "{} plan versions, {} assignments on {}",
                        book.plans().count(),
                        book.assignments().count(),
                        cfg.topics.plans
                    )?;
                }
                Some(a) => {
                    for x in book.assignments().filter(|x| x.account_id == a) {
                        writeln!(
                            out,
                            "assignment {:<22} from {}",
                            x.plan_id,
                            show_instant(x.effective_from)
                        )?;
                    }
                    let r = book.resolve(&a, at);
                    writeln!(
                        out,
                        "at {}: {} on plan {} ({})",
                        show_instant(at),
                        a,
                        r.plan_id,
                        match r.version {
                            Some(v) => plan_line(v),
                            None => "built-in: no rules, rollup.markup_rate".into(),
                        }
                    )?;
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}

/// The records of `new` that `published` lacks, in publishing order; refuses edits always,
/// past-dated records unless allowed, and records the published book would refuse.
fn to_publish(
    new: &PlanBook,
    published: &PlanBook,
    allow_retroactive: bool,
) -> anyhow::Result<Vec<PlansRecord>> {
    let changes = check::changes(new, published, Utc::now());
    let keys = |f: fn(&PlanChange) -> Option<&String>| -> Vec<String> {
        changes.iter().filter_map(f).cloned().collect()
    };
    let edits = keys(|c| match c {
        PlanChange::Edit { key } => Some(key),
        _ => None,
    });
    if !edits.is_empty() {
        anyhow::bail!(
            "{} record(s) differ from the published ones at the same instant: {}; a published plan version or assignment is never edited: add a new one with a later effective_from",
            edits.len(),
            edits.join(", ")
        );
    }
    let retro = keys(|c| match c {
        PlanChange::Retroactive { key } => Some(key),
        _ => None,
    });
    if !retro.is_empty() && !allow_retroactive {
        anyhow::bail!(
            "{} record(s) take effect in the past: {}; events already billed keep their price (a log replay would re-price them): give them a future effective_from, or pass --allow-retroactive",
            retro.len(),
            retro.join(", ")
        );
    }
    let unchanged = keys(|c| match c {
        PlanChange::Unchanged { key } => Some(key),
        _ => None,
    });
    let records: Vec<PlansRecord> = new
        .records()
        .into_iter()
        .filter(|r| !unchanged.contains(&r.topic_key()))
        .collect();
    // The topic applies them onto the published book: it must accept every one.
    let mut after = published.clone();
    for r in &records {
        after
            .apply(r.clone())
            .map_err(|e| anyhow!("refused next to the published plans: {e}"))?;
    }
    Ok(records)
}

pub async fn accounts(cfg: &Config, command: AccountsCommand) -> anyhow::Result<()> {
    let AccountsCommand::AssignPlan {
        account,
        plan,
        effective_from,
        allow_retroactive,
    } = command;
    let published = published_plans(cfg).await?;
    let a = PlanAssignment {
        account_id: account,
        plan_id: plan,
        effective_from,
    };
    let mut new = PlanBook::default();
    // The plan's versions come along so that the assignment checks against them.
    for p in published.plans() {
        new.insert_plan(p.clone())?;
    }
    new.insert_assignment(a.clone())
        .map_err(|e| anyhow!("--plan {}: {e}", a.plan_id))?;
    let records: Vec<PlansRecord> = to_publish(&new, &published, allow_retroactive)?
        .into_iter()
        .filter(|r| matches!(r, PlansRecord::Assignment(_)))
        .collect();
    let n = plans_feed::publish(cfg, &records).await?;
    let mut out = stdout();
    writeln!(
        out,
        "{} {} to plan {} from {}{}",
        if n == 0 {
            "already assigned:"
        } else {
            "assigned"
        },
        a.account_id,
        a.plan_id,
        show_instant(a.effective_from),
        if n == 0 { " (nothing published)" } else { "" }
    )?;
    out.flush()?;
    Ok(())
}
