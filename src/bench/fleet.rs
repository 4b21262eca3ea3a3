//! The measured aggregator processes: a bench environment in; child processes running
//! `run --role ROLE` on it, their metrics (scraped over HTTP) and their RSS and CPU (from
//! /proc) out.

use std::process::{Child, Command};
use std::time::Duration;

use super::{BenchArgs, BenchEnv};

/// The aggregator processes of one bench run.
pub struct Fleet {
    children: Vec<Child>,
    pids: Vec<u32>,
    listens: Vec<String>,
    /// The run's tag: its output topics are `{tag}.*`.
    tag: String,
    /// The sink's `sink.batch_age`: how long rows may wait in a batch.
    sink_batch_age: Duration,
}

impl Fleet {
    /// Starts `args.instances` aggregators on the bench's topics, groups and database, each
    /// with its own HTTP port; logs go to `$TMPDIR/<tag>.log`.
    pub fn start(env: &BenchEnv, args: &BenchArgs) -> anyhow::Result<Fleet> {
        Fleet::start_with(env, args, &args.role, &[])
    }

    /// [`Fleet::start`] with another role and extra environment overrides (e.g. a long
    /// `rollup.execution_idle_timeout` for the restore phase).
    pub fn start_with(
        env: &BenchEnv,
        args: &BenchArgs,
        role: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Fleet> {
        let b = &env.cfg;
        let mut cmd = Command::new(std::env::current_exe()?);
        if let Ok(c) = std::env::var("USAGE_AGG_CONFIG") {
            cmd.arg("--config").arg(c);
        }
        // Every topic and group of the bench's config, as the environment overrides `run` reads
        // (`topics.usage_events` -> `USAGE_AGG__TOPICS__USAGE_EVENTS`).
        let mut envs: Vec<(String, &String)> = b
            .topics
            .all()
            .into_iter()
            .map(|(key, name)| (env_name(key), name))
            .collect();
        envs.extend([
            (env_name("kafka.group_id"), &b.kafka.group_id),
            (env_name("kafka.sink_group_id"), &b.kafka.sink_group_id),
            (env_name("kafka.alerts_group_id"), &b.kafka.alerts_group_id),
            (env_name("ledger.group_id"), &b.ledger.group_id),
            (
                env_name("ledger.voucher_group_id"),
                &b.ledger.voucher_group_id,
            ),
            (env_name("clickhouse.database"), &b.clickhouse.database),
        ]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("{}.log", env.tag)))?;
        cmd.args(["run", "--role", role])
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().copied())
            .env("USAGE_AGG__LOG__FILTER", "warn")
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut fleet = Fleet {
            children: Vec::new(),
            pids: Vec::new(),
            listens: Vec::new(),
            tag: env.tag.clone(),
            sink_batch_age: b.sink.batch_age,
        };
        for _ in 0..args.instances.max(1) {
            let listen = format!("127.0.0.1:{}", free_port()?);
            let child = cmd.env("USAGE_AGG__HTTP__LISTEN", &listen).spawn()?;
            fleet.pids.push(child.id());
            fleet.children.push(child);
            fleet.listens.push(listen);
        }
        Ok(fleet)
    }

    pub fn instances(&self) -> u32 {
        self.children.len() as u32
    }

    /// Sum of a metric over every instance.
    pub fn metric(&self, name: &str) -> f64 {
        self.listens.iter().map(|l| metric(&scrape(l), name)).sum()
    }

    /// Sum of a metric's series whose labels contain `labels` (e.g. `stage="pipeline"`).
    pub fn metric_with(&self, name: &str, labels: &str) -> f64 {
        self.listens
            .iter()
            .map(|l| {
                scrape(l)
                    .lines()
                    .filter(|x| x.starts_with(name) && x.contains(labels))
                    .filter_map(|x| x.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            })
            .sum()
    }

    /// The rating pipeline's commits so far: (seconds summed, count). Read under both names
    /// the figure has had (`usage_agg_pipeline_checkpoint_duration_seconds` before the stage
    /// runtime, `usage_agg_stage_commit_seconds{stage="pipeline"}` since), so one bench
    /// compares both.
    pub fn pipeline_commits(&self) -> (f64, f64) {
        let old = "usage_agg_pipeline_checkpoint_duration_seconds";
        let new = "usage_agg_stage_commit_seconds";
        let stage = "stage=\"pipeline\"";
        (
            self.metric(&format!("{old}_sum")) + self.metric_with(&format!("{new}_sum"), stage),
            self.metric(&format!("{old}_count")) + self.metric_with(&format!("{new}_count"), stage),
        )
    }

    /// The rating pipeline's partition restores so far: (seconds summed, count), under both
    /// names (see [`Fleet::pipeline_commits`]).
    pub fn pipeline_restores(&self) -> (f64, f64) {
        let old = "usage_agg_pipeline_state_restore_seconds";
        let new = "usage_agg_stage_restore_seconds";
        let stage = "stage=\"pipeline\"";
        (
            self.metric(&format!("{old}_sum")) + self.metric_with(&format!("{new}_sum"), stage),
            self.metric(&format!("{old}_count")) + self.metric_with(&format!("{new}_count"), stage),
        )
    }

    /// True when every instance's sink is at most one message behind on each partition of the
    /// run's own topics (a transactional topic ends with a commit marker the sink never reads).
    pub fn sink_caught_up(&self) -> bool {
        self.listens
            .iter()
            .all(|l| sink_caught_up(&scrape(l), &self.tag))
    }

    /// How long rows may wait in a sink batch (`sink.batch_age`).
    pub fn sink_batch_age(&self) -> Duration {
        self.sink_batch_age
    }

    /// Current RSS MiB, peak RSS MiB and CPU seconds, summed over every instance.
    pub fn proc_stats(&self) -> (f64, f64, f64) {
        self.pids
            .iter()
            .map(|p| proc_stats(*p))
            .fold((0.0, 0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1, a.2 + s.2))
    }

    /// CPU seconds of the ClickHouse sink: its stage thread (`sink`) and the async runtime's
    /// threads (`tokio-rt-worker`), where its ClickHouse client's connections run (with the
    /// HTTP server, which is idle in a bench).
    pub fn sink_cpu_s(&self) -> f64 {
        self.pids
            .iter()
            .map(|p| thread_cpu_s(*p, "sink") + thread_cpu_s(*p, "tokio-rt-worker"))
            .sum()
    }

    /// CPU seconds by thread group, summed over every instance ([`threads_cpu_s`]).
    pub fn threads_cpu_s(&self) -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        for p in &self.pids {
            for (k, v) in threads_cpu_s(*p) {
                *out.entry(k).or_insert(0.0) += v;
            }
        }
        out
    }

    /// SIGTERM to every instance, then waits for them to exit.
    pub async fn stop(self) {
        for pid in &self.pids {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &pid.to_string()])
                .status();
        }
        let children = self.children;
        let _ = tokio::task::spawn_blocking(move || {
            for mut c in children {
                let _ = c.wait();
            }
        })
        .await;
    }
}

