//! Bench baseline by Apache Kafka's own consumer: the run's usage topic and message count in;
//! `ConsumerPerformance`'s drain rate (`fetch.nMsg.sec`, events/s) out, or why it was skipped
//! (tool jars or java missing, the tool failed or timed out). Written into the report with the
//! aggregator/Kafka ratio printed by the cold-start phase.

use std::time::Duration;

use super::{BenchEnv, BenchReport};

/// Bench phase 2b: Kafka's `ConsumerPerformance` drains the same topic as the plain consumer;
/// a missing tool is printed as skipped, never a failure of the bench.
pub fn phase(env: &BenchEnv, events: u64, r: &mut BenchReport) {
    match java_consumer_baseline(
        &env.cfg.kafka.brokers,
        &env.cfg.topics.usage_events,
        events,
        &env.tag,
    ) {
        Ok(rate) => {
            r.java_consumer_events_per_s = Some(rate);
            println!("baseline Kafka ConsumerPerformance (read_committed): {rate:.0} events/s");
        }
        Err(why) => {
            println!("baseline Kafka ConsumerPerformance skipped: {why}");
            r.java_consumer_skipped = Some(why);
        }
    }
}

/// Where Kafka's tool jars are: `$USAGE_AGG_TOOLS/kafka-$USAGE_AGG_KAFKA_VERSION` (defaults
/// `~/.cache/usage-aggregator/tools`, `4.1.1`), as installed by `scripts/services`.
fn kafka_tools_home() -> std::path::PathBuf {
    let tools = std::env::var_os("USAGE_AGG_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            std::path::Path::new(&home).join(".cache/usage-aggregator/tools")
        });
    let version = std::env::var("USAGE_AGG_KAFKA_VERSION").unwrap_or_else(|_| "4.1.1".into());
    tools.join(format!("kafka-{version}"))
}

/// The java binary: `$JAVA`, else OpenJDK 17 when present, else `java` (as `scripts/services`).
fn java_binary() -> std::path::PathBuf {
    if let Some(j) = std::env::var_os("JAVA") {
        return j.into();
    }
    let jdk17 = std::path::Path::new("/usr/lib/jvm/java-17-openjdk-amd64/bin/java");
    if jdk17.exists() {
        jdk17.into()
    } else {
        "java".into()
    }
}

/// Reads the `fetch.nMsg.sec` column of `ConsumerPerformance`'s CSV output (header line, then
/// one line of figures); also checks that `data.consumed.in.nMsg` reached `expected`.
fn parse_consumer_performance(stdout: &str, expected: u64) -> Result<f64, String> {
    let mut lines = stdout.lines().filter(|l| l.contains(','));
    let header: Vec<&str> = lines
        .find(|l| l.contains("fetch.nMsg.sec"))
        .ok_or("no header with fetch.nMsg.sec in its output")?
        .split(',')
        .map(str::trim)
        .collect();
    let row: Vec<&str> = lines
        .next()
        .ok_or("no figures after the header")?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| -> Result<f64, String> {
        let i = header
            .iter()
            .position(|h| *h == name)
            .ok_or(format!("no column {name}"))?;
        row.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or(format!("column {name} is not a number: {:?}", row.get(i)))
    };
    let consumed = col("data.consumed.in.nMsg")?;
    if consumed < expected as f64 {
        return Err(format!(
            "it consumed {consumed} of {expected} messages before its timeout"
        ));
    }
    col("fetch.nMsg.sec")
}

/// Apache Kafka's own consumer draining `topic` from the start (`ConsumerPerformance`, with
/// `isolation.level=read_committed` like the aggregator): its `fetch.nMsg.sec`, events/s
/// (time from the first fetch to the last; excludes JVM start and the group join). Blocks for
/// the run (at most 10 minutes). `Err` says why the baseline is skipped: jars or java missing,
/// the tool failed, or it did not consume every message. Only `bootstrap.servers` is passed
/// on: a broker that needs TLS or SASL is not supported by this baseline.
pub fn java_consumer_baseline(
    brokers: &str,
    topic: &str,
    messages: u64,
    tag: &str,
) -> Result<f64, String> {
    let home = kafka_tools_home();
    let lib = home.join("lib");
    let has_tools = std::fs::read_dir(&lib)
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("kafka-tools-") && n.ends_with(".jar")
            })
        })
        .unwrap_or(false);
    if !has_tools {
        return Err(format!(
            "no Kafka tools jars in {} (scripts/services up installs them)",
            lib.display()
        ));
    }
    let props = std::env::temp_dir().join(format!("{tag}-consumer-perf.properties"));
    std::fs::write(&props, "isolation.level=read_committed\n")
        .map_err(|e| format!("cannot write {}: {e}", props.display()))?;
    let mut cmd = std::process::Command::new(java_binary());
    let log4j = home.join("tools-log4j2.properties");
    if log4j.exists() {
        cmd.arg(format!("-Dlog4j2.configurationFile={}", log4j.display()));
    }
    cmd.arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg("org.apache.kafka.tools.ConsumerPerformance")
        .args(["--bootstrap-server", brokers, "--topic", topic])
        .args(["--messages", &messages.to_string(), "--timeout", "30000"])
        .args(["--group", &format!("{tag}-java-baseline")])
        .arg("--consumer.config")
        .arg(&props)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start java ({e})"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&props);
                return Err("ConsumerPerformance ran over 10 minutes".into());
            }
        }
    };
    let _ = std::fs::remove_file(&props);
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() {
        let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        return Err(format!("ConsumerPerformance exited with {status}: {tail}"));
    }
    parse_consumer_performance(&stdout, messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fetch_rate_of_consumer_performance() {
        let out = "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec\n\
                   2026-11-29 10:40:00:000, 2026-11-29 10:40:04:000, 95.3674, 23.8419, 300000, 75000.0000, 3000, 1000, 95.3674, 300000.0000\n";
        assert_eq!(parse_consumer_performance(out, 300_000), Ok(300_000.0));
        let short = out.replace(", 300000, 75000", ", 299999, 75000");
        assert!(
            parse_consumer_performance(&short, 300_000)
                .unwrap_err()
                .contains("299999")
        );
        assert!(parse_consumer_performance("nothing", 1).is_err());
    }
}
