//! `dead-letters replay`: filters in, the chosen dead letters' payloads re-sent to the usage
//! topic (or listed with `--dry-run`) out; Kafka and both topics checked first.

use std::io::Write;
use std::time::Duration;

use usage_aggregator::config::Config;
use usage_aggregator::preflight::Kafka;
use usage_aggregator::rejection::RejectReason;
use usage_aggregator::replay;

use super::stdout;

#[derive(clap::Args)]
pub struct ReplayArgs {
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
    #[arg(long, value_parser = usage_aggregator::config::values::parse_duration, default_value = "60s")]
    timeout: Duration,
}

pub async fn replay_dead_letters(cfg: &Config, a: ReplayArgs) -> anyhow::Result<()> {
    let k = Kafka::connect(cfg).await?;
    k.require_topic("topics.dead_letter", &cfg.topics.dead_letter, false)
        .await?;
    if !a.dry_run {
        k.require_topic("topics.usage_events", &cfg.topics.usage_events, false)
            .await?;
    }
    let filter = replay::ReplayFilter {
        reasons: a.reasons,
        from: a.from,
        to: a.to,
        account: a.account,
    };
    let letters = tokio::task::block_in_place(|| replay::read_dead_letters(cfg, a.timeout))?;
    let chosen = replay::select(&letters, &filter, &cfg.topics.usage_events)?;
    let mut out = stdout();
    if a.dry_run {
        for r in &chosen {
            let mut v = serde_json::to_value(r)?;
            v["payload"] = String::from_utf8_lossy(&r.payload).into_owned().into();
            writeln!(out, "{v}")?;
        }
        out.flush()?;
        usage_aggregator::logging::stderr_line(&format!(
            "dry run: would re-send {} of {} dead letters to {}",
            chosen.len(),
            letters.len(),
            cfg.topics.usage_events
        ));
        return Ok(());
    }
    let n = tokio::task::block_in_place(|| replay::publish(cfg, &chosen))?;
    writeln!(
        out,
        "re-sent {n} of {} dead letters to {}",
        letters.len(),
        cfg.topics.usage_events
    )?;
    out.flush()?;
    Ok(())
}