/// CPU seconds of every thread of `pid`, by thread group: the stage threads by their own
/// name (`pipeline`, `ledger`, `vouchers`, `alerts`, `sink`), `tokio-rt-worker` (the sink's
/// ClickHouse connections and the idle HTTP server), `librdkafka` (every `rdk:` thread: the clients' broker, main and
/// producer threads of all stages), the rest by name.
pub fn threads_cpu_s(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        let group = if comm.starts_with("rdk:") {
            "librdkafka"
        } else {
            comm
        };
        *out.entry(group.to_string()).or_insert(0.0) += task_cpu_s(&t.path());
    }
    out
}

/// CPU seconds (utime + stime) of one `/proc/PID/task/TID` directory.
fn task_cpu_s(task: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime and stime, clock ticks of 1/100 s, as in `proc_stats`.
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}

/// CPU seconds of the threads of `pid` whose name starts with `prefix` (`/proc/PID/task`).
pub fn thread_cpu_s(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .map(|t| task_cpu_s(&t.path()))
        .sum()
}

/// CPU seconds (user + system) of a process so far (`/proc/PID/stat`).
pub fn proc_cpu_s(pid: u32) -> f64 {
    proc_stats(pid).2
}

/// The environment variable that overrides a config key: `a.b_c` -> `USAGE_AGG__A__B_C`.
fn env_name(key: &str) -> String {
    format!("USAGE_AGG__{}", key.to_uppercase().replace('.', "__"))
}

