//! Helpers of the benchmark tests (tests/*_bench.rs): a steady, paced load and the CPU a
//! process used meanwhile.

use std::time::{Duration, Instant};

use usage_aggregator::bench::Loader;

/// CPU seconds (user + system) the process has used so far (/proc/PID/stat, clock ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Sends `rate` events a second to `topic` for `secs` seconds (`event(n)`: the key and
/// payload of the n-th), flushing every 20 ms. Returns how many were sent and the CPU the
/// process `pid` used meanwhile, in cores (CPU seconds per second).
pub fn steady_load(
    loader: &Loader,
    topic: &str,
    rate: usize,
    secs: u64,
    pid: u32,
    mut event: impl FnMut(usize) -> (String, String),
) -> (usize, f64) {
    let start_cpu = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut sent = 0usize;
    while t0.elapsed() < Duration::from_secs(secs) {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as usize;
        while sent < due {
            let (key, payload) = event(sent);
            loader.send(topic, &key, payload.as_bytes()).unwrap();
            sent += 1;
        }
        loader.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = cpu_seconds(pid) - start_cpu;
    (sent, cpu / t0.elapsed().as_secs_f64())
}