/// (current RSS MiB, peak RSS MiB, cpu seconds) of a process.
fn proc_stats(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks of 1/100 s).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0, cpu)
}

fn scrape(listen: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(listen) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {listen}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Sum of every series of a metric in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// See [`Fleet::sink_caught_up`]; `false` while no lag series of the run's topics exists.
fn sink_caught_up(text: &str, tag: &str) -> bool {
    let ours = format!("topic=\"{tag}.");
    let mut any = false;
    for l in text
        .lines()
        .filter(|l| l.starts_with("usage_agg_sink_lag_messages{") && l.contains(&ours))
    {
        any = true;
        let lag = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if lag.is_none_or(|v| v > 1.0) {
            return false;
        }
    }
    any
}

/// A TCP port free on 127.0.0.1 right now (the OS picks it): benches of several agents on one
/// box no longer collide on a fixed port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_is_caught_up_at_one_marker_per_partition_of_our_topics() {
        let m = "usage_agg_sink_lag_messages{partition=\"0\",topic=\"b1.debits\"} 1\n\
                 usage_agg_sink_lag_messages{partition=\"1\",topic=\"b1.debits\"} 0\n\
                 usage_agg_sink_lag_messages{partition=\"0\",topic=\"debits\"} 500\n";
        assert!(sink_caught_up(m, "b1"));
        assert!(!sink_caught_up(&m.replace("} 0\n", "} 2\n"), "b1"));
        assert!(!sink_caught_up(m, "b2"), "no lag line of our topics yet");
    }

    #[test]
    fn metric_sums_every_series_and_skips_comments() {
        let text = "# HELP usage_agg_x help\n# TYPE usage_agg_x counter\nusage_agg_x{t=\"a\"} 2\nusage_agg_x{t=\"b\"} 3.5\nusage_agg_y 7\n";
        assert_eq!(metric(text, "usage_agg_x"), 5.5);
        assert_eq!(metric(text, "usage_agg_z"), 0.0);
    }

    #[test]
    fn env_names_follow_the_config_override_scheme() {
        assert_eq!(
            env_name("topics.usage_events"),
            "USAGE_AGG__TOPICS__USAGE_EVENTS"
        );
        assert_eq!(
            env_name("ledger.voucher_group_id"),
            "USAGE_AGG__LEDGER__VOUCHER_GROUP_ID"
        );
    }

    #[test]
    fn thread_cpu_counts_only_named_threads() {
        let me = std::process::id();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spin = std::thread::Builder::new()
            .name("cpu-probe-x".into())
            .spawn(move || {
                // Spin until /proc shows this thread's CPU (its clock ticks are 10 ms; on a
                // loaded box a fixed 300 ms of wall time may get no tick), at most 30 s.
                let t = std::time::Instant::now();
                let mut n = 0u64;
                while thread_cpu_s(me, "cpu-probe-x") == 0.0
                    && t.elapsed() < Duration::from_secs(30)
                {
                    for _ in 0..100_000 {
                        n = n.wrapping_add(std::hint::black_box(1));
                    }
                }
                done_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                n
            })
            .unwrap();
        done_rx.recv().unwrap();
        let busy = thread_cpu_s(me, "cpu-probe-x");
        assert_eq!(thread_cpu_s(me, "no-such-thread"), 0.0);
        spin.join().unwrap();
        assert!(busy > 0.0, "the spinning thread used {busy} s");
    }

    #[test]
    fn proc_stats_of_this_process() {
        let (rss, peak, _) = proc_stats(std::process::id());
        assert!(rss > 0.0 && peak >= rss, "rss {rss} peak {peak}");
    }
}
